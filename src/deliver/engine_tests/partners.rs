//! Each preset's partner as it answers per its documentation, through the real
//! worker: what is delivered, retried, dead-lettered; Google's OAuth token renewed
//! before expiry and after a 401; events past a partner's age limit never sent.

use super::*;
use crate::outbound::{OAuthSettings, PartnerAnswers, SuccessRule};

fn partner_settings(answers: PartnerAnswers) -> DeliverySettings {
    DeliverySettings {
        success: SuccessRule::Partner(answers),
        ..settings()
    }
}

/// Runs one delivery to a partner scripted with `replies`, until it completes or
/// is dead-lettered; returns (completed, dead letter error, requests seen).
async fn run(answers: PartnerAnswers, replies: Vec<Reply>) -> (bool, Option<String>, usize) {
    let partner = FakePartner::start().await.unwrap();
    partner.enqueue(replies);
    partner.set_default(Reply::status(418));
    let store = Arc::new(MemStore::default());
    store.push(delivery("dlv_1", "p", &partner.url("/events")));
    let deliverer = start(&store, vec![("p", partner_settings(answers))], opts());
    let settled = eventually(Duration::from_secs(5), || {
        !store.completed_ids().is_empty() || !store.dead().is_empty()
    })
    .await;
    assert!(settled, "neither delivered nor dead-lettered");
    let done = store.completed_ids() == ["dlv_1"];
    let dead = store
        .dead()
        .first()
        .and_then(|d| d.delivery.last_error.clone());
    let seen = partner.request_count();
    deliverer.shutdown().await;
    (done, dead, seen)
}

/// Runs one delivery to a partner that refuses the credentials with `reply`: the
/// destination is held (nothing dead-lettered, the delivery kept); returns why.
async fn run_held(answers: PartnerAnswers, reply: Reply) -> String {
    let partner = FakePartner::start().await.unwrap();
    partner.set_default(reply);
    let store = Arc::new(MemStore::default());
    store.push(delivery("dlv_1", "p", &partner.url("/events")));
    let deliverer = start(&store, vec![("p", partner_settings(answers))], opts());
    let held = eventually(Duration::from_secs(5), || {
        deliverer.status()[0].held.is_some()
    })
    .await;
    assert!(held, "not held");
    assert!(store.dead().is_empty() && store.completed_ids().is_empty());
    let why = deliverer.status()[0].held.clone().unwrap_or_default();
    deliverer.shutdown().await;
    assert_eq!(store.queued().len(), 1, "the delivery is kept");
    why
}

fn json_reply(status: u16, body: &str) -> Reply {
    Reply::status(status)
        .header("Content-Type", "application/json")
        .body(body)
}

