//! Partner faults: one partner misbehaves in a way real partners do, and the others
//! must not notice.
//!
//! Each test runs two real relays side by side on the same event stream: relay A
//! sends to a healthy partner only, relay B to an identical healthy partner and to
//! the faulty one. Running them together gives both the same machine load, so the
//! healthy partner's delivery count under B is measured against A's, by counts, at the
//! end of the fault window. Then the fault ends (where it can) and every event must
//! reach the faulty partner too: nothing lost. Relay B's peak memory (VmHWM) is held
//! against A's.
//!
//! The fault lasts `PBR_FAULT_SECS` seconds (default 5; the long mode is 30:
//! `PBR_FAULT_SECS=30 cargo test --test partner_faults`). `PBR_TEST_STORE` picks the
//! store backend (see `common::store_section`).

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postback_relay::fake_partner::{FakePartner, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{config_text, destination_at, post_json_to, GetRule, RelayProcess};

/// How a raw partner (below HTTP libraries) behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Raw {
    /// Sends part of the status line, then resets.
    ResetMidResponse,
    /// Sends `200 OK`, its headers and part of the body, then resets.
    ResetMidBody,
    /// 200 with a 100 MiB body, streamed.
    HugeBody,
    /// Accepts the connection and never reads or writes.
    NeverAnswers,
    /// A plain 200.
    Ok,
}

/// A partner written against TCP, for faults an HTTP server library will not make.
struct RawPartner {
    addr: std::net::SocketAddr,
    mode: Arc<Mutex<Raw>>,
    /// Event numbers answered with a whole 2xx.
    delivered: Arc<Mutex<Vec<usize>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawPartner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const HUGE: u64 = 100 << 20;

impl RawPartner {
    async fn start(mode: Raw) -> RawPartner {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(Mutex::new(mode));
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (m, d, c) = (mode.clone(), delivered.clone(), connections.clone());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let mode = *m.lock().expect("mode");
                if mode == Raw::NeverAnswers {
                    held.push(stream);
                    continue;
                }
                tokio::spawn(serve_raw(stream, mode, d.clone()));
            }
        });
        RawPartner {
            addr,
            mode,
            delivered,
            connections,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/pb", self.addr)
    }

    fn set(&self, mode: Raw) {
        *self.mode.lock().expect("mode") = mode;
    }

    fn delivered(&self) -> HashSet<usize> {
        self.delivered
            .lock()
            .expect("delivered")
            .iter()
            .copied()
            .collect()
    }
}

/// Reads a request head (at most 64 KiB); its target's event number, if any.
async fn read_head(stream: &mut TcpStream) -> Option<Option<usize>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 64 << 10 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    Some(
        text.split("eid=ev-")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok()),
    )
}

