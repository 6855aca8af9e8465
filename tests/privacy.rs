//! Secrets and personal data stay where they belong: a canary event goes through
//! accept, failure, dead letter, replay and delivery on the real binary and shows up
//! in no log line, metric, admin answer or stored failure reason; rule files cannot
//! read the relay's own secrets; the CLI ignores HTTP proxies.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use postback_relay::fake_partner::{FakePartner, Reply};

const EMAIL: &str = "canary.person@example.com";
const PHONE: &str = "+1 555 0199 7731";
const PHONE_DIGITS: &str = "155501997731";
const IP: &str = "203.0.113.77";
const CLICK: &str = "clk-CANARY-7f3e";

fn canary_event() -> String {
    serde_json::json!({
        "event_id": "evt-canary", "event_name": "purchase", "click_id": CLICK,
        "user": {"email": EMAIL, "phone": PHONE, "ip": IP},
        "properties": {"value": 1.5}
    })
    .to_string()
}

fn leaks(text: &str) -> Vec<&'static str> {
    [EMAIL, PHONE, PHONE_DIGITS, IP, CLICK, "canary.person"]
        .into_iter()
        .filter(|c| text.contains(c))
        .collect()
}

fn write_relay(dir: &Path, partner_url: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("rules/aff.toml"),
        format!(
            r#"[destination]
url = "{partner_url}?c={{click_id}}&em={{user.email}}&ph={{user.phone}}&ip={{user.ip}}"
method = "GET"
retry = {{ max_attempts = 3, give_up_after = "1h", initial_backoff = "50ms", max_backoff = "100ms" }}

[privacy]
allow = ["click_id", "user.email", "user.phone", "user.ip"]
hash = ["user.email", "user.phone"]
truncate_ip = ["user.ip"]
"#
        ),
    )
    .unwrap();
    let cfg = dir.join("postback-relay.toml");
    // A fixed port: `dlq list` finds the running relay through `listen`.
    let listen = format!("listen = \"127.0.0.1:{}\"", free_port());
    std::fs::write(
        &cfg,
        config_text("").replace("listen = \"127.0.0.1:0\"", &listen),
    )
    .unwrap();
    cfg
}

