//! The delivery engine end to end: a test-double store, real fake partners over HTTP.
//!
//! Most tests run on paused tokio time (`start_paused`): the engine reads its one
//! `Clock`, which advances with tokio's clock, so waits for backoffs, cool-downs and
//! polls are skipped instead of slept. Only the rate-limit test runs in real time (the
//! limiter keeps its own clock).

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::fake_partner::{FakePartner, Reply};
use crate::outbound::{RateLimit, RetrySettings};
use crate::store::memory::{delivery, MemStore};

fn settings() -> DeliverySettings {
    DeliverySettings {
        rate_limit: None,
        timeout: Duration::from_secs(2),
        retry: RetrySettings {
            max_attempts: 10,
            give_up_after: Duration::from_secs(3600),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
        },
        concurrency: 4,
        sign_secret: None,
        ..DeliverySettings::default()
    }
}

/// Options for a test; call inside the test's runtime, so the clock is on its time.
fn opts() -> DeliverOptions {
    DeliverOptions {
        clock: Clock::system(),
        allow_private_networks: true,
        poll_interval: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(1),
        store_retry_pause: Duration::from_millis(20),
        ..DeliverOptions::default()
    }
}

/// Polls `cond` every 10 ms for up to `within`.
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        // Pacing: the poll interval of this condition wait (deadline `within`).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

fn start(
    store: &Arc<MemStore>,
    destinations: Vec<(&str, DeliverySettings)>,
    opts: DeliverOptions,
) -> Deliverer {
    let store: Arc<dyn Store> = store.clone();
    Deliverer::start(
        store,
        destinations
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect(),
        opts,
    )
    .unwrap()
}

fn completed_of(store: &MemStore, destination: &str) -> usize {
    store
        .completed
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d.destination == destination)
        .count()
}

