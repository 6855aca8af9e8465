//! The command line: `serve`, `check`, `preview`, `send`, `dlq list|replay`.
//!
//! Owns: argument parsing (clap), what each command prints (on the writer `run`
//! hands it), and, through [`CliError`], exit codes (0 success, 1 failure, 2 usage).
//! Never: duplicates the logic of the modules it calls.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{Config, Overrides, DEFAULT_PATH};
use crate::diag::ProcessEnv;

mod check;
mod client;
mod dlq;
mod error;
mod preview;

pub use error::CliError;

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

/// The storage engine's crates: their `info` lines (recovering trees, ingestion
/// writers, paths of the build machine) are noise for an operator.
const STORAGE_CRATES: [&str; 3] = ["fjall", "lsm_tree", "sfa"];

/// The log filter: `RUST_LOG` (default `info`), with the storage engine at `warn`
/// unless `RUST_LOG` names it.
fn log_filter(rust_log: Option<&str>) -> String {
    let base = rust_log.filter(|r| !r.trim().is_empty()).unwrap_or("info");
    let mut filter = base.to_string();
    for c in STORAGE_CRATES {
        if !base.contains(c) {
            filter.push_str(&format!(",{c}=warn"));
        }
    }
    filter
}

/// Sets up logging to standard error: `RUST_LOG` (default `info`; the storage engine
/// at `warn` unless named) and the format. The storage engine's `info` lines are kept
/// aside (`storage_tail`), for a start the store refuses.
pub fn init_logging(format: Option<LogFormat>) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(rust_log.as_deref()))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(None)));
    let terminal = std::io::stderr().is_terminal();
    let format = format.unwrap_or(if terminal {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let shown = match format {
        LogFormat::Text => fmt.with_ansi(terminal).with_filter(filter).boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    };
    let storage = tracing_subscriber::filter::Targets::new()
        .with_targets(STORAGE_CRATES.map(|c| (c, tracing::Level::INFO)));
    let _ = tracing_subscriber::registry()
        .with(shown)
        .with(StorageTail.with_filter(storage))
        .try_init();
}

/// The storage engine's last `info` lines (at most `TAIL`), which the log leaves out.
static STORAGE_TAIL: std::sync::Mutex<std::collections::VecDeque<String>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
const TAIL: usize = 8;

/// Keeps the storage engine's lines in `STORAGE_TAIL`.
struct StorageTail;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StorageTail {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                if f.name() == "message" {
                    self.0 = v.to_string();
                }
            }
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        if let Ok(mut tail) = STORAGE_TAIL.lock() {
            if tail.len() == TAIL {
                tail.pop_front();
            }
            tail.push_back(m.0);
        }
    }
}

/// Logs the storage engine's last lines: after the store refused to open, they name
/// what it was reading (the keyspace folder of a damaged file).
fn log_storage_tail() {
    let lines: Vec<String> = STORAGE_TAIL
        .lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    for line in lines {
        tracing::error!(storage_engine = %line, "the storage engine's last lines before the refusal");
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

/// Runs a parsed command; returns the process exit code ([`CliError::exit_code`]).
pub fn run(cli: Cli) -> i32 {
    init_logging(cli.log_format);
    let mut out = std::io::stdout();
    let result = dispatch(cli.command, &mut out).and_then(|()| Ok(out.flush()?));
    match result {
        Ok(()) => 0,
        Err(e) => {
            e.report();
            e.exit_code()
        }
    }
}

/// Runs one command, writing what it prints on standard output to `out`.
fn dispatch(command: Command, out: &mut dyn Write) -> Result<(), CliError> {
    match command {
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
        } => check::run(out, &config, rules, events.as_deref()),
        Command::Preview {
            config,
            rules,
            destination,
            event,
        } => preview::run(out, &config, rules, destination.as_deref(), &event),
        Command::Send {
            config,
            url,
            events,
        } => client::send(out, &config, url, &events),
        Command::Health { config, url } => client::health(out, &config, url),
        Command::Dlq { command } => dlq::run(out, command),
    }
}

fn load_config(path: &Path, ov: &Overrides) -> Result<Config, CliError> {
    Ok(Config::load(path, &ProcessEnv, ov)?)
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))
}

fn serve(config: &Path, ov: Overrides) -> Result<(), CliError> {
    let cfg = load_config(config, &ov)?;
    let result = runtime()?.block_on(crate::app::run(cfg, std::sync::Arc::new(ProcessEnv)));
    if let Err(crate::app::StartError::Store(_)) = &result {
        log_storage_tail();
    }
    result?;
    Ok(())
}

/// The environment as rule files may see it under `policy` (`[rules] allow_env`).
fn rules_env(policy: crate::config::RulesEnvPolicy) -> crate::config::RulesEnv {
    crate::config::RulesEnv::new(std::sync::Arc::new(ProcessEnv), policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storage_engine_logs_at_warn_unless_rust_log_names_it() {
        assert_eq!(log_filter(None), "info,fjall=warn,lsm_tree=warn,sfa=warn");
        assert_eq!(
            log_filter(Some("debug")),
            "debug,fjall=warn,lsm_tree=warn,sfa=warn"
        );
        assert_eq!(
            log_filter(Some("info,lsm_tree=debug")),
            "info,lsm_tree=debug,fjall=warn,sfa=warn"
        );
    }
}
