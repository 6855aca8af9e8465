//! The delivery engine against the real relay and real (fake) partners on port 0:
//! retries with a stable `webhook-id`, `Retry-After`, the dead-letter queue and its
//! CLI (with and without a running relay), isolation of a hanging partner, the
//! circuit breaker, the private-address guard, and rule reloads with deliveries queued.
//!
//! No timing assertion except "not sooner than"; everything else waits for counts.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use postback_relay::fake_partner::{FakePartner, RecordedRequest, Reply};
use serde_json::{json, Value};

use common::*;

/// A GET postback carrying only the event ID, with fast retries.
fn rule(url: &str, timeout: &str, max_attempts: u32, concurrency: u32) -> String {
    GetRule::event_id_at(url)
        .timeout(timeout)
        .retry(max_attempts, "50ms", "200ms")
        .concurrency(concurrency)
        .text()
}

/// The harness config with these lines added to `[delivery]`.
fn config_with_delivery(lines: &str) -> String {
    let base = config_text("");
    let with = base.replace(
        "allow_private_networks = true\n",
        &format!("allow_private_networks = true\n{lines}\n"),
    );
    assert_ne!(base, with, "the harness config has a [delivery] section");
    with
}

/// This destination's entry in `GET /admin/destinations`.
async fn destination(relay: &TestRelay, name: &str) -> Value {
    let d = destination_at(&relay.client, &relay.base, name).await;
    assert!(!d.is_null(), "no destination {name} in /admin/destinations");
    d
}

/// Waits up to `secs` for this destination's entry to satisfy `done`; fails showing
/// the entry if it does not.
async fn wait_destination(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    secs: u64,
    done: impl Fn(&Value) -> bool,
) {
    assert!(
        eventually(secs, || async {
            done(&destination_at(client, base, name).await)
        })
        .await,
        "{}",
        destination_at(client, base, name).await
    );
}

/// Posts one event and checks it was accepted.
async fn accept(relay: &TestRelay, id: &str) {
    let (s, v) = relay
        .post_json(
            &format!("msg-{id}"),
            &event(id, "purchase", &format!("clk-{id}")),
        )
        .await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
}

fn webhook_ids(requests: &[RecordedRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            r.header("webhook-id")
                .expect("webhook-id header")
                .to_string()
        })
        .collect()
}

