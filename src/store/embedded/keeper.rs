//! The journal keeper: a thread that seals memtables, off the writer thread.
//!
//! Two reasons to seal a memtable (the engine, fjall, then flushes it to a table):
//! - **It is nearly full.** The writer counts what each keyspace's memtable takes in
//!   and asks for a seal at three quarters of the engine's limit
//!   (`Engine::seal_at`). The engine's own sealing at the limit is left as a
//!   backstop: with one engine worker (`worker_threads(1)`) it can stop the engine for
//!   good. Each write over the limit posts a "seal" request to the worker's bounded
//!   mailbox; the worker that seals then sends itself the flush on that mailbox, and
//!   blocks forever once it is full (fjall issue 257, fix proposed in fjall PR 323;
//!   reproduced here writing to a keyspace directly: no flush for 30 s, the journal
//!   past 300 MB).
//! - **The journal has a sealed file.** The engine starts a new journal file past
//!   64 MB and deletes the old one once every keyspace has flushed what it holds; a
//!   keyspace written slowly (counters, retries, receipts) would keep it. Then every
//!   memtable holding writes is sealed, at most every `RESEAL_AFTER`.
//!
//! So the journal replayed after a crash is one file and part of the next, and what it
//! re-inserts is bounded by the memtables' sizes.
//!
//! Why a thread: sealing every keyspace runs the engine's version and journal upkeep,
//! 7-13 ms measured under load shape (e); on the writer it held every request of that
//! moment. Sealing needs no pause in writes (the engine swaps the memtable under its
//! journal lock, as its own workers do).
//!
//! Never: keeps a broken or closing store open (it holds the engine only while it
//! works, through a weak handle).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::engine::Engine;

/// After every memtable was sealed for a sealed journal file, how long that file,
/// if still there, is left to the flushes the round started.
const RESEAL_AFTER: Duration = Duration::from_secs(5);

/// What the writer asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// Seal these keyspaces (by the engine's keyspace id): they are nearly full.
    Keyspaces(Vec<u64>),
    /// Look at the journal; seal every memtable if it has a sealed file.
    Journal,
}

pub struct JournalKeeper {
    /// A few requests wait; one asked while they do is dropped (`ask` says so, and
    /// the writer asks again).
    tx: SyncSender<(Weak<Engine>, Round)>,
    thread: JoinHandle<()>,
}

impl JournalKeeper {
    pub fn start() -> std::io::Result<JournalKeeper> {
        let (tx, rx) = sync_channel(4);
        let thread = std::thread::Builder::new()
            .name("store-journal".into())
            .spawn(move || keep(&rx))?;
        Ok(JournalKeeper { tx, thread })
    }

    /// Asks for a round, never waiting; whether it was taken.
    pub fn ask(&self, engine: &Arc<Engine>, round: Round) -> bool {
        self.tx.try_send((Arc::downgrade(engine), round)).is_ok()
    }

    /// Ends the thread once its round, if any, is over.
    pub fn stop(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

fn keep(rx: &Receiver<(Weak<Engine>, Round)>) {
    let mut sealed_all_at: Option<Instant> = None;
    while let Ok((engine, round)) = rx.recv() {
        let Some(e) = engine.upgrade() else {
            continue;
        };
        match round {
            Round::Keyspaces(ids) => e.seal(&ids),
            Round::Journal => {
                if sealed_all_at.is_some_and(|t| t.elapsed() < RESEAL_AFTER)
                    || !e.journal_has_sealed_file()
                {
                    continue;
                }
                e.seal_memtables();
                sealed_all_at = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::layout;

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

        let keeper = JournalKeeper::start().expect("keeper");
        assert!(keeper.ask(
            &engine,
            Round::Keyspaces(vec![queue.id(), engine.meta.id()])
        ));
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
        keeper.ask(&engine, Round::Journal);
        keeper.stop();
        assert_eq!(Arc::strong_count(&engine), 1);
    }

    /// With one journal file, a journal round seals nothing.
    #[test]
    fn a_journal_round_with_one_file_seals_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(Engine::open(dir.path()).expect("open"));
        engine.meta.insert("counter", [1u8; 8]).expect("meta");
        assert!(!engine.journal_has_sealed_file());
        let keeper = JournalKeeper::start().expect("keeper");
        assert!(keeper.ask(&engine, Round::Journal));
        keeper.stop();
        assert_eq!(engine.meta.sealed_memtable_count(), 0);
        assert_eq!(engine.meta.table_count(), 0);
    }
}