#[tokio::test(start_paused = true)]
async fn three_503s_then_200_is_delivered_once_with_the_same_webhook_id_on_every_attempt() {
    let partner = FakePartner::start().await.unwrap();
    partner.enqueue([Reply::status(503), Reply::status(503), Reply::status(503)]);
    let store = Arc::new(MemStore::default());
    store.push(delivery("dlv_1", "aff", &partner.url("/pb")));
    let deliverer = start(&store, vec![("aff", settings())], opts());

    assert!(
        eventually(Duration::from_secs(5), || store.completed_ids()
            == ["dlv_1"])
        .await
    );
    // Nothing more arrives after the success, however long we wait (paused time: an
    // hour of polls passes at once).
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let requests = partner.requests();
    assert_eq!(requests.len(), 4);
    for r in &requests {
        assert_eq!(r.header("webhook-id"), Some("dlv_1"));
        assert_eq!(&r.body[..], br#"{"delivery":"dlv_1"}"#);
    }
    assert!(store.dead().is_empty());
    assert!(store.queued().is_empty());
    let status = deliverer.status();
    assert_eq!(status[0].breaker, BreakerState::Closed);
    assert_eq!(
        status[0].last_error.as_deref(),
        Some("HTTP 503 Service Unavailable")
    );
    deliverer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_400_goes_to_the_dead_letters_at_once_with_its_status_and_not_its_body() {
    let partner = FakePartner::start().await.unwrap();
    let body = format!(
        "{{\"error\":\"bad click id\"}}{}",
        " ".repeat(10) + &"y".repeat(20_000)
    );
    partner.set_default(Reply::status(400).body(body));
    let store = Arc::new(MemStore::default());
    store.push(delivery("dlv_1", "aff", &partner.url("/pb")));
    let deliverer = start(&store, vec![("aff", settings())], opts());

    assert!(eventually(Duration::from_secs(5), || store.dead().len() == 1).await);
    let dead = store.dead()[0].delivery.clone();
    assert_eq!(dead.attempts, 1);
    assert_eq!(dead.last_status, Some(400));
    let error = dead.last_error.unwrap();
    assert!(error.starts_with("HTTP 400 Bad Request"), "{error}");
    assert!(!error.contains("bad click id"), "{error}");
    assert!(error.ends_with("(gave up: rejected)"), "{error}");
    assert!(error.len() < 2 * client::ERROR_MAX, "{}", error.len());
    assert!(dead.first_attempt_at.is_some() && dead.last_attempt_at.is_some());
    assert_eq!(partner.request_count(), 1);
    // A rejection is not an outage.
    assert_eq!(deliverer.status()[0].breaker, BreakerState::Closed);
    deliverer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_max_attempts() {
    let partner = FakePartner::start().await.unwrap();
    partner.set_default(Reply::status(500));
    let store = Arc::new(MemStore::default());
    store.push(delivery("dlv_1", "aff", &partner.url("/pb")));
    let mut s = settings();
    s.retry.max_attempts = 3;
    let deliverer = start(&store, vec![("aff", s)], opts());

    assert!(eventually(Duration::from_secs(5), || store.dead().len() == 1).await);
    let dead = store.dead()[0].delivery.clone();
    assert_eq!((dead.attempts, dead.last_status), (3, Some(500)));
    assert!(dead.last_error.unwrap().contains("max_attempts"));
    assert_eq!(partner.request_count(), 3);
    deliverer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_as_a_floor() {
    let partner = FakePartner::start().await.unwrap();
    partner.enqueue([Reply::status(429).header("Retry-After", "1")]);
    let store = Arc::new(MemStore::default());
    store.push(delivery("dlv_1", "aff", &partner.url("/pb")));
    let deliverer = start(&store, vec![("aff", settings())], opts());

    // Backoff here is 10-40 ms; the partner asked for a second: the retry is due no
    // sooner, on the engine's clock, and is not sent before it is due.
    let clock = deliverer.clock();
    assert!(
        eventually(Duration::from_secs(5), || !store.queued().is_empty()
            && store.queued()[0].attempts == 1)
        .await
    );
    let waiting = store.queued()[0].clone();
    let tried_at = waiting.last_attempt_at.unwrap();
    assert!(
        waiting.next_attempt_at >= tried_at + 1000,
        "due {} ms after the attempt",
        waiting.next_attempt_at - tried_at
    );
    assert!(eventually(Duration::from_secs(5), || store.completed_ids().len() == 1).await);
    assert!(clock.now_ms() >= waiting.next_attempt_at);
    assert_eq!(partner.request_count(), 2);
    deliverer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn give_up_after_is_measured_on_the_engines_clock_over_simulated_hours() {
    // Six hours of 503s with backoff from 1 s to 30 min pass in milliseconds of real
    // time: the engine's clock is tokio's (paused) clock, not the wall clock.
    let partner = FakePartner::start().await.unwrap();
    partner.set_default(Reply::status(503));
    let store = Arc::new(MemStore::default());
    store.push(delivery("dlv_1", "aff", &partner.url("/pb")));
    let mut s = settings();
    s.retry = RetrySettings {
        max_attempts: 1000,
        give_up_after: Duration::from_secs(6 * 3600),
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(1800),
    };
    let mut options = opts();
    options.breaker.failure_threshold = 1_000_000; // the retry schedule alone
    options.poll_interval = Duration::from_secs(60);
    let deliverer = start(&store, vec![("aff", s)], options);
    let clock = deliverer.clock();
    let started = clock.now_ms();

    // Looked at once a simulated minute (each look is real work).
    for _ in 0..8 * 60 {
        if !store.dead().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(
        store.dead().len(),
        1,
        "dead-lettered within 8 simulated hours"
    );
    let dead = store.dead()[0].delivery.clone();
    assert!(dead.last_error.unwrap().contains("give_up_after"));
    let span = dead.last_attempt_at.unwrap() - dead.first_attempt_at.unwrap();
    assert!(
        span <= 6 * 3_600_000,
        "last attempt {span} ms after the first"
    );
    // Not given up early: the last attempt was made late enough that the next one
    // would have been past the deadline (a backoff is at most 30 min).
    assert!(span >= 6 * 3_600_000 - 1_800_000, "gave up after {span} ms");
    assert!(clock.now_ms() - started >= span);
    let attempts = partner.request_count();
    assert_eq!(attempts as u32, dead.attempts);
    assert!((5..1000).contains(&attempts), "{attempts} attempts");
    deliverer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_partner_that_never_answers_does_not_delay_a_healthy_one() {
    let stuck = FakePartner::start().await.unwrap();
    stuck.set_default(Reply::hang());
    let healthy = FakePartner::start().await.unwrap();
    let store = Arc::new(MemStore::default());
    for i in 0..20 {
        store.push(delivery(&format!("s{i}"), "stuck", &stuck.url("/pb")));
        store.push(delivery(&format!("h{i}"), "healthy", &healthy.url("/pb")));
    }
    let mut slow = settings();
    slow.timeout = Duration::from_secs(30);
    slow.concurrency = 2;
    let mut options = opts();
    options.shutdown_grace = Duration::from_millis(200);
    let deliverer = start(
        &store,
        vec![("stuck", slow), ("healthy", settings())],
        options,
    );

    assert!(
        eventually(Duration::from_secs(5), || completed_of(&store, "healthy")
            == 20)
        .await
    );
    assert_eq!(healthy.request_count(), 20);
    // Meanwhile the stuck partner holds its two slots and has answered nothing.
    assert!(stuck.wait_for_requests(2, Duration::from_secs(2)).await);
    assert_eq!(stuck.request_count(), 2);
    assert_eq!(stuck.answered_count(), 0);
    assert_eq!(completed_of(&store, "stuck"), 0);
    let status = deliverer.status();
    let stuck_status = status.iter().find(|s| s.name == "stuck").unwrap();
    assert_eq!(stuck_status.in_flight, 2);

    // Shutdown waits its grace, then gives the two claims back, untouched.
    deliverer.shutdown().await;
    let mut released = store.releases.lock().unwrap().clone();
    released.sort();
    assert_eq!(released.len(), 2);
    assert!(released.iter().all(|id| id.starts_with('s')));
    let queued = store.queued();
    assert_eq!(queued.len(), 20);
    assert!(queued.iter().all(|d| d.attempts == 0));
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_against_a_failing_partner_and_closes_after_it_recovers() {
    let partner = FakePartner::start().await.unwrap();
    partner.set_default(Reply::status(503));
    let store = Arc::new(MemStore::default());
    for i in 0..30 {
        store.push(delivery(&format!("d{i}"), "down", &partner.url("/pb")));
    }
    let mut s = settings();
    s.concurrency = 1;
    s.retry.max_attempts = 1000;
    let mut options = opts();
    options.breaker = BreakerSettings {
        failure_threshold: 5,
        cool_down: Duration::from_millis(300),
        max_cool_down: Duration::from_secs(1),
    };
    let deliverer = start(&store, vec![("down", s)], options);

    assert!(
        eventually(Duration::from_secs(5), || deliverer.status()[0].breaker
            == BreakerState::Open)
        .await
    );
    assert_eq!(partner.request_count(), 5);
    // While open, only a probe now and then gets through: cool-downs of 300 ms, then
    // 600 ms, then 1 s (the cap): in 10 s, at most a dozen probes for 30 deliveries.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let seen = partner.request_count();
    assert!(
        (6..=5 + 12).contains(&seen),
        "{seen} requests for 30 deliveries"
    );
    assert!(store.completed_ids().is_empty());

    partner.set_default(Reply::ok());
    assert!(eventually(Duration::from_secs(5), || store.completed_ids().len() == 30).await);
    assert_eq!(deliverer.status()[0].breaker, BreakerState::Closed);
    assert!(store.dead().is_empty());
    deliverer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn private_partner_addresses_are_dead_lettered_unless_allowed() {
    let partner = FakePartner::start().await.unwrap();
    let store = Arc::new(MemStore::default());
    store.push(delivery("dlv_1", "aff", &partner.url("/pb?email=a@b.com")));
    let mut options = opts();
    options.allow_private_networks = false;
    let deliverer = start(&store, vec![("aff", settings())], options);

    assert!(eventually(Duration::from_secs(5), || store.dead().len() == 1).await);
    let error = store.dead()[0].delivery.last_error.clone().unwrap();
    assert!(
        error.contains("loopback") && !error.contains("a@b.com"),
        "{error}"
    );
    assert_eq!(partner.request_count(), 0);
    assert_eq!(deliverer.status()[0].breaker, BreakerState::Closed);
    deliverer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn notify_sends_new_deliveries_without_waiting_for_the_poll() {
    let partner = FakePartner::start().await.unwrap();
    let store = Arc::new(MemStore::default());
    let mut options = opts();
    options.poll_interval = Duration::from_secs(30);
    let deliverer = start(&store, vec![("aff", settings())], options);
    // Let the worker find nothing and go to sleep.
    tokio::time::sleep(Duration::from_millis(50)).await;

    store.push(delivery("dlv_1", "aff", &partner.url("/pb")));
    deliverer.notify("aff");
    deliverer.notify("no-such-destination");
    assert!(eventually(Duration::from_secs(3), || store.completed_ids().len() == 1).await);
    deliverer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn store_errors_are_waited_out_not_fatal() {
    let partner = FakePartner::start().await.unwrap();
    let store = Arc::new(MemStore::default());
    store
        .fail_claims
        .store(3, std::sync::atomic::Ordering::SeqCst);
    store.push(delivery("dlv_1", "aff", &partner.url("/pb")));
    let deliverer = start(&store, vec![("aff", settings())], opts());
    assert!(eventually(Duration::from_secs(5), || store.completed_ids().len() == 1).await);
    deliverer.shutdown().await;
}

#[tokio::test]
async fn rate_limit_spaces_out_requests_beyond_the_burst() {
    let partner = FakePartner::start().await.unwrap();
    let store = Arc::new(MemStore::default());
    for i in 0..8 {
        store.push(delivery(&format!("d{i}"), "aff", &partner.url("/pb")));
    }
    let mut s = settings();
    s.rate_limit = Some(RateLimit {
        count: 5,
        per: Duration::from_secs(1),
    });
    let deliverer = start(&store, vec![("aff", s)], opts());
    assert!(eventually(Duration::from_secs(5), || store.completed_ids().len() == 8).await);
    let requests = partner.requests();
    // A burst of 5, then one every 200 ms: the 8th not sooner than ~600 ms in.
    let span = requests[7].received_at - requests[0].received_at;
    assert!(span >= Duration::from_millis(550), "{span:?}");
    deliverer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn reload_starts_new_destinations_stops_removed_ones_and_applies_settings() {
    let partner = FakePartner::start().await.unwrap();
    let store = Arc::new(MemStore::default());
    store.push(delivery("a1", "a", &partner.url("/pb")));
    let deliverer = start(&store, vec![], opts());
    assert!(deliverer.status().is_empty());

    deliverer.update_destinations(vec![("a".into(), settings())]);
    assert!(eventually(Duration::from_secs(5), || store.completed_ids() == ["a1"]).await);

    // Changed settings apply to the next sends (here: a signing secret appears).
    let mut signed = settings();
    signed.sign_secret = Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
    deliverer.update_destinations(vec![("a".into(), signed)]);
    store.push(delivery("a2", "a", &partner.url("/pb")));
    deliverer.notify("a");
    assert!(eventually(Duration::from_secs(5), || store.completed_ids().len() == 2).await);
    assert!(partner.requests()[1].header("webhook-signature").is_some());

    deliverer.update_destinations(vec![]);
    assert!(deliverer.status().is_empty());
    store.push(delivery("a3", "a", &partner.url("/pb")));
    deliverer.notify("a");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(partner.request_count(), 2);
    assert_eq!(store.queued().len(), 1);
    deliverer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_destinations_works_from_a_thread_outside_the_runtime() {
    // The rules file watcher calls it from its own std thread.
    let partner = FakePartner::start().await.unwrap();
    let store = Arc::new(MemStore::default());
    store.push(delivery("t1", "a", &partner.url("/pb")));
    let deliverer = start(&store, vec![], opts());
    let d = deliverer.clone();
    std::thread::spawn(move || {
        d.update_destinations(vec![("a".into(), settings())]);
        let mut smaller = settings();
        smaller.concurrency = 1;
        d.update_destinations(vec![("a".into(), smaller)]);
    })
    .join()
    .expect("no panic outside the runtime");
    assert!(eventually(Duration::from_secs(5), || store.completed_ids() == ["t1"]).await);
    deliverer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_bad_signing_secret_dead_letters_instead_of_sending_unsigned() {
    let partner = FakePartner::start().await.unwrap();
    let store = Arc::new(MemStore::default());
    store.push(delivery("d1", "aff", &partner.url("/pb")));
    let mut s = settings();
    s.sign_secret = Some("whsec_***".into());
    let deliverer = start(&store, vec![("aff", s)], opts());
    assert!(eventually(Duration::from_secs(5), || store.dead().len() == 1).await);
    assert_eq!(partner.request_count(), 0);
    deliverer.shutdown().await;
}

#[test]
fn status_serializes_for_the_admin_api() {
    let s = DestinationStatus {
        name: "meta".into(),
        breaker: BreakerState::HalfOpen,
        last_error: Some("HTTP 503".into()),
        in_flight: 3,
        requests_in_flight: 1,
        concurrency_limit: 16,
        held: None,
        delivered: 7,
        last_success_at: Some(1_764_064_800_000),
    };
    assert_eq!(
        serde_json::to_string(&s).unwrap(),
        r#"{"name":"meta","breaker":"half_open","last_error":"HTTP 503","in_flight":3,"requests_in_flight":1,"concurrency_limit":16,"held":null,"delivered":7,"last_success_at":1764064800000}"#
    );
}

mod partners;

/// Partner statuses read back after a delivery (Google Data Manager).
mod followups;

/// Every task the engine spawns is tracked: `shutdown` returns only after the ones
/// it was handed (a retirement, here a slow one) have finished.
#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_tasks_the_engine_spawned() {
    let store = Arc::new(MemStore::default());
    let deliverer = start(&store, vec![], opts());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    deliverer.spawn(async move {
        // Within the test's shutdown grace (1 s).
        tokio::time::sleep(Duration::from_millis(500)).await;
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    deliverer.shutdown().await;
    assert!(
        done.load(std::sync::atomic::Ordering::SeqCst),
        "shutdown returned before the spawned task ended"
    );
}

/// Batches, bisection and the adaptive controller against fake partners.
mod batches;
