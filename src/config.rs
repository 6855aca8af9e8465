//! The config file `postback-relay.toml`: schema, defaults, validation.
//!
//! Owns: reading the file (with `${NAME}` substitution), checking every key and value
//! and reporting every mistake as `FILE:LINE:COL: message`, and applying CLI overrides.
//! Never: opens stores or sockets; `app` does that with the validated `Config`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::diag::{Diagnostic, Env, Source};
use crate::toml_reader::{Doc, Section};

/// A Standard Webhooks signing secret (`whsec_` + base64 of the key bytes); the
/// protocol lives in `crate::webhooks`.
pub use crate::webhooks::Secret as WebhookSecret;

/// The public demo secret of the example config (`postback-relay.toml`): a relay
/// verifying with it accepts events anyone can sign.
pub const DEMO_SECRET: &str = "whsec_cG9zdGJhY2stcmVsYXktZGVtby1zZWNyZXQtRE8tTk9ULVVTRSEh";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestConfig {
    pub secrets: Vec<WebhookSecret>,
    pub tolerance: Duration,
    pub max_body: u64,
    pub max_batch: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            secrets: Vec::new(),
            tolerance: Duration::from_secs(300),
            max_body: 1 << 20,
            max_batch: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupeConfig {
    pub window: Duration,
    pub key: Vec<String>,
    pub by_event: BTreeMap<String, Vec<String>>,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            window: Duration::from_secs(7 * 86400),
            key: vec!["click_id".into(), "event_name".into()],
            by_event: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Redis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub backend: Backend,
    pub redis_url: String,
    /// Redis Sentinel: `host:port` of each sentinel; empty: `redis_url` is the primary.
    pub redis_sentinels: Vec<String>,
    /// Redis Sentinel: the name the sentinels monitor the primary by.
    pub redis_sentinel_master: Option<String>,
    /// Redis: every key is `{prefix}:...`; one installation, one prefix.
    pub redis_prefix: String,
    /// Redis: this relay's consumer name; `None`: host name and process ID.
    pub redis_consumer: Option<String>,
    /// Redis: a claim not renewed this long (its relay died) goes to another relay.
    pub redis_claim_timeout: Duration,
    /// Redis: replicas that must confirm an accept (`WAIT`) before the 202.
    pub redis_wait_replicas: u32,
    pub redis_wait_timeout: Duration,
    /// Redis over TLS: the CA certificate(s) (PEM) to trust instead of the public roots.
    pub redis_ca: Option<PathBuf>,
    /// Redis: how long a delivered delivery's receipt (`/admin/deliveries/{id}`) is
    /// kept; they cost Redis memory (docs/redis.md, sizing).
    pub redis_receipt_retention: Duration,
    /// Bound on queued deliveries; past it ingest answers 503.
    pub max_queued: u64,
    /// Free-space floor in `data_dir`; below it ingest answers 503.
    pub min_free_space: u64,
    /// How long dead letters are kept.
    pub dlq_retention: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: Backend::Embedded,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_sentinels: Vec::new(),
            redis_sentinel_master: None,
            redis_prefix: "postback-relay".into(),
            redis_consumer: None,
            redis_claim_timeout: Duration::from_secs(60),
            redis_wait_replicas: 0,
            redis_wait_timeout: Duration::from_secs(1),
            redis_ca: None,
            redis_receipt_retention: Duration::from_secs(86400),
            max_queued: 10_000_000,
            min_free_space: 256 << 20,
            dlq_retention: Duration::from_secs(30 * 86400),
        }
    }
}

/// Limits of the HTTP listeners (`[server]`): what a client on the open internet may
/// hold of the relay, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// From the first byte of a request to the end of its headers (and the TLS
    /// handshake of a new connection).
    pub header_read_timeout: Duration,
    /// From the end of the headers to the end of the body.
    pub body_read_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Open connections at once per listener; past it, new ones wait in the kernel's
    /// backlog until one closes.
    pub max_connections: usize,
    /// Bytes of request bodies being read at once, all requests together.
    pub max_body_bytes_in_flight: u64,
    /// Open connections from one client address (an IPv6 /64), all listeners
    /// together; past it, new ones are closed at once. Default: a quarter of
    /// `max_connections`, at least 64 (or `max_connections` when smaller).
    pub max_connections_per_address: usize,
    /// Bytes of request bodies being read at once from one client address. Default:
    /// a quarter of `max_body_bytes_in_flight` (at least `ingest.max_body`).
    pub max_body_bytes_per_address: u64,
    /// Request line plus headers; past it the answer is 431.
    pub max_header_size: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// After refusing a body (413, 401, ...): how long, and how many bytes, the rest
    /// of it is read and discarded so that the client gets to read the answer.
    pub linger_timeout: Duration,
    pub linger_bytes: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_body_bytes_in_flight: 64 << 20,
            max_connections_per_address: 256,
            max_body_bytes_per_address: 16 << 20,
            max_header_size: 16 << 10,
            h2_max_concurrent_streams: 100,
            linger_timeout: Duration::from_secs(5),
            linger_bytes: 16 << 20,
        }
    }
}

/// TLS on the ingest listener (`[tls]`). Files are read at start and on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

/// Which environment variables rule files may read: `[rules.env]` grants each rule
/// file (by destination name) its own variables; `[rules] allow_env` lists variables
/// every rule file may read (shared; kept for older configs). A variable granted to
/// one file in `[rules.env]` is that file's alone, whatever `allow_env` says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RulesEnvPolicy {
    /// Names, or prefixes written `NAME_*`, every rule file may read.
    pub allow: Vec<String>,
    /// `[rules.env]`: destination name -> names or prefixes only that file may read.
    pub grants: BTreeMap<String, Vec<String>>,
    /// Variables the config file reads itself (its secrets): never for rule files.
    pub reserved: Vec<String>,
    /// The config file, for messages.
    pub config_file: PathBuf,
}

/// Variables with this prefix belong to the relay's own configuration.
pub const RESERVED_ENV_PREFIX: &str = "POSTBACK_RELAY_";

/// How closely `pattern` (a name, or a prefix ending in `*`) names `name`: `None`
/// when it does not; an exact name beats any prefix, a longer prefix a shorter one.
fn grant_match(pattern: &str, name: &str) -> Option<usize> {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix).then_some(prefix.len()),
        None => (pattern == name).then_some(usize::MAX),
    }
}

impl RulesEnvPolicy {
    /// `Err(message)` when no rule file may read `name` (`allow_env` alone).
    pub fn check(&self, name: &str) -> Result<(), String> {
        self.check_for(None, name)
    }

