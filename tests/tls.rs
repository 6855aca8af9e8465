//! TLS on the ingest listener, on the real binary, with certificates made in the test:
//! HTTP/1.1 and HTTP/2 by ALPN, plain HTTP refused, a new certificate on SIGHUP, and
//! client certificates with `[tls] client_ca`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedKey, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

fn self_signed() -> CertifiedKey {
    rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate")
}

fn write_pair(dir: &Path, c: &CertifiedKey) {
    std::fs::write(dir.join("cert.pem"), c.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), c.key_pair.serialize_pem()).unwrap();
}

fn spawn(dir: &Path, tls: &str) -> RelayProcess {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    let cfg = dir.join("postback-relay.toml");
    std::fs::write(
        &cfg,
        config_text(&format!(
            "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n{tls}"
        )),
    )
    .unwrap();
    RelayProcess::spawn(&cfg, "info")
}

/// A client that trusts only `ca` and reaches `localhost` at the relay's address.
fn client(relay: &RelayProcess, ca: &str, http1: bool) -> reqwest::Client {
    let addr: std::net::SocketAddr = relay.addr.parse().unwrap();
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .no_proxy();
    if http1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

fn url(relay: &RelayProcess, path: &str) -> String {
    let port = relay.addr.rsplit_once(':').unwrap().1;
    format!("https://localhost:{port}{path}")
}

#[tokio::test]
async fn tls_serves_http1_and_http2_refuses_plain_http_and_reloads_on_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let first = self_signed();
    write_pair(tmp.path(), &first);
    let relay = spawn(tmp.path(), "");
    let ca1 = first.cert.pem();

    let r = client(&relay, &ca1, false)
        .get(url(&relay, "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_2)
    );
    let r = client(&relay, &ca1, true)
        .get(url(&relay, "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_11)
    );

    // A signed event over HTTP/2.
    let port = relay.addr.rsplit_once(':').unwrap().1;
    let base = format!("https://localhost:{port}");
    let (s, v) = post_json_to(
        &client(&relay, &ca1, false),
        &base,
        "m-tls",
        &event("t1", "install", "c-tls"),
    )
    .await;
    assert_eq!(s, 202, "{v}");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    assert!(plain
        .get(format!("{}/healthz", relay.base))
        .send()
        .await
        .is_err());

    // A new certificate in place, then SIGHUP: new connections get it.
    let second = self_signed();
    write_pair(tmp.path(), &second);
    relay.signal(libc::SIGHUP);
    assert!(
        relay.wait_log("TLS certificate reloaded", Duration::from_secs(10)),
        "{}",
        relay.log()
    );
    let ca2 = second.cert.pem();
    let r = client(&relay, &ca2, false)
        .get(url(&relay, "/healthz"))
        .send()
        .await;
    assert_eq!(
        r.map(|r| r.status().as_u16()).ok(),
        Some(200),
        "{}",
        relay.log()
    );
    assert!(client(&relay, &ca1, false)
        .get(url(&relay, "/healthz"))
        .send()
        .await
        .is_err());

    // A broken certificate file on SIGHUP: refused, the one in use stays.
    std::fs::write(tmp.path().join("cert.pem"), "not a certificate").unwrap();
    relay.signal(libc::SIGHUP);
    assert!(
        relay.wait_log("TLS reload refused", Duration::from_secs(10)),
        "{}",
        relay.log()
    );
    let r = client(&relay, &ca2, false)
        .get(url(&relay, "/healthz"))
        .send()
        .await;
    assert_eq!(r.map(|r| r.status().as_u16()).ok(), Some(200));
}

#[tokio::test]
async fn with_client_ca_only_clients_with_a_certificate_it_signed_get_in() {
    let tmp = tempfile::tempdir().unwrap();
    let server = self_signed();
    write_pair(tmp.path(), &server);
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(tmp.path().join("clients.pem"), ca.pem()).unwrap();
    let mut params = CertificateParams::new(vec!["sender".to_string()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let relay = spawn(tmp.path(), "client_ca = \"clients.pem\"\n");

    let server_ca = server.cert.pem();
    let anonymous = client(&relay, &server_ca, false);
    assert!(anonymous.get(url(&relay, "/healthz")).send().await.is_err());

    let addr: std::net::SocketAddr = relay.addr.parse().unwrap();
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", cert.pem(), key.serialize_pem()).as_bytes())
            .unwrap();
    let known = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(server_ca.as_bytes()).unwrap())
        .identity(identity)
        .resolve("localhost", addr)
        .no_proxy()
        .build()
        .unwrap();
    let r = known.get(url(&relay, "/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
