//! The crash checker: kill -9 the real binary at chosen points under load, restart it
//! on the same data, and check the whole history at the end:
//!
//! - every event answered 202 reaches every partner its rules match, at least once
//!   (the rejecting partner: at least once, and it is in the dead-letter queue);
//! - nothing that was not accepted (401, 503) is ever delivered;
//! - duplicate deliveries per partner are counted and reported, and are bounded by
//!   the deliveries that can be in flight at a kill: the destination's concurrency
//!   limit (a claimed, unsettled delivery holds one of its slots) times the kills;
//! - dead letters are neither lost nor doubled by kills during dead-lettering and
//!   replay; logs hold no event data;
//! - every attempt at one delivery, across kills, retries and replays, carries the
//!   same `webhook-id`.
//!
//! Kill points, in turn: under ingest load (accepts and group commits in flight),
//! during deliveries (a partner holds requests), during dead-lettering (the rejecting
//! partner is answering), right after a DLQ replay was requested.
//!
//! `PBR_CRASH_KILLS` sets the number of kills (default 4, one of each point; the long
//! mode is 20: `PBR_CRASH_KILLS=20 cargo test --test crash -- --nocapture`).
//! `PBR_TEST_STORE` picks the store backend (see `common::store_section`).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use postback_relay::fake_partner::{FakePartner, RecordedRequest, Reply};

use common::{admin_get_at, config_text, signed_request, RelayProcess, ADMIN_TOKEN};

const CANARY_EMAIL: &str = "crash.canary.51d2@example.com";
/// Each destination's `concurrency`: the most deliveries it has claimed at once.
const CONCURRENCY: usize = 4;
const SENDERS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillPoint {
    /// Requests in flight: accepts waiting on their group commit.
    Ingest,
    /// The `slow` partner holds requests it has not answered yet.
    Delivery,
    /// The rejecting partner is answering 400s: dead-letter commits in flight.
    DeadLettering,
    /// Right after `POST /admin/dlq/replay` was sent.
    Replay,
}

impl KillPoint {
    fn nth(n: usize) -> KillPoint {
        [
            KillPoint::Ingest,
            KillPoint::Delivery,
            KillPoint::DeadLettering,
            KillPoint::Replay,
        ][n % 4]
    }
}

/// The partners: `slow` answers 200 after 30 ms, `flaky` alternates 503 and 200,
/// `rejecting` answers 400 (every delivery ends in its dead-letter queue).
struct Partners {
    slow: FakePartner,
    flaky: FakePartner,
    rejecting: FakePartner,
}

impl Partners {
    async fn start() -> Partners {
        let slow = FakePartner::start().await.expect("partner");
        slow.set_default(Reply::ok().delay(Duration::from_millis(30)));
        let flaky = FakePartner::start().await.expect("partner");
        flaky.enqueue((0..50_000).map(|i| Reply::status(if i % 2 == 0 { 503 } else { 200 })));
        let rejecting = FakePartner::start().await.expect("partner");
        rejecting.set_default(Reply::status(400).delay(Duration::from_millis(10)));
        Partners {
            slow,
            flaky,
            rejecting,
        }
    }

