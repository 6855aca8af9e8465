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

use crate::config::{Backend, Config};
use crate::dedupe::DedupeRule;
use crate::deliver::{BreakerSettings, DeliverOptions, Deliverer};
use crate::diag::{Diagnostic, Env};
use crate::ingest::verify::Verifier;
use crate::outbound::DeliverySettings;
use crate::rules::{RuleSet, RulesHandle};
use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
use crate::store::Store;

/// Everything a request handler needs.
pub struct Relay {
    pub config: Config,
    pub verifier: Verifier,
    pub dedupe: DedupeRule,
    pub dedupe_secret: [u8; 32],
    pub rules: RulesHandle,
    pub store: Arc<dyn Store>,
    pub deliverer: Deliverer,
}

impl Relay {
    /// Reloads the rule files; on success the delivery workers follow the new set.
    /// On error nothing changes. Returns the enabled destinations' names.
    pub fn reload_rules(&self) -> Result<Vec<String>, Vec<Diagnostic>> {
        self.rules.reload_and_log()?;
        self.follow_rules();
        Ok(self
            .rules
            .current()
            .destinations()
            .iter()
            .map(|d| d.name.clone())
            .collect())
    }

    /// Points the delivery workers at the rules in force, and dead-letters what is
    /// still queued for destinations whose rule file is gone.
    fn follow_rules(&self) {
        let current = self.rules.current();
        self.deliverer
            .update_destinations(delivery_settings(&current));
        let store = self.store.clone();
        let rules = self.rules.clone();
        self.deliverer
            .spawn(async move { retire_removed(&*store, &rules).await });
    }
}

/// Moves the queue of every destination without a rule file (enabled or not) to the
/// dead-letter queue, with a reason that says how to bring it back.
pub async fn retire_removed(store: &dyn Store, rules: &RulesHandle) {
    let Ok(counts) = store.counts().await else {
        return;
    };
    let current = rules.current();
    for c in counts.into_iter().filter(|c| c.queued > 0) {
        let known = current.get(&c.destination).is_some()
            || current.disabled().iter().any(|d| d.name == c.destination);
        if known {
            continue;
        }
        let reason = format!(
            "destination removed: no rule file {}.toml in the rules directory; restore it and replay",
            c.destination
        );
        let now = chrono::Utc::now().timestamp_millis();
        match store.retire_destination(&c.destination, &reason, now).await {
            Ok(n) if n > 0 => {
                tracing::warn!(destination = %c.destination, count = n, "destination removed: its queued deliveries were dead-lettered")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(destination = %c.destination, error = %e, "cannot dead-letter the deliveries of a removed destination")
            }
        }
    }
}

pub fn delivery_settings(rules: &RuleSet) -> Vec<(String, DeliverySettings)> {
    rules
        .destinations()
        .iter()
        .map(|d| (d.name.clone(), d.delivery.clone()))
        .collect()
}

/// Why the relay could not start.
#[derive(Debug)]
pub enum StartError {
    Invalid(Vec<Diagnostic>),
    Store(String),
    Listen(String),
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
            StartError::Listen(e) => write!(f, "cannot listen: {e}"),
        }
    }
}

/// Opens the configured store.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, String> {
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
        Backend::Redis => Err("backend = \"redis\" is not available in this version yet".into()),
    }
}

/// The circuit breaker of every destination, from `[delivery]`.
pub fn breaker_settings(config: &Config) -> BreakerSettings {
    let defaults = BreakerSettings::default();
    BreakerSettings {
        failure_threshold: config.breaker_failures,
        cool_down: config.breaker_cool_down,
        max_cool_down: defaults.max_cool_down.max(config.breaker_cool_down),
    }
}

/// A started relay.
pub struct Running {
    pub addr: SocketAddr,
    pub relay: Arc<Relay>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Running {
    /// Stops accepting, finishes in-flight requests, stops delivery workers, and
    /// waits until the store is closed (so the same data_dir can be opened again).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        for b in self.background {
            b.abort();
            let _ = b.await;
        }
        drop(self._watcher);
        self.relay.deliverer.clone().shutdown().await;
        // Closed explicitly: a task that still holds the store cannot keep the data
        // directory locked after `stop` returns.
        self.relay.store.close().await;
    }
}

/// Builds and starts the relay: store, rules, delivery workers, HTTP server.
pub async fn start(config: Config, env: Arc<dyn Env + Send + Sync>) -> Result<Running, StartError> {
    let rules = RulesHandle::load(&config.rules_dir, env).map_err(StartError::Invalid)?;
    let store = open_store(&config).map_err(StartError::Store)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Listen(format!("{}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Listen(e.to_string()))?;
    let deliverer = Deliverer::start(
        store.clone(),
        delivery_settings(&rules.current()),
        DeliverOptions {
            allow_private_networks: config.allow_private_networks,
            breaker: breaker_settings(&config),
            ..DeliverOptions::default()
        },
    )
    .map_err(|e| StartError::Store(e.to_string()))?;
    let relay = Arc::new(Relay {
        verifier: Verifier::new(&config.ingest.secrets, config.ingest.tolerance),
        dedupe: DedupeRule::new(&config.dedupe),
        dedupe_secret: store.dedupe_secret(),
        rules,
        store,
        deliverer,
        config,
    });

    let (shutdown, rx) = watch::channel(false);
    let server = tokio::spawn(crate::server::serve(
        relay.clone(),
        listener,
        rx.clone(),
        Duration::from_secs(10),
    ));
    let background = vec![tokio::spawn(purge_loop(relay.clone()))];
    let watcher = {
        let r = Arc::downgrade(&relay);
        match crate::rules::spawn_watcher(relay.rules.clone(), move || {
            if let Some(r) = r.upgrade() {
                r.follow_rules();
            }
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the rules directory; reload with SIGHUP or POST /admin/reload");
                None
            }
        }
    };
    tracing::info!(
        listen = %addr,
        destinations = relay.rules.current().destinations().len(),
        "postback-relay ready"
    );
    Ok(Running {
        addr,
        relay,
        shutdown,
        server,
        background,
        _watcher: watcher,
    })
}

async fn purge_loop(relay: Arc<Relay>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        retire_removed(&*relay.store, &relay.rules).await;
        let now = chrono::Utc::now().timestamp_millis();
        match relay.store.purge(now).await {
            Ok((keys, dead)) if keys + dead > 0 => {
                tracing::info!(keys, dead_letters = dead, "purged expired entries")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purge failed"),
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
            signal(SignalKind::terminate()).map_err(|e| StartError::Listen(e.to_string()))?,
            signal(SignalKind::interrupt()).map_err(|e| StartError::Listen(e.to_string()))?,
            signal(SignalKind::hangup()).map_err(|e| StartError::Listen(e.to_string()))?,
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
                    // reload_rules logs each error with its location itself
                    match relay.reload_rules() {
                        Ok(names) => tracing::info!(destinations = names.len(), "rules reloaded (SIGHUP)"),
                        Err(errors) => tracing::warn!(errors = errors.len(), "rule reload on SIGHUP refused"),
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
    // `stop` waits for the last reference to the relay (so the store is closed):
    // ours must not be it.
    #[cfg(unix)]
    drop(relay);
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}
