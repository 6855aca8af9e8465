//! The live view: the last events' fates per destination, for `GET /admin/recent`
//! and the preview page, in the spirit of a tag manager's preview mode.
//!
//! Owns: `Recent`, a bounded ring in memory (never stored, gone at restart) of what
//! happened to each event: which destination got a delivery and which fields of the
//! event it did not get (names, and why), which skipped it and why, which are
//! disabled or broken. Field NAMES and fates only, never a value: no event ID, no
//! event name, no skip reason that quotes the event (`reason`); the raw event is
//! never kept. At most `PER_SECOND` events a second are recorded (the first of each
//! second): under heavy load the view is a sample, and ingest pays for no more.
//! Never: logs anything.

use std::collections::VecDeque;
use std::sync::Mutex;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::event::Event;
use crate::ingest::body::Parsed;
use crate::ingest::{EventResult, Status};
use crate::rules::{RuleSet, Skip};

/// Events kept.
pub const CAPACITY: usize = 500;
/// Events recorded per second at most.
pub const PER_SECOND: u32 = 100;

/// What the view holds about one event: built before the store commit, kept once the
/// commit says whether it was accepted or a duplicate.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The event's index in its request.
    index: usize,
    entry: Value,
}

/// The ring of recent events, newest last.
#[derive(Default)]
pub struct Recent {
    ring: Mutex<VecDeque<Value>>,
    /// (Unix second, events recorded in it).
    budget: Mutex<(i64, u32)>,
}

impl Recent {
    /// Whether one more event may be recorded in the second of `now`.
    fn take_budget(&self, now: DateTime<Utc>) -> bool {
        let Ok(mut b) = self.budget.lock() else {
            return false;
        };
        let second = now.timestamp();
        if b.0 != second {
            *b = (second, 0);
        }
        if b.1 >= PER_SECOND {
            return false;
        }
        b.1 += 1;
        true
    }

    /// The fates of the parsed events of one request under `rules` (within the
    /// budget; rejected events are left out: their sender got the reason).
    pub fn prepare(&self, rules: &RuleSet, parsed: &[Parsed], now: DateTime<Utc>) -> Vec<Pending> {
        let mut out = Vec::new();
        for (index, p) in parsed.iter().enumerate() {
            let Ok(event) = p else { continue };
            if !self.take_budget(now) {
                break;
            }
            out.push(Pending {
                index,
                entry: fates(rules, event, now),
            });
        }
        out
    }

    /// Keeps the prepared events with the store's verdict (`results` of the answer,
    /// in request order): a duplicate got no new delivery anywhere.
    pub fn commit(&self, pending: Vec<Pending>, results: &[EventResult]) {
        let Ok(mut ring) = self.ring.lock() else {
            return;
        };
        for Pending { index, mut entry } in pending {
            let status = results.get(index).map(EventResult::status);
            if status == Some(Status::Duplicate) {
                entry["status"] = json!("duplicate");
                entry["summary"] =
                    json!("a duplicate within the dedupe window: nothing new was sent");
                if let Some(list) = entry["destinations"].as_array_mut() {
                    for d in list.iter_mut().filter(|d| d["fate"] == "sent") {
                        d["fate"] = json!("duplicate");
                    }
                }
            }
            if ring.len() == CAPACITY {
                ring.pop_front();
            }
            ring.push_back(entry);
        }
    }

    /// The newest `limit` events, newest first; only those that name `destination`
    /// (with its entry alone) when given.
    pub fn list(&self, destination: Option<&str>, limit: usize) -> Vec<Value> {
        let Ok(ring) = self.ring.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in ring.iter().rev() {
            if out.len() >= limit {
                break;
            }
            match destination {
                None => out.push(e.clone()),
                Some(name) => {
                    let mine: Vec<Value> = e["destinations"]
                        .as_array()
                        .map(|l| {
                            l.iter()
                                .filter(|d| d["destination"] == name)
                                .cloned()
                                .collect()
                        })
                        .unwrap_or_default();
                    if !mine.is_empty() {
                        let mut e = e.clone();
                        e["destinations"] = Value::Array(mine);
                        out.push(e);
                    }
                }
            }
        }
        out
    }
}

