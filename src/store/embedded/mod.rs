//! The embedded backend: an LSM store (fjall) in `data_dir/store`, written by one
//! writer thread with group commit.
//!
//! Files: `data_dir/store/` (queue, retry schedule, dead letters, delivered
//! receipts, dedupe marks, counters; see `layout`), `data_dir/dedupe.key` (the
//! installation's 32-byte dedupe secret, 0600). `data_dir` is kept at 0700.
//!
//! Where to look:
//! - `layout`: keyspaces, keys, delivery IDs, the binary record encoding.
//! - `engine`: opening, refusing damaged or foreign files, reading state back.
//! - `writer`: the writer thread, group commit, and the reopen-with-backoff loop
//!   after a write failure (disk full, I/O error).
//! - `keeper`: the thread that seals nearly full memtables, off the writer.
//! - `ops`: what each write operation does inside a group (accept + dedupe,
//!   settle, dead letters, replay, purge).
//! - `reads`: claims (in memory) and the read paths that never wait for the writer.
//!
//! # Cost per accepted event
//! One dedupe point read, then two small dedupe inserts and one insert per delivery,
//! all appended to the same journal: a group of concurrent requests is one journal
//! write and one fsync. Fresh deliveries are read back in append order per
//! destination (a cursor, no due-time index); only deliveries waiting on a retry go
//! into the `retry` schedule.
//!
//! # Failing safe
//! A failed commit or fsync fails every operation of its group (`Unavailable`, so
//! the sender gets 503), marks the store broken (`ready() == false`) and drops the
//! database handle; the writer reopens it with backoff (what is on disk is the
//! truth) and the store is ready again once that works.

mod engine;
mod keeper;
mod layout;
mod ops;
mod reads;
mod writer;

use crate::sync::lock;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::{
    AcceptOutcome, DeadLetter, Delivery, DeliveryStatus, DestinationCounts, EventToAccept,
    ReplaySelector, Store, StoreError, StoreResult,
};
use engine::Engine;
use layout::DestId;

/// Most operations folded into one group commit (one fsync).
pub const MAX_BATCH: usize = 1024;
/// Operations waiting for the writer; callers past this wait (bounded queue).
const CHANNEL_CAPACITY: usize = 4096;
/// Items moved or removed per purge / retire operation, so a large one does not hold
/// every accept behind it for long.
const CHUNK: usize = 10_000;

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
    /// Dead letters (and receipts of delivered deliveries) older than this are removed
    /// by `purge`.
    pub dlq_retention: Duration,
}

/// The fjall-backed [`Store`]. Dropping it stops the writer thread after the group in
/// progress and closes the database.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    secret: [u8; 32],
    /// `data_dir` and `min_free_space`, for `ready` (the writer checks the floor
    /// before each commit; `ready` reads the disk itself, so that it turns ready
    /// again once space is freed, even with no write coming).
    free_floor: (PathBuf, u64),
    tx: Mutex<Option<mpsc::Sender<writer::Pending>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Claims of one destination: what is handed out and not settled, and how far the
/// fresh queue has been read.
#[derive(Debug, Default)]
pub(crate) struct DestClaims {
    /// Highest fresh sequence handed out; the next claim reads after it.
    cursor: Option<u64>,
    claimed: HashMap<u64, Loc>,
}

/// Where a claimed delivery's record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loc {
    Fresh,
    Retry { due_ms: i64 },
}

