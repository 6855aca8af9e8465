//! Claims and reads. Claims live in memory only: after a crash or restart every
//! queued delivery is due again (at least once). Reads never wait for the writer.
//!
//! The claims lock is taken BEFORE a read starts: a settle drops its claim only after
//! its commit, so a read either sees the commit or still sees the claim. Never a stale
//! copy of a settled delivery.

use super::layout::{self, Done, IdParts, Record};
use super::{DestClaims, Loc, Shared};
use crate::store::{DeadLetter, Delivery, DeliveryStatus, StoreError, StoreResult};

fn err(e: fjall::Error) -> StoreError {
    StoreError::Unavailable(format!("store read: {e}"))
}

fn corrupt(e: String) -> StoreError {
    StoreError::Unavailable(format!("store read: {e}"))
}

/// Up to `limit` deliveries of `destination` due at `now_ms`: retries that are due
/// first, then fresh deliveries in append order.
pub fn claim_due(
    s: &Shared,
    destination: &str,
    now_ms: i64,
    limit: usize,
) -> StoreResult<Vec<Delivery>> {
    let Some(dest) = s.dest_id(destination) else {
        return Ok(Vec::new());
    };
    let mut all = s.claims();
    let claims = all.entry(dest).or_default();
    let e = s.engine()?;
    let mut out = Vec::new();
    let from = layout::retry_key(dest, i64::MIN, 0);
    let to = layout::retry_key(dest, now_ms, u64::MAX);
    for item in e.retry.range(from.as_slice()..=to.as_slice()) {
        if out.len() >= limit {
            return Ok(out);
        }
        let (k, v) = item.into_inner().map_err(err)?;
        let Some((_, due_ms, seq)) = layout::parse_retry_key(&k) else {
            continue;
        };
        if claims.claimed.contains_key(&seq) {
            continue;
        }
        let r: Record = layout::decode("delivery", &v).map_err(corrupt)?;
        out.push(delivery(s, dest, seq, destination, r));
        claims.claimed.insert(seq, Loc::Retry { due_ms });
    }
    let start = claims.cursor.map_or(0, |c| c.saturating_add(1));
    let queue = e.queue(dest).map_err(err)?;
    for item in queue.range(layout::seq_key(start)..) {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item.into_inner().map_err(err)?;
        let Some(seq) = layout::parse_seq_key(&k) else {
            continue;
        };
        if claims.claimed.contains_key(&seq) {
            claims.cursor = Some(seq);
            continue;
        }
        let r: Record = layout::decode("delivery", &v).map_err(corrupt)?;
        if r.next_attempt_at > now_ms {
            break; // accepted "in the future" (a clock step): not due yet
        }
        claims.cursor = Some(seq);
        out.push(delivery(s, dest, seq, destination, r));
        claims.claimed.insert(seq, Loc::Fresh);
    }
    Ok(out)
}

fn delivery(s: &Shared, dest: u16, seq: u64, destination: &str, r: Record) -> Delivery {
    let id = s.id_of(IdParts {
        created_ms: u64::try_from(r.created_at.max(0)).unwrap_or(0),
        dest,
        seq,
    });
    r.into_delivery(id, destination.to_owned())
}

/// Earliest due time of an unclaimed delivery of `destination`.
pub fn next_due(s: &Shared, destination: &str) -> StoreResult<Option<i64>> {
    let Some(dest) = s.dest_id(destination) else {
        return Ok(None);
    };
    let all = s.claims();
    let empty = DestClaims::default();
    let claims = all.get(&dest).unwrap_or(&empty);
    let e = s.engine()?;
    let mut best: Option<i64> = None;
    for item in e.retry.prefix(dest.to_be_bytes()) {
        let k = item.key().map_err(err)?;
        if let Some((_, due_ms, seq)) = layout::parse_retry_key(&k) {
            if !claims.claimed.contains_key(&seq) {
                best = Some(due_ms);
                break;
            }
        }
    }
    let start = claims.cursor.map_or(0, |c| c.saturating_add(1));
    let queue = e.queue(dest).map_err(err)?;
    for item in queue.range(layout::seq_key(start)..) {
        let (k, v) = item.into_inner().map_err(err)?;
        let Some(seq) = layout::parse_seq_key(&k) else {
            continue;
        };
        if claims.claimed.contains_key(&seq) {
            continue;
        }
        let r: Record = layout::decode("delivery", &v).map_err(corrupt)?;
        best = Some(best.map_or(r.next_attempt_at, |b| b.min(r.next_attempt_at)));
        break;
    }
    Ok(best)
}