    /// `Err(message)` when the rule file of destination `dest` may not read `name`.
    /// Messages name variables and files, never values.
    pub fn check_for(&self, dest: Option<&str>, name: &str) -> Result<(), String> {
        let file = self.config_file.display();
        if self.reserved.iter().any(|r| r == name) || name.starts_with(RESERVED_ENV_PREFIX) {
            return Err(format!(
                "rule files may not read the environment variable {name}: it holds the relay's own settings (the config {file} reads it); give the partner's value a variable of its own"
            ));
        }
        // The owners: the destinations whose grant names it most closely.
        let best = |pats: &[String]| pats.iter().filter_map(|p| grant_match(p, name)).max();
        let ranked: Vec<(&String, usize)> = self
            .grants
            .iter()
            .filter_map(|(d, pats)| best(pats).map(|m| (d, m)))
            .collect();
        if let Some(top) = ranked.iter().map(|(_, m)| *m).max() {
            let owners: Vec<&str> = ranked
                .iter()
                .filter(|(_, m)| *m == top)
                .map(|(d, _)| d.as_str())
                .collect();
            if dest.is_some_and(|d| owners.contains(&d)) {
                return Ok(());
            }
            let this = dest.unwrap_or("this rule file");
            return Err(format!(
                "{name} belongs to the rule file {}.toml ([rules.env] of {file}); a rule file reads only the variables granted to it: give {this} a variable of its own and grant it under [rules.env] {this} = [\"...\"]",
                owners.join(".toml, ")
            ));
        }
        if self.allow.iter().any(|a| grant_match(a, name).is_some()) {
            return Ok(());
        }
        let prefix = name
            .split('_')
            .next()
            .map(|p| format!("{p}_*"))
            .unwrap_or_default();
        Err(match dest {
            Some(d) => format!(
                "the rule file {d}.toml may read only the environment variables granted to it, and {name} is not; grant it in {file}: [rules.env] {d} = [\"{name}\"] (or a prefix such as \"{prefix}\"; [rules] allow_env lists variables every rule file may read)"
            ),
            None => format!(
                "rule files may only read the environment variables granted in [rules.env] or listed in [rules] allow_env of {file}, and {name} is not; add \"{name}\" (or a prefix such as \"{prefix}\") there"
            ),
        })
    }
}

/// The environment as rule files see it: each file only what its grants (and
/// `[rules] allow_env`) let through.
pub struct RulesEnv {
    inner: std::sync::Arc<dyn Env + Send + Sync>,
    policy: RulesEnvPolicy,
}

impl RulesEnv {
    pub fn new(inner: std::sync::Arc<dyn Env + Send + Sync>, policy: RulesEnvPolicy) -> RulesEnv {
        RulesEnv { inner, policy }
    }
}

/// The destination a rule file defines: its name without `.toml`.
fn destination_of(file: &Path) -> Option<&str> {
    file.file_stem().and_then(|s| s.to_str())
}

impl Env for RulesEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.policy.check(name).ok()?;
        self.inner.var(name)
    }

    fn refuse(&self, name: &str) -> Option<String> {
        self.policy.check(name).err()
    }

    fn var_in(&self, file: &Path, name: &str) -> Option<String> {
        self.policy.check_for(destination_of(file), name).ok()?;
        self.inner.var(name)
    }

    fn refuse_in(&self, file: &Path, name: &str) -> Option<String> {
        self.policy.check_for(destination_of(file), name).err()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file this came from.
    pub path: PathBuf,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub rules_dir: PathBuf,
    pub ingest: IngestConfig,
    pub dedupe: DedupeConfig,
    pub store: StoreConfig,
    pub allow_private_networks: bool,
    /// Consecutive failures (partner down: 5xx, 408/425/429, timeout, connection
    /// error) that open a destination's circuit (`[delivery] breaker_failures`).
    pub breaker_failures: u32,
    /// How long an open circuit waits before one probe (`[delivery]
    /// breaker_cool_down`); doubles while probes fail, up to 5m (or this, if longer).
    pub breaker_cool_down: Duration,
    /// Bearer token for `/admin`; `None` turns the admin API off.
    pub admin_token: Option<String>,
    /// `[admin] preview_token`: a second token that may log in to `/ui`, look and
    /// preview (and read `GET /admin/destinations`, `GET /admin/recent`), but never
    /// replay, reload or read dead letters, deliveries or metrics (403).
    pub admin_preview_token: Option<String>,
    /// `[admin] listen`: the admin API and `/metrics` on their own listener.
    pub admin_listen: Option<SocketAddr>,
    pub server: ServerLimits,
    pub tls: Option<TlsConfig>,
    pub rules_env: RulesEnvPolicy,
    /// `[rules] custom_fields`: event fields outside the event schema that rule files
    /// may name without a warning (a path covers everything under it).
    pub custom_fields: Vec<String>,
    /// `[rules] strict` or `serve --strict`: refuse to start (and to reload) while any
    /// rule file has errors. Default: start with the valid rule files.
    pub strict_rules: bool,
}

impl Config {
    /// What makes this config unsafe in production: said loudly, as warnings, at
    /// start (`serve` logs each) and by `check`. Each names the setting and the fix.
    pub fn safety_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let demo = WebhookSecret::parse(DEMO_SECRET).ok();
        if demo.is_some_and(|d| self.ingest.secrets.contains(&d)) {
            out.push("[ingest] secrets holds the public demo secret of the example config: anyone can sign events for this relay; set POSTBACK_RELAY_SECRET to a secret of your own (whsec_ + base64 of 24+ random bytes)".to_string());
        }
        if self.allow_private_networks {
            out.push("[delivery] allow_private_networks = true: rule files may send to loopback and private addresses (this machine, the internal network); keep it false in production".to_string());
        }
        if self.admin_token.is_some() {
            // The admin listener never speaks TLS; without one, the admin API shares
            // the ingest listener and its TLS.
            let (addr, tls) = match self.admin_listen {
                Some(a) => (a, false),
                None => (self.listen, self.tls.is_some()),
            };
            if !addr.ip().is_loopback() && !tls {
                out.push(format!("the admin API (its token, /ui, replay) listens on {addr} without TLS: the token crosses the network in clear; set [admin] listen = \"127.0.0.1:8081\" (and reach it through SSH or a TLS proxy), or [tls] on `listen`"));
            }
        }
        out
    }
}

/// Command-line values that take precedence over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub rules_dir: Option<PathBuf>,
    /// `serve --strict`.
    pub strict: bool,
}

pub const DEFAULT_PATH: &str = "postback-relay.toml";

impl Config {
    /// Reads and validates the file; every problem is returned, each with its place.
    pub fn load(
        path: &Path,
        env: &dyn Env,
        overrides: &Overrides,
    ) -> Result<Config, Vec<Diagnostic>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let message = if e.kind() == std::io::ErrorKind::NotFound {
                let cwd = std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|_| "the current directory".into());
                if path.is_relative() {
                    format!(
                        "no such config file in {cwd}; run from the directory that holds it, or pass --config FILE"
                    )
                } else {
                    "no such config file; pass --config FILE with the right path".to_string()
                }
            } else {
                format!("cannot read the config file: {e}")
            };
            vec![Diagnostic {
                file: path.to_path_buf(),
                line: 0,
                col: 0,
                message,
            }]
        })?;
        Config::parse(path, text, env, overrides)
    }

    /// Validates config text as if read from `path`.
    pub fn parse(
        path: &Path,
        text: String,
        env: &dyn Env,
        overrides: &Overrides,
    ) -> Result<Config, Vec<Diagnostic>> {
        let (source, mut errors) = Source::new(path, text, env);
        let doc = Doc::parse(&source);
        let cfg = doc
            .root()
            .and_then(|root| read_config(root, path, overrides, &source.vars));
        errors.extend(doc.into_errors());
        errors.sort_by_key(|d| (d.line, d.col));
        match cfg {
            Some(cfg) if errors.is_empty() => Ok(cfg),
            _ => Err(errors),
        }
    }
}

impl Config {
    /// The rules directory a config file names, even when the file has other errors
    /// (so `check` can validate the rules in the same run): the `--rules` override,
    /// else `rules_dir` if it reads as a string, else `rules` beside the file.
    pub fn rules_dir_of(path: &Path, env: &dyn Env, rules_override: Option<PathBuf>) -> PathBuf {
        if let Some(dir) = rules_override {
            return dir;
        }
        let named = std::fs::read_to_string(path).ok().and_then(|text| {
            let (source, _) = Source::new(path, text, env);
            let doc = source.text.parse::<toml_edit::DocumentMut>().ok()?;
            doc.get("rules_dir")?.as_str().map(str::to_string)
        });
        relative_to(path, named.as_deref().unwrap_or("rules"))
    }
}