async fn serve_raw(mut stream: TcpStream, mode: Raw, delivered: Arc<Mutex<Vec<usize>>>) {
    let Some(event) = read_head(&mut stream).await else {
        return;
    };
    match mode {
        Raw::ResetMidResponse => {
            let _ = stream.write_all(b"HTTP/1.1 20").await;
            // Linger 0: closing sends a reset, not a clean end of stream.
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Raw::ResetMidBody => {
            let ok = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n{\"status\":\"par")
                .await;
            // The status was given: the partner took the postback.
            if let (Ok(()), Some(e)) = (ok, event) {
                delivered.lock().expect("delivered").push(e);
            }
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Raw::HugeBody => {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {HUGE}\r\n\r\n");
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            // Answered 200: delivered, however much of the body the relay reads.
            if let Some(e) = event {
                delivered.lock().expect("delivered").push(e);
            }
            let chunk = vec![b'x'; 64 << 10];
            let mut sent = 0u64;
            while sent < HUGE {
                if stream.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len() as u64;
            }
        }
        Raw::NeverAnswers => {}
        Raw::Ok => {
            let ok = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
            if let (Ok(()), Some(e)) = (ok, event) {
                delivered.lock().expect("delivered").push(e);
            }
        }
    }
}

/// Where the faulty destination points, and how its fault ends.
enum Faulty {
    Http(FakePartner),
    Raw(RawPartner),
    /// A name the resolver refuses (a label over 63 characters): it fails inside the
    /// resolver, no DNS query leaves the machine.
    Dns,
}

impl Faulty {
    fn url(&self) -> String {
        match self {
            Faulty::Http(p) => p.url("/pb"),
            Faulty::Raw(p) => p.url(),
            Faulty::Dns => format!("http://{}.invalid/pb", "a".repeat(64)),
        }
    }

    /// Ends the fault; false when it cannot end (DNS).
    fn heal(&self) -> bool {
        match self {
            Faulty::Http(p) => {
                p.set_default(Reply::ok());
                true
            }
            Faulty::Raw(p) => {
                p.set(Raw::Ok);
                true
            }
            Faulty::Dns => false,
        }
    }

    fn delivered(&self) -> HashSet<usize> {
        match self {
            Faulty::Http(p) => delivered(p),
            Faulty::Raw(p) => p.delivered(),
            Faulty::Dns => HashSet::new(),
        }
    }
}

/// Event numbers a fake partner answered (or was answering) with a 2xx.
fn delivered(p: &FakePartner) -> HashSet<usize> {
    p.requests()
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .filter_map(|r| r.target.split("eid=ev-").nth(1)?.parse().ok())
        .collect()
}

fn rule(url: &str, extra: &str) -> String {
    GetRule::event_id_at(url)
        .timeout("1s")
        .concurrency(4)
        .retry(1000, "100ms", "1s")
        .extra(extra)
        .text()
}

fn write_relay(dir: &Path, rules: &[(&str, String)]) {
    std::fs::create_dir_all(dir.join("rules")).expect("rules");
    for (name, text) in rules {
        std::fs::write(dir.join(format!("rules/{name}.toml")), text).expect("rule");
    }
    let config = config_text(&common::store_section()).replace(
        "allow_private_networks = true\n",
        "allow_private_networks = true\nbreaker_cool_down = \"1s\"\n",
    );
    std::fs::write(dir.join("postback-relay.toml"), config).expect("config");
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn fault_secs() -> u64 {
    std::env::var("PBR_FAULT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

async fn last_error(relay: &RelayProcess, name: &str) -> String {
    destination(relay, name).await["last_error"].to_string()
}

/// Runs the fault for `fault_secs()` against relay B while relay A runs without it;
/// returns B (still running) for fault-specific checks, the events sent, and B's
/// directory (its data and rules: it must outlive B).
async fn run(faulty: &Faulty, faulty_rule_extra: &str) -> (RelayProcess, usize, tempfile::TempDir) {
    let healthy_a = FakePartner::start().await.expect("partner");
    let healthy_b = FakePartner::start().await.expect("partner");
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    write_relay(
        dir_a.path(),
        &[("healthy", rule(&healthy_a.url("/pb"), ""))],
    );
    write_relay(
        dir_b.path(),
        &[
            ("healthy", rule(&healthy_b.url("/pb"), "")),
            ("faulty", rule(&faulty.url(), faulty_rule_extra)),
        ],
    );
    let mut a = RelayProcess::spawn(&dir_a.path().join("postback-relay.toml"), "info");
    let b = RelayProcess::spawn(&dir_b.path().join("postback-relay.toml"), "info");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    // The same steady stream to both: 20 events a second for the fault window.
    let window = Duration::from_secs(fault_secs());
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut sent = 0usize;
    while started.elapsed() < window {
        tick.tick().await;
        let body = serde_json::json!({"event_id": format!("ev-{sent}"), "event_name": "purchase",
            "click_id": format!("clk-{sent}")})
        .to_string();
        let id = format!("msg-{sent}");
        let (sa, sb) = tokio::join!(
            post_json_to(&client, &a.base, &id, &body),
            post_json_to(&client, &b.base, &id, &body)
        );
        assert_eq!((sa.0, sb.0), (202, 202), "{} {}", sa.1, sb.1);
        sent += 1;
    }
    let (count_a, count_b) = (delivered(&healthy_a).len(), delivered(&healthy_b).len());
    eprintln!(
        "fault window {window:?}: {sent} events sent; healthy partner got {count_a} without the faulty one, {count_b} beside it"
    );
    // Healthy deliveries keep pace: at most the last half second's events may still be
    // in flight at the end of the window.
    assert!(
        count_b + 10 >= count_a,
        "the healthy partner fell behind beside the faulty one: {count_b} vs {count_a}"
    );
    assert!(
        count_a + 10 >= sent,
        "relay A fell behind: {count_a} of {sent}"
    );
    // Every event reaches the healthy partner under B.
    let all: HashSet<usize> = (0..sent).collect();
    assert!(
        common::eventually(30, || {
            let done = delivered(&healthy_b).is_superset(&all);
            async move { done }
        })
        .await,
        "healthy partner under B missed events"
    );
    let (peak_a, peak_b) = (peak_rss_kib(a.child.id()), peak_rss_kib(b.child.id()));
    eprintln!("peak memory: relay A {peak_a} KiB, relay B {peak_b} KiB");
    assert!(
        peak_b <= peak_a + 64 * 1024,
        "relay B's memory grew with the fault: {peak_b} KiB vs {peak_a} KiB"
    );
    a.kill();
    (b, sent, dir_b)
}

/// After the fault ends: every event reaches the faulty partner, nothing lost.
async fn all_arrive_once_healed(faulty: &Faulty, mut b: RelayProcess, sent: usize) {
    assert!(faulty.heal());
    let all: HashSet<usize> = (0..sent).collect();
    let arrived = common::eventually(120, || {
        let done = faulty.delivered().is_superset(&all);
        async move { done }
    })
    .await;
    let missing: Vec<_> = all.difference(&faulty.delivered()).copied().collect();
    assert!(
        arrived,
        "after the fault ended, never delivered: {missing:?}; log:\n{}",
        b.log()
    );
    assert!(!b.log().contains("panicked"));
    b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_answering_503_for_the_whole_window_delays_no_one_and_loses_nothing() {
    let p = FakePartner::start().await.expect("partner");
    p.set_default(Reply::status(503));
    let faulty = Faulty::Http(p);
    let (b, sent, _dir) = run(&faulty, "").await;
    assert!(last_error(&b, "faulty").await.contains("503"));
    all_arrive_once_healed(&faulty, b, sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_slower_than_the_timeout_delays_no_one_and_loses_nothing() {
    let p = FakePartner::start().await.expect("partner");
    p.set_default(Reply::ok().delay(Duration::from_secs(3)));
    let faulty = Faulty::Http(p);
    let (b, sent, _dir) = run(&faulty, "").await;
    let error = last_error(&b, "faulty").await;
    assert!(
        error.to_lowercase().contains("timed out") || error.contains("timeout"),
        "{error}"
    );
    all_arrive_once_healed(&faulty, b, sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_resetting_mid_response_delays_no_one_and_loses_nothing() {
    let faulty = Faulty::Raw(RawPartner::start(Raw::ResetMidResponse).await);
    let (b, sent, _dir) = run(&faulty, "").await;
    if let Faulty::Raw(p) = &faulty {
        assert!(p.connections.load(Ordering::SeqCst) > 0);
    }
    assert!(faulty.delivered().is_empty(), "a cut answer is no delivery");
    all_arrive_once_healed(&faulty, b, sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_the_200_status_is_a_delivery_judged_by_its_status() {
    // A plain postback is judged by its status; a cut body does not undo a 200 (a
    // preset that reads the body judges what arrived).
    let faulty = Faulty::Raw(RawPartner::start(Raw::ResetMidBody).await);
    let (b, sent, _dir) = run(&faulty, "").await;
    all_settle_as_delivered(&faulty, b, sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_with_retry_after_is_honoured_and_delays_no_one() {
    let p = FakePartner::start().await.expect("partner");
    p.set_default(Reply::status(429).header("Retry-After", "2"));
    let faulty = Faulty::Http(p);
    let (b, sent, _dir) = run(&faulty, "").await;
    if let Faulty::Http(p) = &faulty {
        // Each delivery waits at least 2 s between attempts: over the window, at most
        // one attempt per delivery per 2 s (plus the first).
        let attempts = p.request_count();
        let bound = sent * (fault_secs() as usize / 2 + 1);
        assert!(
            attempts <= bound,
            "{attempts} attempts for {sent} deliveries"
        );
    }
    all_arrive_once_healed(&faulty, b, sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_with_a_100_mib_body_is_delivered_without_reading_it_into_memory() {
    let faulty = Faulty::Raw(RawPartner::start(Raw::HugeBody).await);
    let (b, sent, _dir) = run(&faulty, "").await;
    all_settle_as_delivered(&faulty, b, sent).await;
}

/// Without healing the partner: every delivery settles as delivered (nothing left
/// queued, nothing dead) and every event arrived; the relay did not panic.
async fn all_settle_as_delivered(faulty: &Faulty, mut b: RelayProcess, sent: usize) {
    let settled = common::eventually(60, || async {
        let d = destination(&b, "faulty").await;
        d["queue_depth"] == 0 && d["dlq_size"] == 0
    })
    .await;
    assert!(settled, "{}", destination(&b, "faulty").await);
    let all: HashSet<usize> = (0..sent).collect();
    assert!(faulty.delivered().is_superset(&all));
    assert!(!b.log().contains("panicked"));
    b.kill();
}

async fn destination(relay: &RelayProcess, name: &str) -> serde_json::Value {
    destination_at(&reqwest::Client::new(), &relay.base, name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_that_accepts_and_never_answers_delays_no_one_and_loses_nothing() {
    let faulty = Faulty::Raw(RawPartner::start(Raw::NeverAnswers).await);
    let (b, sent, _dir) = run(&faulty, "").await;
    let error = last_error(&b, "faulty").await;
    assert!(
        error.to_lowercase().contains("timed out") || error.contains("timeout"),
        "{error}"
    );
    all_arrive_once_healed(&faulty, b, sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_whose_name_does_not_resolve_delays_no_one_and_keeps_its_queue() {
    let faulty = Faulty::Dns;
    let (mut b, sent, _dir) = run(&faulty, "").await;
    let error = last_error(&b, "faulty").await;
    assert!(
        error != "null" && !error.is_empty(),
        "a last error: {error}"
    );
    let d = destination(&b, "faulty").await;
    // Retried, not given up: every event still queued for it.
    assert_eq!(d["queue_depth"], sent, "{d}");
    assert_eq!(d["dlq_size"], 0, "{d}");
    eprintln!("dns failure: last error {error}");
    assert!(!faulty.heal());
    b.kill();
}
