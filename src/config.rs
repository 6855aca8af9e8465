//! The config file `postback-relay.toml`: schema, defaults, validation.
//!
//! Owns: reading the file (with `${NAME}` substitution), checking every key and value
//! and reporting every mistake as `FILE:LINE:COL: message`, and applying CLI overrides.
//! Never: opens stores or sockets; `app` does that with the validated `Config`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;

use crate::diag::{Diagnostic, Env, Source};
use crate::settings::{Doc, Section};

/// A Standard Webhooks signing secret, decoded (`whsec_` + base64 of the key bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    /// As written (for `send`, which signs with it).
    pub text: String,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(****)")
    }
}

impl WebhookSecret {
    /// Parses `whsec_<base64>` (the prefix is optional, as in the reference libraries).
    pub fn parse(text: &str) -> Result<WebhookSecret, String> {
        let b64 = text.strip_prefix("whsec_").unwrap_or(text);
        if b64.is_empty() {
            return Err("secret is empty; write \"whsec_\" followed by base64 key bytes".into());
        }
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| {
                format!("secret is not valid base64 after \"whsec_\" ({e}); write \"whsec_\" followed by base64 key bytes")
            })?;
        if key.len() < 16 {
            return Err(format!(
                "secret key is {} bytes; use at least 16 random bytes (24-64 is usual)",
                key.len()
            ));
        }
        Ok(WebhookSecret {
            text: text.to_string(),
            key,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestConfig {
    pub secrets: Vec<WebhookSecret>,
    pub tolerance: Duration,
    pub max_body: u64,
    pub max_batch: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupeConfig {
    pub window: Duration,
    pub key: Vec<String>,
    pub by_event: BTreeMap<String, Vec<String>>,
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
    /// Bound on queued deliveries; past it ingest answers 503.
    pub max_queued: u64,
    /// Free-space floor in `data_dir`; below it ingest answers 503.
    pub min_free_space: u64,
    /// How long dead letters are kept.
    pub dlq_retention: Duration,
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
}

/// Command-line values that take precedence over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub rules_dir: Option<PathBuf>,
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
            vec![Diagnostic {
                file: path.to_path_buf(),
                line: 0,
                col: 0,
                message: format!("cannot read the config file: {e}"),
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
            .and_then(|root| read_config(root, path, overrides));
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

fn read_config(root: Section<'_>, path: &Path, ov: &Overrides) -> Option<Config> {
    let doc = root.doc;
    let before = doc.error_count();

    let listen = match root.get("listen") {
        Some(f) => f.as_str("\"127.0.0.1:8080\"").and_then(|s| {
            s.parse::<SocketAddr>()
                .map_err(|_| {
                    f.error(format!(
                        "`listen` is \"{s}\", not an address with a port; write e.g. listen = \"127.0.0.1:8080\" or \"0.0.0.0:8080\""
                    ))
                })
                .ok()
        }),
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

    // [ingest]
    let mut secrets = Vec::new();
    let mut tolerance = Duration::from_secs(300);
    let mut max_body = 1 << 20;
    let mut max_batch = 1000usize;
    match root.section("ingest", "[ingest]") {
        Some(ingest) => {
            match ingest.get("secrets") {
                Some(f) => {
                    if let Some(list) = f.as_str_list("secrets = [\"${POSTBACK_RELAY_SECRET}\"]") {
                        if list.is_empty() {
                            f.error("`ingest.secrets` is empty; list at least one Standard Webhooks secret, e.g. secrets = [\"${POSTBACK_RELAY_SECRET}\"]");
                        }
                        for (s, span) in list {
                            match WebhookSecret::parse(&s) {
                                Ok(sec) => secrets.push(sec),
                                Err(e) => doc.error(span, format!("`ingest.secrets`: {e}")),
                            }
                        }
                    }
                }
                None => {
                    ingest.require("secrets", "[\"${POSTBACK_RELAY_SECRET}\"]");
                }
            }
            if let Some(d) = ingest.duration("tolerance", "\"5m\"") {
                if d.is_zero() {
                    ingest.error("`ingest.tolerance` must be more than zero, e.g. \"5m\"");
                }
                tolerance = d;
            }
            if let Some(f) = ingest.get("max_body") {
                if let Some(n) = f.as_size("\"1MiB\"") {
                    if n == 0 || n > (1 << 30) {
                        f.error("`ingest.max_body` must be between 1 byte and 1GiB, e.g. \"1MiB\"");
                    }
                    max_body = n;
                }
            }
            if let Some(n) = ingest.int("max_batch", 1, 100_000, "1000") {
                max_batch = n as usize;
            }
            ingest.finish();
        }
        None => {
            root.error(
                "missing [ingest] with `secrets`: the relay accepts only signed events; add:\n[ingest]\nsecrets = [\"${POSTBACK_RELAY_SECRET}\"]",
            );
        }
    }

    // [dedupe]
    let mut dedupe = DedupeConfig {
        window: Duration::from_secs(7 * 86400),
        key: vec!["click_id".into(), "event_name".into()],
        by_event: BTreeMap::new(),
    };
    if let Some(d) = root.section("dedupe", "[dedupe]") {
        if let Some(w) = d.duration("window", "\"7d\"") {
            if w < Duration::from_secs(1) {
                d.error("`dedupe.window` must be at least 1s, e.g. \"7d\"");
            }
            dedupe.window = w;
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
    }

    // [store]
    let mut store = StoreConfig {
        backend: Backend::Embedded,
        redis_url: "redis://127.0.0.1:6379".into(),
        max_queued: 10_000_000,
        min_free_space: 256 << 20,
        dlq_retention: Duration::from_secs(30 * 86400),
    };
    if let Some(s) = root.section("store", "[store]") {
        if let Some(f) = s.get("backend") {
            match f.as_str("\"embedded\"") {
                Some("embedded") => store.backend = Backend::Embedded,
                Some("redis") => {
                    store.backend = Backend::Redis;
                    f.error("`store.backend = \"redis\"` is not available in this version yet; write backend = \"embedded\"");
                }
                Some(other) => f.error(format!(
                    "`store.backend` is \"{other}\"; write \"embedded\" or \"redis\""
                )),
                None => {}
            }
        }
        if let Some(u) = s.str("redis_url", "\"redis://127.0.0.1:6379\"") {
            store.redis_url = u;
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
    }

    let mut allow_private_networks = false;
    let mut breaker_failures = 5u32;
    let mut breaker_cool_down = Duration::from_secs(30);
    if let Some(d) = root.section("delivery", "[delivery]") {
        if let Some(b) = d.bool("allow_private_networks") {
            allow_private_networks = b;
        }
        if let Some(n) = d.int("breaker_failures", 1, 1_000_000, "5") {
            breaker_failures = n as u32;
        }
        if let Some(f) = d.get("breaker_cool_down") {
            if let Some(c) = f.as_duration("\"30s\"") {
                if c.is_zero() {
                    f.error("`delivery.breaker_cool_down` must be more than zero, e.g. \"30s\"");
                }
                breaker_cool_down = c;
            }
        }
        d.finish();
    }

    let mut admin_token = None;
    if let Some(a) = root.section("admin", "[admin]") {
        if let Some(f) = a.get("token") {
            if let Some(t) = f.as_str("\"${POSTBACK_RELAY_ADMIN_TOKEN:-}\"") {
                if !t.is_empty() {
                    if t.len() < 16 {
                        f.error("`admin.token` is shorter than 16 characters; use a long random token, or leave it empty to turn the admin API off");
                    }
                    admin_token = Some(t.to_string());
                }
            }
        }
        a.finish();
    }

    if let Some(t) = root.get("tls") {
        t.error("[tls] is not available in this version yet; terminate TLS in front of the relay for now, and remove [tls]");
    }

    root.finish();

    if doc.error_count() > before {
        return None;
    }
    Some(Config {
        path: path.to_path_buf(),
        listen: ov.listen.or(listen)?,
        data_dir: ov.data_dir.clone().unwrap_or(data_dir),
        rules_dir: ov.rules_dir.clone().unwrap_or(rules_dir),
        ingest: IngestConfig {
            secrets,
            tolerance,
            max_body,
            max_batch,
        },
        dedupe,
        store,
        allow_private_networks,
        breaker_failures,
        breaker_cool_down,
        admin_token,
    })
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
                .starts_with("cfg/relay.toml:2:12: `ingest.secrets`: secret is not valid base64")),
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
                .starts_with("cfg/relay.toml:2:35: `ingest.secrets`: secret is not valid base64"),
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
            },
        )
        .expect("valid");
        assert_eq!(cfg.listen.port(), 0);
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(cfg.rules_dir, PathBuf::from("rules"));
    }
}
