//! The embedded backend: one redb file in `data_dir`, written by one writer thread
//! with group commit.
//!
//! Owns: `data_dir/relay.redb` (queue, dedupe marks, dead letters, counters) and
//! `data_dir/dedupe.key` (the installation's 32-byte dedupe secret, mode 0600).
//! Never: sees a raw event, stores a plaintext dedupe key, or answers a write before
//! its commit is on stable storage.
//!
//! # Group commit
//! Every write (accept, complete, retry_later, dead_letter, dlq_replay, purge) is sent
//! to one writer thread over a bounded channel. The writer takes everything pending (up
//! to [`MAX_BATCH`] operations) into ONE write transaction, commits it with
//! `Durability::Immediate` (fsync), and only then answers each caller. Concurrent
//! accepts therefore share one fsync. If the commit fails, every operation in it gets
//! `StoreError::Unavailable` and none of them is applied. If one operation fails while
//! being applied (a storage error), the transaction is aborted and the operations of
//! that batch are re-run one transaction each, so one bad operation does not fail the
//! others. Backpressure (`StoreError::Full`) is decided per operation before it writes
//! anything, so a refused accept leaves the batch's transaction untouched.
//!
//! Reads (`claim_due`, `next_due`, `dlq_list`, `counts`) use their own read
//! transactions on the blocking pool and never wait for the writer.
//!
//! # Tables
//! | table | key | value | what for |
//! |---|---|---|---|
//! | `deliveries` | id `&str` | `Delivery` as JSON | the queue |
//! | `due` | `(destination, next_attempt_at ms, id)` | `()` | per-destination range scan of what is due |
//! | `dedupe` | `&[u8; 16]` (keyed hash) | expiry, Unix seconds `u64` | duplicate check |
//! | `dedupe_expiry` | `(expiry s, &[u8; 16])` | `()` | `purge` by range, no full scan |
//! | `dead` | id `&str` | `DeadLetter` as JSON | the dead-letter queue |
//! | `dead_by_destination` | `(destination, dead_at ms, id)` | `()` | `dlq_list`/`dlq_replay` of one destination |
//! | `dead_by_time` | `(dead_at ms, id)` | `()` | oldest-first listing, retention purge by range |
//! | `counts` | destination `&str` | `(queued, dead)` | `counts()` in O(destinations) |
//!
//! Every table is kept consistent with the others inside the same write transaction.
//! `counts` rows whose both counters are zero are removed.
//!
//! # Claims
//! Claims live in memory only (a set of delivery IDs). After a crash or restart every
//! queued delivery is due again: at-least-once. Settling (complete / retry_later /
//! dead_letter) drops the claim after its commit; `release` drops it at once. A settle
//! whose commit fails keeps its claim: the worker decides (usually `release`).
//!
//! # Edges worth knowing
//! - `complete`, `retry_later` and `dead_letter` of an ID that is no longer queued are
//!   no-ops (`Ok`): a settled delivery is never brought back by a late caller. The
//!   stored destination wins over the one in the caller's `Delivery`.
//! - `dlq_replay` is an operator action and is not refused by `max_queued`.
//! - Opening a `relay.redb` whose `dedupe.key` is gone is refused: a new secret would
//!   silently forget every mark of the window.
//! - Throughput is bounded by redb's cost per B-tree insert (about 8 inserts per event
//!   with 3 deliveries; the dedupe table takes random keys), not by fsync: see
//!   `benches/store_accept.rs`.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::RngCore;
use redb::{Database, ReadableTable, Table, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::{
    AcceptOutcome, DeadLetter, Delivery, DestinationCounts, EventToAccept, ReplaySelector, Store,
    StoreError, StoreResult,
};

const DELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("deliveries");
const DUE: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("due");
const DEDUPE: TableDefinition<&[u8; 16], u64> = TableDefinition::new("dedupe");
const DEDUPE_EXPIRY: TableDefinition<(u64, &[u8; 16]), ()> = TableDefinition::new("dedupe_expiry");
const DEAD: TableDefinition<&str, &[u8]> = TableDefinition::new("dead");
const DEAD_BY_DESTINATION: TableDefinition<(&str, i64, &str), ()> =
    TableDefinition::new("dead_by_destination");
const DEAD_BY_TIME: TableDefinition<(i64, &str), ()> = TableDefinition::new("dead_by_time");
const COUNTS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("counts");

/// Most operations folded into one write transaction (one fsync).
pub const MAX_BATCH: usize = 1024;
/// Operations waiting for the writer; callers past this wait (bounded queue).
const CHANNEL_CAPACITY: usize = 4096;
/// Dedupe keys / dead letters removed per purge transaction, so a large purge does not
/// hold the writer (and every accept behind it) for long.
const PURGE_CHUNK: usize = 10_000;
/// redb page cache. redb's default is 1 GiB; the relay's memory goal is far below that.
const CACHE_BYTES: usize = 32 * 1024 * 1024;
/// How long a free-space reading is trusted.
const DISK_CHECK_EVERY: Duration = Duration::from_secs(1);
/// `Retry-After` when full.
const FULL_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub data_dir: PathBuf,
    /// How long a dedupe key stays marked after its event is accepted.
    pub dedupe_window: Duration,
    /// Most deliveries queued (all destinations) before `accept` answers `Full`.
    pub max_queued: u64,
    /// Free bytes the data directory's file system must keep, else `accept` answers `Full`.
    pub min_free_space: u64,
    /// Dead letters older than this are removed by `purge`.
    pub dlq_retention: Duration,
}

/// The redb-backed [`Store`]. Dropping it stops the writer thread after the batch in
/// progress and closes the database.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    secret: [u8; 32],
    tx: Option<mpsc::Sender<Pending>>,
    writer: Option<JoinHandle<()>>,
}

struct Shared {
    db: Database,
    claimed: Mutex<HashSet<String>>,
    writer_alive: AtomicBool,
    commits: AtomicU64,
}

