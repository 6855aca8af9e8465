//! Safe defaults, loudly: the example config (demo secret, private networks allowed)
//! starts with a warning for each, at start and in `check`; the production config
//! (`deploy/postback-relay.production.toml`, what the systemd unit and the image run)
//! starts, and checks, without a single warning.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::RelayProcess;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

const OWN_SECRET: &str = "whsec_c2FmZS1kZWZhdWx0cy10ZXN0LXNlY3JldC0wMTIzNDU2Nzg5";
const ADMIN: &str = "safe-defaults-admin-token-0123456789";

/// The binary with `args`, this test's environment (nothing inherited that the
/// configs read) and `RUST_LOG=info`.
fn relay(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postback-relay"));
    cmd.args(args).env("RUST_LOG", "info");
    for (k, _) in std::env::vars() {
        if k.starts_with("POSTBACK_RELAY_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Starts `serve` with `args`, stops it with SIGTERM; its whole log.
fn serve_log(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = relay(&["serve"], env);
    cmd.args(args);
    let mut process = RelayProcess::spawn_command(cmd);
    process.signal(libc::SIGTERM);
    assert_eq!(
        process.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        process.log()
    );
    process.log()
}

fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}

#[test]
fn the_production_config_starts_and_checks_without_a_single_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = tmp.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let data = tmp.path().join("data");
    let config = repo("deploy/postback-relay.production.toml");
    let env = [
        ("POSTBACK_RELAY_SECRET", OWN_SECRET),
        ("POSTBACK_RELAY_ADMIN_TOKEN", ADMIN),
        ("POSTBACK_RELAY_ADMIN_LISTEN", "127.0.0.1:0"),
    ];
    let (config, rules, data) = (
        config.to_str().unwrap(),
        rules.to_str().unwrap(),
        data.to_str().unwrap(),
    );
    let log = serve_log(
        &[
            "--config",
            config,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
            "--rules",
            rules,
        ],
        &env,
    );
    assert!(log.contains("postback-relay ready"), "{log}");
    assert_eq!(warnings(&log), Vec::<&str>::new(), "{log}");
    // The last line says what the stop finished and what waits for the next start.
    let last = log.lines().last().unwrap_or("");
    assert!(
        last.contains("stopped: ")
            && last.contains("connections_finished=")
            && last.contains("queued_for_next_start=0"),
        "{log}"
    );
    // The storage engine's own info lines stay out unless RUST_LOG names it.
    assert!(
        !log.contains("Creating database") && !log.contains("ingestion writer"),
        "{log}"
    );

    let check = relay(&["check", "--config", config, "--rules", rules], &env)
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr),
    );
    assert!(check.status.success(), "{out}{err}");
    assert!(!err.contains("warning"), "{err}");
    assert!(
        out.starts_with("ok: ") && out.contains("(0 enabled destinations)"),
        "{out}"
    );

    // Without its secret it refuses to start, naming the variable.
    let refused = relay(
        &[
            "serve",
            "--config",
            config,
            "--data-dir",
            data,
            "--rules",
            rules,
        ],
        &[],
    )
    .output()
    .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("POSTBACK_RELAY_SECRET"), "{err}");
}

#[test]
fn the_example_config_starts_and_checks_with_a_warning_for_each_unsafe_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = repo("postback-relay.toml");
    let (config, data) = (config.to_str().unwrap(), data.to_str().unwrap());
    let log = serve_log(
        &[
            "--config",
            config,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
        ],
        &[],
    );
    let warned = warnings(&log).join("\n");
    assert!(
        warned.contains("unsafe for production: [ingest] secrets holds the public demo secret")
            && warned.contains("unsafe for production: [delivery] allow_private_networks = true"),
        "{log}"
    );

    let check = relay(&["check", "--config", config], &[]).output().unwrap();
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{err}");
    let prefix = format!("{config}: warning: unsafe for production: ");
    assert!(
        err.contains(&format!(
            "{prefix}[ingest] secrets holds the public demo secret"
        )) && err.contains(&format!("{prefix}[delivery] allow_private_networks = true")),
        "{err}"
    );
}
