//! The journal keeper: a thread that seals the memtables while writes go on, off
//! the writer thread.
//!
//! The engine (fjall) appends every commit to one journal file (made 64 MiB long
//! up front; a new one starts past 64 MB) and deletes a file once every keyspace has
//! flushed what it holds. Sealing every memtable that holds writes, at most twice a
//! second (`Writer` asks at that pace while it writes), keeps what a restart after a
//! crash re-inserts to about half a second of writes per keyspace, and keeps a
//! keyspace written slowly (counters, retries, receipts) from holding an old file.
//!
//! Why a thread: a round seals every keyspace and runs the engine's version and
//! journal upkeep, 7-13 ms measured under load shape (e); on the writer it held every
//! request of that moment. Sealing needs no pause in writes (the engine swaps the
//! memtable under its journal lock, as its own workers do).
//!
//! Why this thread and not the engine's size limit: with one engine worker, a worker
//! that seals a memtable itself can block for good sending itself the flush on its
//! own full mailbox, which fills when a memtable stays over its size limit under
//! write load (fjall issue 257, fix proposed in fjall PR 323). Sealed here, the
//! memtables stay under their limits at the rates this machine reaches.
//!
//! Never: keeps a broken or closing store open (it holds the engine only while it
//! works, through a weak handle).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use super::engine::Engine;

pub struct JournalKeeper {
    /// One request at most waits; one asked while a round runs is dropped (the
    /// writer asks again at its next check).
    tx: SyncSender<Weak<Engine>>,
    thread: JoinHandle<()>,
}

impl JournalKeeper {
    pub fn start() -> std::io::Result<JournalKeeper> {
        let (tx, rx) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("store-journal".into())
            .spawn(move || keep(&rx))?;
        Ok(JournalKeeper { tx, thread })
    }

    /// Asks for a round (never waits).
    pub fn ask(&self, engine: &Arc<Engine>) {
        let _ = self.tx.try_send(Arc::downgrade(engine));
    }

    /// Ends the thread once its round, if any, is over.
    pub fn stop(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

fn keep(rx: &Receiver<Weak<Engine>>) {
    while let Ok(engine) = rx.recv() {
        if let Some(e) = engine.upgrade() {
            e.seal_memtables();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::layout;
    use std::time::{Duration, Instant};

    /// A round seals the memtables that hold writes, and the engine flushes them:
    /// the writes end up in tables, none of them left to a journal replay.
    #[test]
    fn a_round_seals_the_memtables_and_they_are_flushed() {
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

        let keeper = JournalKeeper::start().expect("keeper");
        keeper.ask(&engine);
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
        let keeper = JournalKeeper::start().expect("keeper");
        keeper.ask(&engine);
        keeper.stop();
        assert_eq!(Arc::strong_count(&engine), 1);
    }
}
