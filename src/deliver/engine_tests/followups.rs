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
    let oauth = FakePartner::start().await.unwrap();
    token(&oauth);
    let google = FakePartner::start().await.unwrap();
    google.enqueue([json_reply(200, INGESTED)]);
    google.set_default(json_reply(200, PROCESSING));
    let store = Arc::new(MemStore::default());
    store.push(delivery("dlv_1", "dm", &google.url("/v1/events:ingest")));
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
