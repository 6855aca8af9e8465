//! One destination's delivery worker: its dispatcher task and its sends.
//!
//! Owns: the loop that waits for the breaker, a concurrency slot and a rate-limit
//! permit, claims due deliveries, sends each in its own task and settles it in the
//! store (complete / retry_later / dead_letter); idling until the next due time or a
//! `notify`; draining and releasing claims on stop. Never: shares a limiter, a
//! semaphore or a breaker with another destination, panics on a store error, or logs
//! a URL, header or body.

use crate::sync::lock;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::breaker::{Admission, Breaker, BreakerState};
use super::client::{PostbackClient, SigningKey};
use super::oauth::TokenSource;
use super::policy::{self, Decision, GiveUp};
use super::send::Sender;
use super::DeliverOptions;
use crate::outbound::{DeliverySettings, RateLimit};
use crate::store::{Delivery, Store};

/// What every worker shares.
pub(crate) struct Context {
    pub store: Arc<dyn Store>,
    pub client: PostbackClient,
    pub opts: DeliverOptions,
    /// Told about every attempt (metrics); set once, after start.
    pub observer: std::sync::OnceLock<Arc<dyn super::DeliveryObserver>>,
    /// Every task the engine spawns besides the dispatchers (retirements, shrinks of
    /// a concurrency limit): `Deliverer::shutdown` waits for them.
    pub tasks: tokio_util::task::TaskTracker,
}

/// Settings in force, with what is derived from them. Replaced whole on reload; a
/// send keeps the one it started with.
pub(crate) struct Applied {
    pub settings: DeliverySettings,
    pub signer: Result<Option<SigningKey>, String>,
    pub limiter: Option<Arc<DefaultDirectRateLimiter>>,
    /// The destination's renewing access token, kept across reloads that keep its
    /// credentials.
    pub oauth: Option<Arc<TokenSource>>,
}

impl Applied {
    fn new(settings: DeliverySettings, previous: Option<&Applied>) -> Applied {
        let signer = match &settings.sign_secret {
            None => Ok(None),
            Some(secret) => SigningKey::from_secret(secret).map(Some),
        };
        let limiter = match previous {
            // Same rate: keep the limiter and its state.
            Some(p) if p.settings.rate_limit == settings.rate_limit => p.limiter.clone(),
            _ => settings.rate_limit.and_then(limiter),
        };
        let oauth = match (&settings.oauth, previous.and_then(|p| p.oauth.as_ref())) {
            (Some(new), Some(old)) if old.settings() == new => Some(old.clone()),
            (Some(new), _) => Some(Arc::new(TokenSource::new(new.clone()))),
            (None, _) => None,
        };
        Applied {
            settings,
            signer,
            limiter,
            oauth,
        }
    }
}

/// `count` per `per`, with a burst of `count`. `None` (no limit) for a zero count or period.
fn limiter(rate: RateLimit) -> Option<Arc<DefaultDirectRateLimiter>> {
    let burst = std::num::NonZeroU32::new(rate.count)?;
    let quota = Quota::with_period(rate.per / rate.count)?.allow_burst(burst);
    Some(Arc::new(RateLimiter::direct(quota)))
}

/// One destination's state, shared by its dispatcher, its sends and the `Deliverer`.
pub(crate) struct DestinationWorker {
    pub name: String,
    applied: Mutex<Arc<Applied>>,
    slots: Arc<Semaphore>,
    capacity: Mutex<usize>,
    breaker: Mutex<Breaker>,
    wake: Notify,
    in_flight: Mutex<HashSet<String>>,
    last_error: Mutex<Option<String>>,
    /// Deliveries this worker completed since the relay started, and when the last
    /// one was (Unix ms).
    delivered: std::sync::atomic::AtomicU64,
    last_success_at: Mutex<Option<i64>>,
    /// `Some(grace)` once stopping: finish in-flight sends within `grace`.
    stop: watch::Sender<Option<Duration>>,
    /// The engine's task tracker (`Context::tasks`).
    tasks: tokio_util::task::TaskTracker,
}

