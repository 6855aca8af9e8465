//! One request in flight: claimed deliveries sent and settled.
//!
//! Owns: the age check of each claimed delivery; grouping a batch into requests
//! (`batch`); sending each; and what follows from the answer, delivery by delivery:
//! complete, retry later, or dead letter. A batch the partner refuses whole (Meta
//! answers one error for one bad event) is bisected: the left half is sent alone;
//! if it is taken, the fault is in the right half; if not, the right half waits in a
//! pool (sent as one request at the end) and the search goes on in the left half.
//! One bad event in `n` costs `ceil(log2 n) + 1` extra requests and only it is
//! dead-lettered, with the partner's reason. A transient failure settles the whole
//! request as a retry (usual backoff, `Retry-After` as a floor). Every request feeds
//! the breaker and the adaptive gate; a 429 or 503 with `Retry-After` pauses the
//! destination. Each delivery's attempts count once per dispatch, however many
//! requests a bisection took. Never: logs a URL, header or body.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::adaptive::{Permit, Signal};
use super::policy::{self, Decision, GiveUp, Health, Verdict};
use super::send::{Judged, Judgement, Sender};
use super::state::{give_back_probe, Applied, Context, DestinationWorker};
use crate::outbound::OutboundRequest;
use crate::store::Delivery;
use crate::sync::lock;

/// Sends `deliveries` (one request's worth, or a single delivery) and settles them.
pub(crate) async fn fly(
    ctx: Arc<Context>,
    worker: Arc<DestinationWorker>,
    applied: Arc<Applied>,
    deliveries: Vec<Delivery>,
    permit: Permit,
    probe: bool,
) {
    let flight = Flight {
        ctx: &ctx,
        worker: &worker,
        applied: &applied,
        started: ctx.opts.clock.now_ms(),
        sent_any: std::sync::atomic::AtomicBool::new(false),
        retried: std::sync::atomic::AtomicBool::new(false),
    };
    let mut fresh = Vec::with_capacity(deliveries.len());
    let mut old = Vec::new();
    for d in deliveries {
        match flight
            .sender()
            .too_old(d.request.event_time_ms, flight.started)
        {
            Some(judged) => old.push((d, judged)),
            None => fresh.push(d),
        }
    }
    flight.settle_each(old).await;
    match &applied.settings.batch {
        Some(b) if fresh.len() > 1 => {
            // Grouped as they will be sent: with credentials attached (a stored body
            // holds markers, which are no JSON); one that cannot be attached goes alone
            // and fails there with the reason.
            let groups = {
                let attached: Vec<OutboundRequest> = fresh
                    .iter()
                    .map(|d| {
                        flight
                            .attach(&d.request)
                            .unwrap_or_else(|_| d.request.clone())
                    })
                    .collect();
                let requests: Vec<&OutboundRequest> = attached.iter().collect();
                super::batch::group(&requests, &b.path)
            };
            let mut slots: Vec<Option<Delivery>> = fresh.into_iter().map(Some).collect();
            for g in groups {
                let members: Vec<Delivery> =
                    g.members.iter().filter_map(|&i| slots[i].take()).collect();
                flight.deliver(members).await;
            }
        }
        _ => {
            for d in fresh {
                flight.deliver(vec![d]).await;
            }
        }
    }
    drop(permit);
    let sent_any = flight.sent_any.load(std::sync::atomic::Ordering::Relaxed);
    if !sent_any {
        give_back_probe(&worker, probe);
    }
    // Wake the dispatcher: a retry may be due before its current sleep ends, and a
    // finished probe decides the breaker.
    if probe || flight.retried.load(std::sync::atomic::Ordering::Relaxed) {
        worker.wake.notify_one();
    }
}

struct Flight<'a> {
    ctx: &'a Context,
    worker: &'a DestinationWorker,
    applied: &'a Applied,
    started: i64,
    sent_any: std::sync::atomic::AtomicBool,
    retried: std::sync::atomic::AtomicBool,
}

