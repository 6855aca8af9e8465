//! The Redis backend against a real Redis: the contract suite and model test, then
//! what only a shared store can get wrong (two relays on one queue, a relay that
//! dies holding claims, Redis going away and coming back, Redis losing its data).
//!
//! Redis is `PBR_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`). Without one the
//! tests print why and pass; in CI (`CI=true`) a missing Redis fails them. Each
//! backend uses its own random key prefix and deletes its keys when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

mod sentinel;

use super::*;
use crate::store::contract::{self, becomes_ready, c, counts_of, event, key, Backend, NOW};

/// The test Redis, or `None` (with the reason printed) when there is none here.
pub fn test_redis(test: &str) -> Option<String> {
    let url =
        std::env::var("PBR_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let up = ::redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .and_then(|mut c| ::redis::cmd("PING").query::<String>(&mut c));
    match up {
        Ok(_) => Some(url),
        Err(e) => {
            skip(test, &format!("no Redis at {url} ({e}); set PBR_TEST_REDIS_URL or start redis-server (scripts/ensure-redis.sh)"));
            None
        }
    }
}

// `skip`: the one the integration tests use (prints SKIPPED, counted by
// scripts/test.sh; with `CI=true` a failure).
#[path = "../../../tests/common/skip.rs"]
mod skip;
use skip::skip;

fn random_prefix() -> String {
    let b: [u8; 6] = rand::random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("pbr-test-{hex}")
}

fn options(url: &str, prefix: &str, consumer: &str, dir: &Path) -> RedisOptions {
    RedisOptions {
        url: url.to_owned(),
        sentinels: None,
        prefix: prefix.to_owned(),
        consumer: consumer.to_owned(),
        // Long: in the contract, a claim is only ever taken back by a restart.
        claim_timeout: Duration::from_secs(3600),
        dedupe_window: Duration::from_secs(7 * 86_400),
        max_queued: 1_000_000,
        dlq_retention: Duration::from_secs(14 * 86_400),
        receipt_retention: Duration::from_secs(86_400),
        wait_replicas: 0,
        wait_timeout: Duration::from_secs(1),
        ca: None,
        data_dir: Some(dir.to_path_buf()),
    }
}

/// Deletes every key under `prefix`.
fn delete_prefix(url: &str, prefix: &str) {
    let Ok(mut conn) = ::redis::Client::open(url).and_then(|c| c.get_connection()) else {
        return;
    };
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}*"))
        .query(&mut conn)
        .unwrap_or_default();
    for k in keys {
        let _: Result<i64, _> = ::redis::cmd("DEL").arg(k).query(&mut conn);
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

struct OnRedis {
    url: String,
    prefix: String,
    dir: tempfile::TempDir,
    store: Option<Arc<dyn Store>>,
}

impl OnRedis {
    fn new(url: &str) -> OnRedis {
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = random_prefix();
        let store = block_on(RedisStore::open(options(url, &prefix, "c1", dir.path())))
            .expect("open the Redis store");
        OnRedis {
            url: url.to_owned(),
            prefix,
            dir,
            store: Some(Arc::new(store)),
        }
    }

    fn open_another(&self, consumer: &str, claim_timeout: Duration) -> RedisStore {
        let mut o = options(&self.url, &self.prefix, consumer, self.dir.path());
        o.claim_timeout = claim_timeout;
        block_on(RedisStore::open(o)).expect("open a second store")
    }
}

impl Drop for OnRedis {
    fn drop(&mut self) {
        delete_prefix(&self.url, &self.prefix);
    }
}

impl Backend for OnRedis {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone().expect("open")
    }

    /// A crash and a restart: the same consumer name on the same prefix, so the new
    /// process takes its predecessor's claims back at once.
    fn restart(&mut self) -> bool {
        self.store = None;
        let o = options(&self.url, &self.prefix, "c1", self.dir.path());
        let s = block_on(RedisStore::open(o)).expect("reopen");
        self.store = Some(Arc::new(s));
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_store_contract() {
    let Some(url) = test_redis("passes_the_store_contract") else {
        return;
    };
    let fresh = move || Box::new(OnRedis::new(&url)) as Box<dyn Backend>;
    contract::suite(&fresh).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn agrees_with_the_model(ops in prop::collection::vec(contract::model_op(), 1..40)) {
        let Some(url) = test_redis("agrees_with_the_model") else {
            return Ok(());
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let b = Box::new(OnRedis::new(&url));
            contract::run_model(b, ops).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_share_dedupe_and_split_the_queue() {
    let Some(url) = test_redis("two_relays_share_dedupe_and_split_the_queue") else {
        return;
    };
    let one = OnRedis::new(&url);
    let a = one.store();
    let b: Arc<dyn Store> = Arc::new(one.open_another("c2", Duration::from_secs(3600)));
    assert_eq!(a.dedupe_secret(), b.dedupe_secret(), "one secret for all");
    let mut tasks = Vec::new();
    for k in 0..40u64 {
        for s in [a.clone(), b.clone()] {
            tasks.push(tokio::spawn(async move {
                s.accept(vec![event(key(k), &["x"])], NOW).await
            }));
        }
    }
    let mut accepted = 0;
    for t in tasks {
        let out = t.await.expect("join").expect("accept");
        accepted += usize::from(matches!(out[0], AcceptOutcome::Accepted { .. }));
    }
    assert_eq!(accepted, 40, "each key accepted once across both relays");
    let from_a = a.claim_due("x", NOW, 25).await.expect("claim");
    let from_b = b.claim_due("x", NOW, 100).await.expect("claim");
    assert_eq!((from_a.len(), from_b.len()), (25, 15));
    let mut all: Vec<&str> = from_a
        .iter()
        .chain(&from_b)
        .map(|d| d.id.as_str())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 40, "no delivery handed to both");
    for d in &from_b {
        a.complete(&d.id).await.expect("settle another's claim");
    }
    assert_eq!(counts_of(&*b).await, vec![c("x", 25, 0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_of_a_dead_relay_go_to_another_after_the_timeout() {
    let Some(url) = test_redis("claims_of_a_dead_relay_go_to_another_after_the_timeout") else {
        return;
    };
    let one = OnRedis::new(&url);
    // Long enough that a loaded machine does not make the claim look abandoned
    // between the two claims below.
    let timeout = Duration::from_secs(2);
    let dying = one.open_another("dying", timeout);
    let heir = one.open_another("heir", timeout);
    one.store()
        .accept(vec![event(key(1), &["x"]), event(key(2), &["x"])], NOW)
        .await
        .expect("accept");
    let held = dying.claim_due("x", NOW, 10).await.expect("claim");
    assert_eq!(held.len(), 2);
    drop(dying);
    assert!(
        heir.claim_due("x", NOW, 10)
            .await
            .expect("claim")
            .is_empty(),
        "held, not yet abandoned"
    );
    let mut got = Vec::new();
    for _ in 0..400 {
        got.extend(heir.claim_due("x", NOW, 10).await.expect("claim"));
        if got.len() >= 2 {
            break;
        }
        // Pacing: the poll interval of a condition wait (400 tries).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ids: Vec<_> = got.iter().map(|d| d.id.clone()).collect();
    ids.sort();
    let mut want: Vec<_> = held.iter().map(|d| d.id.clone()).collect();
    want.sort();
    assert_eq!(ids, want, "the heir has them");
    for d in got {
        heir.complete(&d.id).await.expect("complete");
    }
    assert_eq!(counts_of(&heir).await, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_relay_keeps_its_claims_past_the_timeout() {
    let Some(url) = test_redis("a_live_relay_keeps_its_claims_past_the_timeout") else {
        return;
    };
    let one = OnRedis::new(&url);
    let timeout = Duration::from_secs(2);
    let slow = one.open_another("slow", timeout);
    let other = one.open_another("other", timeout);
    one.store()
        .accept(vec![event(key(1), &["x"])], NOW)
        .await
        .expect("accept");
    let held = slow.claim_due("x", NOW, 10).await.expect("claim");
    assert_eq!(held.len(), 1);
    // Several timeouts pass while the claim is held (a slow partner): the holder
    // renews it, so nobody else sends it meanwhile.
    for _ in 0..4 {
        // Pacing: the claim timeout passing is what this test is about.
        tokio::time::sleep(timeout).await;
        assert!(other
            .claim_due("x", NOW, 10)
            .await
            .expect("claim")
            .is_empty());
    }
    slow.complete(&held[0].id).await.expect("complete");
    let st = slow
        .lookup(&held[0].id)
        .await
        .expect("lookup")
        .expect("known");
    assert_eq!((st.state, st.attempts), ("delivered", 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_queued_an_accept_is_refused_whole() {
    let Some(url) = test_redis("past_max_queued_an_accept_is_refused_whole") else {
        return;
    };
    let one = OnRedis::new(&url);
    let mut o = options(&url, &one.prefix, "small", one.dir.path());
    o.max_queued = 2;
    let s = RedisStore::open(o).await.expect("open");
    s.accept(vec![event(key(1), &["a"])], NOW)
        .await
        .expect("one");
    let err = s
        .accept(vec![event(key(2), &["a"]), event(key(3), &["b"])], NOW)
        .await
        .expect_err("full");
    assert!(matches!(err, StoreError::Full { .. }), "{err}");
    assert_eq!(
        counts_of(&s).await,
        vec![c("a", 1, 0)],
        "nothing of it kept"
    );
    let out = s
        .accept(vec![event(key(2), &["a"])], NOW)
        .await
        .expect("fits");
    assert!(
        matches!(out[0], AcceptOutcome::Accepted { .. }),
        "key 2 not marked"
    );
}

/// One request's part of a grouped accept, and where its answer arrives.
fn part(
    events: &[EventToAccept],
) -> (
    group::Part,
    tokio::sync::oneshot::Receiver<StoreResult<group::Committed>>,
) {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let args = accept_args(events).expect("args").args;
    let p = group::Part {
        now_ms: NOW,
        events: events.len(),
        args,
        reply,
    };
    (p, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grouped_accept_answers_each_request_as_if_alone() {
    let Some(url) = test_redis("a_grouped_accept_answers_each_request_as_if_alone") else {
        return;
    };
    let one = OnRedis::new(&url);
    let mut o = options(&url, &one.prefix, "grouped", one.dir.path());
    o.max_queued = 5;
    let s = RedisStore::open(o).await.expect("open");
    // Three requests in ONE script call: the second repeats the first's key (a
    // duplicate within the group), the third has two events.
    let (p1, a1) = part(&[event(key(1), &["a", "b"])]);
    let (p2, a2) = part(&[event(key(1), &["a"])]);
    let (p3, a3) = part(&[event(key(2), &["a"]), event(key(3), &["b"])]);
    group::run_group(&s.inner, vec![p1, p2, p3]).await;
    let (r1, r2, r3) = (
        a1.await.expect("answer").expect("ok"),
        a2.await.expect("answer").expect("ok"),
        a3.await.expect("answer").expect("ok"),
    );
    assert_eq!(
        (r1.flags, r2.flags, r3.flags),
        (vec![1], vec![0], vec![1, 1])
    );
    assert!(r1.commit > 0 && r1.commit == r2.commit && r2.commit == r3.commit);
    assert_eq!(counts_of(&s).await, vec![c("a", 2, 0), c("b", 2, 0)]);
    // 4 of 5 queued: a duplicate grouped with a request of two deliveries; together
    // they would pass the bound, so the group is tried again request by request: the
    // duplicate is answered, not refused for the other's sake, which is refused.
    let (p4, a4) = part(&[event(key(2), &["a"])]);
    let (p5, a5) = part(&[event(key(9), &["a", "b"])]);
    group::run_group(&s.inner, vec![p4, p5]).await;
    assert_eq!(
        a4.await.expect("answer").expect("duplicate fits").flags,
        vec![0]
    );
    let full = a5.await.expect("answer").expect_err("full");
    assert!(matches!(full, StoreError::Full { .. }), "{full}");
    assert_eq!(counts_of(&s).await, vec![c("a", 2, 0), c("b", 2, 0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_no_plaintext_key_and_no_credential() {
    let Some(url) = test_redis("stores_no_plaintext_key_and_no_credential") else {
        return;
    };
    let one = OnRedis::new(&url);
    let mut ev = event(key(7), &["a"]);
    ev.deliveries[0]
        .request
        .headers
        .push(("Authorization".into(), "Bearer \u{1}META_TOKEN\u{1}".into()));
    one.store().accept(vec![ev], NOW).await.expect("accept");
    let mut conn = ::redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("connect");
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{{{}}}*", one.prefix))
        .query(&mut conn)
        .expect("keys");
    let dump: Vec<u8> = keys
        .iter()
        .flat_map(|k| {
            ::redis::cmd("DUMP")
                .arg(k)
                .query::<Vec<u8>>(&mut conn)
                .unwrap_or_default()
        })
        .collect();
    let text = String::from_utf8_lossy(&dump);
    assert!(text.contains("META_TOKEN"), "the marker is stored");
    assert!(!text.contains("Bearer secret"), "never a value");
}

/// Whether `redis-server` is on PATH; outside CI, says why a test is skipped.
fn redis_server_installed(test: &str) -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if found.is_err() {
        skip(
            test,
            "redis-server is not installed (scripts/ensure-redis.sh installs it)",
        );
        return false;
    }
    true
}

/// A `redis-server` of our own on a free port, to stop and start.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    persistent: bool,
    maxmemory: Option<&'static str>,
    /// The port of the primary this one replicates.
    replica_of: Option<u16>,
}

impl OwnRedis {
    /// `None` (printed) when `redis-server` is not installed, outside CI.
    fn start(test: &str, persistent: bool) -> Option<OwnRedis> {
        if !redis_server_installed(test) {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut r = OwnRedis {
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            persistent,
            maxmemory: None,
            replica_of: None,
        };
        r.run();
        Some(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        let aof = if self.persistent { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", aof, "--appendfsync", "always"])
            .args(self.maxmemory.iter().flat_map(|m| ["--maxmemory", m]))
            .args(
                self.replica_of
                    .iter()
                    .flat_map(|p| ["--replicaof".to_string(), format!("127.0.0.1 {p}")]),
            )
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            // Pacing: the poll interval of a condition wait (200 tries).
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not listen on {}", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_is_unavailable_and_back_is_ready() {
    let Some(mut server) = OwnRedis::start("redis_away_is_unavailable_and_back_is_ready", true)
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let s = RedisStore::open(options(&server.url(), "away", "c1", dir.path()))
        .await
        .expect("open");
    s.accept(vec![event(key(1), &["a"])], NOW)
        .await
        .expect("accept");
    server.kill();
    assert!(s.ready().await.is_err());
    let err = s
        .accept(vec![event(key(2), &["a"])], NOW)
        .await
        .expect_err("Redis is down");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    // Longer than the connection's own reconnect attempts: every call still fails
    // cleanly, and the store reconnects once Redis is back.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < until {
        assert!(s.claim_due("a", NOW, 10).await.is_err());
        // Pacing: paces the calls through the 5 s this test is about.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.run();
    assert!(
        becomes_ready(&s, Duration::from_secs(10)).await,
        "ready again once Redis is back"
    );
    let out = s
        .accept(vec![event(key(1), &["a"]), event(key(2), &["a"])], NOW)
        .await
        .expect("accept again");
    assert_eq!(out[0], AcceptOutcome::Duplicate, "the mark survived (AOF)");
    assert!(matches!(out[1], AcceptOutcome::Accepted { .. }));
    assert_eq!(counts_of(&s).await, vec![c("a", 2, 0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_back_without_its_data_is_reported_not_taken_as_empty() {
    let Some(mut server) = OwnRedis::start("redis_back_without_its_data", false) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let o = options(&server.url(), "lossy", "c1", dir.path());
    let s = RedisStore::open(o.clone()).await.expect("open");
    s.accept(vec![event(key(1), &["a"])], NOW)
        .await
        .expect("accept");
    server.kill();
    server.run();
    let mut err = None;
    for _ in 0..200 {
        match s.accept(vec![event(key(2), &["a"])], NOW).await {
            Err(StoreError::Unavailable(e)) if e.contains("lost") => {
                err = Some(e);
                break;
            }
            // Pacing: the poll interval of a condition wait (200 tries).
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Ok(_) => panic!("an emptied Redis was taken as an empty queue"),
        }
    }
    assert!(err.is_some(), "the loss is reported");
    assert!(s.ready().await.is_err());
    assert!(s.claim_due("a", NOW, 10).await.is_err());
    drop(s);
    let refused = RedisStore::open(o.clone()).await.err().expect("refused");
    assert!(
        refused.contains("redis.epoch") && refused.contains("lost"),
        "{refused}"
    );
    std::fs::remove_file(dir.path().join(EPOCH_FILE)).expect("operator accepts the loss");
    let s = RedisStore::open(o)
        .await
        .expect("starts on the data Redis has now");
    assert!(s.ready().await.is_ok());
}

/// Redis restored from an older snapshot (or failed over to a replica that missed the
/// latest writes) keeps its epoch but fewer commits: the relay notices at once (the
/// next accept, `/readyz`), stops, and refuses to start on it until the operator
/// deletes `redis.mark`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gone_back_to_an_older_snapshot_is_reported_not_taken_as_current() {
    let Some(url) = test_redis("redis_gone_back") else {
        return;
    };
    let on = OnRedis::new(&url);
    let s = on.store();
    for k in 1..=3 {
        s.accept(vec![event(key(k), &["a"])], NOW)
            .await
            .expect("accept");
    }
    assert!(s.ready().await.is_ok());
    // The snapshot from before the last two accepts comes back.
    let mut conn = ::redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("connect");
    let _: () = ::redis::cmd("HSET")
        .arg(format!("{{{}}}:meta", on.prefix))
        .arg("commits")
        .arg(1)
        .query(&mut conn)
        .expect("roll back");
    let why = s.ready().await.expect_err("not ready");
    assert!(why.contains("went back in time"), "{why}");
    assert!(matches!(
        s.accept(vec![event(key(4), &["a"])], NOW).await,
        Err(StoreError::Unavailable(_))
    ));
    drop(s);
    let o = options(&url, &on.prefix, "c2", on.dir.path());
    let refused = RedisStore::open(o.clone()).await.err().expect("refused");
    assert!(
        refused.contains("redis.mark")
            && refused.contains("commit 1")
            && refused.contains("commit 3"),
        "{refused}"
    );
    std::fs::remove_file(on.dir.path().join(mark::MARK_FILE)).expect("operator accepts the loss");
    let again = RedisStore::open(o)
        .await
        .expect("starts on the data Redis has now");
    assert!(again.ready().await.is_ok());
    again
        .accept(vec![event(key(5), &["a"])], NOW)
        .await
        .expect("accepts again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_refuses_whole_accepts_as_full() {
    let Some(mut server) = OwnRedis::start("out_of_memory_refuses_whole_accepts", false) else {
        return;
    };
    server.maxmemory = Some("3mb");
    server.kill();
    server.run();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = RedisStore::open(options(&server.url(), "oom", "c1", dir.path()))
        .await
        .expect("open");
    let mut accepted = 0u64;
    let mut full = None;
    for k in 0..10_000u64 {
        let mut ev = event(key(k), &["a", "b"]);
        for d in &mut ev.deliveries {
            d.request.body = Some("x".repeat(2_000));
        }
        match s.accept(vec![ev], NOW).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let err = full.expect("Redis ran out of memory");
    assert!(matches!(err, StoreError::Full { .. }), "{err}");
    assert_eq!(
        counts_of(&s).await,
        vec![c("a", accepted, 0), c("b", accepted, 0)],
        "every accept whole or not at all"
    );
    let marks: u64 = ::redis::Client::open(server.url().as_str())
        .and_then(|c| c.get_connection())
        .and_then(|mut c| ::redis::cmd("ZCARD").arg("{oom}:dedupe").query(&mut c))
        .expect("zcard");
    assert_eq!(marks, accepted, "no mark without its deliveries");
}

#[tokio::test]
async fn an_unreachable_redis_is_a_start_error_naming_it_without_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = options(
        &format!("redis://:hunter2@127.0.0.1:{port}"),
        "x",
        "c",
        dir.path(),
    );
    o.data_dir = None;
    let e = RedisStore::open(o).await.err().expect("no Redis there");
    assert!(
        e.contains("cannot reach Redis at redis://:***@127.0.0.1"),
        "{e}"
    );
    assert!(!e.contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_holding_nothing_are_forgotten_and_holders_kept() {
    let Some(url) = test_redis("consumers_holding_nothing_are_forgotten") else {
        return;
    };
    let one = OnRedis::new(&url);
    let done = one.open_another("done", Duration::from_secs(3600));
    let holding = one.open_another("holding", Duration::from_secs(3600));
    one.store()
        .accept(vec![event(key(1), &["x"]), event(key(2), &["x"])], NOW)
        .await
        .expect("accept");
    let d = done.claim_due("x", NOW, 1).await.expect("claim").remove(0);
    done.complete(&d.id).await.expect("complete");
    let held = holding.claim_due("x", NOW, 1).await.expect("claim");
    assert_eq!(held.len(), 1);
    let names = || {
        let mut conn = ::redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .expect("connect");
        let v: Vec<Vec<::redis::Value>> = ::redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(format!("{{{}}}:q:x", one.prefix))
            .arg("relay")
            .query(&mut conn)
            .expect("consumers");
        let mut n: Vec<String> = v
            .iter()
            .filter_map(|c| match c.get(1) {
                Some(::redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into()),
                _ => None,
            })
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(), vec!["done", "holding"]);
    // Pacing: longer than the 1 ms idle time `forget_consumers` is given below.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let gone = holding
        .inner
        .forget_consumers(Duration::from_millis(1))
        .await
        .expect("forget");
    assert_eq!((gone, names()), (1, vec!["holding".to_string()]));
    holding
        .complete(&held[0].id)
        .await
        .expect("the holder settles");
    assert_eq!(counts_of(&holding).await, vec![]);
}

/// A CA and a server certificate for 127.0.0.1 it signed, as PEM files in `dir`:
/// `ca.pem`, `server.pem`, `server.key`.
fn certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("key");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("leaf params");
    let leaf_key = KeyPair::generate().expect("key");
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).expect("leaf");
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
    std::fs::write(dir.join("server.pem"), leaf_cert.pem()).expect("write");
    std::fs::write(dir.join("server.key"), leaf_key.serialize_pem()).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaks_tls_with_a_private_ca_and_authenticates() {
    if !redis_server_installed("speaks_tls_with_a_private_ca_and_authenticates") {
        return;
    }
    let certs = tempfile::tempdir().expect("tempdir");
    certificates(certs.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let file = |n: &str| certs.path().join(n).display().to_string();
    let mut child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            &file("server.pem"),
            "--tls-key-file",
            &file("server.key"),
        ])
        .args([
            "--tls-ca-cert-file",
            &file("ca.pem"),
            "--tls-auth-clients",
            "no",
        ])
        .args([
            "--requirepass",
            "s3cret-pw",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(certs.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server with TLS");
    let mut up = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        // Pacing: the poll interval of a condition wait (200 tries).
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(up, "redis-server did not listen for TLS on {port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = options(
        &format!("rediss://:s3cret-pw@127.0.0.1:{port}"),
        "tls",
        "c1",
        dir.path(),
    );
    o.ca = Some(certs.path().join("ca.pem"));
    let s = RedisStore::open(o.clone()).await.expect("open over TLS");
    let out = s
        .accept(vec![event(key(1), &["a"])], NOW)
        .await
        .expect("accept");
    assert!(matches!(out[0], AcceptOutcome::Accepted { .. }));
    assert!(s.ready().await.is_ok());
    drop(s);

    o.url = format!("rediss://:wrong-pw@127.0.0.1:{port}");
    let e = RedisStore::open(o.clone())
        .await
        .err()
        .expect("wrong password");
    assert!(!e.contains("wrong-pw") && !e.contains("s3cret"), "{e}");
    o.url = format!("rediss://:s3cret-pw@127.0.0.1:{port}");
    o.ca = None;
    let e = RedisStore::open(o)
        .await
        .err()
        .expect("an untrusted certificate");
    assert!(e.contains("cannot reach Redis"), "{e}");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_waits_for_the_replicas_asked_for() {
    let Some(primary) = OwnRedis::start("an_accept_waits_for_the_replicas", false) else {
        return;
    };
    let Some(mut replica) = OwnRedis::start("an_accept_waits_for_the_replicas", false) else {
        return;
    };
    replica.replica_of = Some(primary.port);
    replica.kill();
    replica.run();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = options(&primary.url(), "wait", "c1", dir.path());
    o.wait_replicas = 1;
    o.wait_timeout = Duration::from_secs(10);
    let s = RedisStore::open(o.clone()).await.expect("open");
    // The replica may still be syncing: the first accepts can time out.
    let mut ok = false;
    for k in 0..50 {
        if s.accept(vec![event(key(k), &["a"])], NOW).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "one replica confirmed an accept");
    o.wait_replicas = 2;
    o.wait_timeout = Duration::from_millis(200);
    let s = RedisStore::open(o).await.expect("open");
    let err = s
        .accept(vec![event(key(1000), &["a"])], NOW)
        .await
        .expect_err("there is only one replica");
    // One replica exists: at most it confirmed (under load even it may be late).
    let text = err.to_string();
    assert!(
        text.contains("only 1 of 2") || text.contains("only 0 of 2"),
        "{text}"
    );
}

/// Issue 22, D1: a settle made while Redis is away is kept and written once Redis is
/// back, by itself: the claim is not held (and renewed) until the relay restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_redis_did_not_take_is_written_once_it_is_back() {
    let Some(mut server) = OwnRedis::start("a_settle_redis_did_not_take", true) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let s = RedisStore::open(options(&server.url(), "late", "c1", dir.path()))
        .await
        .expect("open");
    s.accept(vec![event(key(1), &["a"]), event(key(2), &["a"])], NOW)
        .await
        .expect("accept");
    let held = s.claim_due("a", NOW, 10).await.expect("claim");
    assert_eq!(held.len(), 2);
    server.kill();
    s.complete(&held[0].id).await.expect("kept for later");
    let mut again = held[1].clone();
    again.attempts = 1;
    again.next_attempt_at = NOW + 60_000;
    s.retry_later(again).await.expect("kept for later");
    assert_eq!(lock(&s.inner.unsettled).len(), 2);
    server.run();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let state = |id: String| {
        let s = &s;
        async move { s.lookup(&id).await.ok().flatten().map(|st| st.state) }
    };
    while std::time::Instant::now() < deadline
        && (state(held[0].id.clone()).await != Some("delivered")
            || state(held[1].id.clone()).await != Some("retrying"))
    {
        // Pacing: the poll interval of a condition wait with a deadline.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state(held[0].id.clone()).await, Some("delivered"));
    assert_eq!(state(held[1].id.clone()).await, Some("retrying"));
    assert!(lock(&s.inner.unsettled).is_empty());
    assert!(lock(&s.inner.held).is_empty(), "no claim left to renew");
    assert_eq!(counts_of(&s).await, vec![c("a", 1, 0)]);
}

/// A TCP proxy on a port of its own to a target port that can change; it can pause
/// (hold every byte, both ways: a replication link that stalls) and cut every
/// connection (the held bytes are lost).
struct Proxy {
    port: u16,
    target: Arc<std::sync::atomic::AtomicU16>,
    paused: tokio::sync::watch::Sender<bool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let target = Arc::new(std::sync::atomic::AtomicU16::new(target));
        let (paused, _) = tokio::sync::watch::channel(false);
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (t, p, c) = (target.clone(), paused.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = l.accept().await {
                let to = t.load(Ordering::SeqCst);
                let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                let mut held = lock(&c);
                held.push(tokio::spawn(pump(dr, uw, p.subscribe())));
                held.push(tokio::spawn(pump(ur, dw, p.subscribe())));
            }
        });
        Proxy {
            port,
            target,
            paused,
            conns,
            accept,
        }
    }

    fn pause(&self, on: bool) {
        self.paused.send_replace(on);
    }

    /// New connections go to `port`.
    fn switch(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }

    fn cut(&self) {
        for c in lock(&self.conns).drain(..) {
            c.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if paused.wait_for(|p| !*p).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A primary and a replica that replicates it through `Proxy` (to stall the link).
struct Replicated {
    primary: OwnRedis,
    replica: OwnRedis,
    link: Proxy,
}

impl Replicated {
    async fn start(test: &str) -> Option<Replicated> {
        let primary = OwnRedis::start(test, false)?;
        let link = Proxy::start(primary.port).await;
        let mut replica = OwnRedis::start(test, false)?;
        replica.replica_of = Some(link.port);
        replica.kill();
        replica.run();
        Some(Replicated {
            primary,
            replica,
            link,
        })
    }
}

/// Accepts throwaway events until one is confirmed by the replica (it may still be
/// syncing at first).
async fn until_in_sync(s: &RedisStore) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut k = 1_000_000;
    while std::time::Instant::now() < deadline {
        k += 1;
        if s.accept(vec![event(key(k), &["sync"])], NOW).await.is_ok() {
            return;
        }
    }
    panic!("the replica never confirmed an accept");
}

/// Issue 22, D4: `WAIT` for a replica whose link stalled blocks neither the other
/// accepts (each answers within the wait timeout, not one after the other) nor
/// `/readyz`; the answer says the outcome is unknown, and a retry of the same events
/// finds them in (duplicates), which is what makes "retry" safe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_stalled_replica_holds_up_nothing_else_and_says_unknown() {
    let Some(r) = Replicated::start("waiting_for_a_stalled_replica").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = options(&r.primary.url(), "stall", "c1", dir.path());
    o.wait_replicas = 1;
    o.wait_timeout = Duration::from_secs(1);
    let s = Arc::new(RedisStore::open(o).await.expect("open"));
    until_in_sync(&s).await;
    r.link.pause(true);
    let started = std::time::Instant::now();
    let mut accepts = tokio::task::JoinSet::new();
    for k in 0..16u64 {
        let s = s.clone();
        accepts.spawn(async move {
            let started = std::time::Instant::now();
            let out = s.accept(vec![event(key(k), &["a"])], NOW).await;
            (out, started.elapsed())
        });
    }
    let asked = std::time::Instant::now();
    s.ready().await.expect("ready while accepts wait");
    assert!(
        asked.elapsed() < Duration::from_millis(700),
        "/readyz waited {:?} behind WAIT",
        asked.elapsed()
    );
    while let Some(out) = accepts.join_next().await {
        let (out, took) = out.expect("join");
        assert!(
            took < Duration::from_millis(1_800),
            "an accept took {took:?}"
        );
        let err = out.expect_err("no replica confirms");
        assert!(matches!(err, StoreError::Unknown(_)), "{err}");
        assert!(err.outcome().contains("unknown"), "{}", err.outcome());
        assert!(err.to_string().contains("only 0 of 1"), "{err}");
    }
    assert!(
        started.elapsed() < Duration::from_millis(3_500),
        "16 accepts took {:?} with a 1 s wait timeout",
        started.elapsed()
    );
    r.link.pause(false);
    let mut o = options(&r.primary.url(), "stall", "c2", dir.path());
    o.wait_replicas = 1;
    o.wait_timeout = Duration::from_secs(10);
    let again = RedisStore::open(o).await.expect("open");
    let events: Vec<_> = (0..16u64).map(|k| event(key(k), &["a"])).collect();
    let out = again.accept(events, NOW).await.expect("confirmed now");
    assert!(
        out.iter().all(|o| *o == AcceptOutcome::Duplicate),
        "the events answered 'unknown' did get in: {out:?}"
    );
}

/// Issue 22, D3: with `wait_replicas = 1`, writes answered "unknown" (no replica
/// confirmed them) are not counted in `redis.mark`: a failover to the replica that
/// never got them is not "Redis went back in time", and the relay goes on (ready,
/// and it starts again); the sender's retry puts the lost events in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_lost_only_unconfirmed_writes_does_not_halt_the_relay() {
    let Some(mut r) = Replicated::start("a_failover_that_lost_only_unconfirmed").await else {
        return;
    };
    let front = Proxy::start(r.primary.port).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("redis://127.0.0.1:{}", front.port);
    let mut o = options(&url, "failover", "c1", dir.path());
    o.wait_replicas = 1;
    o.wait_timeout = Duration::from_millis(500);
    let s = RedisStore::open(o.clone()).await.expect("open");
    until_in_sync(&s).await;
    for k in 1..=3 {
        s.accept(vec![event(key(k), &["a"])], NOW)
            .await
            .expect("confirmed");
    }
    r.link.pause(true);
    for k in 10..13 {
        let err = s
            .accept(vec![event(key(k), &["a"])], NOW)
            .await
            .expect_err("unconfirmed");
        assert!(matches!(err, StoreError::Unknown(_)), "{err}");
    }
    // The primary dies; the replica, which never got those three, takes over.
    r.primary.kill();
    r.link.cut();
    let mut conn = ::redis::Client::open(r.replica.url().as_str())
        .and_then(|c| c.get_connection())
        .expect("connect to the replica");
    let _: () = ::redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut conn)
        .expect("promote");
    front.switch(r.replica.port);
    front.cut();
    assert!(
        becomes_ready(&s, Duration::from_secs(10)).await,
        "not ready after the failover: {:?}",
        s.ready().await
    );
    drop(s);
    o.wait_replicas = 0;
    let s = RedisStore::open(o)
        .await
        .expect("starts on the promoted replica");
    for k in 1..=3 {
        let out = s.accept(vec![event(key(k), &["a"])], NOW).await;
        assert_eq!(out, Ok(vec![AcceptOutcome::Duplicate]), "confirmed: kept");
    }
    for k in 10..13 {
        let out = s
            .accept(vec![event(key(k), &["a"])], NOW)
            .await
            .expect("accept");
        assert!(
            matches!(out[0], AcceptOutcome::Accepted { .. }),
            "lost, retried: in"
        );
    }
}

/// Memory one delivered delivery leaves in Redis, as docs/redis.md's sizing section states
/// it: a receipt of at most this many bytes for `redis_receipt_retention` ...
const RECEIPT_BYTES: u64 = 250;
/// ... and a dedupe mark of at most this many for the dedupe window.
const MARK_BYTES: u64 = 200;
/// What Redis holds beside the deliveries' own bytes and does not grow with each of
/// them: scripts cached on first use, and hash tables that double in one step (the
/// dedupe set's table going from 2,048 to 4,096 buckets is 16 KiB at once). At the
/// test's 2,000 deliveries this is what made one run of five read 203 bytes a mark.
const FIXED_BYTES: u64 = 64 * 1024;

fn used_memory(conn: &mut ::redis::Connection) -> u64 {
    let info: String = ::redis::cmd("INFO")
        .arg("memory")
        .query(conn)
        .expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

/// Claims and completes `n` deliveries of `dest`.
async fn drain(s: &RedisStore, dest: &str, n: u64) {
    let mut drained = 0;
    while drained < n {
        let got = s.claim_due(dest, NOW, 100).await.expect("claim");
        assert!(!got.is_empty(), "drained {drained} of {n}");
        for d in got {
            s.complete(&d.id).await.expect("complete");
            drained += 1;
        }
    }
}

fn keys(conn: &mut ::redis::Connection, pattern: &str) -> usize {
    ::redis::cmd("KEYS")
        .arg(pattern)
        .query::<Vec<String>>(conn)
        .expect("keys")
        .len()
}

/// Issue 22, D5: a drained delivery leaves a receipt that expires after the receipt
/// retention (not the dead-letter retention), and Redis memory after draining N
/// deliveries is bounded by N x (receipt + mark) as docs/redis.md's sizing section says; once
/// the receipts expire, only the marks are left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_deliveries_leave_receipts_bounded_in_size_and_time() {
    let Some(server) = OwnRedis::start("drained_deliveries_leave_receipts_bounded", false) else {
        return;
    };
    // `PBR_TEST_SIZING_N=100000` for the size (about four minutes).
    let n = std::env::var("PBR_TEST_SIZING_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000u64);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = options(&server.url(), "sizing", "c1", dir.path());
    // Short, so the test sees them expire; long enough to outlast the drain on a
    // busy 2-core machine (2 s did not, once, with the whole suite running).
    let retention = Duration::from_millis((5 * n).max(10_000));
    o.receipt_retention = retention;
    let s = RedisStore::open(o).await.expect("open");
    let mut conn = ::redis::Client::open(server.url().as_str())
        .and_then(|c| c.get_connection())
        .expect("connect");
    // The per-destination keys exist before the measure starts.
    s.accept(vec![event(key(u64::MAX), &["a"])], NOW)
        .await
        .expect("accept");
    for d in s.claim_due("a", NOW, 10).await.expect("claim") {
        s.complete(&d.id).await.expect("complete");
    }
    let before = used_memory(&mut conn);
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let events = chunk.iter().map(|k| event(key(*k), &["a"])).collect();
        for o in s.accept(events, NOW).await.expect("accept") {
            ids.extend(contract::ids(&o));
        }
    }
    let drain_started = std::time::Instant::now();
    drain(&s, "a", n).await;
    let grown = used_memory(&mut conn).saturating_sub(before);
    let per = grown / n;
    eprintln!("{n} drained deliveries: {grown} bytes, {per} per delivery");
    assert!(
        grown <= n * (RECEIPT_BYTES + MARK_BYTES) + FIXED_BYTES,
        "{per} bytes per drained delivery, more than docs/redis.md says ({RECEIPT_BYTES} + {MARK_BYTES})"
    );
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(format!("{{sizing}}:r:{}", ids[0]))
        .query(&mut conn)
        .expect("pttl");
    assert!(
        (1..=ms(retention)).contains(&ttl),
        "a receipt expires after the receipt retention, not the dead letters' ({ttl} ms)"
    );
    let receipts = |conn: &mut ::redis::Connection| keys(conn, "{sizing}:r:*");
    let counted = receipts(&mut conn);
    assert!(
        counted == ids.len() + 1 || drain_started.elapsed() >= retention,
        "{counted} receipts of {}, {:?} after the drain started",
        ids.len() + 1,
        drain_started.elapsed()
    );
    let deadline = std::time::Instant::now() + retention + Duration::from_secs(10);
    while receipts(&mut conn) > 0 && std::time::Instant::now() < deadline {
        // Pacing: the poll interval of a condition wait with a deadline.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(receipts(&mut conn), 0, "receipts expired");
    let left = used_memory(&mut conn).saturating_sub(before);
    eprintln!(
        "after the receipts expired: {left} bytes, {} per delivery",
        left / n
    );
    assert!(
        left <= n * MARK_BYTES + FIXED_BYTES,
        "{} bytes per delivery left once receipts expired, more than a mark ({MARK_BYTES})",
        left / n
    );
    let (xlen, retry): (u64, u64) = ::redis::pipe()
        .cmd("XLEN")
        .arg("{sizing}:q:a")
        .cmd("ZCARD")
        .arg("{sizing}:retry:a")
        .query(&mut conn)
        .expect("stream");
    assert_eq!((xlen, retry), (0, 0), "nothing else left per delivery");
}

/// Issue 22, D2: a dead relay's claims go to a live one within the claim timeout
/// plus a second, ahead of a backlog of fresh entries the live one cannot drain that
/// fast (it takes 10 deliveries every 100 ms, as a worker with a slow partner would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_relays_claims_are_taken_over_ahead_of_the_backlog() {
    let Some(url) = test_redis("a_dead_relays_claims_are_taken_over_ahead_of_the_backlog") else {
        return;
    };
    let one = OnRedis::new(&url);
    let timeout = Duration::from_secs(2);
    let dying = one.open_another("dying", timeout);
    let heir = one.open_another("heir", timeout);
    let events = (0..5).map(|k| event(key(k), &["x"])).collect();
    dying.accept(events, NOW).await.expect("accept");
    let held: Vec<String> = dying
        .claim_due("x", NOW, 10)
        .await
        .expect("claim")
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(held.len(), 5);
    drop(dying);
    let died = std::time::Instant::now();
    for batch in 0..10u64 {
        let events = (0..100).map(|k| event(key(1000 + batch * 100 + k), &["x"]));
        heir.accept(events.collect(), NOW).await.expect("accept");
    }
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    let mut taken = 0;
    while taken < held.len() && died.elapsed() < Duration::from_secs(30) {
        pace.tick().await;
        let got = heir.claim_due("x", NOW, 10).await.expect("claim");
        taken += got.iter().filter(|d| held.contains(&d.id)).count();
    }
    assert_eq!(taken, held.len());
    assert!(
        died.elapsed() <= timeout + Duration::from_secs(1),
        "the dead relay's claims were taken {:?} after it died (claim timeout {timeout:?})",
        died.elapsed()
    );
}

/// Issue 22: `rediss://` to a port that speaks plain text is refused at once, saying
/// what was tried, instead of a TLS handshake that waits 13 s and says "timed out".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_plain_text_port_is_a_quick_clear_error() {
    let Some(url) = test_redis("tls_to_a_plain_text_port_is_a_quick_clear_error") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = url.replacen("redis://", "rediss://", 1);
    let started = std::time::Instant::now();
    let e = RedisStore::open(options(&tls, &random_prefix(), "c1", dir.path()))
        .await
        .err()
        .expect("no TLS there");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        e.contains("rediss://") && e.contains("plain-text") && e.contains("redis://"),
        "{e}"
    );
}

/// A settle Redis refuses for good (here: a damaged record makes the script fail) is
/// an error, and the claim is no longer renewed: it goes to a relay after the claim
/// timeout instead of being held until this one restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_that_can_never_be_written_stops_holding_the_claim() {
    let Some(url) = test_redis("a_settle_that_can_never_be_written") else {
        return;
    };
    let on = OnRedis::new(&url);
    let s = on.open_another("c2", Duration::from_secs(3600));
    s.accept(vec![event(key(1), &["a"])], NOW)
        .await
        .expect("accept");
    let d = s.claim_due("a", NOW, 1).await.expect("claim").remove(0);
    assert!(lock(&s.inner.held).contains_key(&d.id));
    let mut conn = ::redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("connect");
    let _: i64 = ::redis::cmd("HDEL")
        .arg(format!("{{{}}}:r:{}", on.prefix, d.id))
        .arg("na")
        .query(&mut conn)
        .expect("damage the record");
    let err = s.release(&d.id).await.expect_err("the script fails");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(
        !lock(&s.inner.held).contains_key(&d.id),
        "no longer renewed"
    );
    assert!(lock(&s.inner.unsettled).is_empty(), "not kept to retry");
}

/// The accept groups are pipelined on one connection: Nagle's algorithm (redis-rs's
/// default) would hold a call back until the one before it is acknowledged.
#[test]
fn the_redis_connection_turns_nagle_off() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options("redis://127.0.0.1:6379", "p", "c", dir.path());
    let client = super::open::client(&opts, &opts.url).unwrap();
    assert!(client.get_connection_info().tcp_settings().nodelay());
}
