//! Shared integration-test harness: a real relay on port 0 with its own data and
//! rules directories, a signing client, and the real binary as a child process.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod skip;
pub use skip::skip;

use postback_relay::app::{self, Running};
use postback_relay::config::{Config, Overrides, WebhookSecret};
use postback_relay::webhooks::sign;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub struct TestRelay {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub client: reqwest::Client,
    pub config: Config,
}

/// The `[store]` section of the backend the crash and fault suites run on:
/// `PBR_TEST_STORE=embedded` (the default) or `redis` (then `PBR_TEST_REDIS_URL`,
/// default `redis://127.0.0.1:6379`). Other backends plug in here.
pub fn store_section() -> String {
    match std::env::var("PBR_TEST_STORE").as_deref() {
        Ok("redis") => {
            let url = std::env::var("PBR_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
            // Its own key prefix (tests share one Redis), and claims of a killed relay
            // back after 2 s instead of a minute.
            let prefix = format!("pbr-test-{:016x}", rand::random::<u64>());
            format!(
                "[store]\nbackend = \"redis\"\nredis_url = \"{url}\"\nredis_prefix = \"{prefix}\"\nredis_claim_timeout = \"2s\"\n"
            )
        }
        Ok("embedded") | Err(_) => "[store]\nbackend = \"embedded\"\n".to_string(),
        Ok(other) => panic!("PBR_TEST_STORE={other}: not a store backend (embedded, redis)"),
    }
}

/// The config text for a test relay; `extra` is appended (TOML).
pub fn config_text(extra: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
data_dir = "data"
rules_dir = "rules"

[ingest]
secrets = ["{SECRET}"]
tolerance = "5m"
max_body = "64KiB"
max_batch = 100

[delivery]
allow_private_networks = true

[admin]
token = "{ADMIN_TOKEN}"
{extra}
"#
    )
}

impl TestRelay {
    /// Starts a relay with these rule files (name, TOML) and config additions.
    pub async fn start(rules: &[(&str, &str)], extra_config: &str) -> TestRelay {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, rules, extra_config).await
    }

    pub async fn start_in(
        dir: tempfile::TempDir,
        rules: &[(&str, &str)],
        extra_config: &str,
    ) -> TestRelay {
        Self::start_in_with_config(dir, rules, &config_text(extra_config)).await
    }

    /// Starts a relay with this whole config text (e.g. `config_text("")` edited),
    /// for settings `extra_config` cannot reach, such as keys in `[delivery]`.
    pub async fn start_with_config(rules: &[(&str, &str)], config: &str) -> TestRelay {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in_with_config(dir, rules, config).await
    }

    pub async fn start_in_with_config(
        dir: tempfile::TempDir,
        rules: &[(&str, &str)],
        config: &str,
    ) -> TestRelay {
        let rules_dir = dir.path().join("rules");
        std::fs::create_dir_all(&rules_dir).expect("rules dir");
        for (name, text) in rules {
            std::fs::write(rules_dir.join(format!("{name}.toml")), text).expect("write rule");
        }
        let cfg_path = dir.path().join("postback-relay.toml");
        std::fs::write(&cfg_path, config).expect("write config");
        let env: HashMap<String, String> = HashMap::new();
        let config = Config::load(&cfg_path, &env, &Overrides::default()).expect("valid config");
        let running = app::start(config.clone(), std::sync::Arc::new(env))
            .await
            .expect("relay starts");
        let base = format!("http://{}", running.addr);
        TestRelay {
            running: Some(running),
            dir,
            base,
            client: reqwest::Client::new(),
            config,
        }
    }

    /// The config file the relay was started from.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("postback-relay.toml")
    }

    pub fn rules_dir(&self) -> PathBuf {
        self.dir.path().join("rules")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Signs `body` as a Standard Webhooks sender would and posts it.
    pub async fn post_signed(
        &self,
        id: &str,
        body: &str,
        content_type: &str,
    ) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
        post_signed_to(&self.client, &self.base, id, body, content_type).await
    }

    pub async fn post_json(&self, id: &str, body: &str) -> (u16, serde_json::Value) {
        post_json_to(&self.client, &self.base, id, body).await
    }

    pub async fn admin_get(&self, path: &str) -> serde_json::Value {
        admin_get_at(&self.client, &self.base, path).await
    }

    pub async fn admin_post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("admin request");
        let s = resp.status().as_u16();
        (s, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        self.dir
    }
}

/// A GET postback rule file for tests, built field by field, then `text()`:
/// `[destination]` with `url` (placeholders allowed), `method = "GET"`, the optional
/// `timeout` and `concurrency`, fast retries, any `extra` TOML, then
/// `[privacy] allow`. Defaults: 50 attempts, backoff 50 ms to 200 ms, `event_id` only.
#[derive(Clone, Debug)]
pub struct GetRule {
    url: String,
    timeout: Option<String>,
    concurrency: Option<u32>,
    retry: (u32, String, String),
    extra: String,
    allow: Vec<String>,
}

