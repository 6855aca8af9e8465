//! Bad input, one test per row, on the real binary over raw TCP: each asserts the
//! status, that nothing was stored (no queued delivery, no dedupe mark: the same
//! click converts afterwards) and that the process is healthy afterwards (`/healthz`,
//! and a valid signed event is accepted).
//!
//! Rule files that are huge, have unknown keys, bad templates or name private hosts
//! are refused by `check` with their `FILE:LINE:COL`, and by `serve --strict`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::{config_text, RelayProcess, ADMIN_TOKEN, SECRET};
use postback_relay::config::WebhookSecret;
use postback_relay::webhooks::sign;

/// The one destination: every event matches, nothing listens there (deliveries stay
/// queued, so a stored delivery shows in its queue depth).
const RULE: &str = "[destination]\nurl = \"http://127.0.0.1:9/pb?e={event_id}\"\nmethod = \"GET\"\n\
retry = { max_attempts = 1000, give_up_after = \"1h\", initial_backoff = \"1h\", max_backoff = \"2h\" }\n\
[privacy]\nallow = [\"event_id\"]\n";

struct Relay {
    process: RelayProcess,
    _dir: tempfile::TempDir,
}

fn start() -> Relay {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("rules")).expect("rules");
    std::fs::write(dir.path().join("rules/aff.toml"), RULE).expect("rule");
    // Short body timeout for the slow-client row.
    let config = config_text("[server]\nbody_read_timeout = \"2s\"\n");
    std::fs::write(dir.path().join("postback-relay.toml"), config).expect("config");
    let process = RelayProcess::spawn(&dir.path().join("postback-relay.toml"), "info");
    Relay { process, _dir: dir }
}

/// A status and what followed the head.
struct Answer {
    status: u16,
    body: String,
}

