//! The memtable keeper: a thread that seals nearly full memtables, off the writer
//! thread (the engine, fjall, then flushes them to tables).
//!
//! The writer counts what each keyspace's memtable takes in and asks for a seal at
//! three quarters of the engine's limit (`Engine::seal_at`). The engine's own sealing
//! at the limit is left as a backstop: with one engine worker (`worker_threads(1)`)
//! it can stop the engine for good. Each write over the limit posts a "seal" request
//! to the worker's bounded mailbox; the worker that seals then sends itself the flush
//! on that mailbox, and blocks forever once it is full (fjall issue 257, fix proposed
//! in fjall PR 323; reproduced here writing to a keyspace directly: no flush for 30 s,
//! the journal past 300 MB). After an open, each memtable is sealed at its first
//! write: the journal replay may have refilled it behind the count.
//!
//! Journal files need nothing from here: the engine starts a new one past 64 MB, and
//! once the sealed ones reach `max_journaling_size` (64 MiB, `engine.rs`; a sealed
//! file counts its full 64 MiB) it seals the keyspaces that keep the oldest, itself,
//! one request each (tested: `a_sealed_journal_file_is_not_kept_by_a_slowly_written_keyspace`).
//! So the journal replayed after a crash is one file and part of the next, and what it
//! re-inserts is bounded by the memtables' sizes.
//!
//! Why a thread: sealing runs the engine's version and journal upkeep, 7-13 ms for
//! every keyspace measured under load shape (e); on the writer it held every request
//! of that moment. Sealing needs no pause in writes (the engine swaps the memtable
//! under its journal lock, as its own workers do).
//!
//! Never: keeps a broken or closing store open (it holds the engine only while it
//! works, through a weak handle).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use super::engine::Engine;

/// What the writer asks for: seal these keyspaces (by the engine's keyspace id).
type Round = Vec<u64>;

pub struct MemtableKeeper {
    /// A few requests wait; one asked while they do is dropped (`ask` says so, and
    /// the writer asks again).
    tx: SyncSender<(Weak<Engine>, Round)>,
    thread: JoinHandle<()>,
}

impl MemtableKeeper {
    pub fn start() -> std::io::Result<MemtableKeeper> {
        let (tx, rx) = sync_channel(4);
        let thread = std::thread::Builder::new()
            .name("store-memtables".into())
            .spawn(move || keep(&rx))?;
        Ok(MemtableKeeper { tx, thread })
    }

    /// Asks for the keyspaces `ids` to be sealed, never waiting; whether the
    /// request was taken.
    pub fn ask(&self, engine: &Arc<Engine>, ids: Vec<u64>) -> bool {
        self.tx.try_send((Arc::downgrade(engine), ids)).is_ok()
    }

    /// Ends the thread once its round, if any, is over.
    pub fn stop(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

fn keep(rx: &Receiver<(Weak<Engine>, Round)>) {
    while let Ok((engine, ids)) = rx.recv() {
        if let Some(e) = engine.upgrade() {
            e.seal(&ids);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::layout;
    use std::time::{Duration, Instant};

    /// A round seals the memtables it names, and the engine flushes them.
    #[test]
    fn a_round_seals_the_named_memtables_and_they_are_flushed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(Engine::open(dir.path()).expect("open"));
        let queue = engine.queue(1).expect("queue");
        // Well under the memtable's size limit: the engine would not seal it itself.
        for seq in 0..100u64 {
            queue
                .insert(layout::seq_key(seq), [7u8; 100])
                .expect("insert");
        }
        engine.meta.insert("counter", [1u8; 8]).expect("meta");
        assert_eq!((queue.table_count(), engine.meta.table_count()), (0, 0));

        let keeper = MemtableKeeper::start().expect("keeper");
        assert!(keeper.ask(&engine, vec![queue.id(), engine.meta.id()]));
        let deadline = Instant::now() + Duration::from_secs(30);
        while (queue.table_count(), engine.meta.table_count()) != (1, 1) {
            assert!(
                Instant::now() < deadline,
                "not flushed: {} queue tables, {} meta tables",
                queue.table_count(),
                engine.meta.table_count()
            );
            // Pacing: a poll with a deadline; the flushes run on the engine's thread.
            std::thread::sleep(Duration::from_millis(10));
        }
        keeper.stop();
        assert_eq!(queue.len().expect("len"), 100);
    }

    /// The keeper holds the engine only during a round: stopped, it has let go.
    #[test]
    fn the_keeper_does_not_keep_the_engine_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(Engine::open(dir.path()).expect("open"));
        let keeper = MemtableKeeper::start().expect("keeper");
        keeper.ask(&engine, vec![engine.meta.id()]);
        keeper.stop();
        assert_eq!(Arc::strong_count(&engine), 1);
    }
}