impl Shared {
    /// The claimed set. A panic while holding it cannot leave it inconsistent (single
    /// inserts/removes), so a poisoned lock is used as is.
    fn claimed(&self) -> MutexGuard<'_, HashSet<String>> {
        self.claimed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Op {
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
    Purge {
        now_ms: i64,
    },
}

enum Outcome {
    Accepted(Vec<AcceptOutcome>),
    Done,
    Replayed(usize),
    Purged(usize, usize),
}

struct Pending {
    op: Op,
    reply: oneshot::Sender<StoreResult<Outcome>>,
}

fn unavailable(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{context}: {e}"))
}

/// A failure while applying one operation inside a write transaction.
struct ApplyError(String);

impl<E: Into<redb::Error>> From<E> for ApplyError {
    fn from(e: E) -> Self {
        ApplyError(e.into().to_string())
    }
}

fn decode_err(what: &str, e: serde_json::Error) -> ApplyError {
    ApplyError(format!("corrupt {what}: {e}"))
}

impl EmbeddedStore {
    /// Open (or create) the store in `opts.data_dir` and start its writer thread.
    pub fn open(opts: EmbeddedOptions) -> Result<EmbeddedStore, StoreError> {
        fs::create_dir_all(&opts.data_dir)
            .map_err(|e| unavailable(&format!("create {}", opts.data_dir.display()), e))?;
        let path = opts.data_dir.join("relay.redb");
        let key_path = opts.data_dir.join("dedupe.key");
        // A database without its key would silently stop recognising every mark made
        // so far (duplicates forwarded for a whole window): refuse instead.
        if path.exists() && !key_path.exists() {
            return Err(StoreError::Unavailable(format!(
                "{} exists but {} is missing: restore the key file, or move the database \
                 away to start with empty dedupe state",
                path.display(),
                key_path.display()
            )));
        }
        let secret = load_or_create_secret(&key_path)?;

        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| unavailable(&format!("open {}", path.display()), e))?;

        // Create every table up front so read transactions always find them, and
        // read the queue total the backpressure check starts from.
        let queued_total = (|| -> Result<u64, ApplyError> {
            let txn = db.begin_write()?;
            let total = {
                let t = Tables::open(&txn)?;
                let mut total = 0u64;
                for row in t.counts.iter()? {
                    let (_, v) = row?;
                    total = total.saturating_add(v.value().0);
                }
                total
            };
            txn.commit()?;
            Ok(total)
        })()
        .map_err(|e| StoreError::Unavailable(format!("open {}: {}", path.display(), e.0)))?;

