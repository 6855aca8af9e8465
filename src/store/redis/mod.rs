//! The Redis (or Valkey) backend: several relays share one dedupe state and one
//! delivery queue.
//!
//! Owns: the keys of one installation under `{prefix}` (one hash tag, so one slot):
//! the dedupe marks, one stream per destination with one consumer group (`relay`,
//! each relay process a consumer), the retry and dead-letter sorted sets, delivery
//! records and counters; the Lua scripts that change them atomically (`lua/`).
//! Never: speaks HTTP, sees a raw event or a credential (requests carry markers).
//!
//! | key | type | what |
//! |---|---|---|
//! | `{P}:meta` | hash | `epoch` (this data's identity), `secret` (dedupe key), `format` |
//! | `{P}:dedupe` | sorted set | keyed hash (16 bytes) -> expiry (ms) |
//! | `{P}:q:<dest>` | stream | entry `i` = delivery ID; entry time = due time |
//! | `{P}:retry:<dest>` | sorted set | delivery ID -> due (ms) |
//! | `{P}:dead:<dest>` | sorted set | delivery ID -> dead at (ms) |
//! | `{P}:r:<id>` | hash | the delivery (`record.rs`); a delivered one's receipt (with the partner's later word on it, if any) expires after `receipt_retention` |
//! | `{P}:counts` | hash | `q:<dest>`, `d:<dest>`, `total`: counts without scanning |
//! | `{P}:dests`, `{P}:top` | set, hash | destinations; each stream's latest entry time |
//! | `{P}:scan` | hash | per stream, where the next `XAUTOCLAIM` goes on |
//! | `{P}:waited` | string | written by each `WAIT` round (`wait.rs`) |
//!
//! Every script first checks `{P}:meta`'s epoch against the one this relay opened:
//! if Redis lost its data, the relay says so (`ready() == false`, writes answer
//! `Unavailable`) instead of carrying on with an empty queue.

mod group;
mod mark;
mod open;
mod primary;
mod record;
#[cfg(test)]
mod tests;
mod wait;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::RngCore;
use redis::aio::ConnectionManager;
use redis::{RedisError, Script, Value};

pub use self::primary::Sentinels;

use self::open::redacted;
use self::record::{encode_request, outcome_fields, Fields};
use crate::store::{
    AcceptOutcome, DeadLetter, Delivery, DeliveryStatus, DestinationCounts, EventToAccept,
    ReplaySelector, Store, StoreError, StoreObserver, StoreResult,
};
use crate::sync::lock;

/// What the Redis backend needs from the config.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` (TLS). With
    /// `sentinels`, its host and port are replaced by the primary's they name.
    pub url: String,
    /// Redis Sentinel: ask these for the primary's address (`primary.rs`).
    pub sentinels: Option<Sentinels>,
    /// Key prefix: every key is `{prefix}:...`.
    pub prefix: String,
    /// This process's consumer name in the stream groups; unique among live relays.
    pub consumer: String,
    /// A claim held this long by a relay that stopped touching it (dead) is handed
    /// to another.
    pub claim_timeout: Duration,
    pub dedupe_window: Duration,
    pub max_queued: u64,
    /// How long dead letters are kept.
    pub dlq_retention: Duration,
    /// How long a delivered delivery's receipt is kept (for `lookup`).
    pub receipt_retention: Duration,
    /// Replicas that must confirm an accept before the 202 (`WAIT`); 0: none.
    pub wait_replicas: u32,
    pub wait_timeout: Duration,
    /// TLS: trust these CA certificates (PEM file) instead of the public roots.
    pub ca: Option<PathBuf>,
    /// Where this relay notes the epoch of the data it used, so that a restart finds
    /// out when Redis lost the data in between.
    pub data_dir: Option<PathBuf>,
}

impl RedisOptions {
    /// `host-pid`: unique among live processes, new for each run.
    pub fn default_consumer() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "relay".into());
        format!("{host}-{}", std::process::id())
    }
}

/// A script's arguments, each as Redis takes it.
macro_rules! args {
    ($($x:expr),* $(,)?) => {{
        let mut v: Vec<Vec<u8>> = Vec::new();
        $( v.extend(::redis::ToRedisArgs::to_redis_args(&$x)); )*
        v
    }};
}

