//! One destination's state: what its dispatcher (`worker`), its requests in flight
//! (`flight`) and the `Deliverer` share.
//!
//! Owns: the engine-wide `Context`, a destination's `Applied` settings (with the
//! limiter, signer and OAuth token source derived from them) and its
//! `DestinationWorker` (gate, breaker, wake-up, deliveries in flight, figures for
//! `/admin/destinations`, the stop signal). Never: runs a loop or sends a request.

use crate::sync::lock;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::adaptive::Gate;
use super::breaker::{Breaker, BreakerState};
use super::client::{PostbackClient, SigningKey};
use super::oauth::TokenSource;
use super::DeliverOptions;
use crate::outbound::{DeliverySettings, RateLimit};
use crate::store::Store;

/// What every worker shares.
pub(crate) struct Context {
    pub store: Arc<dyn Store>,
    pub client: PostbackClient,
    pub opts: DeliverOptions,
    /// Told about every attempt (metrics); set once, after start.
    pub observer: std::sync::OnceLock<Arc<dyn super::DeliveryObserver>>,
    /// Every task the engine spawns besides the dispatchers (retirements, partner
    /// status checks): `Deliverer::shutdown` waits for them.
    pub tasks: tokio_util::task::TaskTracker,
    /// Cancelled when the engine shuts down: partner status checks stop waiting.
    pub stopping: tokio_util::sync::CancellationToken,
    /// Partner status checks under way (`followup::MAX_PENDING`).
    pub followups: Arc<super::followup::Following>,
}

impl Context {
    /// What a partner status check needs of the engine.
    pub fn checker(&self) -> super::followup::Checker {
        super::followup::Checker {
            store: self.store.clone(),
            client: self.client.clone(),
            clock: self.opts.clock,
            observer: self.observer.get().cloned(),
            tasks: self.tasks.clone(),
            stopping: self.stopping.clone(),
            following: self.followups.clone(),
        }
    }
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

/// First wait of a held destination, and the longest.
const FIRST_HOLD: Duration = Duration::from_secs(30);
const MAX_HOLD: Duration = Duration::from_secs(300);

/// One destination's state, shared by its dispatcher, its sends and the `Deliverer`.
pub(crate) struct DestinationWorker {
    pub name: String,
    applied: Mutex<Arc<Applied>>,
    /// Requests in flight, at most what the adaptive controller allows.
    pub gate: Arc<Gate>,
    pub breaker: Mutex<Breaker>,
    pub wake: Notify,
    pub in_flight: Mutex<HashSet<String>>,
    pub last_error: Mutex<Option<String>>,
    /// Deliveries this worker completed since the relay started, and when the last
    /// one was (Unix ms).
    pub delivered: std::sync::atomic::AtomicU64,
    pub last_success_at: Mutex<Option<i64>>,
    /// No request before this instant: the partner asked for a pause (`Retry-After`
    /// on a 429 or 503).
    pub paused_until: Mutex<Option<Instant>>,
    /// Why the destination is held (its credentials were refused), and the wait
    /// before the next try; `None` while it is not.
    pub held: Mutex<Option<(String, Duration)>>,
    /// `Some(grace)` once stopping: finish in-flight sends within `grace`.
    stop: watch::Sender<Option<Duration>>,
}

impl DestinationWorker {
    /// A new worker, and the receiving end of its stop signal (for its dispatcher).
    pub fn new(
        ctx: &Context,
        name: String,
        settings: DeliverySettings,
    ) -> (Arc<DestinationWorker>, watch::Receiver<Option<Duration>>) {
        let gate = Gate::new(settings.concurrency.max(1));
        let applied = Applied::new(settings, None);
        if let Err(e) = &applied.signer {
            tracing::error!(destination = %name, "{e}: its deliveries will be dead-lettered");
        }
        let (stop, stop_rx) = watch::channel(None);
        let worker = Arc::new(DestinationWorker {
            name,
            applied: Mutex::new(Arc::new(applied)),
            gate,
            breaker: Mutex::new(Breaker::new(ctx.opts.breaker)),
            wake: Notify::new(),
            in_flight: Mutex::new(HashSet::new()),
            last_error: Mutex::new(None),
            delivered: std::sync::atomic::AtomicU64::new(0),
            last_success_at: Mutex::new(None),
            paused_until: Mutex::new(None),
            held: Mutex::new(None),
            stop,
        });
        (worker, stop_rx)
    }

    /// Applies changed settings: the next sends use them; a changed `concurrency` is
    /// the controller's new ceiling.
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
        let ceiling = lock(&self.applied).settings.concurrency.max(1);
        self.gate.set_ceiling(ceiling);
        self.wake.notify_one();
    }

    pub fn notify(&self) {
        self.wake.notify_one();
    }

    pub fn stop(&self, grace: Duration) {
        self.stop.send_replace(Some(grace));
        // No new places from now on.
        self.gate.close();
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

    /// The partner refused the credentials: no request for a while (30 s, doubling to
    /// 5 min while it goes on). Logs once when the hold begins.
    pub fn hold(&self, reason: &str) {
        let wait = {
            let mut held = lock(&self.held);
            let wait = match held.as_ref() {
                Some((_, w)) => (*w * 2).min(MAX_HOLD),
                None => {
                    tracing::warn!(destination = %self.name, reason, "credentials refused: the destination is held, its queue kept; tried again in 30 s, then less often, until they work");
                    FIRST_HOLD
                }
            };
            *held = Some((reason.to_string(), wait));
            wait
        };
        let until = Instant::now() + wait;
        let mut paused = lock(&self.paused_until);
        if paused.is_none_or(|at| at < until) {
            *paused = Some(until);
        }
    }

    /// A request got through: a hold ends.
    pub fn resume(&self) {
        if lock(&self.held).take().is_some() {
            tracing::info!(destination = %self.name, "credentials accepted again: the destination resumed");
        }
    }

    /// Why the destination is held, if it is.
    pub fn held(&self) -> Option<String> {
        lock(&self.held).as_ref().map(|(r, _)| r.clone())
    }

    pub fn applied(&self) -> Arc<Applied> {
        lock(&self.applied).clone()
    }
}

/// A probe that sends nothing is handed back, so that the next one may go.
pub(crate) fn give_back_probe(worker: &DestinationWorker, probe: bool) {
    if probe {
        lock(&worker.breaker).cancel_probe();
    }
}
