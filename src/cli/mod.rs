//! The command line: `serve`, `check`, `preview`, `send`, `dlq list|replay`.
//!
//! Owns: argument parsing (clap), what each command prints, exit codes
//! (0 success, 1 invalid input or config, 2 usage). Never: duplicates the logic of
//! the modules it calls.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::config::{Config, Overrides, DEFAULT_PATH};
use crate::diag::{Diagnostic, ProcessEnv};
use crate::rules::RuleSet;

mod check;
mod dlq;

#[derive(Parser, Debug)]
#[command(
    name = "postback-relay",
    version,
    about = "Edge gateway for server-to-server conversion tracking: signed events in, privacy-filtered partner postbacks out."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on standard error: `text` (default on a terminal) or `json` (one
    /// object per line; default otherwise). The level comes from RUST_LOG (default
    /// `info`).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Sets up logging to standard error: `RUST_LOG` (default `info`) and the format.
pub fn init_logging(format: Option<LogFormat>) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let format = format.unwrap_or(if terminal {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(terminal).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the relay.
    Serve {
        /// Config file.
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Address to listen on (overrides `listen`).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data directory (overrides `data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Rules directory (overrides `rules_dir`).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Refuse to start (and to reload) while any rule file has errors. Default:
        /// start with the valid rule files; the broken ones are logged and shown in
        /// /admin/destinations and /metrics, and their queues wait.
        #[arg(long)]
        strict: bool,
    },
    /// Validate the config and every rule file; print every error as FILE:LINE:COL: message
    /// (warnings too, as FILE:LINE:COL: warning: message); exit 1 on any error.
    Check {
        /// Config file.
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Rules directory to check (overrides the config's `rules_dir`).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Also run every rule against the sample events in this directory (`*.json`:
        /// one event or an array; `*.ndjson`): which events each destination gets, and
        /// any placeholder that renders empty.
        #[arg(long)]
        events: Option<PathBuf>,
    },
    /// Show, for each destination, the exact request an event would produce. Sends nothing, writes nothing.
    Preview {
        /// Config file.
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Rules directory (overrides the config's `rules_dir`).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Only this destination (a rule file's name without `.toml`).
        #[arg(long)]
        destination: Option<String>,
        /// The event: a JSON file, or `-` for standard input.
        event: String,
    },
    /// Sign a file of events with the first ingest secret and POST it to the relay.
    Send {
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Relay URL (default: `http://LISTEN/v1/events` from the config).
        #[arg(long)]
        url: Option<String>,
        /// One event, a JSON array, or NDJSON; `-` reads standard input.
        events: String,
    },
    /// Exit 0 when the relay answers `GET /readyz` with 200, else 1 (for container
    /// and service health checks).
    Health {
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// The URL to ask (default: `http://LISTEN/readyz` from the config).
        #[arg(long)]
        url: Option<String>,
    },
    /// Inspect and replay dead-lettered deliveries.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead-lettered deliveries with their last error.
    List {
        /// Config file (its admin token and listen address, or its data directory).
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Only the dead letters of this destination.
        #[arg(long)]
        destination: Option<String>,
    },
    /// Put dead-lettered deliveries back on the queue.
    Replay {
        /// Config file (its admin token and listen address, or its data directory).
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Replay every dead letter of this destination.
        #[arg(long)]
        destination: Option<String>,
        /// Replay one dead letter, by its delivery ID (`dlv_...`, see `dlq list`).
        #[arg(long, conflicts_with = "all")]
        id: Option<String>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
    },
}

/// Runs a parsed command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            rules,
            strict,
        } => serve(
            &config,
            Overrides {
                listen,
                data_dir,
                rules_dir: rules,
                strict,
            },
        ),
        Command::Check {
            config,
            rules,
            events,
        } => check::run(&config, rules, events.as_deref()),
        Command::Preview {
            config,
            rules,
            destination,
            event,
        } => preview(&config, rules, destination.as_deref(), &event),
        Command::Send {
            config,
            url,
            events,
        } => send(&config, url, &events),
        Command::Health { config, url } => health(&config, url),
        Command::Dlq { command } => dlq::run(command),
    }
}

pub(crate) fn print_diagnostics(d: &[Diagnostic]) {
    for x in d {
        eprintln!("{x}");
    }
}