/// Runs the real binary with these arguments, off the async runtime (the partner and
/// maybe the relay run on it).
async fn cli(args: &[&str], config: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postback-relay"));
    cmd.args(args).arg("--config").arg(config);
    tokio::task::spawn_blocking(move || cmd.output().expect("binary runs"))
        .await
        .expect("join")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---------------------------------------------------------------------------------

#[tokio::test]
async fn three_503s_then_200_deliver_once_after_four_requests_with_one_webhook_id() {
    three_503s_then_200(TestStore::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_503s_then_200_deliver_once_after_four_requests_with_one_webhook_id_on_redis() {
    if let Some(store) = TestStore::redis("three_503s_then_200_on_redis") {
        three_503s_then_200(store).await;
    }
}

async fn three_503s_then_200(store: TestStore) {
    let partner = FakePartner::start().await.expect("partner");
    partner.enqueue([Reply::status(503), Reply::status(503), Reply::status(503)]);
    let aff = rule(&partner.url("/pb"), "500ms", 5, 2);
    let relay = TestRelay::start(&[("aff", &aff)], &store.config("60s")).await;

    accept(&relay, "e-retry").await;

    assert!(
        partner.wait_for_requests(4, Duration::from_secs(20)).await,
        "4 requests expected, got {}",
        partner.request_count()
    );
    wait_destination(&relay.client, &relay.base, "aff", 20, |d| {
        d["queue_depth"] == 0 && d["in_flight"] == 0
    })
    .await;
    let d = destination(&relay, "aff").await;
    assert_eq!(d["dlq_size"], 0, "{d}");
    assert_eq!(d["circuit"], "closed", "{d}");

    // Settled after the 200: nothing of it is left to send (queue and in-flight are
    // empty), and a later marker event arrives with no fifth attempt before it.
    accept(&relay, "e-marker").await;
    assert!(partner.wait_for_requests(5, Duration::from_secs(20)).await);
    let mut requests = partner.requests();
    assert_eq!(requests.len(), 5, "{requests:#?}");
    let marker = requests.pop().expect("the marker");
    assert_eq!(marker.target, "/pb?eid=e-marker", "{requests:#?}");
    for r in &requests {
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/pb?eid=e-retry");
    }
    let ids = webhook_ids(&requests);
    assert!(!ids[0].is_empty());
    assert!(
        ids.iter().all(|id| id == &ids[0]),
        "every attempt carries the same delivery ID: {ids:?}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_429_with_retry_after_2_is_retried_no_sooner_than_2_seconds_later() {
    let partner = FakePartner::start().await.expect("partner");
    partner.enqueue([Reply::status(429).header("Retry-After", "2")]);
    let relay = TestRelay::start(&[("aff", &rule(&partner.url("/pb"), "500ms", 5, 2))], "").await;

    accept(&relay, "e-429").await;

    assert!(partner.wait_for_requests(2, Duration::from_secs(20)).await);
    let requests = partner.requests();
    let gap = requests[1].received_at - requests[0].received_at;
    assert!(
        gap >= Duration::from_secs(2),
        "second attempt came {gap:?} after the first; Retry-After said 2s"
    );
    assert_eq!(
        requests[0].header("webhook-id"),
        requests[1].header("webhook-id")
    );
    wait_destination(&relay.client, &relay.base, "aff", 10, |d| {
        d["queue_depth"] == 0
    })
    .await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_dead_lettered_at_once_and_the_dlq_cli_replays_it_through_the_running_relay() {
    let partner = FakePartner::start().await.expect("partner");
    partner.set_default(Reply::status(400));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("rules")).expect("rules dir");
    std::fs::write(
        dir.path().join("rules/aff.toml"),
        rule(&partner.url("/pb"), "500ms", 5, 2),
    )
    .expect("rule");
    let port = free_port();
    let config = dir.path().join("postback-relay.toml");
    std::fs::write(
        &config,
        config_text("").replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        ),
    )
    .expect("config");
    let relay = RelayProcess::spawn(&config, "info");
    assert_eq!(relay.base, format!("http://127.0.0.1:{port}"));
    let client = reqwest::Client::new();

    let (s, v) = post_json_to(
        &client,
        &relay.base,
        "msg-400",
        &event("e-400", "purchase", "clk-400"),
    )
    .await;
    assert_eq!(s, 202);
    assert_eq!(v["accepted"], 1, "{v}");

    // Dead-lettered on the first answer: no retry of a 400.
    assert!(
        eventually(20, || async {
            destination_at(&client, &relay.base, "aff").await["dlq_size"] == 1
        })
        .await,
        "{}\n{}",
        destination_at(&client, &relay.base, "aff").await,
        relay.log()
    );
    let d = destination_at(&client, &relay.base, "aff").await;
    assert_eq!(d["queue_depth"], 0, "{d}");
    let dlq = admin_get_at(&client, &relay.base, "/admin/dlq").await;
    let letters = dlq["dead_letters"].as_array().expect("dead_letters");
    assert_eq!(letters.len(), 1, "{dlq}");
    let letter = &letters[0];
    assert_eq!(letter["destination"], "aff");
    assert_eq!(letter["last_status"], 400, "{letter}");
    assert_eq!(letter["attempts"], 1, "{letter}");
    let id = letter["id"].as_str().expect("id").to_string();
    assert_eq!(partner.request_count(), 1);
    assert_eq!(
        partner.requests()[0].header("webhook-id"),
        Some(id.as_str())
    );

    // `dlq list` through the running relay names the delivery and its status.
    let out = cli(&["dlq", "list"], &config).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = stdout(&out);
    assert!(listed.contains(&id), "{listed}");
    assert!(listed.contains("aff"), "{listed}");
    assert!(listed.contains("last_status=400"), "{listed}");

    // The partner is fixed; replay everything.
    partner.set_default(Reply::ok());
    let out = cli(&["dlq", "replay", "--all"], &config).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "replayed 1 dead letter");

    assert!(partner.wait_for_requests(2, Duration::from_secs(20)).await);
    wait_destination(&client, &relay.base, "aff", 20, |d| {
        d["dlq_size"] == 0 && d["queue_depth"] == 0
    })
    .await;
    let requests = partner.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[1].header("webhook-id"), Some(id.as_str()));
    assert_eq!(requests[1].target, "/pb?eid=e-400");
    let out = cli(&["dlq", "list"], &config).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "no dead letters");
}

