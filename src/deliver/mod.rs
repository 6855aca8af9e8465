//! Delivery: queued postbacks out to partners, at least once.
//!
//! Owns: one worker per destination (`worker`), each with its own concurrency limit,
//! rate limiter and circuit breaker (`breaker`), so a slow or failing partner never
//! delays another; the pure retry policy (`policy`); the shared HTTP client that
//! refuses non-public addresses and signs requests (`client`); the one clock every
//! time-based decision reads, passed in with the options (`clock`); the sweep that takes
//! up partner status checks kept in the store by a relay that stopped (`followup`); and
//! `testing`, a fake partner server for tests and benches. Never: renders or filters a request (the
//! rules did, before the store), logs a request URL, header or body, or keeps state
//! outside a `Deliverer`.
//!
//! Invariants:
//! - a delivery leaves the queue only when the partner answered 2xx (`complete`) or it
//!   was given up (`dead_letter`); every other path keeps or releases the claim;
//! - every attempt of a delivery carries the same `webhook-id` (its stable ID).

pub mod adaptive;
pub mod answer;
mod batch;
pub mod breaker;
pub mod client;
pub mod clock;
mod flight;
pub mod followup;
pub mod oauth;
pub mod policy;
mod send;
mod state;
mod worker;

/// The engine end to end against fake partners, on paused time.
#[cfg(test)]
mod engine_tests;

use crate::sync::lock;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;

pub use breaker::{BreakerSettings, BreakerState};
pub use client::PostbackClient;
pub use clock::Clock;

use crate::outbound::DeliverySettings;
use crate::store::Store;
use state::{Context, DestinationWorker};

/// Options of the whole delivery engine (from `[delivery]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliverOptions {
    /// Allow partner addresses that are loopback, private, link-local, etc.
    pub allow_private_networks: bool,
    pub breaker: BreakerSettings,
    /// Safety-net poll of the store when nothing is due and nobody notified.
    pub poll_interval: Duration,
    /// How long `shutdown` waits for in-flight sends before releasing their claims.
    pub shutdown_grace: Duration,
    /// Pause after a store error before trying again.
    pub store_retry_pause: Duration,
    /// Most deliveries claimed at once per destination (also bounded by free slots).
    pub claim_batch: usize,
    /// The one clock every delivery decision reads (see `clock`).
    pub clock: Clock,
}

impl Default for DeliverOptions {
    fn default() -> Self {
        DeliverOptions {
            allow_private_networks: false,
            breaker: BreakerSettings::default(),
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            store_retry_pause: Duration::from_millis(200),
            claim_batch: 256,
            clock: Clock::system(),
        }
    }
}

/// One destination as `GET /admin/destinations` shows it (queue depth and DLQ size
/// come from `Store::counts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestinationStatus {
    pub name: String,
    pub breaker: BreakerState,
    pub last_error: Option<String>,
    /// Deliveries in flight (a batch counts each of its deliveries).
    pub in_flight: usize,
    /// Requests in flight, and the most the adaptive controller allows now.
    pub requests_in_flight: usize,
    pub concurrency_limit: usize,
    /// Why the destination is held (its credentials were refused), if it is: no
    /// request goes until they work again; its queue is kept.
    pub held: Option<String>,
    /// Completed since the relay started.
    pub delivered: u64,
    /// When the last delivery succeeded, Unix ms.
    pub last_success_at: Option<i64>,
}

/// How one attempt ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    /// Failed; will be retried.
    Retry,
    DeadLetter,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::DeadLetter => "dead_letter",
        }
    }
}

/// The last word a partner gave on a delivered request it processes later
/// (`followup`), for metrics. Ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PartnerStatusResult {
    Success,
    /// Some of its events failed.
    PartialSuccess,
    Failure,
    /// No final status after the last check.
    Unknown,
}

impl PartnerStatusResult {
    pub fn as_str(self) -> &'static str {
        match self {
            PartnerStatusResult::Success => "success",
            PartnerStatusResult::PartialSuccess => "partial_success",
            PartnerStatusResult::Failure => "failure",
            PartnerStatusResult::Unknown => "unknown",
        }
    }
}

/// Told about every delivery attempt (the relay's metrics implement it).
pub trait DeliveryObserver: Send + Sync {
    /// One delivery's attempt ended (a batch reports each of its deliveries).
    fn attempt(&self, destination: &str, outcome: AttemptOutcome, elapsed: Duration);
    /// One request went to the partner carrying `events` deliveries.
    fn request(&self, _destination: &str, _events: usize, _elapsed: Duration) {}
    /// A partner that processes later gave its last word on a delivered request.
    fn partner_status(&self, _destination: &str, _result: PartnerStatusResult) {}
}