/// Relative paths in the file are relative to the file's folder.
fn relative_to(config_path: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        return p;
    }
    match config_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p,
    }
}

fn read_config(root: Section<'_>, path: &Path, ov: &Overrides, vars: &[String]) -> Option<Config> {
    let doc = root.doc;
    let before = doc.error_count();

    let listen = match root.get("listen") {
        Some(f) => read_addr(&f, "listen = \"127.0.0.1:8080\" or \"0.0.0.0:8080\""),
        None => Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
    };
    let data_dir = root
        .str("data_dir", "\"data\"")
        .map(|s| relative_to(path, &s))
        .unwrap_or_else(|| relative_to(path, "data"));
    let rules_dir = root
        .str("rules_dir", "\"rules\"")
        .map(|s| relative_to(path, &s))
        .unwrap_or_else(|| relative_to(path, "rules"));
    let ingest = read_ingest(&root);
    let dedupe = read_dedupe(&root, ingest.tolerance);
    let store = read_store(&root, path);
    let delivery = read_delivery(&root);
    let admin = read_admin(&root);
    let server = read_server(&root, ingest.max_body);
    let tls = read_tls(&root, path);
    let rules = read_rules(&root, path, vars);
    root.finish();

    if doc.error_count() > before {
        return None;
    }
    Some(Config {
        path: path.to_path_buf(),
        listen: ov.listen.or(listen)?,
        data_dir: ov.data_dir.clone().unwrap_or(data_dir),
        rules_dir: ov.rules_dir.clone().unwrap_or(rules_dir),
        ingest,
        dedupe,
        store,
        allow_private_networks: delivery.allow_private_networks,
        breaker_failures: delivery.breaker_failures,
        breaker_cool_down: delivery.breaker_cool_down,
        admin_token: admin.token,
        admin_preview_token: admin.preview_token,
        admin_listen: admin.listen,
        server,
        tls,
        rules_env: rules.env,
        custom_fields: rules.custom_fields,
        strict_rules: rules.strict || ov.strict,
    })
}

fn read_addr(f: &crate::toml_reader::Field<'_>, example: &str) -> Option<SocketAddr> {
    let s = f.as_str("\"127.0.0.1:8080\"")?;
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            f.error(format!(
                "`{}` is not an IP address with a port; write e.g. {example}",
                f.name()
            ));
            None
        }
    }
}

fn read_ingest(root: &Section<'_>) -> IngestConfig {
    let mut cfg = IngestConfig::default();
    let Some(ingest) = root.section("ingest", "[ingest]") else {
        root.error(
            "missing [ingest] with `secrets`: the relay accepts only signed events; add:\n[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]",
        );
        return cfg;
    };
    match ingest.get("secrets") {
        Some(f) => cfg.secrets = read_secrets(&f),
        None => {
            ingest.require("secrets", "[\"${POSTBACK_RELAY_SECRET}\"]");
        }
    }
    if let Some(d) = ingest.duration("tolerance", "\"5m\"") {
        if d.is_zero() {
            ingest.error("`ingest.tolerance` must be more than zero, e.g. \"5m\"");
        }
        cfg.tolerance = d;
    }
    if let Some(f) = ingest.get("max_body") {
        if let Some(n) = f.as_size("\"1MiB\"") {
            if n == 0 || n > (1 << 30) {
                f.error("`ingest.max_body` must be between 1 byte and 1GiB, e.g. \"1MiB\"");
            }
            cfg.max_body = n;
        }
    }
    if let Some(n) = ingest.int("max_batch", 1, 100_000, "1000") {
        cfg.max_batch = n as usize;
    }
    ingest.finish();
    cfg
}

/// `ingest.secrets`; errors describe what is wrong, never show the secret.
fn read_secrets(f: &crate::toml_reader::Field<'_>) -> Vec<WebhookSecret> {
    let mut secrets = Vec::new();
    let Some(list) = f.as_str_list("secrets = [\"${POSTBACK_RELAY_SECRET}\"]") else {
        return secrets;
    };
    if list.is_empty() {
        f.error("`ingest.secrets` is empty; list at least one Standard Webhooks secret, e.g. secrets = [\"${POSTBACK_RELAY_SECRET}\"]");
    }
    let hint = "write \"whsec_\" followed by the base64 of at least 16 random bytes";
    for (s, span) in list {
        match WebhookSecret::parse(&s) {
            Ok(sec) if sec.key_len() < crate::webhooks::MIN_INGEST_KEY => f.doc.error(
                span,
                format!(
                    "`ingest.secrets`: the secret's key is {} bytes, too short; {hint} (24-64 is usual)",
                    sec.key_len()
                ),
            ),
            Ok(sec) => secrets.push(sec),
            Err(e) => f.doc.error(span, format!("`ingest.secrets`: {e}; {hint}")),
        }
    }
    secrets
}

fn read_dedupe(root: &Section<'_>, tolerance: Duration) -> DedupeConfig {
    let mut dedupe = DedupeConfig::default();
    let Some(d) = root.section("dedupe", "[dedupe]") else {
        return dedupe;
    };
    if let Some(f) = d.get("window") {
        if let Some(w) = f.as_duration("\"7d\"") {
            if w < Duration::from_secs(1) {
                f.error("`dedupe.window` must be at least 1s, e.g. \"7d\"");
            } else if w < tolerance {
                f.error(format!(
                    "`dedupe.window` ({}s) is shorter than `ingest.tolerance` ({}s): a captured request could be replayed after its dedupe key expired and be delivered twice; make the window at least as long as the tolerance, e.g. \"7d\"",
                    w.as_secs(),
                    tolerance.as_secs()
                ));
            }
            dedupe.window = w;
        }
    }
    if let Some(f) = d.get("key") {
        if let Some(k) = f.as_str_list("[\"click_id\", \"event_name\"]") {
            if k.is_empty() {
                f.error("`dedupe.key` is empty; name at least one field, e.g. [\"click_id\", \"event_name\"]");
            }
            dedupe.key = k.into_iter().map(|(s, _)| s).collect();
        }
    }
    if let Some(by) = d.section(
        "by_event",
        "{ purchase = [\"click_id\", \"properties.order_id\"] }",
    ) {
        for (name, f) in by.entries() {
            if let Some(k) = f.as_str_list("[\"click_id\", \"properties.order_id\"]") {
                if k.is_empty() {
                    f.error(format!(
                        "`dedupe.by_event.{name}` is empty; name at least one field"
                    ));
                }
                dedupe
                    .by_event
                    .insert(name, k.into_iter().map(|(s, _)| s).collect());
            }
        }
        by.finish();
    }
    d.finish();
    dedupe
}

fn read_store(root: &Section<'_>, path: &Path) -> StoreConfig {
    let mut store = StoreConfig::default();
    let Some(s) = root.section("store", "[store]") else {
        return store;
    };
    if let Some(f) = s.get("backend") {
        match f.as_str("\"embedded\"") {
            Some("embedded") => store.backend = Backend::Embedded,
            Some("redis") => store.backend = Backend::Redis,
            Some(_) => f.error("`store.backend` must be \"embedded\" or \"redis\""),
            None => {}
        }
    }
    read_redis(&s, &mut store);
    if let Some(f) = s.get("redis_ca") {
        if let Some(p) = f.as_str("\"/etc/postback-relay/redis-ca.pem\"") {
            let p = relative_to(path, p);
            if !p.is_file() {
                f.error(format!(
                    "`store.redis_ca`: {} is not a readable file; write the path of the PEM file of the CA that signed Redis's certificate",
                    p.display()
                ));
            } else if !store.redis_url.starts_with("rediss://") {
                f.error("`store.redis_ca` is for TLS: write redis_url = \"rediss://...\"");
            }
            store.redis_ca = Some(p);
        }
    }
    if let Some(n) = s.int("max_queued", 1, i64::MAX, "10000000") {
        store.max_queued = n as u64;
    }
    if let Some(n) = s.size("min_free_space", "\"256MiB\"") {
        store.min_free_space = n;
    }
    if let Some(d) = s.duration("dlq_retention", "\"30d\"") {
        store.dlq_retention = d;
    }
    s.finish();
    store
}