#[tokio::test]
async fn with_no_relay_running_the_dlq_cli_opens_the_store_and_the_replay_is_sent_after_restart() {
    dlq_cli_without_a_relay(TestStore::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_relay_running_the_dlq_cli_opens_the_store_and_the_replay_is_sent_after_restart_on_redis(
) {
    if let Some(store) = TestStore::redis("dlq_cli_without_a_relay_on_redis") {
        dlq_cli_without_a_relay(store).await;
    }
}

async fn dlq_cli_without_a_relay(store: TestStore) {
    let partner = FakePartner::start().await.expect("partner");
    partner.set_default(Reply::status(400));
    let aff = rule(&partner.url("/pb"), "500ms", 5, 2);
    let relay = TestRelay::start(&[("aff", &aff)], &store.config("60s")).await;
    accept(&relay, "e-offline").await;
    wait_destination(&relay.client, &relay.base, "aff", 20, |d| {
        d["dlq_size"] == 1
    })
    .await;
    let id = partner.requests()[0]
        .header("webhook-id")
        .expect("webhook-id")
        .to_string();
    let config = relay.config_path();
    let dir = relay.stop().await;

    // Nothing listens on the config's address: the CLI reads the store itself.
    let out = cli(&["dlq", "list"], &config).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = stdout(&out);
    assert!(listed.contains(&id), "{listed}");
    assert!(listed.contains("last_status=400"), "{listed}");
    let out = cli(&["dlq", "list", "--destination", "other"], &config).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "no dead letters");

    let out = cli(&["dlq", "replay", "--id", &id], &config).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "replayed 1 dead letter");
    let out = cli(&["dlq", "list"], &config).await;
    assert_eq!(stdout(&out).trim(), "no dead letters", "{}", stderr(&out));
    // Naming a dead letter or destination that has none is an error, not "replayed 0".
    for (flag, value, what) in [
        ("--id", "dlv_nope", "with the ID dlv_nope"),
        ("--destination", "aff-typo", "of the destination aff-typo"),
    ] {
        let out = cli(&["dlq", "replay", flag, value], &config).await;
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert!(
            stderr(&out).contains(&format!("no dead letter {what}: nothing was replayed")),
            "{}",
            stderr(&out)
        );
    }

    partner.set_default(Reply::ok());
    let relay = TestRelay::start_in(dir, &[("aff", &aff)], &store.config("60s")).await;
    assert!(partner.wait_for_requests(2, Duration::from_secs(20)).await);
    wait_destination(&relay.client, &relay.base, "aff", 20, |d| {
        d["queue_depth"] == 0 && d["dlq_size"] == 0
    })
    .await;
    let requests = partner.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[1].header("webhook-id"), Some(id.as_str()));
    assert_eq!(requests[1].target, "/pb?eid=e-offline");
    relay.stop().await;
}

#[tokio::test]
async fn a_partner_that_never_answers_does_not_delay_a_healthy_one() {
    const N: usize = 30;
    let healthy = FakePartner::start().await.expect("partner");
    let hanging = FakePartner::start().await.expect("partner");
    hanging.set_default(Reply::hang());
    let relay = TestRelay::start(
        &[
            ("healthy", &rule(&healthy.url("/ok"), "1s", 5, 2)),
            ("hanging", &rule(&hanging.url("/hang"), "1s", 5, 2)),
        ],
        "",
    )
    .await;

    for i in 0..N {
        accept(&relay, &format!("e-iso-{i}")).await;
    }

    assert!(
        healthy.wait_for_requests(N, Duration::from_secs(30)).await,
        "healthy partner got {} of {N}",
        healthy.request_count()
    );
    // While the healthy partner got everything, the hanging one holds its 2 slots.
    let hung = hanging.request_count();
    assert!(
        hung <= 2,
        "the hanging partner got {hung} requests, more than its concurrency"
    );
    assert_eq!(hanging.answered_count(), 0);
    let got: HashSet<String> = healthy.requests().into_iter().map(|r| r.target).collect();
    let want: HashSet<String> = (0..N).map(|i| format!("/ok?eid=e-iso-{i}")).collect();
    assert_eq!(got, want);
    let d = destination(&relay, "hanging").await;
    assert!(d["in_flight"].as_u64().expect("in_flight") <= 2, "{d}");
    relay.stop().await;
}

