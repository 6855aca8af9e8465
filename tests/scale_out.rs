//! Several relays on one Redis, with the real binary and real (fake) partners: the
//! same events sent to two relays at once reach each partner exactly once; a relay
//! killed with SIGKILL while holding deliveries has them delivered by the other after
//! the claim timeout; Redis going away is a 503 with `Retry-After` and an unready
//! relay, and both ingest and delivery resume by themselves when it returns.
//!
//! Needs a Redis (`PBR_TEST_REDIS_URL`, default 127.0.0.1:6379) and, for the last
//! test, `redis-server` on PATH: without them the tests print why and pass, except in
//! CI (`CI=true`), where they fail.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use postback_relay::fake_partner::{FakePartner, RecordedRequest, Reply};
use postback_relay::own_sentinel::OwnSentinel;
use serde_json::Value;

use common::*;

/// A GET postback with the event ID in its URL.
fn rule(url: &str, timeout: &str) -> String {
    GetRule::event_id_at(url)
        .timeout(timeout)
        .concurrency(16)
        .retry(100, "50ms", "500ms")
        .text()
}

/// A relay directory (config, rules) on `store`; returns the config path.
fn relay_dir(dir: &Path, store: &TestStore, rules: &[(&str, String)]) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("rules")).expect("rules dir");
    for (name, text) in rules {
        std::fs::write(dir.join(format!("rules/{name}.toml")), text).expect("rule");
    }
    let config = dir.join("postback-relay.toml");
    std::fs::write(&config, config_text(&store.config("2s"))).expect("config");
    config
}

/// How many requests carried each event ID.
fn per_event(requests: &[RecordedRequest]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in requests {
        if let Some(eid) = r.target.split("eid=").nth(1) {
            *m.entry(eid.to_owned()).or_insert(0) += 1;
        }
    }
    m
}

