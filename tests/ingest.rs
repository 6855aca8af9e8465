//! Ingest against a real relay on port 0: every status of the API's table (docs/openapi.json),
//! produced by the request that should produce it.

mod common;

use std::io::{Read, Write};
use std::process::Command;

use common::*;

/// Signs with the Python reference library `standardwebhooks` (independent code).
fn python_sign(id: &str, ts: i64, body: &str) -> String {
    let script = r#"
import sys, datetime
from standardwebhooks.webhooks import Webhook
secret, msg_id, ts, body = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.stdin.read()
print(Webhook(secret).sign(msg_id, datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc), body))
"#;
    let mut child = Command::new(python())
        .args(["-c", script, SECRET, id, &ts.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python runs (scripts/test.sh sets PBR_TEST_PYTHON to its venv)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python output");
    assert!(
        out.status.success(),
        "python standardwebhooks failed: is it installed? run scripts/test.sh"
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

#[tokio::test]
async fn an_event_signed_by_the_python_reference_library_is_accepted() {
    let relay = TestRelay::start(&[], "").await;
    let body = event("e-py-1", "install", "clk-py");
    let ts = chrono::Utc::now().timestamp();
    let sig = python_sign("msg_py_1", ts, &body);
    let resp = relay
        .client
        .post(format!("{}/v1/events", relay.base))
        .header("content-type", "application/json")
        .header("webhook-id", "msg_py_1")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 202);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["accepted"], 1);
    assert_eq!(v["results"][0]["status"], "accepted");
    relay.stop().await;
}

#[tokio::test]
async fn a_batch_reports_each_event_and_a_resend_is_all_duplicates() {
    let relay = TestRelay::start(&[], "").await;
    let body = format!(
        "[{},{},{},{}]",
        event("e1", "install", "c1"),
        event("e2", "install", "c1"), // same click + name: duplicate
        event("e3", "purchase", "c1"),
        r#"{"event_id": "e4"}"#
    );
    let (s, v) = relay.post_json("msg_batch", &body).await;
    assert_eq!(s, 202);
    assert_eq!(v["accepted"], 2, "{v}");
    assert_eq!(v["duplicates"], 1, "{v}");
    assert_eq!(v["rejected"], 1, "{v}");
    assert_eq!(v["results"][1]["status"], "duplicate");
    assert_eq!(
        v["results"][3],
        serde_json::json!({"index": 3, "status": "rejected", "error": "event_name: missing"})
    );
    // the same request again (same webhook-id): nothing new
    let (s, v) = relay.post_json("msg_batch", &body).await;
    assert_eq!(s, 202);
    assert_eq!(v["accepted"], 0, "{v}");
    assert_eq!(v["duplicates"], 3, "{v}");
    relay.stop().await;
}

#[tokio::test]
async fn ndjson_bodies_are_accepted() {
    let relay = TestRelay::start(&[], "").await;
    let body = format!(
        "{}\n{}\n",
        event("n1", "install", "nc1"),
        event("n2", "install", "nc2")
    );
    let (s, v, _) = relay
        .post_signed("msg_nd", &body, "application/x-ndjson")
        .await;
    assert_eq!(s, 202);
    assert_eq!(v["accepted"], 2);
    relay.stop().await;
}

#[tokio::test]
async fn unparseable_body_is_400_with_the_position() {
    let relay = TestRelay::start(&[], "").await;
    let (s, v) = relay
        .post_json("msg_400", "{\"event_id\": \"x\",\n \"event_name\": }")
        .await;
    assert_eq!(s, 400);
    let err = v["error"].as_str().unwrap_or("");
    assert!(
        err.starts_with("invalid JSON at line 2, column 16"),
        "{err}"
    );
    relay.stop().await;
}

async fn post_raw(relay: &TestRelay, headers: &[(&str, String)], body: &str) -> u16 {
    let mut req = relay
        .client
        .post(format!("{}/v1/events", relay.base))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.body(body.to_string())
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[tokio::test]
async fn bad_signatures_and_stale_timestamps_are_401_and_write_no_dedupe_key() {
    let relay = TestRelay::start(&[], "").await;
    let body = event("e401", "install", "clk-401");
    let secret = postback_relay::config::WebhookSecret::parse(SECRET).expect("secret");
    let now = chrono::Utc::now().timestamp();
    let good = |ts: i64| postback_relay::webhooks::sign(&secret, "msg_401", ts, body.as_bytes());
    let h = |ts: i64, sig: String| {
        vec![
            ("webhook-id", "msg_401".to_string()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sig),
        ]
    };
    // missing signature header
    assert_eq!(
        post_raw(
            &relay,
            &[
                ("webhook-id", "m".into()),
                ("webhook-timestamp", now.to_string())
            ],
            &body
        )
        .await,
        401
    );
    assert_eq!(post_raw(&relay, &h(now, "v1,".into()), &body).await, 401);
    assert_eq!(
        post_raw(&relay, &h(now, good(now).replace("v1,", "v2,")), &body).await,
        401
    );
    assert_eq!(
        post_raw(&relay, &h(now, vec![good(now); 17].join(" ")), &body).await,
        401
    );
    // a thousand signatures are a header past max_header_size
    assert_eq!(
        post_raw(&relay, &h(now, vec![good(now); 1000].join(" ")), &body).await,
        431
    );
    // Outside the 300 s tolerance, with a margin: `now` is whole seconds read by the
    // test, not the server's clock at the request (`webhooks::tests` checks the exact
    // edges on a fixed clock).
    let now = chrono::Utc::now().timestamp();
    assert_eq!(
        post_raw(&relay, &h(now - 310, good(now - 310)), &body).await,
        401
    );
    assert_eq!(
        post_raw(&relay, &h(now + 310, good(now + 310)), &body).await,
        401
    );
    // a forged request wrote no dedupe key: the real event is still accepted
    let (s, v) = relay.post_json("msg_real", &body).await;
    assert_eq!(s, 202);
    assert_eq!(v["accepted"], 1, "{v}");
    relay.stop().await;
}

#[tokio::test]
async fn too_many_events_is_413_and_unsupported_type_is_415() {
    let relay = TestRelay::start(&[], "").await;
    let many = format!(
        "[{}]",
        (0..101)
            .map(|i| event(&format!("m{i}"), "install", &format!("c{i}")))
            .collect::<Vec<_>>()
            .join(",")
    );
    let (s, _) = relay.post_json("msg_many", &many).await;
    assert_eq!(s, 413);
    let (s, _, _) = relay
        .post_signed("msg_415", "x=1", "application/x-www-form-urlencoded")
        .await;
    assert_eq!(s, 415);
    // a chunked body over max_body (64KiB) is cut off while streaming
    let big = format!("[{}]", "1,".repeat(40_000) + "1");
    let secret = postback_relay::config::WebhookSecret::parse(SECRET).expect("secret");
    let ts = chrono::Utc::now().timestamp();
    let sig = postback_relay::webhooks::sign(&secret, "msg_big", ts, big.as_bytes());
    let stream = futures_stream(big);
    let resp = relay
        .client
        .post(format!("{}/v1/events", relay.base))
        .header("content-type", "application/json")
        .header("webhook-id", "msg_big")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(stream)
        .send()
        .await;
    // Either the 413 arrives, or the relay closes the connection while we still send.
    if let Ok(r) = resp {
        assert_eq!(r.status().as_u16(), 413);
    }
    relay.stop().await;
}

fn futures_stream(body: String) -> reqwest::Body {
    // A body without Content-Length: reqwest sends it chunked.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
        .into_bytes()
        .chunks(4096)
        .map(|c| Ok(c.to_vec()))
        .collect();
    reqwest::Body::wrap_stream(tokio_stream_iter(chunks))
}

fn tokio_stream_iter(
    items: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    struct It(std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>);
    impl futures_core::Stream for It {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    It(items.into_iter())
}

#[tokio::test]
async fn a_one_gib_content_length_is_refused_before_the_body_is_read() {
    let relay = TestRelay::start(&[], "").await;
    let addr = relay.running.as_ref().expect("running").addr;
    let before = rss_kib(std::process::id());
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
        write!(s, "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\nwebhook-id: m\r\n\r\n").expect("write");
        s.write_all(&[b'['; 1024]).expect("write some body");
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).expect("read");
        String::from_utf8_lossy(&buf[..n]).to_string()
    })
    .await
    .expect("join");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let after = rss_kib(std::process::id());
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_store_that_cannot_take_the_write_gives_503_with_retry_after() {
    // a free-space floor no disk meets: the store refuses every write
    let relay = TestRelay::start(&[], "[store]\nmin_free_space = \"1000000TiB\"\n").await;
    let (s, v, headers) = relay
        .post_signed(
            "msg_503",
            &event("e503", "install", "c503"),
            "application/json",
        )
        .await;
    assert_eq!(s, 503, "{v}");
    assert!(headers.get("retry-after").is_some());
    relay.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let relay = TestRelay::start(&[], "").await;
    for p in ["/healthz", "/readyz"] {
        let r = relay
            .client
            .get(format!("{}{p}", relay.base))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 200, "{p}");
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_request_whose_every_event_is_rejected_is_a_400_with_the_same_results() {
    let relay = TestRelay::start(&[], "").await;
    let body = r#"[{"event_id": "e1"}, {"event_name": "purchase"}]"#;
    let (s, v) = relay.post_json("msg_all_bad", body).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v,
        serde_json::json!({"accepted": 0, "duplicates": 0, "rejected": 2, "results": [
            {"index": 0, "status": "rejected", "error": "event_name: missing"},
            {"index": 1, "status": "rejected", "error": "event_id: missing"}]})
    );
    // One good event among them: partial success stays 202.
    let body = format!(
        r#"[{{"event_id": "e1"}}, {}]"#,
        event("e2", "purchase", "c2")
    );
    let (s, v) = relay.post_json("msg_some_bad", &body).await;
    assert_eq!(
        (s, v["accepted"].as_u64(), v["rejected"].as_u64()),
        (202, Some(1), Some(1)),
        "{v}"
    );
    relay.stop().await;
}
