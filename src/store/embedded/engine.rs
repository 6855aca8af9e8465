//! Opening the files, and refusing damaged ones: the data directory (mode 0700), the
//! dedupe key, the LSM database, and the in-memory state read back from it.
//!
//! Never: starts a silently empty store where one existed, or lets a panic inside the
//! storage engine end the process: every failure is an error naming the file and
//! what to do.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use fjall::config::{CompressionPolicy, FilterPolicy, FilterPolicyEntry};
use fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use rand::TryRngCore;

use super::layout::{self, DestId};

/// The LSM database's folder inside `data_dir`.
pub const DB_DIR: &str = "store";
/// The dedupe secret's file inside `data_dir`.
pub const KEY_FILE: &str = "dedupe.key";
/// Beside the store: the number of a group commit known to be on disk (`commit` in
/// `meta` is at least this, unless the journal lost commits).
pub const MARK_FILE: &str = "store.mark";
/// Beside the store: its format number (`layout::FORMAT`), readable without opening
/// it; a relay that reads another format refuses the directory naming both.
pub const FORMAT_FILE: &str = "store_format";
/// The previous version's store file.
const LEGACY_FILE: &str = "relay.redb";
/// Written by the engine when it creates a database; its absence next to other files
/// means a damaged or half-deleted store.
const VERSION_MARKER: &str = "version";

/// Block cache. Small on purpose: queued deliveries are read once, in order.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// The journal is replayed at start after a crash. 64 MiB is the engine's smallest
/// cap: once the sealed journal files reach it (a sealed file counts 64 MiB), the
/// engine seals the keyspaces that keep the oldest, so the journal is one file and
/// part of the next (see `keeper`).
const MAX_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;
/// Tables of delivery records are lz4-compressed at every level. The engine's default
/// leaves the first two levels uncompressed, and that is where a queue's records are
/// written first and, in a backlog, stay: one destination's records share their keys,
/// URL and headers, so compressed they take about a third of the bytes (the load
/// bench's backlog of 1,000,000: 431 -> 151 bytes on disk per queued delivery; about
/// 35% fewer bytes written per accepted event). Set when a keyspace is made: a store
/// made before keeps its tables as they are, and the engine reads both.
fn compressed() -> CompressionPolicy {
    CompressionPolicy::all(CompressionType::Lz4)
}

/// The engine's memtable limits. They are stored with each keyspace when it is
/// made (a change reaches new stores only); `seal_at` keeps the memtables under them.
const QUEUE_MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;
const DEDUPE_MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;
const SMALL_MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;

/// The open database and its keyspaces.
pub struct Engine {
    pub db: Database,
    /// One keyspace per destination (`queue_N`), keyed by sequence alone: appends
    /// only ever land at its end, so flushed tables never overlap and compaction
    /// moves them instead of rewriting them.
    queues: std::sync::RwLock<HashMap<DestId, Keyspace>>,
    pub retry: Keyspace,
    pub dead: Keyspace,
    pub done: Keyspace,
    pub dedupe: Keyspace,
    pub meta: Keyspace,
}

/// What the in-memory state starts from after an open.
pub struct Loaded {
    pub dests: HashMap<String, DestId>,
    pub counts: HashMap<DestId, (u64, u64)>,
    pub seq: u64,
    /// The number of the last group commit on disk.
    pub commit: u64,
}

