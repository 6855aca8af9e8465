//! The writer thread: group commit, and recovery after a failed write.
//!
//! Every write is sent here over a bounded channel. The writer takes everything
//! pending (up to `MAX_BATCH` operations), applies them to ONE write batch, commits
//! it, fsyncs the journal once, and only then answers each caller and updates the
//! in-memory state (counters, claims). If the commit or the fsync fails, every
//! operation of the group gets `Unavailable` and the store goes broken: the database
//! handle is dropped and reopened with backoff, and the in-memory state is read back
//! from what is on disk. While broken, writes are refused at once.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjall::{Keyspace, OwnedWriteBatch, PersistMode, UserKey, UserValue};
use tokio::sync::{mpsc, oneshot};

use super::engine::{Engine, Loaded};
use super::keeper::MemtableKeeper;
use super::layout::{self, DestId};
use super::ops::{Op, Outcome};
use super::{lock, EmbeddedOptions, Loc, Shared, MAX_BATCH};
use crate::store::{StoreError, StoreResult};

/// Sequence numbers reserved per `meta/seq` write: the high-water mark on disk is
/// always past every sequence in use, so IDs stay unique across crashes.
const SEQ_BLOCK: u64 = 1 << 20;
/// How long a free-space reading is trusted.
const DISK_CHECK_EVERY: Duration = Duration::from_secs(1);
const REOPEN_FIRST: Duration = Duration::from_millis(100);
const REOPEN_MAX: Duration = Duration::from_secs(5);
/// Free bytes the data directory needs before a broken store reopens.
const REOPEN_MIN_FREE: u64 = 1 << 20;
/// While broken and idle, how often the writer wakes to try the reopen.
const BROKEN_POLL: Duration = Duration::from_millis(50);

pub struct Pending {
    pub op: Op,
    pub reply: oneshot::Sender<StoreResult<Outcome>>,
}

/// The writer thread's own state.
pub struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) engine: Option<Arc<Engine>>,
    pub(super) data_dir: PathBuf,
    pub(super) dedupe_window_ms: i64,
    pub(super) retention_ms: i64,
    pub(super) max_queued: u64,
    pub(super) min_free_space: u64,
    pub(super) next_seq: u64,
    pub(super) seq_reserved: u64,
    pub(super) queued_total: u64,
    pub(super) disk: Option<(Instant, u64)>,
    /// Where the next purge's scan of dedupe marks starts (after this key).
    pub(super) dedupe_cursor: Option<Vec<u8>>,
    /// Seals nearly full memtables on its own thread.
    keeper: Option<MemtableKeeper>,
    /// What each keyspace's memtable took in since the writer last asked for it
    /// to be sealed, by keyspace (see `seal_full_memtables`). A keyspace not here
    /// has not been sealed since the engine was opened: what the journal replay put
    /// back in its memtable is unknown, so it is sealed at its first write.
    since_seal: HashMap<u64, u64>,
    /// Inserts of failed commits, removed at the next reopen.
    undo: Vec<Undo>,
    /// The number of the last group commit on disk, and `store.mark` to record it in.
    commit_no: u64,
    mark: Option<super::engine::Mark>,
    reopen_at: Instant,
    reopen_wait: Duration,
}

/// What one group writes and changes, applied to memory only after its commit.
#[derive(Default)]
pub struct Group {
    pub batch: Option<OwnedWriteBatch>,
    /// Dedupe keys marked in this group (not yet readable from the engine).
    pub marked: HashSet<[u8; 16]>,
    /// Counter changes per destination: (queued, dead).
    pub counts: HashMap<DestId, (i64, i64)>,
    /// Claims to drop once committed.
    pub settled: Vec<(DestId, u64)>,
    /// Deliveries this group already moved: later operations of the group leave them.
    pub touched: HashSet<(DestId, u64)>,
    /// Destinations named for the first time in this group.
    pub new_dests: Vec<(String, DestId)>,
    pub queued_delta: i64,
    /// What this group's accepts insert, to take out again if its commit fails.
    pub undo: Vec<Undo>,
    /// Receipts this group wrote (not yet readable from the engine), by key.
    pub receipts: HashMap<[u8; 16], super::layout::Done>,
    /// What this group adds to each keyspace's memtable, as the engine counts it
    /// (keyspace id, bytes; a handful of keyspaces, so a list; see
    /// `Writer::seal_full_memtables`).
    pub written: Vec<(u64, u64)>,
}