/// One event's fate at every destination: names and fates, no values.
fn fates(rules: &RuleSet, event: &Event, now: DateTime<Utc>) -> Value {
    let mut destinations = Vec::new();
    for d in rules.destinations() {
        let ex = d.explain(event);
        let mut e = json!({"destination": d.name});
        if let Some(b) = rules.broken_file(&d.name) {
            e["note"] = json!(format!(
                "{} has errors: its last good version is in force",
                b.file.display()
            ));
        }
        match &ex.outcome {
            Ok(r) => {
                e["fate"] = json!("sent");
                let dropped: Vec<Value> = ex
                    .fields
                    .iter()
                    .filter(|(_, f)| matches!(f.as_str(), "not allowed" | "dropped: no consent"))
                    .map(|(p, f)| json!({"field": p, "why": f.as_str()}))
                    .collect();
                let changed: Vec<Value> = ex
                    .fields
                    .iter()
                    .filter(|(_, f)| matches!(f.as_str(), "hashed" | "truncated"))
                    .map(|(p, f)| json!({"field": p, "how": f.as_str()}))
                    .collect();
                e["dropped_fields"] = json!(dropped);
                e["changed_fields"] = json!(changed);
                e["consent_dropped"] = json!(r.consent_dropped);
            }
            Err(skip) => {
                e["fate"] = json!("skipped");
                e["reason"] = json!(reason(skip));
                if let Some(w) = &ex.when_failed {
                    e["at"] = json!(format!("{}:{}:{}", w.file.display(), w.line, w.col));
                }
            }
        }
        destinations.push(e);
    }
    for d in rules
        .disabled()
        .iter()
        .filter(|d| rules.broken_file(&d.name).is_none())
    {
        destinations.push(json!({"destination": d.name, "fate": "disabled",
            "reason": format!("nothing is sent: {} says enabled = false", d.file.display())}));
    }
    for b in rules.broken().iter().filter(|b| !b.last_good) {
        destinations.push(json!({"destination": b.name, "fate": "broken",
            "reason": format!("nothing is sent: {} has errors ({})", b.file.display(), b.errors.len())}));
    }
    let sent = destinations.iter().filter(|d| d["fate"] == "sent").count();
    let summary = if sent > 0 {
        format!("sent to {sent} destination(s)")
    } else if rules.destinations().is_empty() {
        "reaches no destination: no rule file is enabled and valid".to_string()
    } else {
        "reaches no destination: every enabled destination skipped it (reasons below)".to_string()
    };
    let fields = event.field_paths();
    json!({
        "received_at": now.to_rfc3339_opts(SecondsFormat::Millis, true),
        "status": "accepted",
        "fields": fields,
        "summary": summary,
        "destinations": destinations,
    })
}

/// Why an event is skipped, without any of its values: the `[when]` event name check
/// names the event's own name, which is left out here.
fn reason(skip: &Skip) -> String {
    match skip {
        Skip::EventName { expected, .. } => format!(
            "event_name is not listed in [when] event_name = [{}]",
            expected
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_per_second_events_and_the_ring_keeps_the_newest() {
        let r = Recent::default();
        let now = Utc::now();
        let taken = (0..PER_SECOND + 5).filter(|_| r.take_budget(now)).count();
        assert_eq!(taken, PER_SECOND as usize);
        assert!(r.take_budget(now + chrono::Duration::seconds(1)));
        let pending = (0..CAPACITY + 3)
            .map(|i| Pending {
                index: 0,
                entry: json!({"n": i, "destinations": []}),
            })
            .collect();
        r.commit(pending, &[EventResult::accepted("e".into(), vec![])]);
        let list = r.list(None, 2);
        assert_eq!(list[0]["n"], CAPACITY + 2);
        assert_eq!(list[1]["n"], CAPACITY + 1);
        assert_eq!(r.list(None, usize::MAX).len(), CAPACITY);
    }
}
