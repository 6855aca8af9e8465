//! Which event fields a rule file may name without a warning: those of the event
//! schema (`docs/event.schema.json`) and the config's `[rules] custom_fields`.
//!
//! Owns: the "not a field of the event" warnings with their "did you mean", and the
//! "differs only by case" warnings for `[when]` values. Never: makes a file invalid;
//! an unknown field may be one the app really sends.

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
