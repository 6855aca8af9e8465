//! The listener against hostile clients, on the real binary: slow headers and bodies,
//! the connection cap, unsigned bodies, oversized headers, a sender that does not
//! wait for 100-continue, and the admin API on its own listener.
//!
//! Timeouts are configured short; assertions allow generous margins and never bound
//! how fast anything must be.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn serve(cfg: &Path) -> RelayProcess {
    RelayProcess::spawn(cfg, "info")
}

/// Reads until the peer closes (or an error); returns what was read and when it ended.
fn read_to_close(s: &mut TcpStream, limit: Duration) -> (String, Option<Instant>) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into(), Some(Instant::now())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&out).into(), Some(Instant::now()))
            }
            Err(_) => return (String::from_utf8_lossy(&out).into(), None),
        }
    }
}

fn signed_head(path_len: usize) -> String {
    let secret = postback_relay::config::WebhookSecret::parse(SECRET).unwrap();
    let ts = chrono::Utc::now().timestamp();
    let body = "x".repeat(path_len);
    let sig = postback_relay::webhooks::sign(&secret, "msg_slow", ts, body.as_bytes());
    format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {path_len}\r\nwebhook-id: msg_slow\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {sig}\r\n\r\n"
    )
}

#[test]
fn slow_headers_slow_bodies_silent_and_idle_connections_are_closed_within_their_timeouts() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_dir(
        tmp.path(),
        "[server]\nheader_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"\nidle_timeout = \"2s\"\n",
    );
    let relay = serve(&cfg);
    let addr = relay.addr.clone();
    let margin = Duration::from_secs(8);

    let half_header = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            let start = Instant::now();
            s.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            let (_, closed) = read_to_close(&mut s, Duration::from_secs(30));
            closed.map(|t| t - start)
        }
    });
    let silent = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            let start = Instant::now();
            let (_, closed) = read_to_close(&mut s, Duration::from_secs(30));
            closed.map(|t| t - start)
        }
    });
    let slow_body = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(signed_head(1000).as_bytes()).unwrap();
            let start = Instant::now();
            // 5 bytes every 200 ms: 40 s for the whole body, unless the relay stops it.
            let mut c = s.try_clone().unwrap();
            let writer = std::thread::spawn(move || {
                for _ in 0..200 {
                    if c.write_all(b"xxxxx").is_err() {
                        return;
                    }
                    // Pacing: a slow client, 5 bytes every 200 ms.
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
            let (answer, closed) = read_to_close(&mut s, Duration::from_secs(30));
            drop(writer);
            (answer, closed.map(|t| t - start))
        }
    });
    let idle = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let start = Instant::now();
            let (answer, closed) = read_to_close(&mut s, Duration::from_secs(30));
            (answer, closed.map(|t| t - start))
        }
    });

    let t = half_header.join().unwrap().expect("half a header: closed");
    assert!(
        t < Duration::from_secs(1) + margin,
        "half a header open {t:?}"
    );
    let t = silent.join().unwrap().expect("a silent connection: closed");
    assert!(
        t < Duration::from_secs(1) + margin,
        "silent connection open {t:?}"
    );
    let (answer, t) = slow_body.join().unwrap();
    let t = t.expect("a slow body: closed");
    assert!(t < Duration::from_secs(1) + margin, "slow body open {t:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let (answer, t) = idle.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let t = t.expect("an idle keep-alive connection: closed");
    assert!(
        t < Duration::from_secs(2) + margin,
        "idle connection open {t:?}"
    );
}

#[test]
fn over_the_connection_cap_a_signed_request_gets_through_once_others_close() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_dir(tmp.path(), "[server]\nmax_connections = 4\n");
    let relay = serve(&cfg);
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(&relay.addr).unwrap())
        .collect();
    // The relay holds all four (none left in the kernel's accept queue): the cap is met.
    let port = relay
        .addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert!(
        accept_queue_empty(port, Duration::from_secs(10)),
        "the relay did not accept 4 connections within 10 s"
    );
    let base = relay.base.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let status = rt.block_on(async {
            let client = reqwest::Client::new();
            post_json_to(&client, &base, "m-cap", &event("cap1", "install", "c-cap")).await
        });
        let _ = tx.send(status);
    });
    // At the cap the relay does not accept it: it waits in the backlog.
    assert!(
        rx.recv_timeout(Duration::from_secs(1)).is_err(),
        "answered while at the cap"
    );
    drop(idle);
    let (status, body) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("answered once the others closed");
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
}

