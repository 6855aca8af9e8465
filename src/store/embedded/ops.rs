//! The write operations, each applied to the group's batch by the writer thread.
//!
//! Backpressure (`Full`) is decided per operation before it writes anything, so a
//! refused accept leaves the group untouched. A settle (complete / retry_later /
//! dead_letter) of a delivery that is no longer queued is a no-op: a settled delivery
//! is never brought back by a late caller.

use std::time::{SystemTime, UNIX_EPOCH};

use super::engine::Engine;
use super::layout::{self, DestId, Done, IdParts, Record, RecordRef};
use super::writer::{Group, Undo, Writer};
use super::{Loc, CHUNK};

/// Dedupe marks looked at per purge (every minute): a full pass over ten million
/// marks takes a few hours, during which expired marks only take disk space.
const DEDUPE_SCAN: usize = 50_000;
use crate::store::{
    AcceptOutcome, Delivery, EventToAccept, ReplaySelector, StoreError, StoreResult,
};

pub enum Op {
    Accept {
        events: Vec<EventToAccept>,
        now_ms: i64,
    },
    Complete {
        id: String,
    },
    RetryLater {
        delivery: Delivery,
    },
    DeadLetter {
        delivery: Delivery,
        now_ms: i64,
    },
    Replay {
        which: ReplaySelector,
        now_ms: i64,
    },
    Retire {
        destination: String,
        reason: String,
        now_ms: i64,
    },
    Purge {
        now_ms: i64,
    },
    PartnerStatus {
        ids: Vec<String>,
        status: crate::store::PartnerStatus,
    },
    KeepCheck {
        check: crate::store::PendingCheck,
    },
    ForgetCheck {
        destination: String,
        request_id: String,
    },
}

pub enum Outcome {
    Accepted(Vec<AcceptOutcome>),
    Done,
    Counted(usize, usize),
}

/// An engine failure inside a group: the whole group fails and the store reopens.
type Fatal = String;

