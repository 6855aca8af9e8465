//! Google Data Manager's asynchronous status read back after a delivery, through the
//! real worker on paused time: when the checks go (Google: wait 30 minutes, then back
//! off), that they stop, what the receipt says, with the destination's token.

use std::sync::Mutex;

use super::*;
use crate::outbound::{OAuthSettings, PartnerAnswers, StatusCheck, SuccessRule};
use crate::store::PartnerStatus;

fn json_reply(status: u16, body: &str) -> Reply {
    Reply::status(status)
        .header("Content-Type", "application/json")
        .body(body)
}

const INGESTED: &str = r#"{"requestId":"req-7f3a"}"#;
const PROCESSING: &str = r#"{"requestStatusPerDestination":[{"requestStatus":"PROCESSING"}]}"#;
const FAILED: &str = r#"{"requestStatusPerDestination":[{"requestStatus":"FAILED","errorInfo":{"errorCounts":[{"recordCount":"1","reason":"PROCESSING_ERROR_REASON_INVALID_GCLID"}]}}]}"#;

#[derive(Default)]
struct Seen(Mutex<Vec<(String, PartnerStatusResult)>>);

impl DeliveryObserver for Seen {
    fn attempt(&self, _: &str, _: AttemptOutcome, _: Duration) {}
    fn partner_status(&self, destination: &str, result: PartnerStatusResult) {
        self.0
            .lock()
            .unwrap()
            .push((destination.to_string(), result));
    }
}

fn data_manager(oauth: &FakePartner, check: StatusCheck) -> DeliverySettings {
    DeliverySettings {
        success: SuccessRule::Partner(PartnerAnswers::GoogleDataManager),
        oauth: Some(OAuthSettings {
            token_url: oauth.url("/token"),
            client_id: "cid".into(),
            client_secret: "csecret".into(),
            refresh_token: "rtoken".into(),
        }),
        status_check: Some(check),
        ..settings()
    }
}

fn token(oauth: &FakePartner) {
    oauth.set_default(json_reply(
        200,
        r#"{"access_token":"ya29.dm","expires_in":36000,"token_type":"Bearer"}"#,
    ));
}

/// A token endpoint, a fake Google that takes the ingest (`INGESTED`) and answers
/// every status check with `checks`, and `store` with `dlv_1` queued for it.
async fn one_delivery_to_google(
    checks: &str,
    store: MemStore,
) -> (FakePartner, FakePartner, Arc<MemStore>) {
    let oauth = FakePartner::start().await.unwrap();
    token(&oauth);
    let google = FakePartner::start().await.unwrap();
    google.enqueue([json_reply(200, INGESTED)]);
    google.set_default(json_reply(200, checks));
    let store = Arc::new(store);
    store.push(delivery("dlv_1", "dm", &google.url("/v1/events:ingest")));
    (oauth, google, store)
}

fn status_of(store: &MemStore, id: &str) -> Option<PartnerStatus> {
    store.partner.lock().unwrap().get(id).cloned()
}

/// Steps simulated time a second at a time (each step lets the sockets work) until
/// `cond`, for at most `limit`.
async fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let mut waited = Duration::ZERO;
    while waited < limit {
        if cond() {
            return true;
        }
        // Pacing: the poll interval of a condition wait with a deadline (paused time).
        tokio::time::sleep(Duration::from_secs(1)).await;
        waited += Duration::from_secs(1);
    }
    cond()
}