#[tokio::test]
async fn a_canary_event_leaves_no_trace_in_logs_metrics_admin_answers_or_failure_reasons() {
    let partner = FakePartner::start().await.unwrap();
    // A partner that echoes what it got, as real ones do in their error bodies.
    partner.set_default(Reply::status(400).body(format!(
        "bad click {CLICK} for {EMAIL} from {IP} tel {PHONE}"
    )));
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_relay(tmp.path(), &partner.url("/pb"));
    let relay = RelayProcess::spawn(&cfg, "info,postback_relay=debug");
    let client = reqwest::Client::new();
    let (s, v) = post_json_to(&client, &relay.base, "m-canary", &canary_event()).await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");

    let mut seen = String::new();
    let dead = eventually(10, || async {
        admin_get_at(&client, &relay.base, "/admin/dlq").await["dead_letters"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
    })
    .await;
    assert!(dead, "dead-lettered");
    let dlq = admin_get_at(&client, &relay.base, "/admin/dlq").await;
    assert_eq!(
        dlq["dead_letters"][0]["last_error"], "HTTP 400 Bad Request (gave up: rejected)",
        "{dlq}"
    );
    seen.push_str(&dlq.to_string());
    seen.push_str(
        &admin_get_at(&client, &relay.base, "/admin/destinations")
            .await
            .to_string(),
    );
    let list = Command::new(env!("CARGO_BIN_EXE_postback-relay"))
        .args(["dlq", "list", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    seen.push_str(&String::from_utf8_lossy(&list.stdout));

    // Replay, and this time the partner takes it.
    partner.set_default(Reply::ok());
    let (s, v) = {
        let r = client
            .post(format!("{}/admin/dlq/replay", relay.base))
            .bearer_auth(ADMIN_TOKEN)
            .body(r#"{"all": true}"#)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(s, 200, "{v}");
    seen.push_str(&v);
    assert!(partner.wait_for_requests(2, Duration::from_secs(10)).await);
    let delivered = &partner.requests()[1];
    assert!(
        delivered.target.contains(&format!("c={CLICK}")),
        "the click ID reaches the partner"
    );
    assert!(
        delivered.target.contains("ip=203.0.113.0"),
        "{}",
        delivered.target
    );
    assert!(
        leaks(&delivered.target.replace(CLICK, "")).is_empty(),
        "{}",
        delivered.target
    );

    let metrics = client
        .get(format!("{}/metrics", relay.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    seen.push_str(&metrics.text().await.unwrap());
    relay.signal(libc::SIGTERM);
    let mut relay = relay;
    assert_eq!(relay.wait_exit(Duration::from_secs(20)), Some(0));
    let log = relay.log();
    assert!(
        log.contains("dead-lettered") && log.contains("HTTP 400 Bad Request"),
        "{log}"
    );
    // Statuses as numbers, no Rust values (`Some(400)`, `None`) in the log.
    assert!(
        log.contains("status=400") && !log.contains("Some(") && !log.contains("None"),
        "{log}"
    );
    assert!(
        leaks(&log).is_empty(),
        "canary {:?} in the log:\n{log}",
        leaks(&log)
    );
    assert!(
        leaks(&seen).is_empty(),
        "canary {:?} in:\n{seen}",
        leaks(&seen)
    );
}

#[test]
fn a_rule_reading_the_relays_secret_or_an_unlisted_variable_fails_check_located() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("relay.toml");
    std::fs::write(
        &cfg,
        "[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]\n[admin]\ntoken = \"${ADMIN_TOKEN_VAR}\"\n[rules]\nallow_env = [\"PARTNER_*\"]\n",
    )
    .unwrap();
    std::fs::create_dir(tmp.path().join("rules")).unwrap();
    let rule = tmp.path().join("rules/leaky.toml");
    std::fs::write(
        &rule,
        "[destination]\nmethod = \"GET\"\nurl = \"https://p.example/x?s=${POSTBACK_RELAY_SECRET}&a=${ADMIN_TOKEN_VAR}&h=${HOME}&ok=${PARTNER_KEY}\"\n[privacy]\nallow = [\"click_id\"]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_postback-relay"))
        .args(["check", "--config"])
        .arg(&cfg)
        .env("POSTBACK_RELAY_SECRET", SECRET)
        .env("ADMIN_TOKEN_VAR", "admin-token-value-0123456789")
        .env("PARTNER_KEY", "k")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let r = rule.display();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(&*r.to_string()))
        .collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "{r}:3:30: rule files may not read the environment variable POSTBACK_RELAY_SECRET"
        )),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{r}:3:57: rule files may not read the environment variable ADMIN_TOKEN_VAR"
        )),
        "{stderr}"
    );
    assert!(lines[2].starts_with(&format!("{r}:3:78: the rule file leaky.toml may read only the environment variables granted to it, and HOME is not; grant it in")), "{stderr}");
    assert!(
        !stderr.contains("admin-token-value") && !stderr.contains("MfKQ9r8"),
        "{stderr}"
    );
}