const FORMAT: &str = "1";
/// What an accept may wait for replicas beyond `wait_timeout` (round trips).
const WAIT_MARGIN: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How much a script moves at once (replay, retire, purge), so no call holds Redis
/// for long.
const BATCH: usize = 1000;
const EPOCH_FILE: &str = "redis.epoch";
/// Consumers holding nothing and idle this long are deleted from the groups.
const FORGET_AFTER: Duration = Duration::from_secs(86_400);

struct Scripts {
    open: Script,
    accept: Script,
    claim: Script,
    settle: Script,
    replay: Script,
    retire: Script,
    purge: Script,
    next_due: Script,
    recover: Script,
    forget: Script,
    note: Script,
}

impl Scripts {
    fn new() -> Scripts {
        // `#!lua` (Redis 7+): a script that may write is refused whole when Redis is
        // out of memory, before it reads or writes anything.
        let with_common = |body: &str| Script::new(&format!("#!lua\n{COMMON}\n{body}"));
        Scripts {
            open: Script::new(&format!("#!lua\n{}", include_str!("lua/open.lua"))),
            accept: with_common(include_str!("lua/accept.lua")),
            claim: with_common(include_str!("lua/claim.lua")),
            settle: with_common(include_str!("lua/settle.lua")),
            replay: with_common(include_str!("lua/replay.lua")),
            retire: with_common(include_str!("lua/retire.lua")),
            purge: with_common(include_str!("lua/purge.lua")),
            next_due: with_common(include_str!("lua/next_due.lua")),
            recover: with_common(include_str!("lua/recover.lua")),
            forget: with_common(include_str!("lua/forget.lua")),
            note: with_common(include_str!("lua/note.lua")),
        }
    }
}

const COMMON: &str = include_str!("lua/common.lua");

pub struct RedisStore {
    inner: Arc<Inner>,
    /// The claim-renewal and late-settle tasks: `close` ends them and waits for them.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

struct Inner {
    /// The connection to the primary; replaced when the sentinels name another.
    conn: Mutex<ConnectionManager>,
    /// The primary's URL now (`opts.url` unless the sentinels named another address).
    url: Mutex<String>,
    /// Poked when a command failed in a way that may mean the primary moved.
    suspect: Arc<tokio::sync::Notify>,
    opts: RedisOptions,
    /// `{prefix}`: the hash tag every key starts with.
    p: String,
    epoch: String,
    secret: [u8; 32],
    scripts: Scripts,
    /// Claims this process holds: delivery ID -> (destination, stream entry).
    held: Mutex<HashMap<String, (String, String)>>,
    /// Confirms accepts with `WAIT` on connections of its own (`wait.rs`); `None`
    /// when no replica is asked for.
    waiter: Mutex<Option<Arc<wait::Waiter>>>,
    /// Settles Redis did not take (it was away): delivery ID -> the settle script's
    /// arguments. Written by `settle_later` once Redis answers; their claims are
    /// renewed meanwhile, so no other relay sends them again.
    unsettled: Mutex<HashMap<String, Vec<Vec<u8>>>>,
    lost: AtomicBool,
    closed: AtomicBool,
    /// The commit counter as this relay saw it (`data_dir/redis.mark`).
    seen: mark::Seen,
    observer: Mutex<Option<Arc<dyn StoreObserver>>>,
    /// Accepts go through it, many requests to one script call (`group.rs`); set
    /// once, right after the store is made.
    combiner: std::sync::OnceLock<group::Combiner>,
}

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Keeps this process's claims from looking abandoned: every third of the claim
/// timeout, reset their idle time; after a renewal failed (Redis away), every 200 ms
/// until one works, so claims idle through an outage are renewed as soon as Redis
/// is back, before another relay takes them. Ends when the store is dropped or closed.
async fn touch_claims(inner: Weak<Inner>) {
    let mut failed = false;
    loop {
        let every = match inner.upgrade() {
            Some(_) if failed => Duration::from_millis(200),
            Some(i) => (i.opts.claim_timeout / 3).max(Duration::from_millis(100)),
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(i) = inner.upgrade() else { return };
        if i.closed.load(Ordering::SeqCst) {
            return;
        }
        failed = !renew_claims(&i).await;
    }
}

/// One renewal of every claim this process holds; `false` when one failed.
async fn renew_claims(i: &Inner) -> bool {
    let mut by_dest: HashMap<String, Vec<String>> = HashMap::new();
    for (dest, entry) in lock(&i.held).values() {
        by_dest.entry(dest.clone()).or_default().push(entry.clone());
    }
    let mut ok = true;
    for (dest, entries) in by_dest {
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(i.key(&format!("q:{dest}")))
            .arg("relay")
            .arg(&i.opts.consumer)
            .arg(0)
            .arg(&entries)
            .arg("JUSTID");
        let r: Result<Value, _> = cmd.query_async(&mut i.conn()).await;
        if let Err(e) = r {
            tracing::warn!(destination = %dest, error = %e, "cannot renew claims in Redis");
            ok = false;
        }
    }
    ok
}

/// Writes the settles Redis did not take, as soon as it answers again. Ends when
/// the store is dropped or closed.
async fn settle_later(inner: Weak<Inner>) {
    const EVERY: Duration = Duration::from_millis(200);
    let mut pause = EVERY;
    loop {
        tokio::time::sleep(pause).await;
        let Some(i) = inner.upgrade() else { return };
        if i.closed.load(Ordering::SeqCst) {
            return;
        }
        if lock(&i.unsettled).is_empty() {
            pause = EVERY;
            continue;
        }
        pause = match i.flush_unsettled().await {
            Ok(_) => EVERY,
            Err(_) => (pause * 2).min(Duration::from_secs(2)),
        };
    }
}

impl Inner {
    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.p)
    }

