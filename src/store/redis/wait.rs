//! `WAIT` for replicas, off the shared connection.
//!
//! `WAIT` blocks the connection it is sent on until the replicas acknowledge, or its
//! timeout passes. On the relay's one shared (multiplexed) connection that held up
//! every other command behind it: claims, settles, `/readyz`, other accepts. So it
//! runs here, on a small pool of connections of its own.
//!
//! `WAIT` confirms the writes sent *on its own connection*; an accept's script ran on
//! the shared one. Redis replicates one ordered stream, so each round first writes
//! one small key (`{P}:waited`) on its connection, then waits: the replicas that
//! acknowledged that write have every write Redis answered before it, among them
//! every accept that asked to be confirmed before the round began. Accepts that ask
//! while a round runs join the next one (on another connection of the pool when one
//! is free): one `WAIT` confirms a whole group of accepts.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

/// How many rounds may wait at once.
pub(super) const POOL: usize = 4;

/// What a round tells each accept in it: the replicas that confirmed, or why none
/// could be asked.
type Answer = Result<u32, String>;

/// Hands accepts to the rounds; dropping it ends the task.
pub(super) struct Waiter {
    asks: mpsc::UnboundedSender<oneshot::Sender<Answer>>,
    task: tokio::task::JoinHandle<()>,
}

/// One round's settings.
#[derive(Clone)]
struct Round {
    key: String,
    want: u32,
    timeout: Duration,
}

impl Waiter {
    /// Starts the rounds over `conns` (the pool), waiting for `want` replicas at most
    /// `timeout` each; `key` is the key a round writes first.
    pub fn start(
        conns: Vec<ConnectionManager>,
        key: String,
        want: u32,
        timeout: Duration,
    ) -> Waiter {
        let (asks, rx) = mpsc::unbounded_channel();
        let round = Round { key, want, timeout };
        let task = tokio::spawn(rounds(rx, conns, round));
        Waiter { asks, task }
    }

    /// How many replicas acknowledged every write Redis answered before this call:
    /// at least `want`, or fewer when the timeout passed first.
    pub async fn confirm(&self) -> Answer {
        let (tx, rx) = oneshot::channel();
        self.asks
            .send(tx)
            .map_err(|_| "the store is closed".to_string())?;
        rx.await.map_err(|_| "the store is closed".to_string())?
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Gathers the accepts asking into groups, one round per group, as many rounds at
/// once as the pool has connections.
async fn rounds(
    mut asks: mpsc::UnboundedReceiver<oneshot::Sender<Answer>>,
    conns: Vec<ConnectionManager>,
    round: Round,
) {
    let (free_tx, mut free) = mpsc::channel(conns.len().max(1));
    for c in conns {
        let _ = free_tx.send(c).await;
    }
    let mut running = tokio::task::JoinSet::new();
    while let Some(first) = asks.recv().await {
        let Some(mut conn) = free.recv().await else {
            return;
        };
        // Everyone who asked while a connection was busy goes in this round.
        let mut group = vec![first];
        while let Ok(more) = asks.try_recv() {
            group.push(more);
        }
        let (round, free_tx) = (round.clone(), free_tx.clone());
        running.spawn(async move {
            let answer = one_round(&mut conn, &round).await;
            for ask in group {
                let _ = ask.send(answer.clone());
            }
            let _ = free_tx.send(conn).await;
        });
        while running.try_join_next().is_some() {}
    }
}

/// Writes the round's key, then `WAIT`s, in one round trip; bounded by the timeout
/// plus a margin for the network, whatever the connection does.
async fn one_round(conn: &mut ConnectionManager, round: &Round) -> Answer {
    let now = chrono::Utc::now().timestamp_millis();
    let timeout_ms = u64::try_from(round.timeout.as_millis()).unwrap_or(u64::MAX);
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(&round.key)
        .arg(now)
        .arg("PX")
        .arg(60_000)
        .ignore()
        .cmd("WAIT")
        .arg(round.want)
        .arg(timeout_ms);
    let limit = round.timeout + Duration::from_secs(2);
    match tokio::time::timeout(limit, pipe.query_async::<(u32,)>(conn)).await {
        Ok(Ok((got,))) => Ok(got),
        Ok(Err(e)) => Err(format!("Redis: {e}")),
        Err(_) => Err(format!("Redis did not answer WAIT within {limit:?}")),
    }
}