/// The `redis_*` keys of `[store]`.
fn read_redis(s: &Section<'_>, store: &mut StoreConfig) {
    if let Some(f) = s.get("redis_url") {
        match f.as_str("\"redis://127.0.0.1:6379\"") {
            Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => {
                store.redis_url = u.to_owned()
            }
            Some(_) => f.error("`store.redis_url` must start with redis:// or rediss:// (TLS), like \"redis://:PASSWORD@127.0.0.1:6379/0\""),
            None => {}
        }
    }
    read_sentinels(s, store);
    if let Some(f) = s.get("redis_prefix") {
        match f.as_str("\"postback-relay\"") {
            Some(p) if !p.is_empty() && !p.contains(['{', '}']) => store.redis_prefix = p.to_owned(),
            Some(_) => f.error("`store.redis_prefix` must be a non-empty name without { or }, like \"postback-relay\""),
            None => {}
        }
    }
    if let Some(f) = s.get("redis_consumer") {
        match f.as_str("\"relay-1\"") {
            Some(c) if !c.trim().is_empty() => store.redis_consumer = Some(c.to_owned()),
            Some(_) => f.error("`store.redis_consumer` must not be empty; leave it out for host name and process ID"),
            None => {}
        }
    }
    if let Some(d) = s.duration("redis_claim_timeout", "\"60s\"") {
        if d < Duration::from_millis(300) {
            if let Some(f) = s.get("redis_claim_timeout") {
                f.error("`store.redis_claim_timeout` must be at least 300ms");
            }
        } else {
            store.redis_claim_timeout = d;
        }
    }
    if let Some(n) = s.int("redis_wait_replicas", 0, 64, "1") {
        store.redis_wait_replicas = n as u32;
    }
    if let Some(d) = s.duration("redis_wait_timeout", "\"1s\"") {
        store.redis_wait_timeout = d;
    }
    if let Some(d) = s.duration("redis_receipt_retention", "\"1d\"") {
        if d < Duration::from_secs(1) {
            if let Some(f) = s.get("redis_receipt_retention") {
                f.error("`store.redis_receipt_retention` must be at least 1s");
            }
        } else {
            store.redis_receipt_retention = d;
        }
    }
}

/// `redis_sentinels` and `redis_sentinel_master`: both or neither.
fn read_sentinels(s: &Section<'_>, store: &mut StoreConfig) {
    const EXAMPLE: &str = "[\"10.0.0.1:26379\", \"10.0.0.2:26379\", \"10.0.0.3:26379\"]";
    let list = s.get("redis_sentinels");
    if let Some(f) = &list {
        let addrs = f.as_str_list(EXAMPLE);
        if addrs.as_ref().is_some_and(|l| l.is_empty()) {
            f.error(format!("`store.redis_sentinels` is empty; list the sentinels like {EXAMPLE}, or leave it out to use redis_url's address"));
        }
        for (addr, span) in addrs.unwrap_or_default() {
            match addr.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
                Some((h, Ok(p))) if !h.is_empty() && p > 0 => store.redis_sentinels.push(addr),
                _ => s.doc.error(span, format!("`store.redis_sentinels`: \"{addr}\" is not host:port; write each sentinel like {EXAMPLE}")),
            }
        }
    }
    let master = s.get("redis_sentinel_master");
    if let Some(f) = &master {
        match f.as_str("\"mymaster\"") {
            Some(m) if !m.trim().is_empty() && !m.contains(char::is_whitespace) => {
                store.redis_sentinel_master = Some(m.to_owned())
            }
            Some(_) => f.error("`store.redis_sentinel_master` must be the name the sentinels monitor the primary by (`sentinel monitor <name> ...`), like \"mymaster\""),
            None => {}
        }
    }
    match (&list, &master) {
        (Some(f), None) => f.error("`store.redis_sentinels` needs `redis_sentinel_master`: the name the sentinels monitor the primary by, like redis_sentinel_master = \"mymaster\""),
        (None, Some(f)) => f.error(format!("`store.redis_sentinel_master` needs `redis_sentinels`: the sentinels to ask, like redis_sentinels = {EXAMPLE}")),
        _ => {}
    }
}

/// `[delivery]`.
struct DeliveryConfig {
    allow_private_networks: bool,
    breaker_failures: u32,
    breaker_cool_down: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            allow_private_networks: false,
            breaker_failures: 5,
            breaker_cool_down: Duration::from_secs(30),
        }
    }
}

fn read_delivery(root: &Section<'_>) -> DeliveryConfig {
    let mut cfg = DeliveryConfig::default();
    let Some(d) = root.section("delivery", "[delivery]") else {
        return cfg;
    };
    if let Some(b) = d.bool("allow_private_networks") {
        cfg.allow_private_networks = b;
    }
    if let Some(n) = d.int("breaker_failures", 1, 1_000_000, "5") {
        cfg.breaker_failures = n as u32;
    }
    if let Some(f) = d.get("breaker_cool_down") {
        if let Some(c) = f.as_duration("\"30s\"") {
            if c.is_zero() {
                f.error("`delivery.breaker_cool_down` must be more than zero, e.g. \"30s\"");
            }
            cfg.breaker_cool_down = c;
        }
    }
    d.finish();
    cfg
}

/// `[admin]`: the tokens and the listener.
#[derive(Default)]
struct AdminConfig {
    token: Option<String>,
    preview_token: Option<String>,
    listen: Option<SocketAddr>,
}

fn read_admin(root: &Section<'_>) -> AdminConfig {
    let mut admin = AdminConfig::default();
    let Some(a) = root.section("admin", "[admin]") else {
        return admin;
    };
    let token = |key: &str, example: &str, off: &str| {
        let f = a.get(key)?;
        let t = f.as_str(example)?;
        if t.is_empty() {
            return None;
        }
        if t.len() < 16 {
            f.error(format!(
                "`admin.{key}` is shorter than 16 characters; use a long random token, or leave it empty to {off}"
            ));
        }
        Some((t.to_string(), f))
    };
    admin.token = token(
        "token",
        "\"${POSTBACK_RELAY_ADMIN_TOKEN:-}\"",
        "turn the admin API off",
    )
    .map(|(t, _)| t);
    if let Some((t, f)) = token(
        "preview_token",
        "\"${POSTBACK_RELAY_PREVIEW_TOKEN:-}\"",
        "have no preview-only login",
    ) {
        match &admin.token {
            None => f.error("`admin.preview_token` needs `admin.token`: the preview page is part of the admin API, which is off without it"),
            Some(full) if *full == t => f.error("`admin.preview_token` is the same as `admin.token`: a preview-only login needs a token of its own"),
            Some(_) => admin.preview_token = Some(t),
        }
    }
    if let Some(f) = a.get("listen") {
        admin.listen = read_addr(
            &f,
            "listen = \"127.0.0.1:8081\" (keep it off the public network)",
        );
    }
    a.finish();
    admin
}

