//! The durable queue and dedupe state, behind one trait.
//!
//! Owns: the `Store` trait the rest of the relay talks to, the values it stores
//! (`Delivery`, `DeadLetter`, hashed `DedupeKey`s) and its errors; the embedded backend
//! (`embedded`, an LSM store in `data_dir`) and the shared one (`redis`, several relays on
//! one Redis or Valkey). Never: sees a raw event or a partner's
//! credentials. What reaches a store is already filtered and rendered by the rules
//! (secret header values and URL parts replaced by markers, see
//! `outbound::Credentials`), and dedupe keys are keyed hashes.
//!
//! Invariants every backend keeps:
//! - `accept` is atomic and durable: when it returns `Ok`, the dedupe marks and every
//!   delivery of every accepted event are on stable storage; on `Err` nothing was.
//! - a delivery is handed out by `claim_due` to one worker at a time; a claim that is
//!   not settled (complete / retry_later / dead_letter / release) before the process
//!   dies is due again after restart.
//! - a store that cannot write says so (`ready() == false`, writes answer
//!   `Unavailable`) and recovers by itself once the cause is gone.
//!
//! `contract` holds the test suite every backend must pass.

#[cfg(test)]
pub(crate) mod contract;
pub mod embedded;
#[cfg(test)]
pub(crate) mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::outbound::OutboundRequest;

/// A dedupe key after keyed hashing (HMAC-SHA256 with the installation's secret,
/// truncated): the plaintext click ID never reaches the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DedupeKey(pub [u8; 16]);

/// One event ready to be committed: its dedupe key and its rendered deliveries
/// (one per destination whose rule matched; may be empty).
#[derive(Debug, Clone)]
pub struct EventToAccept {
    pub dedupe_key: DedupeKey,
    pub deliveries: Vec<NewDelivery>,
}

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub destination: String,
    pub request: OutboundRequest,
}

/// What `accept` decided for one event, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptOutcome {
    /// Committed; the IDs of its deliveries (also their `webhook-id`).
    Accepted { delivery_ids: Vec<String> },
    /// Its dedupe key was seen within the window (or earlier in the same batch).
    Duplicate,
}

/// A queued delivery. `id` is stable for its whole life (sent as `webhook-id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub destination: String,
    pub request: OutboundRequest,
    /// Attempts made so far.
    pub attempts: u32,
    /// Unix milliseconds.
    pub created_at: i64,
    pub first_attempt_at: Option<i64>,
    pub last_attempt_at: Option<i64>,
    /// When it is due (Unix milliseconds).
    pub next_attempt_at: i64,
    pub last_status: Option<u16>,
    /// Last error or a truncated response body; never the partner's secrets.
    pub last_error: Option<String>,
}

/// A delivery that will not be retried any more, kept for inspection and replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub delivery: Delivery,
    /// Unix milliseconds.
    pub dead_at: i64,
}

/// Counts for one destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DestinationCounts {
    pub destination: String,
    pub queued: u64,
    pub dead: u64,
}

/// Where one delivery stands (`GET /admin/deliveries/{id}`); never its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryStatus {
    pub id: String,
    pub destination: String,
    /// `queued`, `retrying`, `delivered` or `dead`.
    pub state: &'static str,
    pub attempts: u32,
    /// Unix milliseconds.
    pub created_at: i64,
    pub last_attempt_at: Option<i64>,
    /// When it is due next (queued or retrying), Unix milliseconds.
    pub next_attempt_at: Option<i64>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// When it was delivered or dead-lettered, Unix milliseconds.
    pub finished_at: Option<i64>,
    /// A delivered delivery's processing as the partner reported it later, for
    /// partners that process asynchronously (Google Data Manager).
    pub partner_status: Option<PartnerStatus>,
}

/// A partner's own later word on a delivered delivery: taken is not yet processed
/// (Google Data Manager answers `requestStatus:retrieve` per request). Fixed words and
/// the partner's reason codes only, never a value of the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerStatus {
    /// `processing`, `success`, `partial_success`, `failure`, or `unknown` (no final
    /// status after the last check).
    pub state: String,
    /// The partner's reasons (`PROCESSING_ERROR_REASON_INVALID_GCLID: 1 event`), or
    /// why the status is unknown.
    pub reason: Option<String>,
    /// The partner's ID of the request that carried the delivery (Google's
    /// `requestId`), to look it up there.
    pub request_id: String,
    /// When the relay last asked the partner (Unix ms); `None` before the first check.
    pub checked_at: Option<i64>,
}

/// A partner status check still to come (Google Data Manager's
/// `requestStatus:retrieve` of a delivered request), kept so that a restart resumes
/// it instead of leaving the deliveries at `processing`. Holds IDs and a URL with
/// credential markers, never credentials or event data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCheck {
    pub destination: String,
    /// The partner's ID of the request (Google's `requestId`).
    pub request_id: String,
    /// The deliveries the request carried.
    pub ids: Vec<String>,
    /// Where to ask, as stored: credential markers in place of credentials.
    pub url: String,
    /// Checks made so far.
    pub tries: u32,
    /// When the next check is due (Unix ms).
    pub due_at: i64,
}

