//! Warnings that read a rule against its preset: what loads but would not do what
//! the partner needs (issue 19). A hashed field the partner wants in clear, an
//! allowed field the request has no place for, a field the partner requires that
//! the rule cannot fill (Meta's `client_user_agent` for website events and
//! `app_data` for app events, Adjust's event tokens). `check` prints them and `/ui`
//! shows them; none makes the file invalid.

use std::collections::BTreeSet;
use std::ops::Range;

use crate::toml_reader::Doc;

use super::super::apply::{Condition, Coverage, Privacy, Rename, When};
use super::super::presets::Preset;
use super::super::template::{BodyNode, PlaceholderSource, Template};
use super::super::Body;

/// What the lint reads of a compiled rule.
pub struct Rule<'x> {
    pub doc: &'x Doc<'x>,
    pub preset: Option<&'static Preset>,
    pub privacy: &'x Privacy,
    pub allow_entries: &'x [(String, Option<Range<usize>>)],
    pub url: Option<&'x Template>,
    pub headers: &'x [(String, Template)],
    pub body: &'x Body,
    pub params: &'x super::super::template::Params,
    pub renames: &'x [Rename],
    pub when: &'x When,
    pub preset_span: Option<Range<usize>>,
}

impl Rule<'_> {
    /// Only on a rule that loads and has a preset: a file with errors gets its errors
    /// first (what it sends is not known yet).
    pub fn run(&self) {
        if self.doc.error_count() > 0 {
            return;
        }
        let Some(p) = self.preset else { return };
        self.unused_allows(p);
        self.hashed_but_wanted_in_clear(p);
        match p.name {
            "meta_capi" => self.meta_required(),
            "adjust_s2s" => self.adjust_tokens(),
            _ => {}
        }
    }

    /// Every field a placeholder of the request names.
    fn placeholders(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut add = |t: &Template| {
            for p in t.placeholders() {
                if let PlaceholderSource::Field(f) = &p.source {
                    out.insert(f.clone());
                }
            }
        };
        if let Some(u) = self.url {
            add(u);
        }
        for (_, t) in self.headers {
            add(t);
        }
        match self.body {
            Body::Json(node) => walk(node, &mut add),
            Body::Form(pairs) => pairs
                .iter()
                .flat_map(|(_, v)| v.templates())
                .for_each(&mut add),
            _ => {}
        }
        out
    }

    /// An allowed field no placeholder of the preset's request (with the rule's url,
    /// headers and `[body]`) names is never sent.
    fn unused_allows(&self, p: &Preset) {
        let used = self.placeholders();
        let covered = |a: &str| {
            used.iter().any(|p| {
                p == a || p.starts_with(&format!("{a}.")) || a.starts_with(&format!("{p}."))
            })
        };
        for (a, span) in self.allow_entries {
            if !covered(a) {
                self.doc.warn(
                    span.clone(),
                    format!("\"{a}\" is allowed, but preset {}'s request has no place for it, so it is never sent; remove it from `allow`, or give it a place in [body]", p.name),
                );
            }
        }
    }

    /// A field the preset sends that its partner wants in clear (not in the
    /// preset's `must_hash`) but the rule hashes: the partner cannot use the digest.
    fn hashed_but_wanted_in_clear(&self, p: &Preset) {
        let hash_spans = self.hash_spans();
        for (field, _) in &self.privacy.hash {
            if p.must_hash.contains(&field.as_str()) || p.may_hash.contains(&field.as_str()) {
                continue;
            }
            let Some(slot) = slot_of(p, field) else {
                continue;
            };
            let span = hash_spans
                .iter()
                .find(|(h, _)| h == field)
                .and_then(|(_, s)| s.clone());
            self.doc.warn(
                span,
                format!("\"{field}\" is hashed, but {} wants `{slot}` in clear and cannot match a digest; remove \"{field}\" from `hash`", p.partner),
            );
        }
    }

    /// The places of the `hash` entries, read again from the file.
    fn hash_spans(&self) -> Vec<(String, Option<Range<usize>>)> {
        self.doc
            .root()
            .and_then(|r| r.get("privacy"))
            .filter(|f| f.item.is_table_like())
            .and_then(|f| f.as_section(""))
            .and_then(|s| s.get("hash"))
            .and_then(|f| f.as_str_list(""))
            .unwrap_or_default()
    }

    /// Meta (M8): website events need `client_user_agent`; app events need
    /// `app_data`, which the preset cannot fill (a `[body]` can).
    fn meta_required(&self) {
        let source = self.params.meta_action_source();
        let allowed = |f: &str| self.privacy.allow.coverage(f) == Coverage::Allowed;
        if source == "website" && !allowed("user.user_agent") {
            self.doc.warn(self.preset_span.clone(), "Meta requires client_user_agent for website events, and this rule cannot fill it; add \"user.user_agent\" to `allow` (sent in clear)");
        }
        let has_app_data = match self.body {
            Body::Json(node) => has_key(node, "app_data"),
            _ => false,
        };
        if source == "app" && !has_app_data {
            self.doc.warn(self.preset_span.clone(), "Meta requires app_data for app events (action_source \"app\"), which preset meta_capi does not fill; add it under [[body.data]] (app_data = { advertiser_tracking_enabled = ..., extinfo = [...] })");
        }
    }

    /// Adjust takes an event token, not a name: every `[when]` event name needs a
    /// `[rename.event_name]` mapping to its token.
    fn adjust_tokens(&self) {
        let map = self
            .renames
            .iter()
            .find(|r| r.field == "event_name")
            .map(|r| &r.map);
        let names = self.when.conditions.iter().find_map(|c| match c {
            Condition::OneOf { field, values } if field == "event_name" => Some(values),
            _ => None,
        });
        let unmapped: Vec<&String> = match (names, map) {
            (Some(names), Some(map)) => names.iter().filter(|n| !map.contains_key(*n)).collect(),
            (Some(names), None) => names.iter().collect(),
            (None, Some(_)) => Vec::new(),
            (None, None) => {
                self.doc.warn(self.preset_span.clone(), "Adjust takes an event token (like \"abc123\") in event_token, not an event name; map names to tokens with [rename.event_name]");
                return;
            }
        };
        if !unmapped.is_empty() {
            let list: Vec<String> = unmapped.iter().map(|n| format!("\"{n}\"")).collect();
            self.doc.warn(self.preset_span.clone(), format!("Adjust takes event tokens in event_token, and {} {} no token in [rename.event_name], so the name itself would be sent; add {} = \"<token>\" there", list.join(", "), if list.len() == 1 { "has" } else { "have" }, unmapped[0]));
        }
    }
}

fn walk(node: &BodyNode, add: &mut impl FnMut(&Template)) {
    match node {
        BodyNode::Str(t) => add(t),
        BodyNode::Const(_) => {}
        BodyNode::Object(entries) => entries.iter().for_each(|(_, n)| walk(n, add)),
        BodyNode::Array(items) => items.iter().for_each(|n| walk(n, add)),
    }
}

fn has_key(node: &BodyNode, key: &str) -> bool {
    match node {
        BodyNode::Object(entries) => entries.iter().any(|(k, n)| k == key || has_key(n, key)),
        BodyNode::Array(items) => items.iter().any(|n| has_key(n, key)),
        _ => false,
    }
}

/// The partner's name for the place a field goes in a preset's body: the key
/// before its `"{field}"` (`client_ip_address` for `user.ip` in Meta's).
pub fn slot_of(p: &Preset, field: &str) -> Option<String> {
    let needle = format!("\"{{{field}}}\"");
    let at = p.body.find(&needle)?;
    let before = p.body[..at].trim_end().trim_end_matches('[').trim_end();
    let before = before.strip_suffix('=')?.trim_end();
    let key: String = before
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!key.is_empty()).then(|| key.chars().rev().collect())
}