fn read_server(root: &Section<'_>, max_body: u64) -> ServerLimits {
    let mut l = ServerLimits::default();
    // Room for at least one whole body, whatever `ingest.max_body` says.
    l.max_body_bytes_in_flight = l.max_body_bytes_in_flight.max(max_body);
    l.max_body_bytes_per_address = l.max_body_bytes_per_address.max(max_body);
    let Some(s) = root.section("server", "[server]") else {
        return l;
    };
    let positive = |key: &str, example: &str, slot: &mut Duration| {
        if let Some(f) = s.get(key) {
            if let Some(d) = f.as_duration(example) {
                if d.is_zero() {
                    f.error(format!(
                        "`server.{key}` must be more than zero, e.g. {example}"
                    ));
                }
                *slot = d;
            }
        }
    };
    positive("header_read_timeout", "\"10s\"", &mut l.header_read_timeout);
    positive("body_read_timeout", "\"30s\"", &mut l.body_read_timeout);
    positive("idle_timeout", "\"60s\"", &mut l.idle_timeout);
    positive("linger_timeout", "\"5s\"", &mut l.linger_timeout);
    if let Some(n) = s.int("max_connections", 1, 1_000_000, "1024") {
        l.max_connections = n as usize;
    }
    // The shares default to a quarter of the totals (one address alone never holds
    // more), but never fewer than 64 connections (or all, under a small cap).
    l.max_connections_per_address = (l.max_connections / 4).max(l.max_connections.min(64));
    if let Some(n) = s.int("max_connections_per_address", 1, 1_000_000, "256") {
        l.max_connections_per_address = n as usize;
    }
    if let Some(n) = at_least_max_body(&s, "max_body_bytes_in_flight", "\"64MiB\"", max_body) {
        l.max_body_bytes_in_flight = n;
    }
    l.max_body_bytes_per_address = (l.max_body_bytes_in_flight / 4).max(max_body);
    if let Some(n) = at_least_max_body(&s, "max_body_bytes_per_address", "\"16MiB\"", max_body) {
        l.max_body_bytes_per_address = n;
    }
    if let Some(f) = s.get("max_header_size") {
        if let Some(n) = f.as_size("\"16KiB\"") {
            if !(8192..=1 << 20).contains(&n) {
                f.error("`server.max_header_size` must be between 8KiB and 1MiB, e.g. \"16KiB\"");
            }
            l.max_header_size = n as usize;
        }
    }
    if let Some(n) = s.int("h2_max_concurrent_streams", 1, 10_000, "100") {
        l.h2_max_concurrent_streams = n as u32;
    }
    if let Some(n) = s.size("linger_bytes", "\"16MiB\"") {
        l.linger_bytes = n;
    }
    s.finish();
    l
}

/// A size under `[server]` that must hold at least one whole body.
fn at_least_max_body(s: &Section<'_>, key: &str, example: &str, max_body: u64) -> Option<u64> {
    let f = s.get(key)?;
    let n = f.as_size(example)?;
    if n < max_body {
        f.error(format!("`server.{key}` must be at least `ingest.max_body` ({max_body} bytes), or no request could be read"));
    }
    Some(n)
}

fn read_tls(root: &Section<'_>, path: &Path) -> Option<TlsConfig> {
    let t = root.section("tls", "{ cert = \"cert.pem\", key = \"key.pem\" }")?;
    let file = |key: &str, example: &str| {
        t.get(key).and_then(|f| {
            let p = relative_to(path, f.as_str(example)?);
            if !p.is_file() {
                f.error(format!(
                    "`tls.{key}`: {} is not a readable file; write the path of a PEM file, e.g. {key} = {example}",
                    p.display()
                ));
            }
            Some(p)
        })
    };
    let cert = file("cert", "\"/etc/postback-relay/cert.pem\"");
    let key = file("key", "\"/etc/postback-relay/key.pem\"");
    let client_ca = file("client_ca", "\"/etc/postback-relay/clients-ca.pem\"");
    if t.get("cert").is_none() || t.get("key").is_none() {
        t.error("[tls] needs both `cert` and `key` (PEM files): the certificate chain and its private key");
    }
    t.finish();
    Some(TlsConfig {
        cert: cert?,
        key: key?,
        client_ca,
    })
}

/// `[rules]`.
#[derive(Default)]
struct RulesSection {
    env: RulesEnvPolicy,
    custom_fields: Vec<String>,
    strict: bool,
}

fn read_rules(root: &Section<'_>, path: &Path, vars: &[String]) -> RulesSection {
    let mut policy = RulesEnvPolicy {
        reserved: vars.to_vec(),
        config_file: path.to_path_buf(),
        ..RulesEnvPolicy::default()
    };
    policy.reserved.sort();
    policy.reserved.dedup();
    let mut out = RulesSection::default();
    let Some(r) = root.section("rules", "[rules]") else {
        out.env = policy;
        return out;
    };
    if let Some(f) = r.get("allow_env") {
        for (name, span) in f
            .as_str_list("[\"META_ACCESS_TOKEN\", \"TIKTOK_*\"]")
            .unwrap_or_default()
        {
            if let Err(e) = check_allow_entry(&name, &policy.reserved) {
                f.doc.error(span, format!("`rules.allow_env`: {e}"));
            } else {
                policy.allow.push(name);
            }
        }
    }
    if let Some(grants) = r.section("env", "{ meta = [\"META_*\"] }") {
        read_grants(&grants, &mut policy);
        grants.finish();
    }
    if let Some(f) = r.get("custom_fields") {
        for (p, span) in f
            .as_str_list("[\"properties.sku\", \"user.loyalty_tier\"]")
            .unwrap_or_default()
        {
            if crate::rules::is_valid_path(&p) {
                out.custom_fields.push(p);
            } else {
                f.doc.error(span, format!("`rules.custom_fields`: \"{p}\" is not a field path; write dotted names like \"properties.sku\""));
            }
        }
    }
    out.strict = r.bool("strict").unwrap_or(false);
    r.finish();
    out.env = policy;
    out
}

/// `[rules.env]`: each destination's own variables.
fn read_grants(grants: &Section<'_>, policy: &mut RulesEnvPolicy) {
    for (dest, f) in grants.entries() {
        let Some(list) = f.as_str_list("[\"META_ACCESS_TOKEN\", \"META_PIXEL_ID\"]") else {
            continue;
        };
        let mut names = Vec::new();
        for (name, span) in list {
            match check_allow_entry(&name, &policy.reserved) {
                Err(e) => f.doc.error(span, format!("`rules.env.{dest}`: {e}")),
                Ok(()) => names.push(name),
            }
        }
        policy.grants.insert(dest, names);
    }
}

fn check_allow_entry(entry: &str, reserved: &[String]) -> Result<(), String> {
    let name = entry.strip_suffix('*').unwrap_or(entry);
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !valid {
        return Err("each entry must be a variable name like \"META_ACCESS_TOKEN\", or a prefix ending in * like \"META_*\" (a lone * is not allowed: rule files would see every secret)".into());
    }
    if name.starts_with(RESERVED_ENV_PREFIX) || RESERVED_ENV_PREFIX.starts_with(name) {
        return Err(format!("variables starting with {RESERVED_ENV_PREFIX} hold the relay's own settings and are never given to rule files; list the partners' variables instead"));
    }
    if reserved.iter().any(|r| r == entry) {
        return Err(format!("{entry} is read by this config file itself (a secret of the relay); rule files never see it"));
    }
    Ok(())
}

