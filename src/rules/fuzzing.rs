//! Entry points for the fuzz targets (`fuzz/`, feature `fuzzing`; never in a
//! normal build).
//!
//! Owns: driving the rule loader and the template renderer from arbitrary text, the
//! way a marketer's file and a sender's event reach them. Never: hides a panic.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{Map, Value};

use super::load;
use super::template::{Ctx, Params, Template};
use crate::event::Event;

/// Compiles `text` as the rule file `fuzz.toml` (environment: `FUZZ_TOKEN` only) and,
/// when it loads, renders `event` with it.
pub fn rule_file(text: &str, event: &Event) {
    let mut env = HashMap::new();
    env.insert("FUZZ_TOKEN".to_string(), "token-value".to_string());
    if let Ok((destination, _enabled)) = load::load_text(Path::new("fuzz.toml"), text.into(), &env)
    {
        let _ = destination.evaluate(event);
    }
}

/// Parses `text` as a template (strict and with preset leniency) and renders it over
/// `fields`, as URL text, header text and JSON.
pub fn template(text: &str, fields: &Map<String, Value>) {
    let mut values = BTreeMap::new();
    values.insert("pixel_id".to_string(), "123".to_string());
    for lenient in [false, true] {
        let params = Params {
            values: values.clone(),
            lenient,
        };
        if let Ok(t) = Template::parse(text, &params) {
            let fields = super::view::Fields::all(fields);
            let ctx = Ctx {
                fields: &fields,
                timestamp: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
            };
            let _ = t.render_text(&ctx, true);
            let _ = t.render_text(&ctx, false);
            let _ = t.render_json(&ctx);
            let _ = super::template::check_url(text, &t);
        }
    }
}
