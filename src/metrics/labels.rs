//! The fixed words metric labels take, each set an enum (or a list the code reads),
//! and `schema()`: every metric with its labels and their values, which
//! `docs/metrics.md` must list exactly (`the_metrics_document_matches_the_code`).

use crate::deliver::BreakerState;
#[cfg(test)]
use crate::deliver::{AttemptOutcome, PartnerStatusResult};

/// The `result` of `postback_relay_ingest_requests_total`: how a `POST /v1/events`
/// ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IngestResult {
    /// 202.
    Accepted,
    /// 401: signature headers missing, malformed or not matching.
    Unauthorized,
    /// 401: the timestamp is outside `ingest.tolerance`.
    StaleTimestamp,
    /// 400: unreadable or unparseable, or every event rejected.
    BadRequest,
    /// 413: the body is over `max_body`.
    TooLarge,
    /// 413: more events than `max_batch`.
    TooManyEvents,
    /// 415.
    UnsupportedType,
    /// 408: the body did not arrive within `body_read_timeout`.
    BodyTimeout,
    /// 503: the body budget (everyone's, or the address's share) stayed full.
    Overloaded,
    /// 503: the store refused or failed the write.
    StoreUnavailable,
}

impl IngestResult {
    pub const ALL: [IngestResult; 10] = [
        IngestResult::Accepted,
        IngestResult::Unauthorized,
        IngestResult::StaleTimestamp,
        IngestResult::BadRequest,
        IngestResult::TooLarge,
        IngestResult::TooManyEvents,
        IngestResult::UnsupportedType,
        IngestResult::BodyTimeout,
        IngestResult::Overloaded,
        IngestResult::StoreUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IngestResult::Accepted => "accepted",
            IngestResult::Unauthorized => "unauthorized",
            IngestResult::StaleTimestamp => "stale_timestamp",
            IngestResult::BadRequest => "bad_request",
            IngestResult::TooLarge => "too_large",
            IngestResult::TooManyEvents => "too_many_events",
            IngestResult::UnsupportedType => "unsupported_type",
            IngestResult::BodyTimeout => "body_timeout",
            IngestResult::Overloaded => "overloaded",
            IngestResult::StoreUnavailable => "store_unavailable",
        }
    }
}

/// The `outcome` of `postback_relay_ingest_events_total`: one event of an accepted
/// request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventOutcome {
    Accepted,
    Duplicate,
    Rejected,
}

impl EventOutcome {
    pub const ALL: [EventOutcome; 3] = [
        EventOutcome::Accepted,
        EventOutcome::Duplicate,
        EventOutcome::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Accepted => "accepted",
            EventOutcome::Duplicate => "duplicate",
            EventOutcome::Rejected => "rejected",
        }
    }
}

/// The `result` of `postback_relay_rule_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    /// Every rule file is valid and in force.
    Ok,
    /// The valid files applied; each file with errors keeps its last good version
    /// (or stays out if none loaded).
    Partial,
    /// Nothing changed (strict, or the rules directory unreadable).
    Failed,
}

impl ReloadResult {
    pub const ALL: [ReloadResult; 3] = [
        ReloadResult::Ok,
        ReloadResult::Partial,
        ReloadResult::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Partial => "partial",
            ReloadResult::Failed => "failed",
        }
    }
}

/// The `listener` of `connections_open` and `accept_errors_total`: the names the
/// app gives its listeners.
pub const LISTENERS: [&str; 2] = ["ingest", "admin"];

/// Every delivery attempt outcome (the delivery engine's enum, listed whole: a new
/// variant does not compile here until it is added).
#[cfg(test)]
fn attempt_outcomes() -> [AttemptOutcome; 3] {
    let all = [
        AttemptOutcome::Delivered,
        AttemptOutcome::Retry,
        AttemptOutcome::DeadLetter,
    ];
    for o in all {
        match o {
            AttemptOutcome::Delivered | AttemptOutcome::Retry | AttemptOutcome::DeadLetter => {}
        }
    }
    all
}

/// Every partner status word, likewise.
#[cfg(test)]
fn partner_status_results() -> [PartnerStatusResult; 4] {
    let all = [
        PartnerStatusResult::Success,
        PartnerStatusResult::PartialSuccess,
        PartnerStatusResult::Failure,
        PartnerStatusResult::Unknown,
    ];
    for r in all {
        match r {
            PartnerStatusResult::Success
            | PartnerStatusResult::PartialSuccess
            | PartnerStatusResult::Failure
            | PartnerStatusResult::Unknown => {}
        }
    }
    all
}

