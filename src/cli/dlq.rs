//! `dlq list` and `dlq replay`: through the running relay's admin API when it
//! runs, by opening the store directly when it does not.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use super::client::{connect_addr, request_error};
use super::{load_config, CliError, DlqCommand};
use crate::config::{Config, Overrides};
use crate::store::ReplaySelector;

pub fn run(out: &mut dyn Write, cmd: DlqCommand) -> Result<(), CliError> {
    match cmd {
        DlqCommand::List {
            config,
            destination,
        } => list(out, &config, destination),
        DlqCommand::Replay {
            config,
            destination,
            id,
            all,
        } => {
            let selector = match (id, destination, all) {
                (Some(id), _, _) => ReplaySelector::Id(id),
                (None, Some(d), _) => ReplaySelector::Destination(d),
                (None, None, true) => ReplaySelector::All,
                (None, None, false) => {
                    return Err(CliError::Usage(
                        "say what to replay: --id ID, --destination NAME, or --all".into(),
                    ));
                }
            };
            replay(out, &config, selector)
        }
    }
}

/// Whether a relay answers on the config's listen address.
/// A relay runs for this config when it holds the store (not merely when something
/// answers on the config's address: that may be another relay).
fn relay_is_running(cfg: &Config) -> bool {
    if cfg.store.backend == crate::config::Backend::Embedded {
        return crate::store::embedded::EmbeddedStore::in_use(&cfg.data_dir);
    }
    std::net::TcpStream::connect_timeout(
        &connect_addr(cfg.listen),
        std::time::Duration::from_millis(500),
    )
    .is_ok()
}

/// Where the admin API of the running relay is: `[admin] listen` when set (plain
/// HTTP, meant for loopback), else `listen`, but never a TLS listener in clear (the
/// admin token would cross it unencrypted, and the TLS port would not answer).
fn admin_base(cfg: &Config) -> Result<String, String> {
    match (cfg.admin_listen, &cfg.tls) {
        (Some(admin), _) => Ok(format!("http://{}", connect_addr(admin))),
        (None, None) => Ok(format!("http://{}", connect_addr(cfg.listen))),
        (None, Some(_)) => Err(format!(
            "the relay is running on {} with TLS, and dlq does not send the admin token over it: set [admin] listen (e.g. \"127.0.0.1:8081\") in {} and restart the relay, or stop the relay to open the store directly",
            cfg.listen,
            cfg.path.display()
        )),
    }
}

fn admin_call(
    cfg: &Config,
    method: &str,
    path_and_query: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let Some(token) = cfg.admin_token.as_deref() else {
        return Err(format!(
            "the relay is running on {} and this command has no admin token to ask it with: [admin] token in {} is empty in this shell. If it reads ${{POSTBACK_RELAY_ADMIN_TOKEN}}, set that variable here as the relay has it; if the relay runs without an admin API, stop it to open the store directly",
            cfg.listen,
            cfg.path.display()
        ));
    };
    let url = format!("{}{path_and_query}", admin_base(cfg)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        // Never through a proxy: the admin token and dead letters stay between us.
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let mut req = if method == "POST" {
            client.post(&url)
        } else {
            client.get(&url)
        };
        req = req.bearer_auth(token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| request_error(&url, &e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{url}: {e}"))?;
        if status.is_success() {
            Ok(v)
        } else {
            Err(format!(
                "{url}: HTTP {status}: {}",
                v["error"].as_str().unwrap_or("")
            ))
        }
    })
}

/// Runs `f` on the store opened directly (no relay runs), in a runtime of its own.
fn with_store<T, F, Fut>(cfg: &Config, f: F) -> Result<T, String>
where
    F: FnOnce(std::sync::Arc<dyn crate::store::Store>) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let store = crate::app::open_store(cfg).await?;
        let out = f(store.clone()).await;
        store.close().await;
        out
    })
}