#[test]
fn send_and_dlq_ignore_http_proxies() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    std::fs::create_dir_all(tmp.path().join("rules")).unwrap();
    let cfg = tmp.path().join("postback-relay.toml");
    std::fs::write(
        &cfg,
        config_text("").replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\"")),
    )
    .unwrap();
    let _relay = RelayProcess::spawn(&cfg, "info");
    let events = tmp.path().join("e.json");
    std::fs::write(&events, event("p1", "install", "c-proxy")).unwrap();
    // A proxy that does not exist: a client that used it would fail.
    let proxied = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_postback-relay"))
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("http_proxy", "http://127.0.0.1:9")
            .env("ALL_PROXY", "http://127.0.0.1:9")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .unwrap()
    };
    let send = proxied(&["send", events.to_str().unwrap()]);
    assert!(
        send.status.success(),
        "{}",
        String::from_utf8_lossy(&send.stderr)
    );
    let list = proxied(&["dlq", "list"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
}

const BODY_TOKEN: &str = "BODYCANARY-3f9a/xyz+q";
const APP_TOKEN: &str = "APPCANARY-77aa11bb";

/// Every file under `dir`, whole.
fn all_bytes(dir: &Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).expect("readable dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            all_bytes(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn environment_values_in_a_body_and_params_are_markers_at_rest() {
    markers_at_rest(TestStore::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_values_in_a_body_and_params_are_markers_at_rest_on_redis() {
    let Some(store) = TestStore::redis("markers_at_rest_on_redis") else {
        return;
    };
    markers_at_rest(store).await;
}

/// Every value under the store's Redis prefix, as bytes (strings, hashes, streams,
/// sorted sets, sets, lists): what a canary must not be found in.
fn redis_bytes(url: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
    fn flatten(v: &redis::Value, out: &mut Vec<u8>) {
        match v {
            redis::Value::BulkString(b) => {
                out.extend_from_slice(b);
                out.push(b'\n');
            }
            redis::Value::SimpleString(s) => out.extend_from_slice(s.as_bytes()),
            redis::Value::Array(items) | redis::Value::Set(items) => {
                items.iter().for_each(|i| flatten(i, out))
            }
            redis::Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
                flatten(k, out);
                flatten(v, out);
            }),
            _ => {}
        }
    }
    let mut conn = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{prefix}*"))
        .query(&mut conn)
        .expect("keys");
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).expect("type");
        let cmd = match kind.as_str() {
            "string" => redis::cmd("GET").arg(&key).clone(),
            "hash" => redis::cmd("HGETALL").arg(&key).clone(),
            "stream" => redis::cmd("XRANGE").arg(&key).arg("-").arg("+").clone(),
            "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).clone(),
            "set" => redis::cmd("SMEMBERS").arg(&key).clone(),
            "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).clone(),
            _ => continue,
        };
        let v: redis::Value = cmd.query(&mut conn).expect("value");
        let mut bytes = key.clone().into_bytes();
        flatten(&v, &mut bytes);
        out.push((key, bytes));
    }
    out
}

async fn markers_at_rest(store: TestStore) {
    let partner = FakePartner::start().await.unwrap();
    // First attempts fail: the deliveries sit in the store (and its journal) a while.
    partner.set_default(Reply::status(503));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    let retry = "retry = { max_attempts = 5, give_up_after = \"1h\", initial_backoff = \"50ms\", max_backoff = \"100ms\" }";
    let url = partner.url("/pb");
    std::fs::write(
        dir.join("rules/jsonbody.toml"),
        format!("[destination]\nurl = \"{url}\"\nmethod = \"POST\"\n{retry}\n[params]\napp = \"${{PARTNER_APPTOKEN}}\"\n[body]\ntoken = \"${{PARTNER_BODYTOKEN}}\"\napp_token = \"{{params.app}}\"\nclick = \"{{click_id}}\"\n[privacy]\nallow = [\"click_id\"]\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("rules/formbody.toml"),
        format!("[destination]\nurl = \"{url}\"\nmethod = \"POST\"\nformat = \"form\"\n{retry}\n[body]\ntoken = \"${{PARTNER_BODYTOKEN}}\"\nclick = \"{{click_id}}\"\n[privacy]\nallow = [\"click_id\"]\n"),
    )
    .unwrap();
    let cfg = dir.join("postback-relay.toml");
    let extra = format!(
        "[rules]\nallow_env = [\"PARTNER_*\"]\n{}",
        store.config("5s")
    );
    std::fs::write(&cfg, config_text(&extra)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postback-relay"));
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .env("PARTNER_BODYTOKEN", BODY_TOKEN)
        .env("PARTNER_APPTOKEN", APP_TOKEN)
        .stdin(std::process::Stdio::null());
    let mut relay = RelayProcess::spawn_command(cmd);
    let client = reqwest::Client::new();
    let (s, v) = post_json_to(&client, &relay.base, "m-body", &canary_event()).await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    assert!(partner.wait_for_requests(2, Duration::from_secs(20)).await);
    if let TestStore::Redis { url, prefix } = &store {
        // Queued and retried: the stored requests are in Redis now (the click ID, which
        // the rules allow, shows the scan reads them), their secrets are not.
        let keys = redis_bytes(url, prefix);
        assert!(
            keys.iter().any(|(_, b)| contains(b, CLICK)),
            "the scan found no stored request"
        );
        for (key, bytes) in &keys {
            for needle in [BODY_TOKEN, APP_TOKEN, "BODYCANARY", "APPCANARY"] {
                assert!(
                    !contains(bytes, needle),
                    "{needle} in Redis key {key} while queued"
                );
            }
        }
    }
    partner.set_default(Reply::ok());
    assert!(partner.wait_for_requests(4, Duration::from_secs(20)).await);
    let done = eventually(20, || async {
        partner.answered_count() >= 4
            && admin_get_at(&client, &relay.base, "/admin/destinations").await["destinations"]
                .as_array()
                .is_some_and(|d| d.iter().all(|x| x["queue_depth"] == 0))
    })
    .await;
    assert!(done, "both delivered");
    // The partner got the real values, as JSON and form-encoded.
    let bodies: Vec<String> = partner
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).to_string())
        .collect();
    let pct = "BODYCANARY-3f9a%2Fxyz%2Bq";
    assert!(
        bodies
            .iter()
            .any(|b| b.contains(BODY_TOKEN) && b.contains(APP_TOKEN)),
        "{bodies:?}"
    );
    assert!(bodies.iter().any(|b| b.contains(pct)), "{bodies:?}");
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait_exit(Duration::from_secs(20)), Some(0));

    let mut files = Vec::new();
    all_bytes(&dir.join("data"), &mut files);
    assert!(!files.is_empty());
    let needles = [BODY_TOKEN, APP_TOKEN, pct, "BODYCANARY", "APPCANARY"];
    for (path, bytes) in &files {
        for needle in needles {
            assert!(!contains(bytes, needle), "{needle} in {}", path.display());
        }
    }
    // On Redis: in no key of the installation either (queue, receipts, dead letters).
    if let TestStore::Redis { url, prefix } = &store {
        let keys = redis_bytes(url, prefix);
        assert!(!keys.is_empty(), "the relay wrote to Redis");
        for (key, bytes) in &keys {
            for needle in needles {
                assert!(!contains(bytes, needle), "{needle} in Redis key {key}");
            }
        }
    }
}