/// How a set of deliveries came out of one request.
enum Came {
    /// Taken (all, or judged and settled event by event).
    Taken,
    /// A transient failure: settled as retries.
    Retried(Judged),
    /// The credentials were refused: the deliveries were given back as they were and
    /// the destination is held.
    Held,
    /// Refused whole, nothing settled: no event of it was taken; why.
    Refused(Judged, Vec<Delivery>),
}

/// Events isolated by bisection in one flight after which a set refused whole again is
/// retried later instead of bisected (a refusal that is about the request, like a
/// revoked token, would otherwise cost a bisection per event).
const MAX_ISOLATED: usize = 8;

/// Longest destination-wide pause a `Retry-After` can ask for.
const MAX_PAUSE: Duration = Duration::from_secs(300);

impl Flight<'_> {
    /// A stored request with the destination's current credentials in place of its
    /// markers.
    fn attach(&self, stored: &OutboundRequest) -> Result<OutboundRequest, String> {
        self.applied.settings.credentials.attach(stored)
    }

    fn sender(&self) -> Sender<'_> {
        Sender {
            client: &self.ctx.client,
            settings: &self.applied.settings,
            signer: &self.applied.signer,
            oauth: self.applied.oauth.as_deref(),
        }
    }

    /// Sends `set` as one request; a refusal of several is bisected, and what the
    /// bisection leaves untested goes again as one request.
    async fn deliver(&self, set: Vec<Delivery>) {
        let mut todo = vec![set];
        let mut isolated = 0;
        while let Some(set) = todo.pop() {
            if set.is_empty() {
                continue;
            }
            let (why, set) = match self.request(set).await {
                Came::Taken | Came::Retried(_) => continue,
                Came::Held => {
                    for rest in todo.drain(..) {
                        self.give_back(rest).await;
                    }
                    return;
                }
                Came::Refused(why, set) => (why, set),
            };
            if set.len() == 1 {
                self.settle_all(set, &why).await;
                continue;
            }
            if isolated >= MAX_ISOLATED {
                let why = Judged {
                    verdict: Verdict::Retry,
                    error: Some(format!(
                        "{} (refused whole again after {isolated} events were isolated; retried later)",
                        why.error.as_deref().unwrap_or("refused")
                    )),
                    ..why
                };
                self.settle_all(set, &why).await;
                continue;
            }
            isolated += 1;
            todo.push(self.bisect(set, why).await);
        }
    }

    /// `failing` was refused whole; finds the event at fault by halving and
    /// dead-letters it. Returns the deliveries left untested (right halves set aside
    /// while the fault was on the left), to be sent again together.
    async fn bisect(&self, mut failing: Vec<Delivery>, mut why: Judged) -> Vec<Delivery> {
        let mut pool = Vec::new();
        while failing.len() > 1 {
            let right = failing.split_off(failing.len() / 2);
            match self.request(failing).await {
                Came::Taken => failing = right,
                Came::Retried(j) => {
                    self.settle_all(right, &j).await;
                    self.settle_all(pool, &j).await;
                    return Vec::new();
                }
                Came::Held => {
                    self.give_back(right).await;
                    self.give_back(pool).await;
                    return Vec::new();
                }
                Came::Refused(j, left) => {
                    pool.extend(right);
                    failing = left;
                    why = j;
                }
            }
        }
        self.settle_all(failing, &why).await;
        pool
    }

    /// One request carrying `set`: sent, judged, and settled unless refused whole.
    async fn request(&self, set: Vec<Delivery>) -> Came {
        let events = set.len();
        let joined;
        let (id, stored, attached) = match (set.as_slice(), &self.applied.settings.batch) {
            ([one], _) => (one.id.clone(), &one.request, false),
            ([first, ..], Some(b)) => {
                let attached: Result<Vec<OutboundRequest>, String> =
                    set.iter().map(|d| self.attach(&d.request)).collect();
                let Ok(attached) = attached else {
                    return Came::Refused(unjoinable(), set);
                };
                let requests: Vec<&OutboundRequest> = attached.iter().collect();
                let Some(r) = super::batch::assemble(&requests, &b.path) else {
                    return Came::Refused(unjoinable(), set);
                };
                joined = r;
                (format!("{}.{events}", first.id), &joined, true)
            }
            _ => return Came::Refused(unjoinable(), set),
        };
        self.sent_any
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let t0 = Instant::now();
        let (judgement, pause) = self.sender().attempt(&id, stored, events, attached).await;
        self.observe(&judgement, t0.elapsed(), events, pause);
        if let Judgement::Whole(j) = &judgement {
            if j.held {
                self.worker
                    .hold(j.error.as_deref().unwrap_or("credentials refused"));
                self.give_back(set).await;
                return Came::Held;
            }
        }
        self.worker.resume();
        match judgement {
            Judgement::PerEvent(rows) if rows.len() == events => {
                self.settle_each(set.into_iter().zip(rows).collect()).await;
                Came::Taken
            }
            Judgement::PerEvent(_) => Came::Refused(unjoinable(), set),
            Judgement::Whole(j) => match j.verdict {
                Verdict::Delivered => {
                    let follow_up = self.follow_up(&j, &set, stored, attached);
                    self.settle_all(set, &j).await;
                    if let Some(f) = follow_up {
                        self.ctx.checker().start(f);
                    }
                    Came::Taken
                }
                Verdict::Retry => {
                    self.settle_all(set, &j).await;
                    Came::Retried(j)
                }
                Verdict::Reject => Came::Refused(j, set),
            },
        }
    }

    /// A delivered request of a partner that processes later: what it takes to read
    /// its status back (`followup`), at the status URL next to the URL it was sent to.
    fn follow_up(
        &self,
        j: &Judged,
        set: &[Delivery],
        stored: &OutboundRequest,
        attached: bool,
    ) -> Option<super::followup::FollowUp> {
        let settings = &self.applied.settings;
        let request_id = j.partner_request.as_ref()?;
        let check = settings.status_check?;
        let sent_to = if attached {
            stored.url.clone()
        } else {
            self.attach(stored).ok()?.url
        };
        // What the store keeps: the URL with its credential markers (a joined batch
        // was built from attached requests; its first event's stored one has them).
        let marked = set.first().map_or(&stored.url, |d| &d.request.url);
        let (Some(url), Some(stored_url)) = (
            super::followup::status_url(&sent_to, request_id),
            super::followup::status_url(marked, request_id),
        ) else {
            tracing::debug!(destination = %self.worker.name, "the destination's URL does not end in events:ingest: its partner status is not read back");
            return None;
        };
        Some(super::followup::FollowUp {
            destination: self.worker.name.clone(),
            ids: set.iter().map(|d| d.id.clone()).collect(),
            request_id: request_id.clone(),
            url,
            stored_url,
            check,
            oauth: self.applied.oauth.clone(),
            timeout: settings.timeout,
            tries: 0,
            wait: check.first_after,
        })
    }

    /// One request's answer for the breaker, the gate, a pause and the metrics.
    fn observe(&self, j: &Judgement, rtt: Duration, events: usize, pause: Option<Duration>) {
        let (health, retry, status) = match j {
            Judgement::Whole(j) => (j.health, j.verdict == Verdict::Retry, j.status),
            Judgement::PerEvent(rows) => (
                rows.first().map_or(Health::Unknown, |r| r.health),
                false,
                rows.first().and_then(|r| r.status),
            ),
        };
        let now = self.ctx.opts.clock.instant();
        // A 429 is a partner pacing us, not a partner down: the learned rate and the
        // Retry-After pause answer it, the breaker does not open on it.
        let breaker_health = if status == Some(429) {
            Health::Up
        } else {
            health
        };
        lock(&self.worker.breaker).record(breaker_health, now);
        let signal = match health {
            _ if status == Some(429) => Signal::RateLimited,
            Health::Down => Signal::Congested,
            Health::Up if retry => Signal::Congested,
            Health::Up => Signal::Fine,
            Health::Unknown => Signal::Nothing,
        };
        self.worker.gate.record(rtt, signal);
        if let Some(p) = pause.filter(|p| !p.is_zero()) {
            let until = Instant::now() + p.min(MAX_PAUSE);
            let mut paused = lock(&self.worker.paused_until);
            if paused.is_none_or(|at| at < until) {
                *paused = Some(until);
            }
        }
        if let Some(observer) = self.ctx.observer.get() {
            observer.request(&self.worker.name, events, rtt);
        }
    }

    /// Gives claims back untouched (due as they were, attempts unchanged).
    async fn give_back(&self, set: Vec<Delivery>) {
        for d in set {
            if let Err(e) = self.ctx.store.release(&d.id).await {
                tracing::warn!(destination = %self.worker.name, delivery_id = %d.id, error = %e, "cannot release a claim; it is due again after a restart");
            }
            lock(&self.worker.in_flight).remove(&d.id);
        }
    }

    async fn settle_all(&self, set: Vec<Delivery>, judged: &Judged) {
        self.settle_each(set.into_iter().map(|d| (d, judged.clone())).collect())
            .await;
    }

    /// Settles each delivery by its own judgement, together (one group commit). The
    /// retry delays of one request are drawn from one seed, so deliveries retried
    /// together stay together (and go again as one batch).
    async fn settle_each(&self, judged: Vec<(Delivery, Judged)>) {
        let finished = self.ctx.opts.clock.now_ms();
        let seed: u64 = rand::random();
        let settles = judged
            .into_iter()
            .map(|(d, j)| self.settle_one(d, j, finished, seed));
        futures_util::future::join_all(settles).await;
    }

    async fn settle_one(&self, mut delivery: Delivery, judged: Judged, finished: i64, seed: u64) {
        let decision = decide(
            &self.applied.settings,
            &mut delivery,
            &judged,
            (self.started, finished),
            seed,
        );
        if let Some(observer) = self.ctx.observer.get() {
            let outcome = match decision {
                Decision::Complete => super::AttemptOutcome::Delivered,
                Decision::RetryAt(_) => super::AttemptOutcome::Retry,
                Decision::DeadLetter(_) => super::AttemptOutcome::DeadLetter,
            };
            let elapsed =
                Duration::from_millis(u64::try_from(finished - self.started).unwrap_or(0));
            observer.attempt(&self.worker.name, outcome, elapsed);
        }
        if matches!(decision, Decision::RetryAt(_)) {
            self.retried
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let id = delivery.id.clone();
        apply_decision(
            self.ctx,
            self.worker,
            delivery,
            decision,
            judged.error,
            finished,
        )
        .await;
        lock(&self.worker.in_flight).remove(&id);
    }
}

