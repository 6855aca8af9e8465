//! Group commit for accepts: the accepts that arrive while one accept script runs go
//! to Redis together, as ONE script call.
//!
//! Owns: the combiner task (one per store), which takes every accept waiting (up to
//! `MAX_REQUESTS` or `MAX_BYTES` of arguments), joins their events behind one header,
//! runs the accept script once, and hands each caller its own slice of the answer.
//! The script runs whole or not at all, so each caller gets exactly the outcome it
//! would have had alone, except for `max_queued`: a group refused as full is tried
//! again request by request, so one request that fits is never refused for the
//! others. Never: waits for replicas (each caller does, after its answer) or holds a
//! strong reference to the store (it ends when the store is dropped).
//!
//! Why: on a 2-core machine Redis's cost per script call (argument parsing, the Lua
//! call, the reply, one round trip per request) was the accept path's bottleneck;
//! many requests per call pay it once.

use std::sync::Weak;
use std::time::Instant;

use redis::RedisError;
use tokio::sync::{mpsc, oneshot};

use super::Inner;
use crate::store::{StoreError, StoreResult};

/// Most requests one script call carries.
const MAX_REQUESTS: usize = 128;
/// Most argument bytes one script call carries (Redis itself takes far more; this
/// keeps one call short, so no other client waits long behind it).
const MAX_BYTES: usize = 1 << 20;
/// Accepts that may wait for the combiner; more wait for room (back-pressure).
const QUEUE: usize = 4096;

/// One request's share of a grouped accept.
pub(super) struct Part {
    pub now_ms: i64,
    /// Events in this request.
    pub events: usize,
    /// Per event: dedupe key, number of deliveries, then per delivery: destination,
    /// delivery ID, request (the accept script's layout after its header).
    pub args: Vec<Vec<u8>>,
    pub reply: oneshot::Sender<StoreResult<Committed>>,
}

impl Part {
    fn bytes(&self) -> usize {
        self.args.iter().map(Vec::len).sum()
    }
}

/// What the accept script said for one request.
#[derive(Debug)]
pub(super) struct Committed {
    /// The commit counter after the call that carried it (see `mark.rs`).
    pub commit: u64,
    /// One flag per event: 1 accepted, 0 duplicate.
    pub flags: Vec<i64>,
}

/// The sending end, kept by the store.
pub(super) type Combiner = mpsc::Sender<Part>;

/// Starts the combiner of `inner`; it ends when the store is dropped or closed.
pub(super) fn start(inner: Weak<Inner>) -> (Combiner, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (tx, tokio::spawn(combine(inner, rx)))
}

async fn combine(inner: Weak<Inner>, mut rx: mpsc::Receiver<Part>) {
    // The store is held only while a group runs, so dropping it ends this task.
    while let Some(first) = rx.recv().await {
        let mut bytes = first.bytes();
        let mut group = vec![first];
        while group.len() < MAX_REQUESTS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.bytes();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let Some(i) = inner.upgrade() else {
            answer_all(
                group,
                &StoreError::Unavailable("the store is closed".into()),
            );
            return;
        };
        run_group(&i, group).await;
    }
}

/// One script call for the whole group; a group refused as full is tried again
/// request by request.
pub(super) async fn run_group(i: &Inner, group: Vec<Part>) {
    let started = Instant::now();
    let requests = group.len();
    match call(i, &group).await {
        Ok(reply) => {
            i.committed(requests, started);
            split(group, reply);
        }
        Err(Ok(e)) if e.code() == Some("FULL") && group.len() > 1 => {
            for part in group {
                let one = vec![part];
                match call(i, &one).await {
                    Ok(reply) => {
                        i.committed(1, started);
                        split(one, reply);
                    }
                    Err(e) => answer_all(one, &classify(i, e)),
                }
            }
        }
        Err(e) => answer_all(group, &classify(i, e)),
    }
}

fn classify(i: &Inner, e: Result<RedisError, StoreError>) -> StoreError {
    match e {
        Ok(e) => super::accept_error(i, e),
        Err(e) => e,
    }
}

/// The accept script over every part: the header (now, window, max queued, event
/// count), then each part's events in order.
async fn call(i: &Inner, group: &[Part]) -> Result<Vec<i64>, Result<RedisError, StoreError>> {
    let now_ms = group.iter().map(|p| p.now_ms).max().unwrap_or(0);
    let events: usize = group.iter().map(|p| p.events).sum();
    i.run_with(&i.scripts.accept, |inv| {
        inv.arg(now_ms)
            .arg(super::ms(i.opts.dedupe_window))
            .arg(i.opts.max_queued)
            .arg(events);
        for a in group.iter().flat_map(|p| &p.args) {
            inv.arg(a.as_slice());
        }
    })
    .await
}

/// Each part gets the commit number and its own events' flags.
fn split(group: Vec<Part>, reply: Vec<i64>) {
    let (commit, mut flags) = match reply.split_first() {
        Some((c, f)) => (u64::try_from(*c).unwrap_or(0), f),
        None => (0, &[][..]),
    };
    for p in group {
        let n = p.events.min(flags.len());
        let (mine, rest) = flags.split_at(n);
        flags = rest;
        let answer = if mine.len() == p.events {
            Ok(Committed {
                commit,
                flags: mine.to_vec(),
            })
        } else {
            Err(StoreError::Unknown(
                "Redis answered the accept with fewer results than events".into(),
            ))
        };
        let _ = p.reply.send(answer);
    }
}

fn answer_all(group: Vec<Part>, e: &StoreError) {
    for p in group {
        let _ = p.reply.send(Err(e.clone()));
    }
}