/// `[rules.env]` of a config text, read leniently (`rules_env_of`).
fn grants_of(text: &str) -> BTreeMap<String, Vec<String>> {
    let Ok(doc) = text.parse::<toml_edit::DocumentMut>() else {
        return BTreeMap::new();
    };
    let Some(table) = doc
        .get("rules")
        .and_then(|r| r.get("env"))
        .and_then(|e| e.as_table_like())
    else {
        return BTreeMap::new();
    };
    table
        .iter()
        .filter_map(|(dest, v)| {
            let list = v.as_array()?;
            let names = list
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect();
            Some((dest.to_string(), names))
        })
        .collect()
}

/// `[rules] allow_env` and `[rules.env]` of a config file even when the file has
/// other errors, so that `check` judges the rules by the policy the user wrote.
impl Config {
    pub fn rules_env_of(path: &Path, env: &dyn Env) -> RulesEnvPolicy {
        let mut policy = RulesEnvPolicy {
            config_file: path.to_path_buf(),
            ..RulesEnvPolicy::default()
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return policy;
        };
        let (source, _) = Source::new(path, text, env);
        policy.reserved = source.vars.clone();
        let allow = source
            .text
            .parse::<toml_edit::DocumentMut>()
            .ok()
            .and_then(|doc| {
                let list = doc.get("rules")?.get("allow_env")?.as_array()?.clone();
                Some(
                    list.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect::<Vec<_>>(),
                )
            })
            .unwrap_or_default();
        policy.allow = allow
            .into_iter()
            .filter(|a| check_allow_entry(a, &policy.reserved).is_ok())
            .collect();
        policy.grants = grants_of(&source.text)
            .into_iter()
            .map(|(dest, names)| {
                let ok = names
                    .into_iter()
                    .filter(|a| check_allow_entry(a, &policy.reserved).is_ok())
                    .collect();
                (dest, ok)
            })
            .collect();
        policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn parse(text: &str) -> Result<Config, Vec<Diagnostic>> {
        let env: HashMap<String, String> =
            [("POSTBACK_RELAY_SECRET".to_string(), SECRET.to_string())].into();
        Config::parse(
            Path::new("cfg/relay.toml"),
            text.to_string(),
            &env,
            &Overrides::default(),
        )
    }

    #[test]
    fn the_documented_example_is_valid() {
        let cfg = parse(
            r#"
listen = "127.0.0.1:8080"
data_dir = "data"
rules_dir = "rules"

[ingest]
secrets = ["${POSTBACK_RELAY_SECRET}"]  # several = key rotation
tolerance = "5m"
max_body = "1MiB"
max_batch = 1000

[dedupe]
window = "7d"
key = ["click_id", "event_name"]
by_event = { purchase = ["click_id", "properties.order_id"] }

[store]
backend = "embedded"
redis_url = "redis://127.0.0.1:6379"

[delivery]
allow_private_networks = false

[admin]
token = "${POSTBACK_RELAY_ADMIN_TOKEN:-}"
"#,
        )
        .expect("valid");
        assert_eq!(cfg.listen.port(), 8080);
        assert_eq!(cfg.data_dir, PathBuf::from("cfg/data"));
        assert_eq!(cfg.ingest.secrets.len(), 1);
        assert_eq!(cfg.ingest.tolerance, Duration::from_secs(300));
        assert_eq!(cfg.ingest.max_body, 1 << 20);
        assert_eq!(cfg.dedupe.window, Duration::from_secs(7 * 86400));
        assert_eq!(
            cfg.dedupe.by_event["purchase"],
            vec!["click_id".to_string(), "properties.order_id".to_string()]
        );
        assert_eq!(cfg.admin_token, None);
        assert_eq!(cfg.breaker_failures, 5);
        assert_eq!(cfg.breaker_cool_down, Duration::from_secs(30));
    }

    #[test]
    fn unsafe_settings_are_warned_about() {
        let demo = format!("[ingest]\nsecrets = [\"{DEMO_SECRET}\"]\n");
        let cfg = parse(&format!(
            "listen = \"0.0.0.0:8080\"\n{demo}[delivery]\nallow_private_networks = true\n[admin]\ntoken = \"admin-token-0123456789\"\n"
        ))
        .expect("valid");
        let w = cfg.safety_warnings();
        assert_eq!(w.len(), 3, "{w:#?}");
        assert!(w[0].starts_with("[ingest] secrets holds the public demo secret"));
        assert!(w[1].starts_with("[delivery] allow_private_networks = true"));
        assert!(w[2].starts_with(
            "the admin API (its token, /ui, replay) listens on 0.0.0.0:8080 without TLS"
        ));
        // Own secret, no private networks, the admin API on loopback: nothing to say.
        let cfg = parse(
            "listen = \"0.0.0.0:8080\"\n[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]\n[admin]\ntoken = \"admin-token-0123456789\"\nlisten = \"127.0.0.1:8081\"\n",
        )
        .expect("valid");
        assert_eq!(cfg.safety_warnings(), Vec::<String>::new());
        let cfg = parse("listen = \"0.0.0.0:8080\"\n[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]\n[admin]\ntoken = \"admin-token-0123456789\"\nlisten = \"10.0.0.5:8081\"\n").expect("valid");
        assert_eq!(cfg.safety_warnings().len(), 1);
    }

    #[test]
    fn a_preview_token_needs_the_admin_token_and_must_differ_from_it() {
        let base = "[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]\n[admin]\n";
        let cfg = parse(&format!(
            "{base}token = \"admin-token-0123456789\"\npreview_token = \"preview-token-0123456789\"\n"
        ))
        .expect("valid");
        assert_eq!(
            cfg.admin_preview_token.as_deref(),
            Some("preview-token-0123456789")
        );
        let errors = |text: &str| -> Vec<String> {
            parse(&format!("{base}{text}"))
                .expect_err("refused")
                .iter()
                .map(|d| d.to_string())
                .collect()
        };
        assert_eq!(
            errors("preview_token = \"preview-token-0123456789\"\n"),
            ["cfg/relay.toml:4:17: `admin.preview_token` needs `admin.token`: the preview page is part of the admin API, which is off without it"]
        );
        assert_eq!(
            errors("token = \"admin-token-0123456789\"\npreview_token = \"admin-token-0123456789\"\n"),
            ["cfg/relay.toml:5:17: `admin.preview_token` is the same as `admin.token`: a preview-only login needs a token of its own"]
        );
        assert_eq!(
            errors("token = \"admin-token-0123456789\"\npreview_token = \"short\"\n"),
            ["cfg/relay.toml:5:17: `admin.preview_token` is shorter than 16 characters; use a long random token, or leave it empty to have no preview-only login"]
        );
    }

    #[test]
    fn breaker_settings_are_read_and_checked() {
        let base = "[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]\n[delivery]\n";
        let cfg = parse(&format!(
            "{base}breaker_failures = 3\nbreaker_cool_down = \"500ms\"\n"
        ))
        .expect("valid");
        assert_eq!(cfg.breaker_failures, 3);
        assert_eq!(cfg.breaker_cool_down, Duration::from_millis(500));

        let errs = parse(&format!(
            "{base}breaker_failures = 0\nbreaker_cool_down = \"0s\"\n"
        ))
        .expect_err("invalid");
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 2, "{text:#?}");
        assert!(
            text[0].starts_with("cfg/relay.toml:4:20: `delivery.breaker_failures` is 0"),
            "{text:#?}"
        );
        assert!(
            text[1].starts_with("cfg/relay.toml:5:21: `delivery.breaker_cool_down` must be more"),
            "{text:#?}"
        );
    }

