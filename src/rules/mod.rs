//! Rule files: one destination per `rules/*.toml`, saying which events a partner
//! gets and what it may see of them.
//!
//! Owns: loading and validating rule files (`load`, every error with FILE:LINE:COL),
//! compiling them once into cheap-to-apply form, applying them to an event in the
//! documented order `when` -> `rename` -> `privacy` (consent, allow, hash,
//! truncate_ip) -> render (`apply`, `normalize`, `template`, `presets`), `preview`
//! for humans, and hot reload (`reload`). Never: sends, queues or persists anything,
//! and never logs event values: they are personal data.
//!
//! Privacy is default deny by construction: rendering only ever sees the filtered
//! copy of the event that `allow` produced, never the event itself.
//! The rule-file format is described for users in README-RULES.md.

mod apply;
mod explain;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod kept;
mod load;
mod normalize;
mod presets;
mod preview;
mod reload;
mod template;
mod versions;
mod view;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::diag::{Diagnostic, Env};
use crate::event::Event;
use crate::outbound::{DeliverySettings, Method, OutboundRequest};

pub use apply::Skip;
pub(crate) use explain::Explanation;
#[cfg(test)]
use explain::FieldFate;
pub use kept::KEPT_DIR;
pub(crate) use load::compile_draft;
pub use normalize::{hash_str, sha256_hex, truncate_ip, FieldKind, HashStyle};
pub use presets::NAMES as PRESET_NAMES;
pub use preview::{masked, preview, preview_named};
pub use reload::RulesHandle;
pub(crate) use reload::{log_broken, spawn_watcher, RulesWatcher};
pub use template::DERIVED as DERIVED_PLACEHOLDERS;

use apply::{Privacy, Rename, When};
use template::{scalar_text, BodyNode, Ctx, Template};
use view::{Fields, Node};

/// Body encoding of a POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Form,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::Form => "form-encoded",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Form => "application/x-www-form-urlencoded",
        }
    }
}