/// State shared by the writer thread and the readers.
pub(crate) struct Shared {
    /// `None` while broken (after a failed write, until the reopen works).
    engine: RwLock<Option<Arc<Engine>>>,
    /// Why the store is broken, for `ready()` and error messages.
    broken: Mutex<Option<String>>,
    dests: RwLock<HashMap<String, DestId>>,
    counts: Mutex<HashMap<DestId, (u64, u64)>>,
    claims: Mutex<HashMap<DestId, DestClaims>>,
    commits: AtomicU64,
    observer: std::sync::OnceLock<Arc<dyn super::StoreObserver>>,
    /// Hides destination and sequence in the IDs handed out (`layout::IdKey`).
    ids: layout::IdKey,
    /// Test hook: the next this-many group commits fail as if the disk were full.
    #[cfg(test)]
    fail_commits: std::sync::atomic::AtomicUsize,
    /// Test hook: the next this-many group commits reach the disk, then report failure.
    #[cfg(test)]
    fail_commits_after_writing: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn engine(&self) -> StoreResult<Arc<Engine>> {
        let e = self.engine.read().unwrap_or_else(|p| p.into_inner());
        match e.as_ref() {
            Some(e) => Ok(e.clone()),
            None => Err(StoreError::Unavailable(
                lock(&self.broken)
                    .clone()
                    .unwrap_or_else(|| "store is closed".into()),
            )),
        }
    }

    fn dest_id(&self, name: &str) -> Option<DestId> {
        self.dests
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }

    fn dest_name(&self, id: DestId) -> String {
        self.dests
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| format!("#{id}"))
    }

    /// The ID a delivery is known by outside the store.
    fn id_of(&self, parts: layout::IdParts) -> String {
        parts.to_id(&self.ids)
    }

    /// The delivery an ID names, if it names one of a known destination (an ID this
    /// store never made decodes to arbitrary parts: never a new queue for them).
    fn parts_of(&self, id: &str) -> Option<layout::IdParts> {
        let p = layout::IdParts::parse(id, &self.ids)?;
        self.dests
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|d| *d == p.dest)
            .then_some(p)
    }

    fn claims(&self) -> MutexGuard<'_, HashMap<DestId, DestClaims>> {
        lock(&self.claims)
    }
}

impl EmbeddedStore {
    /// Whether a running relay holds the store in `data_dir`.
    pub fn in_use(data_dir: &std::path::Path) -> bool {
        engine::in_use(data_dir)
    }

