//! Wiring: builds the relay from a validated `Config`, starts the server, the
//! delivery workers, the rule watcher and the purge task, and shuts them down in order.
//!
//! Owns: startup order (store before rules before server), signals (SIGTERM/Ctrl-C
//! stop, SIGHUP reloads rules), graceful shutdown. Never: holds global state; every
//! piece hangs off one `Relay`, so tests can start as many relays as they like.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Backend, Config, RulesEnv};
use crate::dedupe::DedupeRule;
use crate::deliver::{BreakerSettings, DeliverOptions, Deliverer};
use crate::diag::{Diagnostic, Env};
use crate::http::tls::TlsCertificates;
use crate::http::{Edge, Listener, Routes};
use crate::metrics::Metrics;
use crate::rules::{LoadOptions, RulesHandle, RulesWatcher};
use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
use crate::store::redis::{RedisOptions, RedisStore, Sentinels};
use crate::store::Store;
use crate::webhooks::Verifier;

pub(crate) use crate::relay::{delivery_settings, Relay};

/// Why the relay could not start.
#[derive(Debug)]
pub enum StartError {
    Invalid(Vec<Diagnostic>),
    /// The store could not be opened (the message names the data directory or URL).
    Store(String),
    /// A listener could not be bound.
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    Tls(String),
    /// The delivery engine could not start (its HTTP client).
    Delivery(crate::deliver::DeliverError),
    /// SIGTERM / SIGINT / SIGHUP handlers could not be installed.
    Signals(std::io::Error),
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Signals(e) => Some(e),
            StartError::Listen { source, .. } => Some(source),
            StartError::Delivery(e) => Some(e),
            _ => None,
        }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Invalid(d) => {
                for (i, x) in d.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{x}")?;
                }
                Ok(())
            }
            StartError::Store(e) => write!(f, "cannot open the store: {e}"),
            StartError::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            StartError::Tls(e) => write!(f, "cannot start TLS: {e}"),
            StartError::Delivery(e) => write!(f, "cannot start delivery: {e}"),
            StartError::Signals(e) => write!(f, "cannot install the signal handlers: {e}"),
        }
    }
}

/// Opens the configured store.
pub(crate) async fn open_store(config: &Config) -> Result<Arc<dyn Store>, String> {
    match config.store.backend {
        Backend::Embedded => EmbeddedStore::open(EmbeddedOptions {
            data_dir: config.data_dir.clone(),
            dedupe_window: config.dedupe.window,
            max_queued: config.store.max_queued,
            min_free_space: config.store.min_free_space,
            dlq_retention: config.store.dlq_retention,
        })
        .map(|s| Arc::new(s) as Arc<dyn Store>)
        .map_err(|e| format!("{} ({})", e, config.data_dir.display())),
        Backend::Redis => RedisStore::open(redis_options(config))
            .await
            .map(|s| Arc::new(s) as Arc<dyn Store>),
    }
}

/// The Redis backend's options, from `[store]`.
pub(crate) fn redis_options(config: &Config) -> RedisOptions {
    let s = &config.store;
    RedisOptions {
        url: s.redis_url.clone(),
        sentinels: s
            .redis_sentinel_master
            .clone()
            .filter(|_| !s.redis_sentinels.is_empty())
            .map(|master| Sentinels {
                addrs: s.redis_sentinels.clone(),
                master,
            }),
        prefix: s.redis_prefix.clone(),
        consumer: s
            .redis_consumer
            .clone()
            .unwrap_or_else(RedisOptions::default_consumer),
        claim_timeout: s.redis_claim_timeout,
        dedupe_window: config.dedupe.window,
        max_queued: s.max_queued,
        dlq_retention: s.dlq_retention,
        receipt_retention: s.redis_receipt_retention,
        wait_replicas: s.redis_wait_replicas,
        wait_timeout: s.redis_wait_timeout,
        ca: s.redis_ca.clone(),
        data_dir: Some(config.data_dir.clone()),
    }
}

