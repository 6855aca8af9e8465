//! The command line, as a user runs it: the real binary, real files, a real relay.
//! `check`, `preview`, `send` and `serve` (startup errors, SIGTERM) with their exit
//! codes and exactly what they print.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use postback_relay::config::WebhookSecret;
use postback_relay::webhooks::sign;
use sha2::{Digest, Sha256};

use common::{config_text, free_port, server_read_all, RelayProcess, SECRET};

const BIN: &str = env!("CARGO_BIN_EXE_postback-relay");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Environment variables the shipped config and rules read: none may leak from the
/// test's environment into the child.
const ENV_PREFIXES: &[&str] = &[
    "POSTBACK_RELAY_",
    "META_",
    "ADJUST_",
    "APPSFLYER_",
    "GOOGLE_ADS_",
    "TIKTOK_",
];

/// The binary with a clean environment for the relay and `RUST_LOG=info`.
fn bin() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if ENV_PREFIXES.iter().any(|p| k.starts_with(p)) {
            c.env_remove(&k);
        }
    }
    c.env("RUST_LOG", "info");
    c.stdin(Stdio::null());
    c
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn finish(out: Output) -> Run {
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn run(args: &[&str], cwd: &Path) -> Run {
    finish(
        bin()
            .args(args)
            .current_dir(cwd)
            .output()
            .expect("binary runs"),
    )
}

fn run_stdin(args: &[&str], cwd: &Path, stdin: &str) -> Run {
    let mut child = bin()
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    finish(child.wait_with_output().expect("wait"))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Lines of stderr that are diagnostics (`FILE:LINE:COL: ...`) about files under `dir`.
fn located_lines<'a>(stderr: &'a str, dir: &Path) -> Vec<&'a str> {
    stderr.lines().filter(|l| l.starts_with(s(dir))).collect()
}

#[test]
fn help_and_version_exit_0_usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let help = run(&["--help"], tmp.path());
    assert_eq!(help.code, 0, "{}", help.stderr);
    for cmd in ["serve", "check", "preview", "send", "dlq"] {
        assert!(
            help.stdout.contains(cmd),
            "--help lists {cmd}: {}",
            help.stdout
        );
    }
    let version = run(&["--version"], tmp.path());
    assert_eq!(version.code, 0);
    assert_eq!(
        version.stdout.trim(),
        format!("postback-relay {}", env!("CARGO_PKG_VERSION"))
    );
    let sub_help = run(&["check", "--help"], tmp.path());
    assert_eq!(sub_help.code, 0);
    assert!(sub_help.stdout.contains("--config"), "{}", sub_help.stdout);

    for args in [
        &["frobnicate"][..],                          // unknown subcommand
        &["preview"][..],                             // missing EVENT
        &["send"][..],                                // missing EVENTS
        &["check", "--no-such-flag"][..],             // unknown flag
        &["serve", "--listen", "nope"][..],           // not an address
        &[][..],                                      // no subcommand at all
        &["dlq", "replay", "--id", "x", "--all"][..], // conflicting flags
    ] {
        let r = run(args, tmp.path());
        assert_eq!(r.code, 2, "{args:?} is a usage error: {}", r.stderr);
        // An error naming the problem, or (no subcommand) the usage, on stderr.
        assert!(
            (r.stderr.starts_with("error: ") && r.stderr.contains("--help"))
                || (args.is_empty()
                    && r.stderr.contains("Usage: postback-relay")
                    && r.stderr.contains("<COMMAND>")),
            "{args:?}: {}",
            r.stderr
        );
        assert_eq!(r.stdout, "", "{args:?}");
    }
    // Usage errors touch nothing.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn check_accepts_the_shipped_config_and_rules_with_no_environment() {
    let repo = Path::new(REPO);
    // As the README runs it: from the repository root, with the default config path.
    let r = run(&["check"], repo);
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    // The demo config's two unsafe settings are warned about (tests/safe_defaults.rs).
    assert_eq!(
        r.stdout.trim(),
        "ok: postback-relay.toml and rules (1 enabled destination, 2 warnings)"
    );
    // No warning either, version warnings included: every shipped rule pins a
    // partner API version more than 60 days from its sunset, today (issue 19).
    // (The demo config's own unsafe settings are its only warnings.)
    let others: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("warning") && !l.contains("warning: unsafe for production: "))
        .collect();
    assert!(others.is_empty(), "{}", r.stderr);
    // And from elsewhere: the rules directory is relative to the config file.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = repo.join("postback-relay.toml");
    let r = run(&["check", "--config", s(&cfg)], tmp.path());
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert_eq!(
        r.stdout.trim(),
        format!(
            "ok: {} and {} (1 enabled destination, 2 warnings)",
            cfg.display(),
            repo.join("rules").display()
        )
    );
    assert!(!repo.join("data").exists() || repo.join("data").is_dir());
}

const BROKEN_CONFIG: &str = r#"listen = "127.0.0.1:0"
data_dir = "data"
rules_dir = "partner-rules"