#[tokio::test(start_paused = true)]
async fn the_status_is_asked_after_30_minutes_then_twice_as_late_each_time_and_no_more() {
    let (oauth, google, store) = one_delivery_to_google(PROCESSING, MemStore::default()).await;
    let check = StatusCheck {
        first_after: Duration::from_secs(1800),
        tries: 3,
    };
    let seen = Arc::new(Seen::default());
    let deliverer = start(&store, vec![("dm", data_manager(&oauth, check))], opts());
    deliverer.observe(seen.clone());
    let clock = deliverer.clock();
    assert!(
        until(Duration::from_secs(60), || store.completed_ids()
            == ["dlv_1"])
        .await
    );
    let delivered = clock.now_ms();
    // At once: processing, with Google's request ID, not checked yet.
    assert!(
        until(Duration::from_secs(5), || status_of(&store, "dlv_1")
            .is_some())
        .await
    );
    assert_eq!(
        status_of(&store, "dlv_1"),
        Some(PartnerStatus {
            state: "processing".into(),
            reason: None,
            request_id: "req-7f3a".into(),
            checked_at: None,
        })
    );
    // Each check, when it came (ms after the delivery).
    let mut at = Vec::new();
    let mut count = google.request_count();
    let limit = Duration::from_secs(5 * 3600);
    let all = until(limit, || {
        let now = google.request_count();
        if now > count {
            at.push(clock.now_ms() - delivered);
            count = now;
        }
        status_of(&store, "dlv_1").is_some_and(|s| s.state == "unknown")
    })
    .await;
    assert!(all, "three checks within five hours; seen at {at:?} ms");
    let expected = [
        1_800_000,
        1_800_000 + 3_600_000,
        1_800_000 + 3_600_000 + 7_200_000,
    ];
    assert_eq!(at.len(), 3, "{at:?}");
    for (got, want) in at.iter().zip(expected) {
        assert!(
            (want..want + 5_000).contains(got),
            "a check at {got} ms, due at {want}"
        );
    }
    let last = status_of(&store, "dlv_1").unwrap();
    assert_eq!(
        last.reason.as_deref(),
        Some("still processing after 3 checks; ask Google with the request ID")
    );
    assert!(last.checked_at.is_some());
    // The checks asked Google with the request ID and the destination's token.
    let checks = google.requests();
    for r in &checks[1..] {
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/v1/requestStatus:retrieve?requestId=req-7f3a");
        assert_eq!(r.header("authorization"), Some("Bearer ya29.dm"));
    }
    // No more after the last: ten more simulated hours bring nothing.
    // Pacing: the window under test, in paused time, a minute at a time so that a
    // check the relay would wrongly make has its requests served on the way.
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(google.request_count(), 4);
    assert_eq!(
        *seen.0.lock().unwrap(),
        [("dm".to_string(), PartnerStatusResult::Unknown)]
    );
    deliverer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failure_google_reports_later_is_recorded_on_every_delivery_of_the_batch() {
    let oauth = FakePartner::start().await.unwrap();
    token(&oauth);
    let google = FakePartner::start().await.unwrap();
    google.enqueue([
        json_reply(200, INGESTED),
        json_reply(503, r#"{"error":{"code":503,"status":"UNAVAILABLE"}}"#),
        json_reply(200, FAILED),
    ]);
    google.set_default(Reply::status(418));
    let store = Arc::new(MemStore::default());
    for id in ["dlv_1", "dlv_2"] {
        let mut d = delivery(id, "dm", &google.url("/v1/events:ingest"));
        d.request.body = Some(format!(
            r#"{{"encoding":"HEX","events":[{{"transactionId":"{id}"}}]}}"#
        ));
        store.push(d);
    }
    let mut settings = data_manager(
        &oauth,
        StatusCheck {
            first_after: Duration::from_secs(60),
            tries: 4,
        },
    );
    settings.batch = Some(crate::outbound::BatchSettings {
        path: "events".into(),
        max_events: 10,
        max_wait: Duration::from_millis(100),
    });
    let seen = Arc::new(Seen::default());
    let deliverer = start(&store, vec![("dm", settings)], opts());
    deliverer.observe(seen.clone());
    assert!(until(Duration::from_secs(60), || store.completed_ids().len() == 2).await);
    let ingest = String::from_utf8_lossy(&google.requests()[0].body).into_owned();
    assert!(
        ingest.contains("dlv_1") && ingest.contains("dlv_2"),
        "one request: {ingest}"
    );
    let failed = || status_of(&store, "dlv_2").is_some_and(|s| s.state == "failure");
    assert!(until(Duration::from_secs(3600), failed).await);
    // One request carried both: both receipts say what Google said of it, its words
    // only; the 503 of the first check was asked again.
    for id in ["dlv_1", "dlv_2"] {
        let s = status_of(&store, id).unwrap();
        assert_eq!(
            (s.state.as_str(), s.reason.as_deref(), s.request_id.as_str()),
            (
                "failure",
                Some("PROCESSING_ERROR_REASON_INVALID_GCLID: 1 event"),
                "req-7f3a"
            )
        );
    }
    // Google's word was final: no check after it (ten simulated hours).
    // Pacing: the window under test, in paused time, a minute at a time so that a
    // check the relay would wrongly make has its requests served on the way.
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(google.request_count(), 3);
    assert_eq!(
        *seen.0.lock().unwrap(),
        [("dm".to_string(), PartnerStatusResult::Failure)]
    );
    deliverer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn no_check_without_a_request_id_and_shutdown_ends_the_waiting_ones() {
    let oauth = FakePartner::start().await.unwrap();
    token(&oauth);
    let google = FakePartner::start().await.unwrap();
    // validateOnly: Google answers {} and records nothing; nothing to ask about.
    google.enqueue([json_reply(200, "{}"), json_reply(200, INGESTED)]);
    google.set_default(json_reply(200, PROCESSING));
    let store = Arc::new(MemStore::default());
    store.push(delivery("dlv_1", "dm", &google.url("/v1/events:ingest")));
    let check = StatusCheck {
        first_after: Duration::from_secs(1800),
        tries: 6,
    };
    let deliverer = start(&store, vec![("dm", data_manager(&oauth, check))], opts());
    assert!(
        until(Duration::from_secs(60), || store.completed_ids()
            == ["dlv_1"])
        .await
    );
    store.push(delivery("dlv_2", "dm", &google.url("/v1/events:ingest")));
    deliverer.notify("dm");
    assert!(
        until(Duration::from_secs(60), || status_of(&store, "dlv_2")
            .is_some())
        .await
    );
    assert_eq!(status_of(&store, "dlv_1"), None);
    // A check waiting 30 minutes does not hold up a shutdown (grace: 1 s).
    let started = tokio::time::Instant::now();
    deliverer.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(google.request_count(), 2);
    assert_eq!(
        status_of(&store, "dlv_2").map(|s| s.state),
        Some("processing".into())
    );
}

fn kept(store: &MemStore) -> Vec<crate::store::PendingCheck> {
    store.checks.lock().unwrap().values().cloned().collect()
}

#[tokio::test(start_paused = true)]
async fn a_check_kept_by_a_stopped_relay_is_made_by_the_next_one_when_due() {
    // A store of one process (embedded): the next relay takes it up at start.
    kept_check_made_after_a_restart(false, 1_800_000).await;
}

#[tokio::test(start_paused = true)]
async fn on_a_shared_store_a_kept_check_is_taken_up_once_overdue_by_five_minutes() {
    // Redis: the check may be another live relay's, so only an overdue one is taken
    // up (its maker keeps it again before each wait), within a sweep.
    kept_check_made_after_a_restart(true, 1_800_000 + 300_000).await;
}

/// Delivers, stops the relay before the 30-minute check, starts another one on the
/// same store: the check is made once, from `due_ms` after the delivery (within a
/// sweep), with the destination's token, then forgotten.
async fn kept_check_made_after_a_restart(shared: bool, due_ms: i64) {
    let mut store = MemStore::default();
    store.shared = shared;
    let (oauth, google, store) = one_delivery_to_google(FAILED, store).await;
    let check = StatusCheck {
        first_after: Duration::from_secs(1800),
        tries: 6,
    };
    let first = start(&store, vec![("dm", data_manager(&oauth, check))], opts());
    let clock = first.clock();
    assert!(until(Duration::from_secs(60), || !kept(&store).is_empty()).await);
    let delivered = clock.now_ms();
    // Kept before the 30-minute wait: the deliveries, where to ask (no token), when.
    let [k] = kept(&store).try_into().expect("one check kept");
    assert_eq!(
        (
            k.destination.as_str(),
            k.request_id.as_str(),
            k.ids,
            k.tries
        ),
        ("dm", "req-7f3a", vec!["dlv_1".to_string()], 0)
    );
    assert_eq!(
        k.url,
        google.url("/v1/requestStatus:retrieve?requestId=req-7f3a")
    );
    assert!((delivered + 1_795_000..=delivered + 1_800_000).contains(&k.due_at));
    // The relay stops (a deploy) before the check is due.
    first.shutdown().await;
    assert_eq!(google.request_count(), 1);
    assert_eq!(kept(&store).len(), 1);

    let next = start(&store, vec![("dm", data_manager(&oauth, check))], opts());
    let failed = || status_of(&store, "dlv_1").is_some_and(|s| s.state == "failure");
    assert!(until(Duration::from_secs(2 * 3600), failed).await);
    let asked = clock.now_ms() - delivered;
    assert!(
        (due_ms..=due_ms + 65_000).contains(&asked),
        "checked {asked} ms after the delivery, due {due_ms}"
    );
    let requests = google.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].target,
        "/v1/requestStatus:retrieve?requestId=req-7f3a"
    );
    assert_eq!(requests[1].header("authorization"), Some("Bearer ya29.dm"));
    // The final word: forgotten, and nothing more is asked.
    assert!(until(Duration::from_secs(5), || kept(&store).is_empty()).await);
    // Pacing: two simulated hours, a minute at a time, for a check that should not come.
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(google.request_count(), 2);
    next.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_kept_check_of_a_removed_destination_is_given_up_and_says_why() {
    let google = FakePartner::start().await.unwrap();
    let store = Arc::new(MemStore::default());
    store.completed.lock().unwrap().push(delivery(
        "dlv_9",
        "gone",
        &google.url("/v1/events:ingest"),
    ));
    let check = crate::store::PendingCheck {
        destination: "gone".into(),
        request_id: "req-old".into(),
        ids: vec!["dlv_9".into()],
        url: google.url("/v1/requestStatus:retrieve?requestId=req-old"),
        tries: 1,
        due_at: 0,
    };
    store.keep_check(&check).await.unwrap();
    let deliverer = start(&store, vec![("other", settings())], opts());
    assert!(until(Duration::from_secs(5), || kept(&store).is_empty()).await);
    let s = status_of(&store, "dlv_9").expect("a status");
    assert_eq!(
        (s.state.as_str(), s.request_id.as_str(), s.reason.as_deref()),
        (
            "unknown",
            "req-old",
            Some("not checked: its destination was removed; ask Google with the request ID")
        )
    );
    assert_eq!(google.request_count(), 0);
    deliverer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_checks_stop_once_no_receipt_of_the_request_is_left() {
    let (oauth, google, store) = one_delivery_to_google(PROCESSING, MemStore::default()).await;
    let check = StatusCheck {
        first_after: Duration::from_secs(1800),
        tries: 6,
    };
    let deliverer = start(&store, vec![("dm", data_manager(&oauth, check))], opts());
    let checked = || status_of(&store, "dlv_1").is_some_and(|s| s.checked_at.is_some());
    assert!(until(Duration::from_secs(3600), checked).await);
    assert_eq!(google.request_count(), 2);
    // The receipt expires (Redis keeps receipts a day by default; six checks take
    // about 32 hours): the next check finds nowhere to record Google's word.
    store.completed.lock().unwrap().clear();
    assert!(until(Duration::from_secs(2 * 3600), || kept(&store).is_empty()).await);
    assert_eq!(google.request_count(), 3);
    // Pacing: two days in paused time, ten minutes at a time, for checks that should
    // not come.
    for _ in 0..288 {
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    assert_eq!(google.request_count(), 3);
    deliverer.shutdown().await;
}
