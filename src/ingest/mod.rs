//! Ingest: `POST /v1/events` from signature to 202.
//!
//! Owns: the request limits (content type, `max_body` before and while reading,
//! `max_batch`), Standard Webhooks verification (through `crate::webhooks`), body parsing (`body`),
//! and `accept`: dedupe keys + rule routing + one durable store commit per request.
//! `accept` takes only the pieces it needs and says which destinations got new
//! deliveries; the HTTP layer tells delivery. Never: answers 202 before the store said
//! the write is durable; logs event data.

pub mod body;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::dedupe::DedupeRule;
use crate::rules::RuleSet;
use crate::store::{AcceptOutcome, EventToAccept, NewDelivery, Store, StoreError};

use body::Parsed;

/// What happened to each event of one request: the answer's body, serialised as it
/// is (no JSON tree built in between).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AcceptReport {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: usize,
    pub results: Vec<EventResult>,
    /// Destinations that got new deliveries (not part of the answer).
    #[serde(skip)]
    pub destinations: Vec<String>,
}

/// One event's line in the answer, in the request's order: `{"event_id", "status":
/// "accepted", "delivery_ids"}`, `{"event_id", "status": "duplicate"}` or `{"index",
/// "status": "rejected", "error"}` (keys in that order). Made only by the three
/// constructors, so the fields always match the status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery_ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Accepted,
    Duplicate,
    Rejected,
}

impl EventResult {
    pub fn status(&self) -> Status {
        self.status
    }

    pub fn accepted(event_id: String, delivery_ids: Vec<String>) -> EventResult {
        EventResult {
            index: None,
            event_id: Some(event_id),
            status: Status::Accepted,
            delivery_ids: Some(delivery_ids),
            error: None,
        }
    }

    pub fn duplicate(event_id: String) -> EventResult {
        EventResult {
            index: None,
            event_id: Some(event_id),
            status: Status::Duplicate,
            delivery_ids: None,
            error: None,
        }
    }

    pub fn rejected(index: usize, error: String) -> EventResult {
        EventResult {
            index: Some(index),
            event_id: None,
            status: Status::Rejected,
            delivery_ids: None,
            error: Some(error),
        }
    }
}

/// What `accept` works with: the rules in force, the dedupe rule and its secret, and
/// the store.
pub struct AcceptContext<'a> {
    pub rules: &'a RuleSet,
    pub dedupe: &'a DedupeRule,
    pub dedupe_secret: &'a [u8; 32],
    pub store: &'a dyn Store,
}

/// Dedupes, routes and durably stores parsed events: the heart of ingest.
/// `Ok` means every accepted event's deliveries are durable; `destinations` in the
/// report names those that have new deliveries to send.
pub async fn accept(
    cx: AcceptContext<'_>,
    parsed: Vec<Parsed>,
    now: DateTime<Utc>,
) -> Result<AcceptReport, StoreError> {
    let rules = cx.rules;
    let secret = cx.dedupe_secret;
    let mut to_store = Vec::with_capacity(parsed.len());
    // Per event: Ok(event_id) (its outcome is the next one the store returns, in
    // order) or Err(error).
    let mut slots: Vec<Result<String, String>> = Vec::with_capacity(parsed.len());
    let mut destinations_touched: Vec<String> = Vec::new();
    for p in parsed {
        match p {
            Ok(event) => {
                let dedupe_key = cx.dedupe.key(secret, &event);
                let mut deliveries = Vec::new();
                for routed in rules.route(&event) {
                    if let Ok(mut request) = routed.outcome {
                        // Credentials never reach the store: markers stand in their
                        // place until the send (see `outbound::Credentials`).
                        routed.destination.delivery.credentials.redact(&mut request);
                        let name = routed.destination.name.clone();
                        if !destinations_touched.contains(&name) {
                            destinations_touched.push(name.clone());
                        }
                        deliveries.push(NewDelivery {
                            destination: name,
                            request,
                        });
                    }
                }
                slots.push(Ok(event.id));
                to_store.push(EventToAccept {
                    dedupe_key,
                    deliveries,
                });
            }
            Err(e) => slots.push(Err(e)),
        }
    }
    let outcomes = if to_store.is_empty() {
        Vec::new()
    } else {
        cx.store.accept(to_store, now.timestamp_millis()).await?
    };
    let mut outcomes = outcomes.into_iter();
    let mut report = AcceptReport {
        results: Vec::with_capacity(slots.len()),
        ..AcceptReport::default()
    };
    let mut any_accepted = false;
    for (index, slot) in slots.into_iter().enumerate() {
        match slot {
            Ok(event_id) => match outcomes.next() {
                Some(AcceptOutcome::Accepted { delivery_ids }) => {
                    any_accepted = true;
                    report.accepted += 1;
                    report
                        .results
                        .push(EventResult::accepted(event_id, delivery_ids));
                }
                Some(AcceptOutcome::Duplicate) => {
                    report.duplicates += 1;
                    report.results.push(EventResult::duplicate(event_id));
                }
                None => {
                    return Err(StoreError::Unavailable(
                        "store returned fewer outcomes than events".into(),
                    ))
                }
            },
            Err(error) => {
                report.rejected += 1;
                report.results.push(EventResult::rejected(index, error));
            }
        }
    }
    if any_accepted {
        report.destinations = destinations_touched;
    }
    Ok(report)
}