impl DestinationWorker {
    /// Creates the worker and spawns its dispatcher.
    pub fn spawn(
        ctx: Arc<Context>,
        name: String,
        settings: DeliverySettings,
    ) -> (Arc<DestinationWorker>, tokio::task::JoinHandle<()>) {
        let capacity = settings.concurrency.max(1);
        let applied = Applied::new(settings, None);
        if let Err(e) = &applied.signer {
            tracing::error!(destination = %name, "{e}: its deliveries will be dead-lettered");
        }
        let (stop, stop_rx) = watch::channel(None);
        let worker = Arc::new(DestinationWorker {
            name,
            applied: Mutex::new(Arc::new(applied)),
            slots: Arc::new(Semaphore::new(capacity)),
            capacity: Mutex::new(capacity),
            breaker: Mutex::new(Breaker::new(ctx.opts.breaker)),
            wake: Notify::new(),
            in_flight: Mutex::new(HashSet::new()),
            last_error: Mutex::new(None),
            delivered: std::sync::atomic::AtomicU64::new(0),
            last_success_at: Mutex::new(None),
            stop,
            tasks: ctx.tasks.clone(),
        });
        let task = tokio::spawn(dispatch(ctx, worker.clone(), stop_rx));
        (worker, task)
    }

    /// Applies changed settings: the next sends use them; the concurrency limit grows
    /// now and shrinks as in-flight sends finish.
    pub fn apply(&self, settings: DeliverySettings) {
        {
            let mut applied = lock(&self.applied);
            if applied.settings == settings {
                return;
            }
            let next = Applied::new(settings, Some(&applied));
            if let Err(e) = &next.signer {
                tracing::error!(destination = %self.name, "{e}: its deliveries will be dead-lettered");
            }
            *applied = Arc::new(next);
        }
        let wanted = lock(&self.applied).settings.concurrency.max(1);
        let mut capacity = lock(&self.capacity);
        if wanted > *capacity {
            self.slots.add_permits(wanted - *capacity);
        } else if wanted < *capacity {
            let excess = u32::try_from(*capacity - wanted).unwrap_or(u32::MAX);
            let slots = self.slots.clone();
            // Ends when enough sends finish, or when `stop` closes the slots.
            self.tasks.spawn(async move {
                if let Ok(permits) = slots.acquire_many_owned(excess).await {
                    permits.forget();
                }
            });
        }
        *capacity = wanted;
        self.wake.notify_one();
    }

    pub fn notify(&self) {
        self.wake.notify_one();
    }

    pub fn stop(&self, grace: Duration) {
        self.stop.send_replace(Some(grace));
        // No new slots from now on; this also ends a pending shrink of the limit.
        self.slots.close();
    }

    pub fn breaker_state(&self) -> BreakerState {
        lock(&self.breaker).state(Instant::now())
    }

    /// (deliveries completed since start, when the last one was in Unix ms).
    pub fn delivered(&self) -> (u64, Option<i64>) {
        (
            self.delivered.load(std::sync::atomic::Ordering::Relaxed),
            *lock(&self.last_success_at),
        )
    }

    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    pub fn in_flight(&self) -> usize {
        lock(&self.in_flight).len()
    }

    /// The request timeout in force.
    pub fn timeout(&self) -> Duration {
        lock(&self.applied).settings.timeout
    }

    fn applied(&self) -> Arc<Applied> {
        lock(&self.applied).clone()
    }
}

/// Resolves when the worker is told to stop (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<Option<Duration>>) {
    let _ = stop.wait_for(|s| s.is_some()).await;
}

fn is_stopping(stop: &watch::Receiver<Option<Duration>>) -> bool {
    stop.borrow().is_some()
}

/// Sleeps `d`, or less if told to stop. Returns false when stopping.
async fn pause(d: Duration, stop: &mut watch::Receiver<Option<Duration>>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stopped(stop) => false,
    }
}

