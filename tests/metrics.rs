//! `GET /metrics` parses as Prometheus exposition, and its counters move as a
//! scripted scenario says they must.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use postback_relay::fake_partner::{FakePartner, Reply};

fn rule(url: &str, max_attempts: u32) -> String {
    GetRule::event_id_at(url)
        .retry(max_attempts, "50ms", "100ms")
        .text()
}

/// Every sample of a scrape: (name, sorted labels) -> value.
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

async fn scrape(relay: &TestRelay) -> Samples {
    let resp = relay
        .client
        .get(format!("{}/metrics", relay.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = resp.text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus exposition");
    assert!(!scrape.samples.is_empty(), "{text}");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            // A histogram counts as its number of observations.
            prometheus_parse::Value::Histogram(ref buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            _ => continue,
        };
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        out.insert((s.metric, labels), v);
    }
    out
}

fn get(m: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    m.get(&(name.to_string(), l)).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn counters_move_as_the_scenario_expects() {
    let good = FakePartner::start().await.unwrap();
    good.enqueue([Reply::status(503)]);
    let bad = FakePartner::start().await.unwrap();
    bad.set_default(Reply::status(400));
    let relay = TestRelay::start(
        &[
            ("good", &rule(&good.url("/pb"), 5)),
            ("bad", &rule(&bad.url("/pb"), 1)),
        ],
        "",
    )
    .await;

    let before = scrape(&relay).await;
    assert_eq!(
        get(
            &before,
            "postback_relay_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    let batch = format!(
        "[{},{}]",
        event("e1", "install", "c1"),
        r#"{"event_id":"e2"}"#
    );
    let (s, _) = relay.post_json("m1", &batch).await;
    assert_eq!(s, 202);
    let (s, _) = relay.post_json("m2", &event("e3", "install", "c1")).await;
    assert_eq!(s, 202, "a duplicate");
    let forged = signed_request(
        &relay.client,
        &relay.base,
        "m3",
        "{}",
        "application/json",
        b"other",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(forged.status().as_u16(), 401);
    let (s, _) = relay
        .admin_post("/admin/reload", serde_json::json!({}))
        .await;
    assert_eq!(s, 200);
    std::fs::write(
        relay.rules_dir().join("broken.toml"),
        "[destination]\nurl = 5\n",
    )
    .unwrap();
    let (s, _) = relay
        .admin_post("/admin/reload", serde_json::json!({}))
        .await;
    assert_eq!(s, 422);
    std::fs::remove_file(relay.rules_dir().join("broken.toml")).unwrap();

    assert!(
        good.wait_for_requests(2, Duration::from_secs(10)).await,
        "retried then delivered"
    );
    assert!(bad.wait_for_requests(1, Duration::from_secs(10)).await);
    let settled = eventually(10, || async {
        let m = scrape(&relay).await;
        get(
            &m,
            "postback_relay_delivery_attempts_total",
            &[("destination", "good"), ("outcome", "delivered")],
        ) == 1.0
            && get(
                &m,
                "postback_relay_delivery_attempts_total",
                &[("destination", "bad"), ("outcome", "dead_letter")],
            ) == 1.0
            && get(&m, "postback_relay_dlq_size", &[("destination", "bad")]) == 1.0
            // the attempt is counted before its outcome is committed
            && get(&m, "postback_relay_queue_depth", &[("destination", "good")]) == 0.0
    })
    .await;
    let m = scrape(&relay).await;
    assert!(settled, "{m:#?}");

    let expect = [
        (
            "postback_relay_ingest_requests_total",
            vec![("result", "accepted")],
            2.0,
        ),
        (
            "postback_relay_ingest_requests_total",
            vec![("result", "unauthorized")],
            1.0,
        ),
        (
            "postback_relay_ingest_events_total",
            vec![("outcome", "accepted")],
            1.0,
        ),
        (
            "postback_relay_ingest_events_total",
            vec![("outcome", "duplicate")],
            1.0,
        ),
        (
            "postback_relay_ingest_events_total",
            vec![("outcome", "rejected")],
            1.0,
        ),
        ("postback_relay_ingest_duration_seconds_count", vec![], 2.0),
        (
            "postback_relay_delivery_attempts_total",
            vec![("destination", "good"), ("outcome", "retry")],
            1.0,
        ),
        (
            "postback_relay_delivery_attempts_total",
            vec![("destination", "good"), ("outcome", "delivered")],
            1.0,
        ),
        (
            "postback_relay_delivery_attempts_total",
            vec![("destination", "bad"), ("outcome", "dead_letter")],
            1.0,
        ),
        (
            "postback_relay_delivery_duration_seconds_count",
            vec![("destination", "good")],
            2.0,
        ),
        (
            "postback_relay_queue_depth",
            vec![("destination", "good")],
            0.0,
        ),
        ("postback_relay_dlq_size", vec![("destination", "bad")], 1.0),
        (
            "postback_relay_circuit_state",
            vec![("destination", "good"), ("state", "closed")],
            1.0,
        ),
        (
            "postback_relay_rule_reloads_total",
            vec![("result", "ok")],
            1.0,
        ),
        (
            "postback_relay_rule_reloads_total",
            vec![("result", "partial")],
            1.0,
        ),
    ];
    for (name, labels, want) in expect {
        assert_eq!(get(&m, name, &labels), want, "{name} {labels:?} in {m:#?}");
    }
    // Every accepted event and settled delivery went through a durable commit.
    assert!(
        get(&m, "postback_relay_store_commit_operations", &[]) >= 1.0,
        "{m:#?}"
    );
    assert!(get(&m, "postback_relay_store_commit_duration_seconds", &[]) >= 1.0);
    assert!(
        get(
            &m,
            "postback_relay_connections_open",
            &[("listener", "ingest")]
        ) >= 1.0
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counter_is_exported_at_zero_from_the_start() {
    let partner = FakePartner::start().await.unwrap();
    let relay = TestRelay::start(&[("aff", &rule(&partner.url("/p"), 3))], "").await;
    let m = scrape(&relay).await;
    let zero = [
        (
            "postback_relay_ingest_requests_total",
            vec![("result", "accepted")],
        ),
        (
            "postback_relay_ingest_requests_total",
            vec![("result", "unauthorized")],
        ),
        (
            "postback_relay_ingest_requests_total",
            vec![("result", "store_unavailable")],
        ),
        (
            "postback_relay_ingest_events_total",
            vec![("outcome", "duplicate")],
        ),
        (
            "postback_relay_rule_reloads_total",
            vec![("result", "failed")],
        ),
        (
            "postback_relay_accept_errors_total",
            vec![("listener", "ingest")],
        ),
        (
            "postback_relay_delivery_attempts_total",
            vec![("destination", "aff"), ("outcome", "dead_letter")],
        ),
        (
            "postback_relay_delivery_requests_total",
            vec![("destination", "aff")],
        ),
    ];
    assert_eq!(
        m.get(&("postback_relay_store_ready".to_string(), vec![])),
        Some(&1.0)
    );
    for (name, labels) in zero {
        let mut key: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        key.sort();
        assert_eq!(
            m.get(&(name.to_string(), key)),
            Some(&0.0),
            "{name} {labels:?} in {m:#?}"
        );
    }
    relay.stop().await;
}

/// Every `postback_relay_*` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("postback_relay_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.insert(name);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_and_the_dashboard_name_only_metrics_the_relay_exports() {
    let partner = FakePartner::start().await.unwrap();
    let relay = TestRelay::start(&[("aff", &rule(&partner.url("/p"), 3))], "").await;
    // A broken file and a delivery: every per-destination series exists.
    std::fs::write(relay.rules_dir().join("bad.toml"), "[destination\n").unwrap();
    let (s, _) = relay
        .post_json("m1", &event("e1", "purchase", "clk1"))
        .await;
    assert_eq!(s, 202);
    assert!(partner.wait_for_requests(1, Duration::from_secs(10)).await);
    // The delivery is settled (its duration recorded) a moment after the partner has
    // the request, and the watcher reports the broken file a moment after the write.
    let (client, base) = (&relay.client, &relay.base);
    let delivered =
        r#"postback_relay_delivery_attempts_total{destination="aff",outcome="delivered"}"#;
    let broken = r#"postback_relay_rule_file_errors{destination="bad"}"#;
    assert!(
        eventually(10, || async move {
            metric(client, base, delivered).await >= 1.0
                && metric(client, base, broken).await >= 1.0
        })
        .await,
        "the delivery settled and the broken file reported within 10 s"
    );
    let text = common::metrics_text(&relay.client, &relay.base).await;
    let exported: std::collections::BTreeSet<String> = metric_names(&text)
        .into_iter()
        .flat_map(|n| {
            // A histogram's series: NAME_bucket, NAME_sum, NAME_count.
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .map(str::to_string);
            [Some(n), base].into_iter().flatten()
        })
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    for file in ["prometheus-alerts.yml", "grafana-dashboard.json"] {
        let named = metric_names(&std::fs::read_to_string(root.join(file)).unwrap());
        assert!(!named.is_empty(), "{file}");
        let unknown: Vec<&String> = named.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} names {unknown:?}, not in:\n{text}"
        );
    }
    relay.stop().await;
}