/// Why the engine could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverError {
    /// The HTTP client could not be built (TLS backend).
    Client(String),
}

impl std::fmt::Display for DeliverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliverError::Client(e) => write!(f, "the HTTP client: {e}"),
        }
    }
}

impl std::error::Error for DeliverError {}

struct Running {
    worker: Arc<DestinationWorker>,
    task: JoinHandle<()>,
}

struct Inner {
    ctx: Arc<Context>,
    /// The runtime the workers run on: `update_destinations` may be called from a
    /// plain thread (the rules file watcher) and still spawns workers there.
    runtime: tokio::runtime::Handle,
    destinations: Mutex<BTreeMap<String, Running>>,
    /// Dispatchers of removed destinations, finishing their in-flight sends.
    retiring: Mutex<Vec<JoinHandle<()>>>,
}

/// The delivery engine. Cheap to clone: ingest keeps one to `notify`, admin one for
/// `status`, the app one to `shutdown`.
#[derive(Clone)]
pub struct Deliverer {
    inner: Arc<Inner>,
}

impl Deliverer {
    /// Starts one worker per destination. Must be called inside a tokio runtime.
    pub fn start(
        store: Arc<dyn Store>,
        destinations: Vec<(String, DeliverySettings)>,
        opts: DeliverOptions,
    ) -> Result<Deliverer, DeliverError> {
        let client =
            PostbackClient::new(opts.allow_private_networks).map_err(DeliverError::Client)?;
        let deliverer = Deliverer {
            inner: Arc::new(Inner {
                ctx: Arc::new(Context {
                    store,
                    client,
                    opts,
                    observer: std::sync::OnceLock::new(),
                    tasks: tokio_util::task::TaskTracker::new(),
                    stopping: tokio_util::sync::CancellationToken::new(),
                    followups: Arc::default(),
                }),
                runtime: tokio::runtime::Handle::current(),
                destinations: Mutex::new(BTreeMap::new()),
                retiring: Mutex::new(Vec::new()),
            }),
        };
        deliverer.update_destinations(destinations);
        let inner = Arc::downgrade(&deliverer.inner);
        deliverer.spawn(sweep_checks(inner));
        Ok(deliverer)
    }

    /// Runs `task` on the relay's runtime; callable from any thread (the rules
    /// watcher's included). `shutdown` waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.ctx.tasks.spawn_on(task, &self.inner.runtime);
    }

    /// Applies a rules reload: starts new destinations, applies changed settings,
    /// stops removed ones once their in-flight sends finish (their queued deliveries
    /// stay in the store). Callable from any thread, inside a runtime or not.
    pub fn update_destinations(&self, destinations: Vec<(String, DeliverySettings)>) {
        let _runtime = self.inner.runtime.enter();
        let wanted: HashMap<String, DeliverySettings> = destinations.into_iter().collect();
        let mut running = lock(&self.inner.destinations);
        let removed: Vec<String> = running
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .cloned()
            .collect();
        let mut retiring = lock(&self.inner.retiring);
        retiring.retain(|t| !t.is_finished());
        for name in removed {
            if let Some(r) = running.remove(&name) {
                r.worker.stop(r.worker.timeout() + Duration::from_secs(1));
                retiring.push(r.task);
                tracing::info!(destination = %name, "destination removed; its worker stops after in-flight sends");
            }
        }
        for (name, settings) in wanted {
            match running.get(&name) {
                Some(r) => r.worker.apply(settings),
                None => {
                    let (worker, task) =
                        worker::spawn(self.inner.ctx.clone(), name.clone(), settings);
                    running.insert(name, Running { worker, task });
                }
            }
        }
    }

    /// The clock delivery decides by (the relay stamps accepts with it too).
    pub fn clock(&self) -> Clock {
        self.inner.ctx.opts.clock
    }

    /// Reports every attempt to `observer` from now on (once; later calls are ignored).
    pub fn observe(&self, observer: Arc<dyn DeliveryObserver>) {
        let _ = self.inner.ctx.observer.set(observer);
    }

    /// New deliveries for `destination` were accepted: send them now, not at the next
    /// poll. Unknown names are ignored.
    pub fn notify(&self, destination: &str) {
        if let Some(r) = lock(&self.inner.destinations).get(destination) {
            r.worker.notify();
        }
    }

    /// Every destination's breaker, last error and sends in flight, by name.
    pub fn status(&self) -> Vec<DestinationStatus> {
        lock(&self.inner.destinations)
            .iter()
            .map(|(name, r)| DestinationStatus {
                name: name.clone(),
                breaker: r.worker.breaker_state(),
                last_error: r.worker.last_error(),
                in_flight: r.worker.in_flight(),
                requests_in_flight: r.worker.gate.in_flight(),
                concurrency_limit: r.worker.gate.limit(),
                held: r.worker.held(),
                delivered: r.worker.delivered().0,
                last_success_at: r.worker.delivered().1,
            })
            .collect()
    }

    /// How late the most overdue queued delivery of each destination in `names` is,
    /// in seconds (0 when nothing is overdue): a destination that cannot keep up
    /// shows it here before its queue is deep.
    pub async fn backlog_ages(&self, names: &[String]) -> Vec<(String, f64)> {
        let now = self.inner.ctx.opts.clock.now_ms();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Ok(due) = self.inner.ctx.store.next_due(name).await {
                let late = due.map_or(0, |at| now.saturating_sub(at).max(0));
                out.push((name.clone(), late as f64 / 1000.0));
            }
        }
        out
    }

    /// Stops claiming, waits up to `shutdown_grace` for in-flight sends, and releases
    /// the claims of sends that did not finish. Stops every clone.
    pub async fn shutdown(self) {
        let grace = self.inner.ctx.opts.shutdown_grace;
        // Partner status checks still waiting end now (their receipts say
        // `processing`, with the partner's request ID).
        self.inner.ctx.stopping.cancel();
        let running: Vec<Running> = std::mem::take(&mut *lock(&self.inner.destinations))
            .into_values()
            .collect();
        for r in &running {
            r.worker.stop(grace);
        }
        let retiring: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.inner.retiring));
        for task in running.into_iter().map(|r| r.task).chain(retiring) {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a delivery worker ended abnormally");
            }
        }
        let tasks = &self.inner.ctx.tasks;
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!(
                tasks = tasks.len(),
                "delivery tasks still running after the grace period"
            );
        }
    }
}