/// The commit number `store.mark` holds; `None` when there is none (a new store, or
/// one from before the mark) or it cannot be read (then nothing is checked).
pub fn read_mark(data_dir: &Path) -> Option<u64> {
    fs::read_to_string(data_dir.join(MARK_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `store.mark`, kept open by the writer: a fixed-width number overwritten in place
/// after each commit's fsync (one small write, no rename, no fsync), so it is never
/// ahead of the journal; a power cut can only leave an older number.
pub struct Mark(fs::File);

impl Mark {
    /// Opens (or creates) the mark and sets it to `n`, durably once.
    pub fn open(data_dir: &Path, n: u64) -> io::Result<Mark> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(data_dir.join(MARK_FILE))?;
        let mark = Mark(file);
        mark.set(n)?;
        mark.0.sync_all()?;
        Ok(mark)
    }

    pub fn set(&self, n: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.0.write_all_at(format!("{n:020}\n").as_bytes(), 0)
    }
}

/// A journal cut short loses its last commits without an engine error (it reads as a
/// crash mid-write): refused when the store holds fewer commits than the mark saw.
pub fn check_mark(data_dir: &Path, loaded: &Loaded) -> Result<(), String> {
    match read_mark(data_dir) {
        Some(mark) if mark > loaded.commit => Err(damaged(
            &data_dir.join(DB_DIR),
            &format!(
                "it ends at commit {}, but commit {mark} had reached the disk ({}): its journal was cut short and accepted events are missing. If you restored the store from an older backup on purpose, delete {} as well",
                loaded.commit,
                data_dir.join(MARK_FILE).display(),
                data_dir.join(MARK_FILE).display()
            ),
        )),
        _ => Ok(()),
    }
}

/// Whether a running relay holds the store in `data_dir` (the engine's lock file).
pub fn in_use(data_dir: &Path) -> bool {
    let Ok(file) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(data_dir.join(DB_DIR).join("lock"))
    else {
        return false;
    };
    matches!(file.try_lock(), Err(fs::TryLockError::WouldBlock))
}

/// Creates `data_dir` (0700), or tightens an existing one to 0700.
pub fn prepare_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
        format!(
            "cannot restrict the data directory {} to its owner (mode 0700): {e}",
            dir.display()
        )
    })
}

/// Refuses layouts that would start a silently empty store, or a store of another
/// format.
pub fn check_layout(data_dir: &Path) -> Result<(), String> {
    let legacy = data_dir.join(LEGACY_FILE);
    if legacy.exists() {
        return Err(format!(
            "{} is a store of an earlier postback-relay version; this version keeps its queue in {}. \
             Drain the old queue with the earlier version (stop sending, wait until `dlq list` and \
             /admin/destinations show nothing queued), then move {} away",
            legacy.display(),
            data_dir.join(DB_DIR).display(),
            legacy.display()
        ));
    }
    let db_dir = data_dir.join(DB_DIR);
    let key = data_dir.join(KEY_FILE);
    let db_has_files = fs::read_dir(&db_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if key.exists() && !db_has_files {
        return Err(format!(
            "{} exists but the store {} is missing or empty: its queue, dead letters and dedupe \
             marks would be lost. Restore {} from a backup, or move {} away to start with an \
             empty store on purpose",
            key.display(),
            db_dir.display(),
            db_dir.display(),
            key.display()
        ));
    }
    if db_has_files {
        let marker = db_dir.join(VERSION_MARKER);
        let len = fs::metadata(&marker).map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            return Err(damaged(
                &db_dir,
                &format!("{} is missing or empty", marker.display()),
            ));
        }
        if !key.exists() {
            return Err(format!(
                "{} exists but {} is missing: without it no dedupe mark can be recognised. \
                 Restore the key file, or move {} away to start with empty state",
                db_dir.display(),
                key.display(),
                db_dir.display()
            ));
        }
    }
    Ok(())
}