/// Gives a claim back: a fresh delivery is read again by the next claim.
pub fn release(s: &Shared, id: &str) {
    let Some(p) = s.parts_of(id) else {
        return;
    };
    let mut all = s.claims();
    if let Some(c) = all.get_mut(&p.dest) {
        if let Some(Loc::Fresh) = c.claimed.remove(&p.seq) {
            c.cursor = match (c.cursor, p.seq.checked_sub(1)) {
                (Some(cur), Some(before)) => Some(cur.min(before)),
                _ => None,
            };
        }
    }
}

/// Dead letters, oldest first (by when they died), optionally of one destination.
pub fn dlq_list(
    s: &Shared,
    destination: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<DeadLetter>> {
    let e = s.engine()?;
    let iter = match destination {
        Some(name) => match s.dest_id(name) {
            Some(dest) => e.dead.prefix(dest.to_be_bytes()),
            None => return Ok(Vec::new()),
        },
        None => e.dead.iter(),
    };
    let mut out = Vec::new();
    for item in iter {
        let (k, v) = item.into_inner().map_err(err)?;
        let Some((dest, seq)) = layout::parse_queue_key(&k) else {
            continue;
        };
        let r: Record = layout::decode("dead letter", &v).map_err(corrupt)?;
        let dead_at = r.dead_at.unwrap_or(r.created_at);
        let name = s.dest_name(dest);
        out.push(DeadLetter {
            delivery: delivery(s, dest, seq, &name, r),
            dead_at,
        });
    }
    out.sort_by(|a, b| (a.dead_at, &a.delivery.id).cmp(&(b.dead_at, &b.delivery.id)));
    out.truncate(limit);
    Ok(out)
}

/// Every partner status check kept (`check/` in the meta keyspace).
pub fn pending_checks(s: &Shared) -> StoreResult<Vec<crate::store::PendingCheck>> {
    let e = s.engine()?;
    let mut out = Vec::new();
    for item in e.meta.prefix(layout::CHECK_PREFIX) {
        let (k, v) = item.into_inner().map_err(err)?;
        // One record that does not decode must not cost every other check (as on
        // Redis): it is left where it is, named in the log (destination and the
        // partner's request ID; no event data).
        match layout::decode("status check", &v) {
            Ok(check) => out.push(check),
            Err(e) => tracing::warn!(
                key = %String::from_utf8_lossy(&k),
                error = %e,
                "a kept status check does not decode; skipped"
            ),
        }
    }
    Ok(out)
}

/// Where one delivery stands.
pub fn lookup(s: &Shared, id: &str) -> StoreResult<Option<DeliveryStatus>> {
    let Some(p) = s.parts_of(id) else {
        return Ok(None);
    };
    let e = s.engine()?;
    let name = s.dest_name(p.dest);
    let key = layout::queue_key(p.dest, p.seq);
    if let Some(v) = e
        .queue(p.dest)
        .map_err(err)?
        .get(layout::seq_key(p.seq))
        .map_err(err)?
    {
        let r: Record = layout::decode("delivery", &v).map_err(corrupt)?;
        return Ok(Some(r.status(id.to_owned(), name, "queued")));
    }
    if let Some(v) = e.dead.get(key).map_err(err)? {
        let r: Record = layout::decode("dead letter", &v).map_err(corrupt)?;
        return Ok(Some(r.status(id.to_owned(), name, "dead")));
    }
    for item in e.retry.prefix(p.dest.to_be_bytes()) {
        let (k, v) = item.into_inner().map_err(err)?;
        if layout::parse_retry_key(&k).is_some_and(|(_, _, seq)| seq == p.seq) {
            let r: Record = layout::decode("delivery", &v).map_err(corrupt)?;
            // A replayed dead letter waits here too, with its attempts reset.
            let state = if r.attempts == 0 {
                "queued"
            } else {
                "retrying"
            };
            return Ok(Some(r.status(id.to_owned(), name, state)));
        }
    }
    if let Some(v) = e.done.get(p.bytes()).map_err(err)? {
        let d: Done = layout::decode_done(&v).map_err(corrupt)?;
        return Ok(Some(DeliveryStatus {
            id: id.to_owned(),
            destination: name,
            state: "delivered",
            attempts: d.attempts,
            created_at: i64::try_from(p.created_ms).unwrap_or(0),
            last_attempt_at: Some(d.delivered_at),
            next_attempt_at: None,
            last_status: d.last_status,
            last_error: None,
            finished_at: Some(d.delivered_at),
            partner_status: d.partner,
        }));
    }
    Ok(None)
}