#[test]
fn unsigned_bodies_are_not_read_and_a_64_kib_header_gets_431() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_dir(tmp.path(), "");
    std::fs::write(
        &cfg,
        config_text("").replace("max_body = \"64KiB\"", "max_body = \"2MiB\""),
    )
    .unwrap();
    let relay = serve(&cfg);

    // The answer comes before any of the declared megabyte is sent.
    let mut s = TcpStream::connect(&relay.addr).unwrap();
    s.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).expect("an answer without the body");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("missing header webhook-id"), "{answer}");

    // 100 clients sending 1 MB unsigned bodies in full: nothing is buffered.
    let pid = relay.child.id();
    let before = rss_kib(pid);
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let addr = relay.addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                let _ = s.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\nwebhook-id: m\r\nwebhook-timestamp: 1\r\nwebhook-signature: v1,x\r\n\r\n");
                let _ = s.write_all(&vec![b' '; 1 << 20]);
                let (answer, _) = read_to_close(&mut s, Duration::from_secs(30));
                answer
            })
        })
        .collect();
    let mut peak = before;
    for t in threads {
        let answer = t.join().unwrap();
        peak = peak.max(rss_kib(pid));
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    assert!(
        peak < before + 48 * 1024,
        "RSS grew from {before} KiB to {peak} KiB"
    );

    let mut s = TcpStream::connect(&relay.addr).unwrap();
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = s.write_all(big.as_bytes());
    let (answer, _) = read_to_close(&mut s, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

#[test]
fn a_python_sender_without_expect_continue_reads_the_413_for_a_2_mib_body() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_dir(tmp.path(), "");
    std::fs::write(
        &cfg,
        config_text("").replace("max_body = \"64KiB\"", "max_body = \"1MiB\""),
    )
    .unwrap();
    let relay = serve(&cfg);
    let (host, port) = relay.addr.rsplit_once(':').unwrap();
    let script = r#"
import http.client, sys
# 2 MiB fits in loopback socket buffers; 12 MiB does not, and needs the lingering
# close to be answered instead of getting a broken pipe.
for mib in (2, 12):
    c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=30)
    c.request("POST", "/v1/events", body=b"[" * (mib * 1024 * 1024),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    print(r.status, r.read().decode())
"#;
    let out = Command::new(python())
        .args(["-c", script, host, port])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for l in lines {
        assert!(l.starts_with("413 ") && l.contains("max_body"), "{stdout}");
    }
}

#[test]
fn the_admin_api_and_metrics_can_have_their_own_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let admin_addr = format!("127.0.0.1:{}", free_port());
    let cfg = config_dir(tmp.path(), "");
    std::fs::write(
        &cfg,
        config_text("").replace(
            &format!("token = \"{ADMIN_TOKEN}\""),
            &format!("token = \"{ADMIN_TOKEN}\"\nlisten = \"{admin_addr}\""),
        ),
    )
    .unwrap();
    let relay = serve(&cfg);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let get = |url: String, auth: Option<&'static str>| {
            let mut r = client.get(url);
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            async move { r.send().await.unwrap().status().as_u16() }
        };
        let lower = Box::leak(format!("bearer {ADMIN_TOKEN}").into_boxed_str());
        let admin = format!("http://{admin_addr}");
        assert_eq!(
            get(format!("{admin}/admin/destinations"), Some(lower)).await,
            200
        );
        assert_eq!(get(format!("{admin}/admin/destinations"), None).await, 401);
        assert_eq!(get(format!("{admin}/metrics"), None).await, 200);
        assert_eq!(get(format!("{admin}/readyz"), None).await, 200);
        // Not on the ingest listener any more; and no ingest on the admin one.
        assert_eq!(
            get(format!("{}/admin/destinations", relay.base), Some(lower)).await,
            404
        );
        assert_eq!(get(format!("{}/metrics", relay.base), None).await, 404);
        let (s, _) = post_json_to(&client, &admin, "m-adm", &event("a1", "install", "c1")).await;
        assert_eq!(s, 404);
        let (s, _) =
            post_json_to(&client, &relay.base, "m-ing", &event("a1", "install", "c1")).await;
        assert_eq!(s, 202);
    });
}

#[test]
fn logs_are_json_lines_when_stderr_is_not_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_dir(tmp.path(), "");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postback-relay"));
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info");
    let mut relay = RelayProcess::spawn_logging(cmd);
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait_exit(Duration::from_secs(20)), Some(0));
    let log = relay.log();
    assert!(log.lines().count() >= 2, "{log}");
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(
        log.contains("\"message\":\"postback-relay ready\""),
        "{log}"
    );
}

#[test]
fn out_of_descriptors_accept_errors_are_logged_rarely_and_service_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_dir(tmp.path(), "[server]\nheader_read_timeout = \"30s\"\n");
    // 64 descriptors and the default cap of 1024 connections: accepts fail (EMFILE).
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -n 64 && exec \"{}\" serve --config \"{}\" --log-format text",
            env!("CARGO_BIN_EXE_postback-relay"),
            cfg.display()
        ))
        .env("RUST_LOG", "info");
    let relay = RelayProcess::spawn_logging(cmd);
    assert!(relay.log().contains("open-files limit"), "{}", relay.log());
    let hogs: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(&relay.addr).ok())
        .collect();
    assert!(
        relay.wait_log("cannot accept connections", Duration::from_secs(10)),
        "{}",
        relay.log()
    );
    // Pacing: the window under test. Accepts keep failing all along; the log must
    // not repeat the line within it (at most once per 10 s).
    std::thread::sleep(Duration::from_secs(2));
    let failures = relay.log().matches("cannot accept connections").count();
    assert!(
        (1..=2).contains(&failures),
        "{failures} accept-error lines in 2 s:\n{}",
        relay.log()
    );
    drop(hogs);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (s, v) = rt.block_on(async {
        let client = reqwest::Client::new();
        let mut last = (0, serde_json::Value::Null);
        for i in 0..50 {
            let id = format!("m-fd-{i}");
            let r = signed_request(
                &client,
                &relay.base,
                &id,
                &event("fd1", "install", "c-fd"),
                "application/json",
                event("fd1", "install", "c-fd").as_bytes(),
            )
            .timeout(Duration::from_secs(5))
            .send()
            .await;
            if let Ok(r) = r {
                let status = r.status().as_u16();
                last = (status, r.json().await.unwrap_or_default());
                break;
            }
            // Pacing: the interval between tries of a loop bounded by its count.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        last
    });
    assert_eq!(s, 202, "{v}");
}