/// Refuses a data directory whose `store_format` names another format than this
/// version reads, before the engine opens anything. No file: nothing to check
/// (a new directory, or one from before the file; `write_format_file` adds it).
pub fn check_format_file(data_dir: &Path) -> Result<(), String> {
    let path = data_dir.join(FORMAT_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let ours = layout::FORMAT;
    let version = env!("CARGO_PKG_VERSION");
    match text.trim().parse::<u32>() {
        Ok(n) if n == ours => Ok(()),
        Ok(n) if n > ours => Err(format!(
            "{} says store format {n}, and this version of postback-relay ({version}) reads store format {ours}: \
             the data directory was written by a newer version. Run that version or a newer one, \
             or restore a backup of the data directory made by this one",
            path.display()
        )),
        Ok(n) => Err(format!(
            "{} says store format {n}, and this version of postback-relay ({version}) reads store format {ours}: \
             follow the upgrade notes in the CHANGELOG from format {n}, or run the version that wrote it",
            path.display()
        )),
        Err(_) => Err(format!(
            "{} does not hold a store format number; this version of postback-relay ({version}) \
             writes {ours}. Restore the file from a backup of the data directory",
            path.display()
        )),
    }
}

/// Writes `store_format` once the store has opened (durably: a temporary file,
/// fsync'd, renamed), unless it is there.
pub fn write_format_file(data_dir: &Path) -> Result<(), String> {
    let path = data_dir.join(FORMAT_FILE);
    if path.exists() {
        return Ok(());
    }
    crate::private_file::write(&path, format!("{}\n", layout::FORMAT).as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

pub fn damaged(db_dir: &Path, what: &str) -> String {
    format!(
        "the store in {} is damaged ({what}); the relay will not start on it. Restore the \
         data directory from a backup, or move {} away to start with an empty store \
         (its queued deliveries and dedupe marks are then lost)",
        db_dir.display(),
        db_dir.display()
    )
}

thread_local! {
    /// `Some` while this thread runs [`catch_quietly`]: the report of the panic it
    /// caught, kept from stderr.
    static QUIET: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// The panic hook, installed once: a panic on a thread inside [`catch_quietly`] is
/// noted there; any other goes to the hook that was in place before. (Swapping the
/// process-wide hook for each call instead, as before, hid the panics of other
/// threads meanwhile, and two calls at once could leave the quiet hook installed.)
fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let noted = QUIET.with(|q| match q.try_borrow_mut() {
                Ok(mut q) => match q.as_mut() {
                    Some(slot) => {
                        *slot = Some(panic_report(info));
                        true
                    }
                    None => false,
                },
                Err(_) => false,
            });
            if !noted {
                previous(info);
            }
        }));
    });
}

/// The panic's message and where it was raised (file and line in its crate).
fn panic_report(info: &std::panic::PanicHookInfo<'_>) -> String {
    let what = info
        .payload()
        .downcast_ref::<&str>()
        .map(|m| m.to_string())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_default();
    let at = info
        .location()
        .map(|l| {
            format!(
                " at {}:{}",
                l.file().rsplit("/src/").next().unwrap_or(""),
                l.line()
            )
        })
        .unwrap_or_default();
    format!("{what}{at}")
}

/// Runs `f`, turning a panic of the storage engine (it asserts on some damaged
/// files instead of returning an error) into a reason, without the panic hook's
/// report on stderr: a damaged store is refused with one clear message.
fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_quiet_hook();
    let outer = QUIET.with(|q| q.replace(Some(None)));
    let result = catch_unwind(AssertUnwindSafe(f));
    let seen = QUIET.with(|q| q.replace(outer)).flatten();
    result.map_err(|_| {
        format!(
            "the storage engine failed reading it: {}",
            seen.unwrap_or_default().lines().next().unwrap_or("")
        )
    })
}

impl Engine {
    /// Opens (or creates) the database in `data_dir/store`, catching engine panics.
    pub fn open(data_dir: &Path) -> Result<Engine, String> {
        let db_dir = data_dir.join(DB_DIR);
        match catch_quietly(|| Engine::open_inner(&db_dir)) {
            Ok(Ok(engine)) => Ok(engine),
            Ok(Err(fjall::Error::Locked)) => Err(format!(
                "another postback-relay is using the data directory {}: stop it, or give this \
                 one its own `data_dir`",
                data_dir.display()
            )),
            Ok(Err(fjall::Error::Io(e))) if e.kind() == io::ErrorKind::StorageFull => Err(format!(
                "cannot open the store in {}: the disk is full ({e})",
                db_dir.display()
            )),
            Ok(Err(
                e @ (fjall::Error::Storage(_)
                | fjall::Error::InvalidTag(_)
                | fjall::Error::Decompress(_)),
            )) => Err(damaged(
                &db_dir,
                &format!(
                    "a file of it is unreadable ({e}): bytes of it were overwritten or cut off; \
                     the engine's last \"Recovering\" log line names the keyspace folder it \
                     was reading"
                ),
            )),
            Ok(Err(e)) => Err(damaged(&db_dir, &e.to_string())),
            Err(why) => Err(damaged(&db_dir, &why)),
        }
    }