async fn dispatch(
    ctx: Arc<Context>,
    worker: Arc<DestinationWorker>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let mut sends = JoinSet::new();
    tracing::debug!(destination = %worker.name, "delivery worker started");
    while !is_stopping(&stop) {
        while sends.try_join_next().is_some() {}
        let (slots, probe) = match take_slots(&ctx, &worker, &mut stop).await {
            Slots::Take(slots, probe) => (slots, probe),
            Slots::Again => continue,
            Slots::Stop => break,
        };
        let claimed = match ctx
            .store
            .claim_due(&worker.name, ctx.opts.clock.now_ms(), slots.len())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                give_back_probe(&worker, probe);
                drop(slots);
                tracing::warn!(destination = %worker.name, error = %e, "cannot claim deliveries; retrying");
                pause(ctx.opts.store_retry_pause, &mut stop).await;
                continue;
            }
        };
        if claimed.is_empty() {
            give_back_probe(&worker, probe);
            drop(slots);
            idle(&ctx, &worker, &mut stop).await;
            continue;
        }
        let batch = Batch {
            claimed,
            slots,
            probe,
        };
        if !launch(&ctx, &worker, batch, &mut sends, &mut stop).await {
            break;
        }
    }

    let grace = (*stop.borrow()).unwrap_or(Duration::ZERO);
    drain(&ctx, &worker, sends, grace).await;
    tracing::debug!(destination = %worker.name, "delivery worker stopped");
}

/// What the dispatcher may do next, as the slots and the breaker say.
enum Slots {
    /// Send with these slots (one per delivery to claim); `true`: as the breaker's
    /// one probe.
    Take(Vec<OwnedSemaphorePermit>, bool),
    /// The breaker said wait, and the wait is over (or stopping began): ask again.
    Again,
    Stop,
}

/// A free slot first, so the breaker is asked with the latest outcomes in; then as
/// many more slots as are free now, up to the claim batch (one for a probe).
async fn take_slots(
    ctx: &Context,
    worker: &DestinationWorker,
    stop: &mut watch::Receiver<Option<Duration>>,
) -> Slots {
    let first = tokio::select! {
        permit = worker.slots.clone().acquire_owned() => permit,
        _ = stopped(stop) => return Slots::Stop,
    };
    let Ok(first) = first else {
        return Slots::Stop;
    };
    let admission = lock(&worker.breaker).admit(ctx.opts.clock.instant());
    let batch = match admission {
        Admission::Open => ctx.opts.claim_batch.max(1),
        Admission::Probe => 1,
        Admission::WaitUntil(until) => {
            drop(first);
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = stopped(stop) => {}
            }
            return Slots::Again;
        }
        Admission::WaitForProbe => {
            drop(first);
            tokio::select! {
                _ = worker.wake.notified() => {}
                _ = tokio::time::sleep(ctx.opts.poll_interval) => {}
                _ = stopped(stop) => {}
            }
            return Slots::Again;
        }
    };
    let mut slots = vec![first];
    while slots.len() < batch {
        match worker.slots.clone().try_acquire_owned() {
            Ok(p) => slots.push(p),
            Err(_) => break,
        }
    }
    Slots::Take(slots, admission == Admission::Probe)
}

/// A probe that sends nothing is handed back, so that the next one may go.
fn give_back_probe(worker: &DestinationWorker, probe: bool) {
    if probe {
        lock(&worker.breaker).cancel_probe();
    }
}

/// Claimed deliveries with the slots to send them in.
struct Batch {
    claimed: Vec<Delivery>,
    slots: Vec<OwnedSemaphorePermit>,
    probe: bool,
}

