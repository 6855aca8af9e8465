//! One destination's delivery worker: its dispatcher task.
//!
//! Owns: the loop that waits for a pause the partner asked for (`Retry-After` on a
//! 429 or 503), the breaker, a place at the adaptive gate (`adaptive`) and a
//! rate-limit permit; claims due deliveries (one per request, or up to a batch's
//! `max_events`, waiting at most `max_wait` for company), and hands each request to
//! its own task (`flight`), which sends and settles it; idling until the next due time
//! or a `notify`; draining and releasing claims on stop. Never: shares a limiter, a
//! gate or a breaker with another destination, panics on a store error, or logs a
//! URL, header or body.

use crate::sync::lock;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::adaptive::Permit;
use super::breaker::Admission;
use super::state::{give_back_probe, Applied, Context, DestinationWorker};
use crate::outbound::{BatchSettings, DeliverySettings};
use crate::store::Delivery;

/// Creates a destination's worker and spawns its dispatcher.
pub(crate) fn spawn(
    ctx: Arc<Context>,
    name: String,
    settings: DeliverySettings,
) -> (Arc<DestinationWorker>, tokio::task::JoinHandle<()>) {
    let (worker, stop) = DestinationWorker::new(&ctx, name, settings);
    let task = tokio::spawn(dispatch(ctx, worker.clone(), stop));
    (worker, task)
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
        // Held or paused by the partner: claim nothing until the wait is over.
        if !wait_for_pause(&worker, &mut stop).await {
            break;
        }
        let applied = worker.applied();
        let batch = applied.settings.batch.clone();
        let (permits, probe) = match take_slots(&ctx, &worker, batch.is_none(), &mut stop).await {
            Slots::Take(permits, probe) => (permits, probe),
            Slots::Again => continue,
            Slots::Stop => break,
        };
        let want = batch
            .as_ref()
            .map_or(permits.len(), |b| b.max_events.max(1));
        let claimed = match ctx
            .store
            .claim_due(&worker.name, ctx.opts.clock.now_ms(), want)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                give_back_probe(&worker, probe);
                drop(permits);
                tracing::warn!(destination = %worker.name, error = %e, "cannot claim deliveries; retrying");
                pause(ctx.opts.store_retry_pause, &mut stop).await;
                continue;
            }
        };
        if claimed.is_empty() {
            give_back_probe(&worker, probe);
            drop(permits);
            idle(&ctx, &worker, &mut stop).await;
            continue;
        }
        mark_in_flight(&worker, &claimed);
        let requests = match &batch {
            Some(b) => {
                let claimed = fill_batch(&ctx, &worker, b, claimed, &mut stop).await;
                vec![claimed]
            }
            None => claimed.into_iter().map(|d| vec![d]).collect(),
        };
        let flights = Flights {
            requests,
            permits,
            probe,
            applied,
        };
        if !launch(&ctx, &worker, flights, &mut sends, &mut stop).await {
            break;
        }
    }

    let grace = (*stop.borrow()).unwrap_or(Duration::ZERO);
    drain(&ctx, &worker, sends, grace).await;
    tracing::debug!(destination = %worker.name, "delivery worker stopped");
}

fn mark_in_flight(worker: &DestinationWorker, deliveries: &[Delivery]) {
    let mut in_flight = lock(&worker.in_flight);
    for d in deliveries {
        in_flight.insert(d.id.clone());
    }
}

/// Waits out a pause the partner asked for; false when stopping.
async fn wait_for_pause(
    worker: &DestinationWorker,
    stop: &mut watch::Receiver<Option<Duration>>,
) -> bool {
    let until = *lock(&worker.paused_until);
    match until {
        Some(at) if at > Instant::now() => {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => true,
                _ = stopped(stop) => false,
            }
        }
        _ => true,
    }
}

/// Waits for the request's turn under the rate learned from the partner's 429s;
/// false when stopping.
async fn paced(worker: &DestinationWorker, stop: &mut watch::Receiver<Option<Duration>>) -> bool {
    tokio::select! {
        _ = worker.gate.pace() => true,
        _ = stopped(stop) => false,
    }
}