fn connect(relay: &Relay) -> TcpStream {
    let s = TcpStream::connect(&relay.process.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s
}

/// Reads one answer (head, then the body by Content-Length, or to the close).
fn read_answer(s: &mut TcpStream) -> Answer {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => panic!(
                "connection ended before an answer: {:?}",
                String::from_utf8_lossy(&data)
            ),
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let mut body = data[head_end..].to_vec();
    while length.is_some_and(|n| body.len() < n) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    Answer {
        status,
        body: String::from_utf8_lossy(&body).to_string(),
    }
}

/// Sends `request` (head and body, exactly as given) and reads the answer.
fn exchange(relay: &Relay, request: &[u8]) -> Answer {
    let mut s = connect(relay);
    s.write_all(request).expect("write");
    read_answer(&mut s)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn signature(id: &str, ts: i64, body: &[u8]) -> String {
    sign(&WebhookSecret::parse(SECRET).expect("secret"), id, ts, body)
}

/// A POST to /v1/events: `headers` lines (each ending in CRLF) and the body.
fn post(headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /v1/events HTTP/1.1\r\nHost: relay\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// The Standard Webhooks headers for `body`, signed now.
fn signed(id: &str, body: &[u8]) -> String {
    let ts = now();
    format!(
        "webhook-id: {id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {}\r\n",
        signature(id, ts, body)
    )
}

const EVENT: &str = r#"{"event_id":"e-bad","event_name":"purchase","click_id":"clk-bad"}"#;

fn get(relay: &Relay, path: &str) -> Answer {
    exchange(
        relay,
        format!(
            "GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
        )
        .as_bytes(),
    )
}

/// Nothing stored (no delivery queued, no dedupe mark for `clk-bad`) and the relay
/// healthy: `/healthz` answers and a valid signed event is accepted, not a duplicate.
fn assert_nothing_stored_and_healthy(mut relay: Relay) {
    let d = get(&relay, "/admin/destinations");
    assert_eq!(d.status, 200, "{}", d.body);
    let v: serde_json::Value = serde_json::from_str(&d.body).expect("json");
    assert_eq!(
        v["destinations"][0]["queue_depth"], 0,
        "a delivery was stored: {v}"
    );
    assert_eq!(get(&relay, "/healthz").status, 200);
    let a = exchange(
        &relay,
        &post(&signed("msg-after", EVENT.as_bytes()), EVENT.as_bytes()),
    );
    assert_eq!(a.status, 202, "{}", a.body);
    assert!(
        a.body.contains(r#""accepted":1"#),
        "the click was marked by the bad request: {}",
        a.body
    );
    assert!(
        !relay.process.log().contains("panicked"),
        "{}",
        relay.process.log()
    );
    relay.process.kill();
}

/// Sends `request`, expects `status` (and `body_has` in the answer), then checks that
/// nothing was stored and the relay is healthy.
fn row(request: Vec<u8>, status: u16, body_has: &str) {
    let relay = start();
    let a = exchange(&relay, &request);
    assert_eq!(a.status, status, "answer: {}", a.body);
    assert!(
        a.body.contains(body_has),
        "{:?} not in {}",
        body_has,
        a.body
    );
    assert_nothing_stored_and_healthy(relay);
}

#[test]
fn missing_signature_headers_are_401() {
    let ts = now();
    let sig = signature("m1", ts, EVENT.as_bytes());
    for headers in [
        format!("webhook-timestamp: {ts}\r\nwebhook-signature: {sig}\r\n"),
        format!("webhook-id: m1\r\nwebhook-signature: {sig}\r\n"),
        format!("webhook-id: m1\r\nwebhook-timestamp: {ts}\r\n"),
        String::new(),
    ] {
        row(
            post(&headers, EVENT.as_bytes()),
            401,
            "missing header webhook-",
        );
    }
}

#[test]
fn duplicated_signature_headers_are_refused() {
    let ts = now();
    let good = signature("m1", ts, EVENT.as_bytes());
    let forged = signature("m1", ts, b"other bytes");
    // Two webhook-signature headers (the good one second), two ids, two timestamps:
    // a proxy or attacker adding a header must not change what is verified.
    for headers in [
        format!("webhook-id: m1\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {forged}\r\nwebhook-signature: {good}\r\n"),
        format!("webhook-id: m1\r\nwebhook-id: m2\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {good}\r\n"),
        format!("webhook-id: m1\r\nwebhook-timestamp: {ts}\r\nwebhook-timestamp: {}\r\nwebhook-signature: {good}\r\n", ts + 1),
    ] {
        row(post(&headers, EVENT.as_bytes()), 401, "more than once");
    }
}

#[test]
fn malformed_signature_headers_are_401() {
    let ts = now();
    for sig in [
        "v1,",
        "v1",
        "v2,AAAA",
        "v1,not base64!",
        "v1,AAAA", // well formed base64, wrong length
        "",
        "   ",
    ] {
        let headers =
            format!("webhook-id: m1\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {sig}\r\n");
        row(post(&headers, EVENT.as_bytes()), 401, "");
    }
}

#[test]
fn a_thousand_signatures_are_401() {
    let ts = now();
    let one = signature("m1", ts, b"other");
    let sigs = vec![one; 1000].join(" ");
    let headers =
        format!("webhook-id: m1\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {sigs}\r\n");
    // 1,000 signatures are ~50 KiB of header: over `max_header_size` (16 KiB), 431
    // before anything is parsed.
    row(post(&headers, EVENT.as_bytes()), 431, "");
    // Under the header limit: refused by count.
    let sigs = vec![signature("m1", ts, b"other"); 300].join(" ");
    let headers =
        format!("webhook-id: m1\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {sigs}\r\n");
    row(post(&headers, EVENT.as_bytes()), 401, "signatures");
}

#[test]
fn stale_and_future_timestamps_are_401() {
    // Past the 5 min tolerance either way (the edges themselves: webhooks.rs tests).
    for (offset, says) in [
        (-400, "behind this server's clock"),
        (400, "ahead of this server's clock"),
        (i64::MIN, "behind this server's clock"),
    ] {
        let relay = start();
        let ts = if offset == i64::MIN {
            0
        } else {
            now() + offset
        };
        let headers = format!(
            "webhook-id: m1\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {}\r\n",
            signature("m1", ts, EVENT.as_bytes())
        );
        let a = exchange(&relay, &post(&headers, EVENT.as_bytes()));
        assert_eq!(a.status, 401, "{offset}: {}", a.body);
        assert!(a.body.contains(says), "{}", a.body);
        assert_nothing_stored_and_healthy(relay);
    }
    // Not a number of seconds at all.
    for ts in ["-5", "1e9", "17000000000000", "now"] {
        let headers =
            format!("webhook-id: m1\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: v1,AAAA\r\n");
        row(post(&headers, EVENT.as_bytes()), 401, "webhook-timestamp");
    }
}

/// A correctly signed body.
fn signed_body(body: &[u8]) -> Vec<u8> {
    post(&signed("m-body", body), body)
}

#[test]
fn invalid_utf8_is_400_with_the_position() {
    let mut body = br#"{"event_id":"e1","event_name":"purchase","click_id":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#""}"#);
    row(signed_body(&body), 400, "line 1");
}

#[test]
fn ten_thousand_levels_of_nesting_are_400() {
    let body = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    row(signed_body(body.as_bytes()), 400, "recursion");
    let body = format!(
        r#"{{"event_id":"e1","event_name":"purchase","click_id":"c","properties":{}{}}}"#,
        r#"{"a":"#.repeat(10_000),
        "}".repeat(10_000)
    );
    row(signed_body(body.as_bytes()), 400, "recursion");
}

#[test]
fn huge_numbers_are_refused() {
    // Out of range for any number type: unparseable.
    let body =
        r#"{"event_id":"e1","event_name":"purchase","click_id":"c","properties":{"value":1e400}}"#;
    row(signed_body(body.as_bytes()), 400, "number out of range");
    // A timestamp no calendar has: the event is rejected, so the request is (400).
    let body = r#"{"event_id":"e1","event_name":"purchase","click_id":"c","timestamp":1e300}"#;
    row(signed_body(body.as_bytes()), 400, "timestamp");
    let body = format!(
        r#"{{"event_id":{},"event_name":"purchase","click_id":"c"}}"#,
        "9".repeat(400)
    );
    row(signed_body(body.as_bytes()), 400, "number out of range");
}

#[test]
fn duplicate_json_keys_are_400_naming_the_key() {
    let body = r#"{"event_id":"e1","event_name":"purchase","click_id":"c1","click_id":"c2"}"#;
    row(signed_body(body.as_bytes()), 400, "click_id");
    let body = r#"[{"event_id":"e1","event_name":"purchase","properties":{"value":1,"value":2}}]"#;
    row(signed_body(body.as_bytes()), 400, "value");
}

#[test]
fn a_one_gib_content_length_is_413_before_the_body() {
    let body = EVENT.as_bytes();
    let mut request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: relay\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{}\r\n",
        1u64 << 30,
        signed("m-gib", body)
    )
    .into_bytes();
    request.extend_from_slice(body);
    row(request, 413, "max_body");
}

#[test]
fn an_endless_chunked_body_is_413_once_over_max_body() {
    let relay = start();
    let mut s = connect(&relay);
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: relay\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n{}\r\n",
        signed("m-endless", b"{}")
    );
    s.write_all(head.as_bytes()).expect("head");
    // Chunks until the relay stops reading (it answers and closes), at most 64 MiB.
    let mut writer = s.try_clone().expect("clone");
    let feeder = std::thread::spawn(move || {
        let chunk = format!("{:x}\r\n{}\r\n", 8192, " ".repeat(8192));
        let mut sent = 0usize;
        while sent < 64 << 20 && writer.write_all(chunk.as_bytes()).is_ok() {
            sent += 8192;
        }
        sent
    });
    let a = read_answer(&mut s);
    assert_eq!(a.status, 413, "{}", a.body);
    drop(s);
    let sent = feeder.join().expect("feeder");
    assert!(sent < 64 << 20, "the relay read 64 MiB of an endless body");
    assert_nothing_stored_and_healthy(relay);
}

#[test]
fn two_hundred_headers_are_refused() {
    let extra: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let headers = format!("{extra}{}", signed("m-200", EVENT.as_bytes()));
    row(post(&headers, EVENT.as_bytes()), 431, "");
}

#[test]
fn a_64_kib_header_is_431() {
    let headers = format!(
        "x-big: {}\r\n{}",
        "a".repeat(64 << 10),
        signed("m-64k", EVENT.as_bytes())
    );
    row(post(&headers, EVENT.as_bytes()), 431, "");
}

#[test]
fn content_length_with_transfer_encoding_is_framed_by_chunks_and_smuggles_nothing() {
    // Content-Length covers the chunked body AND a second, signed request behind it;
    // a server framing by Content-Length would see one request, one framing by chunks
    // two. The relay frames by Transfer-Encoding alone and closes the connection after
    // answering (RFC 9112 section 6.1): the request behind it is never read.
    let relay = start();
    let first = br#"{"event_id":"e-first","event_name":"purchase","click_id":"clk-first"}"#;
    let chunked = format!(
        "{:x}\r\n{}\r\n0\r\n\r\n",
        first.len(),
        String::from_utf8_lossy(first)
    );
    let smuggled = String::from_utf8(post(
        &signed("m-smuggled", EVENT.as_bytes()),
        EVENT.as_bytes(),
    ))
    .expect("text")
    .replace("Connection: close\r\n", "");
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nTransfer-Encoding: chunked\r\n{}\r\n{chunked}{smuggled}",
        chunked.len() + smuggled.len(),
        signed("m-te-cl", first)
    );
    let mut s = connect(&relay);
    s.write_all(request.as_bytes()).expect("write");
    let a = read_answer(&mut s);
    assert_eq!(a.status, 202, "{}", a.body);
    assert!(a.body.contains("e-first"), "{}", a.body);
    // Nothing more on this connection: it is closed, the smuggled request unread.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "a second answer: {}",
        String::from_utf8_lossy(&rest)
    );
    // clk-bad (the smuggled event) was never stored: assert_nothing_stored... checks
    // the queue holds only e-first's delivery, and clk-bad converts afterwards.
    let d = get(&relay, "/admin/destinations");
    assert!(d.body.contains(r#""queue_depth":1"#), "{}", d.body);
    let mut relay = relay;
    let a = exchange(
        &relay,
        &post(&signed("msg-after", EVENT.as_bytes()), EVENT.as_bytes()),
    );
    assert!(
        a.body.contains(r#""accepted":1"#),
        "the smuggled event was stored: {}",
        a.body
    );
    relay.process.kill();
}

#[test]
fn a_slow_body_is_408_and_stores_nothing() {
    let relay = start();
    let mut s = connect(&relay);
    let body = EVENT.as_bytes();
    let request = post(&signed("m-slow", body), body);
    let head = &request[..request.len() - body.len()];
    s.write_all(head).expect("head");
    // Half of the body, then nothing: the body read times out (2 s here).
    s.write_all(&body[..body.len() / 2]).expect("half");
    let a = read_answer(&mut s);
    assert_eq!(a.status, 408, "{}", a.body);
    assert_nothing_stored_and_healthy(relay);
}

/// Runs `check` on a rules dir holding `name.toml` = `text`; its exit code and stderr.
fn check(name: &str, text: &[u8]) -> (Option<i32>, String, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("rules")).expect("rules");
    std::fs::write(dir.join("rules").join(format!("{name}.toml")), text).expect("rule");
    std::fs::write(dir.join("postback-relay.toml"), config_text("")).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postback-relay"))
        .args(["check", "--config"])
        .arg(dir.join("postback-relay.toml"))
        .output()
        .expect("check runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        tmp,
    )
}

fn assert_located(stderr: &str, dir: &Path, name: &str, says: &str) {
    let file = dir.join("rules").join(format!("{name}.toml"));
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("{}:", file.display())) && l.contains(says))
        .unwrap_or_else(|| panic!("no located error saying {says:?}:\n{stderr}"));
    let rest = &line[file.display().to_string().len() + 1..];
    let mut parts = rest.splitn(3, ':');
    let (l, c) = (parts.next(), parts.next());
    assert!(
        l.is_some_and(|l| l.parse::<u32>().is_ok()) && c.is_some_and(|c| c.parse::<u32>().is_ok()),
        "not FILE:LINE:COL: {line}"
    );
}

#[test]
fn a_huge_rule_file_is_refused_located() {
    // 8 MiB of comment, then a rule: refused by size, not read into a parser.
    let mut text = b"# ".to_vec();
    text.extend(std::iter::repeat_n(b'x', 8 << 20));
    text.extend_from_slice(b"\n");
    text.extend_from_slice(RULE.as_bytes());
    let (code, stderr, dir) = check("huge", &text);
    assert_eq!(code, Some(1), "{stderr}");
    assert_located(&stderr, dir.path(), "huge", "too large");
}

#[test]
fn unknown_keys_and_bad_templates_in_a_rule_file_are_refused_located() {
    let text = RULE
        .replace("method = \"GET\"", "method = \"GET\"\nmethd = \"POST\"")
        .replace("{event_id}", "{event_id");
    let (code, stderr, dir) = check("typo", text.as_bytes());
    assert_eq!(code, Some(1), "{stderr}");
    assert_located(&stderr, dir.path(), "typo", "methd");
    assert_located(&stderr, dir.path(), "typo", "{");
}