/// Starts one send per claimed delivery, each when the rate limit allows; returns
/// `false` when stopping began while waiting (the unsent claims are given back).
async fn launch(
    ctx: &Arc<Context>,
    worker: &Arc<DestinationWorker>,
    batch: Batch,
    sends: &mut JoinSet<()>,
    stop: &mut watch::Receiver<Option<Duration>>,
) -> bool {
    let Batch {
        claimed,
        mut slots,
        probe,
    } = batch;
    let applied = worker.applied();
    let mut claimed = claimed.into_iter();
    while let Some(delivery) = claimed.next() {
        if let Some(limiter) = &applied.limiter {
            let ready = tokio::select! {
                _ = limiter.until_ready() => true,
                _ = stopped(stop) => false,
            };
            if !ready {
                give_back_probe(worker, probe);
                let unsent: Vec<Delivery> = std::iter::once(delivery).chain(claimed).collect();
                release_all(ctx, &worker.name, unsent.iter().map(|d| d.id.as_str())).await;
                return false;
            }
        }
        let Some(slot) = slots.pop() else {
            // Cannot happen (claimed at most one per slot); be safe anyway.
            let unsent: Vec<Delivery> = std::iter::once(delivery).chain(claimed).collect();
            release_all(ctx, &worker.name, unsent.iter().map(|d| d.id.as_str())).await;
            return true;
        };
        lock(&worker.in_flight).insert(delivery.id.clone());
        sends.spawn(send_one(
            ctx.clone(),
            worker.clone(),
            applied.clone(),
            delivery,
            slot,
            probe,
        ));
    }
    true
}

