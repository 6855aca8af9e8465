//! Clients that stall before authenticating, against the real binary: bodies that
//! never arrive (on `/ui/login`, the admin API, ingest; over HTTP/1.1 and HTTP/2)
//! end by the body deadline, and one address cannot take every connection or the
//! whole body budget from another.
//!
//! Timeouts are configured short; every wait has a deadline, and assertions bound
//! how long something may take, never how fast it must be.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A config dir with `extra` appended to the test config (and `rules` given as
/// name, TOML); the path of its config.
fn config_dir(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("rules")).expect("rules dir");
    let cfg = dir.join("postback-relay.toml");
    std::fs::write(&cfg, config_text(extra)).expect("config");
    cfg
}

/// A connection to `to` from the loopback address `from` (127.0.0.x: "another
/// client address").
async fn connect_from(from: [u8; 4], to: &str) -> std::io::Result<TcpStream> {
    let to: SocketAddr = to.parse().expect("relay address");
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// Reads until the peer closes, resets, or `limit` passes: what was read, and when
/// it closed (`None`: still open at `limit`).
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> (String, Option<Instant>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&out).into(), Some(Instant::now()))
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), None),
        }
    }
}

/// Reads one whole HTTP/1.1 answer (head and `Content-Length` body) within `limit`.
async fn read_answer(s: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return text;
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => return text,
        }
    }
}