impl GetRule {
    pub fn new(url: &str) -> GetRule {
        GetRule {
            url: url.to_string(),
            timeout: None,
            concurrency: None,
            retry: (50, "50ms".into(), "200ms".into()),
            extra: String::new(),
            allow: vec!["event_id".into()],
        }
    }

    /// The partner's URL with the event ID in its query: `{url}?eid={event_id}`.
    pub fn event_id_at(url: &str) -> GetRule {
        GetRule::new(&format!("{url}?eid={{event_id}}"))
    }

    pub fn timeout(mut self, timeout: &str) -> GetRule {
        self.timeout = Some(timeout.to_string());
        self
    }

    pub fn concurrency(mut self, n: u32) -> GetRule {
        self.concurrency = Some(n);
        self
    }

    /// `max_attempts`, `initial_backoff`, `max_backoff` (`give_up_after` is 1 h).
    pub fn retry(mut self, max_attempts: u32, initial: &str, max: &str) -> GetRule {
        self.retry = (max_attempts, initial.to_string(), max.to_string());
        self
    }

    /// TOML added after the retry line (more `[destination]` keys, or new tables).
    pub fn extra(mut self, toml: &str) -> GetRule {
        self.extra = toml.to_string();
        self
    }

    pub fn allow(mut self, fields: &[&str]) -> GetRule {
        self.allow = fields.iter().map(|f| f.to_string()).collect();
        self
    }

    pub fn text(&self) -> String {
        let mut t = format!("[destination]\nurl = \"{}\"\nmethod = \"GET\"\n", self.url);
        if let Some(timeout) = &self.timeout {
            t.push_str(&format!("timeout = \"{timeout}\"\n"));
        }
        if let Some(n) = self.concurrency {
            t.push_str(&format!("concurrency = {n}\n"));
        }
        let (attempts, initial, max) = &self.retry;
        t.push_str(&format!(
            "retry = {{ max_attempts = {attempts}, give_up_after = \"1h\", initial_backoff = \"{initial}\", max_backoff = \"{max}\" }}\n"
        ));
        let allow: Vec<String> = self.allow.iter().map(|f| format!("\"{f}\"")).collect();
        format!(
            "{t}{}\n[privacy]\nallow = [{}]\n",
            self.extra,
            allow.join(", ")
        )
    }
}

/// Polls `f` until it returns true or `secs` pass; returns whether it did.
pub async fn eventually<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if f().await {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        // Pacing: the poll interval of a condition wait with a deadline.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A unique event as JSON text.
pub fn event(id: &str, name: &str, click: &str) -> String {
    serde_json::json!({
        "event_id": id, "event_name": name, "click_id": click,
        "attribution": {"network": "example-aff"},
        "user": {"email": "Person@Example.com", "ip": "203.0.113.7"},
        "consent": {"ad_user_data": true},
        "properties": {"value": 9.99, "currency": "USD", "order_id": format!("o-{id}")}
    })
    .to_string()
}

/// A POST of `body` to `{base}/v1/events` (`base` as in `http://127.0.0.1:8080`) with
/// Standard Webhooks headers, signed with `SECRET` now over `signed` — normally `body`
/// itself; anything else forges the signature. Not yet sent.
pub fn signed_request(
    client: &reqwest::Client,
    base: &str,
    webhook_id: &str,
    body: &str,
    content_type: &str,
    signed: &[u8],
) -> reqwest::RequestBuilder {
    let secret = WebhookSecret::parse(SECRET).expect("secret");
    let ts = chrono::Utc::now().timestamp();
    let sig = sign(&secret, webhook_id, ts, signed);
    client
        .post(format!("{base}/v1/events"))
        .header("content-type", content_type)
        .header("webhook-id", webhook_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body.to_string())
}

/// Signs `body` as a Standard Webhooks sender would and posts it to `{base}/v1/events`;
/// returns the status, the JSON answer (`Null` if there is none) and the headers.
pub async fn post_signed_to(
    client: &reqwest::Client,
    base: &str,
    webhook_id: &str,
    body: &str,
    content_type: &str,
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let resp = signed_request(
        client,
        base,
        webhook_id,
        body,
        content_type,
        body.as_bytes(),
    )
    .send()
    .await
    .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let v = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, v, headers)
}

/// `post_signed_to` with a JSON body; returns the status and the JSON answer.
pub async fn post_json_to(
    client: &reqwest::Client,
    base: &str,
    webhook_id: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let (s, v, _) = post_signed_to(client, base, webhook_id, body, "application/json").await;
    (s, v)
}

