//! Google Data Manager processes what it took later: a real relay delivers a
//! conversion to a fake Data Manager (`events:ingest` answers a `requestId`), asks
//! `requestStatus:retrieve` next to it with the destination's OAuth token, and
//! `GET /admin/deliveries/{id}` shows Google's later word, with the metric; on the
//! embedded store and on Redis.

mod common;

use postback_relay::fake_partner::{FakePartner, Reply};
use serde_json::Value;

use common::*;

fn json_reply(status: u16, body: &str) -> Reply {
    Reply::status(status)
        .header("Content-Type", "application/json")
        .body(body)
}

/// The shipped example's shape, pointed at the fake Google: the ingest URL is the
/// rule's `url` and the status is asked next to it; the first check after a second.
fn rule(google: &FakePartner, oauth: &FakePartner) -> String {
    rule_checking_after(google, oauth, "1s")
}

fn rule_checking_after(google: &FakePartner, oauth: &FakePartner, after: &str) -> String {
    format!(
        r#"[destination]
url = "{ingest}"
oauth = {{ client_id = "cid", client_secret = "csecret", refresh_token = "rtoken", token_url = "{token}" }}
preset = "google_data_manager"

[batch]
max_wait = "100ms"

[params]
customer_id = "1234567890"
conversion_action_id = "987654321"
status_check_after = "{after}"
status_checks = "3"

[privacy]
allow = ["click_id", "properties.value", "properties.currency", "properties.order_id",
         "user.email", "consent.ad_user_data"]
hash = ["user.email"]
"#,
        ingest = google.url("/v1/events:ingest"),
        token = oauth.url("/token"),
    )
}

/// A token endpoint answering `ya29.dm-test`, and a fake Google to script.
async fn fake_google() -> (FakePartner, FakePartner) {
    let oauth = FakePartner::start().await.expect("token endpoint");
    oauth.set_default(json_reply(
        200,
        r#"{"access_token":"ya29.dm-test","expires_in":3600,"token_type":"Bearer"}"#,
    ));
    let google = FakePartner::start().await.expect("fake Google");
    (oauth, google)
}

/// Posts one purchase with `click_id`; the admin path of its one delivery.
async fn post_one(relay: &TestRelay, msg: &str, event_id: &str, click_id: &str) -> String {
    let (s, v) = relay
        .post_json(msg, &event(event_id, "purchase", click_id))
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["results"][0]["delivery_ids"][0]
        .as_str()
        .expect("a delivery ID");
    format!("/admin/deliveries/{id}")
}

/// Whether the delivery at `path` shows the partner status `state` within 30 s.
async fn partner_state_becomes(relay: &TestRelay, path: &str, state: &str) -> bool {
    eventually(30, || async {
        relay.admin_get(path).await["partner_status"]["state"] == state
    })
    .await
}

