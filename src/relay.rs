//! The running relay's shared state: what request handlers, signal handlers and the
//! rule watcher work with.
//!
//! Owns: the `Relay` value (config, verifier, dedupe rule, rules in force, store,
//! delivery engine, metrics, TLS certificates) and the reloads that act on it (rules,
//! certificates). Never: starts tasks or listeners (`app` does), or speaks HTTP
//! (`http` does). It depends on neither, so the arrows run app -> http -> relay.

use std::sync::Arc;

use crate::config::Config;
use crate::dedupe::DedupeRule;
use crate::deliver::Deliverer;
use crate::diag::Diagnostic;
use crate::http::tls::TlsCertificates;
use crate::metrics::{Metrics, ReloadResult};
use crate::outbound::DeliverySettings;
use crate::rules::{RuleSet, RulesHandle};
use crate::store::Store;
use crate::webhooks::Verifier;

/// Everything a request handler needs.
pub struct Relay {
    pub config: Config,
    pub verifier: Verifier,
    pub dedupe: DedupeRule,
    pub dedupe_secret: [u8; 32],
    pub rules: RulesHandle,
    pub store: Arc<dyn Store>,
    pub deliverer: Deliverer,
    pub metrics: Arc<Metrics>,
    /// The ingest listener's certificates, when `[tls]` is set.
    pub tls: Option<TlsCertificates>,
}

impl Relay {
    /// Reloads the rule files; once applied (each valid file; each file with errors
    /// keeps its last good version, see `rules::reload`) the delivery workers follow
    /// the new set. On error (strict, or the directory unreadable) nothing changes.
    /// Returns the enabled destinations' names.
    pub fn reload_rules(&self) -> Result<Vec<String>, Vec<Diagnostic>> {
        let result = self.rules.reload_and_log();
        self.after_reload(result.is_ok());
        result?;
        Ok(self
            .rules
            .current()
            .destinations()
            .iter()
            .map(|d| d.name.clone())
            .collect())
    }

    /// After any reload (SIGHUP, admin API, file watch): counts it, and once applied
    /// points the delivery workers at the new set.
    pub fn after_reload(&self, applied: bool) {
        let result = match (applied, self.rules.current().broken().is_empty()) {
            (false, _) => ReloadResult::Failed,
            (true, true) => ReloadResult::Ok,
            (true, false) => ReloadResult::Partial,
        };
        self.metrics.rule_reload(result);
        if applied {
            self.follow_rules();
        }
    }

    /// Points the delivery workers at the rules in force.
    pub fn follow_rules(&self) {
        let current = self.rules.current();
        self.deliverer
            .update_destinations(delivery_settings(&current));
        // Dead-letter what is still queued for destinations whose rule file is gone.
        let store = self.store.clone();
        let rules = self.rules.clone();
        self.deliverer
            .spawn(async move { retire_removed(&*store, &rules).await });
    }

    /// Reads the TLS certificate and key again (SIGHUP); on error the ones in use stay.
    pub fn reload_tls(&self) {
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => {
                    tracing::info!(cert = %tls.cert_path().display(), "TLS certificate reloaded")
                }
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload refused; the certificate in use stays")
                }
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

/// Moves the queue of every destination without a rule file (enabled, disabled or
/// with errors) to the dead-letter queue, with a reason that says how to bring it
/// back. A file with errors still counts: its queue waits until the file is fixed.
pub async fn retire_removed(store: &dyn Store, rules: &RulesHandle) {
    let Ok(counts) = store.counts().await else {
        return;
    };
    let current = rules.current();
    for c in counts.into_iter().filter(|c| c.queued > 0) {
        if current.has_file(&c.destination) {
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