    fn all(&self) -> [(&'static str, &FakePartner); 3] {
        [
            ("slow", &self.slow),
            ("flaky", &self.flaky),
            ("rejecting", &self.rejecting),
        ]
    }
}

fn write_setup(dir: &Path, partners: &Partners) {
    std::fs::create_dir_all(dir.join("rules")).expect("rules dir");
    for (name, partner) in partners.all() {
        let rule = format!(
            r#"[destination]
url = "{}?eid={{event_id}}"
method = "GET"
concurrency = {CONCURRENCY}
retry = {{ max_attempts = 1000, give_up_after = "1h", initial_backoff = "20ms", max_backoff = "200ms" }}

[privacy]
allow = ["event_id"]
"#,
            partner.url("/pb")
        );
        std::fs::write(dir.join(format!("rules/{name}.toml")), rule).expect("rule");
    }
    // The breaker stays closed: the flaky partner fails every other request.
    let config = config_text(&common::store_section()).replace(
        "allow_private_networks = true\n",
        "allow_private_networks = true\nbreaker_failures = 1000000\n",
    );
    std::fs::write(dir.join("postback-relay.toml"), config).expect("config");
}

/// Event numbers (`eid=ev-N`) of these partner requests, with how often each came.
/// With `delivered_only`, only the requests the partner answered (or was answering)
/// with a 2xx: deliveries, not failed attempts.
fn counts<'a>(
    requests: impl IntoIterator<Item = &'a RecordedRequest>,
    delivered_only: bool,
) -> HashMap<usize, usize> {
    let mut out = HashMap::new();
    for r in requests {
        if delivered_only && !(200..300).contains(&r.status) {
            continue;
        }
        if let Some(n) = r
            .target
            .split("eid=ev-")
            .nth(1)
            .and_then(|s| s.parse().ok())
        {
            *out.entry(n).or_default() += 1;
        }
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Accepted,
    Refused,
    /// The connection died with the relay: committed or not, we cannot know.
    CutOff,
}

async fn send_one(client: &reqwest::Client, base: &str, i: usize) -> Sent {
    let body = serde_json::json!({
        "event_id": format!("ev-{i}"), "event_name": "purchase", "click_id": format!("clk-{i}"),
        "user": {"email": CANARY_EMAIL}, "properties": {"value": i}
    })
    .to_string();
    // One request in ten is forged (signed over other bytes): refused, never delivered.
    let signed: &[u8] = if i % 10 == 7 {
        b"something else"
    } else {
        body.as_bytes()
    };
    let resp = signed_request(
        client,
        base,
        &format!("msg-{i}"),
        &body,
        "application/json",
        signed,
    )
    .send()
    .await;
    let Ok(r) = resp else {
        return Sent::CutOff;
    };
    let status = r.status().as_u16();
    match r.json::<serde_json::Value>().await {
        Ok(v) if status == 202 && v["accepted"] == 1 => Sent::Accepted,
        Ok(_) => Sent::Refused,
        Err(_) => Sent::CutOff,
    }
}

#[derive(Default)]
struct History {
    accepted: HashSet<usize>,
    refused: HashSet<usize>,
    cut_off: HashSet<usize>,
    next: usize,
}

/// Waits until `cond` holds (polling every millisecond) or `within` passes.
async fn until(within: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    cond()
}

/// Waits for the moment `point` names (load keeps running meanwhile); the kill
/// follows at once. Returns what was seen at that moment.
async fn reach(point: KillPoint, relay: &RelayProcess, partners: &Partners) -> String {
    let jitter = Duration::from_millis(rand::random::<u64>() % 25);
    // Load first, in every life.
    tokio::time::sleep(Duration::from_millis(100 + rand::random::<u64>() % 200)).await;
    match point {
        KillPoint::Ingest => {
            tokio::time::sleep(Duration::from_millis(150 + rand::random::<u64>() % 600)).await;
            "ingest load".into()
        }
        KillPoint::Delivery => {
            let p = &partners.slow;
            let held = until(Duration::from_secs(5), || {
                p.request_count() > p.answered_count()
            })
            .await;
            tokio::time::sleep(jitter).await;
            format!("delivery (slow partner holding requests: {held})")
        }
        KillPoint::DeadLettering => {
            let p = &partners.rejecting;
            let seen = p.request_count();
            let more = until(Duration::from_secs(5), || p.request_count() > seen).await;
            tokio::time::sleep(jitter).await;
            format!("dead-lettering (rejecting partner answering: {more})")
        }
        KillPoint::Replay => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let client = reqwest::Client::new();
            let replay = client
                .post(format!("{}/admin/dlq/replay", relay.base))
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body(r#"{"destination": "rejecting"}"#)
                .send();
            // Killed while the replay is answered or just after: either way.
            let replayed = match tokio::time::timeout(jitter, replay).await {
                Ok(Ok(r)) => r.text().await.unwrap_or_default(),
                _ => "(no answer yet)".into(),
            };
            format!("dlq replay {replayed}")
        }
    }
}

/// One life of the relay: load, then kill -9 at `point`.
async fn one_round(n: usize, dir: &Path, partners: &Partners, h: &mut History) -> String {
    let point = KillPoint::nth(n);
    let mut relay = RelayProcess::spawn(&dir.join("postback-relay.toml"), "debug");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut tasks = tokio::task::JoinSet::new();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for _ in 0..SENDERS {
        let (c, b, s) = (client.clone(), relay.base.clone(), stop.clone());
        let first = h.next;
        h.next += 100_000;
        tasks.spawn(async move {
            let mut out = Vec::new();
            let mut i = first;
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                let sent = send_one(&c, &b, i).await;
                let cut = sent == Sent::CutOff;
                out.push((i, sent));
                i += 1;
                if cut {
                    break;
                }
            }
            out
        });
    }
    // Requests cut off by earlier kills stay unanswered: count this life's only.
    let unanswered = |p: &FakePartner| p.request_count() - p.answered_count();
    let before: Vec<usize> = partners.all().iter().map(|(_, p)| unanswered(p)).collect();
    let seen = reach(point, &relay, partners).await;
    let in_flight: Vec<String> = partners
        .all()
        .iter()
        .zip(before)
        .map(|((name, p), b)| format!("{name} {}", unanswered(p).saturating_sub(b)))
        .collect();
    relay.kill();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = h.accepted.len();
    while let Some(done) = tasks.join_next().await {
        for (i, sent) in done.expect("sender") {
            match sent {
                Sent::Accepted => h.accepted.insert(i),
                Sent::Refused => h.refused.insert(i),
                Sent::CutOff => h.cut_off.insert(i),
            };
        }
    }
    let line = format!(
        "kill {:>2}: {seen}; accepted this life {}; partner requests unanswered at the kill: {}",
        n + 1,
        h.accepted.len() - before,
        in_flight.join(", ")
    );
    eprintln!("{line}");
    relay.log()
}