pub fn load_config(path: &Path, ov: &Overrides) -> Result<Config, i32> {
    Config::load(path, &ProcessEnv, ov).map_err(|errs| {
        print_diagnostics(&errs);
        1
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, i32> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cannot start the async runtime: {e}");
            1
        })
}

fn serve(config: &Path, ov: Overrides) -> i32 {
    let cfg = match load_config(config, &ov) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match rt.block_on(crate::app::run(cfg, std::sync::Arc::new(ProcessEnv))) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// The environment as rule files may see it under `policy` (`[rules] allow_env`).
pub(crate) fn rules_env(policy: crate::config::RulesEnvPolicy) -> crate::config::RulesEnv {
    crate::config::RulesEnv::new(std::sync::Arc::new(ProcessEnv), policy)
}

fn preview(config: &Path, rules: Option<PathBuf>, only: Option<&str>, event: &str) -> i32 {
    let (rules_dir, policy) = match rules {
        Some(r) => (r, Config::rules_env_of(config, &ProcessEnv)),
        None => match load_config(config, &Overrides::default()) {
            Ok(c) => (c.rules_dir, c.rules_env),
            Err(code) => return code,
        },
    };
    let set = match RuleSet::load_dir(&rules_dir, &rules_env(policy)) {
        Ok(s) => s,
        Err(e) => {
            print_diagnostics(&e);
            return 1;
        }
    };
    let ev = match read_event(event) {
        Ok(ev) => ev,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    match only {
        None => print!("{}", crate::rules::preview(&set, &ev)),
        Some(name) => match crate::rules::preview_named(&set, &ev, name) {
            Some(text) => print!("{text}"),
            None => {
                let known: Vec<&str> = set
                    .destinations()
                    .iter()
                    .chain(set.disabled())
                    .map(|d| d.name.as_str())
                    .collect();
                eprintln!(
                    "no destination \"{name}\" in {}; the destinations are: {}",
                    rules_dir.display(),
                    if known.is_empty() {
                        "(none)".to_string()
                    } else {
                        known.join(", ")
                    }
                );
                return 1;
            }
        },
    }
    0
}

/// One event for `preview`: a JSON file, or `-` for standard input.
fn read_event(arg: &str) -> Result<crate::event::Event, String> {
    let (what, text) = if arg == "-" {
        let mut body = Vec::new();
        std::io::stdin()
            .read_to_end(&mut body)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        ("<stdin>".to_string(), body)
    } else {
        let body = std::fs::read(arg).map_err(|e| format!("{arg}: cannot read: {e}"))?;
        (arg.to_string(), body)
    };
    let value: Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{what}:{}:{}: invalid JSON: {e}", e.line(), e.column()))?;
    crate::event::Event::from_value(value, chrono::Utc::now())
        .map_err(|e| format!("{what}: invalid event: {e}"))
}

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

fn send(config: &Path, url: Option<String>, events: &str) -> i32 {
    let cfg = match load_config(config, &Overrides::default()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (body, content_type) = match read_events(events) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let Some(secret) = cfg.ingest.secrets.first() else {
        eprintln!("{}: no ingest secret to sign with", cfg.path.display());
        return 1;
    };
    let url = url.unwrap_or_else(|| format!("http://{}/v1/events", connect_addr(cfg.listen)));
    let id = format!("msg_{}", random_hex(16));
    let ts = chrono::Utc::now().timestamp();
    let signature = crate::ingest::verify::sign(secret, &id, ts, &body);
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        // Never through a proxy (HTTP_PROXY etc.): signed event bodies go straight
        // to the relay.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
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
    });
    match result {
        Ok((status, text)) => {
            println!("HTTP {status}");
            match serde_json::from_str::<Value>(&text) {
                Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or(text)),
                Err(_) => println!("{text}"),
            }
            if status.is_success() {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn health(config: &Path, url: Option<String>) -> i32 {
    let url = match url {
        Some(u) => u,
        None => match load_config(config, &Overrides::default()) {
            Ok(c) => format!("http://{}/readyz", connect_addr(c.listen)),
            Err(code) => return code,
        },
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let status = rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| request_error(&url, &e))?;
        Ok::<_, String>(resp.status())
    });
    match status {
        Ok(s) if s.is_success() => {
            println!("ready ({url})");
            0
        }
        Ok(s) => {
            eprintln!("not ready: {url} answered {s}");
            1
        }
        Err(e) => {
            eprintln!("not ready: {e}");
            1
        }
    }
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

pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