    /// The connection to the primary as it is now.
    fn conn(&self) -> ConnectionManager {
        lock(&self.conn).clone()
    }

    /// The primary's address for messages, without the password.
    fn where_(&self) -> String {
        redacted(&lock(&self.url))
    }

    /// With Sentinel, an error that may mean the primary moved asks the sentinels
    /// again at once (`open::follow_primary`).
    fn check_primary(&self, e: &RedisError) {
        if self.opts.sentinels.is_some() && primary::moved(e) {
            self.suspect.notify_one();
        }
    }

    /// Refuses work once closed, or once Redis was found to have lost the data.
    fn usable(&self) -> StoreResult<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        if self.lost.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(LOST.into()));
        }
        Ok(())
    }

    /// A script call with the prefix and epoch in front of `args`.
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        args: Vec<Vec<u8>>,
    ) -> StoreResult<T> {
        self.run_raw(script, args).await.map_err(|e| match e {
            Ok(e) => self.error(e),
            Err(e) => e,
        })
    }

    /// `run`, again and again while a call moves a whole `BATCH` (the scripts that
    /// move deliveries in batches, so none blocks Redis for long): the total moved.
    /// `args` are the arguments before the batch size.
    async fn run_batches(&self, script: &Script, args: Vec<Vec<u8>>) -> StoreResult<usize> {
        let mut total = 0;
        loop {
            let mut call = args.clone();
            call.extend(::redis::ToRedisArgs::to_redis_args(&BATCH));
            let n: usize = self.run(script, call).await?;
            total += n;
            if n < BATCH {
                return Ok(total);
            }
        }
    }

    /// `run`, with Redis's own error unclassified (`Err(Ok(_))`).
    async fn run_raw<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        args: Vec<Vec<u8>>,
    ) -> Result<T, Result<RedisError, StoreError>> {
        self.run_with(script, |inv| {
            for a in args {
                inv.arg(a);
            }
        })
        .await
    }

    /// `run_raw`, with the arguments after the prefix and epoch written by `fill`.
    async fn run_with<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        fill: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> Result<T, Result<RedisError, StoreError>> {
        self.usable().map_err(Err)?;
        let mut inv = script.prepare_invoke();
        inv.arg(&self.p).arg(&self.epoch);
        fill(&mut inv);
        let mut conn = self.conn();
        inv.invoke_async(&mut conn).await.map_err(|e| {
            self.check_primary(&e);
            Ok(e)
        })
    }

    /// Classifies a Redis error; notes a data loss.
    fn error(&self, e: RedisError) -> StoreError {
        self.check_primary(&e);
        match e.code() {
            Some("DATALOSS") => {
                self.note_lost();
                StoreError::Unavailable(LOST.into())
            }
            Some("FULL") => StoreError::Full {
                reason: e.detail().unwrap_or("max_queued reached").to_owned(),
                retry_after: Duration::from_secs(5),
            },
            Some("OOM") => StoreError::Full {
                reason: "Redis is out of memory (maxmemory)".into(),
                retry_after: Duration::from_secs(5),
            },
            _ => StoreError::Unavailable(format!("Redis: {e}")),
        }
    }

    /// Redis no longer holds the data this relay opened: say so once, loudly, and
    /// stop using it.
    fn note_lost(&self) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            tracing::error!(
                prefix = %self.opts.prefix,
                epoch = %self.epoch,
                "Redis lost the relay's data (a restart without persistence, a flush, or a failover to an empty replica): every delivery queued there is gone. This relay stops accepting and delivering; restart it to go on with the data Redis has now (see docs/redis.md)"
            );
        }
    }

    /// Redis answered with fewer commits than this relay saw: it went back in time.
    fn note_went_back(&self, commits: u64, seen: u64) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            tracing::error!(
                prefix = %self.opts.prefix,
                "{}. This relay stops accepting and delivering; restart it (it will refuse to start until {} in its data directory is deleted, to accept the loss)",
                mark::went_back(&self.where_(), commits, seen),
                mark::MARK_FILE
            );
        }
    }

    fn committed(&self, operations: usize, started: Instant) {
        if let Some(o) = lock(&self.observer).as_ref() {
            o.committed(operations, started.elapsed());
        }
    }

    async fn destinations(&self) -> StoreResult<Vec<String>> {
        self.usable()?;
        let mut d: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("dests"))
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.error(e))?;
        d.sort();
        Ok(d)
    }

    /// Puts back what this consumer name held when its last process died.
    async fn recover(&self) -> StoreResult<usize> {
        let mut total = 0;
        for dest in self.destinations().await? {
            total += self
                .run_batches(&self.scripts.recover, args![dest, self.opts.consumer])
                .await?;
        }
        Ok(total)
    }

    /// Deletes the consumers that hold nothing and were idle past `idle`, in every
    /// destination's group. Returns how many.
    async fn forget_consumers(&self, idle: Duration) -> StoreResult<usize> {
        let mut total = 0;
        for dest in self.destinations().await? {
            let n: usize = self
                .run(&self.scripts.forget, args![dest, ms(idle)])
                .await?;
            total += n;
        }
        Ok(total)
    }

    async fn settle(
        &self,
        id: &str,
        what: &str,
        now: i64,
        d: Option<&Delivery>,
    ) -> StoreResult<()> {
        let started = Instant::now();
        let (set, del) = d.map(outcome_fields).unwrap_or_default();
        let retention = ms(self.opts.receipt_retention).max(1);
        let mut args = args![id, what, now, retention, set.len()];
        for (f, v) in &set {
            args.extend(args![f, v]);
        }
        for f in &del {
            args.extend(args![f]);
        }
        match self
            .run_raw::<i64>(&self.scripts.settle, args.clone())
            .await
        {
            Ok(_) => {
                lock(&self.unsettled).remove(id);
                lock(&self.held).remove(id);
                self.committed(1, started);
                Ok(())
            }
            // Closed, or Redis lost the data: nothing to write it to.
            Err(Err(e)) => Err(e),
            Err(Ok(e)) if transient(&e) && self.usable().is_ok() => {
                // Redis is away (or refuses writes for now): keep the outcome and
                // write it once Redis answers. Dropping it would leave the claim held,
                // and renewed, until this relay restarts.
                tracing::warn!(delivery_id = %id, outcome = what, error = %e, "Redis did not take a delivery's outcome; it is kept and written once Redis answers");
                lock(&self.unsettled).insert(id.to_owned(), args);
                Ok(())
            }
            Err(Ok(e)) => {
                self.give_up(id);
                Err(self.error(e))
            }
        }
    }

    /// A settle that can never be written as it is: stop renewing its claim, so the
    /// delivery goes to a relay after the claim timeout instead of being held until
    /// this one restarts.
    fn give_up(&self, id: &str) {
        lock(&self.unsettled).remove(id);
        lock(&self.held).remove(id);
    }

    /// Writes the settles Redis did not take. Stops at the first error; returns how
    /// many were written.
    async fn flush_unsettled(&self) -> StoreResult<usize> {
        let pending: Vec<(String, Vec<Vec<u8>>)> = lock(&self.unsettled)
            .iter()
            .map(|(id, a)| (id.clone(), a.clone()))
            .collect();
        let mut written = 0;
        for (id, args) in pending {
            match self
                .run_raw::<i64>(&self.scripts.settle, args.clone())
                .await
            {
                Ok(_) => {}
                Err(Err(e)) => return Err(e),
                Err(Ok(e)) if transient(&e) => return Err(self.error(e)),
                Err(Ok(e)) => {
                    tracing::error!(delivery_id = %id, error = %e, "cannot write the outcome of a delivery; it goes to a relay again after the claim timeout");
                    self.give_up(&id);
                    let _ = self.error(e);
                    continue;
                }
            }
            let mut unsettled = lock(&self.unsettled);
            // A newer settle of the same claim may have replaced it meanwhile.
            if unsettled.get(&id) == Some(&args) {
                unsettled.remove(&id);
                drop(unsettled);
                lock(&self.held).remove(&id);
            }
            written += 1;
        }
        if written > 0 {
            tracing::info!(
                deliveries = written,
                "wrote the outcomes of deliveries Redis had not taken while it was away"
            );
        }
        Ok(written)
    }

    /// After an accept: the replicas asked for have the write, or the sender is
    /// told the outcome is unknown (the script ran; a replica may not have it).
    async fn wait_for_replicas(&self) -> StoreResult<()> {
        let want = self.opts.wait_replicas;
        let Some(waiter) = lock(&self.waiter).clone() else {
            return Ok(());
        };
        let timeout = self.opts.wait_timeout;
        // The rounds are bounded by the timeout each, but an accept may wait for a
        // free connection first: the timeout holds for the whole wait.
        let confirmed = tokio::time::timeout(timeout + WAIT_MARGIN, waiter.confirm())
            .await
            .unwrap_or(Ok(0));
        let got = confirmed.map_err(|e| {
            StoreError::Unknown(format!(
                "the write reached Redis, but no replica confirmation could be had ({e})"
            ))
        })?;
        if got < want {
            return Err(StoreError::Unknown(format!(
                "the write reached Redis, but only {got} of {want} replicas confirmed it within {timeout:?}"
            )));
        }
        Ok(())
    }
}