[ingest]
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
tolerance = "5 parsecs"
max_bach = 100
"#;

const BROKEN_RULE: &str = r#"# a partner rule with two mistakes
[destination]
url = "https://a.example/p?c={click_id}&e={user.email}"
method = "GET"
retri = 3

[privacy]
allow = ["click_id"]
"#;

#[test]
fn check_prints_every_config_and_rule_error_located_in_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("relay.toml");
    std::fs::write(&cfg, BROKEN_CONFIG).unwrap();
    let rules = tmp.path().join("partner-rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(rules.join("bad.toml"), BROKEN_RULE).unwrap();
    std::fs::write(
        rules.join("good.toml"),
        "[destination]\nurl = \"https://b.example/p?c={click_id}\"\nmethod = \"GET\"\n[privacy]\nallow = [\"click_id\"]\n",
    )
    .unwrap();
    // Run from a directory with no `rules/` of its own, so that the rules checked
    // can only be the ones the (broken) config names.
    let elsewhere = tempfile::tempdir().unwrap();
    let r = run(&["check", "--config", s(&cfg)], elsewhere.path());
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stdout, "");
    let lines = located_lines(&r.stderr, tmp.path());
    let c = cfg.display();
    let b = rules.join("bad.toml");
    let b = b.display();
    let expected = [
        format!("{c}:7:13: `ingest.tolerance`: unknown unit \"parsecs\" in \"5 parsecs\""),
        format!("{c}:8:1: unknown key `max_bach` in [ingest]; did you mean `max_batch`?"),
        // In a rule file, unknown keys (causes) come before what they may cause.
        format!("{b}:5:1: unknown key `retri` in [destination]; did you mean `retry`?"),
        format!("{b}:3:43: `{{user.email}}` names a field that [privacy] does not allow"),
    ];
    assert_eq!(lines.len(), expected.len(), "stderr:\n{}", r.stderr);
    for (line, want) in lines.iter().zip(&expected) {
        assert!(line.starts_with(want.as_str()), "want {want}\ngot  {line}");
    }
    assert!(
        lines[3].contains("add \"user.email\" to `allow`"),
        "says what to write: {}",
        lines[3]
    );
    assert_eq!(r.stderr.lines().last(), Some("4 errors"), "{}", r.stderr);
    assert!(!tmp.path().join("data").exists(), "check writes nothing");
}