/// `GET {base}{path}` with the admin token; the JSON answer.
pub async fn admin_get_at(client: &reqwest::Client, base: &str, path: &str) -> serde_json::Value {
    client
        .get(format!("{base}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin request")
        .json()
        .await
        .expect("admin json")
}

/// The Python interpreter tests run: `PBR_TEST_PYTHON` (set by scripts/test.sh to
/// its virtual environment, where `standardwebhooks` is installed), else `python3`.
pub fn python() -> String {
    std::env::var("PBR_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// The relay's `/metrics` page, scraped with the admin token.
pub async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("scrape /metrics")
        .text()
        .await
        .expect("/metrics text")
}

/// The value of one sample of `GET {base}/metrics` (admin token), named as the
/// exposition writes it, e.g. `postback_relay_rule_reloads_total{result="failed"}`;
/// 0 when the sample is not there.
pub async fn metric(client: &reqwest::Client, base: &str, sample: &str) -> f64 {
    metrics_text(client, base)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// One row of the kernel's IPv4 TCP socket table (`/proc/net/tcp`).
struct TcpRow {
    local_port: u16,
    remote_port: u16,
    /// `0A` listening, `01` established.
    state: String,
    /// Listening: connections waiting to be accepted; else bytes not yet read.
    rx_queue: u64,
}

fn tcp_table() -> Vec<TcpRow> {
    let text = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap_or(""), 16).ok();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let rx = f.get(4)?.split(':').nth(1)?;
            Some(TcpRow {
                local_port: port(f.get(1)?)?,
                remote_port: port(f.get(2)?)?,
                state: f.get(3)?.to_string(),
                rx_queue: u64::from_str_radix(rx, 16).ok()?,
            })
        })
        .collect()
}

/// Polls the socket table every 10 ms until `cond` holds or `within` passes.
fn until_tcp(within: Duration, cond: impl Fn(&[TcpRow]) -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond(&tcp_table()) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        // Pacing: the poll interval of a condition wait with a deadline.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the listener on 127.0.0.1:`port` has accepted every connection made
/// to it (its accept queue is empty); whether it did within `within`.
pub fn accept_queue_empty(port: u16, within: Duration) -> bool {
    until_tcp(within, |rows| {
        rows.iter()
            .any(|r| r.local_port == port && r.state == "0A" && r.rx_queue == 0)
    })
}

/// Waits until the server end of `stream` (a loopback connection) has read every byte
/// sent on it: the server has taken what was written, e.g. a request's head; whether
/// it did within `within`.
pub fn server_read_all(stream: &std::net::TcpStream, within: Duration) -> bool {
    let server = stream.peer_addr().expect("peer address").port();
    let client = stream.local_addr().expect("local address").port();
    until_tcp(within, |rows| {
        rows.iter().any(|r| {
            r.local_port == server && r.remote_port == client && r.state == "01" && r.rx_queue == 0
        })
    })
}

/// The resident memory of process `pid` in KiB (0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// The status of `GET {base}/readyz` (0 when the relay does not answer).
pub async fn readyz(client: &reqwest::Client, base: &str) -> u16 {
    client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// The entry of destination `name` in `GET {base}/admin/destinations` (`Null` when
/// it is not listed).
pub async fn destination_at(client: &reqwest::Client, base: &str, name: &str) -> serde_json::Value {
    let v = admin_get_at(client, base, "/admin/destinations").await;
    v["destinations"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["name"] == name).cloned())
        .unwrap_or_default()
}

/// Writes `config_text(extra)` as `dir/postback-relay.toml` with an empty `dir/rules`;
/// returns the config's path.
pub fn config_dir(dir: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("rules")).expect("rules dir");
    let cfg = dir.join("postback-relay.toml");
    std::fs::write(&cfg, config_text(extra)).expect("config");
    cfg
}

/// A TLS connection to `addr` that speaks HTTP/2 (ALPN h2), trusting only the PEM
/// certificate `ca` (issued for `localhost`).
pub async fn h2_connection(
    addr: &str,
    ca: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
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
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS")
}