fn kills() -> usize {
    std::env::var("PBR_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_every_point_loses_no_accepted_event_and_bounds_duplicates() {
    let partners = Partners::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_setup(dir.path(), &partners);
    let mut h = History::default();
    let mut logs = String::new();
    let kills = kills();
    for n in 0..kills {
        logs.push_str(&one_round(n, dir.path(), &partners, &mut h).await);
    }
    assert!(!h.accepted.is_empty(), "nothing was accepted");

    // The last life: no more kills; everything accepted must arrive.
    partners.slow.set_default(Reply::ok());
    let mut relay = RelayProcess::spawn(&dir.path().join("postback-relay.toml"), "debug");
    let arrived = |p: &FakePartner| counts(&p.requests(), false);
    // Looked at twice a second: each look copies every recorded request, under the
    // partner's lock, and must not starve the relay it waits for.
    let mut all_arrived = false;
    for _ in 0..600 {
        all_arrived = partners.all().iter().all(|(_, p)| {
            let got = arrived(p);
            h.accepted.iter().all(|i| got.contains_key(i))
        });
        if all_arrived {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !all_arrived {
        let behind: Vec<String> = partners
            .all()
            .iter()
            .map(|(name, p)| {
                let got = arrived(p);
                let missing = h.accepted.iter().filter(|i| !got.contains_key(i)).count();
                format!("{name}: {missing} missing")
            })
            .collect();
        let status =
            admin_get_at(&reqwest::Client::new(), &relay.base, "/admin/destinations").await;
        let log = relay.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!(
            "not every accepted event arrived within 300 s: {}\ndestinations: {status}\nlog, newest first:\n{}",
            behind.join(", "),
            tail.join("\n")
        );
    }
    let summary: Vec<String> = partners
        .all()
        .iter()
        .map(|(name, p)| check_partner(name, p, &h, kills))
        .collect();
    let dead = rejecting_dlq(&relay).await;
    let accepted_or_cut = h.accepted.len() + h.cut_off.len();
    assert!(
        dead >= h.accepted.len() && dead <= accepted_or_cut,
        "dead letters {dead}: every accepted event once (accepted {}, cut off {})",
        h.accepted.len(),
        h.cut_off.len()
    );
    relay.kill();
    logs.push_str(&relay.log());
    assert!(!logs.contains(CANARY_EMAIL), "a log line holds the e-mail");
    assert!(!logs.contains("clk-"), "a log line holds a click ID");
    assert!(!logs.contains("panicked"), "a panic in the logs");
    eprintln!(
        "crash checker: {kills} kills; {} accepted, {} refused, {} cut off by the kills (committed or not); \
         all accepted delivered to every partner; none refused delivered; {}; rejecting DLQ {dead}",
        h.accepted.len(),
        h.refused.len(),
        h.cut_off.len(),
        summary.join("; ")
    );
}

/// One partner's history against the senders': at least once, nothing refused or
/// unknown, duplicates within the bound. Returns its line of the report.
fn check_partner(name: &str, p: &FakePartner, h: &History, kills: usize) -> String {
    let got = counts(&p.requests(), false);
    let missing: Vec<_> = h.accepted.iter().filter(|i| !got.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{name}: accepted but never delivered: {missing:?}"
    );
    let wrongly: Vec<_> = h.refused.iter().filter(|i| got.contains_key(i)).collect();
    assert!(
        wrongly.is_empty(),
        "{name}: refused but delivered: {wrongly:?}"
    );
    let unknown: Vec<_> = got
        .keys()
        .filter(|i| !h.accepted.contains(i) && !h.cut_off.contains(i))
        .collect();
    assert!(
        unknown.is_empty(),
        "{name}: delivered but never sent: {unknown:?}"
    );
    // Every attempt at one event's delivery, before and after each kill -9, retries
    // and replays included, carries the same webhook-id.
    let mut ids: HashMap<usize, HashSet<String>> = HashMap::new();
    for r in p.requests() {
        let n = r
            .target
            .split("eid=ev-")
            .nth(1)
            .and_then(|s| s.parse().ok());
        if let Some(n) = n {
            let id = r
                .header("webhook-id")
                .expect("every postback has a webhook-id");
            let id = id.to_string();
            ids.entry(n).or_default().insert(id);
        }
    }
    let changed: Vec<_> = ids.iter().filter(|(_, v)| v.len() != 1).collect();
    assert!(
        changed.is_empty(),
        "{name}: one event's delivery went out under several webhook-ids: {changed:?}"
    );
    if name == "rejecting" {
        // Replays re-send on purpose: counted, not bounded.
        let resent: usize = got.values().map(|c| c - 1).sum();
        return format!("{name}: {resent} re-sends (replays included)");
    }
    // Deliveries beyond the first (failed attempts are retries, not duplicates).
    let extra: usize = counts(&p.requests(), true)
        .values()
        .map(|c| c.saturating_sub(1))
        .sum();
    let bound = kills * CONCURRENCY;
    assert!(
        extra <= bound,
        "{name}: {extra} duplicate deliveries, more than {kills} kills x {CONCURRENCY} in flight"
    );
    format!("{name}: {extra} duplicates (bound {bound})")
}

async fn rejecting_dlq(relay: &RelayProcess) -> usize {
    let client = reqwest::Client::new();
    let size = || async {
        let v = admin_get_at(&client, &relay.base, "/admin/destinations").await;
        v["destinations"]
            .as_array()
            .and_then(|a| a.iter().find(|d| d["name"] == "rejecting"))
            .map(|d| {
                (
                    d["dlq_size"].as_u64().unwrap_or(0),
                    d["queue_depth"].as_u64().unwrap_or(0),
                )
            })
            .unwrap_or((0, 0))
    };
    // Settled: nothing of it left in the queue (replays go back to the dead letters).
    for _ in 0..1500 {
        let (dead, queued) = size().await;
        if queued == 0 && dead > 0 {
            return dead as usize;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    size().await.0 as usize
}