#[test]
fn check_names_an_unset_variable_with_its_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("relay.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\n\n[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]\n\n[rules]\nallow_env = [\"PBR_TEST_*\"]\n",
    )
    .unwrap();
    std::fs::create_dir(tmp.path().join("rules")).unwrap();
    let r = run(&["check", "--config", s(&cfg)], tmp.path());
    assert_eq!(r.code, 1, "{}", r.stderr);
    let lines = located_lines(&r.stderr, tmp.path());
    assert_eq!(
        lines,
        [format!(
            "{}:4:13: environment variable POSTBACK_RELAY_SECRET is not set; set it, or write ${{POSTBACK_RELAY_SECRET:-default}} to give a default",
            cfg.display()
        )],
        "one error, the cause; stderr:\n{}",
        r.stderr
    );

    // Set, the same file is valid: the message was about the environment only.
    let ok = finish(
        bin()
            .args(["check", "--config", s(&cfg)])
            .env("POSTBACK_RELAY_SECRET", SECRET)
            .output()
            .unwrap(),
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);

    // In a rule file too.
    std::fs::write(
        &cfg,
        format!("listen = \"127.0.0.1:0\"\n[ingest]\nsecrets = [\"{SECRET}\"]\n[rules]\nallow_env = [\"PBR_TEST_*\"]\n"),
    )
    .unwrap();
    let rule = tmp.path().join("rules/aff.toml");
    std::fs::write(
        &rule,
        "[destination]\nmethod = \"GET\"\nurl = \"https://a.example/${PBR_TEST_UNSET_TOKEN}?c={click_id}\"\n[privacy]\nallow = [\"click_id\"]\n",
    )
    .unwrap();
    let r = run(&["check", "--config", s(&cfg)], tmp.path());
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        located_lines(&r.stderr, tmp.path()),
        [format!(
            "{}:3:26: environment variable PBR_TEST_UNSET_TOKEN is not set; set it, or write ${{PBR_TEST_UNSET_TOKEN:-default}} to give a default",
            rule.display()
        )],
        "{}",
        r.stderr
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn preview_prints_the_exact_requests_and_sends_and_writes_nothing() {
    let repo = Path::new(REPO);
    // The example event, made today's: partners' age limits (Meta: 7 days) would
    // otherwise mark it too old once the example's date is a week past.
    let today = tempfile::tempdir().unwrap();
    let event = today.path().join("purchase.json");
    let example = std::fs::read_to_string(repo.join("examples/purchase.json")).unwrap();
    std::fs::write(
        &event,
        example.replace(
            "\"2026-11-25T10:00:00Z\"",
            &format!("{}", chrono::Utc::now().timestamp()),
        ),
    )
    .unwrap();

    // The shipped files as they are, from the repository root.
    let r = run(&["preview", s(&event)], repo);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let aff = r
        .stdout
        .split("== example-aff ==\n")
        .nth(1)
        .expect("an example-aff section");
    assert_eq!(
        aff.lines().next(),
        Some("GET http://127.0.0.1:9999/postback?clickid=clk_9f2c&goal=purchase&payout=9.99"),
        "{}",
        r.stdout
    );

    // A copy whose data_dir points into a temp dir, and whose example-aff URL points
    // at a listener of ours: nothing may arrive, nothing may be created.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("state/data");
    let cfg_text = std::fs::read_to_string(repo.join("postback-relay.toml"))
        .unwrap()
        .replace(
            "data_dir = \"data\"",
            &format!("data_dir = \"{}\"", s(&data)),
        );
    assert!(cfg_text.contains(s(&data)));
    let cfg = tmp.path().join("postback-relay.toml");
    std::fs::write(&cfg, cfg_text).unwrap();
    copy_dir(&repo.join("rules"), &tmp.path().join("rules"));
    let partner = TcpListener::bind("127.0.0.1:0").unwrap();
    partner.set_nonblocking(true).unwrap();
    let port = partner.local_addr().unwrap().port();
    let aff_rule = tmp.path().join("rules/example-aff.toml");
    let text = std::fs::read_to_string(&aff_rule).unwrap();
    std::fs::write(
        &aff_rule,
        text.replace("127.0.0.1:9999", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    // Every rule enabled, so nothing is "not sent" merely for being disabled.
    for e in std::fs::read_dir(tmp.path().join("rules")).unwrap() {
        let p = e.unwrap().path();
        let t = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, t.replace("enabled = false", "enabled = true")).unwrap();
    }
    let before: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    let r = run(&["preview", "--config", s(&cfg), s(&event)], tmp.path());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = &r.stdout;
    assert!(
        out.contains(&format!(
            "== example-aff ==\nGET http://127.0.0.1:{port}/postback?clickid=clk_9f2c&goal=purchase&payout=9.99\n"
        )),
        "{out}"
    );

    // Meta: the request, e-mail and phone hashed after normalising as Meta does, the
    // real IP (Meta asks for it), the token and every other value from the environment
    // (here the pixel ID's default) masked, as `/ui` masks them.
    let meta = out
        .split("== meta ==\n")
        .nth(1)
        .expect("a meta section")
        .split("\n== ")
        .next()
        .unwrap();
    let mut meta_lines = meta.lines();
    assert_eq!(
        meta_lines.next(),
        Some("POST https://graph.facebook.com/v27.0/***/events")
    );
    assert_eq!(meta_lines.next(), Some("Authorization: Bearer ***"));
    assert_eq!(meta_lines.next(), Some("Content-Type: application/json"));
    assert_eq!(meta_lines.next(), Some(""));
    let body: serde_json::Value =
        serde_json::from_str(&meta_lines.collect::<Vec<_>>().join("\n")).expect("JSON body");
    let user = &body["data"][0]["user_data"];
    assert_eq!(user["em"], sha256_hex("a@b.com"), "{body:#}");
    assert_eq!(user["ph"], sha256_hex("16502530000"), "{body:#}");
    assert_eq!(user["client_ip_address"], "203.0.113.7");
    assert_eq!(
        body["data"][0]["event_source_url"],
        "https://shop.example/checkout"
    );
    assert_eq!(body["data"][0]["event_name"], "Purchase");
    assert_eq!(body["data"][0]["custom_data"]["value"], 9.99);
    assert!(
        !out.contains("A@B.com") && !out.contains("a@b.com"),
        "{out}"
    );
    assert!(!out.contains("replace-me"), "secrets are masked: {out}");
    // Default deny: the IDFA is not in Meta's allow list.
    assert!(!meta.contains("6D92078A"), "{meta}");

    // Nothing written, nothing sent.
    assert!(!data.exists(), "preview created the data dir");
    assert!(!tmp.path().join("state").exists());
    let after: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after);
    // `preview` has exited: a connection it made would be in the (non-blocking)
    // listener's accept queue already.
    match partner.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("preview connected to the partner: {other:?}"),
    }
}

/// `serve` with this config, as `bin()` runs it; returns once it is ready.
fn spawn_serve(cfg: &Path) -> RelayProcess {
    let mut cmd = bin();
    cmd.args(["serve", "--config", s(cfg)]);
    RelayProcess::spawn_command(cmd)
}

/// `serve` with this config, waited for until its ready line names `addr`.
fn spawn_ready(cfg: &Path, addr: &str) -> RelayProcess {
    let relay = spawn_serve(cfg);
    assert!(
        relay.wait_log(
            &format!("postback-relay ready listen={addr}"),
            Duration::from_secs(30)
        ),
        "{}",
        relay.log()
    );
    relay
}