#[tokio::test]
async fn a_failing_partner_opens_the_circuit_and_all_is_delivered_once_it_recovers() {
    partner_outage(TestStore::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_partner_opens_the_circuit_and_all_is_delivered_once_it_recovers_on_redis() {
    if let Some(store) = TestStore::redis("partner_outage_on_redis") {
        partner_outage(store).await;
    }
}

async fn partner_outage(store: TestStore) {
    const N: usize = 30;
    let partner = FakePartner::start().await.expect("partner");
    partner.set_default(Reply::status(503));
    // Many attempts allowed, so nothing is dead-lettered while the circuit is open.
    let config = config_with_delivery("breaker_failures = 5\nbreaker_cool_down = \"500ms\"");
    let relay = TestRelay::start_with_config(
        &[("aff", &rule(&partner.url("/pb"), "500ms", 100, 4))],
        &format!("{config}{}", store.config("60s")),
    )
    .await;

    for i in 0..N {
        accept(&relay, &format!("e-cb-{i}")).await;
    }

    wait_destination(&relay.client, &relay.base, "aff", 20, |d| {
        d["circuit"] == "open"
    })
    .await;
    // Pacing: the window under test. The open circuit fails a probe or two in it;
    // without a breaker the 30 events would be retried many times over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = partner.request_count();
    // Without a breaker each of the 30 would have been tried several times by now
    // (backoff 50-200ms); with it, fewer than one request per event went out:
    // the first wave (concurrency 4) and the half-open probes.
    assert!(
        seen < N,
        "the partner saw {seen} requests for {N} events with its circuit open"
    );
    let d = destination(&relay, "aff").await;
    assert_eq!(d["queue_depth"], N, "{d}");
    assert_eq!(d["dlq_size"], 0, "{d}");
    assert!(
        d["last_error"].as_str().unwrap_or("").contains("503"),
        "{d}"
    );

    partner.set_default(Reply::ok());
    wait_destination(&relay.client, &relay.base, "aff", 30, |d| {
        d["queue_depth"] == 0 && d["in_flight"] == 0
    })
    .await;
    let d = destination(&relay, "aff").await;
    assert_eq!(d["dlq_size"], 0, "{d}");
    assert_eq!(d["circuit"], "closed", "{d}");
    let got: HashSet<String> = partner.requests().into_iter().map(|r| r.target).collect();
    for i in 0..N {
        assert!(
            got.contains(&format!("/pb?eid=e-cb-{i}")),
            "e-cb-{i} never sent"
        );
    }
    relay.stop().await;
}

#[tokio::test]
async fn loopback_partners_are_refused_and_dead_lettered_when_private_networks_are_not_allowed() {
    let partner = FakePartner::start().await.expect("partner");
    let port = partner.addr().port();
    let config = config_text("").replace(
        "allow_private_networks = true",
        "allow_private_networks = false",
    );
    // An IP literal (checked before connecting) and a name (checked by the resolver).
    let relay = TestRelay::start_with_config(
        &[
            ("literal", &rule(&partner.url("/pb"), "500ms", 5, 2)),
            (
                "named",
                &rule(&format!("http://localhost:{port}/pb"), "500ms", 5, 2),
            ),
        ],
        &config,
    )
    .await;

    accept(&relay, "e-private").await;

    assert!(
        eventually(20, || async {
            let l = destination(&relay, "literal").await;
            let n = destination(&relay, "named").await;
            l["dlq_size"] == 1 && n["dlq_size"] == 1
        })
        .await,
        "{}\n{}",
        destination(&relay, "literal").await,
        destination(&relay, "named").await
    );
    let dlq = relay.admin_get("/admin/dlq").await;
    let letters = dlq["dead_letters"].as_array().expect("dead_letters");
    assert_eq!(letters.len(), 2, "{dlq}");
    for letter in letters {
        let error = letter["last_error"].as_str().expect("last_error");
        assert!(
            error.contains("is loopback") && error.contains("allow_private_networks is false"),
            "{letter}"
        );
        assert_eq!(letter["attempts"], 1, "{letter}");
        assert_eq!(letter["last_status"], Value::Null, "{letter}");
    }
    let literal = letters
        .iter()
        .find(|l| l["destination"] == "literal")
        .expect("literal");
    assert!(
        literal["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("partner address 127.0.0.1 is loopback"),
        "{literal}"
    );
    assert_eq!(partner.request_count(), 0, "nothing reached the partner");
    relay.stop().await;
}

#[tokio::test]
async fn a_rule_reload_keeps_queued_deliveries_as_rendered_at_accept() {
    let partner = FakePartner::start().await.expect("partner");
    partner.set_default(Reply::status(503));
    let v1 = rule(&partner.url("/v1"), "500ms", 100, 2);
    let relay = TestRelay::start_with_config(
        &[("aff", &v1)],
        // Short cool-down: the 503s may open the circuit before the reload.
        &config_with_delivery("breaker_cool_down = \"200ms\""),
    )
    .await;

    accept(&relay, "e-old").await;
    assert!(partner.wait_for_requests(1, Duration::from_secs(20)).await);
    assert_eq!(partner.requests()[0].target, "/v1?eid=e-old");

    // A new URL template that also lets event_name through.
    let v2 = format!(
        r#"[destination]
url = "{}?eid={{event_id}}&name={{event_name}}"
method = "GET"
timeout = "500ms"
retry = {{ max_attempts = 100, give_up_after = "1h", initial_backoff = "50ms", max_backoff = "200ms" }}

[privacy]
allow = ["event_id", "event_name"]
"#,
        partner.url("/v2")
    );
    std::fs::write(relay.rules_dir().join("aff.toml"), v2).expect("rewrite rule");
    let (s, v) = relay.admin_post("/admin/reload", json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["destinations"], json!(["aff"]), "{v}");

    // Accepted under the new rule.
    accept(&relay, "e-new").await;
    partner.set_default(Reply::ok());
    wait_destination(&relay.client, &relay.base, "aff", 20, |d| {
        d["queue_depth"] == 0 && d["in_flight"] == 0
    })
    .await;
    assert_eq!(destination(&relay, "aff").await["dlq_size"], 0);

    let requests = partner.requests();
    let old: Vec<&str> = requests
        .iter()
        .filter(|r| r.target.contains("e-old"))
        .map(|r| r.target.as_str())
        .collect();
    assert!(
        old.iter().all(|t| *t == "/v1?eid=e-old"),
        "every attempt of the queued delivery is the old rendering: {old:?}"
    );
    let new: Vec<&str> = requests
        .iter()
        .filter(|r| r.target.contains("e-new"))
        .map(|r| r.target.as_str())
        .collect();
    assert!(!new.is_empty());
    assert!(
        new.iter().all(|t| *t == "/v2?eid=e-new&name=purchase"),
        "{new:?}"
    );
    relay.stop().await;
}

/// Partner credentials are never stored: a queued delivery holds markers, the send
/// carries the rule's current values, and a rotated token is what the retry uses.
#[tokio::test]
async fn credentials_are_attached_at_send_time_never_stored_and_rotate_for_retries() {
    let partner = FakePartner::start().await.expect("partner");
    partner.set_default(Reply::status(503));
    let rule_with = |token: &str| {
        format!(
            r#"[destination]
url = "{}?key=${{PB_KEY:-key-canary-4711aa}}&eid={{event_id}}"
method = "GET"
headers = {{ Authorization = "Bearer ${{PB_TOKEN:-{token}}}" }}
retry = {{ max_attempts = 20, give_up_after = "1h", initial_backoff = "300ms", max_backoff = "300ms" }}

[privacy]
allow = ["event_id"]
"#,
            partner.url("/pb")
        )
    };
    let relay = TestRelay::start(
        &[("aff", &rule_with("tok-canary-0815bb"))],
        "[rules]\nallow_env = [\"PB_*\"]\n",
    )
    .await;
    accept(&relay, "e-cred").await;
    assert!(partner.wait_for_requests(1, Duration::from_secs(20)).await);
    let first = partner.requests()[0].clone();
    assert_eq!(
        first.header("authorization"),
        Some("Bearer tok-canary-0815bb")
    );
    assert_eq!(first.target, "/pb?key=key-canary-4711aa&eid=e-cred");
    // Written in the rule file itself (as `${NAME:-default}`), the canaries are in its
    // kept copy (`rules-last-good`, the file as written) and nowhere else in the data
    // directory: the store holds markers. (tests/privacy.rs: a value that comes from
    // the environment is not even in the kept copy.)
    let kept = relay
        .data_dir()
        .join(postback_relay::rules::KEPT_DIR)
        .join("aff.toml");
    assert_eq!(
        std::fs::read_to_string(&kept).ok(),
        Some(rule_with("tok-canary-0815bb")),
        "the kept copy is the rule file as written"
    );
    for canary in ["tok-canary-0815bb", "key-canary-4711aa"] {
        let hits: Vec<_> = files_with(&relay.data_dir(), canary.as_bytes())
            .into_iter()
            .filter(|p| *p != kept)
            .collect();
        assert!(hits.is_empty(), "{canary} stored in {hits:?}");
    }
    // The marketer rotates the token; the retry carries the new one.
    std::fs::write(
        relay.rules_dir().join("aff.toml"),
        rule_with("tok-rotated-9999cc"),
    )
    .expect("write rule");
    let (s, _) = relay
        .admin_post("/admin/reload", serde_json::json!({}))
        .await;
    assert_eq!(s, 200);
    partner.set_default(Reply::ok());
    let rotated = |p: &FakePartner| {
        p.requests()
            .into_iter()
            .find(|r| r.header("authorization") == Some("Bearer tok-rotated-9999cc"))
    };
    assert!(eventually(20, || async { rotated(&partner).is_some() }).await);
    let retry = rotated(&partner).expect("a retry with the new token");
    assert_eq!(retry.header("webhook-id"), first.header("webhook-id"));
    assert_eq!(retry.target, "/pb?key=key-canary-4711aa&eid=e-cred");
    relay.stop().await;
}

fn files_with(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                hits.push(p);
            }
        }
    }
    hits
}