/// Every circuit breaker state, likewise.
pub fn breaker_states() -> [BreakerState; 3] {
    let all = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ];
    for s in all {
        match s {
            BreakerState::Closed | BreakerState::Open | BreakerState::HalfOpen => {}
        }
    }
    all
}

/// A label and, for a label of fixed words, every value it takes (`None`: names,
/// such as destinations, or the version).
#[cfg(test)]
type Label = (&'static str, Option<Vec<&'static str>>);

/// Every metric as scraped (counters with `_total`), with its labels.
#[cfg(test)]
fn schema() -> Vec<(&'static str, Vec<Label>)> {
    let words = |v: Vec<&'static str>| Some(v);
    let dest: Label = ("destination", None);
    let listener: Label = ("listener", words(LISTENERS.to_vec()));
    vec![
        ("postback_relay_build_info", vec![("version", None)]),
        (
            "postback_relay_ingest_requests_total",
            vec![(
                "result",
                words(IngestResult::ALL.map(IngestResult::as_str).to_vec()),
            )],
        ),
        (
            "postback_relay_ingest_events_total",
            vec![(
                "outcome",
                words(EventOutcome::ALL.map(EventOutcome::as_str).to_vec()),
            )],
        ),
        ("postback_relay_ingest_duration_seconds", vec![]),
        (
            "postback_relay_delivery_attempts_total",
            vec![
                dest.clone(),
                (
                    "outcome",
                    words(attempt_outcomes().map(AttemptOutcome::as_str).to_vec()),
                ),
            ],
        ),
        (
            "postback_relay_delivery_duration_seconds",
            vec![dest.clone()],
        ),
        ("postback_relay_queue_depth", vec![dest.clone()]),
        ("postback_relay_delivery_requests_total", vec![dest.clone()]),
        (
            "postback_relay_delivery_concurrency_limit",
            vec![dest.clone()],
        ),
        ("postback_relay_destination_held", vec![dest.clone()]),
        (
            "postback_relay_partner_status_total",
            vec![
                dest.clone(),
                (
                    "status",
                    words(
                        partner_status_results()
                            .map(PartnerStatusResult::as_str)
                            .to_vec(),
                    ),
                ),
            ],
        ),
        ("postback_relay_backlog_age_seconds", vec![dest.clone()]),
        ("postback_relay_dlq_size", vec![dest.clone()]),
        (
            "postback_relay_circuit_state",
            vec![
                dest.clone(),
                (
                    "state",
                    words(breaker_states().map(BreakerState::as_str).to_vec()),
                ),
            ],
        ),
        ("postback_relay_rule_file_errors", vec![dest]),
        ("postback_relay_store_ready", vec![]),
        ("postback_relay_store_commit_duration_seconds", vec![]),
        ("postback_relay_store_commit_operations", vec![]),
        (
            "postback_relay_rule_reloads_total",
            vec![(
                "result",
                words(ReloadResult::ALL.map(ReloadResult::as_str).to_vec()),
            )],
        ),
        ("postback_relay_connections_open", vec![listener.clone()]),
        ("postback_relay_accept_errors_total", vec![listener]),
    ]
}

/// A metric and its labels, each with its words (owned, as read or compared).
#[cfg(test)]
type Row = (String, Vec<(String, Option<Vec<String>>)>);

/// The table of `docs/metrics.md`: (metric, its labels) per row. A labels cell is
/// `` `a`; `b`: `x`, `y` `` (label `a` of names, label `b` of the words x and y), or
/// `-` for none.
#[cfg(test)]
fn read_doc(doc: &str) -> Result<Vec<Row>, String> {
    let ticked = |s: &str| -> Vec<String> {
        s.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let mut rows = Vec::new();
    for line in doc.lines().map(str::trim).filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(name), Some(labels)) = (cells.get(1), cells.get(3)) else {
            return Err(format!("docs/metrics.md: a row without its cells: {line}"));
        };
        let name = ticked(name).into_iter().next().unwrap_or_default();
        let mut parsed = Vec::new();
        for part in labels.split(';').map(str::trim).filter(|p| *p != "-") {
            let (label, values) = match part.split_once(':') {
                Some((l, v)) => (ticked(l), Some(ticked(v))),
                None => (ticked(part), None),
            };
            let label = label.into_iter().next().ok_or_else(|| {
                format!("docs/metrics.md: {name}: a label cell part without a `name`: {part}")
            })?;
            parsed.push((label, values));
        }
        rows.push((name, parsed));
    }
    if rows.is_empty() {
        return Err("docs/metrics.md has no metrics table".into());
    }
    Ok(rows)
}