/// A port that was free a moment ago (bound, read, released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The real binary running `serve`, its stderr collected line by line; killed on drop.
pub struct RelayProcess {
    pub child: Child,
    /// The address from the "ready" line, e.g. `127.0.0.1:8080`.
    pub addr: String,
    /// `http://{addr}`.
    pub base: String,
    log: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl RelayProcess {
    /// Runs `serve --config CONFIG` with `RUST_LOG=rust_log` and waits for it to be ready.
    pub fn spawn(config: &Path, rust_log: &str) -> RelayProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_postback-relay"));
        cmd.args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null());
        Self::spawn_command(cmd)
    }

    /// Runs `cmd` (the binary with its `serve` arguments and environment set up), its
    /// stdout discarded and its stderr collected, and waits for its line
    /// `postback-relay ready listen=ADDR`.
    pub fn spawn_command(mut cmd: Command) -> RelayProcess {
        // Text logs: tests look for `listen=ADDR` and messages; JSON has its own test.
        cmd.args(["--log-format", "text"]);
        Self::spawn_logging(cmd)
    }

    /// `spawn_command` without choosing the log format.
    pub fn spawn_logging(cmd: Command) -> RelayProcess {
        match Self::try_spawn_logging(cmd) {
            Ok(p) => p,
            Err((code, log)) => panic!("relay did not become ready (exit {code:?}); log:\n{log}"),
        }
    }

    /// Runs `serve --config CONFIG` (text logs at `info`): the ready relay, or, if it
    /// exits first, its exit code and everything it printed.
    pub fn try_spawn(config: &Path) -> Result<RelayProcess, (Option<i32>, String)> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_postback-relay"));
        cmd.args(["serve", "--config"])
            .arg(config)
            .args(["--log-format", "text"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        Self::try_spawn_logging(cmd)
    }

    /// `spawn_logging`, returning the exit code and log of a relay that exits (or does
    /// not get ready within 30 s) instead of panicking.
    pub fn try_spawn_logging(mut cmd: Command) -> Result<RelayProcess, (Option<i32>, String)> {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary starts");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        let reader = std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Logged first, so that the ready line is in the log once spawn returns.
                if let Ok(mut l) = log2.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
                if line.contains("postback-relay ready") {
                    let json = serde_json::from_str::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v["listen"].as_str().map(str::to_string));
                    if let Some(addr) = json.or_else(|| {
                        line.split_whitespace()
                            .find_map(|w| w.strip_prefix("listen=").map(str::to_string))
                    }) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr.to_string());
                        }
                    }
                }
            }
            // End of its output: the process exited (or closed stderr) before ready.
            if let Some(tx) = tx.take() {
                let _ = tx.send(String::new());
            }
        });
        let mut process = RelayProcess {
            child,
            addr: String::new(),
            base: String::new(),
            log,
            reader: Some(reader),
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) if !addr.is_empty() => {
                process.base = format!("http://{addr}");
                process.addr = addr;
                Ok(process)
            }
            _ => {
                let code = process.wait_exit(Duration::from_secs(5));
                if code.is_none() {
                    process.kill();
                }
                if let Some(reader) = process.reader.take() {
                    let _ = reader.join();
                }
                Err((code, process.log()))
            }
        }
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; returns whether it did within `within`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            // Pacing: the poll interval of a condition wait with a deadline.
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill");
    }

    /// Waits for the process to exit; its exit code, or `None` if it is still running
    /// after `within` (or was killed by a signal).
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st.code();
            }
            // Pacing: the poll interval of a condition wait with a deadline.
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL (kill -9), then waits for the process and for the rest of its log.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The store a test relay runs on: the embedded one, or a Redis key prefix of its own
/// (deleted when this is dropped).
pub enum TestStore {
    Embedded,
    Redis { url: String, prefix: String },
}

impl TestStore {
    /// The Redis at `PBR_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`) under a
    /// fresh prefix; `None` when there is none here, the test skipped (`skip`: with
    /// `CI=true` a missing Redis fails the test).
    pub fn redis(test: &str) -> Option<TestStore> {
        let url =
            std::env::var("PBR_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let up = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        match up {
            Ok(_) => Some(TestStore::Redis {
                url,
                prefix: format!("pbr-it-{:012x}", rand::random::<u64>() >> 16),
            }),
            Err(e) => {
                skip(test, &format!("no Redis at {url} ({e}); set PBR_TEST_REDIS_URL or start redis-server (scripts/ensure-redis.sh)"));
                None
            }
        }
    }

    /// The `[store]` section for the config (empty for the embedded store); a claim
    /// of a killed relay goes to another after `claim_timeout`.
    pub fn config(&self, claim_timeout: &str) -> String {
        match self {
            TestStore::Embedded => String::new(),
            TestStore::Redis { url, prefix } => format!(
                "\n[store]\nbackend = \"redis\"\nredis_url = \"{url}\"\nredis_prefix = \"{prefix}\"\nredis_claim_timeout = \"{claim_timeout}\"\n"
            ),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            TestStore::Embedded => "embedded",
            TestStore::Redis { .. } => "redis",
        }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let TestStore::Redis { url, prefix } = self else {
            return;
        };
        let Ok(mut conn) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection())
        else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{{{prefix}}}*"))
            .query(&mut conn)
            .unwrap_or_default();
        for k in keys {
            let _: Result<i64, _> = redis::cmd("DEL").arg(k).query(&mut conn);
        }
    }
}
