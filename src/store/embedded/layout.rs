//! Layout and encoding: which keyspace holds what, how keys are built, how records
//! are encoded, and what a delivery ID says.
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `queue_N` (one per destination N) | seq (8) | [`Record`]: fresh deliveries, FIFO by append sequence |
//! | `retry` | dest (2) + due ms (8) + seq (8) | [`Record`]: deliveries waiting on a retry or replayed |
//! | `dead` | dest (2) + seq (8) | [`Record`] with `dead_at` |
//! | `done` | delivery ID (16) | [`Done`]: delivered, remembered for the DLQ retention |
//! | `dedupe` | keyed hash (16) | expiry, Unix s (8); purged by a resumable scan |
//! | `meta` | `dest/NAME`, `seq`, `count/` + dest (2), `format` | ids, counters |
//!
//! All integers are big-endian so that byte order is numeric order. A destination is
//! named once in `meta` and is a 2-byte number everywhere else.
//!
//! A delivery ID is 128 bits, written as `dlv_` + 26 Crockford base32 characters (the
//! ULID text form): 48 bits of the accept time in ms, 16 bits of destination number,
//! 64 bits of append sequence. So an ID alone finds its record without an index.

use serde::{Deserialize, Serialize};

use crate::outbound::OutboundRequest;
use crate::store::{Delivery, DeliveryStatus};

pub const QUEUE: &str = "queue";
pub const RETRY: &str = "retry";
pub const DEAD: &str = "dead";
pub const DONE: &str = "done";
pub const DEDUPE: &str = "dedupe";
pub const META: &str = "meta";

/// The on-disk format this code writes and reads (`meta/format`).
pub const FORMAT: u32 = 1;
/// First byte of every encoded record.
const RECORD_VERSION: u8 = 1;

pub type DestId = u16;

/// The parts of a delivery ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdParts {
    pub created_ms: u64,
    pub dest: DestId,
    pub seq: u64,
}

impl IdParts {
    pub fn to_u128(self) -> u128 {
        (u128::from(self.created_ms & 0xffff_ffff_ffff) << 80)
            | (u128::from(self.dest) << 64)
            | u128::from(self.seq)
    }

    pub fn from_u128(v: u128) -> IdParts {
        IdParts {
            created_ms: (v >> 80) as u64,
            dest: ((v >> 64) & 0xffff) as u16,
            seq: v as u64,
        }
    }

    pub fn to_id(self) -> String {
        let mut buf = [0u8; ulid::ULID_LEN];
        let text = ulid::Ulid(self.to_u128()).array_to_str(&mut buf);
        text.make_ascii_lowercase();
        let mut id = String::with_capacity(4 + ulid::ULID_LEN);
        id.push_str("dlv_");
        id.push_str(text);
        id
    }

    /// `None` for anything that is not an ID this store made.
    pub fn parse(id: &str) -> Option<IdParts> {
        let text = id.strip_prefix("dlv_")?;
        ulid::Ulid::from_string(text)
            .ok()
            .map(|u| IdParts::from_u128(u.0))
    }

    pub fn bytes(self) -> [u8; 16] {
        self.to_u128().to_be_bytes()
    }
}

/// Key in a destination's own queue keyspace.
pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn parse_seq_key(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(..8)?.try_into().ok()?))
}