/// The circuit breaker of every destination, from `[delivery]`.
pub(crate) fn breaker_settings(config: &Config) -> BreakerSettings {
    let defaults = BreakerSettings::default();
    BreakerSettings {
        failure_threshold: config.breaker_failures,
        cool_down: config.breaker_cool_down,
        max_cool_down: defaults.max_cool_down.max(config.breaker_cool_down),
    }
}

/// A started relay.
pub struct Running {
    /// The ingest listener's address.
    pub addr: SocketAddr,
    /// The admin listener's address, with `[admin] listen`.
    pub admin_addr: Option<SocketAddr>,
    pub(crate) relay: Arc<Relay>,
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    watcher: Option<RulesWatcher>,
}

impl Running {
    /// The rules in force and their reloads.
    pub fn rules(&self) -> RulesHandle {
        self.relay.rules.clone()
    }

    /// Stops accepting, finishes in-flight requests, stops delivery workers, and
    /// waits until the store is closed (so the same data_dir can be opened again).
    pub async fn stop(self) {
        // What was in flight when the stop began, for the last log line.
        let connections = self.relay.metrics.open_connections();
        let deliveries: usize = self
            .relay
            .deliverer
            .status()
            .iter()
            .map(|s| s.in_flight)
            .sum();
        let _ = self.shutdown.send(true);
        for s in self.servers {
            let _ = s.await;
        }
        for b in self.background {
            b.abort();
            let _ = b.await;
        }
        // A reload in progress finishes before the workers stop (it may start some).
        if let Some(w) = self.watcher {
            let _ = tokio::task::spawn_blocking(move || w.stop()).await;
        }
        self.relay.deliverer.clone().shutdown().await;
        let queued: u64 = match self.relay.store.counts().await {
            Ok(counts) => counts.iter().map(|c| c.queued).sum(),
            Err(_) => 0,
        };
        // Closed explicitly: a task that still holds the store cannot keep the data
        // directory locked after `stop` returns.
        self.relay.store.close().await;
        tracing::info!(
            connections_finished = connections,
            deliveries_in_flight_settled_or_released = deliveries,
            queued_for_next_start = queued,
            "stopped: connections open at the stop were finished (or closed after the grace period); deliveries in flight were settled or released to the queue"
        );
    }
}

/// How long stopping waits for requests in flight.
const GRACE: Duration = Duration::from_secs(10);

/// Builds and starts the relay: store, rules, delivery workers, HTTP listeners.
pub async fn start(config: Config, env: Arc<dyn Env + Send + Sync>) -> Result<Running, StartError> {
    let rules_env = Arc::new(RulesEnv::new(env, config.rules_env.clone()));
    let options = LoadOptions {
        custom_fields: config.custom_fields.clone(),
        allow_private_networks: config.allow_private_networks,
        today: None,
        keep_last_good: Some(config.data_dir.join(crate::rules::KEPT_DIR)),
    };
    // Lenient unless --strict: a rule file with errors never stops intake for the
    // other partners; it is logged, shown in /admin/destinations and /metrics.
    let rules = RulesHandle::open(&config.rules_dir, rules_env, options, config.strict_rules)
        .map_err(StartError::Invalid)?;
    crate::rules::log_broken(&rules.current());
    for w in config.safety_warnings() {
        tracing::warn!("unsafe for production: {w}");
    }
    let tls = match &config.tls {
        Some(files) => Some(TlsCertificates::load(files).map_err(StartError::Tls)?),
        None => None,
    };
    let store = open_store(&config).await.map_err(StartError::Store)?;
    let (ingest, admin) = bind_listeners(&config)?;
    let addr = ingest.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    let deliverer = Deliverer::start(
        store.clone(),
        delivery_settings(&rules.current()),
        DeliverOptions {
            allow_private_networks: config.allow_private_networks,
            breaker: breaker_settings(&config),
            ..DeliverOptions::default()
        },
    )
    .map_err(StartError::Delivery)?;
    let metrics = Arc::new(Metrics::new());
    deliverer.observe(metrics.clone());
    store.observe(metrics.clone());
    let relay = Arc::new(Relay {
        verifier: Verifier::new(&config.ingest.secrets, config.ingest.tolerance),
        dedupe: DedupeRule::new(&config.dedupe),
        dedupe_secret: store.dedupe_secret(),
        rules,
        store,
        deliverer,
        metrics,
        tls: tls.clone(),
        config,
    });
    warn_if_descriptors_are_short(&relay.config);

    let (shutdown, rx) = watch::channel(false);
    let servers = spawn_servers(&relay, ingest, admin, tls, rx);
    let background = vec![
        tokio::spawn(purge_loop(relay.clone())),
        tokio::spawn(version_reminders(relay.clone())),
    ];
    let watcher = watch_rules(&relay);
    log_ready(&relay, addr, admin_addr);
    Ok(Running {
        addr,
        admin_addr,
        relay,
        shutdown,
        servers,
        background,
        watcher,
    })
}