/// A signed event posted from `from`; the status, within `limit` (0 when no answer).
async fn signed_post_from(from: [u8; 4], addr: &str, id: &str, limit: Duration) -> u16 {
    let body = event(id, "install", &format!("c-{id}"));
    let secret = postback_relay::config::WebhookSecret::parse(SECRET).expect("secret");
    let ts = chrono::Utc::now().timestamp();
    let sig = postback_relay::webhooks::sign(&secret, id, ts, body.as_bytes());
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nwebhook-id: {id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {sig}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let attempt = async {
        let mut s = connect_from(from, addr).await.ok()?;
        s.write_all(head.as_bytes()).await.ok()?;
        let (answer, _) = read_to_close(&mut s, limit).await;
        answer.get(9..12)?.parse::<u16>().ok()
    };
    tokio::time::timeout(limit, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// `n` connections from `from`, each sending `head` and one byte of its body.
async fn stall(n: usize, from: [u8; 4], addr: &str, head: &str) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(mut s) = connect_from(from, addr).await else {
            continue;
        };
        if s.write_all(head.as_bytes()).await.is_ok() {
            conns.push(s);
        }
    }
    conns
}

const LOGIN_HEAD: &str = "POST /ui/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 4000\r\n\r\nt";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_ui_logins_end_by_the_body_deadline_and_ingest_answers_meanwhile() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // As many stalled logins as the connection cap: before the fix, nothing else
    // was ever accepted again.
    let cfg = config_dir(
        tmp.path(),
        "[server]\nheader_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"\nidle_timeout = \"2s\"\nmax_connections = 64\n",
    );
    let relay = RelayProcess::spawn(&cfg, "info");
    let started = Instant::now();
    let stalled = stall(64, [127, 0, 0, 1], &relay.addr, LOGIN_HEAD).await;
    assert_eq!(stalled.len(), 64);

    let status = signed_post_from(
        [127, 0, 0, 2],
        &relay.addr,
        "m-st1",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(status, 202, "a signed event behind 64 stalled logins");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let waits = stalled.into_iter().map(|mut s| {
        tokio::spawn(async move { read_to_close(&mut s, Duration::from_secs(15)).await })
    });
    for w in waits {
        let (answer, closed) = w.await.expect("reader");
        let closed = closed.expect("a stalled login is closed by its deadline");
        assert!(
            closed - started < Duration::from_secs(12),
            "{:?}",
            closed - started
        );
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_admin_body_ends_by_the_body_deadline() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config_dir(
        tmp.path(),
        "[server]\nbody_read_timeout = \"1s\"\nidle_timeout = \"30s\"\n",
    );
    let relay = RelayProcess::spawn(&cfg, "info");
    let head = format!(
        "POST /admin/dlq/replay HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{{"
    );
    let mut s = stall(1, [127, 0, 0, 1], &relay.addr, &head).await;
    let start = Instant::now();
    let (answer, closed) = read_to_close(&mut s[0], Duration::from_secs(15)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let closed = closed.expect("closed");
    assert!(
        closed - start < Duration::from_secs(8),
        "{:?}",
        closed - start
    );
}

fn tls_files(dir: &std::path::Path) -> String {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).expect("cert");
    std::fs::write(dir.join("key.pem"), cert.key_pair.serialize_pem()).expect("key");
    cert.cert.pem()
}

/// A TLS connection to `addr` speaking HTTP/2 (ALPN h2), trusting only `ca`.
async fn h2_connection(addr: &str, ca: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(ca.as_bytes()).expect("pem");
    roots.add(der).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_http2_login_streams_end_by_the_body_deadline() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = tls_files(tmp.path());
    let cfg = config_dir(
        tmp.path(),
        "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[server]\nbody_read_timeout = \"1s\"\nidle_timeout = \"30s\"\n",
    );
    let relay = RelayProcess::spawn(&cfg, "info");
    let tls = h2_connection(&relay.addr, &ca).await;
    let (h2, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(conn);
    let start = Instant::now();
    let mut answers = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..20 {
        let mut sender = tokio::time::timeout(Duration::from_secs(10), h2.clone().ready())
            .await
            .expect("stream slot")
            .expect("ready");
        let req = hyper::Request::post("https://localhost/ui/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("content-length", "4000")
            .body(())
            .expect("request");
        let (resp, mut body) = sender.send_request(req, false).expect("stream");
        body.send_data(bytes::Bytes::from_static(b"t"), false)
            .expect("one byte");
        bodies.push(body);
        answers.push(resp);
    }
    for resp in answers {
        let resp = tokio::time::timeout(Duration::from_secs(10), resp)
            .await
            .expect("answered by the deadline")
            .expect("response");
        assert_eq!(resp.status(), 408);
    }
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
}

/// The head of a POST with well-formed `webhook-*` headers (fresh timestamp, a
/// 32-byte fake signature) declaring `len` bytes, and the first 100 of them.
fn forged_head(len: usize) -> String {
    let ts = chrono::Utc::now().timestamp();
    let sig = format!("v1,{}", "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=");
    format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nwebhook-id: m-forged\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {sig}\r\n\r\n{}",
        " ".repeat(100)
    )
}

fn with_max_body(extra: &str, max_body: &str) -> String {
    config_text(extra).replace(
        "max_body = \"64KiB\"",
        &format!("max_body = \"{max_body}\""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_stalled_forged_signatures_or_logins_from_one_address_do_not_delay_another() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config_dir(tmp.path(), "");
    std::fs::write(&cfg, with_max_body("", "1MiB")).expect("config");
    let relay = RelayProcess::spawn(&cfg, "info");
    let mut stalled = stall(1024, [127, 0, 0, 1], &relay.addr, &forged_head(1 << 20)).await;
    // Past max_connections_per_address (256 by default) the relay closes them at once, saying why.
    let mut refused = 0;
    let mut answer = String::new();
    for s in stalled.iter_mut().skip(256) {
        let (a, closed) = read_to_close(s, Duration::from_secs(5)).await;
        if closed.is_some() {
            refused += 1;
            answer = a;
        }
    }
    assert_eq!(refused, 1024 - 256, "connections past the address's cap");
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.ends_with("(max_connections_per_address)\"}"),
        "{answer}"
    );
    assert!(relay.wait_log("max_connections_per_address", Duration::from_secs(5)));
    // And 1,024 stalled logins from a third address (the HTTP/1 reproduction).
    let _logins = stall(1024, [127, 0, 0, 7], &relay.addr, LOGIN_HEAD).await;

    for i in 0..3 {
        let start = Instant::now();
        let id = format!("m-fair-{i}");
        let status =
            signed_post_from([127, 0, 0, 2], &relay.addr, &id, Duration::from_secs(10)).await;
        assert_eq!(status, 202, "a signed event from another address");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "took {:?}",
            start.elapsed()
        );
    }
    // The stalled ones are still held (body_read_timeout is 30 s): the signed events
    // went through beside them, not after them.
    let (_, closed) = read_to_close(&mut stalled[0], Duration::from_millis(200)).await;
    assert!(closed.is_none(), "a stalled forged body was closed early");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_sending_unsigned_megabyte_bodies_stay_within_the_memory_budget() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config_dir(tmp.path(), "");
    // Drained for as long as a loaded machine needs, so that each client reads its 401.
    let extra = "[server]\nlinger_timeout = \"60s\"\n";
    std::fs::write(&cfg, with_max_body(extra, "2MiB")).expect("config");
    let relay = RelayProcess::spawn(&cfg, "info");
    let pid = relay.child.id();
    let before = rss_kib(pid);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let (peak, done) = (peak.clone(), done.clone());
        move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let body = Arc::new(vec![b' '; 1 << 20]);
    let head = "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n";
    let clients: Vec<_> = (0..1000u32)
        .map(|i| {
            let (addr, body) = (relay.addr.clone(), body.clone());
            // Ten addresses, 100 clients each: within max_connections_per_address.
            let from = [127, 0, 0, 10 + (i % 10) as u8];
            tokio::spawn(async move {
                let mut s = connect_from(from, &addr).await.ok()?;
                s.write_all(head.as_bytes()).await.ok()?;
                let _ = s.write_all(&body).await;
                Some(read_answer(&mut s, Duration::from_secs(60)).await)
            })
        })
        .collect();
    let mut answered = 0;
    for c in clients {
        if let Ok(Some(a)) = c.await {
            assert!(a.starts_with("HTTP/1.1 401"), "{a}");
            answered += 1;
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    assert_eq!(answered, 1000);
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("RSS {before} KiB -> peak {peak} KiB");
    // README, "Memory": a few dozen KiB per connection; 1,000 draining clients < 64 MiB.
    assert!(
        peak < before + 64 * 1024,
        "RSS grew from {before} KiB to {peak} KiB"
    );
}

/// Connects past `max_connections` wait in the kernel's queue, as deep as the cap
/// (at least 1,024), until the relay takes them: each handshake completes while
/// the relay is at its cap, and each gets its answer once a slot frees. With std's
/// backlog of 128, the SYNs past it were dropped for as long as the relay stayed at
/// its cap, and during a burst Linux fell back to SYN cookies, whose connections
/// were reset once the client sent more than a segment (the 1,000 clients above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connects_past_the_connection_cap_waits_in_the_kernel_queue_and_is_answered() {
    const N: usize = 300;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config_dir(tmp.path(), "[server]\nmax_connections = 1\n");
    let relay = RelayProcess::spawn(&cfg, "info");
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(usize::MAX);
    if somaxconn <= N {
        // The kernel allows no deeper queue: the relay says so, naming the setting.
        assert!(relay.wait_log("net.core.somaxconn", Duration::from_secs(5)));
        return;
    }
    // The one slot, held by a kept-alive connection that got its answer.
    let mut held = connect_from([127, 0, 0, 2], &relay.addr)
        .await
        .expect("connect");
    held.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let a = read_answer(&mut held, Duration::from_secs(10)).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    let connects: Vec<_> = (0..N)
        .map(|_| {
            let addr = relay.addr.clone();
            tokio::spawn(async move {
                let connect = connect_from([127, 0, 0, 3], &addr);
                tokio::time::timeout(Duration::from_secs(5), connect).await
            })
        })
        .collect();
    let mut waiting = Vec::new();
    for c in connects {
        if let Ok(Ok(Ok(s))) = c.await {
            waiting.push(s);
        }
    }
    assert_eq!(
        waiting.len(),
        N,
        "handshakes completed while the relay is at its cap"
    );
    drop(held);
    let answers: Vec<_> = waiting
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
                s.write_all(req).await.ok()?;
                Some(read_to_close(&mut s, Duration::from_secs(60)).await.0)
            })
        })
        .collect();
    let mut answered = 0;
    for a in answers {
        let a = a.await.ok().flatten().unwrap_or_default();
        assert!(a.starts_with("HTTP/1.1 200"), "{a:?}");
        answered += 1;
    }
    assert_eq!(answered, N);
}