/// Which dead letters a replay takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaySelector {
    All,
    Destination(String),
    Id(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Past a configured bound (queued deliveries, disk-space floor): try later.
    Full {
        reason: String,
        retry_after: Duration,
    },
    /// The store could not do the operation (I/O, fsync, corruption, unreachable).
    Unavailable(String),
    /// The write was sent, but whether it was applied is not known (the connection
    /// dropped before the answer; too few replicas confirmed it in time). Retrying
    /// the same request is safe: dedupe answers "duplicate" for what did get in.
    Unknown(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Full { reason, .. } => write!(f, "store full: {reason}"),
            StoreError::Unavailable(e) => write!(f, "store unavailable: {e}"),
            StoreError::Unknown(e) => write!(f, "store outcome unknown: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// The `Retry-After` a sender should get.
    pub fn retry_after(&self) -> Duration {
        match self {
            StoreError::Full { retry_after, .. } => *retry_after,
            StoreError::Unavailable(_) | StoreError::Unknown(_) => Duration::from_secs(5),
        }
    }

    /// What a sender is told became of its request after this error.
    pub fn outcome(&self) -> &'static str {
        match self {
            StoreError::Unknown(_) => "whether the events were accepted is unknown; retry with the same webhook-id (events that did get in come back as duplicates)",
            _ => "nothing was accepted, retry later",
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Told about every durable commit (metrics): how many operations it carried and how
/// long the write and fsync took.
pub trait StoreObserver: Send + Sync {
    fn committed(&self, operations: usize, took: Duration);
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reports commits to `observer` from now on (a backend without commits ignores it).
    fn observe(&self, _observer: Arc<dyn StoreObserver>) {}

    /// The per-installation secret dedupe keys are hashed with.
    fn dedupe_secret(&self) -> [u8; 32];

    /// Atomically and durably: for each event, in order, a duplicate if its key is
    /// marked and unexpired (or appeared earlier in `events`); otherwise mark the key
    /// until `now + window` and enqueue its deliveries, due now.
    async fn accept(
        &self,
        events: Vec<EventToAccept>,
        now_ms: i64,
    ) -> StoreResult<Vec<AcceptOutcome>>;

    /// Up to `limit` deliveries of `destination` due at `now_ms` and not claimed,
    /// earliest first; they are claimed until settled.
    async fn claim_due(
        &self,
        destination: &str,
        now_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>>;

    /// Earliest due time of an unclaimed delivery of `destination`, if any.
    async fn next_due(&self, destination: &str) -> StoreResult<Option<i64>>;

    /// Delivered: remove it.
    async fn complete(&self, id: &str) -> StoreResult<()>;

    /// Failed, will retry: store the updated delivery (attempts, statuses, `next_attempt_at`).
    async fn retry_later(&self, delivery: Delivery) -> StoreResult<()>;

    /// Failed for good: move to the dead-letter queue.
    async fn dead_letter(&self, delivery: Delivery, now_ms: i64) -> StoreResult<()>;

    /// Give a claim back untouched (shutdown): due again as it was.
    async fn release(&self, id: &str) -> StoreResult<()>;

    /// Dead letters, oldest first, optionally of one destination.
    async fn dlq_list(
        &self,
        destination: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetter>>;

    /// Put dead letters back on the queue, due now (same delivery IDs, attempts
    /// reset). Returns how many.
    async fn dlq_replay(&self, which: ReplaySelector, now_ms: i64) -> StoreResult<usize>;

    /// Queue depth and DLQ size per destination that has either.
    async fn counts(&self) -> StoreResult<Vec<DestinationCounts>>;

    /// Remove expired dedupe keys and dead letters older than the retention.
    /// Returns (keys removed, dead letters removed).
    async fn purge(&self, now_ms: i64) -> StoreResult<(usize, usize)>;

    /// Where one delivery stands, if the store still knows it (delivered ones are
    /// remembered for a while: the embedded store for the dead-letter retention,
    /// Redis for its receipt retention).
    async fn lookup(&self, id: &str) -> StoreResult<Option<DeliveryStatus>>;

    /// Records `status` on the receipts of those of `ids` that are delivered (the
    /// others are left as they are). Returns how many it recorded it on.
    async fn record_partner_status(
        &self,
        ids: &[String],
        status: &PartnerStatus,
    ) -> StoreResult<usize>;

    /// Whether other relay processes may use this store at the same time (Redis);
    /// the embedded store belongs to one process (its data directory is locked).
    fn shared(&self) -> bool;

    /// Keeps `check`, replacing the one of the same destination and request ID.
    async fn keep_check(&self, check: &PendingCheck) -> StoreResult<()>;

    /// Forgets the check of `request_id` at `destination` (its final word came, or
    /// the relay gave up); no error when there is none.
    async fn forget_check(&self, destination: &str, request_id: &str) -> StoreResult<()>;

    /// Every check kept, in no particular order.
    async fn pending_checks(&self) -> StoreResult<Vec<PendingCheck>>;

    /// The destination is gone (its rule file removed): move everything still queued
    /// for it to the dead-letter queue with `reason`. Returns how many.
    async fn retire_destination(
        &self,
        destination: &str,
        reason: &str,
        now_ms: i64,
    ) -> StoreResult<usize>;

    /// Whether the store can take writes now (for `/readyz`); if not, why, in words
    /// for an operator.
    async fn ready(&self) -> Result<(), String>;

    /// Finishes the writes in progress and closes the store (files, connections),
    /// whoever else still holds it; later calls answer `Unavailable`.
    async fn close(&self);
}
