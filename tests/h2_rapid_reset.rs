//! HTTP/2 rapid reset (CVE-2023-44487) against the TLS listener of the real binary:
//! a client opening streams and cancelling them at once, thousands a second, must
//! get the connection closed on it, store nothing, and leave the relay healthy for
//! everyone else.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;

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

/// A TLS connection to the relay that speaks HTTP/2 (ALPN h2), trusting only `ca`.
async fn h2_connection(
    relay: &RelayProcess,
    ca: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(ca.as_bytes()).expect("pem");
    roots.add(der).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&relay.addr)
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_gets_the_connection_closed_and_stores_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut relay, ca) = relay_with_tls(tmp.path());
    let tls = h2_connection(&relay, &ca).await;
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
