//! Which event fields a rule file may name without a warning: those of the event
//! schema (`docs/event.schema.json`) and the config's `[rules] custom_fields`.
//!
//! Owns: the "not a field of the event" warnings with their "did you mean", the
//! "differs only by case" and "not a usual value" warnings for `[when]` values, and
//! the one error here: a `[when]` value of a type the schema rules out for its field
//! (`"yes"` for a boolean), which no event can match. Never: makes a file invalid for
//! a name; an unknown field may be one the app really sends.

use std::ops::Range;

use crate::event::schema::{closest_path, schema, Schema};
use crate::toml_reader::Doc;

/// The fields a rule file may name.
pub struct Known<'a> {
    schema: &'static Schema,
    custom: &'a [String],
}

impl<'a> Known<'a> {
    pub fn new(custom: &'a [String]) -> Known<'a> {
        Known {
            schema: schema(),
            custom,
        }
    }

    /// Whether `path` is a field of the schema, or one of the declared custom fields
    /// (or lies under or above one).
    pub fn knows(&self, path: &str) -> bool {
        self.schema.knows(path)
            || self.custom.iter().any(|c| {
                c == path
                    || path.starts_with(&format!("{c}."))
                    || c.starts_with(&format!("{path}."))
            })
    }

    /// The known field `path` most likely meant.
    pub fn closest(&self, path: &str) -> Option<String> {
        let mut known = self.schema.paths();
        known.extend(self.custom.iter().cloned());
        closest_path(path, &known)
    }

    /// Warns at `span` when `path` is not a known field. `place` says where it is
    /// written (`[when]`, `allow`), `consequence` what follows (may be empty).
    pub fn check(
        &self,
        doc: &Doc<'_>,
        span: Option<Range<usize>>,
        path: &str,
        place: &str,
        consequence: &str,
    ) {
        if self.knows(path) {
            return;
        }
        let guess = self
            .closest(path)
            .map(|c| format!("did you mean `{c}`? "))
            .unwrap_or_default();
        doc.warn(
            span,
            format!(
                "`{path}` in {place} is not a field of the event (docs/event.schema.json){consequence}; {guess}if your events do carry it, add \"{path}\" to [rules] custom_fields in the config"
            ),
        );
    }

    /// An error when `value` is of a type `field` never has in an event (the schema
    /// lists only booleans, or only numbers): such a `[when]` matches no event.
    pub fn check_type(&self, doc: &Doc<'_>, span: Option<Range<usize>>, field: &str, value: &str) {
        let Some(node) = self.schema.get(field) else {
            return;
        };
        let types: Vec<&str> = node
            .types
            .iter()
            .map(String::as_str)
            .filter(|t| *t != "null")
            .collect();
        let (kind, fits, write) = match types.as_slice() {
            ["boolean"] => (
                "a boolean",
                value == "true" || value == "false",
                "true or false",
            ),
            ["number"] | ["integer"] | ["integer", "number"] | ["number", "integer"] => (
                "a number",
                value.parse::<f64>().is_ok(),
                "a number, e.g. 10 or 9.99",
            ),
            _ => return,
        };
        if !fits {
            doc.error(
                span,
                format!(
                    "[when] `{field}` is {kind} in events (docs/event.schema.json), so \"{value}\" matches no event; write {write}"
                ),
            );
        }
    }

    /// Warns when a `[when]` value is not a usual value of `field` but close to one
    /// (`"instal"` for `install`): probably a typo, and `[when]` compares exactly.
    pub fn check_usual(&self, doc: &Doc<'_>, span: Option<Range<usize>>, field: &str, value: &str) {
        let Some(node) = self.schema.get(field) else {
            return;
        };
        if node.examples.is_empty() || node.examples.iter().any(|e| e.eq_ignore_ascii_case(value)) {
            return;
        }
        let near = node
            .examples
            .iter()
            .map(|e| (strsim::levenshtein(value, e), e))
            .filter(|(d, e)| *d > 0 && *d <= 2.min(e.len() / 3))
            .min_by_key(|(d, _)| *d);
        if let Some((_, usual)) = near {
            doc.warn(
                span,
                format!(
                    "\"{value}\" is not a usual {field}: did you mean \"{usual}\"? [when] compares exactly, so events with {field} \"{usual}\" do not match; if your app sends \"{value}\", ignore this"
                ),
            );
        }
    }

    /// Warns when a `[when]` value differs from a usual value of `field` only by case
    /// (`"Purchase"` for `purchase`): `[when]` compares exactly.
    pub fn check_case(&self, doc: &Doc<'_>, span: Option<Range<usize>>, field: &str, value: &str) {
        let Some(node) = self.schema.get(field) else {
            return;
        };
        let usual = node
            .examples
            .iter()
            .find(|e| e.as_str() != value && e.eq_ignore_ascii_case(value));
        if let Some(usual) = usual {
            doc.warn(
                span,
                format!(
                    "\"{value}\" differs from the usual {field} \"{usual}\" only by case, and [when] compares exactly: events with {field} \"{usual}\" do not match; write \"{usual}\" if that is what your app sends"
                ),
            );
        }
    }
}