/// Key of a dead letter: destination, then sequence.
pub fn queue_key(dest: DestId, seq: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(&dest.to_be_bytes());
    k[2..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn parse_queue_key(k: &[u8]) -> Option<(DestId, u64)> {
    let dest = u16::from_be_bytes(k.get(..2)?.try_into().ok()?);
    let seq = u64::from_be_bytes(k.get(2..10)?.try_into().ok()?);
    Some((dest, seq))
}

/// A due time as an order-preserving unsigned number.
pub fn due_bits(due_ms: i64) -> u64 {
    (due_ms as u64) ^ (1 << 63)
}

pub fn from_due_bits(b: u64) -> i64 {
    (b ^ (1 << 63)) as i64
}

pub fn retry_key(dest: DestId, due_ms: i64, seq: u64) -> [u8; 18] {
    let mut k = [0u8; 18];
    k[..2].copy_from_slice(&dest.to_be_bytes());
    k[2..10].copy_from_slice(&due_bits(due_ms).to_be_bytes());
    k[10..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn parse_retry_key(k: &[u8]) -> Option<(DestId, i64, u64)> {
    let dest = u16::from_be_bytes(k.get(..2)?.try_into().ok()?);
    let due = u64::from_be_bytes(k.get(2..10)?.try_into().ok()?);
    let seq = u64::from_be_bytes(k.get(10..18)?.try_into().ok()?);
    Some((dest, from_due_bits(due), seq))
}

pub fn dest_meta_key(name: &str) -> Vec<u8> {
    let mut k = b"dest/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn count_meta_key(dest: DestId) -> [u8; 8] {
    let mut k = *b"count/\0\0";
    k[6..].copy_from_slice(&dest.to_be_bytes());
    k
}

pub const SEQ_META_KEY: &[u8] = b"seq";
/// The number of the last group commit (each commit writes it).
pub const COMMIT_META_KEY: &[u8] = b"commit";
pub const FORMAT_META_KEY: &[u8] = b"format";

/// A queued, retrying or dead delivery as read. The ID and the destination live in
/// the key; the request holds markers, never credentials. Written through
/// [`RecordRef`], its borrowed twin (the field order is the format: keep the two
/// alike; `records_round_trip_and_refuse_garbage` checks it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Record {
    pub created_at: i64,
    pub attempts: u32,
    pub first_attempt_at: Option<i64>,
    pub last_attempt_at: Option<i64>,
    pub next_attempt_at: i64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub dead_at: Option<i64>,
    pub request: OutboundRequest,
}

/// A [`Record`] to write, borrowing its strings (postcard is positional; `&str` and
/// `&T` encode as `String` and `T`), so the request is never copied first: writing a
/// delivery is the store's hottest path.
#[derive(Debug, Serialize)]
pub struct RecordRef<'a> {
    pub created_at: i64,
    pub attempts: u32,
    pub first_attempt_at: Option<i64>,
    pub last_attempt_at: Option<i64>,
    pub next_attempt_at: i64,
    pub last_status: Option<u16>,
    pub last_error: Option<&'a str>,
    pub dead_at: Option<i64>,
    pub request: &'a OutboundRequest,
}

impl<'a> RecordRef<'a> {
    /// A new delivery: queued now, never tried.
    pub fn new(request: &'a OutboundRequest, now_ms: i64) -> RecordRef<'a> {
        RecordRef {
            created_at: now_ms,
            attempts: 0,
            first_attempt_at: None,
            last_attempt_at: None,
            next_attempt_at: now_ms,
            last_status: None,
            last_error: None,
            dead_at: None,
            request,
        }
    }

    /// A delivery as it stands (after an attempt, or dead since `dead_at`).
    pub fn of(d: &'a Delivery, dead_at: Option<i64>) -> RecordRef<'a> {
        RecordRef {
            created_at: d.created_at,
            attempts: d.attempts,
            first_attempt_at: d.first_attempt_at,
            last_attempt_at: d.last_attempt_at,
            next_attempt_at: d.next_attempt_at,
            last_status: d.last_status,
            last_error: d.last_error.as_deref(),
            dead_at,
            request: &d.request,
        }
    }
}

impl Record {
    /// This record, to write back (changed).
    pub fn borrowed(&self) -> RecordRef<'_> {
        RecordRef {
            created_at: self.created_at,
            attempts: self.attempts,
            first_attempt_at: self.first_attempt_at,
            last_attempt_at: self.last_attempt_at,
            next_attempt_at: self.next_attempt_at,
            last_status: self.last_status,
            last_error: self.last_error.as_deref(),
            dead_at: self.dead_at,
            request: &self.request,
        }
    }

    pub fn into_delivery(self, id: String, destination: String) -> Delivery {
        Delivery {
            id,
            destination,
            request: self.request,
            attempts: self.attempts,
            created_at: self.created_at,
            first_attempt_at: self.first_attempt_at,
            last_attempt_at: self.last_attempt_at,
            next_attempt_at: self.next_attempt_at,
            last_status: self.last_status,
            last_error: self.last_error,
        }
    }

    pub fn status(&self, id: String, destination: String, state: &'static str) -> DeliveryStatus {
        DeliveryStatus {
            id,
            destination,
            state,
            attempts: self.attempts,
            created_at: self.created_at,
            last_attempt_at: self.last_attempt_at,
            next_attempt_at: (state != "dead").then_some(self.next_attempt_at),
            last_status: self.last_status,
            last_error: self.last_error.clone(),
            finished_at: self.dead_at,
        }
    }
}

/// What is remembered of a delivered delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub delivered_at: i64,
    pub attempts: u32,
    pub last_status: Option<u16>,
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    // One allocation, usually: a rendered request is a few hundred bytes.
    let mut out = Vec::with_capacity(512);
    out.push(RECORD_VERSION);
    postcard::to_extend(value, out).map_err(|e| format!("encode: {e}"))
}

pub fn decode<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|e| format!("corrupt {what}: {e}"))
        }
        Some((v, _)) => Err(format!("{what} has unknown format version {v}")),
        None => Err(format!("corrupt {what}: empty")),
    }
}