/// A dotted field path: `name(.name)*`, names of letters, digits, `_` and `-`.
pub fn is_valid_path(p: &str) -> bool {
    !p.is_empty()
        && p.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// What a POST carries.
#[derive(Debug, Clone, PartialEq)]
enum Body {
    /// GET: nothing.
    None,
    /// No `[body]`, no preset: the filtered event as JSON.
    FilteredJson,
    /// No `[body]`, no preset, `format = "form"`: filtered scalars, dotted names.
    FilteredForm,
    Json(BodyNode),
    Form(Vec<(String, FormValue)>),
}

/// One value of a form body.
#[derive(Debug, Clone, PartialEq)]
enum FormValue {
    /// `key = "..."`: one value, as text.
    Text(Template),
    /// A table where the preset takes one (Adjust's `callback_params`): a JSON object
    /// of strings, as text; left out when none of its values is there.
    Object(Vec<(String, Template)>),
}

impl FormValue {
    fn render(&self, ctx: &Ctx<'_>) -> Option<String> {
        match self {
            FormValue::Text(t) => t.render_json(ctx).map(|v| scalar_text(&v).into_owned()),
            FormValue::Object(entries) => {
                let object: Map<String, Value> = entries
                    .iter()
                    .filter_map(|(k, t)| {
                        let v = t.render_json(ctx)?;
                        Some((k.clone(), Value::String(scalar_text(&v).into_owned())))
                    })
                    .collect();
                (!object.is_empty()).then(|| Value::Object(object).to_string())
            }
        }
    }

    /// The templates it is made of.
    fn templates(&self) -> Vec<&Template> {
        match self {
            FormValue::Text(t) => vec![t],
            FormValue::Object(entries) => entries.iter().map(|(_, t)| t).collect(),
        }
    }
}

/// One partner, compiled from one rule file.
pub struct Destination {
    /// The file name without `.toml`.
    pub name: String,
    pub description: String,
    pub delivery: DeliverySettings,
    pub method: Method,
    pub format: Format,
    pub preset: Option<String>,
    /// The rule file this destination was read from.
    pub file: PathBuf,
    when: When,
    renames: Vec<Rename>,
    privacy: Privacy,
    url: Template,
    headers: Vec<(String, Template)>,
    body: Body,
    /// The preset's partner rules (identifiers, body finishing), when a preset is used.
    partner: Option<&'static presets::Preset>,
    /// Meta website events: `event_source_url` (from `page.url`) is required.
    needs_source_url: bool,
    /// The partner API version the rule pins (a preset with a versioned API).
    api_version: Option<(&'static versions::Api, String)>,
}

/// Only what is safe to log: compiled headers and `sign_secret` hold secrets.
impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("name", &self.name)
            .field("method", &self.method)
            .field("preset", &self.preset)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// A rendered request plus what a human previewing it should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub request: OutboundRequest,
    /// Fields removed because the consent field was not `true` (paths only, no values).
    pub consent_dropped: Vec<String>,
}

impl Destination {
    /// The host of `url` (written out in the rule file: placeholders never reach it),
    /// as the sender reads it; IPv6 in brackets.
    pub fn url_host(&self) -> Option<String> {
        template::url_host(&self.url)
    }

    /// The request for this event, or why it is not sent here.
    pub fn render(&self, event: &Event) -> Result<OutboundRequest, Skip> {
        self.evaluate(event).map(|r| r.request)
    }

    /// Like `render`, with the consent details `preview` shows.
    pub fn evaluate(&self, event: &Event) -> Result<Rendered, Skip> {
        self.when.check(&event.fields)?;
        let drops = self.privacy.consent_drops(&event.fields);
        let fields = self.privacy.view(&event.fields, &self.renames, &drops);
        self.check_partner(&fields, &drops)?;
        let ctx = Ctx {
            fields: &fields,
            timestamp: event.timestamp,
        };
        let (url, _) = self.url.render_text(&ctx, true);
        let mut headers = Vec::with_capacity(self.headers.len() + 1);
        for (name, t) in &self.headers {
            let (value, _) = t.render_text(&ctx, false);
            if value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(Skip::InvalidHeader {
                    header: name.clone(),
                });
            }
            headers.push((name.clone(), value));
        }
        let body = match &self.body {
            Body::None => None,
            // Serialised from the filtered map itself (a `Value` would be a copy).
            Body::FilteredJson => Some(json_text(&fields)),
            Body::FilteredForm => {
                let mut pairs = Vec::new();
                flatten("", &fields, &mut pairs);
                Some(form(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
            }
            Body::Json(node) => {
                let mut value = node
                    .render(&ctx)
                    .unwrap_or_else(|| Value::Object(Map::new()));
                if let Some(finish) = self.partner.and_then(|p| p.finish) {
                    finish(&mut value);
                }
                Some(json_text(&value))
            }
            Body::Form(pairs) => {
                let rendered: Vec<(&str, String)> = pairs
                    .iter()
                    .filter_map(|(k, v)| v.render(&ctx).map(|text| (k.as_str(), text)))
                    .collect();
                Some(form(rendered.iter().map(|(k, v)| (*k, v.as_str()))))
            }
        };
        if body.is_some()
            && !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            headers.push((
                "Content-Type".to_string(),
                self.format.content_type().to_string(),
            ));
        }
        Ok(Rendered {
            request: OutboundRequest {
                method: self.method,
                url,
                headers,
                body,
                event_time_ms: Some(event.timestamp.timestamp_millis()),
            },
            consent_dropped: drops,
        })
    }
}

/// Compact JSON text of a rendered body, written into one buffer sized for a typical
/// postback (serde_json's own starts at 128 bytes and grows by doubling).
fn json_text(v: &impl serde::Serialize) -> String {
    let mut out = Vec::with_capacity(512);
    // Writing a map of strings and JSON values into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, v);
    String::from_utf8(out).unwrap_or_default()
}

impl Destination {
    /// The partner's own requirements, on the filtered event: something to match
    /// the conversion on, and the fields it cannot do without.
    fn check_partner(&self, fields: &Fields<'_>, drops: &[String]) -> Result<(), Skip> {
        let Some(p) = self.partner else {
            return Ok(());
        };
        let present = |path: &str| match fields.get(path).as_deref() {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => !s.trim().is_empty(),
            Some(_) => true,
        };
        if !p.identifiers.iter().any(|f| present(f)) {
            return Err(Skip::NoIdentifier {
                partner: p.partner.to_string(),
                needs: p
                    .identifiers
                    .iter()
                    .filter(|f| self.privacy.allow.coverage(f) == apply::Coverage::Allowed)
                    .map(|f| (*f).to_string())
                    .collect(),
                consent: self
                    .privacy
                    .consent
                    .as_ref()
                    .filter(|_| !drops.is_empty())
                    .map(|c| (c.require.clone(), drops.to_vec())),
            });
        }
        if self.needs_source_url && !present("page.url") {
            return Err(Skip::Required {
                partner: p.partner.to_string(),
                field: "page.url".into(),
                why: "Meta requires event_source_url for action_source \"website\"".into(),
            });
        }
        Ok(())
    }
}

fn flatten(prefix: &str, fields: &Fields<'_>, out: &mut Vec<(String, String)>) {
    for (k, node) in fields.iter() {
        let key = flat_key(prefix, k);
        match node {
            Node::Object(inner) => flatten(&key, inner, out),
            Node::Event(v) => flatten_value(key, v, out),
            Node::Owned(v) => flatten_value(key, v, out),
        }
    }
}

fn flat_key(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

fn flatten_value(key: String, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Null => {}
        Value::Object(inner) => {
            for (k, v) in inner {
                flatten_value(flat_key(&key, k), v, out);
            }
        }
        other => out.push((key, scalar_text(other).into_owned())),
    }
}

fn form<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&template::form_encode(k));
        out.push('=');
        out.push_str(&template::form_encode(v));
    }
    out
}