async fn idle(client: &reqwest::Client, base: &str) -> bool {
    let v = admin_get_at(client, base, "/admin/destinations").await;
    v["destinations"].as_array().is_some_and(|ds| {
        ds.iter()
            .all(|d| d["queue_depth"] == 0 && d["in_flight"] == 0)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_redis_deliver_each_event_once_per_destination() {
    let Some(store) = TestStore::redis("two_relays_on_one_redis") else {
        return;
    };
    const N: usize = 150;
    let aff = FakePartner::start().await.expect("partner");
    let net = FakePartner::start().await.expect("partner");
    let rules = vec![
        ("aff", rule(&aff.url("/a"), "5s")),
        ("net", rule(&net.url("/n"), "5s")),
    ];
    let (d1, d2) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let r1 = RelayProcess::spawn(&relay_dir(d1.path(), &store, &rules), "info");
    let r2 = RelayProcess::spawn(&relay_dir(d2.path(), &store, &rules), "info");
    let client = reqwest::Client::new();

    // Every event goes to both relays at once, as a retrying sender behind a load
    // balancer would send it.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        for (n, base) in [(1, r1.base.clone()), (2, r2.base.clone())] {
            let c = client.clone();
            tasks.spawn(async move {
                let body = event(&format!("ev-{i}"), "purchase", &format!("clk-{i}"));
                let (s, v) = post_json_to(&c, &base, &format!("msg-{i}-{n}"), &body).await;
                (i, s, v)
            });
        }
    }
    let mut outcomes: HashMap<usize, Vec<String>> = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        let (i, status, v) = done.expect("join");
        assert_eq!(status, 202, "{v}");
        let st = v["results"][0]["status"].as_str().unwrap_or("").to_owned();
        outcomes.entry(i).or_default().push(st);
    }
    for (i, mut o) in outcomes {
        o.sort();
        assert_eq!(o, vec!["accepted", "duplicate"], "event {i}");
    }

    assert!(aff.wait_for_requests(N, Duration::from_secs(60)).await);
    assert!(net.wait_for_requests(N, Duration::from_secs(60)).await);
    assert!(
        eventually(60, || async {
            idle(&client, &r1.base).await && idle(&client, &r2.base).await
        })
        .await,
        "both relays drained"
    );
    for (name, p) in [("aff", &aff), ("net", &net)] {
        let seen = per_event(&p.requests());
        assert_eq!(seen.len(), N, "{name}: every event arrived");
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
        assert!(twice.is_empty(), "{name}: sent more than once: {twice:?}");
    }
    let logs = format!("{}{}", r1.log(), r2.log());
    assert!(!logs.contains("clk-"), "a log line contains a click ID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_holding_deliveries_has_them_delivered_by_the_other() {
    let Some(store) = TestStore::redis("a_relay_killed_holding_deliveries") else {
        return;
    };
    const N: usize = 10;
    let partner = FakePartner::start().await.expect("partner");
    partner.set_default(Reply::hang());
    let rules = vec![("aff", rule(&partner.url("/pb"), "60s"))];
    let (d1, d2) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut holder = RelayProcess::spawn(&relay_dir(d1.path(), &store, &rules), "info");
    let client = reqwest::Client::new();
    for i in 0..N {
        let body = event(&format!("ev-{i}"), "purchase", &format!("clk-{i}"));
        let (s, v) = post_json_to(&client, &holder.base, &format!("m-{i}"), &body).await;
        assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    }
    // The partner hangs: deliveries claimed by the first relay stay in flight (as
    // many as its adaptive controller starts with: it grows only on answers), the
    // rest wait in the stream.
    assert!(partner.wait_for_requests(4, Duration::from_secs(30)).await);
    holder.kill();
    let before = partner.requests().len();
    partner.set_default(Reply::ok());
    // The heir starts once the holder is dead (a heir running beside it would claim
    // what the holder had not, and its requests would hang too).
    let heir = RelayProcess::spawn(&relay_dir(d2.path(), &store, &rules), "info");

    let delivered = || per_event(&partner.requests()[before..]);
    assert!(
        eventually(60, || {
            let n = delivered().len();
            async move { n == N }
        })
        .await,
        "the other relay delivered {} of {N}",
        delivered().len()
    );
    assert!(eventually(30, || idle(&client, &heir.base)).await);
    let once = delivered();
    assert!(once.values().all(|n| *n == 1), "{once:?}");
    let v = admin_get_at(&client, &heir.base, "/admin/destinations").await;
    let aff: &Value = &v["destinations"][0];
    assert_eq!(
        (aff["queue_depth"].as_u64(), aff["dlq_size"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
}

/// A `redis-server` of this test's own, with an append-only file, to stop and start.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The port of the primary this one replicates.
    replica_of: Option<u16>,
    /// More `redis-server` arguments, for the next `run`.
    extra: Vec<String>,
}

impl OwnRedis {
    fn start(test: &str) -> Option<OwnRedis> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status();
        if found.is_err() {
            skip(
                test,
                "redis-server is not installed (scripts/ensure-redis.sh installs it)",
            );
            return None;
        }
        let mut r = OwnRedis {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            replica_of: None,
            extra: Vec::new(),
        };
        r.run();
        Some(r)
    }

    /// A replica of the Redis on `primary`.
    fn replica(test: &str, primary: u16) -> Option<OwnRedis> {
        let mut r = OwnRedis::start(test)?;
        r.stop();
        r.replica_of = Some(primary);
        r.run();
        Some(r)
    }

    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(
                self.replica_of
                    .iter()
                    .flat_map(|p| ["--replicaof".to_string(), format!("127.0.0.1 {p}")]),
            )
            .args(&self.extra)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            // Pacing: the poll interval of a condition wait (400 tries).
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not listen on {}", self.port);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A relay started while Redis loads its data set after a restart waits for the load
/// and then serves, instead of exiting at once with "LOADING" (under a service
/// manager, exits a second apart soon reach its restart limit, and the relay stays
/// down after Redis is back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_started_while_redis_loads_its_data_set_waits_then_serves() {
    const TEST: &str = "a_relay_started_while_redis_loads_its_data_set_waits_then_serves";
    let Some(mut redis) = OwnRedis::start(TEST) else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let mut conn = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("connect to the test's Redis");
    // 7,000 keys in the append-only file's base (an RDB image), each loaded ~1 ms
    // late below: about 8 s of LOADING after the restart, so the load is still going
    // when the relay starts.
    let _: () = redis::cmd("EVAL")
        .arg("for i = 1, 7000 do redis.call('SET', 'fill:' .. i, string.rep('x', 100)) end")
        .arg(0)
        .query(&mut conn)
        .expect("fill");
    let _: String = redis::cmd("BGREWRITEAOF")
        .query(&mut conn)
        .expect("rewrite");
    let rewritten = eventually(30, || {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query(&mut conn)
            .unwrap_or_default();
        let done = info.contains("aof_rewrite_in_progress:0")
            && info.contains("aof_rewrite_scheduled:0")
            && info.contains("aof_last_bgrewrite_status:ok");
        async move { done }
    })
    .await;
    assert!(rewritten, "the append-only file was rewritten");
    redis.stop();
    // Commands are answered between every KiB loaded (as between every 2 MiB of a
    // real, fast load), so that the relay meets LOADING, not a silent wait.
    redis.extra = [
        "--key-load-delay",
        "1000",
        "--loading-process-events-interval-bytes",
        "1024",
    ]
    .map(String::from)
    .to_vec();
    redis.run();
    // A bare command line: a client library's own set-up commands could wait out
    // the load before the probe is sent.
    let loading = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).expect("probe");
        s.write_all(b"GET fill:1\r\n").expect("probe write");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).expect("probe read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(
        loading.starts_with("-LOADING"),
        "Redis was still loading when the relay started: {loading:?}"
    );

    let partner = FakePartner::start().await.expect("partner");
    let store = format!("\n[store]\nbackend = \"redis\"\nredis_url = \"{url}\"\n");
    let relay = TestRelay::start(&[("aff", &rule(&partner.url("/pb"), "5s"))], &store).await;
    let mut conn = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("connect to the restarted Redis");
    let loaded: Result<String, _> = redis::cmd("GET").arg("fill:1").query(&mut conn);
    assert!(
        loaded.is_ok(),
        "the relay started after the load: {loaded:?}"
    );
    assert_eq!(readyz(&relay.client, &relay.base).await, 200);
    let (s, v) = relay
        .post_json("m-1", &event("ev-1", "purchase", "clk-1"))
        .await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    assert!(partner.wait_for_requests(1, Duration::from_secs(30)).await);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_is_a_503_with_retry_after_and_the_relay_resumes_when_it_returns() {
    let Some(mut redis) = OwnRedis::start("redis_away_is_a_503") else {
        return;
    };
    let partner = FakePartner::start().await.expect("partner");
    let store = format!(
        "\n[store]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}\"\n",
        redis.port
    );
    let relay = TestRelay::start(&[("aff", &rule(&partner.url("/pb"), "5s"))], &store).await;
    let (s, _) = relay
        .post_json("m-1", &event("ev-1", "purchase", "clk-1"))
        .await;
    assert_eq!(s, 202);
    assert!(partner.wait_for_requests(1, Duration::from_secs(30)).await);

    redis.stop();
    let (s, v, headers) = relay
        .post_signed(
            "m-2",
            &event("ev-2", "purchase", "clk-2"),
            "application/json",
        )
        .await;
    assert_eq!(s, 503, "{v}");
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    assert_eq!(readyz(&relay.client, &relay.base).await, 503);

    redis.run();
    let client = relay.client.clone();
    let base = relay.base.clone();
    assert!(
        eventually(60, || async { readyz(&client, &base).await == 200 }).await,
        "ready again once Redis is back"
    );
    let (s, v) = relay
        .post_json("m-2", &event("ev-2", "purchase", "clk-2"))
        .await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    let (s, v) = relay
        .post_json("m-1", &event("ev-1", "purchase", "clk-1"))
        .await;
    assert_eq!(
        (s, v["duplicates"].as_u64()),
        (202, Some(1)),
        "the mark outlived the outage: {v}"
    );
    assert!(partner.wait_for_requests(2, Duration::from_secs(30)).await);
    let seen = per_event(&partner.requests());
    assert_eq!(seen.get("ev-2"), Some(&1), "{seen:?}");
    relay.stop().await;
}

/// Issue 22, D1: Redis goes away for longer than the delivery worker retries a
/// settle (about 3 s) while deliveries are in flight. Once it is back, every accepted
/// event is delivered and settled within the claim timeout plus 5 s, with no relay
/// restart: a settle that failed is written once Redis answers, never held until
/// the relay restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_in_flight_through_a_redis_outage_are_settled_once_it_is_back() {
    let Some(mut redis) = OwnRedis::start("deliveries_in_flight_through_a_redis_outage") else {
        return;
    };
    const N: usize = 32;
    let claim_timeout = Duration::from_secs(2);
    let partner = FakePartner::start().await.expect("partner");
    // Slow enough that the first batch is still at the partner when Redis goes.
    partner.set_default(Reply::ok().delay(Duration::from_millis(1000)));
    let store = format!(
        "\n[store]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}\"\nredis_claim_timeout = \"2s\"\n",
        redis.port
    );
    let relay = TestRelay::start(&[("aff", &rule(&partner.url("/pb"), "10s"))], &store).await;
    for i in 0..N {
        let (s, v) = relay
            .post_json(
                &format!("m-{i}"),
                &event(&format!("ev-{i}"), "purchase", &format!("clk-{i}")),
            )
            .await;
        assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    }
    // A batch is in flight (claimed, at the partner) when Redis goes away.
    assert!(partner.wait_for_requests(1, Duration::from_secs(30)).await);
    redis.stop();
    // The outage outlasts the worker's five settle tries, each of which waits for the
    // connection's own reconnect attempts (in all about 10 s).
    let outage = std::time::Instant::now() + Duration::from_secs(15);
    let (client, base) = (relay.client.clone(), relay.base.clone());
    while std::time::Instant::now() < outage {
        assert_eq!(readyz(&client, &base).await, 503, "Redis is down");
        // Pacing: the outage under test is sampled every 100 ms.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.run();
    let within = claim_timeout + Duration::from_secs(5);
    let settled =
        || async { per_event(&partner.requests()).len() == N && idle(&client, &base).await };
    let done = eventually(within.as_secs().max(1), settled).await;
    let v = admin_get_at(&client, &base, "/admin/destinations").await;
    assert!(
        done,
        "{} of {N} events reached the partner and the queue is {} within {within:?} of Redis's return",
        per_event(&partner.requests()).len(),
        v["destinations"]
    );
    assert_eq!(v["destinations"][0]["dlq_size"].as_u64(), Some(0), "{v}");
    relay.stop().await;
}

/// Issue 22, D4: with `redis_wait_replicas = 1` and no replica to confirm, the accept
/// reached Redis but cannot be confirmed: the 503 says the outcome is unknown and to
/// retry with the same webhook-id, never "nothing was accepted".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_accept_is_a_503_saying_the_outcome_is_unknown() {
    let Some(store) = TestStore::redis("an_unconfirmed_accept_is_a_503") else {
        return;
    };
    let partner = FakePartner::start().await.expect("partner");
    let config = format!(
        "{}redis_wait_replicas = 1\nredis_wait_timeout = \"100ms\"\n",
        store.config("2s")
    );
    let relay = TestRelay::start(&[("aff", &rule(&partner.url("/pb"), "5s"))], &config).await;
    let (s, v, headers) = relay
        .post_signed(
            "m-1",
            &event("ev-1", "purchase", "clk-1"),
            "application/json",
        )
        .await;
    assert_eq!(s, 503, "{v}");
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("unknown") && error.contains("same webhook-id"),
        "{error}"
    );
    assert!(!error.contains("nothing was accepted"), "{error}");
    relay.stop().await;
}