/// Stopping: lets in-flight sends finish within `grace`, then gives back the claims
/// of those that did not.
async fn drain(ctx: &Context, worker: &DestinationWorker, mut sends: JoinSet<()>, grace: Duration) {
    let drained =
        tokio::time::timeout(grace, async { while sends.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        sends.abort_all();
        while sends.join_next().await.is_some() {}
        let unsettled: Vec<String> = lock(&worker.in_flight).drain().collect();
        if !unsettled.is_empty() {
            tracing::info!(destination = %worker.name, count = unsettled.len(), "releasing deliveries still in flight at shutdown");
        }
        release_all(ctx, &worker.name, unsettled.iter().map(String::as_str)).await;
    }
}

/// Nothing due: sleep until the next due time, a `notify`, or the poll interval.
async fn idle(
    ctx: &Context,
    worker: &DestinationWorker,
    stop: &mut watch::Receiver<Option<Duration>>,
) {
    let wait = match ctx.store.next_due(&worker.name).await {
        Ok(Some(at)) => {
            let ms = u64::try_from(at.saturating_sub(ctx.opts.clock.now_ms())).unwrap_or(0);
            Duration::from_millis(ms).clamp(MIN_IDLE, ctx.opts.poll_interval)
        }
        Ok(None) => ctx.opts.poll_interval,
        Err(e) => {
            tracing::warn!(destination = %worker.name, error = %e, "cannot read the next due time; retrying");
            ctx.opts.store_retry_pause
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = worker.wake.notified() => {}
        _ = stopped(stop) => {}
    }
}

/// Shortest idle wait, so a due time that is just passing does not spin the loop.
const MIN_IDLE: Duration = Duration::from_millis(2);

async fn release_all<'a>(ctx: &Context, destination: &str, ids: impl Iterator<Item = &'a str>) {
    for id in ids {
        if let Err(e) = ctx.store.release(id).await {
            tracing::warn!(destination, delivery_id = id, error = %e, "cannot release a claim; it is due again after a restart");
        }
    }
}

async fn send_one(
    ctx: Arc<Context>,
    worker: Arc<DestinationWorker>,
    applied: Arc<Applied>,
    mut delivery: Delivery,
    _slot: OwnedSemaphorePermit,
    probe: bool,
) {
    let started = ctx.opts.clock.now_ms();
    let sender = Sender {
        ctx: &ctx,
        settings: &applied.settings,
        signer: &applied.signer,
        oauth: applied.oauth.as_deref(),
    };
    let judged = sender.attempt(&delivery, started).await;
    let finished = ctx.opts.clock.now_ms();
    let decision = decide(&applied.settings, &mut delivery, &judged, started, finished);
    lock(&worker.breaker).record(judged.health, ctx.opts.clock.instant());
    if let Some(observer) = ctx.observer.get() {
        let outcome = match decision {
            Decision::Complete => super::AttemptOutcome::Delivered,
            Decision::RetryAt(_) => super::AttemptOutcome::Retry,
            Decision::DeadLetter(_) => super::AttemptOutcome::DeadLetter,
        };
        let elapsed = Duration::from_millis(u64::try_from(finished - started).unwrap_or(0));
        observer.attempt(&worker.name, outcome, elapsed);
    }
    let id = delivery.id.clone();
    apply_decision(&ctx, &worker, delivery, decision, judged.error, finished).await;
    lock(&worker.in_flight).remove(&id);
    // Wake the dispatcher: a retry may be due before its current sleep ends, and a
    // finished probe decides the breaker.
    if probe || matches!(decision, Decision::RetryAt(_)) {
        worker.wake.notify_one();
    }
}

/// Stamps the attempt on the delivery and decides what comes next.
fn decide(
    settings: &DeliverySettings,
    delivery: &mut Delivery,
    judged: &super::send::Judged,
    started: i64,
    finished: i64,
) -> Decision {
    // A delivery with no attempts is new or replayed: its give-up clock starts now.
    if delivery.attempts == 0 || delivery.first_attempt_at.is_none() {
        delivery.first_attempt_at = Some(started);
    }
    delivery.attempts = delivery.attempts.saturating_add(1);
    delivery.last_attempt_at = Some(started);
    delivery.last_status = judged.status;
    if judged.too_old {
        return Decision::DeadLetter(GiveUp::TooOld);
    }
    let at = policy::Schedule {
        attempts: delivery.attempts,
        started_ms: delivery.first_attempt_at.unwrap_or(started),
        now_ms: finished,
    };
    policy::decide_verdict(
        &settings.retry,
        judged.verdict,
        judged.retry_after,
        at,
        &mut rand::thread_rng(),
    )
}

/// Writes the decision to the store (complete, retry later, dead letter), logs it,
/// and keeps the worker's figures for `/admin/destinations`.
async fn apply_decision(
    ctx: &Context,
    worker: &DestinationWorker,
    mut delivery: Delivery,
    decision: Decision,
    error: Option<String>,
    finished: i64,
) {
    let id = delivery.id.clone();
    let attempt = delivery.attempts;
    let status = delivery.last_status;
    let name = worker.name.as_str();
    match decision {
        Decision::Complete => {
            tracing::debug!(destination = name, delivery_id = %id, ?status, attempt, "delivered");
            settle(ctx, name, &id, || ctx.store.complete(&id)).await;
            worker
                .delivered
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *lock(&worker.last_success_at) = Some(finished);
        }
        Decision::RetryAt(at) => {
            delivery.last_error = error.clone();
            delivery.next_attempt_at = at;
            tracing::info!(destination = name, delivery_id = %id, ?status, attempt, reason = error.as_deref().unwrap_or(""), retry_in_ms = at - finished, "attempt failed; will retry");
            *lock(&worker.last_error) = error;
            settle(ctx, name, &id, || ctx.store.retry_later(delivery.clone())).await;
        }
        Decision::DeadLetter(why) => {
            let error = match error {
                Some(e) => format!("{e} (gave up: {})", why.as_str()),
                None => format!("gave up: {}", why.as_str()),
            };
            delivery.last_error = Some(error.clone());
            tracing::warn!(destination = name, delivery_id = %id, ?status, attempt, reason = error.as_str(), "dead-lettered");
            *lock(&worker.last_error) = Some(error);
            settle(ctx, name, &id, || {
                ctx.store.dead_letter(delivery.clone(), finished)
            })
            .await;
        }
    }
}

/// Runs a store write, retrying a few times on error; the claim stays if all fail
/// (the delivery is due again after a restart: at least once, never lost).
async fn settle<'a, F, Fut>(ctx: &Context, destination: &str, id: &str, op: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = crate::store::StoreResult<()>> + 'a,
{
    let mut pause = ctx.opts.store_retry_pause;
    for attempt in 1..=SETTLE_TRIES {
        match op().await {
            Ok(()) => return,
            Err(e) if attempt == SETTLE_TRIES => {
                tracing::error!(destination, delivery_id = id, error = %e, "cannot record the outcome of a delivery; it stays claimed until restart");
            }
            Err(e) => {
                tracing::warn!(destination, delivery_id = id, error = %e, "cannot record the outcome of a delivery; retrying");
                tokio::time::sleep(pause).await;
                pause = pause.saturating_mul(2);
            }
        }
    }
}

const SETTLE_TRIES: u32 = 5;