/// Where one event goes for one destination.
#[derive(Debug, Clone)]
pub struct Routed {
    pub destination: Arc<Destination>,
    pub outcome: Result<OutboundRequest, Skip>,
}

/// What loading rules knows beyond the files: the config's `[rules] custom_fields`,
/// event fields outside the schema that rule files may name without a warning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    pub custom_fields: Vec<String>,
    /// `[delivery] allow_private_networks`: also lets an OAuth `token_url` be plain
    /// `http://` (a local test server); otherwise it must be `https://`.
    pub allow_private_networks: bool,
    /// The day pinned partner API versions are judged on (sunset passed: error;
    /// within 60 days: warning); `None`: today, from the clock.
    pub today: Option<chrono::NaiveDate>,
    /// Where each rule file's last good text is kept (`serve`: `data_dir/rules-last-good`),
    /// so a file broken at a start keeps that version in force, as after a reload.
    /// `None` (`check`, `preview`): nothing is kept or read.
    pub keep_last_good: Option<std::path::PathBuf>,
}

impl LoadOptions {
    /// The day versions are judged on.
    pub fn today(&self) -> chrono::NaiveDate {
        self.today.unwrap_or_else(versions::today)
    }
}

/// A rule file with errors. If an earlier version of it loaded (in this process, or
/// in an earlier one that kept it in `data_dir`), that last good version stays in
/// force (`last_good`); otherwise its destination gets no new deliveries, and what is
/// already queued for it waits (it is not dead-lettered) until the file is fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The destination's name (the file name without `.toml`).
    pub name: String,
    pub file: PathBuf,
    /// Every error of the file, located.
    pub errors: Vec<Diagnostic>,
    /// Whether the file's last good version (loaded earlier by this process, or kept
    /// in `data_dir` by an earlier one) is in force: listed by `destinations()` or
    /// `disabled()` under the same name.
    pub last_good: bool,
}

impl Broken {
    /// What the relay does about this file, for logs, `/admin/destinations` and `/ui`.
    pub fn consequence(&self) -> &'static str {
        if self.last_good {
            "its last good version stays in force until the file is fixed"
        } else {
            "nothing is sent to this destination (no new deliveries; its queue waits) until the file is fixed"
        }
    }
}

/// Every rule file of a directory, compiled. Immutable: share it as `Arc<RuleSet>`.
#[derive(Debug, Default)]
pub struct RuleSet {
    destinations: Vec<Arc<Destination>>,
    disabled: Vec<Arc<Destination>>,
    broken: Vec<Broken>,
    warnings: Vec<Diagnostic>,
}

impl RuleSet {
    /// Loads every `*.toml` in dir (sorted by name). All errors of all files in one
    /// pass; any error fails the whole set (`check`, `serve --strict`).
    pub fn load_dir(dir: &Path, env: &dyn Env) -> Result<RuleSet, Vec<Diagnostic>> {
        RuleSet::load_dir_with(dir, env, &LoadOptions::default())
    }

