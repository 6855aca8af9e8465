//! HTTP/2 floods against the TLS listener of the real binary: rapid reset
//! (CVE-2023-44487), a client opening streams and cancelling them at once, thousands a
//! second, and PING and SETTINGS floods (each frame makes the server answer), must
//! get the connection closed on it, store nothing, and leave the relay healthy for
//! everyone else.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use postback_relay::testing::h2_frame as frame;

fn relay_with_tls(dir: &std::path::Path) -> (RelayProcess, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).expect("cert");
    std::fs::write(dir.join("key.pem"), cert.key_pair.serialize_pem()).expect("key");
    std::fs::create_dir_all(dir.join("rules")).expect("rules");
    std::fs::write(
        dir.join("rules/aff.toml"),
        "[destination]\nurl = \"http://127.0.0.1:9/pb?e={event_id}\"\nmethod = \"GET\"\n\
         retry = { max_attempts = 1000, give_up_after = \"1h\", initial_backoff = \"1h\", max_backoff = \"2h\" }\n\
         [privacy]\nallow = [\"event_id\"]\n",
    )
    .expect("rule");
    let cfg = dir.join("postback-relay.toml");
    std::fs::write(
        &cfg,
        config_text("[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"),
    )
    .expect("config");
    (RelayProcess::spawn(&cfg, "info"), cert.cert.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_gets_the_connection_closed_and_stores_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut relay, ca) = relay_with_tls(tmp.path());
    let tls = h2_connection(&relay.addr, &ca).await;
    let (mut h2, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    let driver = tokio::spawn(conn);

    // Signed headers, so each stream passes the header checks and waits for its body.
    let body = r#"{"event_id":"e-rr","event_name":"purchase","click_id":"clk-rr"}"#;
    let ts = chrono::Utc::now().timestamp();
    let secret = postback_relay::config::WebhookSecret::parse(SECRET).expect("secret");
    let sig = postback_relay::webhooks::sign(&secret, "m-rr", ts, body.as_bytes());
    let mut opened = 0usize;
    let mut refused = None;
    for _ in 0..10_000 {
        let ready = tokio::time::timeout(Duration::from_secs(10), h2.clone().ready()).await;
        let mut sender = match ready {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                refused = Some(e.to_string());
                break;
            }
            Err(_) => panic!("the connection neither served nor closed within 10 s"),
        };
        let request = hyper::Request::post("https://localhost/v1/events")
            .header("content-type", "application/json")
            .header("webhook-id", "m-rr")
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", &sig)
            .body(())
            .expect("request");
        match sender.send_request(request, false) {
            Ok((_response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
        h2 = sender;
    }
    let refused = refused.expect("the relay closed the connection on the rapid resets");
    assert!(opened < 10_000, "all 10,000 streams were opened and reset");
    eprintln!("rapid reset: {opened} streams opened and reset before the relay closed the connection ({refused})");
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;

    // Healthy, for the next client: over HTTP/2, a signed event is accepted, and
    // nothing of the reset streams was stored (clk-rr converts now).
    let (client, base) = https_client(&relay, &ca);
    let destinations = admin_get_at(&client, &base, "/admin/destinations").await;
    assert_eq!(
        destinations["destinations"][0]["queue_depth"], 0,
        "{destinations}"
    );
    let (status, v) = post_json_to(&client, &base, "m-after", body).await;
    assert_eq!((status, v["accepted"].clone()), (202, 1.into()), "{v}");
    assert!(!relay.log().contains("panicked"));
    relay.kill();
}

/// A client of the relay's TLS listener (HTTP/2 by ALPN), and its base URL.
fn https_client(relay: &RelayProcess, ca: &str) -> (reqwest::Client, String) {
    let port = relay.addr.rsplit_once(':').expect("port").1;
    let base = format!("https://localhost:{port}");
    let addr: std::net::SocketAddr = relay.addr.parse().expect("addr");
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("ca"))
        .resolve("localhost", addr)
        .no_proxy()
        .build()
        .expect("client");
    (client, base)
}

const PING: u8 = 0x6;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

/// How a flooded connection went: the relay's answers (ACKs of the flood's kind)
/// read, whether it sent GOAWAY, and whether it closed the connection.
#[derive(Debug)]
struct Flood {
    answers: usize,
    goaway: bool,
    closed: bool,
}

/// Reads frames until the connection ends; counts ACKs of `kind`.
async fn read_answers<R>(mut rd: R, kind: u8, answers: Arc<std::sync::atomic::AtomicUsize>) -> bool
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut goaway = false;
    let mut header = [0u8; 9];
    while rd.read_exact(&mut header).await.is_ok() {
        let len =
            (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
        let mut payload = vec![0u8; len];
        if rd.read_exact(&mut payload).await.is_err() {
            break;
        }
        if header[3] == kind && header[4] & ACK != 0 {
            answers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        goaway |= header[3] == GOAWAY;
    }
    goaway
}

/// A raw HTTP/2 connection past its preface and first SETTINGS: the half to write
/// frames on, the count of the relay's ACKs of one kind, and the task reading them
/// (it ends when the connection does, with whether a GOAWAY came).
struct Raw {
    wr: tokio::io::WriteHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    answers: Arc<std::sync::atomic::AtomicUsize>,
    reader: tokio::task::JoinHandle<bool>,
}

async fn raw_h2(relay: &RelayProcess, ca: &str, kind: u8) -> Raw {
    use tokio::io::AsyncWriteExt;
    let tls = h2_connection(&relay.addr, ca).await;
    let (rd, mut wr) = tokio::io::split(tls);
    let answers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = tokio::spawn(read_answers(rd, kind, answers.clone()));
    let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    start.extend(frame(SETTINGS, 0, &[]));
    wr.write_all(&start).await.expect("preface");
    Raw {
        wr,
        answers,
        reader,
    }
}

/// Sends `total` copies of `flood_frame`, 100 a write, as fast as the relay reads
/// them, while reading what it answers.
async fn flood(
    relay: &RelayProcess,
    ca: &str,
    flood_frame: Vec<u8>,
    kind: u8,
    total: usize,
) -> Flood {
    use tokio::io::AsyncWriteExt;
    let mut raw = raw_h2(relay, ca, kind).await;
    let chunk = flood_frame.repeat(100);
    for _ in 0..total / 100 {
        match tokio::time::timeout(Duration::from_secs(10), raw.wr.write_all(&chunk)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break, // closed on us
            Err(_) => panic!("the relay neither read the flood nor closed the connection in 10 s"),
        }
    }
    let _ = raw.wr.flush().await;
    // Once everything is sent, the relay either has closed the connection or answers
    // every frame and keeps it open (then this waits out the 15 s).
    let ended = tokio::time::timeout(Duration::from_secs(15), raw.reader).await;
    let (goaway, closed) = match ended {
        Ok(goaway) => (goaway.unwrap_or(false), true),
        Err(_) => (false, false),
    };
    Flood {
        answers: raw.answers.load(std::sync::atomic::Ordering::Relaxed),
        goaway,
        closed,
    }
}

/// Issue 18: PING and SETTINGS floods were answered without limit (every PING with a
/// PING ACK, every SETTINGS with a SETTINGS ACK) on a connection that stayed open.
/// Each flood must now get its connection closed after about a hundred frames, and
/// ingest keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_ping_and_settings_floods_get_the_connection_closed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut relay, ca) = relay_with_tls(tmp.path());
    const TOTAL: usize = 20_000;
    let floods = [
        ("PING", frame(PING, 0, &[7; 8]), PING),
        (
            "SETTINGS",
            frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100]),
            SETTINGS,
        ),
    ];
    for (name, f, kind) in floods {
        let got = flood(&relay, &ca, f, kind, TOTAL).await;
        eprintln!(
            "{name} flood of {TOTAL}: {} answered, closed: {}, GOAWAY: {}",
            got.answers, got.closed, got.goaway
        );
        assert!(
            got.closed,
            "{name} flood: the connection stayed open: {got:?}"
        );
        assert!(
            got.answers <= 1_000,
            "{name} flood: answered {} frames",
            got.answers
        );
    }
    // A client within the limit is answered and keeps its connection.
    {
        use tokio::io::AsyncWriteExt;
        let mut raw = raw_h2(&relay, &ca, PING).await;
        let pings = frame(PING, 0, &[9; 8]).repeat(20);
        raw.wr.write_all(&pings).await.expect("20 PINGs");
        let answers = raw.answers.clone();
        assert!(
            eventually(10, || {
                let answers = answers.clone();
                async move { answers.load(std::sync::atomic::Ordering::Relaxed) >= 20 }
            })
            .await,
            "20 PINGs were not all answered"
        );
        assert!(
            !raw.reader.is_finished(),
            "20 PINGs got the connection closed"
        );
    }
    assert!(
        relay.wait_log("PING/SETTINGS frames past", Duration::from_secs(5)),
        "no log line names the flood; log:\n{}",
        relay.log()
    );

    // Ingest keeps serving, over HTTP/2 too.
    let (client, base) = https_client(&relay, &ca);
    let body = r#"{"event_id":"e-fl","event_name":"purchase","click_id":"clk-fl"}"#;
    let (status, v) = post_json_to(&client, &base, "m-fl", body).await;
    assert_eq!((status, v["accepted"].clone()), (202, 1.into()), "{v}");
    assert!(!relay.log().contains("panicked"));
    relay.kill();
}
