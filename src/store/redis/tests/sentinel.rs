//! Issue 22, high availability: a primary, two replicas and a sentinel on loopback;
//! the primary is killed (SIGKILL), the sentinel promotes a replica, and the relay
//! store, which only knows the sentinel, follows it and keeps serving.

use std::time::Instant;

use super::*;
use crate::own_sentinel::OwnSentinel;

const MASTER: &str = "pbrtest";

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

/// A primary with two replicas in sync (each with its AOF), a sentinel watching
/// them, and a store opened through the sentinel that waits for `wait_replicas`.
struct Watched {
    primary: OwnRedis,
    replicas: Vec<OwnRedis>,
    sentinel: OwnSentinel,
    store: RedisStore,
    _dir: tempfile::TempDir,
}

impl Watched {
    async fn start(test: &str, wait_replicas: u32) -> Option<Watched> {
        let primary = OwnRedis::start(test, true)?;
        let mut replicas = Vec::new();
        for _ in 0..2 {
            let mut r = OwnRedis::start(test, true)?;
            r.replica_of = Some(primary.port);
            r.kill();
            r.run();
            replicas.push(r);
        }
        let sentinel = OwnSentinel::start(MASTER, primary.port);
        sentinel.wait_replicas_in_sync(2);
        let dir = tempfile::tempdir().expect("tempdir");
        // redis_url's address is never used: the sentinel names the primary.
        let mut o = options("redis://127.0.0.1:1", "sentinel", "c1", dir.path());
        o.sentinels = Some(Sentinels {
            addrs: vec![sentinel.addr()],
            master: MASTER.into(),
        });
        o.wait_replicas = wait_replicas;
        let store = RedisStore::open(o)
            .await
            .expect("open through the sentinel");
        Some(Watched {
            primary,
            replicas,
            sentinel,
            store,
            _dir: dir,
        })
    }

    /// Waits for the sentinel to name a replica as the primary; returns its port.
    fn promoted(&self) -> u16 {
        let old = self.primary.port;
        let port = self.sentinel.until("the sentinel promotes a replica", |c| {
            self.sentinel.primary_port(c).filter(|p| *p != old)
        });
        assert!(self.replicas.iter().any(|r| r.port == port));
        port
    }

    /// Every delivery queued is handed out once and settled; nothing stays queued.
    async fn drain(&self, expected: usize) {
        let s = &self.store;
        let mut delivered = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while delivered.len() < expected && Instant::now() < deadline {
            for d in s.claim_due("a", NOW, 100).await.unwrap_or_default() {
                s.complete(&d.id)
                    .await
                    .expect("complete on the new primary");
                assert!(delivered.insert(d.id.clone()), "{} twice", d.id);
            }
        }
        assert_eq!(
            delivered.len(),
            expected,
            "every queued delivery was handed out"
        );
        assert_eq!(counts_of(s).await, vec![], "nothing left queued");
    }
}

/// A Sentinel-managed failover keeps the store serving: accepts are confirmed again
/// within a bounded time after the primary dies, and every delivery queued before
/// and after is handed out once and settled. With `WAIT` for one replica, no
/// confirmed accept is lost, so the commit mark finds nothing wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_keeps_the_store_serving() {
    const TEST: &str = "a_sentinel_failover_keeps_the_store_serving";
    let Some(mut w) = Watched::start(TEST, 1).await else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for k in 1..=20 {
        assert!(
            accept_until_confirmed(&w.store, k, deadline).await,
            "accept {k}"
        );
    }
    let killed = Instant::now();
    w.primary.kill();
    w.promoted();
    // Down-after (1 s), the failover, and a replica resyncing with the new primary:
    // well within 30 s on a loaded machine.
    assert!(
        accept_until_confirmed(&w.store, 21, killed + Duration::from_secs(30)).await,
        "accepts are confirmed again after the failover"
    );
    eprintln!(
        "{TEST}: accepts confirmed again {:.1} s after the primary was killed",
        killed.elapsed().as_secs_f64()
    );
    w.store.ready().await.expect("ready on the new primary");
    w.drain(21).await;
    w.store.close().await;
}

/// A failover that keeps the old primary running (`SENTINEL FAILOVER`: it becomes a
/// replica and answers writes with `READONLY`): the store asks the sentinel again
/// and moves to the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_answering_readonly_is_left_for_the_new_one() {
    const TEST: &str = "a_demoted_primary_answering_readonly_is_left_for_the_new_one";
    let Some(w) = Watched::start(TEST, 1).await else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for k in 1..=5 {
        assert!(
            accept_until_confirmed(&w.store, k, deadline).await,
            "accept {k}"
        );
    }
    let started = Instant::now();
    w.sentinel.until("the sentinel starts a failover", |c| {
        ::redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER)
            .query::<String>(c)
            .ok()
    });
    w.promoted();
    assert!(
        accept_until_confirmed(&w.store, 6, started + Duration::from_secs(30)).await,
        "accepts are confirmed again after the failover"
    );
    w.store.ready().await.expect("ready on the new primary");
    w.drain(6).await;
    w.store.close().await;
}

/// Without `WAIT`, a failover to a replica that missed accepts answered 202 loses
/// them: the store finds it on the new primary (the commit counter went back) and
/// stops, as after a restore of an older snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_lost_acknowledged_accepts_is_found() {
    const TEST: &str = "a_failover_that_lost_acknowledged_accepts_is_found";
    let Some(mut w) = Watched::start(TEST, 0).await else {
        return;
    };
    for k in 1..=5 {
        w.store
            .accept(vec![event(key(k), &["a"])], NOW)
            .await
            .expect("accept");
    }
    let mut direct = ::redis::Client::open(w.primary.url())
        .and_then(|c| c.get_connection())
        .expect("connect to the primary");
    let synced: i64 = ::redis::cmd("WAIT")
        .arg(2)
        .arg(10_000)
        .query(&mut direct)
        .expect("WAIT");
    assert_eq!(synced, 2, "both replicas have the first accepts");
    // The replicas die (their AOF keeps the first accepts); the next accepts are
    // answered 202 by the primary alone, and die with it.
    for r in &mut w.replicas {
        r.kill();
    }
    for k in 6..=10 {
        w.store
            .accept(vec![event(key(k), &["a"])], NOW)
            .await
            .expect("accept without WAIT");
    }
    w.primary.kill();
    for r in &mut w.replicas {
        r.run();
    }
    w.promoted();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match w.store.ready().await {
            Err(e) if e.contains("went back in time") => {
                let err = w
                    .store
                    .accept(vec![event(key(11), &["a"])], NOW)
                    .await
                    .expect_err("the store stopped");
                assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
                return;
            }
            other => last = format!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the lost accepts were not found within 30 s; last /readyz: {last}");
}