    /// `load_dir` with the config's options (custom fields).
    pub fn load_dir_with(
        dir: &Path,
        env: &dyn Env,
        options: &LoadOptions,
    ) -> Result<RuleSet, Vec<Diagnostic>> {
        let set = load::load_dir(dir, env, options)?;
        if set.broken.is_empty() {
            Ok(set)
        } else {
            Err(set.errors())
        }
    }

    /// Loads every valid file of `dir`; files with errors become `broken()` entries
    /// instead of failing the set. `Err` only when the directory cannot be read.
    pub fn load_dir_lenient(
        dir: &Path,
        env: &dyn Env,
        options: &LoadOptions,
    ) -> Result<RuleSet, Vec<Diagnostic>> {
        load::load_dir(dir, env, options)
    }

    /// Rule files with errors, in name order.
    pub fn broken(&self) -> &[Broken] {
        &self.broken
    }

    /// The entry of `name` if its rule file has errors.
    pub fn broken_file(&self, name: &str) -> Option<&Broken> {
        self.broken.iter().find(|b| b.name == name)
    }

    /// Adds a compiled destination, enabled or disabled (files are loaded in name
    /// order, so the lists stay sorted).
    pub(crate) fn push(&mut self, d: Destination, enabled: bool) {
        let list = if enabled {
            &mut self.destinations
        } else {
            &mut self.disabled
        };
        list.push(Arc::new(d));
    }

    /// Each file with errors here that loaded in `before` (itself, or its last good
    /// version kept there) keeps that very version in force, in place of any copy
    /// read back from `data_dir`: each rule file lives on its own, and a mistake in
    /// one never holds back the others' changes.
    pub(crate) fn keep_last_good(&mut self, before: &RuleSet) {
        for b in &mut self.broken {
            let enabled = before.get(&b.name);
            let Some(d) = enabled.or_else(|| before.find(&b.name)) else {
                continue;
            };
            self.destinations.retain(|x| x.name != b.name);
            self.disabled.retain(|x| x.name != b.name);
            let list = if enabled.is_some() {
                &mut self.destinations
            } else {
                &mut self.disabled
            };
            let at = list.partition_point(|x| x.name < b.name);
            list.insert(at, Arc::clone(d));
            b.last_good = true;
        }
    }

    /// Every error of every broken file.
    pub fn errors(&self) -> Vec<Diagnostic> {
        self.broken
            .iter()
            .flat_map(|b| b.errors.iter().cloned())
            .collect()
    }

    /// What loads but is probably not meant (unknown fields, case slips), located.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// Whether `name` has a rule file here: enabled, disabled or broken.
    pub fn has_file(&self, name: &str) -> bool {
        self.get(name).is_some()
            || self.disabled.iter().any(|d| d.name == name)
            || self.broken.iter().any(|b| b.name == name)
    }

    /// An enabled or disabled destination by name.
    pub fn find(&self, name: &str) -> Option<&Arc<Destination>> {
        self.get(name)
            .or_else(|| self.disabled.iter().find(|d| d.name == name))
    }

    /// No destinations (before the first load, or in tests).
    pub fn empty() -> RuleSet {
        RuleSet::default()
    }

    /// The enabled destinations, in name order.
    pub fn destinations(&self) -> &[Arc<Destination>] {
        &self.destinations
    }

    /// Destinations whose file says `enabled = false`: validated and compiled (so
    /// `preview` can show them), never routed to.
    pub fn disabled(&self) -> &[Arc<Destination>] {
        &self.disabled
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Destination>> {
        self.destinations.iter().find(|d| d.name == name)
    }

    /// For each enabled destination pinning a partner API version that is past or
    /// near its sunset on `today`: (destination, what to do). `serve` logs these daily.
    pub fn version_warnings(&self, today: chrono::NaiveDate) -> Vec<(String, String)> {
        self.destinations
            .iter()
            .filter_map(|d| {
                let (api, version) = d.api_version.as_ref()?;
                match versions::judge(api, version, today) {
                    versions::Verdict::Fine => None,
                    versions::Verdict::Warn(m) | versions::Verdict::Refuse(m) => {
                        Some((d.name.clone(), format!("the rule pins {m}")))
                    }
                }
            })
            .collect()
    }

    /// For every enabled destination, in name order: the rendered request or why not.
    pub fn route(&self, event: &Event) -> Vec<Routed> {
        self.destinations
            .iter()
            .map(|d| Routed {
                destination: Arc::clone(d),
                outcome: d.render(event),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