#[tokio::test]
async fn a_failure_google_reports_later_shows_on_the_delivery() {
    failure_shows(TestStore::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_google_reports_later_shows_on_the_delivery_on_redis() {
    if let Some(store) =
        TestStore::redis("a_failure_google_reports_later_shows_on_the_delivery_on_redis")
    {
        failure_shows(store).await;
    }
}

async fn failure_shows(store: TestStore) {
    let (oauth, google) = fake_google().await;
    google.enqueue([
        json_reply(200, r#"{"requestId":"7b0e4c1a-2f5d-4e8b-9a61-0c3d2e1f4a5b"}"#),
        json_reply(
            200,
            r#"{"requestStatusPerDestination":[{"destination":{"operatingAccount":{"accountType":"GOOGLE_ADS","accountId":"1234567890"},"productDestinationId":"987654321"},"requestStatus":"FAILED","errorInfo":{"errorCounts":[{"recordCount":"1","reason":"PROCESSING_ERROR_REASON_INVALID_GCLID"}]},"eventsIngestionStatus":{"recordCount":"1"}}]}"#,
        ),
    ]);
    // Anything more would be a check too many.
    google.set_default(Reply::status(418));
    let relay = TestRelay::start(
        &[("google-dm", &rule(&google, &oauth))],
        &store.config("60s"),
    )
    .await;

    let path = post_one(&relay, "msg-dm", "e-dm", "gclid-not-google").await;
    let failed = partner_state_becomes(&relay, &path, "failure").await;
    let st: Value = relay.admin_get(&path).await;
    assert!(
        failed,
        "{} ({} requests to Google)",
        st,
        google.request_count()
    );

    assert_eq!(st["state"], "delivered", "{st}");
    let p = &st["partner_status"];
    assert_eq!(
        p["request_id"], "7b0e4c1a-2f5d-4e8b-9a61-0c3d2e1f4a5b",
        "{st}"
    );
    assert_eq!(
        p["reason"], "PROCESSING_ERROR_REASON_INVALID_GCLID: 1 event",
        "{st}"
    );
    let checked = p["checked_at"].as_str().unwrap_or("");
    assert!(
        chrono::DateTime::parse_from_rfc3339(checked).is_ok() && checked.ends_with('Z'),
        "{st}"
    );
    // Google's words only: nothing of the event.
    let text = st.to_string();
    assert!(
        !text.contains("gclid-not-google") && !text.contains("xample.com"),
        "{text}"
    );

    // Ingest, then one check next to it, both with the destination's token.
    let requests = google.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(
        (requests[0].method.as_str(), requests[0].target.as_str()),
        ("POST", "/v1/events:ingest")
    );
    assert_eq!(
        (requests[1].method.as_str(), requests[1].target.as_str()),
        (
            "GET",
            "/v1/requestStatus:retrieve?requestId=7b0e4c1a-2f5d-4e8b-9a61-0c3d2e1f4a5b"
        )
    );
    for r in &requests {
        assert_eq!(r.header("authorization"), Some("Bearer ya29.dm-test"));
    }
    let counted = metric(
        &relay.client,
        &relay.base,
        r#"postback_relay_partner_status_total{destination="google-dm",status="failure"}"#,
    )
    .await;
    assert_eq!(counted, 1.0);
    relay.stop().await;
}

/// A relay stopped (a deploy) between the delivery and Google's status check: the
/// check is kept in the store, and the relay started next on the same data makes it
/// when it is due. (Before, the check was forgotten and the delivery stayed at
/// `processing`.)
#[tokio::test]
async fn a_status_check_due_after_a_restart_is_made_by_the_next_relay() {
    let (oauth, google) = fake_google().await;
    google.enqueue([
        json_reply(200, r#"{"requestId":"req-across-restart"}"#),
        json_reply(
            200,
            r#"{"requestStatusPerDestination":[{"requestStatus":"SUCCESS"}]}"#,
        ),
    ]);
    google.set_default(Reply::status(418));
    let rule = rule_checking_after(&google, &oauth, "10s");
    let rules = [("google-dm", rule.as_str())];
    let config = TestStore::Embedded.config("60s");
    let relay = TestRelay::start(&rules, &config).await;
    let path = post_one(&relay, "msg-restart", "e-restart", "gclid-1").await;
    let processing = partner_state_becomes(&relay, &path, "processing").await;
    assert!(processing, "{}", relay.admin_get(&path).await);
    let dir = relay.stop().await;
    assert_eq!(google.request_count(), 1, "only the ingest before the stop");

    let relay = TestRelay::start_in(dir, &rules, &config).await;
    let done = partner_state_becomes(&relay, &path, "success").await;
    let st = relay.admin_get(&path).await;
    assert!(done, "{st} ({} requests to Google)", google.request_count());
    assert_eq!(st["partner_status"]["request_id"], "req-across-restart");
    let requests = google.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(
        requests[1].target,
        "/v1/requestStatus:retrieve?requestId=req-across-restart"
    );
    assert_eq!(
        requests[1].header("authorization"),
        Some("Bearer ya29.dm-test")
    );
    relay.stop().await;
}