/// Whether a failed write may go through later as it is: Redis away, loading,
/// failing over or out of memory; not a script error, which would fail again.
fn transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || matches!(
            e.code(),
            Some("OOM" | "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY")
        )
}

/// An accept's script error: a refusal Redis answered (full, out of memory, data
/// lost) changed nothing; a dropped connection or a timeout may have come after the
/// script ran.
fn accept_error(i: &Inner, e: RedisError) -> StoreError {
    if e.code().is_none() && !e.is_connection_refusal() {
        return StoreError::Unknown(format!("Redis did not answer the accept: {e}"));
    }
    i.error(e)
}

const LOST: &str = "Redis lost the relay's data (restart without persistence, flush, failover to an empty or lagging replica, or restore of an older snapshot); restart the relay to go on";

/// An accept's share of a grouped script call (`group.rs`): per event its dedupe
/// key, its number of deliveries, then per delivery the destination, a new delivery
/// ID and the rendered request.
struct AcceptArgs {
    args: Vec<Vec<u8>>,
    ids: Vec<Vec<String>>,
}

fn accept_args(events: &[EventToAccept]) -> StoreResult<AcceptArgs> {
    let mut args: Vec<Vec<u8>> = Vec::with_capacity(events.len() * 5);
    let mut ids = Vec::with_capacity(events.len());
    for ev in events {
        args.push(ev.dedupe_key.0.to_vec());
        args.push(ev.deliveries.len().to_string().into_bytes());
        let mut these = Vec::with_capacity(ev.deliveries.len());
        for d in &ev.deliveries {
            let id = new_id();
            args.push(d.destination.clone().into_bytes());
            args.push(id.clone().into_bytes());
            args.push(encode_request(&d.request).map_err(StoreError::Unavailable)?);
            these.push(id);
        }
        ids.push(these);
    }
    Ok(AcceptArgs { args, ids })
}

