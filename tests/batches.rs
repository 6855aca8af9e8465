//! Batches end to end: a real relay (in process, and the real binary for kill -9), a
//! preset that batches by default, and a fake partner that answers as Meta does
//! (`events_received`, or a 400 for a whole request holding a bad event).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use postback_relay::fake_partner::{FakePartner, RecordedRequest, Reply};
use serde_json::Value;

use common::*;

/// A `meta_capi` destination with the preset's defaults (batches of up to 1,000).
fn meta_rule(url: &str) -> String {
    format!(
        r#"[destination]
url = "{url}"
headers = {{ Authorization = "Bearer test-token-0123456789" }}
preset = "meta_capi"
retry = {{ max_attempts = 20, give_up_after = "1h", initial_backoff = "50ms", max_backoff = "200ms" }}

[params]
action_source = "app"

[privacy]
allow = ["event_id", "event_name", "user.email", "properties.value", "properties.currency"]
hash = ["user.email"]
"#
    )
}

/// The event IDs in a recorded request's `data`.
fn event_ids(r: &RecordedRequest) -> Vec<String> {
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
    v["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["event_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Answers as Meta does: `{"events_received": N}`, or 400 code 100 for a request
/// holding `poison`.
fn answer_as_meta(partner: &FakePartner, poison: Option<&'static str>) {
    partner.respond_with(move |body| {
        let text = String::from_utf8_lossy(body);
        if poison.is_some_and(|p| text.contains(p)) {
            return Some(Reply::status(400).body(
                r#"{"error":{"message":"Invalid parameter","type":"OAuthException","code":100}}"#,
            ));
        }
        let v: Value = serde_json::from_slice(body).unwrap_or_default();
        let n = v["data"].as_array().map_or(0, Vec::len);
        Some(Reply::ok().body(format!(r#"{{"events_received":{n}}}"#)))
    });
}

/// `n` events in one JSON array.
fn events_body(prefix: &str, n: usize) -> String {
    let events: Vec<Value> = (0..n)
        .map(|i| {
            serde_json::from_str(&event(
                &format!("{prefix}-{i:03}"),
                "purchase",
                &format!("clk-{prefix}-{i}"),
            ))
            .expect("json")
        })
        .collect();
    Value::Array(events).to_string()
}

async fn batch_of_50_in_one_request(store: TestStore) {
    let partner = FakePartner::start().await.expect("partner");
    answer_as_meta(&partner, None);
    let rule = meta_rule(&partner.url("/v27.0/123/events"));
    let relay = TestRelay::start(&[("meta", &rule)], &store.config("5s")).await;
    let (status, v) = relay.post_json("msg-batch", &events_body("b", 50)).await;
    assert_eq!((status, v["accepted"].as_u64()), (202, Some(50)), "{v}");
    let ids: Vec<String> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["delivery_ids"][0].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 50);
    assert!(partner.wait_for_requests(1, Duration::from_secs(10)).await);
    // Every delivery settles on its own.
    for id in &ids {
        let ok = eventually(10, || async {
            relay.admin_get(&format!("/admin/deliveries/{id}")).await["state"] == "delivered"
        })
        .await;
        assert!(
            ok,
            "{id}: {}",
            relay.admin_get(&format!("/admin/deliveries/{id}")).await
        );
    }
    let requests = partner.requests();
    assert_eq!(
        requests.len(),
        1,
        "one request for the 50 events ({})",
        store.name()
    );
    let got: BTreeSet<String> = event_ids(&requests[0]).into_iter().collect();
    assert_eq!(got.len(), 50);
    assert_eq!(
        requests[0].header("webhook-id"),
        Some(format!("{}.50", ids[0]).as_str())
    );
    let d = &relay.admin_get("/admin/destinations").await["destinations"][0];
    assert_eq!(d["delivered"], 50, "{d}");
    relay.stop().await;
}

#[tokio::test]
async fn a_batching_preset_sends_queued_events_in_one_request_and_each_delivery_settles() {
    batch_of_50_in_one_request(TestStore::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batching_preset_sends_queued_events_in_one_request_on_redis() {
    let Some(store) = TestStore::redis("batch_on_redis") else {
        return;
    };
    batch_of_50_in_one_request(store).await;
}

#[tokio::test]
async fn one_refused_event_is_dead_lettered_alone_with_the_partners_reason() {
    let partner = FakePartner::start().await.expect("partner");
    answer_as_meta(&partner, Some("\"p-013\""));
    let rule = meta_rule(&partner.url("/v27.0/123/events"));
    let relay = TestRelay::start(&[("meta", &rule)], "").await;
    let (status, v) = relay.post_json("msg-poison", &events_body("p", 40)).await;
    assert_eq!(status, 202, "{v}");
    let settled = eventually(20, || async {
        let d = &relay.admin_get("/admin/destinations").await["destinations"][0];
        d["delivered"] == 39 && d["dlq_size"] == 1
    })
    .await;
    assert!(settled, "{}", relay.admin_get("/admin/destinations").await);
    let dlq = relay.admin_get("/admin/dlq").await;
    let dead = &dlq["dead_letters"][0];
    let error = dead["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("Meta error code 100"), "{dlq}");
    // Every good event was taken exactly once.
    let mut taken: HashMap<String, usize> = HashMap::new();
    for r in partner.requests().iter().filter(|r| r.status == 200) {
        for id in event_ids(r) {
            *taken.entry(id).or_default() += 1;
        }
    }
    assert_eq!(taken.len(), 39);
    assert!(taken.values().all(|&n| n == 1), "{taken:?}");
    assert!(!taken.contains_key("p-013"));
    // ceil(log2 40) + 1 = 7 requests after the first.
    assert!(partner.request_count() <= 8, "{}", partner.request_count());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_batch_loses_nothing_and_the_resent_events_keep_their_ids() {
    let partner = FakePartner::start().await.expect("partner");
    // The first request hangs: the relay dies with a batch in flight. Later ones are
    // answered as Meta does.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    partner.respond_with(move |body| {
        if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            return Some(Reply::hang());
        }
        let v: Value = serde_json::from_slice(body).unwrap_or_default();
        let n = v["data"].as_array().map_or(0, Vec::len);
        Some(Reply::ok().body(format!(r#"{{"events_received":{n}}}"#)))
    });
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir_all(dir.path().join("rules")).expect("rules");
    std::fs::write(
        dir.path().join("rules/meta.toml"),
        meta_rule(&partner.url("/v27.0/123/events")),
    )
    .expect("rule");
    let config = dir.path().join("postback-relay.toml");
    std::fs::write(&config, config_text(&store_section())).expect("config");
    let mut relay = RelayProcess::spawn(&config, "info");
    let client = reqwest::Client::new();
    let (status, v) = post_json_to(&client, &relay.base, "msg-k", &events_body("k", 30)).await;
    assert_eq!(status, 202, "{v}");
    assert!(partner.wait_for_requests(1, Duration::from_secs(10)).await);
    let in_flight: BTreeSet<String> = event_ids(&partner.requests()[0]).into_iter().collect();
    assert!(!in_flight.is_empty(), "a batch was in flight");
    relay.kill();
    let before = partner.request_count();

    let relay = RelayProcess::spawn(&config, "info");
    // (The hung first request is recorded as a 200 it never answered: skip it.)
    let taken = || -> BTreeSet<String> {
        partner
            .requests()
            .iter()
            .skip(1)
            .filter(|r| r.status == 200)
            .flat_map(event_ids)
            .collect()
    };
    let all = eventually(20, || async { taken().len() == 30 }).await;
    assert!(all, "{} of 30 taken", taken().len());
    // What was in flight at the kill went again after the restart, with the same
    // event IDs (the partner dedupes on them).
    let again: BTreeSet<String> = partner.requests()[before..]
        .iter()
        .flat_map(event_ids)
        .collect();
    assert!(
        in_flight.is_subset(&again),
        "{in_flight:?} not resent in {again:?}"
    );
    let dead = admin_get_at(&client, &relay.base, "/admin/destinations").await;
    assert_eq!(dead["destinations"][0]["dlq_size"], 0, "{dead}");
    drop(relay);
}

#[tokio::test]
async fn a_destination_that_cannot_keep_up_shows_its_backlog_age_and_concurrency() {
    let partner = FakePartner::start().await.expect("partner");
    partner.set_default(Reply::hang());
    let rule = format!(
        r#"[destination]
url = "{}?eid={{event_id}}"
method = "GET"
timeout = "30s"
concurrency = 1

[privacy]
allow = ["event_id"]
"#,
        partner.url("/slow")
    );
    let relay = TestRelay::start(&[("slow", &rule)], "").await;
    for i in 0..3 {
        let (s, v) = relay
            .post_json(
                &format!("msg-s{i}"),
                &event(&format!("s{i}"), "purchase", &format!("c{i}")),
            )
            .await;
        assert_eq!(s, 202, "{v}");
    }
    // One request hangs in flight; the other two wait, getting older.
    let late = eventually(10, || async {
        let d = &relay.admin_get("/admin/destinations").await["destinations"][0];
        d["backlog_age_seconds"].as_f64().unwrap_or(0.0) >= 1.0
            && d["requests_in_flight"] == 1
            && d["concurrency_limit"] == 1
    })
    .await;
    assert!(late, "{}", relay.admin_get("/admin/destinations").await);
    let text = common::metrics_text(&relay.client, &relay.base).await;
    assert!(
        text.contains("postback_relay_delivery_concurrency_limit{destination=\"slow\"} 1"),
        "{text}"
    );
    let age = text
        .lines()
        .find(|l| l.starts_with("postback_relay_backlog_age_seconds{destination=\"slow\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(age.is_some_and(|a| a >= 1.0), "{text}");
    relay.stop().await;
}
