//! The relay's metrics: one registry per `Relay`, rendered in the Prometheus /
//! OpenMetrics text format by `GET /metrics` (`http::routes`).
//!
//! Why `prometheus-client`: it keeps a registry per value, not per process, so tests
//! that start several relays in one process each see their own counters; the
//! `metrics` facade would need a global (or thread-local) recorder.
//!
//! Owns: the metric names, their help texts and their labels. Label values are only
//! destination names (from rule file names) and fixed words: never event data,
//! never URLs. Never: decides anything; it only counts what others report.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::deliver::{AttemptOutcome, DeliveryObserver, DestinationStatus, PartnerStatusResult};
use crate::store::DestinationCounts;

mod labels;
pub use labels::{EventOutcome, IngestResult, ReloadResult, LISTENERS};

/// The content type of `render()`'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// A destination name as a label value. Names of loaded rule files use only letters,
/// digits, `_` and `-`; a broken file's name can hold anything (quotes, newlines),
/// and the encoder does not escape: every other character becomes `_`, so a file
/// name cannot add a series or break the scrape.
fn label(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabel {
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationOutcome {
    destination: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationState {
    destination: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationPartnerStatus {
    destination: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Every metric of one relay.
pub struct Metrics {
    registry: Registry,
    ingest_requests: Family<ResultLabel, Counter>,
    events: Family<OutcomeLabel, Counter>,
    ingest_seconds: Histogram,
    attempts: Family<DestinationOutcome, Counter>,
    delivery_seconds: HistogramFamily<DestinationLabel>,
    queue_depth: Family<DestinationLabel, Gauge>,
    requests: Family<DestinationLabel, Counter>,
    concurrency: Family<DestinationLabel, Gauge>,
    backlog_age: Family<DestinationLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    held: Family<DestinationLabel, Gauge>,
    partner_status: Family<DestinationPartnerStatus, Counter>,
    dlq_size: Family<DestinationLabel, Gauge>,
    circuit: Family<DestinationState, Gauge>,
    rule_errors: Family<DestinationLabel, Gauge>,
    store_ready: Gauge,
    store_commit_seconds: Histogram,
    store_commit_ops: Histogram,
    reloads: Family<ResultLabel, Counter>,
    connections: Family<ListenerLabel, Gauge>,
    accept_errors: Family<ListenerLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("postback_relay"),
            ingest_requests: Family::default(),
            events: Family::default(),
            ingest_seconds: latency(),
            attempts: Family::default(),
            delivery_seconds: Family::new_with_constructor(latency as fn() -> Histogram),
            queue_depth: Family::default(),
            requests: Family::default(),
            concurrency: Family::default(),
            backlog_age: Family::default(),
            held: Family::default(),
            partner_status: Family::default(),
            dlq_size: Family::default(),
            circuit: Family::default(),
            rule_errors: Family::default(),
            store_ready: Gauge::default(),
            store_commit_seconds: latency(),
            store_commit_ops: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            reloads: Family::default(),
            connections: Family::default(),
            accept_errors: Family::default(),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        self.zero_fixed_words();
        let build = Family::<VersionLabel, Gauge>::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        self.registry
            .register("build_info", "The running version", build);
        self.register_ingest();
        self.register_delivery();
        self.register_state();
    }

    /// Every fixed word shows from the start, at 0, so a rate over it works before it
    /// first happens.
    fn zero_fixed_words(&self) {
        for result in IngestResult::ALL {
            let _ = self.ingest_requests.get_or_create(&ResultLabel {
                result: result.as_str(),
            });
        }
        for outcome in EventOutcome::ALL {
            let _ = self.events.get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            });
        }
        for result in ReloadResult::ALL {
            let _ = self.reloads.get_or_create(&ResultLabel {
                result: result.as_str(),
            });
        }
        let _ = self
            .accept_errors
            .get_or_create(&ListenerLabel { listener: "ingest" });
    }

    /// What ingest counts: requests, events, their time.
    fn register_ingest(&mut self) {
        let r = &mut self.registry;
        r.register(
            "ingest_requests",
            "POST /v1/events requests by result: accepted (202), or why refused",
            self.ingest_requests.clone(),
        );
        r.register(
            "ingest_events",
            "Events in accepted requests by outcome: accepted, duplicate, rejected",
            self.events.clone(),
        );
        r.register(
            "ingest_duration_seconds",
            "Time from the request's headers to its answer, for requests that reached the store",
            self.ingest_seconds.clone(),
        );
    }

    /// What delivery counts, per destination.
    fn register_delivery(&mut self) {
        let r = &mut self.registry;
        r.register(
            "delivery_attempts",
            "Delivery attempts by destination and outcome: delivered, retry (failed, will retry), dead_letter",
            self.attempts.clone(),
        );
        r.register(
            "delivery_duration_seconds",
            "Time of one delivery attempt, by destination",
            self.delivery_seconds.clone(),
        );
        r.register(
            "queue_depth",
            "Queued deliveries by destination (read from the store at scrape time)",
            self.queue_depth.clone(),
        );
        r.register(
            "delivery_requests",
            "Requests sent to partners by destination (a batch is one request carrying many deliveries; delivery_attempts counts each delivery)",
            self.requests.clone(),
        );
        r.register(
            "delivery_concurrency_limit",
            "Requests the adaptive controller lets each destination have in flight now (at most its `concurrency`)",
            self.concurrency.clone(),
        );
        r.register(
            "destination_held",
            "1 while a destination is held because the partner refused its credentials (its queue is kept)",
            self.held.clone(),
        );
        r.register(
            "partner_status",
            "Delivered requests whose later processing status the partner gave (Google Data Manager), by destination and the partner's last word: success, partial_success, failure, unknown (no final status after the last check)",
            self.partner_status.clone(),
        );
        r.register(
            "backlog_age_seconds",
            "How late the most overdue queued delivery of each destination is (0: keeping up)",
            self.backlog_age.clone(),
        );
        r.register(
            "dlq_size",
            "Dead letters by destination (read from the store at scrape time)",
            self.dlq_size.clone(),
        );
        r.register(
            "circuit_state",
            "1 for the state each destination's circuit breaker is in (closed, open, half_open)",
            self.circuit.clone(),
        );
    }

    /// The state of the rules, the store and the listeners.
    fn register_state(&mut self) {
        let r = &mut self.registry;
        r.register(
            "rule_file_errors",
            "Errors in each destination's rule file, for files that have some: its last good version (loaded earlier, kept across restarts) stays in force, or, if none, the destination gets no new deliveries and its queue waits until the file is fixed",
            self.rule_errors.clone(),
        );
        r.register(
            "store_ready",
            "1 while the store takes writes (what /readyz says), 0 while it does not (ingest answers 503)",
            self.store_ready.clone(),
        );
        r.register(
            "store_commit_duration_seconds",
            "Time of one durable store commit",
            self.store_commit_seconds.clone(),
        );
        r.register(
            "store_commit_operations",
            "Operations folded into one store commit (group commit batch size)",
            self.store_commit_ops.clone(),
        );
        r.register(
            "rule_reloads",
            "Rule reloads by result: ok, partial (applied; some files have errors and keep their last good version), failed (nothing applied)",
            self.reloads.clone(),
        );
        r.register(
            "connections_open",
            "Open HTTP connections by listener (ingest, admin)",
            self.connections.clone(),
        );
        r.register(
            "accept_errors",
            "Failed accepts by listener (e.g. out of file descriptors)",
            self.accept_errors.clone(),
        );
    }

    /// One ingest request ended with `result`.
    pub fn ingest_request(&self, result: IngestResult) {
        let result = result.as_str();
        self.ingest_requests
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// An accepted request: its events' outcomes and how long it took.
    pub fn ingest_accepted(
        &self,
        accepted: usize,
        duplicates: usize,
        rejected: usize,
        took: Duration,
    ) {
        for (outcome, n) in EventOutcome::ALL
            .into_iter()
            .zip([accepted, duplicates, rejected])
        {
            self.events
                .get_or_create(&OutcomeLabel {
                    outcome: outcome.as_str(),
                })
                .inc_by(n as u64);
        }
        self.ingest_seconds.observe(took.as_secs_f64());
    }

    /// A rule reload ended: `Ok` (every file valid), `Partial` (the valid files
    /// applied; a file with errors keeps its last good version or stays out) or
    /// `Failed` (nothing changed).
    pub fn rule_reload(&self, result: ReloadResult) {
        self.reloads
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .inc();
    }

    /// A store commit of `operations` operations took `took`. For the store backend
    /// to call (see ARCHITECTURE.md); nothing else records it.
    pub fn store_commit(&self, operations: usize, took: Duration) {
        self.store_commit_seconds.observe(took.as_secs_f64());
        self.store_commit_ops.observe(operations as f64);
    }

    pub fn connection_opened(&self, listener: &'static str) {
        debug_assert!(
            LISTENERS.contains(&listener),
            "listener {listener} not in LISTENERS"
        );
        self.connections
            .get_or_create(&ListenerLabel { listener })
            .inc();
    }

    pub fn connection_closed(&self, listener: &'static str) {
        debug_assert!(
            LISTENERS.contains(&listener),
            "listener {listener} not in LISTENERS"
        );
        self.connections
            .get_or_create(&ListenerLabel { listener })
            .dec();
    }

    /// Open HTTP connections, every listener together.
    pub fn open_connections(&self) -> i64 {
        LISTENERS
            .into_iter()
            .map(|listener| {
                self.connections
                    .get_or_create(&ListenerLabel { listener })
                    .get()
            })
            .sum()
    }

    /// Whether the store takes writes now (read by the caller at scrape time).
    pub fn set_store_ready(&self, ready: bool) {
        self.store_ready.set(i64::from(ready));
    }

    pub fn accept_error(&self, listener: &'static str) {
        debug_assert!(
            LISTENERS.contains(&listener),
            "listener {listener} not in LISTENERS"
        );
        self.accept_errors
            .get_or_create(&ListenerLabel { listener })
            .inc();
    }

    /// The destinations whose rule files have errors, with how many (read by the
    /// caller at scrape time); the others have no series.
    pub fn set_rule_errors(&self, broken: &[(String, usize)]) {
        self.rule_errors.clear();
        for (name, n) in broken {
            self.rule_errors
                .get_or_create(&DestinationLabel {
                    destination: label(name),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// The text exposition, with the per-destination gauges set from `counts` and
    /// `status` (read by the caller at scrape time).
    pub fn render(
        &self,
        counts: &[DestinationCounts],
        status: &[DestinationStatus],
        backlog_ages: &[(String, f64)],
    ) -> String {
        self.queue_depth.clear();
        self.dlq_size.clear();
        self.circuit.clear();
        self.concurrency.clear();
        self.backlog_age.clear();
        self.held.clear();
        for (name, age) in backlog_ages {
            self.backlog_age
                .get_or_create(&DestinationLabel {
                    destination: label(name),
                })
                .set(*age);
        }
        for c in counts {
            let l = DestinationLabel {
                destination: label(&c.destination),
            };
            self.queue_depth
                .get_or_create(&l)
                .set(i64::try_from(c.queued).unwrap_or(i64::MAX));
            self.dlq_size
                .get_or_create(&l)
                .set(i64::try_from(c.dead).unwrap_or(i64::MAX));
        }
        for s in status {
            // Counters of every destination in force, at 0 until their first event.
            for outcome in [
                AttemptOutcome::Delivered,
                AttemptOutcome::Retry,
                AttemptOutcome::DeadLetter,
            ] {
                let _ = self.attempts.get_or_create(&DestinationOutcome {
                    destination: label(&s.name),
                    outcome: outcome.as_str(),
                });
            }
            let _ = self.requests.get_or_create(&DestinationLabel {
                destination: label(&s.name),
            });
            self.concurrency
                .get_or_create(&DestinationLabel {
                    destination: label(&s.name),
                })
                .set(i64::try_from(s.concurrency_limit).unwrap_or(i64::MAX));
            self.held
                .get_or_create(&DestinationLabel {
                    destination: label(&s.name),
                })
                .set(i64::from(s.held.is_some()));
            for state in labels::breaker_states() {
                self.circuit
                    .get_or_create(&DestinationState {
                        destination: label(&s.name),
                        state: state.as_str(),
                    })
                    .set(i64::from(s.breaker == state));
            }
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl DeliveryObserver for Metrics {
    fn attempt(&self, destination: &str, outcome: AttemptOutcome, elapsed: Duration) {
        self.attempts
            .get_or_create(&DestinationOutcome {
                destination: label(destination),
                outcome: outcome.as_str(),
            })
            .inc();
        self.delivery_seconds
            .get_or_create(&DestinationLabel {
                destination: label(destination),
            })
            .observe(elapsed.as_secs_f64());
    }

    fn request(&self, destination: &str, _events: usize, _elapsed: Duration) {
        self.requests
            .get_or_create(&DestinationLabel {
                destination: label(destination),
            })
            .inc();
    }

    fn partner_status(&self, destination: &str, result: PartnerStatusResult) {
        self.partner_status
            .get_or_create(&DestinationPartnerStatus {
                destination: label(destination),
                status: result.as_str(),
            })
            .inc();
    }
}

impl crate::store::StoreObserver for Metrics {
    fn committed(&self, operations: usize, took: Duration) {
        self.store_commit(operations, took);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::BreakerState;

    #[test]
    fn renders_counters_gauges_and_destination_labels() {
        let m = Metrics::new();
        m.ingest_request(IngestResult::Accepted);
        m.ingest_accepted(2, 1, 0, Duration::from_millis(3));
        m.attempt("aff", AttemptOutcome::Retry, Duration::from_millis(5));
        m.rule_reload(ReloadResult::Failed);
        let text = m.render(
            &[DestinationCounts {
                destination: "aff".into(),
                queued: 4,
                dead: 1,
            }],
            &[DestinationStatus {
                name: "aff".into(),
                breaker: BreakerState::Open,
                last_error: None,
                in_flight: 0,
                requests_in_flight: 0,
                concurrency_limit: 12,
                held: Some("x".into()),
                delivered: 0,
                last_success_at: None,
            }],
            &[("aff".into(), 2.5)],
        );
        m.request("aff", 100, Duration::from_millis(5));
        let text = format!("{text}{}", m.render(&[], &[], &[]));
        for line in [
            "postback_relay_ingest_requests_total{result=\"accepted\"} 1",
            "postback_relay_ingest_events_total{outcome=\"accepted\"} 2",
            "postback_relay_delivery_attempts_total{destination=\"aff\",outcome=\"retry\"} 1",
            "postback_relay_queue_depth{destination=\"aff\"} 4",
            "postback_relay_dlq_size{destination=\"aff\"} 1",
            "postback_relay_circuit_state{destination=\"aff\",state=\"open\"} 1",
            "postback_relay_circuit_state{destination=\"aff\",state=\"closed\"} 0",
            "postback_relay_rule_reloads_total{result=\"failed\"} 1",
            "postback_relay_delivery_concurrency_limit{destination=\"aff\"} 12",
            "postback_relay_destination_held{destination=\"aff\"} 1",
            "postback_relay_backlog_age_seconds{destination=\"aff\"} 2.5",
            "postback_relay_delivery_requests_total{destination=\"aff\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
        // a destination gone from the store is gone from the gauges
        let text = m.render(&[], &[], &[]);
        assert!(!text.contains("queue_depth{destination=\"aff\"}"), "{text}");
    }

    #[test]
    fn a_rule_file_name_cannot_inject_a_series_or_break_the_scrape() {
        let m = Metrics::new();
        let hostile = "x\"} 1\npostback_relay_injected_total{a=\"b";
        m.set_rule_errors(&[(hostile.to_string(), 1), ("q\"uote".to_string(), 2)]);
        let text = m.render(&[], &[], &[]);
        assert!(!text.contains("\npostback_relay_injected_total"), "{text}");
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("the scrape parses");
        let names: Vec<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
        assert!(
            !names.contains(&"postback_relay_injected_total"),
            "{names:?}"
        );
        assert!(text.contains("destination=\"q_uote\"} 2"), "{text}");
    }

    /// Every per-destination series goes through `label`, not only the rule-error
    /// gauge: a name with a quote or a newline reaches each of them escaped.
    #[test]
    fn every_destination_series_escapes_the_name() {
        let m = Metrics::new();
        let hostile = "x\"} 1\npostback_relay_injected_total{a=\"b";
        let escaped = label(hostile);
        m.attempt(hostile, AttemptOutcome::Retry, Duration::from_millis(5));
        m.request(hostile, 3, Duration::from_millis(5));
        let text = m.render(
            &[DestinationCounts {
                destination: hostile.into(),
                queued: 4,
                dead: 1,
            }],
            &[DestinationStatus {
                name: hostile.into(),
                breaker: BreakerState::Closed,
                last_error: None,
                in_flight: 0,
                requests_in_flight: 0,
                concurrency_limit: 7,
                held: Some("x".into()),
                delivered: 0,
                last_success_at: None,
            }],
            &[(hostile.into(), 2.5)],
        );
        assert!(!text.contains("\npostback_relay_injected_total"), "{text}");
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("the scrape parses");
        for metric in [
            "postback_relay_delivery_attempts_total",
            "postback_relay_delivery_requests_total",
            "postback_relay_queue_depth",
            "postback_relay_dlq_size",
            "postback_relay_circuit_state",
            "postback_relay_delivery_concurrency_limit",
            "postback_relay_destination_held",
            "postback_relay_backlog_age_seconds",
        ] {
            let sample = scrape
                .samples
                .iter()
                .find(|s| s.metric == metric)
                .unwrap_or_else(|| panic!("{metric} missing in:\n{text}"));
            assert_eq!(
                sample.labels.get("destination"),
                Some(escaped.as_str()),
                "{metric} in:\n{text}"
            );
        }
        let names: Vec<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
        assert!(
            !names.contains(&"postback_relay_injected_total"),
            "{names:?}"
        );
    }
}