/// The verdict for a request that cannot be joined (its bodies do not split at the
/// batch path): each of its deliveries is sent alone instead.
fn unjoinable() -> Judged {
    Judged {
        verdict: Verdict::Reject,
        retry_after: None,
        error: Some("the batch could not be joined".into()),
        status: None,
        health: Health::Unknown,
        too_old: false,
        held: false,
        partner_request: None,
    }
}

/// Stamps the attempt on the delivery and decides what comes next.
fn decide(
    settings: &crate::outbound::DeliverySettings,
    delivery: &mut Delivery,
    judged: &Judged,
    (started, finished): (i64, i64),
    seed: u64,
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
        &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed),
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
    // Logged only when there is one (no `Some(400)` / `None` in the log).
    let status = delivery.last_status.map(u64::from);
    let name = worker.name.as_str();
    match decision {
        Decision::Complete => {
            tracing::debug!(destination = name, delivery_id = %id, status, attempt, "delivered");
            settle(ctx, name, &id, || ctx.store.complete(&id)).await;
            worker
                .delivered
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *lock(&worker.last_success_at) = Some(finished);
        }
        Decision::RetryAt(at) => {
            delivery.last_error = error.clone();
            delivery.next_attempt_at = at;
            tracing::info!(destination = name, delivery_id = %id, status, attempt, reason = error.as_deref().unwrap_or(""), retry_in_ms = at - finished, "attempt failed; will retry");
            *lock(&worker.last_error) = error;
            settle(ctx, name, &id, || ctx.store.retry_later(delivery.clone())).await;
        }
        Decision::DeadLetter(why) => {
            let error = match error {
                Some(e) => format!("{e} (gave up: {})", why.as_str()),
                None => format!("gave up: {}", why.as_str()),
            };
            delivery.last_error = Some(error.clone());
            tracing::warn!(destination = name, delivery_id = %id, status, attempt, reason = error.as_str(), "dead-lettered");
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