#[test]
fn a_rule_file_naming_another_destinations_variable_is_refused_located_without_the_value() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("relay.toml");
    // The legacy shared list would let every file read PARTNER_*; the grant to google
    // makes PARTNER_OAUTH_* google's alone.
    std::fs::write(
        &cfg,
        "[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]\n[rules]\nallow_env = [\"PARTNER_*\"]\n[rules.env]\ngoogle = [\"PARTNER_OAUTH_*\"]\n",
    )
    .unwrap();
    std::fs::create_dir(tmp.path().join("rules")).unwrap();
    let ok = "[destination]\nmethod = \"GET\"\nurl = \"https://p.example/g?v=${PARTNER_OAUTH_REFRESH}\"\n[privacy]\nallow = [\"click_id\"]\n";
    std::fs::write(tmp.path().join("rules/google.toml"), ok).unwrap();
    let rule = tmp.path().join("rules/x6.toml");
    std::fs::write(
        &rule,
        "[destination]\nmethod = \"GET\"\nurl = \"https://p.example/x6?v=${PARTNER_OAUTH_REFRESH}\"\n[privacy]\nallow = [\"click_id\"]\n",
    )
    .unwrap();
    let value = "REFRESH-CANARY-0123456789";
    let out = Command::new(env!("CARGO_BIN_EXE_postback-relay"))
        .args(["check", "--config"])
        .arg(&cfg)
        .env("POSTBACK_RELAY_SECRET", SECRET)
        .env("PARTNER_OAUTH_REFRESH", value)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let r = rule.display().to_string();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("x6.toml")).collect();
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "{r}:3:31: PARTNER_OAUTH_REFRESH belongs to the rule file google.toml"
        ))),
        "{stderr}"
    );
    assert!(
        !stderr.contains("google.toml:"),
        "google may read it: {stderr}"
    );
    assert!(
        !stderr.contains("REFRESH-CANARY") && !stdout.contains("REFRESH-CANARY"),
        "{stderr}{stdout}"
    );
}