    fn open_inner(db_dir: &Path) -> fjall::Result<Engine> {
        let db = Database::builder(db_dir)
            .cache_size(CACHE_BYTES)
            .max_journaling_size(MAX_JOURNAL_BYTES)
            .worker_threads(1)
            .open()?;
        let big = || KeyspaceCreateOptions::default().max_memtable_size(DEDUPE_MEMTABLE_BYTES);
        let small = || KeyspaceCreateOptions::default().max_memtable_size(SMALL_MEMTABLE_BYTES);
        // Deliveries waiting on a retry and dead letters: records like the queues'.
        let records = || small().data_block_compression_policy(compressed());
        // The five are made together at the first open: some without the others is a
        // store with a part deleted, never a new one (the engine would make the missing
        // part again, empty, and the relay would start with data silently gone).
        let fixed = [
            layout::RETRY,
            layout::DEAD,
            layout::DONE,
            layout::DEDUPE,
            layout::META,
        ];
        let present: Vec<&str> = fixed
            .iter()
            .copied()
            .filter(|k| db.keyspace_exists(k))
            .collect();
        if !present.is_empty() && present.len() < fixed.len() {
            let missing: Vec<&str> = fixed
                .iter()
                .copied()
                .filter(|k| !present.contains(k))
                .collect();
            return Err(fjall::Error::Io(io::Error::new(
                io::ErrorKind::NotFound,
                format!("its {} part is missing", missing.join(", ")),
            )));
        }
        Ok(Engine {
            queues: std::sync::RwLock::new(HashMap::new()),
            retry: db.keyspace(layout::RETRY, records)?,
            dead: db.keyspace(layout::DEAD, records)?,
            done: db.keyspace(layout::DONE, small)?,
            dedupe: db.keyspace(layout::DEDUPE, big)?,
            meta: db.keyspace(layout::META, small)?,
            db,
        })
    }

    /// Every keyspace, the queues included.
    pub fn keyspaces(&self) -> Vec<Keyspace> {
        let mut all = vec![
            self.retry.clone(),
            self.dead.clone(),
            self.done.clone(),
            self.dedupe.clone(),
            self.meta.clone(),
        ];
        all.extend(
            self.queues
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned(),
        );
        all
    }

    /// Seals the memtables of the keyspaces `ids` names (see `seal_at`); the engine
    /// then flushes them. Called by the keeper (see `keeper`), never on the writer.
    pub fn seal(&self, ids: &[u64]) {
        for k in self.keyspaces() {
            if ids.contains(&k.id()) {
                let _ = k.rotate_memtable();
            }
        }
    }

    /// How many bytes (as the engine counts them) a keyspace's memtable takes in
    /// before the writer asks for it to be sealed: three quarters of the engine's
    /// own limit, so the engine's worker never seals it itself (see `keeper`).
    pub fn seal_at(&self, id: u64) -> u64 {
        let limit = if id == self.dedupe.id() {
            DEDUPE_MEMTABLE_BYTES
        } else {
            // The queues' and the small keyspaces' limit.
            QUEUE_MEMTABLE_BYTES.min(SMALL_MEMTABLE_BYTES)
        };
        limit / 4 * 3
    }