/// A kept status check's field in `{prefix}:checks`.
fn check_field(destination: &str, request_id: &str) -> String {
    format!("{destination}\0{request_id}")
}

/// `dlv_` + a ULID: unique across relays without coordination.
fn new_id() -> String {
    let mut random = [0u8; 16];
    rand::rng().fill_bytes(&mut random);
    let now = u64::try_from(wall_ms()).unwrap_or(0);
    let u = ulid::Ulid::from_parts(now, u128::from_be_bytes(random));
    let mut buf = [0u8; ulid::ULID_LEN];
    format!("dlv_{}", u.array_to_str(&mut buf))
}

/// A claim script's answer: each a delivery ID followed by its record's fields.
fn claimed(rows: Vec<Vec<Vec<u8>>>) -> Vec<(Delivery, String)> {
    let mut out = Vec::with_capacity(rows.len());
    for mut row in rows {
        if row.is_empty() {
            continue;
        }
        let id = String::from_utf8_lossy(&row.remove(0)).into_owned();
        let fields = Fields::from_pairs(row);
        match (fields.delivery(&id), fields.entry()) {
            (Some(d), Some(entry)) => out.push((d, entry)),
            _ => {
                tracing::warn!(delivery_id = %id, "a queued delivery in Redis does not decode; left claimed")
            }
        }
    }
    out
}

