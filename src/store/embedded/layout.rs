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
//! A delivery is stored under its [`IdParts`]: 48 bits of the accept time in ms, 16
//! bits of destination number, 64 bits of append sequence (shared by all
//! destinations). The ID partners see (`webhook-id`) is 128 bits, written as `dlv_` +
//! 26 Crockford base32 characters (the ULID text form): the accept time as is, then
//! destination and sequence (80 bits) through [`IdKey`], a keyed permutation, so one
//! partner's IDs say nothing of the relay's traffic to others, and an ID alone still
//! finds its record without an index (the store reverses the permutation).

use serde::{Deserialize, Serialize};

use crate::outbound::OutboundRequest;
use crate::store::{Delivery, DeliveryStatus, PartnerStatus};

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

    /// The ID partners and admins see: destination and sequence permuted by `key`.
    pub fn to_id(self, key: &IdKey) -> String {
        // The tweak is the time as the ID carries it (48 bits), as `parse` reads it.
        let created_ms = self.created_ms & 0xffff_ffff_ffff;
        let hidden = key.permute(
            created_ms,
            (u128::from(self.dest) << 64) | u128::from(self.seq),
        );
        let v = (u128::from(created_ms) << 80) | hidden;
        let mut buf = [0u8; ulid::ULID_LEN];
        let text = ulid::Ulid(v).array_to_str(&mut buf);
        text.make_ascii_lowercase();
        let mut id = String::with_capacity(4 + ulid::ULID_LEN);
        id.push_str("dlv_");
        id.push_str(text);
        id
    }

    /// The parts an ID made by [`IdParts::to_id`] under `key` stands for; `None` for
    /// anything that is not an ID. An ID this store never made decodes to parts of
    /// no record (or of an unknown destination): callers look them up, never trust them.
    pub fn parse(id: &str, key: &IdKey) -> Option<IdParts> {
        let text = id.strip_prefix("dlv_")?;
        let v = ulid::Ulid::from_string(text).ok()?.0;
        let created_ms = (v >> 80) as u64;
        let inner = key.unpermute(created_ms, v & HIDDEN_MASK);
        Some(IdParts {
            created_ms,
            dest: (inner >> 64) as u16,
            seq: inner as u64,
        })
    }

    pub fn bytes(self) -> [u8; 16] {
        self.to_u128().to_be_bytes()
    }
}

/// The 80 bits of an ID after its time: destination (16) and sequence (64).
const HIDDEN_MASK: u128 = (1 << 80) - 1;
const HALF_BITS: u32 = 40;
const HALF_MASK: u64 = (1 << HALF_BITS) - 1;
/// Feistel rounds; each is one SipHash of 14 bytes (about 20 ns).
const ROUNDS: u8 = 8;

/// The key of the permutation that hides destination and sequence in delivery IDs:
/// a balanced Feistel network on 80 bits (two 40-bit halves), its round function
/// SipHash-2-4 keyed by an HMAC of the installation's secret and tweaked by the ID's
/// accept time, so the permutation differs for every millisecond (what one partner
/// sees of one permutation is the few deliveries of one millisecond). Derived from
/// `data_dir/dedupe.key`, so an ID is the same after a restart.
#[derive(Clone)]
pub struct IdKey {
    k0: u64,
    k1: u64,
}

impl IdKey {
    pub fn new(secret: &[u8; 32]) -> IdKey {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(b"postback-relay delivery ids v1");
        let out = mac.finalize().into_bytes();
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&out[i..i + 8]);
            u64::from_le_bytes(b)
        };
        IdKey {
            k0: word(0),
            k1: word(8),
        }
    }

    fn round(&self, round: u8, tweak: u64, half: u64) -> u64 {
        let mut input = [0u8; 14];
        input[0] = round;
        input[1..9].copy_from_slice(&tweak.to_le_bytes());
        input[9..].copy_from_slice(&half.to_le_bytes()[..5]);
        siphash24(self.k0, self.k1, &input) & HALF_MASK
    }

    fn permute(&self, tweak: u64, v: u128) -> u128 {
        let (mut l, mut r) = ((v >> HALF_BITS) as u64 & HALF_MASK, v as u64 & HALF_MASK);
        for i in 0..ROUNDS {
            (l, r) = (r, l ^ self.round(i, tweak, r));
        }
        (u128::from(l) << HALF_BITS) | u128::from(r)
    }

    fn unpermute(&self, tweak: u64, v: u128) -> u128 {
        let (mut l, mut r) = ((v >> HALF_BITS) as u64 & HALF_MASK, v as u64 & HALF_MASK);
        for i in (0..ROUNDS).rev() {
            (l, r) = (r ^ self.round(i, tweak, l), l);
        }
        (u128::from(l) << HALF_BITS) | u128::from(r)
    }
}

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdKey(..)")
    }
}