    /// The fresh queue of one destination, opened (or created) on first use.
    pub fn queue(&self, dest: DestId) -> fjall::Result<Keyspace> {
        if let Some(k) = self
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&dest)
        {
            return Ok(k.clone());
        }
        let mut queues = self.queues.write().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = queues.get(&dest) {
            return Ok(k.clone());
        }
        // No Bloom filters: a queue is read by scanning in order, and its tables hold
        // disjoint ranges of sequence numbers, so a point read (`locate`) already
        // looks in one table at most; each flush built a filter of every key for
        // nothing.
        let k = self.db.keyspace(&format!("{}_{dest}", layout::QUEUE), || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(QUEUE_MEMTABLE_BYTES)
                .filter_policy(FilterPolicy::all(FilterPolicyEntry::None))
                .data_block_compression_policy(compressed())
        })?;
        queues.insert(dest, k.clone());
        Ok(k)
    }

    /// Reads the destination table, the counters and the sequence high-water mark, and
    /// checks the format. Also catches engine panics.
    pub fn load(&self, db_dir: &Path) -> Result<Loaded, String> {
        match catch_quietly(|| self.load_inner()) {
            Ok(Ok(l)) => Ok(l),
            Ok(Err(e)) => Err(damaged(db_dir, &e)),
            Err(why) => Err(damaged(db_dir, &why)),
        }
    }

    fn load_inner(&self) -> Result<Loaded, String> {
        let err = |e: fjall::Error| e.to_string();
        match self.meta.get(layout::FORMAT_META_KEY).map_err(err)? {
            Some(v) => {
                let format = layout::u64_value(&v).ok_or("meta/format is unreadable")?;
                if format != u64::from(layout::FORMAT) {
                    return Err(format!(
                        "it is in store format {format}, and this version reads format {}",
                        layout::FORMAT
                    ));
                }
            }
            None => {
                // New (or never written to): stamp it.
                let mut b = self.db.batch();
                b.insert(
                    &self.meta,
                    layout::FORMAT_META_KEY,
                    u64::from(layout::FORMAT).to_be_bytes(),
                );
                b.commit().map_err(err)?;
                self.db.persist(PersistMode::SyncData).map_err(err)?;
            }
        }
        let mut dests = HashMap::new();
        let mut counts = HashMap::new();
        for item in self.meta.prefix(b"dest/") {
            let (k, v) = item.into_inner().map_err(err)?;
            let name = String::from_utf8_lossy(&k[5..]).into_owned();
            let id = v
                .get(..2)
                .and_then(|b| b.try_into().ok())
                .map(u16::from_be_bytes)
                .ok_or("a destination entry is unreadable")?;
            dests.insert(name, id);
        }
        for item in self.meta.prefix(b"count/") {
            let (k, v) = item.into_inner().map_err(err)?;
            let id = k
                .get(6..8)
                .and_then(|b| b.try_into().ok())
                .map(u16::from_be_bytes)
                .ok_or("a counter key is unreadable")?;
            counts.insert(
                id,
                layout::parse_counts(&v).ok_or("a counter is unreadable")?,
            );
        }
        let seq = match self.meta.get(layout::SEQ_META_KEY).map_err(err)? {
            Some(v) => layout::u64_value(&v).ok_or("meta/seq is unreadable")?,
            None => 0,
        };
        let commit = match self.meta.get(layout::COMMIT_META_KEY).map_err(err)? {
            Some(v) => layout::u64_value(&v).ok_or("meta/commit is unreadable")?,
            None => 0,
        };
        // A destination the counters say has queued deliveries must still have its
        // queue: the engine would make a deleted one again, empty.
        for (name, id) in &dests {
            let queued = counts.get(id).map_or(0, |c| c.0);
            if queued > 0 && !self.db.keyspace_exists(&format!("{}_{id}", layout::QUEUE)) {
                return Err(format!(
                    "the queue of destination {name} is missing, with {queued} deliveries counted in it"
                ));
            }
        }
        Ok(Loaded {
            dests,
            counts,
            seq,
            commit,
        })
    }
}

impl Engine {
    /// Reads every table file of every keyspace whole and checks it against the
    /// checksum the engine recorded when it wrote the file. The engine itself checks a
    /// block only when it reads it, so random bytes in a table would start a relay
    /// whose reads fail later (`/readyz` flapping, `ChecksumMismatch` in the log):
    /// refused here instead, naming the file and what it holds. Costs one sequential
    /// read of the store at start.
    pub fn verify_tables(&self, db_dir: &Path, loaded: &Loaded) -> Result<(), String> {
        match catch_quietly(|| self.verify_tables_inner(loaded)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(damaged(db_dir, &e)),
            Err(why) => Err(damaged(db_dir, &why)),
        }
    }