/// A config for a real relay on a free port; returns (config path, listen address).
fn serve_config(dir: &Path) -> (PathBuf, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    let cfg = dir.join("postback-relay.toml");
    std::fs::write(
        &cfg,
        config_text("").replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\"")),
    )
    .unwrap();
    (cfg, addr)
}

/// `send` output: the status line, then the JSON answer.
fn parse_send(r: &Run) -> serde_json::Value {
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    let (status, body) = r.stdout.split_once('\n').expect("two parts");
    assert_eq!(status, "HTTP 202 Accepted", "{}", r.stdout);
    serde_json::from_str(body).expect("JSON answer")
}

fn ev(id: &str) -> serde_json::Value {
    serde_json::json!({"event_id": id, "event_name": "purchase", "click_id": format!("clk-{id}"),
                       "properties": {"value": 1.5}})
}

#[test]
fn send_signs_one_event_an_array_and_ndjson_and_reads_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, addr) = serve_config(tmp.path());
    let relay = spawn_ready(&cfg, &addr);
    let files = tmp.path().join("events");
    std::fs::create_dir(&files).unwrap();
    let one = files.join("one.json");
    std::fs::write(&one, serde_json::to_string_pretty(&ev("e1")).unwrap()).unwrap();
    let array = files.join("array.json");
    std::fs::write(&array, serde_json::json!([ev("e2"), ev("e3")]).to_string()).unwrap();
    let nd = files.join("events.ndjson");
    std::fs::write(&nd, format!("{}\n{}\n{}\n", ev("e4"), ev("e5"), ev("e6"))).unwrap();

    let send = |file: &Path| run(&["send", "--config", s(&cfg), s(file)], tmp.path());
    let statuses = |v: &serde_json::Value| -> Vec<(String, String)> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["event_id"].as_str().unwrap_or("").to_string(),
                    r["status"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let pairs = |ids: &[&str], st: &str| -> Vec<(String, String)> {
        ids.iter()
            .map(|i| (i.to_string(), st.to_string()))
            .collect()
    };

    let v = parse_send(&send(&one));
    assert_eq!(
        (
            v["accepted"].as_u64(),
            v["duplicates"].as_u64(),
            v["rejected"].as_u64()
        ),
        (Some(1), Some(0), Some(0)),
        "{v}"
    );
    assert_eq!(statuses(&v), pairs(&["e1"], "accepted"));

    let v = parse_send(&send(&array));
    assert_eq!(
        (v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (Some(2), Some(0)),
        "{v}"
    );
    assert_eq!(statuses(&v), pairs(&["e2", "e3"], "accepted"));

    let v = parse_send(&send(&nd));
    assert_eq!(
        (v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (Some(3), Some(0)),
        "{v}"
    );
    assert_eq!(statuses(&v), pairs(&["e4", "e5", "e6"], "accepted"));

    // The same files again: every event is a duplicate.
    let v = parse_send(&send(&one));
    assert_eq!(
        (v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (Some(0), Some(1)),
        "{v}"
    );
    assert_eq!(statuses(&v), pairs(&["e1"], "duplicate"));
    let v = parse_send(&send(&nd));
    assert_eq!(
        (v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (Some(0), Some(3)),
        "{v}"
    );
    assert_eq!(statuses(&v), pairs(&["e4", "e5", "e6"], "duplicate"));

    // `-` reads standard input (NDJSON here, then one event).
    let r = run_stdin(
        &["send", "--config", s(&cfg), "-"],
        tmp.path(),
        &format!("{}\n{}\n", ev("e7"), ev("e8")),
    );
    let v = parse_send(&r);
    assert_eq!(statuses(&v), pairs(&["e7", "e8"], "accepted"));
    let r = run_stdin(
        &["send", "--config", s(&cfg), "-"],
        tmp.path(),
        &ev("e7").to_string(),
    );
    let v = parse_send(&r);
    assert_eq!(statuses(&v), pairs(&["e7"], "duplicate"));

    // A rejected event beside an accepted one is reported, and the exit code is
    // still 0 (the relay answered 202).
    let r = run_stdin(
        &["send", "--config", s(&cfg), "-"],
        tmp.path(),
        &format!(r#"[{{"event_id": "e9"}}, {}]"#, ev("e10")),
    );
    let v = parse_send(&r);
    assert_eq!(
        (v["rejected"].as_u64(), v["accepted"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    // Every event rejected: the relay answers 400 with the same results; exit 1.
    let r = run_stdin(
        &["send", "--config", s(&cfg), "-"],
        tmp.path(),
        r#"[{"event_id": "e11"}]"#,
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    let (status, body) = r.stdout.split_once('\n').expect("two parts");
    assert_eq!(status, "HTTP 400 Bad Request", "{}", r.stdout);
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON answer");
    assert_eq!(
        v["results"][0],
        serde_json::json!({"index": 0, "status": "rejected", "error": "event_name: missing"}),
        "{v}"
    );

    let mut relay = relay;
    relay.signal(libc::SIGTERM);
    assert_eq!(
        relay.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        relay.log()
    );

    // With the relay gone, `send` says it cannot reach it and exits 1.
    let r = send(&one);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains(&format!(
            "cannot reach the relay at http://{addr}/v1/events"
        )),
        "{}",
        r.stderr
    );
}

#[test]
fn serve_with_an_invalid_config_or_strict_with_an_invalid_rule_exits_1_located_and_never_binds() {
    for broken_rule in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        // We hold the port: a relay that tried to bind would fail with a listen error
        // instead of the located config error.
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap().to_string();
        let cfg = tmp.path().join("relay.toml");
        std::fs::create_dir(tmp.path().join("rules")).unwrap();
        let (bad_file, want) = if broken_rule {
            std::fs::write(
                &cfg,
                config_text("")
                    .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\"")),
            )
            .unwrap();
            let rule = tmp.path().join("rules/aff.toml");
            std::fs::write(&rule, BROKEN_RULE).unwrap();
            (
                rule,
                [
                    ":3:43: `{user.email}` names a field",
                    ":5:1: unknown key `retri`",
                ],
            )
        } else {
            std::fs::write(
                &cfg,
                BROKEN_CONFIG.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\"")),
            )
            .unwrap();
            (
                cfg.clone(),
                [":7:13: `ingest.tolerance`", ":8:1: unknown key `max_bach`"],
            )
        };
        let started = Instant::now();
        // A broken rule file stops only a strict start (the default starts without it).
        let strict: &[&str] = if broken_rule { &["--strict"] } else { &[] };
        let args = [&["serve", "--config", s(&cfg)][..], strict].concat();
        let r = run(&args, tmp.path());
        assert_eq!(r.code, 1, "stderr: {}", r.stderr);
        assert!(started.elapsed() < Duration::from_secs(20));
        for w in want {
            let line = format!("{}{w}", bad_file.display());
            assert!(r.stderr.contains(&line), "want {line} in:\n{}", r.stderr);
        }
        assert!(!r.stderr.contains("ready"), "{}", r.stderr);
        assert!(
            !r.stderr.contains("cannot listen"),
            "tried to bind: {}",
            r.stderr
        );
        assert!(
            !tmp.path().join("data").exists(),
            "opened the store: {}",
            r.stderr
        );
        drop(held);
    }
}

/// Writes a signed request's head and the first half of its body; returns the stream
/// and the rest of the body.
fn start_slow_request(addr: &str, body: &str) -> (TcpStream, Vec<u8>) {
    let secret = WebhookSecret::parse(SECRET).unwrap();
    let ts = chrono::Utc::now().timestamp();
    let sig = sign(&secret, "msg-inflight", ts, body.as_bytes());
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nwebhook-id: msg-inflight\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {sig}\r\n\r\n",
        body.len()
    );
    let half = body.len() / 2;
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body.as_bytes()[..half]).unwrap();
    stream.flush().unwrap();
    (stream, body.as_bytes()[half..].to_vec())
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, addr) = serve_config(tmp.path());
    let mut relay = spawn_serve(&cfg);
    assert!(
        relay.wait_log("postback-relay ready", Duration::from_secs(30)),
        "{}",
        relay.log()
    );
    let body = ev("inflight-1").to_string();
    let (mut stream, rest) = start_slow_request(&addr, &body);
    // The server has read the head (and the half body): the request is in flight.
    assert!(
        server_read_all(&stream, Duration::from_secs(10)),
        "the relay did not read the request's head within 10 s"
    );

    relay.signal(libc::SIGTERM);
    assert!(
        relay.wait_log("shutting down", Duration::from_secs(10)),
        "{}",
        relay.log()
    );
    // Shutdown has begun and the process is still there, waiting for our request
    // (the 202 it answers below, after shutdown began, is the proof that it waited).
    assert!(
        relay.child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );
    // New connections are no longer served: once the listener says it stopped
    // accepting, its socket is closed and a connect is refused.
    assert!(
        relay.wait_log("stopped accepting connections", Duration::from_secs(10)),
        "{}",
        relay.log()
    );
    // Refused, not left waiting in the kernel's backlog until the grace period ends
    // (the socket used to stay open while a connection was still being served).
    match TcpStream::connect(&addr) {
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "connecting after shutdown: {e}"
        ),
        Ok(_) => panic!("a new connection was accepted after SIGTERM"),
    }

    stream.write_all(&rest).unwrap();
    let mut response = String::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                response.push_str(&String::from_utf8_lossy(&buf[..n]));
                if response.contains("\"results\"") && response.trim_end().ends_with('}') {
                    break;
                }
            }
            Err(e) => panic!("reading the response: {e}; so far: {response}"),
        }
    }
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    assert!(response.contains("\"accepted\":1"), "{response}");

    assert_eq!(
        relay.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        relay.log()
    );
    let log = relay.log();
    assert!(log.contains("stopped"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_signal_right_after_ready_is_handled_gracefully() {
    // The "ready" line is what scripts wait for: from then on SIGTERM/SIGINT/SIGHUP
    // must reach the relay's handlers, never the default action (killed by signal).
    let mut signals = vec![libc::SIGINT, libc::SIGHUP];
    signals.extend([libc::SIGTERM; 16]);
    for (i, sig) in signals.into_iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let (cfg, _) = serve_config(tmp.path());
        let mut relay = spawn_serve(&cfg);
        assert!(
            relay.wait_log("postback-relay ready", Duration::from_secs(30)),
            "{}",
            relay.log()
        );
        relay.signal(sig);
        let signalled = Instant::now();
        if sig == libc::SIGHUP {
            assert!(
                relay.wait_log("rules reloaded (SIGHUP)", Duration::from_secs(10)),
                "{}",
                relay.log()
            );
            relay.signal(libc::SIGTERM);
        }
        assert_eq!(
            relay.wait_exit(Duration::from_secs(20)),
            Some(0),
            "run {i}, signal {sig}: {:?}\n{}",
            relay.child.try_wait(),
            relay.log()
        );
        // An idle relay stops promptly (no fixed wait for its own references).
        assert!(
            signalled.elapsed() < Duration::from_secs(3),
            "run {i}: {:?} to stop\n{}",
            signalled.elapsed(),
            relay.log()
        );
    }
}

#[test]
fn send_with_no_relay_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, addr) = serve_config(dir.path());
    let events = dir.path().join("e.json");
    std::fs::write(&events, ev("no-relay").to_string()).unwrap();
    let r = run(&["send", "--config", s(&cfg), s(&events)], dir.path());
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains(&format!(
            "cannot reach the relay at http://{addr}/v1/events"
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("is `postback-relay serve` running with this config?"),
        "{}",
        r.stderr
    );
}