/// Posts an event until it is answered 202 (accepted, or a duplicate of an earlier
/// try whose outcome was unknown), for up to `secs`.
async fn accepted_within(relay: &TestRelay, id: &str, body: &str, secs: u64) -> bool {
    eventually(secs, || async {
        let (s, _) = relay.post_json(id, body).await;
        s == 202
    })
    .await
}

/// Issue 22, high availability: a relay that knows only the sentinel keeps serving
/// through a failover (the primary SIGKILLed, a replica promoted): accepts answer
/// 202 again within a bounded time, and the deliveries queued before the failover
/// are delivered from the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_behind_sentinel_keeps_serving_through_a_failover() {
    const TEST: &str = "a_relay_behind_sentinel_keeps_serving_through_a_failover";
    const NAME: &str = "pbrrelay";
    let Some(mut primary) = OwnRedis::start(TEST) else {
        return;
    };
    let (Some(r1), Some(r2)) = (
        OwnRedis::replica(TEST, primary.port),
        OwnRedis::replica(TEST, primary.port),
    ) else {
        return;
    };
    let sentinel = OwnSentinel::start(NAME, primary.port);
    sentinel.wait_replicas_in_sync(2);
    let partner = FakePartner::start().await.expect("partner");
    // The partner fails at first: the deliveries stay queued through the failover.
    partner.set_default(Reply::status(503));
    // A short claim timeout, as the other scale-out tests: a delivery whose settle was
    // still on the old primary when it was killed is claimed on the new one until the
    // claim times out (by design: it is then due again), and the test waits 30 s, not
    // the default 60.
    let store = format!(
        "\n[store]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"\nredis_sentinels = [\"127.0.0.1:{}\"]\nredis_sentinel_master = \"{NAME}\"\nredis_wait_replicas = 1\nredis_claim_timeout = \"2s\"\n",
        sentinel.port
    );
    // A short cool-down: the partner's 503s open the circuit, and it must not hold
    // the deliveries back for long once the partner answers.
    let config = config_text("").replace(
        "allow_private_networks = true\n",
        "allow_private_networks = true\nbreaker_cool_down = \"300ms\"\n",
    );
    // As many attempts as a rule allows: under a loaded machine the failover can take
    // long enough for 100 attempts (50-500 ms apart) to run out before the partner
    // answers 200, and a dead-lettered delivery is never sent.
    let aff = GetRule::event_id_at(&partner.url("/pb"))
        .timeout("5s")
        .concurrency(16)
        .retry(1000, "50ms", "500ms")
        .text();
    let relay = TestRelay::start_with_config(&[("aff", &aff)], &format!("{config}{store}")).await;
    for i in 1..=5 {
        let body = event(&format!("ev-{i}"), "purchase", &format!("clk-{i}"));
        assert!(accepted_within(&relay, &format!("m-{i}"), &body, 30).await);
    }
    assert!(partner.wait_for_requests(5, Duration::from_secs(30)).await);

    let killed = std::time::Instant::now();
    primary.stop();
    let promoted = sentinel.until("the sentinel promotes a replica", |c| {
        sentinel.primary_port(c).filter(|p| *p != primary.port)
    });
    assert!([r1.port, r2.port].contains(&promoted));
    let body = event("ev-6", "purchase", "clk-6");
    assert!(
        accepted_within(&relay, "m-6", &body, 30).await,
        "accepts answer 202 again after the failover"
    );
    eprintln!(
        "{TEST}: 202 again {:.1} s after the primary was killed",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(readyz(&relay.client, &relay.base).await, 200);

    partner.set_default(Reply::ok());
    let (client, base) = (relay.client.clone(), relay.base.clone());
    let delivered = eventually(30, || async {
        let ok = partner
            .requests()
            .iter()
            .filter(|r| r.status == 200)
            .count();
        ok >= 6 && idle(&client, &base).await
    })
    .await;
    let answered_200: Vec<String> = partner
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.target.clone())
        .collect();
    assert!(
        delivered,
        "every queued delivery was delivered from the new primary; 200s for {answered_200:?}, requests per event {:?}",
        per_event(&partner.requests())
    );
    let seen = per_event(&partner.requests());
    for i in 1..=6 {
        assert!(seen.contains_key(&format!("ev-{i}")), "ev-{i}: {seen:?}");
    }
    relay.stop().await;
}
