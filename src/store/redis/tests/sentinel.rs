//! Issue 22, high availability: a primary, two replicas and a sentinel on loopback;
//! the primary is killed (SIGKILL), the sentinel promotes a replica, and the relay
//! store, which only knows the sentinel, follows it and keeps serving.

use std::time::Instant;

use super::*;

const MASTER: &str = "pbrtest";

/// A `redis-server --sentinel` of our own on a free port, watching `primary`.
struct OwnSentinel {
    port: u16,
    _dir: tempfile::TempDir,
    child: Child,
}

impl OwnSentinel {
    fn start(primary: u16) -> OwnSentinel {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        // The sentinel rewrites its config file: it must be its own, writable.
        let conf = dir.path().join("sentinel.conf");
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {MASTER} 127.0.0.1 {primary} 1\nsentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 5000\nsentinel parallel-syncs {MASTER} 2\n",
            dir.path().display()
        );
        std::fs::write(&conf, text).expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server --sentinel");
        let s = OwnSentinel {
            port,
            _dir: dir,
            child,
        };
        s.until("the sentinel listens", |_| Some(()));
        s
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Asks the sentinel until `check` finds what it waits for, for up to 30 s.
    fn until<T>(&self, what: &str, check: impl Fn(&mut ::redis::Connection) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let conn = ::redis::Client::open(format!("redis://{}", self.addr()))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)));
            if let Some(found) = conn.ok().and_then(|mut c| check(&mut c)) {
                return found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what}: not within 30 s");
    }

    /// The port of the primary the sentinel names now.
    fn primary_port(&self, c: &mut ::redis::Connection) -> Option<u16> {
        let (_, port): (String, String) = ::redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER)
            .query(c)
            .ok()?;
        port.parse().ok()
    }
}

impl Drop for OwnSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replicas the sentinel sees with their link to the primary up.
fn replicas_in_sync(c: &mut ::redis::Connection) -> usize {
    let all: Vec<HashMap<String, String>> = ::redis::cmd("SENTINEL")
        .arg("replicas")
        .arg(MASTER)
        .query(c)
        .unwrap_or_default();
    all.iter()
        .filter(|r| r.get("master-link-status").map(String::as_str) == Some("ok"))
        .filter(|r| !r.get("flags").is_some_and(|f| f.contains("down")))
        .count()
}

/// Accepts `k` until a replica confirmed it (an "unknown" outcome is retried with the
/// same event, which dedupe makes safe), or the deadline passes.
async fn accept_until_confirmed(s: &RedisStore, k: u64, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if s.accept(vec![event(key(k), &["a"])], NOW).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A Sentinel-managed failover keeps the store serving: accepts are confirmed again
/// within a bounded time after the primary dies, and every delivery queued before
/// and after is handed out once and settled. With `WAIT` for one replica, no
/// confirmed accept is lost, so the commit mark finds nothing wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_keeps_the_store_serving() {
    const TEST: &str = "a_sentinel_failover_keeps_the_store_serving";
    let Some(mut primary) = OwnRedis::start(TEST, true) else {
        return;
    };
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let Some(mut r) = OwnRedis::start(TEST, false) else {
            return;
        };
        r.replica_of = Some(primary.port);
        r.kill();
        r.run();
        replicas.push(r);
    }
    let sentinel = OwnSentinel::start(primary.port);
    sentinel.until("the sentinel sees both replicas in sync", |c| {
        (replicas_in_sync(c) == 2).then_some(())
    });
    let dir = tempfile::tempdir().expect("tempdir");
    // redis_url's address is never used: the sentinel names the primary.
    let mut o = options("redis://127.0.0.1:1", "sentinel", "c1", dir.path());
    o.sentinels = Some(Sentinels {
        addrs: vec![sentinel.addr()],
        master: MASTER.into(),
    });
    o.wait_replicas = 1;
    let s = RedisStore::open(o)
        .await
        .expect("open through the sentinel");
    let deadline = Instant::now() + Duration::from_secs(30);
    for k in 1..=20 {
        assert!(accept_until_confirmed(&s, k, deadline).await, "accept {k}");
    }

    let killed = Instant::now();
    primary.kill();
    let promoted = sentinel.until("the sentinel promotes a replica", |c| {
        sentinel.primary_port(c).filter(|p| *p != primary.port)
    });
    assert!(replicas.iter().any(|r| r.port == promoted));
    // Down-after (1 s), the failover, and a replica resyncing with the new primary:
    // well within 30 s on a loaded machine.
    let deadline = killed + Duration::from_secs(30);
    assert!(
        accept_until_confirmed(&s, 21, deadline).await,
        "accepts are confirmed again after the failover"
    );
    eprintln!(
        "{TEST}: accepts confirmed again {:.1} s after the primary was killed",
        killed.elapsed().as_secs_f64()
    );
    s.ready().await.expect("ready on the new primary");

    let mut delivered = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered.len() < 21 && Instant::now() < deadline {
        for d in s.claim_due("a", NOW, 100).await.unwrap_or_default() {
            s.complete(&d.id)
                .await
                .expect("complete on the new primary");
            assert!(delivered.insert(d.id.clone()), "{} twice", d.id);
        }
    }
    assert_eq!(delivered.len(), 21, "every queued delivery was handed out");
    assert_eq!(counts_of(&s).await, vec![], "nothing left queued");
    s.close().await;
}