/// `/ui` with the admin token: the session cookie.
async fn ui_session(client: &reqwest::Client, base: &str) -> String {
    let resp = client
        .post(format!("{base}/ui/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_view_shows_field_names_and_fates_never_a_value() {
    let partner = FakePartner::start().await.unwrap();
    let aff = format!(
        "[destination]\nurl = \"{}\"\nmethod = \"GET\"\n[privacy]\nallow = [\"click_id\", \"user.email\"]\nhash = [\"user.email\"]\n",
        partner.url("/p?c={click_id}&em={user.email}")
    );
    let installs = format!(
        "[destination]\nurl = \"{}\"\nmethod = \"GET\"\n[when]\nevent_name = [\"install\"]\n[privacy]\nallow = [\"click_id\"]\n",
        partner.url("/i?c={click_id}")
    );
    let off = format!("enabled = false\n{aff}");
    let relay =
        TestRelay::start(&[("aff", &aff), ("installs", &installs), ("off", &off)], "").await;
    const NAME: &str = "NAMECANARY-purchase";
    const ORDER: &str = "ORDERCANARY-5521";
    let event = serde_json::json!({
        "event_id": "EVTCANARY-1", "event_name": NAME, "click_id": CLICK,
        "user": {"email": EMAIL, "phone": PHONE, "ip": IP},
        "properties": {"value": 1.5, "order_id": ORDER}
    });
    let (s, v) = relay.post_json("WEBHOOKCANARY-1", &event.to_string()).await;
    assert_eq!(s, 202, "{v}");
    // The same event again: a duplicate.
    let (s, v) = relay.post_json("WEBHOOKCANARY-2", &event.to_string()).await;
    assert_eq!((s, v["duplicates"].as_u64()), (202, Some(1)), "{v}");

    let recent = relay.admin_get("/admin/recent").await;
    let events = recent["events"].as_array().expect("events");
    assert_eq!(events.len(), 2, "{recent}");
    assert_eq!(events[0]["status"], "duplicate", "newest first: {recent}");
    let first = &events[1];
    assert!(
        first["fields"].as_array().is_some_and(
            |f| f.contains(&"user.phone".into()) && f.contains(&"properties.order_id".into())
        ),
        "{first}"
    );
    let dest = |name: &str| {
        first["destinations"]
            .as_array()
            .and_then(|l| l.iter().find(|d| d["destination"] == name).cloned())
            .unwrap_or_else(|| panic!("{name} in {first}"))
    };
    let aff_fate = dest("aff");
    assert_eq!(aff_fate["fate"], "sent", "{aff_fate}");
    assert!(
        aff_fate["dropped_fields"].as_array().is_some_and(
            |d| d.contains(&serde_json::json!({"field": "user.phone", "why": "not allowed"}))
        ),
        "{aff_fate}"
    );
    assert_eq!(
        aff_fate["changed_fields"],
        serde_json::json!([{"field": "user.email", "how": "hashed"}])
    );
    let skipped = dest("installs");
    assert_eq!(skipped["fate"], "skipped", "{skipped}");
    assert_eq!(
        skipped["reason"],
        "event_name is not listed in [when] event_name = [\"install\"]"
    );
    assert!(
        skipped["at"]
            .as_str()
            .is_some_and(|a| a.ends_with("installs.toml:5:1")),
        "{skipped}"
    );
    assert_eq!(dest("off")["fate"], "disabled");
    assert_eq!(events[0]["destinations"][0]["fate"], "duplicate");
    assert_eq!(
        relay
            .admin_get("/admin/recent?destination=installs&limit=1")
            .await["events"][0]["destinations"],
        serde_json::json!([skipped])
    );

    // Neither the admin API nor the page's calls hold any value of the event.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let session = ui_session(&client, &relay.base).await;
    let mut seen = recent.to_string();
    for path in ["/ui/api/recent", "/ui/api/state", "/ui"] {
        let text = client
            .get(format!("{}{path}", relay.base))
            .header("cookie", &session)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        seen.push_str(&text);
    }
    seen.push_str(&relay.admin_get("/admin/destinations").await.to_string());
    let canaries = ["NAMECANARY", "ORDERCANARY", "EVTCANARY", "WEBHOOKCANARY"];
    let found: Vec<&str> = canaries.into_iter().filter(|c| seen.contains(c)).collect();
    assert!(
        leaks(&seen).is_empty() && found.is_empty(),
        "canary {:?} {found:?} in:\n{seen}",
        leaks(&seen)
    );
    relay.stop().await;
}