fn print_list(out: &mut dyn Write, v: &Value) -> std::io::Result<()> {
    let items = v["dead_letters"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return writeln!(out, "no dead letters");
    }
    for d in items {
        writeln!(
            out,
            "{}  {}  attempts={}  last_status={}  dead_at={}  last_error={}",
            d["id"].as_str().unwrap_or(""),
            d["destination"].as_str().unwrap_or(""),
            d["attempts"],
            d["last_status"],
            d["dead_at"].as_str().unwrap_or(""),
            d["last_error"].as_str().unwrap_or("")
        )?;
    }
    Ok(())
}

fn list(out: &mut dyn Write, config: &Path, destination: Option<String>) -> Result<(), CliError> {
    let cfg = load_config(config, &Overrides::default())?;
    let result = if relay_is_running(&cfg) {
        let q = destination
            .as_deref()
            .map(|d| {
                format!(
                    "?destination={}",
                    percent_encoding::utf8_percent_encode(d, percent_encoding::NON_ALPHANUMERIC)
                )
            })
            .unwrap_or_default();
        admin_call(&cfg, "GET", &format!("/admin/dlq{q}"), None)
    } else {
        with_store(&cfg, |store| async move {
            store
                .dlq_list(destination.as_deref(), usize::MAX)
                .await
                .map(|l| json!({"dead_letters": l.iter().map(crate::http::admin::dead_letter_json).collect::<Vec<_>>()}))
                .map_err(|e| e.to_string())
        })
    };
    let listed = result.map_err(CliError::Failed)?;
    Ok(print_list(out, &listed)?)
}

fn replay(out: &mut dyn Write, config: &Path, selector: ReplaySelector) -> Result<(), CliError> {
    let cfg = load_config(config, &Overrides::default())?;
    let selector_name = match &selector {
        ReplaySelector::All => None,
        ReplaySelector::Id(id) => Some(format!("with the ID {id}")),
        ReplaySelector::Destination(d) => Some(format!("of the destination {d}")),
    };
    let result = if relay_is_running(&cfg) {
        let body = match &selector {
            ReplaySelector::All => json!({"all": true}),
            ReplaySelector::Destination(d) => json!({"destination": d}),
            ReplaySelector::Id(id) => json!({"id": id}),
        };
        admin_call(&cfg, "POST", "/admin/dlq/replay", Some(body))
            .map(|v| v["replayed"].as_u64().unwrap_or(0) as usize)
    } else {
        with_store(&cfg, |store| async move {
            store
                .dlq_replay(selector, chrono::Utc::now().timestamp_millis())
                .await
                .map_err(|e| e.to_string())
        })
    };
    let n = result.map_err(CliError::Failed)?;
    // Naming what to replay and finding nothing is a mistake (a typo), not a success.
    match &selector_name {
        Some(what) if n == 0 => {
            return Err(CliError::Failed(format!(
                "no dead letter {what}: nothing was replayed; `postback-relay dlq list` shows the dead letters there are"
            )))
        }
        _ => {}
    }
    writeln!(
        out,
        "replayed {n} dead letter{}",
        if n == 1 { "" } else { "s" }
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_admin_listener_is_used_and_a_tls_listener_never_in_clear() {
        let env: HashMap<String, String> = HashMap::new();
        let text = "listen = \"0.0.0.0:8443\"\n[ingest]\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n";
        let mut cfg = Config::parse(
            Path::new("relay.toml"),
            text.to_string(),
            &env,
            &Overrides::default(),
        )
        .expect("valid config");
        assert_eq!(admin_base(&cfg).unwrap(), "http://127.0.0.1:8443");
        cfg.admin_listen = Some("127.0.0.1:8081".parse().unwrap());
        assert_eq!(admin_base(&cfg).unwrap(), "http://127.0.0.1:8081");
        cfg.admin_listen = None;
        cfg.tls = Some(crate::config::TlsConfig {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            client_ca: None,
        });
        let e = admin_base(&cfg).unwrap_err();
        assert!(e.contains("set [admin] listen"), "{e}");
    }
}