#[async_trait]
impl Store for RedisStore {
    fn observe(&self, observer: Arc<dyn StoreObserver>) {
        *lock(&self.inner.observer) = Some(observer);
    }

    fn dedupe_secret(&self) -> [u8; 32] {
        self.inner.secret
    }

    async fn accept(
        &self,
        events: Vec<EventToAccept>,
        now_ms: i64,
    ) -> StoreResult<Vec<AcceptOutcome>> {
        let i = &self.inner;
        i.usable()?;
        let AcceptArgs { args, ids } = accept_args(&events)?;
        let before = i.seen.get();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let part = group::Part {
            now_ms,
            events: events.len(),
            args,
            reply,
        };
        let closed = || StoreError::Unavailable("the store is closed".into());
        let combiner = i.combiner.get().ok_or_else(closed)?;
        combiner.send(part).await.map_err(|_| closed())?;
        let group::Committed { commit, flags } = answer.await.map_err(|_| {
            StoreError::Unknown("the store stopped before Redis answered the accept".into())
        })??;
        if commit <= before {
            i.note_went_back(commit, before);
            return Err(StoreError::Unavailable(LOST.into()));
        }
        i.wait_for_replicas().await?;
        // Only now: the mark counts acknowledged commits. A failover to a replica
        // that lost only writes answered "unknown" is no going back in time.
        i.seen.saw(commit);
        Ok(flags
            .into_iter()
            .zip(ids)
            .map(|(f, delivery_ids)| match f {
                1 => AcceptOutcome::Accepted { delivery_ids },
                _ => AcceptOutcome::Duplicate,
            })
            .collect())
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
        let i = &self.inner;
        if !lock(&i.unsettled).is_empty() {
            // Outcomes first: a claim whose settle is still to be written must not
            // come back to a worker before it is.
            i.flush_unsettled().await?;
        }
        let idle = ms(i.opts.claim_timeout);
        let rows: Vec<Vec<Vec<u8>>> = i
            .run(
                &i.scripts.claim,
                args![destination, i.opts.consumer, now_ms, limit, idle],
            )
            .await?;
        let got = claimed(rows);
        let mut held = lock(&i.held);
        Ok(got
            .into_iter()
            .map(|(d, entry)| {
                held.insert(d.id.clone(), (d.destination.clone(), entry));
                d
            })
            .collect())
    }

    async fn next_due(&self, destination: &str) -> StoreResult<Option<i64>> {
        let i = &self.inner;
        let v: Option<String> = i.run(&i.scripts.next_due, args![destination]).await?;
        Ok(v.and_then(|t| t.parse().ok()))
    }

    async fn complete(&self, id: &str) -> StoreResult<()> {
        self.inner.settle(id, "complete", wall_ms(), None).await
    }

    async fn retry_later(&self, delivery: Delivery) -> StoreResult<()> {
        let id = delivery.id.clone();
        self.inner
            .settle(&id, "retry", wall_ms(), Some(&delivery))
            .await
    }