/// One request from `from` with `Connection: close`; the whole answer.
async fn exchange(from: [u8; 4], addr: &str, head: &str, body: &str) -> String {
    let mut s = connect_from(from, addr).await.expect("connect");
    let req = format!(
        "{head}\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    read_to_close(&mut s, Duration::from_secs(10)).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_admin_tokens_are_logged_and_limited_per_address_and_logout_ends_the_session() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config_dir(tmp.path(), "");
    let relay = RelayProcess::spawn(&cfg, "info");
    let addr = relay.addr.clone();
    let wrong = "GET /admin/destinations HTTP/1.1\r\nAuthorization: Bearer wrong-token";
    let right = format!("GET /admin/destinations HTTP/1.1\r\nAuthorization: Bearer {ADMIN_TOKEN}");
    for _ in 0..10 {
        let a = exchange([127, 0, 0, 3], &addr, wrong, "").await;
        assert!(a.starts_with("HTTP/1.1 401"), "{a}");
    }
    // Locked out, the right token too; other addresses are not.
    let a = exchange([127, 0, 0, 3], &addr, &right, "").await;
    assert!(
        a.starts_with("HTTP/1.1 429") && a.to_ascii_lowercase().contains("retry-after"),
        "{a}"
    );
    let a = exchange([127, 0, 0, 4], &addr, &right, "").await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    // The login form counts the same way.
    let form = "POST /ui/login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded";
    for _ in 0..10 {
        let a = exchange([127, 0, 0, 5], &addr, form, "token=nope").await;
        assert!(a.starts_with("HTTP/1.1 401"), "{a}");
    }
    let a = exchange([127, 0, 0, 5], &addr, form, &format!("token={ADMIN_TOKEN}")).await;
    assert!(a.starts_with("HTTP/1.1 429"), "{a}");
    assert!(relay.wait_log("wrong admin token", Duration::from_secs(5)));
    assert!(!relay.log().contains("wrong-token") && !relay.log().contains("nope"));

    // /metrics on the ingest listener is behind the admin token too.
    let a = exchange([127, 0, 0, 8], &addr, "GET /metrics HTTP/1.1", "").await;
    assert!(a.starts_with("HTTP/1.1 401"), "{a}");
    let metrics = format!("GET /metrics HTTP/1.1\r\nAuthorization: Bearer {ADMIN_TOKEN}");
    let a = exchange([127, 0, 0, 8], &addr, &metrics, "").await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");

    // Log in, use the session, log out: the old cookie opens nothing any more.
    let a = exchange([127, 0, 0, 6], &addr, form, &format!("token={ADMIN_TOKEN}")).await;
    assert!(a.starts_with("HTTP/1.1 303"), "{a}");
    let cookie = a
        .lines()
        .find_map(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("set-cookie:").then_some(l)
        })
        .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        .and_then(|v| v.split(';').next().map(str::to_string))
        .expect("a session cookie");
    let state = format!("GET /ui/api/state HTTP/1.1\r\nCookie: {cookie}");
    let a = exchange([127, 0, 0, 6], &addr, &state, "").await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    let logout = format!("POST /ui/logout HTTP/1.1\r\nCookie: {cookie}");
    let a = exchange([127, 0, 0, 6], &addr, &logout, "").await;
    assert!(a.starts_with("HTTP/1.1 303"), "{a}");
    let a = exchange([127, 0, 0, 6], &addr, &state, "").await;
    assert!(
        a.starts_with("HTTP/1.1 401"),
        "the old cookie after logout: {a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_sending_only_pings_is_closed_by_the_idle_timeout() {
    // hyper exposes no PING or SETTINGS rate limit; h2 keeps at most one PONG and one
    // SETTINGS ack pending (a flood costs no memory), and control frames are not
    // requests: such a connection is idle and closed by idle_timeout.
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = tls_files(tmp.path());
    let cfg = config_dir(
        tmp.path(),
        "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[server]\nidle_timeout = \"2s\"\n",
    );
    let relay = RelayProcess::spawn(&cfg, "info");
    let tls = h2_connection(&relay.addr, &ca).await;
    let (_h2, mut conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    let mut pings = conn.ping_pong().expect("ping handle");
    let driver = tokio::spawn(conn);
    let start = Instant::now();
    let mut answered = 0u32;
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match pings.ping(h2::Ping::opaque()).await {
                Ok(_) => answered += 1,
                Err(_) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "pinging kept the connection open for 20 s");
    assert!(answered > 10, "{answered} pongs");
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "{:?}",
        start.elapsed()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
}