pub fn u64_value(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

pub fn counts_value(queued: u64, dead: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&queued.to_be_bytes());
    v[8..].copy_from_slice(&dead.to_be_bytes());
    v
}

pub fn parse_counts(bytes: &[u8]) -> Option<(u64, u64)> {
    Some((u64_value(bytes)?, u64_value(bytes.get(8..)?)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::Method;

    #[test]
    fn ids_round_trip_and_look_like_before() {
        let p = IdParts {
            created_ms: 1_700_000_000_123,
            dest: 7,
            seq: 123_456_789,
        };
        let id = p.to_id();
        assert!(id.starts_with("dlv_"));
        assert_eq!(id.len(), 30);
        assert_eq!(IdParts::parse(&id), Some(p));
        assert_eq!(
            IdParts::parse(&id.to_uppercase().replace("DLV_", "dlv_")),
            Some(p)
        );
        assert_eq!(IdParts::parse("dlv_nope"), None);
        assert_eq!(IdParts::parse("other"), None);
    }

    #[test]
    fn keys_sort_numerically() {
        assert!(queue_key(1, 255) < queue_key(1, 256));
        assert!(queue_key(1, u64::MAX) < queue_key(2, 0));
        assert!(retry_key(1, -5, 9) < retry_key(1, 3, 0));
        assert!(retry_key(1, 1_000, 9) < retry_key(1, 1_001, 0));
        assert_eq!(parse_retry_key(&retry_key(3, -7, 11)), Some((3, -7, 11)));
        assert_eq!(parse_queue_key(&queue_key(3, 11)), Some((3, 11)));
    }

    #[test]
    fn records_round_trip_and_refuse_garbage() {
        let r = Record {
            created_at: 1,
            attempts: 2,
            first_attempt_at: Some(3),
            last_attempt_at: None,
            next_attempt_at: 4,
            last_status: Some(503),
            last_error: Some("HTTP 503".into()),
            dead_at: None,
            request: OutboundRequest {
                method: Method::Post,
                url: "https://p.example/x".into(),
                headers: vec![("A".into(), "b".into())],
                body: Some("{}".into()),
                event_time_ms: None,
            },
        };
        // What RecordRef writes, Record reads back whole (the two keep one format).
        let bytes = encode(&r.borrowed()).unwrap();
        assert_eq!(decode::<Record>("record", &bytes).unwrap(), r);
        let fresh = Record {
            attempts: 0,
            first_attempt_at: None,
            last_status: None,
            last_error: None,
            next_attempt_at: r.created_at,
            ..r.clone()
        };
        assert_eq!(
            encode(&RecordRef::new(&r.request, r.created_at)).unwrap(),
            encode(&fresh.borrowed()).unwrap()
        );
        assert!(decode::<Record>("record", &[]).is_err());
        assert!(decode::<Record>("record", &[9, 1, 2]).is_err());
        assert!(decode::<Record>("record", &[1, 0xff, 0xff, 0xff]).is_err());
    }
}
