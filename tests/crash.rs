//! Kill -9 under load, with the real binary: every event that got a 202 reaches the
//! partner after restart; none that was refused does. Also: logs carry no PII.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use postback_relay::deliver::testing::{FakePartner, RecordedRequest, Reply};

use common::{admin_get_at, config_text, eventually, signed_request, RelayProcess, TestStore};

const CANARY_EMAIL: &str = "crash.canary.51d2@example.com";

/// Starts the real binary on the config in `dir` and waits for it to be ready.
fn spawn_relay(dir: &std::path::Path) -> RelayProcess {
    RelayProcess::spawn(&dir.join("postback-relay.toml"), "debug")
}

/// The event numbers (`eid=ev-N`) these partner requests carry.
fn event_numbers<'a>(requests: impl IntoIterator<Item = &'a RecordedRequest>) -> HashSet<usize> {
    requests
        .into_iter()
        .filter_map(|r| {
            r.target
                .split("eid=ev-")
                .nth(1)
                .and_then(|s| s.parse().ok())
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Accepted,
    Refused(u16),
    CutOff,
}

async fn send_one(client: &reqwest::Client, base: &str, i: usize) -> Sent {
    let body = serde_json::json!({
        "event_id": format!("ev-{i}"), "event_name": "purchase", "click_id": format!("clk-{i}"),
        "user": {"email": CANARY_EMAIL}, "properties": {"value": i}
    })
    .to_string();
    let id = format!("msg-{i}");
    // A forged request (signed over other bytes): must be refused (401) and never delivered.
    let signed: &[u8] = if i % 10 == 7 {
        b"something else"
    } else {
        body.as_bytes()
    };
    let resp = signed_request(client, base, &id, &body, "application/json", signed)
        .send()
        .await;
    match resp {
        Ok(r) => {
            let status = r.status().as_u16();
            match r.json::<serde_json::Value>().await {
                Ok(v) if status == 202 && v["accepted"] == 1 => Sent::Accepted,
                Ok(_) if status == 202 => Sent::Refused(status),
                Ok(_) => Sent::Refused(status),
                // The status line came but the body was cut: we cannot know.
                Err(_) => Sent::CutOff,
            }
        }
        Err(_) => Sent::CutOff,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_event_survives_kill_9_and_is_delivered() {
    kill_9_under_load(TestStore::Embedded).await;
}

/// The same on Redis: each restarted relay is a new consumer, so what the killed one
/// held comes back after the claim timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_event_survives_kill_9_and_is_delivered_on_redis() {
    if let Some(store) = TestStore::redis("every_accepted_event_survives_kill_9_on_redis") {
        kill_9_under_load(store).await;
    }
}

async fn kill_9_under_load(store: TestStore) {
    let partner = FakePartner::start().await.expect("partner");
    partner.set_default(Reply::status(503)); // partners down while we load
                                             // A second partner rejects everything: its deliveries go to the dead letters.
    let rejecting = FakePartner::start().await.expect("partner");
    rejecting.set_default(Reply::status(400));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("rules")).expect("rules dir");
    std::fs::write(
        dir.path().join("rules/aff.toml"),
        format!(
            r#"
[destination]
url = "{}?eid={{event_id}}"
method = "GET"
retry = {{ max_attempts = 1000, give_up_after = "1h", initial_backoff = "50ms", max_backoff = "500ms" }}

[privacy]
allow = ["event_id"]
"#,
            partner.url("/postback")
        ),
    )
    .expect("rule");
    std::fs::write(
        dir.path().join("rules/rejecting.toml"),
        format!(
            "[destination]\nurl = \"{}?eid={{event_id}}\"\nmethod = \"GET\"\n[privacy]\nallow = [\"event_id\"]\n",
            rejecting.url("/pb")
        ),
    )
    .expect("rule");
    std::fs::write(
        dir.path().join("postback-relay.toml"),
        config_text(&store.config("2s")),
    )
    .expect("config");

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut accepted: HashSet<usize> = HashSet::new();
    let mut refused: HashSet<usize> = HashSet::new();
    let mut cut_off: HashSet<usize> = HashSet::new();
    let mut next = 0usize;
    let mut logs = String::new();

    for round in 0..3 {
        let mut relay = spawn_relay(dir.path());
        let kill_after = Duration::from_millis(300 + rand::random::<u64>() % 900);
        let started = std::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        // keep 16 requests in flight until the kill
        let mut killed = false;
        loop {
            while tasks.len() < 16 && !killed {
                let (c, b, i) = (client.clone(), relay.base.clone(), next);
                next += 1;
                tasks.spawn(async move { (i, send_one(&c, &b, i).await) });
            }
            if !killed && started.elapsed() >= kill_after {
                relay.kill(); // kill -9
                killed = true;
            }
            match tasks.join_next().await {
                Some(Ok((i, outcome))) => match outcome {
                    Sent::Accepted => {
                        accepted.insert(i);
                    }
                    Sent::Refused(_) => {
                        refused.insert(i);
                    }
                    Sent::CutOff => {
                        cut_off.insert(i);
                    }
                },
                Some(Err(e)) => panic!("task failed: {e}"),
                None => break,
            }
        }
        logs.push_str(&relay.log());
        assert!(
            !accepted.is_empty(),
            "round {round}: nothing was accepted before the kill"
        );
    }

    // Restart with the partner up: everything accepted must arrive.
    partner.set_default(Reply::ok());
    // Every relay is dead now: requests from here on are answered 200.
    let answered_from = partner.requests().len();
    let mut relay = spawn_relay(dir.path());
    let delivered = || event_numbers(partner.requests().iter().skip(answered_from));
    eventually(60, || {
        let done = accepted.is_subset(&delivered());
        async move { done }
    })
    .await;
    let got = delivered();
    let missing: Vec<_> = accepted.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "accepted but never delivered: {missing:?} (accepted {}, cut off {})",
        accepted.len(),
        cut_off.len()
    );
    let wrongly: Vec<_> = refused.intersection(&got).collect();
    assert!(wrongly.is_empty(), "refused but delivered: {wrongly:?}");
    assert!(
        refused.len() >= 10,
        "the forged requests were refused: {}",
        refused.len()
    );

    // Dead letters in play: every accepted event reached the rejecting partner too
    // and ended in its dead-letter queue, across the kills.
    let rejected_ids = || event_numbers(&rejecting.requests());
    eventually(30, || {
        let done = accepted.is_subset(&rejected_ids());
        async move { done }
    })
    .await;
    let reached_rejecting = rejected_ids();
    let missing: Vec<_> = accepted.difference(&reached_rejecting).collect();
    assert!(
        missing.is_empty(),
        "accepted but never sent to the rejecting partner: {missing:?}"
    );
    assert!(
        refused.is_disjoint(&reached_rejecting),
        "a refused event reached the rejecting partner"
    );
    let admin = reqwest::Client::new();
    let dlq_size = || async {
        let v = admin_get_at(&admin, &relay.base, "/admin/destinations").await;
        v["destinations"]
            .as_array()
            .and_then(|a| a.iter().find(|d| d["name"] == "rejecting"))
            .and_then(|d| d["dlq_size"].as_u64())
            .unwrap_or(0)
    };
    eventually(30, || async { dlq_size().await as usize >= accepted.len() }).await;
    let dead = dlq_size().await as usize;
    assert!(
        dead >= accepted.len() && dead <= accepted.len() + cut_off.len(),
        "dead letters {dead}, accepted {}, cut off {}",
        accepted.len(),
        cut_off.len()
    );
    eprintln!(
        "crash test ({}): {} accepted, {} refused, {} cut off by the kills (may or may not be committed), {} delivered",
        store.name(),
        accepted.len(),
        refused.len(),
        cut_off.len(),
        got.len()
    );
    relay.kill();
    logs.push_str(&relay.log());
    assert!(
        !logs.contains(CANARY_EMAIL),
        "a log line contains the event's e-mail"
    );
    assert!(!logs.contains("clk-"), "a log line contains a click ID");
}