/// `/admin/destinations` shows disabled partners too, and per destination how many
/// deliveries succeeded and when the last one did; `/admin/deliveries/{id}` follows
/// one delivery without its payload.
#[tokio::test]
async fn admin_shows_disabled_destinations_delivered_counts_and_one_delivery() {
    let partner = FakePartner::start().await.expect("partner");
    let aff = rule(&partner.url("/pb"), "2s", 5, 2);
    let off = format!(
        "enabled = false\n{}",
        rule(&partner.url("/off"), "2s", 5, 2)
    );
    let relay = TestRelay::start(&[("aff", &aff), ("off", &off)], "").await;
    let (s, v) = relay
        .post_json("msg-adm", &event("e-adm", "purchase", "clk-adm"))
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["results"][0]["delivery_ids"][0]
        .as_str()
        .expect("a delivery id in the 202")
        .to_string();
    assert!(partner.wait_for_requests(1, Duration::from_secs(20)).await);
    assert_eq!(
        partner.requests()[0].header("webhook-id"),
        Some(id.as_str())
    );
    wait_destination(&relay.client, &relay.base, "aff", 20, |d| {
        d["delivered"] == 1
    })
    .await;
    let d = destination_at(&relay.client, &relay.base, "aff").await;
    assert_eq!(d["state"], "enabled");
    assert!(
        d["last_success_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{d}"
    );
    let all = relay.admin_get("/admin/destinations").await;
    let off = all["destinations"]
        .as_array()
        .expect("list")
        .iter()
        .find(|d| d["name"] == "off")
        .cloned()
        .expect("the disabled destination is listed");
    assert_eq!(
        (off["enabled"].clone(), off["state"].clone()),
        (json!(false), json!("disabled"))
    );

    let st = relay.admin_get(&format!("/admin/deliveries/{id}")).await;
    assert_eq!(st["state"], "delivered", "{st}");
    assert_eq!(st["destination"], "aff");
    // RFC 3339 UTC, as everywhere in the admin API (it was Unix milliseconds).
    for time in ["created_at", "last_attempt_at", "finished_at"] {
        let t = st[time].as_str().unwrap_or("");
        assert!(
            chrono::DateTime::parse_from_rfc3339(t).is_ok() && t.ends_with('Z'),
            "{time}: {st}"
        );
    }
    assert_eq!(st["next_attempt_at"], serde_json::Value::Null, "{st}");
    assert!(
        st.get("request").is_none() && !st.to_string().contains("clk-adm"),
        "{st}"
    );
    let missing = relay
        .admin_get("/admin/deliveries/dlv_00000000000000000000000000")
        .await;
    assert!(missing["error"].as_str().is_some(), "{missing}");
    relay.stop().await;
}

/// Issue 18: one partner's delivery IDs say nothing of the relay's traffic to
/// another. The store numbers deliveries with one sequence for all destinations; the
/// IDs partners see hide it (a keyed permutation), and still find their delivery.
#[tokio::test]
async fn delivery_ids_seen_by_one_partner_do_not_count_another_partners_deliveries() {
    let a = FakePartner::start().await.expect("partner a");
    let b = FakePartner::start().await.expect("partner b");
    let relay = TestRelay::start(
        &[
            ("a", &rule(&a.url("/pb"), "2s", 5, 1)),
            ("b", &rule(&b.url("/pb"), "2s", 5, 1)),
        ],
        "",
    )
    .await;
    // Interleaved: every event goes to both, so each of a's deliveries has one of
    // b's between it and the next.
    for i in 0..16 {
        accept(&relay, &format!("e-ids-{i}")).await;
    }
    assert!(a.wait_for_requests(16, Duration::from_secs(20)).await);
    assert!(b.wait_for_requests(16, Duration::from_secs(20)).await);
    let seen = webhook_ids(&a.requests());
    // After the accept time (48 bits, kept: IDs sort by it) comes what the store
    // numbers deliveries by: here no sequence, neither ordered nor evenly spaced.
    let tails: Vec<u128> = seen
        .iter()
        .map(|id| {
            let text = id.strip_prefix("dlv_").expect("dlv_ prefix");
            ulid::Ulid::from_string(text).expect("a ULID").0 & ((1 << 80) - 1)
        })
        .collect();
    assert!(tails.windows(2).any(|w| w[0] > w[1]), "{seen:?}");
    assert!(tails.windows(2).any(|w| w[0] < w[1]), "{seen:?}");
    let steps: HashSet<u128> = tails.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    assert!(steps.len() > 10, "{seen:?}");
    for id in &seen {
        let st = relay.admin_get(&format!("/admin/deliveries/{id}")).await;
        assert_eq!(
            (&st["destination"], &st["id"]),
            (&json!("a"), &json!(id)),
            "{st}"
        );
        // Delivered as soon as the partner answered; the receipt may trail by a commit.
        assert!(
            eventually(10, || async {
                relay.admin_get(&format!("/admin/deliveries/{id}")).await["state"] == "delivered"
            })
            .await,
            "{st}"
        );
    }
    relay.stop().await;
}

#[tokio::test]
async fn dead_letters_of_a_removed_destination_are_not_replayed_into_a_queue_nothing_sends() {
    let partner = FakePartner::start().await.expect("partner");
    partner.set_default(Reply::status(400));
    let aff = rule(&partner.url("/pb"), "500ms", 5, 2);
    let relay = TestRelay::start(&[("aff", &aff)], "").await;
    accept(&relay, "e-gone").await;
    wait_destination(&relay.client, &relay.base, "aff", 20, |d| {
        d["dlq_size"] == 1
    })
    .await;
    std::fs::remove_file(relay.rules_dir().join("aff.toml")).expect("remove rule");
    let (s, v) = relay.admin_post("/admin/reload", json!({})).await;
    assert_eq!(s, 200, "{v}");

    let (s, v) = relay
        .admin_post("/admin/dlq/replay", json!({"destination": "aff"}))
        .await;
    assert_eq!(s, 409, "{v}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(error.contains("restore rules/aff.toml"), "{error}");
    let id = partner.requests()[0]
        .header("webhook-id")
        .expect("webhook-id")
        .to_string();
    let (s, v) = relay
        .admin_post("/admin/dlq/replay", json!({"id": id}))
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = relay
        .admin_post("/admin/dlq/replay", json!({"all": true}))
        .await;
    assert_eq!((s, v["replayed"].as_u64()), (200, Some(0)), "{v}");
    assert_eq!(v["skipped_destinations"], json!(["aff"]));
    // Still a dead letter, nothing queued.
    let d = destination(&relay, "aff").await;
    assert_eq!(
        (d["queue_depth"].as_u64(), d["dlq_size"].as_u64()),
        (Some(0), Some(1)),
        "{d}"
    );
    relay.stop().await;
}