/// How often the partner status checks kept in the store are looked over, and how
/// overdue one must be before this relay takes it up: a relay making a check keeps
/// it again before each wait, once its check is answered (within the destination's
/// timeout, twice with a token renewal), so one overdue that long has nobody making
/// it (another relay on a shared store that is gone). A store of this process alone
/// (embedded) holds no check of a live relay at start: all are taken up then, each
/// at its time.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
const TAKE_UP_LATE: Duration = Duration::from_secs(300);

/// Takes up kept checks nobody makes, at start and every `SWEEP_EVERY`, until the
/// engine stops.
async fn sweep_checks(inner: std::sync::Weak<Inner>) {
    let mut first = true;
    loop {
        let Some(i) = inner.upgrade() else { return };
        let stopping = i.ctx.stopping.clone();
        take_up_checks(&i, first && !i.ctx.store.shared()).await;
        first = false;
        drop(i);
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}

/// `all`: every check not made here, due or not (a store of this process alone,
/// at start); otherwise those overdue by `TAKE_UP_LATE`.
async fn take_up_checks(inner: &Inner, all: bool) {
    let ctx = &inner.ctx;
    let kept = match ctx.store.pending_checks().await {
        Ok(k) => k,
        Err(e) => {
            tracing::debug!(error = %e, "cannot list the partner status checks kept");
            return;
        }
    };
    let now = ctx.opts.clock.now_ms();
    let late = i64::try_from(TAKE_UP_LATE.as_millis()).unwrap_or(i64::MAX);
    let checker = ctx.checker();
    for k in kept {
        let orphan = all || k.due_at <= now.saturating_sub(late);
        if !orphan || checker.is_following(&k.destination, &k.request_id) {
            continue;
        }
        let applied = lock(&inner.destinations)
            .get(&k.destination)
            .map(|r| r.worker.applied());
        let Some(applied) = applied else {
            checker.give_up(&k, "its destination was removed").await;
            continue;
        };
        let Some(check) = applied.settings.status_check else {
            checker
                .give_up(&k, "its destination no longer reads statuses back")
                .await;
            continue;
        };
        let url = match applied.settings.credentials.attach_url(&k.url) {
            Ok(u) => u,
            Err(e) => {
                checker.give_up(&k, &e).await;
                continue;
            }
        };
        let destination = k.destination.clone();
        let f = followup::FollowUp::resumed(
            k,
            url,
            check,
            applied.oauth.clone(),
            applied.settings.timeout,
            now,
        );
        if checker.resume(f) {
            tracing::info!(destination = %destination, "took up a partner status check that a stopped relay had kept");
        }
    }
}
