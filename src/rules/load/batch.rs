//! `[batch]`: several events per request, for a partner that takes batches.
//!
//! Owns: reading `[batch]` (`path`, `max_events`, `max_wait`), the preset's default
//! (its partner's batch API and documented maximum), and the check that a custom
//! body can be joined: the array at `path` exists and nothing outside it takes a
//! value from the event (every request of a batch shares the envelope of its first
//! event). Never: joins requests (`deliver` does, at send time).

use std::time::Duration;

use crate::outbound::{BatchSettings, DeliverySettings, DEFAULT_BATCH_WAIT};
use crate::toml_reader::Field;

use super::super::presets::Preset;
use super::super::template::BodyNode;
use super::super::Body;

const EXAMPLE: &str = "{ path = \"events\", max_events = 500, max_wait = \"1s\" }";
/// Longest `max_wait`: an event never waits longer than this for company.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Most events per request a custom destination may ask for.
const MAX_EVENTS: i64 = 10_000;

/// Sets `delivery.batch` from the preset and `[batch]`.
pub fn read_batch(
    field: Option<&Field<'_>>,
    preset: Option<&'static Preset>,
    body: &Body,
    delivery: &mut DeliverySettings,
) {
    let mut batch = preset
        .and_then(|p| p.batch)
        .map(|(path, max)| BatchSettings {
            path: path.to_string(),
            max_events: max,
            max_wait: DEFAULT_BATCH_WAIT,
        });
    let Some(sec) = field.and_then(|f| f.as_section(EXAMPLE)) else {
        delivery.batch = batch.filter(|b| b.max_events > 1);
        return;
    };
    let limit = preset.map_or(MAX_EVENTS, |p| p.batch.map_or(1, |(_, m)| m as i64));
    if let Some(p) = preset.filter(|p| p.batch.is_none()) {
        sec.error(format!(
            "preset {} sends one event per request: {} takes no batches; remove [batch]",
            p.name, p.partner
        ));
        return;
    }
    match (preset, sec.get("path")) {
        (Some(p), Some(f)) => f.error(format!(
            "preset {} puts its events in `{}`; remove `path`",
            p.name,
            p.batch.map_or("", |(path, _)| path)
        )),
        (None, None) => sec.error(
            "[batch] needs `path`: the list in [body] that holds the events, like path = \"events\"",
        ),
        (None, Some(f)) => {
            if let Some(path) = f.as_str("\"events\"") {
                match check_body(body, path) {
                    Ok(()) => {
                        batch = Some(BatchSettings {
                            path: path.to_string(),
                            max_events: MAX_EVENTS as usize,
                            max_wait: DEFAULT_BATCH_WAIT,
                        })
                    }
                    Err(e) => f.error(e),
                }
            }
        }
        (Some(_), None) => {}
    }
    let max_events = sec.int("max_events", 1, limit, "500");
    let max_wait = sec.get("max_wait").and_then(|f| {
        let d = f.as_duration("\"1s\"")?;
        if d > MAX_WAIT {
            f.error(
                "`batch.max_wait` is at most \"60s\": an event should not wait longer for company",
            );
            return None;
        }
        Some(d)
    });
    sec.finish();
    if let Some(b) = &mut batch {
        if let Some(n) = max_events {
            b.max_events = n as usize;
        }
        if let Some(d) = max_wait {
            b.max_wait = d;
        }
    }
    delivery.batch = batch.filter(|b| b.max_events > 1);
}

/// A custom body can be joined at `path`: a JSON body whose `path` is a list, and
/// no value outside it taken from the event.
pub fn check_body(body: &Body, path: &str) -> Result<(), String> {
    let Body::Json(node) = body else {
        return Err(
            "[batch] joins the lists of JSON bodies: write a [body] with the list at `path`".into(),
        );
    };
    let keys: Vec<&str> = path.split('.').collect();
    check_node(node, &keys, path)
}

fn check_node(node: &BodyNode, keys: &[&str], path: &str) -> Result<(), String> {
    let Some((key, rest)) = keys.split_first() else {
        return match node {
            BodyNode::Array(_) => Ok(()),
            _ => Err(format!(
                "`body.{path}` is not a list; [batch] joins the events of that list"
            )),
        };
    };
    let BodyNode::Object(entries) = node else {
        return Err(format!("[body] has no `{path}` list to join"));
    };
    let mut found = false;
    for (k, child) in entries {
        if k == key {
            found = true;
            check_node(child, rest, path)?;
        } else if per_event(child) {
            return Err(format!(
                "`{k}` in [body] takes a value from the event outside `{path}`; a batch shares everything outside its list, so move it into the list"
            ));
        }
    }
    if found {
        Ok(())
    } else {
        Err(format!("[body] has no `{path}` list to join"))
    }
}

/// Whether a body part takes a value from the event.
fn per_event(node: &BodyNode) -> bool {
    match node {
        BodyNode::Str(t) => t.placeholders().next().is_some(),
        BodyNode::Const(_) => false,
        BodyNode::Object(entries) => entries.iter().any(|(_, n)| per_event(n)),
        BodyNode::Array(items) => items.iter().any(per_event),
    }
}
