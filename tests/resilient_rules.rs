//! A rule file with errors never stops the relay: it starts with every valid
//! destination (and the broken file's last good version, kept from an earlier run), delivers to them, names the broken file and line in
//! `/admin/destinations` and `/metrics`, keeps the broken destination's queue waiting
//! (not dead-lettered), and picks up the fix by file watch. `--strict` (here `[rules]
//! strict`) refuses to start, as before.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use postback_relay::app::{self, StartError};
use postback_relay::config::{Config, Overrides};
use postback_relay::fake_partner::{FakePartner, Reply};

use common::{config_text, destination_at, event, eventually, GetRule, TestRelay};

fn get_rule(url: &str) -> String {
    GetRule::new(url).allow(&["click_id", "event_name"]).text()
}

/// `get_rule` with a misspelt key on line 3.
fn broken(url: &str) -> String {
    get_rule(url).replace("method = \"GET\"", "methd = \"GET\"")
}

async fn destination(relay: &TestRelay, name: &str) -> serde_json::Value {
    destination_at(&relay.client, &relay.base, name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_rule_file_leaves_the_others_running_and_its_queue_waits_for_the_fix() {
    let good = FakePartner::start().await.unwrap();
    let other = FakePartner::start().await.unwrap();
    // `other` refuses for now: its deliveries stay queued.
    other.set_default(Reply::status(503));
    let good_rule = get_rule(&good.url("/p?c={click_id}"));
    let other_rule = get_rule(&other.url("/o?c={click_id}"));
    let relay = TestRelay::start(&[("good", &good_rule), ("other", &other_rule)], "").await;
    let (s, v) = relay
        .post_json("m1", &event("e1", "purchase", "clk1"))
        .await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    assert!(other.wait_for_requests(1, Duration::from_secs(10)).await);
    let dir = relay.stop().await;

    // `other.toml` breaks while the relay is down: the next start keeps its last good
    // version (kept in the data directory), as a reload would, and says so.
    let file = dir.path().join("rules/other.toml");
    std::fs::write(&file, broken(&other.url("/o?c={click_id}"))).unwrap();
    let relay = TestRelay::start_in(dir, &[("good", &good_rule)], "").await;
    let d = destination(&relay, "other").await;
    assert_eq!(
        (&d["enabled"], &d["last_good_in_force"], &d["state"]),
        (
            &serde_json::json!(true),
            &serde_json::json!(true),
            &serde_json::json!("broken")
        ),
        "{d}"
    );
    let dir = relay.stop().await;

    // Without a kept version (a data directory restored from a backup without
    // `rules-last-good`, or one from before it existed) the start goes on without it.
    std::fs::remove_dir_all(
        dir.path()
            .join("data")
            .join(postback_relay::rules::KEPT_DIR),
    )
    .unwrap();
    let relay = TestRelay::start_in(dir, &[("good", &good_rule)], "").await;
    let (s, v) = relay
        .post_json("m2", &event("e2", "purchase", "clk2"))
        .await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    assert!(good.wait_for_requests(2, Duration::from_secs(10)).await);
    assert_eq!(good.requests()[1].target, "/p?c=clk2");

    let d = destination(&relay, "other").await;
    assert_eq!(d["enabled"], false, "{d}");
    assert_eq!(d["last_good_in_force"], false, "{d}");
    let errors = d["rule_errors"].as_array().cloned().unwrap_or_default();
    let want = format!(
        "{}:3:1: unknown key `methd` in [destination]",
        file.display()
    );
    assert!(
        errors.len() == 1 && errors[0].as_str().unwrap_or("").starts_with(&want),
        "{d}"
    );
    assert_eq!(
        destination(&relay, "good").await["rule_errors"],
        serde_json::json!([])
    );

    // The waiting delivery is neither sent nor dead-lettered (retire_removed has
    // run at start, and the purge loop would run it again).
    let sent_before = other.request_count();
    assert_eq!(d["queue_depth"], 1, "{d}");
    assert_eq!(d["dlq_size"], 0, "{d}");
    let metrics = common::metrics_text(&relay.client, &relay.base).await;
    assert!(
        metrics.contains("postback_relay_rule_file_errors{destination=\"other\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("postback_relay_rule_file_errors{destination=\"good\""));

    // The fix, by file watch: the queued delivery goes out.
    other.set_default(Reply::ok());
    std::fs::write(&file, get_rule(&other.url("/o?c={click_id}"))).unwrap();
    assert!(
        eventually(15, || async {
            destination(&relay, "other").await["enabled"] == true
        })
        .await,
        "the fix was not picked up"
    );
    assert!(
        eventually(15, || async {
            other.answered_count() > sent_before
                && other
                    .requests()
                    .last()
                    .is_some_and(|r| r.target == "/o?c=clk1")
        })
        .await,
        "the waiting delivery was not sent after the fix"
    );
    assert_eq!(destination(&relay, "other").await["dlq_size"], 0);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_to_start_with_a_broken_rule_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/bad.toml"),
        broken("https://partner.example/p?c={click_id}"),
    )
    .unwrap();
    let cfg = dir.path().join("postback-relay.toml");
    std::fs::write(&cfg, config_text("")).unwrap();
    let env: HashMap<String, String> = HashMap::new();
    let strict = Overrides {
        strict: true,
        ..Overrides::default()
    };
    let config = Config::load(&cfg, &env, &strict).expect("valid config");
    match app::start(config, std::sync::Arc::new(env)).await {
        Err(StartError::Invalid(errors)) => {
            let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            assert!(text[0].ends_with("bad.toml:3:1: unknown key `methd` in [destination]; did you mean `method`? allowed keys: concurrency, format, headers, method, oauth, preset, rate_limit, retry, sign_secret, timeout, url"), "{text:#?}");
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a strict relay started with a broken rule file"),
    }
}
