//! The commands that talk to a running relay over HTTP: `send` and `health`, and
//! the pieces `dlq` shares with them (where the relay listens, what a failed request
//! means).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use super::{load_config, runtime, CliError};
use crate::config::Overrides;

/// A failed request to the relay, with its causes; when nothing answers, what to do.
pub fn request_error(url: &str, e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if e.is_connect() {
        format!(
            "cannot reach the relay at {url} ({text}); is `postback-relay serve` running with this config?"
        )
    } else if e.is_timeout() {
        format!("the relay at {url} did not answer in time ({text})")
    } else {
        format!("{url}: {text}")
    }
}

/// Reads the events to send and picks the framing: JSON (one object or an array),
/// else NDJSON.
fn read_events(arg: &str) -> Result<(Vec<u8>, &'static str), String> {
    let mut body = Vec::new();
    if arg == "-" {
        std::io::stdin()
            .read_to_end(&mut body)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
    } else {
        body = std::fs::read(arg).map_err(|e| format!("{arg}: cannot read: {e}"))?;
    }
    if serde_json::from_slice::<Value>(&body).is_ok() {
        Ok((body, "application/json"))
    } else {
        Ok((body, "application/x-ndjson"))
    }
}

/// `send`: signs the events with the first ingest secret and POSTs them; prints the
/// relay's answer; fails unless it is a 2xx.
pub fn send(
    out: &mut dyn Write,
    config: &Path,
    url: Option<String>,
    events: &str,
) -> Result<(), CliError> {
    let cfg = load_config(config, &Overrides::default())?;
    let (body, content_type) = read_events(events).map_err(CliError::Failed)?;
    let Some(secret) = cfg.ingest.secrets.first() else {
        return Err(CliError::Failed(format!(
            "{}: no ingest secret to sign with",
            cfg.path.display()
        )));
    };
    let url = url.unwrap_or_else(|| format!("http://{}/v1/events", connect_addr(cfg.listen)));
    let id = format!("msg_{}", random_hex(16));
    let ts = chrono::Utc::now().timestamp();
    let signature = crate::webhooks::sign(secret, &id, ts, &body);
    let (status, text) = runtime()?
        .block_on(async {
            // Never through a proxy (HTTP_PROXY etc.): signed event bodies go straight
            // to the relay.
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
            let resp = client
                .post(&url)
                .header("content-type", content_type)
                .header("webhook-id", &id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", signature)
                .body(body)
                .send()
                .await
                .map_err(|e| request_error(&url, &e))?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            Ok::<_, String>((status, text))
        })
        .map_err(CliError::Failed)?;
    let printed = print_answer(out, status, text);
    if !status.is_success() {
        // A refusal is a failure even when nobody reads the answer (`| head`).
        return Err(CliError::Failed(format!(
            "the relay refused the events ({status})"
        )));
    }
    Ok(printed?)
}

/// The relay's answer: the status line, then its JSON (pretty) or text.
fn print_answer(
    out: &mut dyn Write,
    status: reqwest::StatusCode,
    text: String,
) -> std::io::Result<()> {
    writeln!(out, "HTTP {status}")?;
    match serde_json::from_str::<Value>(&text) {
        Ok(v) => writeln!(out, "{}", serde_json::to_string_pretty(&v).unwrap_or(text))?,
        Err(_) => writeln!(out, "{text}")?,
    }
    out.flush()
}

/// `health`: succeeds when the relay answers `GET /readyz` with a 2xx.
pub fn health(out: &mut dyn Write, config: &Path, url: Option<String>) -> Result<(), CliError> {
    let url = match url {
        Some(u) => u,
        None => {
            let c = load_config(config, &Overrides::default())?;
            format!("http://{}/readyz", connect_addr(c.listen))
        }
    };
    let status = runtime()?
        .block_on(async {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(std::time::Duration::from_secs(5))
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
            let resp = client
                .get(&url)
                .send()
                .await
                .map_err(|e| request_error(&url, &e))?;
            Ok::<_, String>(resp.status())
        })
        .map_err(|e| CliError::Failed(format!("not ready: {e}")))?;
    if !status.is_success() {
        return Err(CliError::Failed(format!(
            "not ready: {url} answered {status}"
        )));
    }
    writeln!(out, "ready ({url})")?;
    Ok(())
}

/// An address to connect to for a listen address (0.0.0.0 -> 127.0.0.1).
pub fn connect_addr(listen: SocketAddr) -> SocketAddr {
    let mut a = listen;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