#[test]
fn preview_reads_standard_input_and_shows_one_destination() {
    let repo = Path::new(REPO);
    let event = std::fs::read_to_string(repo.join("examples/purchase.json"))
        .unwrap()
        .replace(
            "\"2026-11-25T10:00:00Z\"",
            &chrono::Utc::now().timestamp().to_string(),
        );
    let r = run_stdin(
        &["preview", "--destination", "example-aff", "-"],
        repo,
        &event,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("== example-aff =="), "{}", r.stdout);
    assert_eq!(r.stdout.matches("== ").count(), 1, "{}", r.stdout);

    let r = run_stdin(&["preview", "--destination", "nope", "-"], repo, &event);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no destination \"nope\""), "{}", r.stderr);
    assert!(
        r.stderr.contains("example-aff"),
        "the known names: {}",
        r.stderr
    );

    let r = run_stdin(&["preview", "-"], repo, "{not json");
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with("<stdin>:1:2: invalid JSON"),
        "{}",
        r.stderr
    );
}

#[test]
fn preview_of_one_destination_works_beside_a_broken_rule_file() {
    let repo = Path::new(REPO);
    let tmp = tempfile::tempdir().unwrap();
    let rules = tmp.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::copy(
        repo.join("rules/example-aff.toml"),
        rules.join("example-aff.toml"),
    )
    .unwrap();
    std::fs::write(rules.join("mymeta.toml"), "[destination\n").unwrap();
    let cfg = s(&repo.join("postback-relay.toml")).to_string();
    let event = s(&repo.join("examples/purchase.json")).to_string();
    let args = |only: &str| {
        vec![
            "preview".to_string(),
            "--config".into(),
            cfg.clone(),
            "--rules".into(),
            s(&rules).into(),
            "--destination".into(),
            only.into(),
            event.clone(),
        ]
    };
    let a = args("example-aff");
    let r = run(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        tmp.path(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("== example-aff =="), "{}", r.stdout);
    assert!(
        r.stderr.contains(&format!(
            "note: {} has errors and is left out",
            rules.join("mymeta.toml").display()
        )),
        "{}",
        r.stderr
    );
    // The broken one itself: its located error, exit 1.
    let a = args("mymeta");
    let r = run(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        tmp.path(),
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .starts_with(&format!("{}:", rules.join("mymeta.toml").display())),
        "{}",
        r.stderr
    );
}

#[test]
fn every_option_has_a_description_in_help() {
    let dir = tempfile::tempdir().unwrap();
    for (args, wanted) in [
        (
            &["preview", "--help"][..],
            &["--destination", "--rules", "--config"][..],
        ),
        (&["check", "--help"][..], &["--rules", "--config"][..]),
        (
            &["dlq", "list", "--help"][..],
            &["--destination", "--config"][..],
        ),
        (
            &["dlq", "replay", "--help"][..],
            &["--destination", "--id", "--all", "--config"][..],
        ),
    ] {
        let r = run(args, dir.path());
        assert_eq!(r.code, 0, "{args:?}");
        for opt in wanted {
            let line = r
                .stdout
                .lines()
                .find(|l| l.trim_start().starts_with(opt))
                .unwrap_or_else(|| panic!("{opt} in {args:?}: {}", r.stdout));
            let described = line.split_once(opt).map(|(_, rest)| rest).unwrap_or("");
            // After the option (and its value name) comes a description.
            assert!(
                described.split_whitespace().count() >= 2,
                "{opt} of {args:?} has no description: {line:?}"
            );
        }
    }
}

#[test]
fn a_second_relay_on_the_same_data_directory_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = serve_config(dir.path());
    let mut first = spawn_serve(&cfg);
    let (cfg2, _) = {
        // Same data_dir, another port.
        let other = dir.path().join("second.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("listen = ") {
                    format!("listen = \"{addr}\"")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&other, text).unwrap();
        (other, addr)
    };
    let r = run(&["serve", "--config", s(&cfg2)], dir.path());
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("another postback-relay is using the data directory"),
        "{}",
        r.stderr
    );
    first.kill();
}