/// Per item, what the engine's memtable counts beside the key and the value (the
/// size of `lsm_tree`'s `InternalValue`, rounded up).
const ITEM_OVERHEAD: u64 = 64;

/// A key an accept inserted. A failed commit can still reach the journal (the engine
/// flushes its buffer on the way down, or fails after writing); its senders were told
/// 503, so before the store is ready again these keys are removed.
#[derive(Debug, Clone)]
pub enum Undo {
    Dedupe([u8; 16]),
    Queue(DestId, u64),
}

impl Group {
    /// An insert into this group's write batch.
    pub fn put(
        &mut self,
        ks: &Keyspace,
        key: impl Into<UserKey>,
        value: impl Into<UserValue>,
    ) -> Result<(), String> {
        let (key, value) = (key.into(), value.into());
        self.note(ks, key.len() + value.len());
        self.batch
            .as_mut()
            .ok_or("no write batch")?
            .insert(ks, key, value);
        Ok(())
    }

    /// A removal in this group's write batch (a tombstone in the memtable).
    pub fn del(&mut self, ks: &Keyspace, key: impl Into<UserKey>) -> Result<(), String> {
        let key = key.into();
        self.note(ks, key.len());
        self.batch.as_mut().ok_or("no write batch")?.remove(ks, key);
        Ok(())
    }

    fn note(&mut self, ks: &Keyspace, bytes: usize) {
        self.add_written(ks.id(), bytes as u64 + ITEM_OVERHEAD);
    }

    fn add_written(&mut self, id: u64, bytes: u64) {
        match self.written.iter_mut().find(|(k, _)| *k == id) {
            Some((_, n)) => *n += bytes,
            None => self.written.push((id, bytes)),
        }
    }

    pub fn count(&mut self, dest: DestId, queued: i64, dead: i64) {
        let c = self.counts.entry(dest).or_default();
        c.0 += queued;
        c.1 += dead;
        self.queued_delta += queued;
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        opts: &EmbeddedOptions,
        loaded: Loaded,
        keeper: MemtableKeeper,
    ) -> Writer {
        let engine = shared.engine().ok();
        let mut w = Writer {
            shared,
            engine,
            data_dir: opts.data_dir.clone(),
            dedupe_window_ms: duration_ms(opts.dedupe_window),
            retention_ms: duration_ms(opts.dlq_retention),
            max_queued: opts.max_queued,
            min_free_space: opts.min_free_space,
            next_seq: 0,
            seq_reserved: 0,
            queued_total: 0,
            disk: None,
            dedupe_cursor: None,
            keeper: Some(keeper),
            since_seal: HashMap::new(),
            undo: Vec::new(),
            commit_no: 0,
            mark: None,
            reopen_at: Instant::now(),
            reopen_wait: REOPEN_FIRST,
        };
        w.install(loaded);
        w
    }