/// SipHash-2-4 (Aumasson and Bernstein), the keyed PRF of the ID permutation's
/// rounds. Written here because the IDs must never change with a dependency or the
/// standard library (its `SipHasher` is deprecated); the paper's test vector pins it.
fn siphash24(k0: u64, k1: u64, msg: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn sip_round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    fn compress(m: u64, v: &mut [u64; 4]) {
        v[3] ^= m;
        sip_round(v);
        sip_round(v);
        v[0] ^= m;
    }
    let mut chunks = msg.chunks_exact(8);
    for c in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        compress(u64::from_le_bytes(b), &mut v);
    }
    let mut last = [0u8; 8];
    let rest = chunks.remainder();
    last[..rest.len()].copy_from_slice(rest);
    last[7] = msg.len() as u8;
    compress(u64::from_le_bytes(last), &mut v);
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// Key in a destination's own queue keyspace.
pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn parse_seq_key(k: &[u8]) -> Option<u64> {
    u64_value(k)
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
    Some((dest, u64_value(k.get(2..)?)?))
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

/// A partner status check still to come: `check/<destination>\0<request ID>`.
pub fn check_meta_key(destination: &str, request_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(CHECK_PREFIX.len() + destination.len() + 1 + request_id.len());
    k.extend_from_slice(CHECK_PREFIX);
    k.extend_from_slice(destination.as_bytes());
    k.push(0);
    k.extend_from_slice(request_id.as_bytes());
    k
}

pub const CHECK_PREFIX: &[u8] = b"check/";
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
            partner_status: None,
        }
    }
}

/// What is remembered of a delivered delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub delivered_at: i64,
    pub attempts: u32,
    pub last_status: Option<u16>,
    /// The partner's later word on it (added after format 1's first receipts: a
    /// receipt written without it reads as `None`, see `decode_done`).
    pub partner: Option<PartnerStatus>,
}

/// A receipt as the first releases wrote it, before `Done::partner`.
#[derive(Deserialize)]
struct DoneWithoutPartner {
    delivered_at: i64,
    attempts: u32,
    last_status: Option<u16>,
}