#[test]
fn check_away_from_the_config_names_the_directory_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(&["check"], dir.path());
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr.trim(),
        format!(
            "postback-relay.toml: no such config file in {}; run from the directory that holds it, or pass --config FILE",
            dir.path().canonicalize().unwrap().display()
        )
    );
}

/// `postback-relay preview ... | head -c 0`: the reader is gone before anything is
/// written. The command ends quietly (exit 0, no panic, nothing on stderr) instead
/// of panicking on a broken pipe as `println!` does.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let repo = Path::new(REPO);
    let event = repo.join("examples/purchase.json");
    assert!(
        event.exists(),
        "{} is the README's example",
        event.display()
    );
    for args in [vec!["preview", s(&event)], vec!["check"], vec!["--help"]] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        // Closed before the child starts: its first write fails with EPIPE.
        drop(reader);
        let out = bin()
            .args(&args)
            .current_dir(repo)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        if args[0] != "--help" {
            // clap's own --help printing is clap's; ours must be quiet and succeed.
            assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
            assert!(
                !stderr.contains("cannot write"),
                "a closed pipe is not an error: {stderr}"
            );
        }
    }
}

/// The start-up line names the destinations in force and the disabled ones, so an
/// operator sees at once which partners get postbacks.
#[test]
fn the_ready_line_names_enabled_and_disabled_destinations() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, addr) = serve_config(tmp.path());
    let rules = tmp.path().join("rules");
    let rule = |enabled: bool| {
        format!(
            "enabled = {enabled}\n[destination]\nurl = \"https://a.example/p?c={{click_id}}\"\nmethod = \"GET\"\n[privacy]\nallow = [\"click_id\"]\n"
        )
    };
    std::fs::write(rules.join("aff.toml"), rule(true)).unwrap();
    std::fs::write(rules.join("meta.toml"), rule(false)).unwrap();
    std::fs::write(rules.join("tiktok.toml"), rule(false)).unwrap();
    std::fs::write(rules.join("typo.toml"), "[destinaton]\n").unwrap();
    let relay = spawn_ready(&cfg, &addr);
    let log = relay.log();
    let line = log
        .lines()
        .find(|l| l.contains("postback-relay ready"))
        .expect("ready line");
    for part in [
        "destinations=1",
        "names=aff",
        "disabled=meta,tiktok",
        "broken=typo",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
}