/// A batch that is not full waits for company: until the earliest due time of its
/// deliveries plus `max_wait`, claiming what else became due whenever new deliveries
/// are announced. Returns at once when full or stopping.
async fn fill_batch(
    ctx: &Context,
    worker: &DestinationWorker,
    batch: &BatchSettings,
    mut claimed: Vec<Delivery>,
    stop: &mut watch::Receiver<Option<Duration>>,
) -> Vec<Delivery> {
    let wait_ms = i64::try_from(batch.max_wait.as_millis()).unwrap_or(i64::MAX);
    let oldest = claimed.iter().map(|d| d.next_attempt_at).min().unwrap_or(0);
    let deadline = oldest.saturating_add(wait_ms);
    while claimed.len() < batch.max_events && !is_stopping(stop) {
        let now = ctx.opts.clock.now_ms();
        if now >= deadline {
            break;
        }
        let left = Duration::from_millis(u64::try_from(deadline - now).unwrap_or(0));
        tokio::select! {
            _ = tokio::time::sleep(left) => {}
            _ = worker.wake.notified() => {}
            _ = stopped(stop) => break,
        }
        let room = batch.max_events - claimed.len();
        match ctx
            .store
            .claim_due(&worker.name, ctx.opts.clock.now_ms(), room)
            .await
        {
            Ok(more) => {
                mark_in_flight(worker, &more);
                claimed.extend(more);
            }
            Err(_) => break,
        }
    }
    claimed
}

/// What the dispatcher may do next, as the gate and the breaker say.
enum Slots {
    /// Send with these places (one per request); `true`: as the breaker's one probe.
    Take(Vec<Permit>, bool),
    /// The breaker said wait, and the wait is over (or stopping began): ask again.
    Again,
    Stop,
}

/// A free place first, so the breaker is asked with the latest outcomes in; then
/// (`several`: one delivery per request) as many more places as are free now, up to
/// the claim batch (one for a probe).
async fn take_slots(
    ctx: &Context,
    worker: &DestinationWorker,
    several: bool,
    stop: &mut watch::Receiver<Option<Duration>>,
) -> Slots {
    let first = tokio::select! {
        permit = worker.gate.acquire() => permit,
        _ = stopped(stop) => return Slots::Stop,
    };
    let Some(first) = first else {
        return Slots::Stop;
    };
    let admission = lock(&worker.breaker).admit(ctx.opts.clock.instant());
    let most = match admission {
        Admission::Open if several => ctx.opts.claim_batch.max(1),
        Admission::Open | Admission::Probe => 1,
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
    let mut permits = vec![first];
    while permits.len() < most {
        match worker.gate.try_acquire() {
            Some(p) => permits.push(p),
            None => break,
        }
    }
    Slots::Take(permits, admission == Admission::Probe)
}

/// Claimed deliveries, grouped into requests, with the places to send them in.
struct Flights {
    requests: Vec<Vec<Delivery>>,
    permits: Vec<Permit>,
    probe: bool,
    applied: Arc<Applied>,
}

/// Starts one task per request, each when the rate limit allows; returns `false`
/// when stopping began while waiting (the unsent claims are given back).
async fn launch(
    ctx: &Arc<Context>,
    worker: &Arc<DestinationWorker>,
    flights: Flights,
    sends: &mut JoinSet<()>,
    stop: &mut watch::Receiver<Option<Duration>>,
) -> bool {
    let Flights {
        requests,
        mut permits,
        probe,
        applied,
    } = flights;
    let mut requests = requests.into_iter();
    while let Some(request) = requests.next() {
        let ready = wait_for_pause(worker, stop).await
            && paced(worker, stop).await
            && match &applied.limiter {
                Some(limiter) => tokio::select! {
                    _ = limiter.until_ready() => true,
                    _ = stopped(stop) => false,
                },
                None => !is_stopping(stop),
            };
        let permit = permits.pop();
        let Some(permit) = permit.filter(|_| ready) else {
            give_back_probe(worker, probe);
            let unsent: Vec<Delivery> =
                std::iter::once(request).chain(requests).flatten().collect();
            release_all(ctx, worker, unsent.iter().map(|d| d.id.as_str())).await;
            return ready;
        };
        sends.spawn(super::flight::fly(
            ctx.clone(),
            worker.clone(),
            applied.clone(),
            request,
            permit,
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
    }
    let unsettled: Vec<String> = lock(&worker.in_flight).drain().collect();
    if !unsettled.is_empty() {
        tracing::info!(destination = %worker.name, count = unsettled.len(), "releasing deliveries still in flight at shutdown");
    }
    release_all(ctx, worker, unsettled.iter().map(String::as_str)).await;
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

async fn release_all<'a>(
    ctx: &Context,
    worker: &DestinationWorker,
    ids: impl Iterator<Item = &'a str>,
) {
    for id in ids {
        lock(&worker.in_flight).remove(id);
        if let Err(e) = ctx.store.release(id).await {
            tracing::warn!(destination = %worker.name, delivery_id = id, error = %e, "cannot release a claim; it is due again after a restart");
        }
    }
}