    #[test]
    fn two_mistakes_give_two_located_errors() {
        let errs = parse(
            "listen = \"127.0.0.1:8080\"\n[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]\ntolerance = \"5 parsecs\"\nmax_bach = 10\n",
        )
        .expect_err("invalid");
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 2, "{text:#?}");
        assert!(
            text[0].starts_with("cfg/relay.toml:4:13: `ingest.tolerance`"),
            "{text:#?}"
        );
        assert!(
            text[1].starts_with(
                "cfg/relay.toml:5:1: unknown key `max_bach` in [ingest]; did you mean `max_batch`?"
            ),
            "{text:#?}"
        );
    }

    #[test]
    fn bad_secrets_and_unset_variables_are_located() {
        let errs = parse("[ingest]\nsecrets = [\"whsec_!!!\", \"${NOT_SET_ANYWHERE}\"]\n")
            .expect_err("invalid");
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter().any(|t| t
                .starts_with("cfg/relay.toml:2:12: `ingest.secrets`: the part after \"whsec_\" is not valid base64")),
            "{text:#?}"
        );
        assert!(
            text.iter().any(|t| t.starts_with(
                "cfg/relay.toml:2:26: environment variable NOT_SET_ANYWHERE is not set"
            )),
            "{text:#?}"
        );
    }

    #[test]
    fn an_unset_variable_is_one_error_not_also_an_empty_value() {
        let errs = parse("[ingest]\nsecrets = [\"${NOT_SET_ANYWHERE}\", \"whsec_!!!\"]\n")
            .expect_err("invalid");
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 2, "{text:#?}");
        assert!(
            text[0].starts_with(
                "cfg/relay.toml:2:13: environment variable NOT_SET_ANYWHERE is not set"
            ),
            "{text:#?}"
        );
        // An independent mistake on the same line is still reported.
        assert!(
            text[1]
                .starts_with("cfg/relay.toml:2:35: `ingest.secrets`: the part after \"whsec_\" is not valid base64"),
            "{text:#?}"
        );
    }

    #[test]
    fn secret_mistakes_never_show_the_secret() {
        let errs = parse("[ingest]\nsecrets = [\"whsec_hunter2~\", \"whsec_c2hvcnQ=\"]\n")
            .expect_err("invalid");
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 2, "{text:#?}");
        assert!(text[1].contains("key is 5 bytes, too short"), "{text:#?}");
        for t in &text {
            assert!(
                !t.contains("hunter") && !t.contains('~') && !t.contains("c2hv"),
                "{t}"
            );
        }
    }

    #[test]
    fn a_dedupe_window_shorter_than_the_tolerance_is_refused() {
        let errs = parse(
            "[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]\ntolerance = \"10m\"\n[dedupe]\nwindow = \"5m\"\n",
        )
        .expect_err("invalid");
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 1, "{text:#?}");
        assert!(
            text[0].starts_with("cfg/relay.toml:5:10: `dedupe.window` (300s) is shorter than `ingest.tolerance` (600s)"),
            "{text:#?}"
        );
    }

    #[test]
    fn server_tls_admin_listen_and_rules_env_are_read() {
        let cfg = parse(
            "[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]\n[server]\nheader_read_timeout = \"2s\"\nmax_connections = 10\nmax_connections_per_address = 3\nmax_body_bytes_per_address = \"2MiB\"\nmax_header_size = \"8KiB\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[rules]\nallow_env = [\"META_*\", \"TIKTOK_TOKEN\"]\n",
        )
        .expect("valid");
        assert_eq!(cfg.server.header_read_timeout, Duration::from_secs(2));
        assert_eq!(cfg.server.max_connections, 10);
        assert_eq!(cfg.server.max_connections_per_address, 3);
        assert_eq!(cfg.server.max_body_bytes_per_address, 2 << 20);
        assert_eq!(cfg.server.max_header_size, 8192);
        assert_eq!(cfg.server.body_read_timeout, Duration::from_secs(30));
        assert!(!cfg.strict_rules);
        assert!(cfg.custom_fields.is_empty());
        assert_eq!(
            cfg.admin_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 0)))
        );
        let p = &cfg.rules_env;
        assert_eq!(p.reserved, vec!["POSTBACK_RELAY_SECRET".to_string()]);
        assert!(p.check("META_TOKEN").is_ok());
        assert!(p.check("TIKTOK_TOKEN").is_ok());
        assert!(p
            .check("TIKTOK_OTHER")
            .unwrap_err()
            .contains("[rules] allow_env"));
        assert!(p
            .check("POSTBACK_RELAY_SECRET")
            .unwrap_err()
            .contains("relay's own settings"));
        assert!(p.check("POSTBACK_RELAY_ADMIN_TOKEN").is_err());
    }

    #[test]
    fn custom_fields_and_strict_are_read_from_rules() {
        let cfg = parse(
            "[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]\n[rules]\ncustom_fields = [\"properties.sku\"]\nstrict = true\n",
        )
        .expect("valid");
        assert_eq!(cfg.custom_fields, vec!["properties.sku".to_string()]);
        assert!(cfg.strict_rules);
        let errs = parse(
            "[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]\n[rules]\ncustom_fields = [\"a b\"]\n",
        )
        .expect_err("invalid");
        assert_eq!(
            errs[0].to_string(),
            "cfg/relay.toml:4:18: `rules.custom_fields`: \"a b\" is not a field path; write dotted names like \"properties.sku\""
        );
    }

    #[test]
    fn the_per_address_shares_default_to_a_quarter_of_the_totals() {
        let cfg = parse(
            "[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]\nmax_body = \"1MiB\"\n[server]\nmax_connections = 10\nmax_body_bytes_in_flight = \"40MiB\"\n",
        )
        .expect("valid");
        assert_eq!(cfg.server.max_connections_per_address, 10, "all, under 64");
        assert_eq!(cfg.server.max_body_bytes_per_address, 10 << 20);
        let cfg = parse("[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]\n").expect("valid");
        assert_eq!(cfg.server.max_connections_per_address, 256);
        assert_eq!(cfg.server.max_body_bytes_per_address, 16 << 20);
    }

    #[test]
    fn a_variable_granted_to_one_rule_file_is_that_files_alone() {
        let cfg = parse(
            "[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]\n[rules]\nallow_env = [\"PARTNER_*\", \"SHARED_REGION\"]\n[rules.env]\ngoogle = [\"PARTNER_OAUTH_*\"]\nmeta = [\"META_*\"]\nmeta-eu = [\"META_EU_*\"]\n",
        )
        .expect("valid");
        let p = &cfg.rules_env;
        assert!(p.check_for(Some("google"), "PARTNER_OAUTH_REFRESH").is_ok());
        let e = p
            .check_for(Some("x6"), "PARTNER_OAUTH_REFRESH")
            .unwrap_err();
        assert!(
            e.starts_with("PARTNER_OAUTH_REFRESH belongs to the rule file google.toml"),
            "{e}"
        );
        // allow_env is shared, but not over a grant.
        assert!(p.check_for(Some("x6"), "PARTNER_OTHER").is_ok());
        assert!(p.check_for(Some("x6"), "SHARED_REGION").is_ok());
        // The closest grant owns a variable.
        assert!(p.check_for(Some("meta-eu"), "META_EU_TOKEN").is_ok());
        assert!(p.check_for(Some("meta"), "META_EU_TOKEN").is_err());
        assert!(p.check_for(Some("meta"), "META_TOKEN").is_ok());
        let e = p.check_for(Some("tiktok"), "TIKTOK_TOKEN").unwrap_err();
        assert!(e.contains("[rules.env] tiktok = [\"TIKTOK_TOKEN\"]"), "{e}");
        let errs = parse(
            "[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]\n[rules.env]\nmeta = [\"*\", \"POSTBACK_RELAY_SECRET\"]\n",
        )
        .expect_err("invalid");
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 2, "{text:#?}");
        assert!(
            text[0].contains("`rules.env.meta`: each entry"),
            "{text:#?}"
        );
    }

    #[test]
    fn allow_env_may_not_reach_the_relays_own_variables_and_tls_needs_files() {
        let errs = parse(
            "[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]\n[rules]\nallow_env = [\"*\", \"POSTBACK_*\", \"OK_*\"]\n[tls]\ncert = \"nope.pem\"\n",
        )
        .expect_err("invalid");
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 4, "{text:#?}");
        assert!(
            text[0].starts_with("cfg/relay.toml:4:14: `rules.allow_env`: each entry"),
            "{text:#?}"
        );
        assert!(
            text[1].starts_with(
                "cfg/relay.toml:4:19: `rules.allow_env`: variables starting with POSTBACK_RELAY_"
            ),
            "{text:#?}"
        );
        assert!(
            text[2].starts_with("cfg/relay.toml:5:1: [tls] needs both"),
            "{text:#?}"
        );
        assert!(
            text[3]
                .starts_with("cfg/relay.toml:6:8: `tls.cert`: cfg/nope.pem is not a readable file"),
            "{text:#?}"
        );
    }

    #[test]
    fn rules_dir_of_an_invalid_config_is_still_the_one_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, "rules_dir = \"partners\"\nmax_bach = 1\n").unwrap();
        let env: HashMap<String, String> = HashMap::new();
        assert_eq!(
            Config::rules_dir_of(&path, &env, None),
            dir.path().join("partners")
        );
        std::fs::write(&path, "this is not toml\n").unwrap();
        assert_eq!(
            Config::rules_dir_of(&path, &env, None),
            dir.path().join("rules")
        );
        assert_eq!(
            Config::rules_dir_of(&path, &env, Some(PathBuf::from("x"))),
            PathBuf::from("x")
        );
    }

    #[test]
    fn missing_ingest_is_an_error_that_says_what_to_write() {
        let errs = parse("listen = \"127.0.0.1:1\"\n").expect_err("invalid");
        assert!(errs[0]
            .message
            .contains("secrets = [\"${POSTBACK_RELAY_SECRET}\"]"));
    }

    #[test]
    fn overrides_win() {
        let env: HashMap<String, String> = HashMap::new();
        let cfg = Config::parse(
            Path::new("relay.toml"),
            format!("listen = \"127.0.0.1:1\"\n[ingest]\nsecrets = [\"{SECRET}\"]\n"),
            &env,
            &Overrides {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                data_dir: Some(PathBuf::from("/tmp/x")),
                rules_dir: None,
                strict: false,
            },
        )
        .expect("valid");
        assert_eq!(cfg.listen.port(), 0);
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(cfg.rules_dir, PathBuf::from("rules"));
    }

    #[test]
    fn the_redis_backend_reads_its_keys_and_locates_mistakes() {
        let base = format!("listen = \"127.0.0.1:1\"\n[ingest]\nsecrets = [\"{SECRET}\"]\n");
        let cfg = parse(&format!(
            "{base}[store]\nbackend = \"redis\"\nredis_url = \"rediss://:pw@redis.internal:6380/2\"\nredis_prefix = \"shop\"\nredis_consumer = \"relay-a\"\nredis_claim_timeout = \"30s\"\nredis_wait_replicas = 1\nredis_receipt_retention = \"6h\"\n"
        ))
        .expect("valid");
        assert_eq!(cfg.store.backend, Backend::Redis);
        assert_eq!(cfg.store.redis_prefix, "shop");
        assert_eq!(cfg.store.redis_consumer.as_deref(), Some("relay-a"));
        assert_eq!(cfg.store.redis_claim_timeout, Duration::from_secs(30));
        assert_eq!(cfg.store.redis_wait_replicas, 1);
        assert_eq!(
            cfg.store.redis_receipt_retention,
            Duration::from_secs(6 * 3600)
        );
        let errs = parse(&format!(
            "{base}[store]\nbackend = \"redis\"\nredis_url = \"http://x\"\nredis_prefix = \"{{x}}\"\nredis_claim_timeout = \"10ms\"\nredis_receipt_retention = \"0s\"\n"
        ))
        .expect_err("invalid");
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 4, "{text:#?}");
        assert!(
            text[3].contains(":9:") && text[3].contains("at least 1s"),
            "{text:#?}"
        );
        assert!(
            text[0].contains(":6:") && text[0].contains("redis://"),
            "{text:#?}"
        );
        assert!(
            text[1].contains(":7:") && text[1].contains("redis_prefix"),
            "{text:#?}"
        );
        assert!(
            text[2].contains(":8:") && text[2].contains("300ms"),
            "{text:#?}"
        );
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let errs = parse(&format!(
            "{base}[store]\nredis_url = \"redis://x\"\nredis_ca = \"{ca}\"\n"
        ))
        .expect_err("invalid");
        assert!(errs[0].to_string().contains("rediss://"), "{errs:?}");
    }

    #[test]
    fn sentinel_keys_are_read_together_and_mistakes_located() {
        let base = format!("listen = \"127.0.0.1:1\"\n[ingest]\nsecrets = [\"{SECRET}\"]\n");
        let cfg = parse(&format!(
            "{base}[store]\nbackend = \"redis\"\nredis_url = \"redis://:pw@ignored:6379/1\"\nredis_sentinels = [\"10.0.0.1:26379\", \"sentinel-b:26379\"]\nredis_sentinel_master = \"mymaster\"\n"
        ))
        .expect("valid");
        assert_eq!(
            cfg.store.redis_sentinels,
            vec!["10.0.0.1:26379".to_string(), "sentinel-b:26379".to_string()]
        );
        assert_eq!(cfg.store.redis_sentinel_master.as_deref(), Some("mymaster"));
        let errs = parse(&format!(
            "{base}[store]\nbackend = \"redis\"\nredis_sentinels = [\"10.0.0.1:26379\", \"10.0.0.2\", \":1\"]\nredis_sentinel_master = \"my master\"\n"
        ))
        .expect_err("invalid");
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(
            text[0].contains(":6:") && text[0].contains("\"10.0.0.2\" is not host:port"),
            "{text:#?}"
        );
        assert!(
            text[1].contains(":6:") && text[1].contains("\":1\""),
            "{text:#?}"
        );
        assert!(
            text[2].contains(":7:") && text[2].contains("sentinel monitor"),
            "{text:#?}"
        );
        let errs = parse(&format!(
            "{base}[store]\nredis_sentinels = [\"10.0.0.1:26379\"]\n"
        ))
        .expect_err("no master");
        assert!(
            errs[0].to_string().contains(":5:")
                && errs[0]
                    .to_string()
                    .contains("needs `redis_sentinel_master`"),
            "{errs:?}"
        );
        let errs = parse(&format!("{base}[store]\nredis_sentinel_master = \"m\"\n"))
            .expect_err("no sentinels");
        assert!(
            errs[0].to_string().contains(":5:")
                && errs[0].to_string().contains("needs `redis_sentinels`"),
            "{errs:?}"
        );
        let errs = parse(&format!(
            "{base}[store]\nredis_sentinels = []\nredis_sentinel_master = \"m\"\n"
        ))
        .expect_err("empty");
        assert!(errs[0].to_string().contains("is empty"), "{errs:?}");
    }
}