        let shared = Arc::new(Shared {
            db,
            claimed: Mutex::new(HashSet::new()),
            writer_alive: AtomicBool::new(true),
            commits: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let writer_state = Writer {
            shared: shared.clone(),
            dedupe_window_ms: duration_ms(opts.dedupe_window),
            dlq_retention_ms: duration_ms(opts.dlq_retention),
            max_queued: opts.max_queued,
            min_free_space: opts.min_free_space,
            data_dir: opts.data_dir.clone(),
            queued_total,
            disk: None,
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_state.run(rx))
            .map_err(|e| unavailable("start the store writer thread", e))?;

        Ok(EmbeddedStore {
            shared,
            secret,
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// Write transactions committed so far (for metrics, and for tests that check
    /// that concurrent writes share commits).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    async fn submit(&self, op: Op) -> StoreResult<Outcome> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("store is closed".into()))?;
        let (reply, rx) = oneshot::channel();
        tx.send(Pending { op, reply })
            .await
            .map_err(|_| StoreError::Unavailable("store writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("store writer stopped mid-write".into()))?
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T, ApplyError> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| unavailable("store read", e))?
            .map_err(|e| StoreError::Unavailable(format!("store read: {}", e.0)))
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop once it has drained it.
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn unexpected() -> StoreError {
    StoreError::Unavailable("store writer answered with the wrong kind of result".into())
}

#[async_trait]
impl Store for EmbeddedStore {
    fn dedupe_secret(&self) -> [u8; 32] {
        self.secret
    }

    async fn accept(
        &self,
        events: Vec<EventToAccept>,
        now_ms: i64,
    ) -> StoreResult<Vec<AcceptOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        match self.submit(Op::Accept { events, now_ms }).await? {
            Outcome::Accepted(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    async fn claim_due(
        &self,
        destination: &str,
        now_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let destination = destination.to_owned();
        self.read(move |shared| {
            // The claimed set is locked BEFORE the snapshot is taken: a settle removes
            // its claim only after its commit, so either we see the commit, or the id
            // is still claimed and skipped. Never a stale copy of a settled delivery.
            let mut claimed = shared.claimed();
            let txn = shared.db.begin_read()?;
            let due = txn.open_table(DUE)?;
            let deliveries = txn.open_table(DELIVERIES)?;
            let mut out = Vec::new();
            for row in due.range((destination.as_str(), i64::MIN, "")..)? {
                let (key, _) = row?;
                let (dest, at, id) = key.value();
                if dest != destination || at > now_ms {
                    break;
                }
                if claimed.contains(id) {
                    continue;
                }
                if let Some(v) = deliveries.get(id)? {
                    let d: Delivery =
                        serde_json::from_slice(v.value()).map_err(|e| decode_err("delivery", e))?;
                    out.push(d);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            for d in &out {
                claimed.insert(d.id.clone());
            }
            Ok(out)
        })
        .await
    }

    async fn next_due(&self, destination: &str) -> StoreResult<Option<i64>> {
        let destination = destination.to_owned();
        self.read(move |shared| {
            let claimed = shared.claimed();
            let txn = shared.db.begin_read()?;
            let due = txn.open_table(DUE)?;
            for row in due.range((destination.as_str(), i64::MIN, "")..)? {
                let (key, _) = row?;
                let (dest, at, id) = key.value();
                if dest != destination {
                    break;
                }
                if !claimed.contains(id) {
                    return Ok(Some(at));
                }
            }
            Ok(None)
        })
        .await
    }

    async fn complete(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        self.submit(Op::Complete { id }).await.map(|_| ())
    }

    async fn retry_later(&self, delivery: Delivery) -> StoreResult<()> {
        self.submit(Op::RetryLater { delivery }).await.map(|_| ())
    }

    async fn dead_letter(&self, delivery: Delivery, now_ms: i64) -> StoreResult<()> {
        self.submit(Op::DeadLetter { delivery, now_ms })
            .await
            .map(|_| ())
    }

    async fn release(&self, id: &str) -> StoreResult<()> {
        self.shared.claimed().remove(id);
        Ok(())
    }

    async fn dlq_list(
        &self,
        destination: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetter>> {
        let destination = destination.map(str::to_owned);
        self.read(move |shared| {
            let txn = shared.db.begin_read()?;
            let dead = txn.open_table(DEAD)?;
            let mut ids = Vec::new();
            match &destination {
                Some(d) => {
                    let index = txn.open_table(DEAD_BY_DESTINATION)?;
                    for row in index.range((d.as_str(), i64::MIN, "")..)? {
                        let (key, _) = row?;
                        let (dest, _, id) = key.value();
                        if dest != d || ids.len() >= limit {
                            break;
                        }
                        ids.push(id.to_owned());
                    }
                }
                None => {
                    let index = txn.open_table(DEAD_BY_TIME)?;
                    for row in index.iter()? {
                        if ids.len() >= limit {
                            break;
                        }
                        let (key, _) = row?;
                        ids.push(key.value().1.to_owned());
                    }
                }
            }
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(v) = dead.get(id.as_str())? {
                    out.push(
                        serde_json::from_slice(v.value())
                            .map_err(|e| decode_err("dead letter", e))?,
                    );
                }
            }
            Ok(out)
        })
        .await
    }

    async fn dlq_replay(&self, which: ReplaySelector, now_ms: i64) -> StoreResult<usize> {
        match self.submit(Op::Replay { which, now_ms }).await? {
            Outcome::Replayed(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn counts(&self) -> StoreResult<Vec<DestinationCounts>> {
        self.read(|shared| {
            let txn = shared.db.begin_read()?;
            let counts = txn.open_table(COUNTS)?;
            let mut out = Vec::new();
            for row in counts.iter()? {
                let (k, v) = row?;
                let (queued, dead) = v.value();
                out.push(DestinationCounts {
                    destination: k.value().to_owned(),
                    queued,
                    dead,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn purge(&self, now_ms: i64) -> StoreResult<(usize, usize)> {
        // In chunks, each its own operation, so accepts interleave with a long purge.
        let (mut keys, mut dead) = (0, 0);
        loop {
            match self.submit(Op::Purge { now_ms }).await? {
                Outcome::Purged(k, d) => {
                    keys += k;
                    dead += d;
                    if k < PURGE_CHUNK && d < PURGE_CHUNK {
                        return Ok((keys, dead));
                    }
                }
                _ => return Err(unexpected()),
            }
        }
    }

    async fn ready(&self) -> bool {
        self.tx.is_some() && self.shared.writer_alive.load(Ordering::Acquire)
    }
}

/// All tables, opened once per write transaction.
struct Tables<'t> {
    deliveries: Table<'t, &'static str, &'static [u8]>,
    due: Table<'t, (&'static str, i64, &'static str), ()>,
    dedupe: Table<'t, &'static [u8; 16], u64>,
    dedupe_expiry: Table<'t, (u64, &'static [u8; 16]), ()>,
    dead: Table<'t, &'static str, &'static [u8]>,
    dead_by_destination: Table<'t, (&'static str, i64, &'static str), ()>,
    dead_by_time: Table<'t, (i64, &'static str), ()>,
    counts: Table<'t, &'static str, (u64, u64)>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Tables<'t>, ApplyError> {
        Ok(Tables {
            deliveries: txn.open_table(DELIVERIES)?,
            due: txn.open_table(DUE)?,
            dedupe: txn.open_table(DEDUPE)?,
            dedupe_expiry: txn.open_table(DEDUPE_EXPIRY)?,
            dead: txn.open_table(DEAD)?,
            dead_by_destination: txn.open_table(DEAD_BY_DESTINATION)?,
            dead_by_time: txn.open_table(DEAD_BY_TIME)?,
            counts: txn.open_table(COUNTS)?,
        })
    }

    fn stored_delivery(&self, id: &str) -> Result<Option<Delivery>, ApplyError> {
        match self.deliveries.get(id)? {
            Some(v) => Ok(Some(
                serde_json::from_slice(v.value()).map_err(|e| decode_err("delivery", e))?,
            )),
            None => Ok(None),
        }
    }

    fn put_delivery(&mut self, d: &Delivery) -> Result<(), ApplyError> {
        let bytes = serde_json::to_vec(d).map_err(|e| decode_err("delivery", e))?;
        self.deliveries.insert(d.id.as_str(), bytes.as_slice())?;
        self.due.insert(
            (d.destination.as_str(), d.next_attempt_at, d.id.as_str()),
            (),
        )?;
        Ok(())
    }

    fn remove_delivery(&mut self, d: &Delivery) -> Result<(), ApplyError> {
        self.deliveries.remove(d.id.as_str())?;
        self.due
            .remove((d.destination.as_str(), d.next_attempt_at, d.id.as_str()))?;
        Ok(())
    }

    fn remove_dead(&mut self, dl: &DeadLetter) -> Result<(), ApplyError> {
        let id = dl.delivery.id.as_str();
        self.dead.remove(id)?;
        self.dead_by_destination
            .remove((dl.delivery.destination.as_str(), dl.dead_at, id))?;
        self.dead_by_time.remove((dl.dead_at, id))?;
        Ok(())
    }

    fn stored_dead(&self, id: &str) -> Result<Option<DeadLetter>, ApplyError> {
        match self.dead.get(id)? {
            Some(v) => Ok(Some(
                serde_json::from_slice(v.value()).map_err(|e| decode_err("dead letter", e))?,
            )),
            None => Ok(None),
        }
    }
}

/// What one batch changes besides its tables, applied only once its commit is durable.
#[derive(Default)]
struct BatchEffects {
    /// Change to the total of queued deliveries.
    queued_delta: i64,
    /// Per-destination (queued, dead) changes, written to `counts` before commit.
    counts: HashMap<String, (i64, i64)>,
    /// Claims to drop after the commit.
    settled: Vec<String>,
}

impl BatchEffects {
    fn count(&mut self, destination: &str, queued: i64, dead: i64) {
        let c = self.counts.entry(destination.to_owned()).or_default();
        c.0 += queued;
        c.1 += dead;
        self.queued_delta += queued;
    }
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    dedupe_window_ms: i64,
    dlq_retention_ms: i64,
    max_queued: u64,
    min_free_space: u64,
    data_dir: PathBuf,
    /// Queued deliveries as of the last commit.
    queued_total: u64,
    /// Last free-space reading and when it was taken.
    disk: Option<(Instant, u64)>,
}

/// Marks the writer dead when its thread ends, however it ends.
struct AliveFlag(Arc<Shared>);

impl Drop for AliveFlag {
    fn drop(&mut self) {
        self.0.writer_alive.store(false, Ordering::Release);
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        let _alive = AliveFlag(self.shared.clone());
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            self.run_batch(std::mem::take(&mut batch));
        }
    }

    fn run_batch(&mut self, batch: Vec<Pending>) {
        match self.commit_batch(&batch) {
            Ok(results) => answer(batch, results),
            Err(BatchFailure::Apply(_)) if batch.len() > 1 => {
                // One operation failed while applying: re-run each alone, so only the
                // operation that fails again gets the error.
                for p in batch {
                    let one = vec![p];
                    match self.commit_batch(&one) {
                        Ok(results) => answer(one, results),
                        Err(f) => answer_all(one, f.message()),
                    }
                }
            }
            Err(f) => answer_all(batch, f.message()),
        }
    }

    /// Apply every operation of `batch` in one write transaction and commit it durably.
    fn commit_batch(
        &mut self,
        batch: &[Pending],
    ) -> Result<Vec<StoreResult<Outcome>>, BatchFailure> {
        let mut txn = self
            .shared
            .db
            .begin_write()
            .map_err(|e| BatchFailure::Commit(format!("begin write: {e}")))?;
        txn.set_durability(redb::Durability::Immediate);
        let mut effects = BatchEffects::default();
        let applied = (|| -> Result<Vec<StoreResult<Outcome>>, ApplyError> {
            let mut t = Tables::open(&txn)?;
            let mut results = Vec::with_capacity(batch.len());
            for p in batch {
                results.push(self.apply(&mut t, &mut effects, &p.op)?);
            }
            flush_counts(&mut t, &effects)?;
            Ok(results)
        })();
        let results = match applied {
            Ok(r) => r,
            Err(e) => {
                let _ = txn.abort();
                return Err(BatchFailure::Apply(e.0));
            }
        };
        txn.commit()
            .map_err(|e| BatchFailure::Commit(format!("commit: {e}")))?;
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        self.queued_total = self
            .queued_total
            .saturating_add_signed(effects.queued_delta);
        if !effects.settled.is_empty() {
            let mut claimed = self.shared.claimed();
            for id in &effects.settled {
                claimed.remove(id);
            }
        }
        Ok(results)
    }

    fn apply(
        &mut self,
        t: &mut Tables<'_>,
        fx: &mut BatchEffects,
        op: &Op,
    ) -> Result<StoreResult<Outcome>, ApplyError> {
        match op {
            Op::Accept { events, now_ms } => self.accept(t, fx, events, *now_ms),
            Op::Complete { id } => {
                if let Some(d) = t.stored_delivery(id)? {
                    t.remove_delivery(&d)?;
                    fx.count(&d.destination, -1, 0);
                }
                fx.settled.push(id.clone());
                Ok(Ok(Outcome::Done))
            }
            Op::RetryLater { delivery } => {
                // Only a delivery still queued is updated: one already settled is not
                // brought back. The stored destination wins over the caller's.
                if let Some(old) = t.stored_delivery(&delivery.id)? {
                    t.remove_delivery(&old)?;
                    let mut d = delivery.clone();
                    d.destination = old.destination;
                    t.put_delivery(&d)?;
                }
                fx.settled.push(delivery.id.clone());
                Ok(Ok(Outcome::Done))
            }
            Op::DeadLetter { delivery, now_ms } => {
                if let Some(old) = t.stored_delivery(&delivery.id)? {
                    t.remove_delivery(&old)?;
                    let mut d = delivery.clone();
                    d.destination = old.destination;
                    let dl = DeadLetter {
                        delivery: d,
                        dead_at: *now_ms,
                    };
                    let bytes =
                        serde_json::to_vec(&dl).map_err(|e| decode_err("dead letter", e))?;
                    let (id, dest) = (dl.delivery.id.as_str(), dl.delivery.destination.as_str());
                    t.dead.insert(id, bytes.as_slice())?;
                    t.dead_by_destination.insert((dest, dl.dead_at, id), ())?;
                    t.dead_by_time.insert((dl.dead_at, id), ())?;
                    fx.count(dest, -1, 1);
                }
                fx.settled.push(delivery.id.clone());
                Ok(Ok(Outcome::Done))
            }
            Op::Replay { which, now_ms } => {
                let ids: Vec<String> = match which {
                    ReplaySelector::Id(id) => vec![id.clone()],
                    ReplaySelector::All => {
                        let mut ids = Vec::new();
                        for row in t.dead.iter()? {
                            ids.push(row?.0.value().to_owned());
                        }
                        ids
                    }
                    ReplaySelector::Destination(d) => {
                        let mut ids = Vec::new();
                        for row in t.dead_by_destination.range((d.as_str(), i64::MIN, "")..)? {
                            let (key, _) = row?;
                            let (dest, _, id) = key.value();
                            if dest != d {
                                break;
                            }
                            ids.push(id.to_owned());
                        }
                        ids
                    }
                };
                let mut n = 0;
                for id in ids {
                    let Some(dl) = t.stored_dead(&id)? else {
                        continue;
                    };
                    t.remove_dead(&dl)?;
                    let mut d = dl.delivery;
                    d.attempts = 0;
                    d.first_attempt_at = None;
                    d.next_attempt_at = *now_ms;
                    t.put_delivery(&d)?;
                    fx.count(&d.destination, 1, -1);
                    n += 1;
                }
                Ok(Ok(Outcome::Replayed(n)))
            }
            Op::Purge { now_ms } => {
                let now_s = u64::try_from(now_ms.div_euclid(1000)).unwrap_or(0);
                // A key is expired when its expiry <= now (seconds).
                let mut keys = Vec::new();
                for row in t
                    .dedupe_expiry
                    .range((0u64, &[0u8; 16])..=(now_s, &[0xffu8; 16]))?
                {
                    if keys.len() >= PURGE_CHUNK {
                        break;
                    }
                    let (key, _) = row?;
                    let (exp, k) = key.value();
                    keys.push((exp, *k));
                }
                for (exp, k) in &keys {
                    t.dedupe_expiry.remove((*exp, k))?;
                    // The mark may have been renewed with a later expiry: keep that one.
                    let current = t.dedupe.get(k)?.map(|v| v.value());
                    if current == Some(*exp) {
                        t.dedupe.remove(k)?;
                    }
                }
                let cutoff = now_ms.saturating_sub(self.dlq_retention_ms);
                let mut dead = Vec::new();
                for row in t.dead_by_time.range((i64::MIN, "")..)? {
                    if dead.len() >= PURGE_CHUNK {
                        break;
                    }
                    let (key, _) = row?;
                    let (at, id) = key.value();
                    if at >= cutoff {
                        break;
                    }
                    dead.push(id.to_owned());
                }
                let mut removed = 0;
                for id in &dead {
                    if let Some(dl) = t.stored_dead(id)? {
                        t.remove_dead(&dl)?;
                        fx.count(&dl.delivery.destination, 0, -1);
                        removed += 1;
                    }
                }
                Ok(Ok(Outcome::Purged(keys.len(), removed)))
            }
        }
    }

    fn accept(
        &mut self,
        t: &mut Tables<'_>,
        fx: &mut BatchEffects,
        events: &[EventToAccept],
        now_ms: i64,
    ) -> Result<StoreResult<Outcome>, ApplyError> {
        if let Some(reason) = self.disk_too_full() {
            return Ok(Err(StoreError::Full {
                reason,
                retry_after: FULL_RETRY_AFTER,
            }));
        }
        // Decide every event first: a refused accept must write nothing.
        let mut seen = HashSet::with_capacity(events.len());
        let mut fresh = Vec::with_capacity(events.len());
        let mut new_deliveries = 0u64;
        for ev in events {
            let key = &ev.dedupe_key.0;
            let duplicate = !seen.insert(*key)
                || match t.dedupe.get(key)? {
                    Some(exp) => expiry_ms(exp.value()) > now_ms,
                    None => false,
                };
            if !duplicate {
                new_deliveries += ev.deliveries.len() as u64;
            }
            fresh.push(!duplicate);
        }
        let queued_after = self
            .queued_total
            .saturating_add_signed(fx.queued_delta)
            .saturating_add(new_deliveries);
        if queued_after > self.max_queued {
            return Ok(Err(StoreError::Full {
                reason: format!("queue holds its maximum of {} deliveries", self.max_queued),
                retry_after: FULL_RETRY_AFTER,
            }));
        }

        let expiry = expiry_s(now_ms, self.dedupe_window_ms);
        let mut outcomes = Vec::with_capacity(events.len());
        for (ev, fresh) in events.iter().zip(fresh) {
            if !fresh {
                outcomes.push(AcceptOutcome::Duplicate);
                continue;
            }
            let key = &ev.dedupe_key.0;
            // An expired mark not purged yet: replace it and its index entry.
            let old = t.dedupe.insert(key, expiry)?.map(|v| v.value());
            if let Some(old) = old {
                t.dedupe_expiry.remove((old, key))?;
            }
            t.dedupe_expiry.insert((expiry, key), ())?;
            let mut ids = Vec::with_capacity(ev.deliveries.len());
            for nd in &ev.deliveries {
                let d = Delivery {
                    id: new_delivery_id(now_ms),
                    destination: nd.destination.clone(),
                    request: nd.request.clone(),
                    attempts: 0,
                    created_at: now_ms,
                    first_attempt_at: None,
                    last_attempt_at: None,
                    next_attempt_at: now_ms,
                    last_status: None,
                    last_error: None,
                };
                t.put_delivery(&d)?;
                fx.count(&d.destination, 1, 0);
                ids.push(d.id);
            }
            outcomes.push(AcceptOutcome::Accepted { delivery_ids: ids });
        }
        Ok(Ok(Outcome::Accepted(outcomes)))
    }

    /// `Some(reason)` when the data directory's free space is under the floor. The
    /// reading is cached for [`DISK_CHECK_EVERY`]; a failed reading does not refuse
    /// writes (a real write failure would surface as `Unavailable`).
    fn disk_too_full(&mut self) -> Option<String> {
        if self.min_free_space == 0 {
            return None;
        }
        let free = match self.disk {
            Some((at, free)) if at.elapsed() < DISK_CHECK_EVERY => free,
            _ => {
                let free = free_bytes(&self.data_dir).unwrap_or(u64::MAX);
                self.disk = Some((Instant::now(), free));
                free
            }
        };
        (free < self.min_free_space).then(|| {
            format!(
                "free space in {} is {} bytes, under the floor of {} bytes",
                self.data_dir.display(),
                free,
                self.min_free_space
            )
        })
    }
}

fn flush_counts(t: &mut Tables<'_>, fx: &BatchEffects) -> Result<(), ApplyError> {
    for (dest, (dq, dd)) in &fx.counts {
        if *dq == 0 && *dd == 0 {
            continue;
        }
        let (q, d) = t
            .counts
            .get(dest.as_str())?
            .map(|v| v.value())
            .unwrap_or((0, 0));
        let q = q.saturating_add_signed(*dq);
        let d = d.saturating_add_signed(*dd);
        if q == 0 && d == 0 {
            t.counts.remove(dest.as_str())?;
        } else {
            t.counts.insert(dest.as_str(), (q, d))?;
        }
    }
    Ok(())
}

enum BatchFailure {
    /// An operation failed while being applied; the transaction was aborted.
    Apply(String),
    /// The transaction could not begin or commit.
    Commit(String),
}

impl BatchFailure {
    fn message(self) -> String {
        match self {
            BatchFailure::Apply(m) | BatchFailure::Commit(m) => m,
        }
    }
}

fn answer(batch: Vec<Pending>, results: Vec<StoreResult<Outcome>>) {
    for (p, r) in batch.into_iter().zip(results) {
        // The caller may have gone away (cancelled request); the write stands.
        let _ = p.reply.send(r);
    }
}

fn answer_all(batch: Vec<Pending>, message: String) {
    for p in batch {
        let _ = p.reply.send(Err(StoreError::Unavailable(format!(
            "store write failed: {message}"
        ))));
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Expiry in Unix seconds of a mark made at `now_ms`, rounded up so a key is never
/// forgotten before its full window.
fn expiry_s(now_ms: i64, window_ms: i64) -> u64 {
    let until = now_ms.saturating_add(window_ms).max(0);
    u64::try_from(until).unwrap_or(0).div_ceil(1000)
}

fn expiry_ms(expiry_s: u64) -> i64 {
    i64::try_from(expiry_s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// `dlv_` + 26 Crockford base32 characters of 128 bits: 48 bits of the accept time in
/// milliseconds then 80 random bits (ULID layout). The time prefix keeps inserts into
/// `deliveries` near the end of the B-tree; 80 random bits keep IDs unguessable and
/// unique.
fn new_delivery_id(now_ms: i64) -> String {
    let mut random = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut random);
    let mut bits = u128::from(u64::try_from(now_ms.max(0)).unwrap_or(0) & 0xffff_ffff_ffff) << 80;
    for (i, b) in random.iter().enumerate() {
        bits |= u128::from(*b) << (72 - 8 * i);
    }
    let mut id = String::with_capacity(30);
    id.push_str("dlv_");
    for i in (0..26).rev() {
        id.push(char::from(CROCKFORD[((bits >> (5 * i)) & 31) as usize]));
    }
    id
}

fn free_bytes(path: &Path) -> io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs only writes into the struct we pass; the path is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    Ok(u64::from(s.f_bavail).saturating_mul(u64::from(s.f_frsize)))
}

/// The installation's dedupe secret: read it, or create it once (temp file, fsync,
/// rename, fsync the directory) with mode 0600.
fn load_or_create_secret(path: &Path) -> Result<[u8; 32], StoreError> {
    let ctx = || format!("dedupe key {}", path.display());
    match fs::File::open(path) {
        Ok(mut f) => {
            let mut buf = Vec::with_capacity(33);
            f.read_to_end(&mut buf)
                .map_err(|e| unavailable(&ctx(), e))?;
            return <[u8; 32]>::try_from(buf.as_slice()).map_err(|_| {
                StoreError::Unavailable(format!(
                    "{}: expected 32 bytes, found {}",
                    ctx(),
                    buf.len()
                ))
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(unavailable(&ctx(), e)),
    }
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let tmp = path.with_extension("key.tmp");
    let write = || -> io::Result<()> {
        // A leftover from a crash could carry other permissions: start afresh.
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&secret)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| unavailable(&ctx(), e))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::{Method, OutboundRequest};
    use crate::store::{DedupeKey, NewDelivery};
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    const NOW: i64 = 1_700_000_000_000;
    const DAY_MS: i64 = 86_400_000;

    fn options(dir: &Path) -> EmbeddedOptions {
        EmbeddedOptions {
            data_dir: dir.to_path_buf(),
            dedupe_window: Duration::from_secs(7 * 86_400),
            max_queued: 1_000_000,
            min_free_space: 0,
            dlq_retention: Duration::from_secs(14 * 86_400),
        }
    }

    fn open(dir: &Path) -> EmbeddedStore {
        EmbeddedStore::open(options(dir)).expect("open store")
    }

    fn key(n: u64) -> DedupeKey {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&n.to_be_bytes());
        DedupeKey(k)
    }

    fn event(k: DedupeKey, destinations: &[&str]) -> EventToAccept {
        EventToAccept {
            dedupe_key: k,
            deliveries: destinations
                .iter()
                .map(|d| NewDelivery {
                    destination: (*d).to_owned(),
                    request: OutboundRequest {
                        method: Method::Post,
                        url: format!("https://{d}.example.test/postback"),
                        headers: vec![("Content-Type".into(), "application/json".into())],
                        body: Some(r#"{"event_name":"purchase","value":9.99}"#.into()),
                        event_time_ms: None,
                    },
                })
                .collect(),
        }
    }

    fn ids(o: &AcceptOutcome) -> Vec<String> {
        match o {
            AcceptOutcome::Accepted { delivery_ids } => delivery_ids.clone(),
            AcceptOutcome::Duplicate => panic!("expected accepted, got duplicate"),
        }
    }

    async fn counts_of(s: &EmbeddedStore) -> Vec<(String, u64, u64)> {
        let mut c: Vec<_> = s
            .counts()
            .await
            .expect("counts")
            .into_iter()
            .map(|c| (c.destination, c.queued, c.dead))
            .collect();
        c.sort();
        c
    }

    fn c(d: &str, q: u64, dead: u64) -> (String, u64, u64) {
        (d.to_owned(), q, dead)
    }

    #[tokio::test]
    async fn accepted_deliveries_are_claimed_once_when_due() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let out = s
            .accept(vec![event(key(1), &["a", "b"]), event(key(2), &["a"])], NOW)
            .await
            .expect("accept");
        assert_eq!(out.len(), 2);
        let first = ids(&out[0]);
        assert_eq!(first.len(), 2);
        for id in first.iter().chain(ids(&out[1]).iter()) {
            assert!(id.starts_with("dlv_") && id.len() == 30, "{id}");
        }

        assert!(s
            .claim_due("a", NOW - 1, 10)
            .await
            .expect("claim")
            .is_empty());
        assert_eq!(s.next_due("a").await.expect("next"), Some(NOW));
        let claimed = s.claim_due("a", NOW, 10).await.expect("claim");
        assert_eq!(claimed.len(), 2);
        assert!(claimed
            .iter()
            .all(|d| d.destination == "a" && d.attempts == 0));
        // Both are due at the same millisecond: the order between them is by id.
        assert!(claimed.iter().any(|d| d.id == first[0]));
        assert!(claimed
            .iter()
            .all(|d| d.request.url == "https://a.example.test/postback"));
        // Claimed: not handed out again, not reported as next due.
        assert!(s.claim_due("a", NOW, 10).await.expect("claim").is_empty());
        assert_eq!(s.next_due("a").await.expect("next"), None);
        assert_eq!(s.claim_due("b", NOW, 10).await.expect("claim").len(), 1);
        // Released: due again.
        s.release(&claimed[1].id).await.expect("release");
        assert_eq!(s.claim_due("a", NOW, 10).await.expect("claim").len(), 1);
        assert_eq!(counts_of(&s).await, vec![c("a", 2, 0), c("b", 1, 0)]);
    }

    #[tokio::test]
    async fn duplicate_within_window_is_refused_also_in_one_batch_and_after_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = open(dir.path());
            let out = s
                .accept(vec![event(key(1), &["a"])], NOW)
                .await
                .expect("accept");
            assert!(matches!(out[0], AcceptOutcome::Accepted { .. }));
            let out = s
                .accept(
                    vec![
                        event(key(1), &["a"]),
                        event(key(2), &["a"]),
                        event(key(2), &["a"]),
                    ],
                    NOW + 1000,
                )
                .await
                .expect("accept");
            assert_eq!(out[0], AcceptOutcome::Duplicate);
            assert!(matches!(out[1], AcceptOutcome::Accepted { .. }));
            assert_eq!(out[2], AcceptOutcome::Duplicate);
            assert_eq!(counts_of(&s).await, vec![c("a", 2, 0)]);
        }
        let s = open(dir.path());
        let out = s
            .accept(vec![event(key(1), &["a"])], NOW + DAY_MS)
            .await
            .expect("accept");
        assert_eq!(
            out[0],
            AcceptOutcome::Duplicate,
            "dedupe survives a restart"
        );
        // After the 7-day window the same key is new again (the expired mark is replaced).
        let later = NOW + 8 * DAY_MS;
        let out = s
            .accept(vec![event(key(1), &["a"])], later)
            .await
            .expect("accept");
        assert!(matches!(out[0], AcceptOutcome::Accepted { .. }));
        let out = s
            .accept(vec![event(key(1), &["a"])], later + 1)
            .await
            .expect("accept");
        assert_eq!(out[0], AcceptOutcome::Duplicate);
        assert_eq!(counts_of(&s).await, vec![c("a", 3, 0)]);
    }

    #[tokio::test]
    async fn unsettled_claims_are_due_again_after_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = open(dir.path());
            s.accept(vec![event(key(1), &["a"]), event(key(2), &["a"])], NOW)
                .await
                .expect("accept");
            assert_eq!(s.claim_due("a", NOW, 10).await.expect("claim").len(), 2);
            // Dropped without settling, as a crash would.
        }
        let s = open(dir.path());
        assert_eq!(s.claim_due("a", NOW, 10).await.expect("claim").len(), 2);
    }

    #[tokio::test]
    async fn complete_removes_and_retry_later_moves_the_due_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        s.accept(vec![event(key(1), &["a"]), event(key(2), &["a"])], NOW)
            .await
            .expect("accept");
        let claimed = s.claim_due("a", NOW, 10).await.expect("claim");
        s.complete(&claimed[0].id).await.expect("complete");
        assert_eq!(counts_of(&s).await, vec![c("a", 1, 0)]);

        let mut d = claimed[1].clone();
        d.attempts = 1;
        d.first_attempt_at = Some(NOW);
        d.last_attempt_at = Some(NOW);
        d.last_status = Some(503);
        d.last_error = Some("503 Service Unavailable".into());
        d.next_attempt_at = NOW + 5_000;
        s.retry_later(d.clone()).await.expect("retry");
        assert!(s
            .claim_due("a", NOW + 4_999, 10)
            .await
            .expect("claim")
            .is_empty());
        assert_eq!(s.next_due("a").await.expect("next"), Some(NOW + 5_000));
        let again = s.claim_due("a", NOW + 5_000, 10).await.expect("claim");
        assert_eq!(again, vec![d.clone()], "same id, updated record");
        assert_eq!(counts_of(&s).await, vec![c("a", 1, 0)]);
        s.complete(&d.id).await.expect("complete");
        assert_eq!(counts_of(&s).await, vec![]);
        assert_eq!(s.next_due("a").await.expect("next"), None);
    }

    #[tokio::test]
    async fn dead_letters_are_listed_and_replayed_by_id_destination_and_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        s.accept(
            vec![
                event(key(1), &["a"]),
                event(key(2), &["a"]),
                event(key(3), &["b"]),
                event(key(4), &["b"]),
            ],
            NOW,
        )
        .await
        .expect("accept");
        let mut all = s.claim_due("a", NOW, 10).await.expect("claim");
        all.extend(s.claim_due("b", NOW, 10).await.expect("claim"));
        for (i, d) in all.iter().enumerate() {
            let mut d = d.clone();
            d.attempts = 12;
            d.first_attempt_at = Some(NOW);
            d.last_error = Some("404 Not Found".into());
            s.dead_letter(d, NOW + i as i64).await.expect("dead letter");
        }
        assert_eq!(counts_of(&s).await, vec![c("a", 0, 2), c("b", 0, 2)]);
        let listed = s.dlq_list(None, 10).await.expect("list");
        let listed_ids: Vec<_> = listed.iter().map(|d| d.delivery.id.clone()).collect();
        let all_ids: Vec<_> = all.iter().map(|d| d.id.clone()).collect();
        assert_eq!(listed_ids, all_ids, "oldest first");
        assert_eq!(
            listed[0].delivery.last_error.as_deref(),
            Some("404 Not Found")
        );
        assert_eq!(s.dlq_list(Some("b"), 10).await.expect("list").len(), 2);
        assert_eq!(s.dlq_list(None, 1).await.expect("list").len(), 1);
        assert!(s
            .claim_due("a", NOW + DAY_MS, 10)
            .await
            .expect("claim")
            .is_empty());

        let replay_at = NOW + DAY_MS;
        let n = s
            .dlq_replay(ReplaySelector::Id(all[0].id.clone()), replay_at)
            .await
            .expect("replay");
        assert_eq!(n, 1);
        assert_eq!(counts_of(&s).await, vec![c("a", 1, 1), c("b", 0, 2)]);
        let back = s.claim_due("a", replay_at, 10).await.expect("claim");
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].id, all[0].id, "the id is kept");
        assert_eq!(back[0].attempts, 0);
        assert_eq!(back[0].first_attempt_at, None);
        assert_eq!(back[0].next_attempt_at, replay_at);

        let n = s
            .dlq_replay(ReplaySelector::Destination("b".into()), replay_at)
            .await
            .expect("replay");
        assert_eq!(n, 2);
        assert_eq!(counts_of(&s).await, vec![c("a", 1, 1), c("b", 2, 0)]);
        assert_eq!(
            s.dlq_replay(ReplaySelector::Id("dlv_nope".into()), replay_at)
                .await
                .expect("replay"),
            0
        );
        let n = s
            .dlq_replay(ReplaySelector::All, replay_at)
            .await
            .expect("replay");
        assert_eq!(n, 1);
        assert!(s.dlq_list(None, 10).await.expect("list").is_empty());
        drop(s);
        let s = open(dir.path());
        assert_eq!(counts_of(&s).await, vec![c("a", 2, 0), c("b", 2, 0)]);
    }

    #[tokio::test]
    async fn full_queue_refuses_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = EmbeddedStore::open(EmbeddedOptions {
                max_queued: 3,
                ..options(dir.path())
            })
            .expect("open");
            s.accept(vec![event(key(1), &["a", "b"])], NOW)
                .await
                .expect("accept");
            let err = s
                .accept(vec![event(key(2), &["a"]), event(key(3), &["a"])], NOW)
                .await
                .expect_err("full");
            assert!(matches!(err, StoreError::Full { .. }), "{err:?}");
            assert_eq!(err.retry_after(), Duration::from_secs(5));
            assert_eq!(counts_of(&s).await, vec![c("a", 1, 0), c("b", 1, 0)]);
            // Duplicates add nothing, so they still pass.
            let out = s
                .accept(vec![event(key(1), &["a", "b"])], NOW)
                .await
                .expect("accept");
            assert_eq!(out, vec![AcceptOutcome::Duplicate]);
        }
        let s = open(dir.path());
        let out = s
            .accept(vec![event(key(2), &["a"]), event(key(3), &["a"])], NOW)
            .await
            .expect("accept");
        assert!(
            out.iter()
                .all(|o| matches!(o, AcceptOutcome::Accepted { .. })),
            "the refused keys were not marked"
        );
        assert_eq!(counts_of(&s).await, vec![c("a", 3, 0), c("b", 1, 0)]);
    }

    #[tokio::test]
    async fn disk_space_floor_refuses_accepts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = EmbeddedStore::open(EmbeddedOptions {
            min_free_space: u64::MAX,
            ..options(dir.path())
        })
        .expect("open");
        let err = s
            .accept(vec![event(key(1), &["a"])], NOW)
            .await
            .expect_err("full");
        assert!(matches!(err, StoreError::Full { .. }), "{err:?}");
        assert_eq!(counts_of(&s).await, vec![]);
        assert!(s.ready().await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_accepts_share_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Arc::new(open(dir.path()));
        let tasks: Vec<_> = (0..200u64)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.accept(vec![event(key(i), &["a"])], NOW).await })
            })
            .collect();
        for t in tasks {
            let out = t.await.expect("join").expect("accept");
            assert!(matches!(out[0], AcceptOutcome::Accepted { .. }));
        }
        let commits = s.commits();
        assert!(commits < 200, "{commits} commits for 200 accepts");
        assert_eq!(counts_of(&s).await, vec![c("a", 200, 0)]);
    }

    #[tokio::test]
    async fn purge_removes_expired_keys_and_old_dead_letters_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        s.accept(vec![event(key(1), &["a"]), event(key(2), &["a"])], NOW)
            .await
            .expect("accept");
        s.accept(vec![event(key(3), &["a"])], NOW + 2 * DAY_MS)
            .await
            .expect("accept");
        let claimed = s.claim_due("a", NOW + 2 * DAY_MS, 10).await.expect("claim");
        s.dead_letter(claimed[0].clone(), NOW).await.expect("dead");
        s.dead_letter(claimed[1].clone(), NOW + 10 * DAY_MS)
            .await
            .expect("dead");

        // At NOW + 7d + 1s: keys 1 and 2 expired, key 3 not; the first dead letter
        // is older than 14 days only after NOW + 14d.
        let at = NOW + 7 * DAY_MS + 1000;
        assert_eq!(s.purge(at).await.expect("purge"), (2, 0));
        assert_eq!(s.purge(at).await.expect("purge"), (0, 0));
        let out = s
            .accept(vec![event(key(3), &["a"])], at)
            .await
            .expect("accept");
        assert_eq!(out[0], AcceptOutcome::Duplicate, "unexpired key kept");

        assert_eq!(s.purge(NOW + 15 * DAY_MS).await.expect("purge"), (1, 1));
        let left = s.dlq_list(None, 10).await.expect("list");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].delivery.id, claimed[1].id);
        assert_eq!(counts_of(&s).await, vec![c("a", 1, 1)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_key_in_concurrent_accepts_is_accepted_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Arc::new(open(dir.path()));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.accept(vec![event(key(9), &["a"])], NOW).await })
            })
            .collect();
        let mut accepted = 0;
        for t in tasks {
            let out = t.await.expect("join").expect("accept");
            accepted += usize::from(matches!(out[0], AcceptOutcome::Accepted { .. }));
        }
        assert_eq!(accepted, 1);
        assert_eq!(counts_of(&s).await, vec![c("a", 1, 0)]);
    }

    #[tokio::test]
    async fn database_without_its_dedupe_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(dir.path()));
        fs::remove_file(dir.path().join("dedupe.key")).expect("remove key");
        let err = EmbeddedStore::open(options(dir.path()))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("dedupe.key"), "{err}");
    }

    #[tokio::test]
    async fn no_plaintext_click_id_on_disk() {
        let canary = "canary-click-7f3a";
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = open(dir.path());
            let mut mac =
                Hmac::<Sha256>::new_from_slice(&s.dedupe_secret()).expect("any key length");
            mac.update(canary.as_bytes());
            let digest = mac.finalize().into_bytes();
            let mut k = [0u8; 16];
            k.copy_from_slice(&digest[..16]);
            let hashed_body = format!(
                r#"{{"click_id_sha256":"{}"}}"#,
                digest
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            let mut ev = event(DedupeKey(k), &["a"]);
            ev.deliveries[0].request.body = Some(hashed_body);
            s.accept(vec![ev], NOW).await.expect("accept");
        }
        let mut files = 0;
        for entry in fs::read_dir(dir.path()).expect("read dir") {
            let path = entry.expect("entry").path();
            let bytes = fs::read(&path).expect("read file");
            files += 1;
            assert!(
                !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
                "plaintext click id found in {}",
                path.display()
            );
        }
        assert!(files >= 2, "relay.redb and dedupe.key");
    }

    #[tokio::test]
    async fn dedupe_secret_is_created_once_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let first = open(dir.path()).dedupe_secret();
        let mode = fs::metadata(dir.path().join("dedupe.key"))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(open(dir.path()).dedupe_secret(), first);
        assert_ne!(first, [0u8; 32]);
    }

    #[test]
    fn delivery_ids_are_unique_and_well_formed() {
        let ids: HashSet<_> = (0..10_000).map(|_| new_delivery_id(NOW)).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids
            .iter()
            .all(|id| id.len() == 30 && id[4..].bytes().all(|b| CROCKFORD.contains(&b))));
    }

    /// Measures disk bytes per dedupe key (no deliveries): run with
    /// `cargo test --release --lib bytes_per_dedupe_key -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn bytes_per_dedupe_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let path = dir.path().join("relay.redb");
        let before = fs::metadata(&path).expect("db").len();
        let n = 200_000u64;
        let mut rng = rand::thread_rng();
        for chunk in 0..(n / 1000) {
            let events = (0..1000)
                .map(|_| {
                    let mut k = [0u8; 16];
                    rng.fill_bytes(&mut k);
                    EventToAccept {
                        dedupe_key: DedupeKey(k),
                        deliveries: vec![],
                    }
                })
                .collect();
            s.accept(events, NOW + chunk as i64).await.expect("accept");
        }
        drop(s);
        let after = fs::metadata(&path).expect("db").len();
        println!(
            "{n} keys: file {before} -> {after} bytes, {:.1} bytes/key",
            (after - before) as f64 / n as f64
        );
    }
}