/// The listeners, each with the backlog `http::bind` asks for.
fn bind_listeners(config: &Config) -> Result<(TcpListener, Option<TcpListener>), StartError> {
    let bind = |addr: SocketAddr| {
        crate::http::bind(addr, &config.server)
            .map_err(|source| StartError::Listen { addr, source })
    };
    let ingest = bind(config.listen)?;
    let admin = config.admin_listen.map(bind).transpose()?;
    Ok((ingest, admin))
}

/// One server task per listener: ingest (with the admin API unless it has its own
/// listener), and admin.
fn spawn_servers(
    relay: &Arc<Relay>,
    ingest: TcpListener,
    admin: Option<TcpListener>,
    tls: Option<TlsCertificates>,
    rx: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let edge = Edge::new(relay.clone());
    let mut servers = vec![tokio::spawn(crate::http::serve(
        edge.clone(),
        Listener {
            name: "ingest",
            tcp: ingest,
            routes: Routes::Ingest {
                admin: admin.is_none(),
            },
            tls,
        },
        rx.clone(),
        GRACE,
    ))];
    if let Some(tcp) = admin {
        servers.push(tokio::spawn(crate::http::serve(
            edge,
            Listener {
                name: "admin",
                tcp,
                routes: Routes::Admin,
                tls: None,
            },
            rx,
            GRACE,
        )));
    }
    servers
}

fn watch_rules(relay: &Arc<Relay>) -> Option<RulesWatcher> {
    let r = Arc::downgrade(relay);
    let watched = crate::rules::spawn_watcher(relay.rules.clone(), move |applied| {
        if let Some(r) = r.upgrade() {
            r.after_reload(applied);
        }
    });
    match watched {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the rules directory; reload with SIGHUP or POST /admin/reload");
            None
        }
    }
}

/// The start-up summary: one line with what an operator checks first.
fn log_ready(relay: &Relay, addr: SocketAddr, admin_addr: Option<SocketAddr>) {
    let cfg = &relay.config;
    let rules = relay.rules.current();
    let comma_separated = |names: Vec<&str>| names.join(",");
    let enabled: Vec<&str> = rules
        .destinations()
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    let disabled = rules.disabled().iter().map(|d| d.name.as_str()).collect();
    let broken = rules.broken().iter().map(|b| b.name.as_str()).collect();
    let admin = match (&cfg.admin_token, admin_addr) {
        (None, _) => "off".to_string(),
        (Some(_), Some(a)) => a.to_string(),
        (Some(_), None) => "on the ingest listener".to_string(),
    };
    tracing::info!(
        listen = %addr,
        tls = cfg.tls.is_some(),
        admin = %admin,
        destinations = enabled.len(),
        names = %comma_separated(enabled),
        disabled = %comma_separated(disabled),
        broken = %comma_separated(broken),
        data_dir = %cfg.data_dir.display(),
        rules_dir = %cfg.rules_dir.display(),
        version = env!("CARGO_PKG_VERSION"),
        "postback-relay ready"
    );
}

/// Warns when the open-files limit is below what the connection caps need: past it,
/// accepts fail (EMFILE) before the cap is reached. Linux only (`/proc`).
fn warn_if_descriptors_are_short(cfg: &Config) {
    let listeners = 1 + usize::from(cfg.admin_listen.is_some());
    let needed = cfg.server.max_connections * listeners + 128;
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| open_files_limit(&text));
    if let Some(limit) = limit.filter(|l| *l < needed) {
        tracing::warn!(
            open_files_limit = limit,
            max_connections = cfg.server.max_connections,
            "the open-files limit (ulimit -n) is below max_connections per listener + 128; raise it (systemd: LimitNOFILE) or lower [server] max_connections"
        );
    }
}