/// A receipt, of either shape: postcard has no field names, so a receipt written
/// before `partner` existed ends where that field would start. (Older code reads the
/// new shape too: postcard ignores trailing bytes.)
pub fn decode_done(bytes: &[u8]) -> Result<Done, String> {
    decode::<Done>("receipt", bytes).or_else(|e| {
        decode::<DoneWithoutPartner>("receipt", bytes)
            .map(|d| Done {
                delivered_at: d.delivered_at,
                attempts: d.attempts,
                last_status: d.last_status,
                partner: None,
            })
            .map_err(|_| e)
    })
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
    fn a_receipt_from_before_partner_statuses_still_reads() {
        #[derive(Serialize)]
        struct Old {
            delivered_at: i64,
            attempts: u32,
            last_status: Option<u16>,
        }
        let old = encode(&Old {
            delivered_at: 5,
            attempts: 2,
            last_status: None,
        })
        .unwrap();
        let expected = Done {
            delivered_at: 5,
            attempts: 2,
            last_status: None,
            partner: None,
        };
        assert_eq!(decode_done(&old), Ok(expected.clone()));
        let new = Done {
            partner: Some(PartnerStatus {
                state: "failure".into(),
                reason: Some("PROCESSING_ERROR_REASON_INVALID_GCLID: 1 event".into()),
                request_id: "r".into(),
                checked_at: Some(9),
            }),
            ..expected
        };
        assert_eq!(decode_done(&encode(&new).unwrap()), Ok(new.clone()));
        // And code from before reads a new receipt (postcard ignores what follows).
        #[derive(Deserialize, Debug, PartialEq)]
        struct OldRead {
            delivered_at: i64,
            attempts: u32,
            last_status: Option<u16>,
        }
        assert_eq!(
            decode::<OldRead>("receipt", &encode(&new).unwrap()),
            Ok(OldRead {
                delivered_at: 5,
                attempts: 2,
                last_status: None
            })
        );
        assert!(decode_done(&[RECORD_VERSION, 0xff]).is_err());
    }

    #[test]
    fn ids_round_trip_and_look_like_before() {
        let key = IdKey::new(&[7; 32]);
        let p = IdParts {
            created_ms: 1_700_000_000_123,
            dest: 7,
            seq: 123_456_789,
        };
        let id = p.to_id(&key);
        assert!(id.starts_with("dlv_"));
        assert_eq!(id.len(), 30);
        assert_eq!(IdParts::parse(&id, &key), Some(p));
        assert_eq!(
            IdParts::parse(&id.to_uppercase().replace("DLV_", "dlv_"), &key),
            Some(p)
        );
        assert_eq!(IdParts::parse("dlv_nope", &key), None);
        assert_eq!(IdParts::parse("other", &key), None);
        // The accept time stays readable (IDs sort by it); the rest does not.
        let plain = ulid::Ulid::from_string(&id[4..]).expect("ulid").0;
        assert_eq!((plain >> 80) as u64, p.created_ms);
        assert_ne!(plain & HIDDEN_MASK, (7u128 << 64) | 123_456_789);
        // Another installation's key reads another delivery out of the same ID.
        assert_ne!(IdParts::parse(&id, &IdKey::new(&[8; 32])), Some(p));
    }

    #[test]
    fn ids_hide_the_shared_sequence() {
        let key = IdKey::new(&[42; 32]);
        let hidden = |dest: u16, seq: u64| {
            let id = IdParts {
                created_ms: 1_700_000_000_000,
                dest,
                seq,
            }
            .to_id(&key);
            assert_eq!(
                IdParts::parse(&id, &key),
                Some(IdParts {
                    created_ms: 1_700_000_000_000,
                    dest,
                    seq
                })
            );
            ulid::Ulid::from_string(&id[4..]).expect("ulid").0 & HIDDEN_MASK
        };
        // Destination 1 gets every other sequence number (destination 2 the rest):
        // what it sees is neither ordered nor evenly spaced.
        let seen: Vec<u128> = (0..32).map(|i| hidden(1, 1000 + 2 * i)).collect();
        assert!(seen.windows(2).any(|w| w[0] > w[1]), "{seen:?}");
        assert!(seen.windows(2).any(|w| w[0] < w[1]), "{seen:?}");
        let gaps: std::collections::HashSet<u128> =
            seen.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        assert!(gaps.len() > 16, "{gaps:?}");
        // The destination number is hidden too.
        assert_ne!(hidden(1, 5) >> 64, 1);
        // And the permutation really is one: every input has its own output.
        let all: std::collections::HashSet<u128> =
            (0..2000).map(|i| hidden((i % 3) as u16, i / 3)).collect();
        assert_eq!(all.len(), 2000);
    }

    #[test]
    fn siphash_matches_the_reference_vector() {
        // The paper's Appendix A: key 00..0f, message 00..0e.
        let key: Vec<u8> = (0u8..16).collect();
        let msg: Vec<u8> = (0u8..15).collect();
        let k0 = u64::from_le_bytes(key[..8].try_into().expect("8 bytes"));
        let k1 = u64::from_le_bytes(key[8..].try_into().expect("8 bytes"));
        assert_eq!(siphash24(k0, k1, &msg), 0xa129_ca61_49be_45e5);
        assert_eq!(siphash24(k0, k1, &[]), 0x726f_db47_dd0e_0e31);
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