    /// Opens (or creates) the store in `opts.data_dir` and starts its writer thread.
    /// A damaged store, a store of another format, a missing key file next to a store
    /// (or the reverse) and a data directory in use are refused with a message that
    /// names the file and what to do.
    pub fn open(opts: EmbeddedOptions) -> Result<EmbeddedStore, StoreError> {
        let refuse = StoreError::Unavailable;
        engine::prepare_dir(&opts.data_dir).map_err(refuse)?;
        engine::check_layout(&opts.data_dir).map_err(refuse)?;
        engine::check_format_file(&opts.data_dir).map_err(refuse)?;
        let secret =
            engine::load_or_create_secret(&opts.data_dir.join(engine::KEY_FILE)).map_err(refuse)?;
        let engine = Engine::open(&opts.data_dir).map_err(refuse)?;
        let loaded = engine
            .load(&opts.data_dir.join(engine::DB_DIR))
            .map_err(refuse)?;
        engine::check_mark(&opts.data_dir, &loaded).map_err(refuse)?;
        engine
            .verify_tables(&opts.data_dir.join(engine::DB_DIR), &loaded)
            .map_err(refuse)?;
        engine::write_format_file(&opts.data_dir).map_err(refuse)?;
        let shared = Arc::new(Shared {
            engine: RwLock::new(Some(Arc::new(engine))),
            broken: Mutex::new(None),
            dests: RwLock::new(HashMap::new()),
            counts: Mutex::new(HashMap::new()),
            claims: Mutex::new(HashMap::new()),
            commits: AtomicU64::new(0),
            observer: std::sync::OnceLock::new(),
            ids: layout::IdKey::new(&secret),
            #[cfg(test)]
            fail_commits: std::sync::atomic::AtomicUsize::new(0),
            #[cfg(test)]
            fail_commits_after_writing: std::sync::atomic::AtomicUsize::new(0),
        });
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let keeper = keeper::MemtableKeeper::start().map_err(|e| {
            StoreError::Unavailable(format!("start the store's memtable thread: {e}"))
        })?;
        let w = writer::Writer::new(shared.clone(), &opts, loaded, keeper);
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| StoreError::Unavailable(format!("start the store writer thread: {e}")))?;
        Ok(EmbeddedStore {
            shared,
            secret,
            free_floor: (opts.data_dir.clone(), opts.min_free_space),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Group commits made so far (metrics, and tests that check commits are shared).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// Fuzzing entry (feature `fuzzing`): decodes `bytes` as a stored delivery record,
    /// as every read of the queue, retry and dead-letter keyspaces does.
    #[cfg(feature = "fuzzing")]
    pub fn fuzz_decode_record(bytes: &[u8]) -> Result<(), String> {
        let record: layout::Record = layout::decode("delivery", bytes)?;
        let delivery = record.into_delivery("dlv_fuzz".into(), "fuzz".into());
        let again = layout::encode(&layout::RecordRef::of(&delivery, None))?;
        let back: layout::Record = layout::decode("delivery", &again)?;
        if back.into_delivery("dlv_fuzz".into(), "fuzz".into()) != delivery {
            return Err("a record does not survive encode after decode".into());
        }
        Ok(())
    }

    /// Test hook: make the next `n` group commits fail as a full disk would.
    #[cfg(test)]
    pub(crate) fn fail_next_commits(&self, n: usize) {
        self.shared.fail_commits.store(n, Ordering::SeqCst);
    }

    /// Test hook: the next `n` group commits are written and fsync'd, then fail (as a
    /// journal write that failed after its bytes reached the disk).
    #[cfg(test)]
    pub(crate) fn fail_next_commits_after_writing(&self, n: usize) {
        self.shared
            .fail_commits_after_writing
            .store(n, Ordering::SeqCst);
    }

    async fn submit(&self, op: ops::Op) -> StoreResult<ops::Outcome> {
        let tx = lock(&self.tx)
            .clone()
            .ok_or_else(|| StoreError::Unavailable("store is closed".into()))?;
        let (reply, rx) = oneshot::channel();
        tx.send(writer::Pending { op, reply })
            .await
            .map_err(|_| StoreError::Unavailable("store writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("store writer stopped mid-write".into()))?
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> StoreResult<T> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store read: {e}")))?
    }

    /// Repeats a chunked operation until a chunk comes back short.
    async fn chunked(&self, op: impl Fn() -> ops::Op) -> StoreResult<(usize, usize)> {
        let (mut a, mut b) = (0, 0);
        loop {
            match self.submit(op()).await? {
                ops::Outcome::Counted(x, y) => {
                    a += x;
                    b += y;
                    if x < CHUNK && y < CHUNK {
                        return Ok((a, b));
                    }
                }
                _ => return Err(unexpected()),
            }
        }
    }
}

impl EmbeddedStore {
    /// Ends the writer after the writes queued so far and waits for it: the database
    /// is closed when this returns (a read in flight may hold it a moment longer).
    fn shut(&self) {
        // Closing the channel ends the writer's loop once it has drained it.
        drop(lock(&self.tx).take());
        if let Some(writer) = lock(&self.writer).take() {
            let _ = writer.join();
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.shut();
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

    fn observe(&self, observer: Arc<dyn super::StoreObserver>) {
        let _ = self.shared.observer.set(observer);
    }

    async fn accept(
        &self,
        events: Vec<EventToAccept>,
        now_ms: i64,
    ) -> StoreResult<Vec<AcceptOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        match self.submit(ops::Op::Accept { events, now_ms }).await? {
            ops::Outcome::Accepted(o) => Ok(o),
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
        self.read(move |s| reads::claim_due(s, &destination, now_ms, limit))
            .await
    }

    async fn next_due(&self, destination: &str) -> StoreResult<Option<i64>> {
        let destination = destination.to_owned();
        self.read(move |s| reads::next_due(s, &destination)).await
    }

    async fn complete(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        self.submit(ops::Op::Complete { id }).await.map(|_| ())
    }

    async fn retry_later(&self, delivery: Delivery) -> StoreResult<()> {
        self.submit(ops::Op::RetryLater { delivery })
            .await
            .map(|_| ())
    }

    async fn dead_letter(&self, delivery: Delivery, now_ms: i64) -> StoreResult<()> {
        self.submit(ops::Op::DeadLetter { delivery, now_ms })
            .await
            .map(|_| ())
    }

    async fn release(&self, id: &str) -> StoreResult<()> {
        reads::release(&self.shared, id);
        Ok(())
    }

    async fn dlq_list(
        &self,
        destination: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetter>> {
        let destination = destination.map(str::to_owned);
        self.read(move |s| reads::dlq_list(s, destination.as_deref(), limit))
            .await
    }

    async fn dlq_replay(&self, which: ReplaySelector, now_ms: i64) -> StoreResult<usize> {
        match self.submit(ops::Op::Replay { which, now_ms }).await? {
            ops::Outcome::Counted(n, _) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn counts(&self) -> StoreResult<Vec<DestinationCounts>> {
        let counts = lock(&self.shared.counts).clone();
        let mut out: Vec<DestinationCounts> = counts
            .into_iter()
            .filter(|(_, (q, d))| *q > 0 || *d > 0)
            .map(|(id, (queued, dead))| DestinationCounts {
                destination: self.shared.dest_name(id),
                queued,
                dead,
            })
            .collect();
        out.sort_by(|a, b| a.destination.cmp(&b.destination));
        Ok(out)
    }

    async fn purge(&self, now_ms: i64) -> StoreResult<(usize, usize)> {
        self.chunked(|| ops::Op::Purge { now_ms }).await
    }

    async fn lookup(&self, id: &str) -> StoreResult<Option<DeliveryStatus>> {
        let id = id.to_owned();
        self.read(move |s| reads::lookup(s, &id)).await
    }

    async fn record_partner_status(
        &self,
        ids: &[String],
        status: &crate::store::PartnerStatus,
    ) -> StoreResult<usize> {
        let op = ops::Op::PartnerStatus {
            ids: ids.to_vec(),
            status: status.clone(),
        };
        match self.submit(op).await? {
            ops::Outcome::Counted(n, _) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    fn shared(&self) -> bool {
        false
    }

    async fn keep_check(&self, check: &crate::store::PendingCheck) -> StoreResult<()> {
        let check = check.clone();
        self.submit(ops::Op::KeepCheck { check }).await.map(|_| ())
    }

    async fn forget_check(&self, destination: &str, request_id: &str) -> StoreResult<()> {
        let op = ops::Op::ForgetCheck {
            destination: destination.to_owned(),
            request_id: request_id.to_owned(),
        };
        self.submit(op).await.map(|_| ())
    }

    async fn pending_checks(&self) -> StoreResult<Vec<crate::store::PendingCheck>> {
        self.read(reads::pending_checks).await
    }

    async fn retire_destination(
        &self,
        destination: &str,
        reason: &str,
        now_ms: i64,
    ) -> StoreResult<usize> {
        let (n, _) = self
            .chunked(|| ops::Op::Retire {
                destination: destination.to_owned(),
                reason: reason.to_owned(),
                now_ms,
            })
            .await?;
        Ok(n)
    }

    async fn ready(&self) -> Result<(), String> {
        if lock(&self.tx).is_none() {
            return Err("the store is closed".into());
        }
        self.shared.engine().map_err(|e| e.to_string())?;
        let (dir, floor) = &self.free_floor;
        match writer::below_floor(dir, *floor) {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    async fn close(&self) {
        // Senders cloned by callers in flight keep the channel open until they are
        // answered; the writer then ends.
        let tx = lock(&self.tx).take();
        drop(tx);
        let writer = lock(&self.writer).take();
        if let Some(w) = writer {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
    }
}

#[cfg(test)]
mod tests;
