//! Why an event is or is not sent to one destination, step by step, for the preview
//! page: the `[when]` condition that failed (with its line in the rule file), what
//! consent did, and each field's fate under `[privacy]`.
//!
//! Owns: `Explanation` and `Destination::explain`. Never: shows a field's value
//! (only paths); the rendered request, with its secrets masked, comes from
//! `preview::masked`.

use std::path::PathBuf;

use serde_json::Value;

use crate::event::Event;

use super::apply::Coverage;
use super::template::{BodyNode, Ctx, PlaceholderSource, Template};
use super::{Body, Destination, Rendered, Skip};

/// What `[privacy]` does with one field of the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldFate {
    /// Allowed as it is.
    Allowed,
    /// Allowed, normalised and SHA-256 hashed.
    Hashed,
    /// Allowed, IP truncated (IPv4 /24, IPv6 /48).
    Truncated,
    /// Not in `allow`: never leaves the relay.
    NotAllowed,
    /// Allowed, but dropped because the consent field is not `true`.
    DroppedForConsent,
}

impl FieldFate {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldFate::Allowed => "allowed",
            FieldFate::Hashed => "hashed",
            FieldFate::Truncated => "truncated",
            FieldFate::NotAllowed => "not allowed",
            FieldFate::DroppedForConsent => "dropped: no consent",
        }
    }
}

/// The `[when]` condition an event failed, and where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhenFailed {
    pub reason: String,
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

/// One destination's verdict on one event, step by step.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// `None` when every `[when]` condition holds.
    pub when_failed: Option<WhenFailed>,
    /// The consent field and whether it is `true`, when the rule has `[privacy.consent]`.
    pub consent: Option<(String, bool)>,
    /// Every field of the event (leaf paths, after `[rename]`) with its fate.
    pub fields: Vec<(String, FieldFate)>,
    /// The request, or why the event is not sent.
    pub outcome: Result<Rendered, Skip>,
}

impl Destination {
    /// Why `event` is or is not sent here, step by step.
    pub fn explain(&self, event: &Event) -> Explanation {
        let when_failed = self.when.check_each(&event.fields).err().map(|(i, skip)| {
            let (line, col) = self.when.places.get(i).copied().unwrap_or((1, 1));
            WhenFailed {
                reason: skip.to_string(),
                file: self.file.clone(),
                line,
                col,
            }
        });
        let consent = self.privacy.consent.as_ref().map(|c| {
            let given =
                crate::event::get_path(&event.fields, &c.require) == Some(&Value::Bool(true));
            (c.require.clone(), given)
        });
        let drops = self.privacy.consent_drops(&event.fields);
        let fields = event
            .field_paths()
            .into_iter()
            .map(|p| {
                let fate = self.fate(&p, &drops);
                (p, fate)
            })
            .collect();
        Explanation {
            when_failed,
            consent,
            fields,
            outcome: self.evaluate(event),
        }
    }

    fn fate(&self, path: &str, drops: &[String]) -> FieldFate {
        let under = |entry: &str| path == entry || path.starts_with(&format!("{entry}."));
        let p = &self.privacy;
        if p.allow.coverage(path) != Coverage::Allowed {
            FieldFate::NotAllowed
        } else if drops.iter().any(|d| under(d)) {
            FieldFate::DroppedForConsent
        } else if p.hash.iter().any(|(h, _)| under(h)) {
            FieldFate::Hashed
        } else if p.truncate_ip.iter().any(|t| under(t)) {
            FieldFate::Truncated
        } else {
            FieldFate::Allowed
        }
    }
}

impl Destination {
    /// The placeholders of this destination's URL, headers and body (the user's own,
    /// not a preset's) that have no value for `event` after `[privacy]` (rendered
    /// empty in a URL or header, left out of a body), as (where, placeholder). Empty
    /// when the event is not sent.
    pub fn empty_placeholders(&self, event: &Event) -> Vec<(String, String)> {
        if self.when.check(&event.fields).is_err() {
            return Vec::new();
        }
        let drops = self.privacy.consent_drops(&event.fields);
        let fields = self.privacy.view(&event.fields, &self.renames, &drops);
        let ctx = Ctx {
            fields: &fields,
            timestamp: event.timestamp,
        };
        let mut out = Vec::new();
        empty_in(&self.url, "url", &ctx, &mut out);
        for (name, t) in &self.headers {
            empty_in(t, &format!("header {name}"), &ctx, &mut out);
        }
        match &self.body {
            // A preset's body names every field its partner could take; leaving out
            // what an event lacks is its design, not a slip.
            _ if self.partner.is_some() => {}
            Body::Json(node) => empty_in_node(node, "body", &ctx, &mut out),
            Body::Form(pairs) => {
                for (k, v) in pairs {
                    for t in v.templates() {
                        empty_in(t, &format!("body {k}"), &ctx, &mut out);
                    }
                }
            }
            Body::None | Body::FilteredJson | Body::FilteredForm => {}
        }
        out
    }
}

fn empty_in(t: &Template, place: &str, ctx: &Ctx<'_>, out: &mut Vec<(String, String)>) {
    for p in t.placeholders() {
        let PlaceholderSource::Field(path) = &p.source else {
            continue;
        };
        let empty = match ctx.resolve(p).as_deref() {
            None => true,
            Some(Value::String(s)) => s.is_empty() || (p.json && s == "{}"),
            Some(_) => false,
        };
        if empty {
            out.push((place.to_string(), format!("{{{path}}}")));
        }
    }
}

fn empty_in_node(node: &BodyNode, place: &str, ctx: &Ctx<'_>, out: &mut Vec<(String, String)>) {
    match node {
        BodyNode::Str(t) => empty_in(t, place, ctx, out),
        BodyNode::Const(_) => {}
        BodyNode::Object(entries) => {
            for (k, n) in entries {
                empty_in_node(n, &format!("{place}.{k}"), ctx, out);
            }
        }
        BodyNode::Array(items) => {
            for (i, n) in items.iter().enumerate() {
                empty_in_node(n, &format!("{place}[{i}]"), ctx, out);
            }
        }
    }
}