    async fn dead_letter(&self, delivery: Delivery, now_ms: i64) -> StoreResult<()> {
        let id = delivery.id.clone();
        self.inner
            .settle(&id, "dead", now_ms, Some(&delivery))
            .await
    }

    async fn release(&self, id: &str) -> StoreResult<()> {
        self.inner.settle(id, "release", wall_ms(), None).await
    }

    async fn dlq_list(
        &self,
        destination: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetter>> {
        let i = &self.inner;
        let dests = match destination {
            Some(d) => vec![d.to_owned()],
            None => i.destinations().await?,
        };
        let stop = i64::try_from(limit).unwrap_or(i64::MAX).saturating_sub(1);
        let mut out = Vec::new();
        for dest in dests {
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(i.key(&format!("dead:{dest}")))
                .arg(0)
                .arg(stop)
                .query_async(&mut i.conn())
                .await
                .map_err(|e| i.error(e))?;
            for chunk in ids.chunks(BATCH) {
                let mut pipe = redis::pipe();
                for id in chunk {
                    pipe.cmd("HGETALL").arg(i.key(&format!("r:{id}")));
                }
                let rows: Vec<Vec<Vec<u8>>> = pipe
                    .query_async(&mut i.conn())
                    .await
                    .map_err(|e| i.error(e))?;
                for (id, row) in chunk.iter().zip(rows) {
                    let f = Fields::from_pairs(row);
                    if f.state().as_deref() == Some("d") {
                        out.extend(f.dead_letter(id));
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            (a.dead_at, a.delivery.created_at, &a.delivery.id).cmp(&(
                b.dead_at,
                b.delivery.created_at,
                &b.delivery.id,
            ))
        });
        out.truncate(limit);
        Ok(out)
    }

    async fn dlq_replay(&self, which: ReplaySelector, now_ms: i64) -> StoreResult<usize> {
        let i = &self.inner;
        let started = Instant::now();
        let dests = match &which {
            ReplaySelector::Id(id) => {
                let n: usize = i
                    .run(&i.scripts.replay, args![now_ms, "id", id, BATCH])
                    .await?;
                i.committed(1, started);
                return Ok(n);
            }
            ReplaySelector::Destination(d) => vec![d.clone()],
            ReplaySelector::All => i.destinations().await?,
        };
        let mut total = 0;
        for dest in dests {
            total += i
                .run_batches(&i.scripts.replay, args![now_ms, "dest", dest])
                .await?;
        }
        i.committed(1, started);
        Ok(total)
    }

    async fn counts(&self) -> StoreResult<Vec<DestinationCounts>> {
        let i = &self.inner;
        i.usable()?;
        let all: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(i.key("counts"))
            .query_async(&mut i.conn())
            .await
            .map_err(|e| i.error(e))?;
        let count = |k: String| u64::try_from(all.get(&k).copied().unwrap_or(0)).unwrap_or(0);
        Ok(i.destinations()
            .await?
            .into_iter()
            .map(|d| DestinationCounts {
                queued: count(format!("q:{d}")),
                dead: count(format!("d:{d}")),
                destination: d,
            })
            .collect())
    }

    async fn purge(&self, now_ms: i64) -> StoreResult<(usize, usize)> {
        let i = &self.inner;
        let dests = i.destinations().await?;
        let retention = ms(i.opts.dlq_retention);
        let (mut keys, mut dead) = (0, 0);
        loop {
            let mut args = args![now_ms, retention, BATCH];
            for d in &dests {
                args.extend(args![d]);
            }
            let (k, d): (usize, usize) = i.run(&i.scripts.purge, args).await?;
            keys += k;
            dead += d;
            if k < BATCH && d < BATCH {
                break;
            }
        }
        let gone = i.forget_consumers(FORGET_AFTER).await?;
        if gone > 0 {
            tracing::info!(
                consumers = gone,
                "forgot stream consumers of relays that stopped"
            );
        }
        Ok((keys, dead))
    }

    async fn lookup(&self, id: &str) -> StoreResult<Option<DeliveryStatus>> {
        let i = &self.inner;
        i.usable()?;
        if id.is_empty() {
            return Ok(None);
        }
        let row: Vec<Vec<u8>> = redis::cmd("HGETALL")
            .arg(i.key(&format!("r:{id}")))
            .query_async(&mut i.conn())
            .await
            .map_err(|e| i.error(e))?;
        Ok(Fields::from_pairs(row).status(id))
    }

    async fn record_partner_status(
        &self,
        ids: &[String],
        status: &crate::store::PartnerStatus,
    ) -> StoreResult<usize> {
        let i = &self.inner;
        if ids.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let checked = status.checked_at.map(|t| t.to_string()).unwrap_or_default();
        let mut args = args![
            status.state.as_str(),
            status.reason.as_deref().unwrap_or(""),
            status.request_id.as_str(),
            checked
        ];
        for id in ids {
            args.extend(args![id]);
        }
        let n: usize = i.run(&i.scripts.note, args).await?;
        i.committed(1, started);
        Ok(n)
    }

    fn shared(&self) -> bool {
        true
    }

    async fn keep_check(&self, check: &crate::store::PendingCheck) -> StoreResult<()> {
        let i = &self.inner;
        i.usable()?;
        let value =
            postcard::to_allocvec(check).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        redis::cmd("HSET")
            .arg(i.key("checks"))
            .arg(check_field(&check.destination, &check.request_id))
            .arg(value)
            .query_async::<()>(&mut i.conn())
            .await
            .map_err(|e| i.error(e))
    }

    async fn forget_check(&self, destination: &str, request_id: &str) -> StoreResult<()> {
        let i = &self.inner;
        i.usable()?;
        redis::cmd("HDEL")
            .arg(i.key("checks"))
            .arg(check_field(destination, request_id))
            .query_async::<()>(&mut i.conn())
            .await
            .map_err(|e| i.error(e))
    }

    async fn pending_checks(&self) -> StoreResult<Vec<crate::store::PendingCheck>> {
        let i = &self.inner;
        i.usable()?;
        let all: Vec<Vec<u8>> = redis::cmd("HVALS")
            .arg(i.key("checks"))
            .query_async(&mut i.conn())
            .await
            .map_err(|e| i.error(e))?;
        // One that does not decode was written by something else: left alone.
        Ok(all
            .iter()
            .filter_map(|v| postcard::from_bytes(v).ok())
            .collect())
    }

    async fn retire_destination(
        &self,
        destination: &str,
        reason: &str,
        now_ms: i64,
    ) -> StoreResult<usize> {
        let i = &self.inner;
        let started = Instant::now();
        let total = i
            .run_batches(&i.scripts.retire, args![destination, reason, now_ms])
            .await?;
        i.committed(1, started);
        Ok(total)
    }

    async fn ready(&self) -> Result<(), String> {
        let i = &self.inner;
        i.usable().map_err(|e| e.to_string())?;
        // The epoch, not a PING: a Redis that came back empty is not ready; nor one
        // that went back to fewer commits than this relay saw.
        let mut conn = i.conn();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(i.key("meta")).arg("epoch").arg("commits");
        let get = cmd.query_async::<(Option<String>, Option<u64>)>(&mut conn);
        let seen = i.seen.get();
        match tokio::time::timeout(Duration::from_secs(2), get).await {
            Ok(Ok((Some(e), commits))) if e == i.epoch => {
                let commits = commits.unwrap_or(0);
                if commits < seen {
                    i.note_went_back(commits, seen);
                    return Err(mark::went_back(&i.where_(), commits, seen));
                }
                Ok(())
            }
            Ok(Ok(_)) => {
                i.note_lost();
                Err(LOST.into())
            }
            Ok(Err(e)) => Err(format!("Redis: {e}")),
            Err(_) => Err("Redis did not answer within 2 s".into()),
        }
    }

    async fn close(&self) {
        let i = &self.inner;
        if !lock(&i.unsettled).is_empty() {
            // One last try; what Redis still does not take stays claimed by this
            // consumer and goes to another relay after the claim timeout.
            let flush = tokio::time::timeout(Duration::from_secs(2), i.flush_unsettled());
            if !matches!(flush.await, Ok(Ok(_))) {
                tracing::warn!(
                    deliveries = lock(&i.unsettled).len(),
                    "closing with delivery outcomes Redis did not take; other relays send them again after the claim timeout"
                );
            }
        }
        i.closed.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = lock(&self.tasks).drain(..).collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }
}