/// How `doc` differs from `schema()`, one line each.
#[cfg(test)]
fn drift(doc: &str) -> Vec<String> {
    let rows = match read_doc(doc) {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    let code: Vec<Row> = schema()
        .into_iter()
        .map(|(m, ls)| {
            let ls = ls
                .into_iter()
                .map(|(l, v)| {
                    (
                        l.to_string(),
                        v.map(|v| v.iter().map(|s| s.to_string()).collect()),
                    )
                })
                .collect();
            (m.to_string(), ls)
        })
        .collect();
    let mut out = Vec::new();
    for (m, labels) in &code {
        match rows.iter().find(|(n, _)| n == m) {
            None => out.push(format!("docs/metrics.md does not list {m}")),
            Some((_, doc_labels)) if doc_labels != labels => out.push(format!(
                "docs/metrics.md: {m} has labels {doc_labels:?}; the code gives it {labels:?}"
            )),
            Some(_) => {}
        }
    }
    for (n, _) in &rows {
        if !code.iter().any(|(m, _)| m == n) {
            out.push(format!(
                "docs/metrics.md lists {n}, which the relay does not export"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::deliver::{DeliveryObserver, DestinationStatus};
    use crate::store::DestinationCounts;

    fn doc() -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md");
        std::fs::read_to_string(path).expect("docs/metrics.md")
    }

    #[test]
    fn the_metrics_document_matches_the_code() {
        assert_eq!(drift(&doc()), Vec::<String>::new());
    }

    #[test]
    fn a_drift_of_the_document_is_caught() {
        let doc = doc();
        // A value the code never emits (the old README's `all_rejected`).
        let extra = doc.replace("`store_unavailable`", "`store_unavailable`, `all_rejected`");
        assert_ne!(extra, doc, "the sample edit applies");
        assert_eq!(drift(&extra).len(), 1, "{:?}", drift(&extra));
        // A value left out, a metric left out, a metric made up.
        let fewer = doc.replace("`half_open`", "").replace(", ,", ",");
        assert_eq!(drift(&fewer).len(), 1, "{:?}", drift(&fewer));
        let without: String = doc
            .lines()
            .filter(|l| !l.contains("postback_relay_dlq_size"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            drift(&without),
            ["docs/metrics.md does not list postback_relay_dlq_size"]
        );
        let more = format!("{doc}| `postback_relay_made_up_total` | counter | - | x |\n");
        assert_eq!(
            drift(&more),
            ["docs/metrics.md lists postback_relay_made_up_total, which the relay does not export"]
        );
    }

    /// `schema()` is what the registry really exports: every metric a scrape shows
    /// (each recorded once) is in it with the same labels, and every one in it shows.
    #[test]
    fn the_schema_is_what_a_scrape_shows() {
        let m = super::super::Metrics::new();
        m.ingest_request(IngestResult::Accepted);
        m.ingest_accepted(1, 0, 0, Duration::from_millis(1));
        m.attempt("aff", AttemptOutcome::Delivered, Duration::from_millis(1));
        m.request("aff", 1, Duration::from_millis(1));
        m.partner_status("aff", PartnerStatusResult::Failure);
        m.rule_reload(ReloadResult::Ok);
        m.store_commit(1, Duration::from_millis(1));
        m.connection_opened(LISTENERS[0]);
        m.accept_error(LISTENERS[0]);
        m.set_rule_errors(&[("aff".into(), 1)]);
        let counts = [DestinationCounts {
            destination: "aff".into(),
            queued: 1,
            dead: 0,
        }];
        let status = [DestinationStatus {
            name: "aff".into(),
            breaker: BreakerState::Closed,
            last_error: None,
            in_flight: 0,
            requests_in_flight: 0,
            concurrency_limit: 1,
            held: None,
            delivered: 0,
            last_success_at: None,
        }];
        let text = m.render(&counts, &status, &[("aff".into(), 0.0)]);
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("the scrape parses");
        let mut shown: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
            Default::default();
        for s in &scrape.samples {
            let name = ["_bucket", "_sum", "_count", "_created"]
                .iter()
                .find_map(|suffix| s.metric.strip_suffix(suffix))
                .unwrap_or(&s.metric);
            let labels = shown.entry(name.to_string()).or_default();
            labels.extend(s.labels.keys().filter(|k| *k != "le").cloned());
        }
        let expected: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
            schema()
                .into_iter()
                .map(|(m, ls)| {
                    (
                        m.to_string(),
                        ls.iter().map(|(l, _)| l.to_string()).collect(),
                    )
                })
                .collect();
        assert_eq!(shown, expected);
    }
}