/// `check` says what `serve` would refuse: an admin token under 16 characters,
/// located, with what to do.
#[test]
fn check_refuses_a_short_admin_token_located() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, _) = serve_config(tmp.path());
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = match text.find("[admin]") {
        Some(_) => text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("token") {
                    "token = \"short-token\"".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
        None => format!("{text}\n[admin]\ntoken = \"short-token\"\n"),
    };
    std::fs::write(&cfg, &text).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("token = \"short-token\""))
        .expect("token line")
        + 1;
    let r = run(&["check", "--config", s(&cfg)], tmp.path());
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "{}:{line}:9: `admin.token` is shorter than 16 characters; use a long random token, or leave it empty to turn the admin API off",
            cfg.display()
        )),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "");
}

/// The README's Node example says what trips people up: the timestamp is Unix
/// seconds.
#[test]
fn the_readme_says_the_timestamp_is_unix_seconds() {
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    assert!(
        readme.contains("`webhook-timestamp` is **Unix time in seconds** (not milliseconds)"),
        "README.md"
    );
}

/// `check` says what every send would be refused for: a partner URL on a loopback
/// or private address while `allow_private_networks` is false.
#[test]
fn check_flags_a_private_partner_address_unless_private_networks_are_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, _) = serve_config(tmp.path());
    let rule = |host: &str| {
        format!(
            "[destination]\nurl = \"http://{host}/p?c={{click_id}}\"\nmethod = \"GET\"\n[privacy]\nallow = [\"click_id\"]\n"
        )
    };
    let rules = tmp.path().join("rules");
    std::fs::write(rules.join("local.toml"), rule("127.0.0.1:9999")).unwrap();
    std::fs::write(rules.join("lan.toml"), rule("192.168.1.20")).unwrap();
    std::fs::write(rules.join("named.toml"), rule("localhost:8080")).unwrap();
    std::fs::write(rules.join("public.toml"), rule("partner.example")).unwrap();
    // As the tests' config has it: allowed, so nothing to say.
    let r = run(&["check", "--config", s(&cfg)], tmp.path());
    assert_eq!(r.code, 0, "{}", r.stderr);

    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace(
        "allow_private_networks = true",
        "allow_private_networks = false",
    );
    std::fs::write(&cfg, text).unwrap();
    let r = run(&["check", "--config", s(&cfg)], tmp.path());
    assert_eq!(r.code, 1, "{}", r.stderr);
    let says = |name: &str, what: &str| {
        format!(
            "{}: `url`'s host {what}: the relay refuses to send there while allow_private_networks is false; for a partner on your own network set [delivery] allow_private_networks = true in {}",
            rules.join(name).display(),
            cfg.display()
        )
    };
    for line in [
        says("local.toml", "127.0.0.1 is loopback"),
        says("lan.toml", "192.168.1.20 is private (192.168.0.0/16)"),
        says("named.toml", "localhost is loopback (localhost)"),
    ] {
        assert!(r.stderr.contains(&line), "{line}\nin\n{}", r.stderr);
    }
    assert!(!r.stderr.contains("public.toml"), "{}", r.stderr);
    assert!(r.stderr.contains("3 errors"), "{}", r.stderr);
}