/// The soft "Max open files" of a `/proc/self/limits` text.
fn open_files_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

async fn purge_loop(relay: Arc<Relay>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        crate::relay::retire_removed(&*relay.store, &relay.rules).await;
        let now = relay.deliverer.clock().now_ms();
        match relay.store.purge(now).await {
            Ok((keys, dead)) if keys + dead > 0 => {
                tracing::info!(keys, dead_letters = dead, "purged expired entries")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purge failed"),
        }
    }
}

/// Once a day (loading already said it at start and on each reload), a warning for
/// each destination whose pinned partner API version is within 60 days of its
/// sunset, or past it: `check` refuses such a file, a relay running it hears daily.
async fn version_reminders(relay: Arc<Relay>) {
    const DAY: Duration = Duration::from_secs(86_400);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + DAY, DAY);
    loop {
        tick.tick().await;
        let now_ms = relay.deliverer.clock().now_ms();
        let Some(today) = chrono::DateTime::from_timestamp_millis(now_ms) else {
            continue;
        };
        for (destination, message) in relay.rules.current().version_warnings(today.date_naive()) {
            tracing::warn!(%destination, "{message}");
        }
    }
}

/// Runs until SIGTERM or Ctrl-C; SIGHUP reloads the rules.
pub async fn run(config: Config, env: Arc<dyn Env + Send + Sync>) -> Result<(), StartError> {
    // Handlers first: once "ready" is logged, a SIGTERM or SIGHUP must be ours to
    // handle, not the default action that kills the process.
    #[cfg(unix)]
    let (mut term, mut int, mut hup) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).map_err(StartError::Signals)?,
            signal(SignalKind::interrupt()).map_err(StartError::Signals)?,
            signal(SignalKind::hangup()).map_err(StartError::Signals)?,
        )
    };
    let running = start(config, env).await?;
    let relay = running.relay.clone();
    #[cfg(unix)]
    {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    // Blocking file reads and parsing: off the async workers.
                    // reload_rules logs each error with its location itself.
                    let r = relay.clone();
                    let reloaded = tokio::task::spawn_blocking(move || {
                        let rules = r.reload_rules();
                        r.reload_tls();
                        rules
                    })
                    .await;
                    match reloaded {
                        Ok(Ok(names)) => tracing::info!(
                            destinations = names.len(),
                            broken = relay.rules.current().broken().len(),
                            "rules reloaded (SIGHUP)"
                        ),
                        Ok(Err(errors)) => tracing::warn!(errors = errors.len(), "rule reload on SIGHUP refused"),
                        Err(e) => tracing::error!(error = %e, "rule reload on SIGHUP did not finish"),
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down: finishing in-flight requests");
    #[cfg(unix)]
    drop(relay);
    running.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_soft_open_files_limit() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\nMax cpu time              unlimited            unlimited            seconds\nMax open files            256                  4096                 files\n";
        assert_eq!(super::open_files_limit(text), Some(256));
        assert_eq!(super::open_files_limit("nothing"), None);
    }

    use super::StartError;

    #[test]
    fn start_errors_say_which_part_failed() {
        let e = StartError::Delivery(crate::deliver::DeliverError::Client(
            "TLS backend unavailable".into(),
        ));
        assert_eq!(
            e.to_string(),
            "cannot start delivery: the HTTP client: TLS backend unavailable"
        );
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
        let e = StartError::Listen {
            addr: "127.0.0.1:8080".parse().unwrap(),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        assert_eq!(
            e.to_string(),
            "cannot listen on 127.0.0.1:8080: address in use"
        );
        let io = std::io::Error::other("no signalfd");
        let e = StartError::Signals(io);
        assert_eq!(
            e.to_string(),
            "cannot install the signal handlers: no signalfd"
        );
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
    }
}