#[tokio::test]
async fn meta_delivered_only_when_events_received_and_retried_when_transient() {
    // M1 success answer; Graph API "Handling Errors" code 2 is temporary.
    let ok = json_reply(
        200,
        r#"{"events_received":1,"messages":[],"fbtrace_id":"x"}"#,
    );
    let transient = json_reply(
        500,
        r#"{"error":{"message":"m","type":"OAuthException","code":2,"is_transient":true,"fbtrace_id":"x"}}"#,
    );
    let (done, dead, seen) = run(PartnerAnswers::MetaCapi, vec![transient, ok]).await;
    assert!(done && dead.is_none() && seen == 2);

    let invalid = json_reply(
        400,
        r#"{"error":{"message":"Invalid parameter","type":"OAuthException","code":100,"fbtrace_id":"x"}}"#,
    );
    let (done, dead, seen) = run(PartnerAnswers::MetaCapi, vec![invalid]).await;
    assert!(!done && seen == 1);
    // The code and the status are kept, never the partner's words (they can echo data).
    let dead = dead.unwrap();
    assert!(
        dead.starts_with("Meta error code 100 (HTTP 400 Bad Request)"),
        "{dead}"
    );
    assert!(!dead.contains("Invalid parameter"));

    let nothing = json_reply(200, r#"{"events_received":0,"messages":["dropped"]}"#);
    let (done, dead, _) = run(PartnerAnswers::MetaCapi, vec![nothing]).await;
    assert!(!done);
    assert!(dead.unwrap().contains("without events_received"));
}

#[tokio::test]
async fn tiktok_non_zero_code_in_a_200_is_not_delivered() {
    let ok = json_reply(
        200,
        r#"{"code":0,"message":"OK","request_id":"r","data":{}}"#,
    );
    let busy = json_reply(200, r#"{"code":40100,"message":"Too many requests"}"#);
    let (done, _, seen) = run(PartnerAnswers::TikTokEvents, vec![busy, ok]).await;
    assert!(done && seen == 2);
    let bad = json_reply(200, r#"{"code":40002,"message":"Invalid parameters"}"#);
    let (done, dead, _) = run(PartnerAnswers::TikTokEvents, vec![bad]).await;
    assert!(!done);
    assert!(dead.unwrap().starts_with("TikTok answered code 40002"));
}

#[tokio::test]
async fn adjust_202_is_a_bad_token_and_device_not_found_is_retried() {
    // adjust/dev-docs s2s-api/security.mdx and s2s-api/index.mdx.
    let ok = json_reply(200, r#"{"status":"OK"}"#);
    let device = json_reply(
        404,
        r#"{"error":"Event request failed (Device not found)"}"#,
    );
    let (done, _, seen) = run(PartnerAnswers::Adjust, vec![device, ok]).await;
    assert!(done && seen == 2);
    // A wrong token is no event's fault: the destination is held, the event kept.
    let why = run_held(
        PartnerAnswers::Adjust,
        Reply::status(202).body("Wrong authentication token"),
    )
    .await;
    assert!(why.contains("S2S token is missing or wrong"), "{why}");
}

#[tokio::test]
async fn appsflyer_by_status() {
    let (done, _, _) = run(PartnerAnswers::AppsFlyer, vec![Reply::ok().body("ok")]).await;
    assert!(done);
    let (done, _, seen) = run(
        PartnerAnswers::AppsFlyer,
        vec![Reply::status(503), Reply::ok().body("ok")],
    )
    .await;
    assert!(done && seen == 2);
    let why = run_held(
        PartnerAnswers::AppsFlyer,
        Reply::status(401).body("Unauthorized"),
    )
    .await;
    assert!(why.contains("HTTP 401"), "{why}");
}

fn google_failure(code: &str) -> Reply {
    json_reply(
        200,
        &format!(
            r#"{{"partialFailureError":{{"code":3,"message":"m","details":[{{"@type":"type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure","errors":[{{"errorCode":{{"conversionUploadError":"{code}"}},"message":"m"}}]}}]}},"results":[{{}}]}}"#
        ),
    )
}

#[tokio::test]
async fn google_partial_failures_are_permanent_or_later_per_code() {
    // G6: UNPARSEABLE_GCLID can never succeed.
    let (done, dead, seen) = run(
        PartnerAnswers::GoogleAds,
        vec![google_failure("UNPARSEABLE_GCLID")],
    )
    .await;
    assert!(!done && seen == 1);
    assert!(dead
        .unwrap()
        .starts_with("Google Ads: conversionUploadError UNPARSEABLE_GCLID"));

    // G6: TOO_RECENT_EVENT: "Retry after 6 hours": kept queued, due in 6 hours.
    let partner = FakePartner::start().await.unwrap();
    partner.enqueue([google_failure("TOO_RECENT_EVENT")]);
    let store = Arc::new(MemStore::default());
    store.push(delivery("dlv_1", "g", &partner.url("/upload")));
    let mut three_days = partner_settings(PartnerAnswers::GoogleAds);
    three_days.retry.give_up_after = Duration::from_secs(3 * 86400);
    let deliverer = start(&store, vec![("g", three_days)], opts());
    assert!(
        eventually(Duration::from_secs(5), || store
            .queued()
            .iter()
            .any(|d| d.attempts == 1))
        .await
    );
    let queued = store.queued()[0].clone();
    let wait = queued.next_attempt_at - queued.last_attempt_at.unwrap_or(0);
    assert!(wait >= 6 * 3_600_000, "due again after {wait} ms");
    assert!(queued.last_error.unwrap().contains("TOO_RECENT_EVENT"));
    assert!(store.dead().is_empty());
    deliverer.shutdown().await;
}

fn token_reply(token: &str, expires_in: u64) -> Reply {
    json_reply(
        200,
        &format!(r#"{{"access_token":"{token}","expires_in":{expires_in},"token_type":"Bearer"}}"#),
    )
}

const GOOGLE_OK: &str =
    r#"{"results":[{"gclid":"g","conversionAction":"customers/1/conversionActions/2"}]}"#;

#[tokio::test]
async fn google_ads_access_token_is_renewed_before_expiry_and_after_a_401() {
    let oauth = FakePartner::start().await.unwrap();
    // 61 s of life with a 60 s renewal margin: stale after one second.
    oauth.enqueue([
        token_reply("ya29.one", 61),
        token_reply("ya29.two", 3600),
        token_reply("ya29.three", 3600),
    ]);
    let google = FakePartner::start().await.unwrap();
    google.enqueue([
        json_reply(200, GOOGLE_OK),
        json_reply(401, r#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#),
        json_reply(200, GOOGLE_OK),
    ]);
    let store = Arc::new(MemStore::default());
    let settings = DeliverySettings {
        oauth: Some(OAuthSettings {
            token_url: oauth.url("/token"),
            client_id: "cid".into(),
            client_secret: "csecret".into(),
            refresh_token: "rtoken".into(),
        }),
        ..partner_settings(PartnerAnswers::GoogleAds)
    };
    let mut first = delivery(
        "dlv_1",
        "g",
        &google.url("/v26/customers/1:uploadClickConversions"),
    );
    // A stored Authorization header (an old queued request) is replaced, not sent.
    first
        .request
        .headers
        .push(("Authorization".into(), "Bearer stale".into()));
    store.push(first);
    let deliverer = start(&store, vec![("g", settings)], opts());
    assert!(
        eventually(Duration::from_secs(5), || store.completed_ids()
            == ["dlv_1"])
        .await
    );

    // Past the first token's renewal time: the next send renews first (no 401 needed),
    // then Google refuses that token once: renewed again, resent in the same attempt.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    store.push(delivery(
        "dlv_2",
        "g",
        &google.url("/v26/customers/1:uploadClickConversions"),
    ));
    deliverer.notify("g");
    assert!(eventually(Duration::from_secs(5), || store.completed_ids().len() == 2).await);

    let auth: Vec<String> = google
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        auth,
        ["Bearer ya29.one", "Bearer ya29.two", "Bearer ya29.three"]
    );
    assert_eq!(oauth.request_count(), 3);
    assert!(store.dead().is_empty(), "no dead letter");
    assert!(store.queued().is_empty(), "nothing waits for a retry");
    let completed = store.completed.lock().unwrap().clone();
    // The stored request never carried a token: nothing to leak from the queue.
    assert!(completed.iter().all(|d| !format!("{d:?}").contains("ya29")));
    deliverer.shutdown().await;
}

#[tokio::test]
async fn an_event_older_than_the_partner_accepts_is_dead_lettered_unsent() {
    let partner = FakePartner::start().await.unwrap();
    let store = Arc::new(MemStore::default());
    let mut d = delivery("dlv_1", "meta", &partner.url("/events"));
    d.request.event_time_ms = Some(crate::deliver::Clock::system().now_ms() - 8 * 86_400_000);
    store.push(d);
    let mut fresh = delivery("dlv_2", "meta", &partner.url("/events"));
    fresh.request.event_time_ms = Some(crate::deliver::Clock::system().now_ms() - 86_400_000);
    store.push(fresh);
    let settings = DeliverySettings {
        max_event_age: Some(Duration::from_secs(7 * 86400)),
        ..settings()
    };
    let deliverer = start(&store, vec![("meta", settings)], opts());
    assert!(
        eventually(Duration::from_secs(5), || store.dead().len() == 1
            && store.completed_ids() == ["dlv_2"])
        .await
    );
    let dead = store.dead()[0].delivery.clone();
    assert_eq!(dead.id, "dlv_1");
    assert_eq!(
        dead.last_error.as_deref(),
        Some("not sent: the event is older than the 7 days this partner accepts (gave up: the event is older than the partner accepts)")
    );
    assert_eq!(partner.request_count(), 1, "only the fresh one was sent");
    deliverer.shutdown().await;
}