    fn verify_tables_inner(&self, loaded: &Loaded) -> Result<(), String> {
        use fjall::AbstractTree;
        let mut parts: Vec<(String, Keyspace)> = vec![
            ("the retry schedule".into(), self.retry.clone()),
            ("the dead letters".into(), self.dead.clone()),
            ("the delivered receipts".into(), self.done.clone()),
            ("the dedupe marks".into(), self.dedupe.clone()),
            (
                "the destination table and counters".into(),
                self.meta.clone(),
            ),
        ];
        let prefix = format!("{}_", layout::QUEUE);
        for name in self.db.list_keyspace_names() {
            let Some(dest) = name.strip_prefix(&prefix).and_then(|n| n.parse().ok()) else {
                continue;
            };
            let who = loaded
                .dests
                .iter()
                .find(|(_, id)| **id == dest)
                .map_or_else(|| format!("number {dest}"), |(n, _)| n.clone());
            let queue = self.queue(dest).map_err(|e| e.to_string())?;
            parts.push((format!("the queue of destination {who}"), queue));
        }
        for (what, keyspace) in parts {
            for table in keyspace.tree.current_version().iter_tables() {
                let path: &Path = &table.path;
                let got = file_checksum(path)
                    .map_err(|e| format!("cannot read {} ({what}): {e}", path.display()))?;
                if got != table.checksum().into_u128() {
                    return Err(format!(
                        "{} ({what}) does not match the checksum written with it: bytes of it were overwritten",
                        path.display()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The whole-file checksum the engine records for each table it writes (XXH3, 128
/// bits, over every byte of the file).
fn file_checksum(path: &Path) -> io::Result<u128> {
    let mut file = fs::File::open(path)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.digest128());
        }
        hasher.update(&buf[..n]);
    }
}

/// The installation's dedupe secret: read it, or create it once (temp file, fsync,
/// rename, fsync the directory) with mode 0600.
pub fn load_or_create_secret(path: &Path) -> Result<[u8; 32], String> {
    let ctx = || format!("dedupe key {}", path.display());
    match fs::File::open(path) {
        Ok(mut f) => {
            let mut buf = Vec::with_capacity(33);
            f.read_to_end(&mut buf)
                .map_err(|e| format!("{}: {e}", ctx()))?;
            return <[u8; 32]>::try_from(buf.as_slice()).map_err(|_| {
                format!(
                    "{}: expected 32 bytes, found {}; restore it from a backup",
                    ctx(),
                    buf.len()
                )
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", ctx())),
    }
    let mut secret = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut secret)
        .map_err(|e| format!("{}: cannot draw a random key from the OS: {e}", ctx()))?;
    crate::private_file::write(path, &secret).map_err(|e| format!("{}: {e}", ctx()))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::catch_quietly;

    #[test]
    fn a_caught_panic_is_the_reason_and_a_value_passes_through() {
        assert_eq!(catch_quietly(|| 7), Ok(7));
        let e = catch_quietly(|| -> u8 { panic!("table checksum mismatch") }).unwrap_err();
        assert!(e.contains("table checksum mismatch"), "{e}");
        assert!(e.contains("engine.rs:"), "the place is named: {e}");
    }

    /// Threads catching panics at once each get their own: the hook is no longer
    /// swapped per call (two calls at once crossed their reports, and could leave
    /// the quiet hook in place for good, hiding every later panic).
    #[test]
    fn panics_caught_on_several_threads_at_once_stay_apart() {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                std::thread::spawn(move || {
                    (0..200)
                        .filter_map(|i| {
                            let e = catch_quietly(|| -> u8 { panic!("thread {t} round {i}") })
                                .unwrap_err();
                            (!e.contains(&format!("thread {t} round {i} at"))).then_some(e)
                        })
                        .collect::<Vec<String>>()
                })
            })
            .collect();
        for t in threads {
            let crossed = t.join().expect("thread");
            assert!(crossed.is_empty(), "reports of other threads: {crossed:?}");
        }
    }
}