#[test]
fn dlq_without_the_admin_token_in_its_environment_says_so_not_that_the_api_is_off() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("rules")).unwrap();
    let cfg = tmp.path().join("postback-relay.toml");
    let listen = format!("listen = \"127.0.0.1:{}\"", free_port());
    std::fs::write(
        &cfg,
        config_text("")
            .replace("listen = \"127.0.0.1:0\"", &listen)
            .replace(
                &format!("token = \"{}\"", common::ADMIN_TOKEN),
                "token = \"${POSTBACK_RELAY_ADMIN_TOKEN:-}\"",
            ),
    )
    .unwrap();
    let mut serve = bin();
    serve
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("POSTBACK_RELAY_ADMIN_TOKEN", common::ADMIN_TOKEN)
        .env("RUST_LOG", "info");
    let _relay = RelayProcess::spawn_command(serve);
    let r = run(&["dlq", "list", "--config", s(&cfg)], tmp.path());
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr
            .contains("this command has no admin token to ask it with")
            && r.stderr
                .contains("set that variable here as the relay has it")
            && !r.stderr.contains("the admin API is off"),
        "{}",
        r.stderr
    );
}

#[test]
fn check_events_and_preview_agree_on_a_partners_age_limit() {
    let repo = Path::new(REPO);
    let tmp = tempfile::tempdir().unwrap();
    let events = tmp.path().join("events");
    std::fs::create_dir(&events).unwrap();
    // Ten days old: past Meta's seven.
    let old = chrono::Utc::now() - chrono::Duration::days(10);
    let event = std::fs::read_to_string(repo.join("examples/purchase.json"))
        .unwrap()
        .replace(
            "\"2026-11-25T10:00:00Z\"",
            &format!("\"{}\"", old.to_rfc3339()),
        );
    let file = events.join("old.json");
    std::fs::write(&file, &event).unwrap();
    let cfg = s(&repo.join("postback-relay.toml")).to_string();
    let r = run(
        &["check", "--config", &cfg, "--events", s(&events)],
        tmp.path(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let meta = r.stdout.split("== meta (disabled) ==").nth(1).unwrap_or("");
    assert!(
        meta.contains("the event is 10 days old and this partner takes events up to 7 days old")
            && meta.contains("0 of 1 events sent"),
        "{}",
        r.stdout
    );
    let r = run(
        &[
            "preview",
            "--config",
            &cfg,
            "--destination",
            "meta",
            s(&file),
        ],
        tmp.path(),
    );
    assert!(
        r.stdout
            .contains("the event is 10 days old and this partner takes events up to 7 days old"),
        "{}{}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn check_refuses_a_when_value_no_event_can_have_and_warns_about_a_near_miss() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = tmp.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let rule = "[destination]\nurl = \"https://p.example/c={click_id}\"\nmethod = \"GET\"\n[when]\nevent_name = [\"instal\"]\n\"consent.ad_user_data\" = \"yes\"\n[privacy]\nallow = [\"click_id\"]\n";
    std::fs::write(rules.join("aff.toml"), rule).unwrap();
    let cfg = s(&Path::new(REPO).join("postback-relay.toml")).to_string();
    let r = run(
        &["check", "--config", &cfg, "--rules", s(&rules)],
        tmp.path(),
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let f = rules.join("aff.toml");
    let f = f.display();
    for want in [
        format!("{f}:6:26: [when] `consent.ad_user_data` is a boolean in events (docs/event.schema.json), so \"yes\" matches no event; write true or false"),
        format!("{f}:5:15: warning: \"instal\" is not a usual event_name: did you mean \"install\"?"),
    ] {
        assert!(r.stderr.contains(&want), "want {want}\nin:\n{}", r.stderr);
    }
}