fn fatal(e: fjall::Error) -> Fatal {
    e.to_string()
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Expiry in Unix seconds of a mark made at `now_ms`, rounded up so a key is never
/// forgotten before its full window.
fn expiry_s(now_ms: i64, window_ms: i64) -> u64 {
    let until = now_ms.saturating_add(window_ms).max(0);
    u64::try_from(until).unwrap_or(0).div_ceil(1000)
}

impl Writer {
    pub fn apply(
        &mut self,
        e: &Engine,
        g: &mut Group,
        op: &Op,
    ) -> Result<StoreResult<Outcome>, Fatal> {
        match op {
            Op::Accept { events, now_ms } => self.accept(e, g, events, *now_ms),
            Op::Complete { id } => self.complete(e, g, id).map(|()| Ok(Outcome::Done)),
            Op::RetryLater { delivery } => {
                self.retry_later(e, g, delivery).map(|()| Ok(Outcome::Done))
            }
            Op::DeadLetter { delivery, now_ms } => self
                .dead_letter(e, g, delivery, *now_ms)
                .map(|()| Ok(Outcome::Done)),
            Op::Replay { which, now_ms } => self
                .replay(e, g, which, *now_ms)
                .map(|n| Ok(Outcome::Counted(n, 0))),
            Op::Retire {
                destination,
                reason,
                now_ms,
            } => self
                .retire(e, g, destination, reason, *now_ms)
                .map(|n| Ok(Outcome::Counted(n, 0))),
            Op::Purge { now_ms } => self
                .purge(e, g, *now_ms)
                .map(|(a, b)| Ok(Outcome::Counted(a, b))),
            Op::PartnerStatus { ids, status } => self
                .partner_status(e, g, ids, status)
                .map(|n| Ok(Outcome::Counted(n, 0))),
            Op::KeepCheck { check } => {
                let key = layout::check_meta_key(&check.destination, &check.request_id);
                g.put(&e.meta, key, layout::encode(check)?)?;
                Ok(Ok(Outcome::Done))
            }
            Op::ForgetCheck {
                destination,
                request_id,
            } => {
                g.del(&e.meta, layout::check_meta_key(destination, request_id))?;
                Ok(Ok(Outcome::Done))
            }
        }
    }

    fn accept(
        &mut self,
        e: &Engine,
        g: &mut Group,
        events: &[EventToAccept],
        now_ms: i64,
    ) -> Result<StoreResult<Outcome>, Fatal> {
        let now_s = u64::try_from(now_ms.max(0)).unwrap_or(0) / 1000;
        // Duplicates first: they add nothing, so they pass even when the queue is full.
        let mut fresh = Vec::with_capacity(events.len());
        let mut seen = std::collections::HashSet::new();
        for ev in events {
            let key = ev.dedupe_key.0;
            let dup =
                g.marked.contains(&key) || !seen.insert(key) || self.is_marked(e, &key, now_s)?;
            fresh.push(!dup);
        }
        let new: u64 = events
            .iter()
            .zip(&fresh)
            .filter(|(_, f)| **f)
            .map(|(ev, _)| ev.deliveries.len() as u64)
            .sum();
        let queued = self.queued_total.saturating_add_signed(g.queued_delta);
        if new > 0 && queued.saturating_add(new) > self.max_queued {
            return Ok(Err(StoreError::Full {
                reason: format!(
                    "{queued} deliveries are queued, the limit is {} (store.max_queued)",
                    self.max_queued
                ),
                retry_after: std::time::Duration::from_secs(5),
            }));
        }
        if let Some(reason) = self.disk_too_full() {
            return Ok(Err(StoreError::Full {
                reason,
                retry_after: std::time::Duration::from_secs(30),
            }));
        }
        let expiry = expiry_s(now_ms, self.dedupe_window_ms).to_be_bytes();
        let mut outcomes = Vec::with_capacity(events.len());
        for (ev, is_new) in events.iter().zip(fresh) {
            let key = ev.dedupe_key.0;
            if !is_new {
                outcomes.push(AcceptOutcome::Duplicate);
                continue;
            }
            g.marked.insert(key);
            g.put(&e.dedupe, key, expiry)?;
            g.undo.push(Undo::Dedupe(key));
            let mut ids = Vec::with_capacity(ev.deliveries.len());
            for d in &ev.deliveries {
                let dest = self.dest_id(e, g, &d.destination)?;
                let seq = self.next_seq(e, g);
                let value = layout::encode(&RecordRef::new(&d.request, now_ms))?;
                let queue = e.queue(dest).map_err(fatal)?;
                g.put(&queue, layout::seq_key(seq), value)?;
                g.undo.push(Undo::Queue(dest, seq));
                g.count(dest, 1, 0);
                ids.push(self.shared.id_of(IdParts {
                    created_ms: u64::try_from(now_ms.max(0)).unwrap_or(0),
                    dest,
                    seq,
                }));
            }
            outcomes.push(AcceptOutcome::Accepted { delivery_ids: ids });
        }
        Ok(Ok(Outcome::Accepted(outcomes)))
    }

    fn is_marked(&self, e: &Engine, key: &[u8; 16], now_s: u64) -> Result<bool, Fatal> {
        Ok(match e.dedupe.get(key).map_err(fatal)? {
            Some(v) => layout::u64_value(&v).is_some_and(|expiry| expiry > now_s),
            None => false,
        })
    }

    /// Removes a delivery's current record; `None` when it is not queued any more.
    fn take(
        &mut self,
        e: &Engine,
        g: &mut Group,
        id: &str,
    ) -> Result<Option<(IdParts, Loc)>, Fatal> {
        let Some(parts) = self.shared.parts_of(id) else {
            return Ok(None);
        };
        if g.touched.contains(&(parts.dest, parts.seq)) {
            return Ok(None);
        }
        let Some(loc) = self.locate(e, parts.dest, parts.seq)? else {
            return Ok(None);
        };
        let queue = e.queue(parts.dest).map_err(fatal)?;
        match loc {
            Loc::Fresh => g.del(&queue, layout::seq_key(parts.seq))?,
            Loc::Retry { due_ms } => {
                g.del(&e.retry, layout::retry_key(parts.dest, due_ms, parts.seq))?
            }
        }
        g.touched.insert((parts.dest, parts.seq));
        g.settled.push((parts.dest, parts.seq));
        Ok(Some((parts, loc)))
    }

    fn complete(&mut self, e: &Engine, g: &mut Group, id: &str) -> Result<(), Fatal> {
        let Some((parts, loc)) = self.take(e, g, id)? else {
            return Ok(());
        };
        // A fresh delivery has never been tried before: this was its first attempt.
        // A retried one's record says how many came before.
        let attempts = match loc {
            Loc::Fresh => 1,
            Loc::Retry { due_ms } => {
                let key = layout::retry_key(parts.dest, due_ms, parts.seq);
                match e.retry.get(key).map_err(fatal)? {
                    Some(v) => layout::decode::<Record>("delivery", &v)?
                        .attempts
                        .saturating_add(1),
                    None => 0,
                }
            }
        };
        let done = Done {
            delivered_at: wall_ms(),
            attempts,
            last_status: None,
            partner: None,
        };
        g.put(&e.done, parts.bytes(), layout::encode(&done)?)?;
        g.receipts.insert(parts.bytes(), done);
        g.count(parts.dest, -1, 0);
        Ok(())
    }

    /// Writes `status` into the receipts of those of `ids` that are delivered (read
    /// from this group first: a receipt it wrote is not readable from the engine yet).
    fn partner_status(
        &mut self,
        e: &Engine,
        g: &mut Group,
        ids: &[String],
        status: &crate::store::PartnerStatus,
    ) -> Result<usize, Fatal> {
        let mut n = 0;
        for id in ids {
            let Some(parts) = self.shared.parts_of(id) else {
                continue;
            };
            let key = parts.bytes();
            let done = match g.receipts.get(&key) {
                Some(d) => Some(d.clone()),
                None => match e.done.get(key).map_err(fatal)? {
                    Some(v) => Some(layout::decode_done(&v)?),
                    None => None,
                },
            };
            let Some(mut done) = done else { continue };
            done.partner = Some(status.clone());
            g.put(&e.done, key, layout::encode(&done)?)?;
            g.receipts.insert(key, done);
            n += 1;
        }
        Ok(n)
    }

    fn retry_later(&mut self, e: &Engine, g: &mut Group, d: &Delivery) -> Result<(), Fatal> {
        let Some((parts, _)) = self.take(e, g, &d.id)? else {
            return Ok(());
        };
        let value = layout::encode(&RecordRef::of(d, None))?;
        let key = layout::retry_key(parts.dest, d.next_attempt_at, parts.seq);
        g.put(&e.retry, key, value)?;
        Ok(())
    }

    fn dead_letter(
        &mut self,
        e: &Engine,
        g: &mut Group,
        d: &Delivery,
        now_ms: i64,
    ) -> Result<(), Fatal> {
        let Some((parts, _)) = self.take(e, g, &d.id)? else {
            return Ok(());
        };
        let value = layout::encode(&RecordRef::of(d, Some(now_ms)))?;
        g.put(&e.dead, layout::queue_key(parts.dest, parts.seq), value)?;
        g.count(parts.dest, -1, 1);
        Ok(())
    }

    fn replay(
        &mut self,
        e: &Engine,
        g: &mut Group,
        which: &ReplaySelector,
        now_ms: i64,
    ) -> Result<usize, Fatal> {
        let mut picked: Vec<(DestId, u64, Record)> = Vec::new();
        let mut take = |k: &[u8], v: &[u8]| -> Result<(), Fatal> {
            if let Some((dest, seq)) = layout::parse_queue_key(k) {
                picked.push((dest, seq, layout::decode("dead letter", v)?));
            }
            Ok(())
        };
        match which {
            ReplaySelector::Id(id) => {
                if let Some(p) = self.shared.parts_of(id) {
                    let k = layout::queue_key(p.dest, p.seq);
                    if let Some(v) = e.dead.get(k).map_err(fatal)? {
                        take(&k, &v)?;
                    }
                }
            }
            ReplaySelector::Destination(name) => {
                if let Some(dest) = self.shared.dest_id(name) {
                    for item in e.dead.prefix(dest.to_be_bytes()) {
                        let (k, v) = item.into_inner().map_err(fatal)?;
                        take(&k, &v)?;
                    }
                }
            }
            ReplaySelector::All => {
                for item in e.dead.iter() {
                    let (k, v) = item.into_inner().map_err(fatal)?;
                    take(&k, &v)?;
                }
            }
        }
        let mut n = 0;
        for (dest, seq, mut r) in picked {
            if !g.touched.insert((dest, seq)) {
                continue;
            }
            r.attempts = 0;
            r.first_attempt_at = None;
            r.next_attempt_at = now_ms;
            r.dead_at = None;
            let value = layout::encode(&r.borrowed())?;
            g.del(&e.dead, layout::queue_key(dest, seq))?;
            g.put(&e.retry, layout::retry_key(dest, now_ms, seq), value)?;
            g.count(dest, 1, -1);
            n += 1;
        }
        Ok(n)
    }

    /// Moves up to `CHUNK` queued or retrying deliveries of a removed destination to
    /// the dead-letter queue.
    fn retire(
        &mut self,
        e: &Engine,
        g: &mut Group,
        destination: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<usize, Fatal> {
        let Some(dest) = self.shared.dest_id(destination) else {
            return Ok(0);
        };
        // In flight: its worker settles it (or releases it, and a later pass moves it).
        let claimed: std::collections::HashSet<u64> = self
            .shared
            .claims()
            .get(&dest)
            .map(|c| c.claimed.keys().copied().collect())
            .unwrap_or_default();
        let mut moved = 0;
        let queue = e.queue(dest).map_err(fatal)?;
        for (ks, is_retry) in [(&queue, false), (&e.retry, true)] {
            let items = if is_retry {
                ks.prefix(dest.to_be_bytes())
            } else {
                ks.iter()
            };
            for item in items {
                if moved >= CHUNK {
                    return Ok(moved);
                }
                let (k, v) = item.into_inner().map_err(fatal)?;
                let seq = if is_retry {
                    layout::parse_retry_key(&k).map(|(_, _, s)| s)
                } else {
                    layout::parse_seq_key(&k)
                };
                let Some(seq) = seq else { continue };
                if claimed.contains(&seq) || !g.touched.insert((dest, seq)) {
                    continue;
                }
                let mut r: Record = layout::decode("delivery", &v)?;
                r.dead_at = Some(now_ms);
                r.last_error = Some(reason.to_owned());
                let value = layout::encode(&r.borrowed())?;
                g.del(ks, k)?;
                g.put(&e.dead, layout::queue_key(dest, seq), value)?;
                g.count(dest, -1, 1);
                g.settled.push((dest, seq));
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Expired dedupe marks found by scanning the next `DEDUPE_SCAN` marks from where
    /// the last purge stopped (marks carry their expiry, so no index is written per
    /// event; an expired mark that waits for the scan is ignored by lookups), and up
    /// to `CHUNK` dead letters and receipts past the retention. Returns (marks, dead
    /// letters) removed.
    fn purge(&mut self, e: &Engine, g: &mut Group, now_ms: i64) -> Result<(usize, usize), Fatal> {
        let now_s = u64::try_from(now_ms.max(0)).unwrap_or(0) / 1000;
        let mut keys = 0;
        let mut scanned = 0;
        let from = self.dedupe_cursor.take();
        let range = match &from {
            Some(after) => e.dedupe.range::<&[u8], _>((
                std::ops::Bound::Excluded(after.as_slice()),
                std::ops::Bound::Unbounded,
            )),
            None => e.dedupe.iter(),
        };
        for item in range {
            if scanned >= DEDUPE_SCAN {
                break;
            }
            scanned += 1;
            let (k, v) = item.into_inner().map_err(fatal)?;
            if layout::u64_value(&v).is_none_or(|expiry| expiry <= now_s) {
                g.del(&e.dedupe, k.clone())?;
                keys += 1;
            }
            self.dedupe_cursor = Some(k.to_vec());
        }
        if scanned < DEDUPE_SCAN {
            self.dedupe_cursor = None; // reached the end: the next purge starts over
        }
        let cutoff = now_ms.saturating_sub(self.retention_ms);
        let mut dead = 0;
        for item in e.dead.iter() {
            if dead >= CHUNK {
                break;
            }
            let (k, v) = item.into_inner().map_err(fatal)?;
            let r: Record = layout::decode("dead letter", &v)?;
            if r.dead_at.is_some_and(|at| at < cutoff) {
                if let Some((dest, seq)) = layout::parse_queue_key(&k) {
                    if g.touched.insert((dest, seq)) {
                        g.del(&e.dead, k)?;
                        g.count(dest, 0, -1);
                        dead += 1;
                    }
                }
            }
        }
        let receipts_end = IdParts {
            created_ms: u64::try_from(cutoff.max(0)).unwrap_or(0),
            dest: 0,
            seq: 0,
        }
        .bytes();
        let mut receipts = 0;
        for item in e.done.range(..receipts_end.as_slice()) {
            if receipts >= CHUNK {
                break;
            }
            let k = item.key().map_err(fatal)?;
            g.del(&e.done, k)?;
            receipts += 1;
        }
        // Receipts ride along: report a full chunk so the caller comes back for more.
        Ok((keys.max(if receipts >= CHUNK { CHUNK } else { 0 }), dead))
    }
}