    /// Takes the state read from disk as the truth.
    fn install(&mut self, loaded: Loaded) {
        // An opened engine's memtables hold what its journal replay put back: each
        // is sealed at its first write (see `since_seal`).
        self.since_seal.clear();
        self.next_seq = loaded.seq;
        self.seq_reserved = loaded.seq;
        self.queued_total = loaded.counts.values().map(|c| c.0).sum();
        self.commit_no = loaded.commit;
        if self.mark.is_none() {
            match super::engine::Mark::open(&self.data_dir, loaded.commit) {
                Ok(m) => self.mark = Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write store.mark: a journal cut short will not be detected")
                }
            }
        }
        *self.shared.dests.write().unwrap_or_else(|p| p.into_inner()) = loaded.dests;
        *lock(&self.shared.counts) = loaded.counts;
    }

    pub fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        let mut group = Vec::with_capacity(MAX_BATCH);
        loop {
            if self.engine.is_none() {
                self.try_reopen();
            }
            let first = if self.engine.is_some() {
                match rx.blocking_recv() {
                    Some(p) => p,
                    None => break,
                }
            } else {
                match rx.try_recv() {
                    Ok(p) => p,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        std::thread::sleep(BROKEN_POLL);
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            };
            group.push(first);
            while group.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => group.push(p),
                    Err(_) => break,
                }
            }
            self.run_group(std::mem::take(&mut group));
        }
        // Closing: release the database before the store's owner returns (the
        // keeper holds it only during a round, and is waited for).
        if let Some(k) = self.keeper.take() {
            k.stop();
        }
        self.engine = None;
        *self
            .shared
            .engine
            .write()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn run_group(&mut self, pending: Vec<Pending>) {
        let Some(engine) = self.engine.clone() else {
            let why = self.broken_reason();
            return answer_all(pending, &why);
        };
        let mut g = Group {
            batch: Some(engine.db.batch()),
            ..Group::default()
        };
        let mut results = Vec::with_capacity(pending.len());
        for p in &pending {
            match self.apply(&engine, &mut g, &p.op) {
                Ok(r) => results.push(r),
                Err(e) => {
                    self.go_broken(format!("store write failed: {e}"));
                    return answer_all(pending, &self.broken_reason());
                }
            }
        }
        let started = Instant::now();
        if let Err(e) = self.commit(&engine, &mut g) {
            self.undo.append(&mut g.undo);
            self.go_broken(format!("store write failed: {e}"));
            return answer_all(pending, &self.broken_reason());
        }
        if let Some(o) = self.shared.observer.get() {
            o.committed(pending.len(), started.elapsed());
        }
        self.seal_full_memtables(&engine, &g.written);
        self.after_commit(g);
        for (p, r) in pending.into_iter().zip(results) {
            // The caller may have gone away (cancelled request); the write stands.
            let _ = p.reply.send(r);
        }
    }

    /// Counters into the batch, then commit and fsync.
    fn commit(&mut self, engine: &Engine, g: &mut Group) -> Result<(), String> {
        let Some(mut batch) = g.batch.take() else {
            return Ok(());
        };
        {
            let counts = lock(&self.shared.counts);
            for (dest, (dq, dd)) in &g.counts {
                let (q, d) = counts.get(dest).copied().unwrap_or((0, 0));
                let v = layout::counts_value(
                    q.saturating_add_signed(*dq),
                    d.saturating_add_signed(*dd),
                );
                batch.insert(&engine.meta, layout::count_meta_key(*dest), v);
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        batch.insert(
            &engine.meta,
            layout::COMMIT_META_KEY,
            (self.commit_no + 1).to_be_bytes(),
        );
        // The counters and the commit number: a few dozen bytes each.
        g.add_written(
            engine.meta.id(),
            (g.counts.len() as u64 + 1) * (32 + ITEM_OVERHEAD),
        );
        #[cfg(test)]
        if self
            .shared
            .fail_commits
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err("No space left on device (injected by a test)".into());
        }
        batch.commit().map_err(|e| e.to_string())?;
        engine
            .db
            .persist(PersistMode::SyncData)
            .map_err(|e| format!("fsync: {e}"))?;
        #[cfg(test)]
        if self
            .shared
            .fail_commits_after_writing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err("No space left on device (injected by a test, after writing)".into());
        }
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_no += 1;
        // After the fsync, so the mark is never ahead of the journal.
        if let Some(Err(e)) = self.mark.as_ref().map(|m| m.set(self.commit_no)) {
            tracing::debug!(error = %e, "cannot write store.mark");
        }
        Ok(())
    }

    /// Adds a commit's bytes to each keyspace's count, and asks the keeper to seal
    /// those at `Engine::seal_at` (and those written for the first time since the
    /// open); a keyspace's count starts again once the keeper took the request
    /// (else the next commit asks again).
    fn seal_full_memtables(&mut self, engine: &Arc<Engine>, written: &[(u64, u64)]) {
        let mut full = Vec::new();
        for (id, n) in written {
            match self.since_seal.get_mut(id) {
                Some(total) => *total += n,
                // Not sealed since the open: its memtable may be refilled by the
                // journal replay, beyond what this count would see.
                None => full.push(*id),
            }
        }
        for (id, total) in &self.since_seal {
            if *total >= engine.seal_at(*id) {
                full.push(*id);
            }
        }
        if full.is_empty() {
            return;
        }
        if let Some(k) = &self.keeper {
            if k.ask(engine, full.clone()) {
                for id in full {
                    self.since_seal.insert(id, 0);
                }
            }
        }
    }

    fn after_commit(&mut self, g: Group) {
        self.queued_total = self.queued_total.saturating_add_signed(g.queued_delta);
        if !g.new_dests.is_empty() {
            let mut dests = self.shared.dests.write().unwrap_or_else(|p| p.into_inner());
            for (name, id) in g.new_dests {
                dests.insert(name, id);
            }
        }
        {
            let mut counts = lock(&self.shared.counts);
            for (dest, (dq, dd)) in g.counts {
                let c = counts.entry(dest).or_default();
                c.0 = c.0.saturating_add_signed(dq);
                c.1 = c.1.saturating_add_signed(dd);
            }
        }
        if !g.settled.is_empty() {
            let mut claims = self.shared.claims();
            for (dest, seq) in g.settled {
                if let Some(c) = claims.get_mut(&dest) {
                    c.claimed.remove(&seq);
                }
            }
        }
    }

    fn broken_reason(&self) -> String {
        lock(&self.shared.broken)
            .clone()
            .unwrap_or_else(|| "store is unavailable".into())
    }

    fn go_broken(&mut self, why: String) {
        tracing::error!(error = %why, "the store cannot write; refusing new events until it can (retrying)");
        *lock(&self.shared.broken) = Some(why);
        self.engine = None;
        *self
            .shared
            .engine
            .write()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self.reopen_wait = REOPEN_FIRST;
        self.reopen_at = Instant::now() + self.reopen_wait;
    }

    /// Reopens the database once its backoff has passed; on success the store is
    /// ready again with the state on disk.
    fn try_reopen(&mut self) {
        if Instant::now() < self.reopen_at {
            return;
        }
        // A full disk lets the reopen itself work (recovery even frees a few bytes), and
        // the next write fails again: stay unready until there is room to write.
        if let Ok(free) = free_bytes(&self.data_dir) {
            if free < REOPEN_MIN_FREE {
                let e = format!(
                    "the disk is full ({free} bytes free in {}); waiting for at least {REOPEN_MIN_FREE} bytes",
                    self.data_dir.display()
                );
                self.reopen_later(e);
                return;
            }
        }
        let reopened = Engine::open(&self.data_dir).and_then(|e| {
            let loaded = e.load(&self.data_dir.join(super::engine::DB_DIR))?;
            Ok((e, loaded))
        });
        match reopened {
            Ok((engine, mut loaded)) => {
                if let Err(e) = self.undo_failed_commits(&engine, &mut loaded) {
                    return self.reopen_later(format!("cannot undo a failed write: {e}"));
                }
                let engine = Arc::new(engine);
                self.install(loaded);
                self.engine = Some(engine.clone());
                *self
                    .shared
                    .engine
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = Some(engine);
                *lock(&self.shared.broken) = None;
                tracing::info!("the store can write again");
            }
            Err(e) => self.reopen_later(e),
        }
    }

    /// Removes what failed commits inserted, if it reached the disk anyway, and
    /// corrects the queue counters; durable before the store is ready again.
    fn undo_failed_commits(&mut self, engine: &Engine, loaded: &mut Loaded) -> Result<(), String> {
        if self.undo.is_empty() {
            return Ok(());
        }
        let mut batch = engine.db.batch();
        let mut counted = HashSet::new();
        let mut removed = 0usize;
        for u in &self.undo {
            match u {
                Undo::Dedupe(k) => batch.remove(&engine.dedupe, *k),
                Undo::Queue(dest, seq) => {
                    let queue = engine.queue(*dest).map_err(|e| e.to_string())?;
                    let key = layout::seq_key(*seq);
                    if queue.get(key).map_err(|e| e.to_string())?.is_some() {
                        batch.remove(&queue, key);
                        let c = loaded.counts.entry(*dest).or_default();
                        c.0 = c.0.saturating_sub(1);
                        counted.insert(*dest);
                        removed += 1;
                    }
                }
            }
        }
        for dest in counted {
            let (q, d) = loaded.counts.get(&dest).copied().unwrap_or((0, 0));
            batch.insert(
                &engine.meta,
                layout::count_meta_key(dest),
                layout::counts_value(q, d),
            );
        }
        batch.commit().map_err(|e| e.to_string())?;
        engine
            .db
            .persist(PersistMode::SyncData)
            .map_err(|e| format!("fsync: {e}"))?;
        if removed > 0 {
            tracing::warn!(deliveries = removed, "a failed write had reached the disk; its deliveries were removed again (their senders were answered 503)");
        }
        self.undo.clear();
        Ok(())
    }

    fn reopen_later(&mut self, e: String) {
        tracing::warn!(error = %e, retry_in_ms = self.reopen_wait.as_millis() as u64, "the store cannot be reopened yet");
        *lock(&self.shared.broken) = Some(format!("store is unavailable: {e}"));
        self.reopen_at = Instant::now() + self.reopen_wait;
        self.reopen_wait = (self.reopen_wait * 2).min(REOPEN_MAX);
    }

    /// A new sequence number; reserves the next block on disk when needed.
    pub fn next_seq(&mut self, engine: &Engine, g: &mut Group) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.next_seq > self.seq_reserved {
            self.seq_reserved = self.next_seq + SEQ_BLOCK;
            // Without a batch (never, inside a group) there is nothing to write into.
            let _ = g.put(
                &engine.meta,
                layout::SEQ_META_KEY,
                self.seq_reserved.to_be_bytes(),
            );
        }
        seq
    }

    /// The destination's number, assigning (and recording) one the first time.
    pub fn dest_id(
        &mut self,
        engine: &Engine,
        g: &mut Group,
        name: &str,
    ) -> Result<DestId, String> {
        if let Some(id) = self.shared.dest_id(name) {
            return Ok(id);
        }
        if let Some((_, id)) = g.new_dests.iter().find(|(n, _)| n == name) {
            return Ok(*id);
        }
        let used = self
            .shared
            .dests
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
            + g.new_dests.len();
        let id =
            DestId::try_from(used + 1).map_err(|_| "more than 65,535 destinations".to_string())?;
        // Without a batch (never, inside a group) there is nothing to write into.
        let _ = g.put(&engine.meta, layout::dest_meta_key(name), id.to_be_bytes());
        g.new_dests.push((name.to_owned(), id));
        Ok(id)
    }

    /// `Some(reason)` when the data directory's free space is under the floor. The
    /// reading is cached for a second; a failed reading does not refuse writes (a real
    /// write failure would surface as `Unavailable`).
    pub fn disk_too_full(&mut self) -> Option<String> {
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
        floor_message(&self.data_dir, free, self.min_free_space)
    }

    /// Where a delivery's record is: its claim says, else look.
    pub fn locate(&self, engine: &Engine, dest: DestId, seq: u64) -> Result<Option<Loc>, String> {
        if let Some(loc) = self
            .shared
            .claims()
            .get(&dest)
            .and_then(|c| c.claimed.get(&seq).copied())
        {
            return Ok(Some(loc));
        }
        if engine
            .queue(dest)
            .and_then(|q| q.contains_key(layout::seq_key(seq)))
            .map_err(|e| e.to_string())?
        {
            return Ok(Some(Loc::Fresh));
        }
        for item in engine.retry.prefix(dest.to_be_bytes()) {
            let k = item.key().map_err(|e| e.to_string())?;
            if let Some((_, due_ms, s)) = layout::parse_retry_key(&k) {
                if s == seq {
                    return Ok(Some(Loc::Retry { due_ms }));
                }
            }
        }
        Ok(None)
    }
}

fn answer_all(pending: Vec<Pending>, why: &str) {
    for p in pending {
        let _ = p.reply.send(Err(StoreError::Unavailable(why.to_owned())));
    }
}

/// `Some(reason)` when `data_dir`'s free space is under `floor` now (0: no floor; a
/// failed reading is not a refusal).
pub(super) fn below_floor(data_dir: &std::path::Path, floor: u64) -> Option<String> {
    if floor == 0 {
        return None;
    }
    floor_message(data_dir, free_bytes(data_dir).ok()?, floor)
}

fn floor_message(data_dir: &std::path::Path, free: u64, floor: u64) -> Option<String> {
    (free < floor).then(|| {
        format!(
            "free space in {} is {free} bytes, under the floor of {floor} bytes (min_free_space)",
            data_dir.display()
        )
    })
}

fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs only writes into the struct we pass; the path is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    Ok(u64::from(s.f_bavail).saturating_mul(u64::from(s.f_frsize)))
}
