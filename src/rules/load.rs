//! Reading rule files: every mistake of every file, each with `FILE:LINE:COL`.
//!
//! Owns: the rule-file schema (which keys exist, their types, defaults and cross
//! checks: placeholders against `allow`, `hash`/`truncate_ip` inside `allow`, preset
//! hashing requirements; field names against the event schema, as warnings), and
//! compiling a file into a `Destination`, one step per section: the top level here,
//! `[destination]` in `destination`, templates and bodies in `body`, the partner's
//! side in `partner`, known fields in `known`. A file with errors becomes a
//! `Broken` entry; whether that fails the set is the caller's choice. Never: applies
//! rules to events (`apply`, `template`) and never reads the environment directly
//! (`diag::Source` substitutes `${NAME}` through the `Env` it is given).

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;

use toml_edit::{Item, Value as TomlValue};

use crate::diag::{Diagnostic, Env, Source};
use crate::outbound::{Credentials, DeliverySettings, SuccessRule};
use crate::toml_reader::{Doc, Section};

use super::apply::{Condition, Consent, Coverage, Privacy, Rename, When};
use super::kept::Kept;
use super::normalize::FieldKind;
use super::presets::Preset;
use super::template::Params;
use super::{is_valid_path, Broken, Destination, LoadOptions, RuleSet};

mod batch;
mod body;
mod destination;
mod known;
mod lint;
mod partner;
mod pinned;

#[cfg(test)]
pub use batch::check_body as check_batch_body;
#[cfg(test)]
pub use body::compile_preset;
#[cfg(test)]
use destination::parse_rate;

use body::{Checker, Shape};
use destination::URL_EXAMPLE;
use known::Known;

/// Loads every `*.toml` in `dir` (sorted by name; names starting with `.` are
/// ignored, as editors' lock and swap files are). A file with errors becomes a
/// `Broken` entry; `Err` only when the directory cannot be read.
pub fn load_dir(
    dir: &Path,
    env: &dyn Env,
    options: &LoadOptions,
) -> Result<RuleSet, Vec<Diagnostic>> {
    let mut set = RuleSet::default();
    let kept = options.keep_last_good.as_deref().map(Kept::new);
    let mut names = HashSet::new();
    for path in rule_files(dir)? {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        names.insert(name.clone());
        let outcome = match read_rule_file(&path) {
            Ok(text) => {
                let outcome = load_file(&path, text.clone(), env, options);
                if let (Some(kept), Ok(_)) = (&kept, &outcome.result) {
                    kept.save(&name, &text);
                }
                outcome
            }
            Err(e) => FileOutcome {
                result: Err(vec![Diagnostic {
                    file: path.clone(),
                    line: 1,
                    col: 1,
                    message: format!("cannot read this rule file: {e}"),
                }]),
                warnings: Vec::new(),
            },
        };
        set.warnings.extend(outcome.warnings);
        match outcome.result {
            Ok((d, enabled)) => set.push(d, enabled),
            Err(errors) => {
                // The file's last good version, kept from an earlier load (this run
                // or an earlier one), stays in force if it still loads as it is now
                // (the environment and the config may have changed since).
                let last_good = kept
                    .as_ref()
                    .and_then(|k| k.read(&name))
                    .and_then(|text| load_file(&path, text, env, options).result.ok());
                let last_good = match last_good {
                    Some((d, enabled)) => {
                        set.push(d, enabled);
                        true
                    }
                    None => false,
                };
                set.broken.push(Broken {
                    name,
                    file: path,
                    errors,
                    last_good,
                })
            }
        }
    }
    if let Some(kept) = &kept {
        kept.retain(&names);
    }
    Ok(set)
}

/// Most bytes a rule file may hold; the largest shipped example is 3 KiB.
pub const MAX_RULE_FILE: u64 = 1 << 20;

/// Reads a rule file, refusing one over `MAX_RULE_FILE` without reading it whole.
fn read_rule_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(MAX_RULE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_RULE_FILE {
        return Err(format!(
            "the file is too large: more than {MAX_RULE_FILE} bytes (1 MiB); a rule file is a few settings, is this the right file?"
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "the file is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// The rule files of `dir`, sorted.
fn rule_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, Vec<Diagnostic>> {
    let at_dir = |message: String| {
        vec![Diagnostic {
            file: dir.to_path_buf(),
            line: 1,
            col: 1,
            message,
        }]
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| at_dir(format!("cannot read the rules directory: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let e = entry.map_err(|e| at_dir(format!("cannot list the rules directory: {e}")))?;
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".toml") || path.is_dir() {
            continue;
        }
        files.push(path);
    }
    files.sort();
    Ok(files)
}

/// One rule file read: the destination (and whether it is enabled) or every error,
/// plus the warnings either way.
pub struct FileOutcome {
    pub result: Result<(Destination, bool), Vec<Diagnostic>>,
    pub warnings: Vec<Diagnostic>,
}

/// Compiles one rule file's text as if read from `path`.
pub fn load_file(path: &Path, text: String, env: &dyn Env, options: &LoadOptions) -> FileOutcome {
    let (source, env_errors) = Source::new(path, text, env);
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let doc = Doc::parse(&source);
    for e in env_errors {
        doc.add_cause(e);
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        doc.cause(
            None,
            format!(
                "the file name gives the destination name \"{name}\", which may only use letters, digits, `_` and `-`; rename the file, like example-aff.toml"
            ),
        );
    }
    let known = Known::new(&options.custom_fields);
    let compiled = compile(&doc, name, &known, options.today());
    if let Some((d, _)) = &compiled {
        check_token_url(&doc, d, options);
    }
    let (errors, warnings) = doc.into_report();
    let result = match compiled {
        Some(d) if errors.is_empty() => Ok(d),
        _ => Err(errors),
    };
    FileOutcome { result, warnings }
}

/// An OAuth `token_url` carries the refresh token and client secret: plain `http://`
/// only where private networks are allowed (a local test server).
fn check_token_url(doc: &Doc<'_>, d: &Destination, options: &LoadOptions) {
    let Some(oauth) = &d.delivery.oauth else {
        return;
    };
    if options.allow_private_networks || !oauth.token_url.starts_with("http://") {
        return;
    }
    let field = doc
        .root()
        .and_then(|r| r.get("destination"))
        .and_then(|f| f.as_section(""))
        .and_then(|dest| dest.get("oauth"))
        .and_then(|f| f.as_section(""))
        .and_then(|o| o.get("token_url"));
    let message = "`destination.oauth.token_url` must be https://: the relay sends the refresh token and client secret there (plain http:// only with [delivery] allow_private_networks = true, for a local test server)";
    match field {
        Some(f) => f.error(message),
        None => doc.error(None, message),
    }
}

/// Compiles one rule file's text (tests and fuzz targets); warnings are left out.
#[cfg(any(test, feature = "fuzzing"))]
pub fn load_text(
    path: &Path,
    text: String,
    env: &dyn Env,
) -> Result<(Destination, bool), Vec<Diagnostic>> {
    load_file(path, text, env, &LoadOptions::default()).result
}

/// A rule text that is not on disk (the preview page's draft), read as if it were
/// `path`: the destination or every error, and the warnings.
pub fn compile_draft(
    path: &Path,
    text: String,
    env: &dyn Env,
    options: &LoadOptions,
) -> (Result<Destination, Vec<Diagnostic>>, Vec<Diagnostic>) {
    let outcome = load_file(path, text, env, options);
    (outcome.result.map(|(d, _)| d), outcome.warnings)
}

fn compile(
    doc: &Doc<'_>,
    name: String,
    known: &Known<'_>,
    today: chrono::NaiveDate,
) -> Option<(Destination, bool)> {
    let root = doc.root()?;
    let description = root
        .str("description", "\"Partner X: purchases from its clicks\"")
        .unwrap_or_default();
    let enabled = root.bool("enabled").unwrap_or(true);
    let mut params = read_params(root.section("params", "{ app_token = \"abc123\" }"));
    let privacy_misspelt = misspelt(&root, "privacy", TOP_KEYS);
    let read = read_privacy(root.section("privacy", "{ allow = [\"click_id\"] }"), known);
    let mut privacy = read.privacy;
    let when = read_when_section(&root, known);
    let renames = read_renames(&root, known);
    let body_field = root.get("body");
    let success_field = root.get("success");
    let batch_field = root.get("batch");
    let dest = root
        .require(
            "destination",
            &format!("{{ url = {URL_EXAMPLE} }}, or a [destination] table"),
        )
        .and_then(|f| f.as_section(&format!("{{ url = {URL_EXAMPLE} }}")));
    root.finish();
    let dest = dest?;

    let preset_field = dest.get("preset");
    let preset = destination::read_preset(preset_field.as_ref());
    add_default_params(&mut params, preset);
    privacy.default_country = partner::default_country(&params);
    let checker = Checker {
        doc,
        allow: &privacy.allow,
        known,
        allow_misspelt: read.allow_misspelt || privacy_misspelt,
    };
    let req = destination::read_request(&dest, &checker, &params);
    let api_version = preset.and_then(|p| pinned::check_version(doc, p, &req, today));
    let concurrency_written = dest.get("concurrency").is_some();
    let (mut delivery, oauth_field) = destination::read_delivery(&dest);
    dest.finish();
    if preset.is_none() {
        read_success(success_field.as_ref(), &mut delivery);
    }
    let shape = Shape {
        doc,
        preset,
        preset_field: preset_field.as_ref(),
        body_field: body_field.as_ref(),
        success_field: success_field.as_ref(),
        oauth_written: oauth_field.is_some(),
        params: &params,
    };
    let (method, format) = shape.method_format(&req, &mut delivery, &privacy);
    let body = shape.compile_body(method, format, &checker, &privacy, &read.allow_entries);
    batch::read_batch(batch_field.as_ref(), preset, &body, &mut delivery);
    if delivery.batch.is_some() && !concurrency_written {
        delivery.concurrency = crate::outbound::DEFAULT_BATCH_CONCURRENCY;
    }
    if let Some(p) = preset {
        privacy.style = p.hash_style;
        privacy.ipv4_only = p.ipv4_only.iter().map(|s| (*s).to_string()).collect();
    }
    lint::Rule {
        doc,
        preset,
        privacy: &privacy,
        allow_entries: &read.allow_entries,
        url: req.url.as_ref(),
        headers: &req.headers,
        body: &body,
        params: &params,
        renames: &renames,
        when: &when,
        preset_span: preset_field.as_ref().and_then(|f| f.span.clone()),
    }
    .run();
    let needs_source_url = preset.is_some_and(|p| {
        p.name == "meta_capi"
            && params.values.get("action_source").map(String::as_str) == Some("website")
    });
    Some((
        Destination {
            name,
            description,
            delivery: DeliverySettings {
                credentials: Credentials::new(doc.source.substituted()),
                ..delivery
            },
            method,
            format,
            preset: preset.map(|p| p.name.to_string()),
            file: doc.source.path.clone(),
            when,
            renames,
            privacy,
            url: req.url?,
            headers: req.headers,
            body,
            partner: preset,
            needs_source_url,
            api_version,
        },
        enabled,
    ))
}

/// `[success]`, for a rule without a preset (presets know their partner's answers).
fn read_success(field: Option<&crate::toml_reader::Field<'_>>, delivery: &mut DeliverySettings) {
    if let Some(sec) = field.and_then(|f| f.as_section(partner::SUCCESS_EXAMPLE)) {
        delivery.success = SuccessRule::Declared(partner::read_success(&sec));
        sec.finish();
    }
}

/// The keys a rule file has at its top level.
const TOP_KEYS: &[&str] = &[
    "description",
    "enabled",
    "params",
    "privacy",
    "when",
    "rename",
    "body",
    "success",
    "batch",
    "destination",
];

/// Whether `key` is missing from `sec` because it is misspelt: another key, not one
/// of `valid`, is a near miss of it (`alow` for `allow`).
fn misspelt(sec: &Section<'_>, key: &str, valid: &[&str]) -> bool {
    let keys = sec.keys();
    !keys.iter().any(|k| k == key)
        && keys
            .iter()
            .any(|k| !valid.contains(&k.as_str()) && strsim::levenshtein(k, key) <= 2)
}

/// A preset's default params (like Google's `api_version`) are usable in the URL.
fn add_default_params(params: &mut Params, preset: Option<&'static Preset>) {
    for (k, v) in preset.map(|p| p.default_params).unwrap_or_default() {
        params
            .values
            .entry((*k).to_string())
            .or_insert_with(|| (*v).to_string());
    }
}

fn read_params(sec: Option<Section<'_>>) -> Params {
    let mut params = Params::default();
    if let Some(sec) = sec {
        for (k, f) in sec.entries() {
            match &f.item {
                Item::Value(TomlValue::String(s)) => {
                    if k == "default_country"
                        && super::normalize::parse_country(s.value()).is_none()
                    {
                        f.error(format!(
                            "`params.default_country` is \"{}\"; write a two-letter country code like \"US\" or \"GB\"",
                            s.value()
                        ));
                    }
                    params.values.insert(k, s.value().clone());
                }
                Item::Value(TomlValue::Integer(i)) => {
                    params.values.insert(k, i.value().to_string());
                }
                _ => f.error(format!(
                    "`params.{k}` must be a string in quotes, like: {k} = \"abc123\""
                )),
            }
        }
    }
    params
}

/// An `allow` entry and where it is written.
type AllowEntry = (String, Option<Range<usize>>);

/// `[privacy]` read: the compiled privacy, the `allow` entries with their places,
/// and whether `allow` is missing because it is misspelt.
struct PrivacyRead {
    privacy: Privacy,
    allow_entries: Vec<AllowEntry>,
    allow_misspelt: bool,
}

const PRIVACY_KEYS: &[&str] = &["allow", "hash", "truncate_ip", "consent"];

fn read_privacy(sec: Option<Section<'_>>, known: &Known<'_>) -> PrivacyRead {
    let mut read = PrivacyRead {
        privacy: Privacy::default(),
        allow_entries: Vec::new(),
        allow_misspelt: false,
    };
    let Some(sec) = sec else {
        return read;
    };
    read.allow_misspelt = misspelt(&sec, "allow", PRIVACY_KEYS);
    let paths = PathList { sec: &sec, known };
    for (p, span) in paths.list(
        "allow",
        "[\"click_id\", \"event_name\", \"properties.value\"]",
    ) {
        read.privacy.allow.insert(&p);
        read.allow_entries.push((p, span));
    }
    let allow = &read.privacy.allow;
    let quiet = read.allow_misspelt;
    let hashed = paths.list("hash", "[\"user.email\", \"user.phone\"]");
    read.privacy.hash = in_allow(&sec, allow, quiet, hashed, "hash", "to send it hashed")
        .into_iter()
        .map(|p| {
            let kind = FieldKind::of_path(&p);
            (p, kind)
        })
        .collect();
    let truncated = paths.list("truncate_ip", "[\"user.ip\"]");
    read.privacy.truncate_ip = in_allow(
        &sec,
        allow,
        quiet,
        truncated,
        "truncate_ip",
        "to send it truncated",
    );
    read.privacy.consent = read_consent(&sec, known);
    sec.finish();
    read
}

/// Lists of field paths in one section: each must be a path; unknown fields warn.
struct PathList<'s, 'a> {
    sec: &'s Section<'a>,
    known: &'s Known<'s>,
}

impl PathList<'_, '_> {
    fn list(&self, key: &str, example: &str) -> Vec<AllowEntry> {
        let Some(f) = self.sec.get(key) else {
            return Vec::new();
        };
        let Some(list) = f.as_str_list(example) else {
            return Vec::new();
        };
        let name = f.name().to_string();
        let doc = self.sec.doc;
        list.into_iter()
            .filter(|(p, span)| {
                let ok = is_valid_path(p);
                if ok {
                    self.known.check(doc, span.clone(), p, &format!("`{name}`"), "");
                } else {
                    doc.error(
                        span.clone(),
                        format!("\"{p}\" in `{name}` is not a field path; write dotted names like \"user.email\""),
                    );
                }
                ok
            })
            .collect()
    }
}

/// The entries of `hash` / `truncate_ip` that `allow` covers; the others are errors
/// whose first advice is the privacy-safe one: remove the entry.
fn in_allow(
    sec: &Section<'_>,
    allow: &super::apply::AllowTree,
    quiet: bool,
    entries: Vec<AllowEntry>,
    key: &str,
    to_send: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for (p, span) in entries {
        if allow.coverage(&p) == Coverage::Allowed {
            out.push(p);
        } else if quiet {
            sec.doc.consequence();
        } else {
            sec.doc.error(
                span,
                format!(
                    "\"{p}\" is in `{key}` but not in `allow`, so it is never sent; remove it from `{key}`, or, {to_send}, add \"{p}\" to `allow` as well"
                ),
            );
        }
    }
    out
}

fn read_consent(sec: &Section<'_>, known: &Known<'_>) -> Option<Consent> {
    let c = sec.section(
        "consent",
        "{ require = \"consent.ad_user_data\", drop = [\"user.email\"] }",
    )?;
    let require = c
        .require("require", "\"consent.ad_user_data\"")
        .and_then(|f| {
            let s = f.as_str("\"consent.ad_user_data\"")?;
            if !is_valid_path(s) {
                f.error(format!("\"{s}\" in `privacy.consent.require` is not a field path; write dotted names like \"user.email\""));
                return None;
            }
            known.check(
                c.doc,
                f.span.clone(),
                s,
                "`privacy.consent.require`",
                ", so consent is never given and the `drop` fields are always dropped",
            );
            Some(s.to_string())
        });
    let has_drop = c.get("drop").is_some();
    if !has_drop {
        c.require("drop", "[\"user.email\", \"user.phone\"]");
    }
    let paths = PathList { sec: &c, known };
    let drop: Vec<String> = paths
        .list("drop", "[\"user.email\", \"user.phone\"]")
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    c.finish();
    Some(Consent {
        require: require?,
        drop,
    })
    .filter(|_| has_drop)
}

/// `[when]`, with the place of each condition.
fn read_when_section(root: &Section<'_>, known: &Known<'_>) -> When {
    let mut when = When::default();
    if let Some(s) = root.section("when", "{ event_name = [\"purchase\"] }") {
        read_when(&s, "", &mut when, known);
    }
    when
}

fn push_condition(sec: &Section<'_>, when: &mut When, c: Condition, span: Option<Range<usize>>) {
    let d = sec.doc.source.diag(span, "");
    when.conditions.push(c);
    when.places.push((d.line, d.col));
}

fn read_when(sec: &Section<'_>, prefix: &str, when: &mut When, known: &Known<'_>) {
    const NEVER: &str = ", so no event matches this rule";
    for (key, f) in sec.entries() {
        if key == "has" && prefix.is_empty() {
            for (p, span) in f.as_str_list("[\"click_id\"]").unwrap_or_default() {
                if is_valid_path(&p) {
                    known.check(sec.doc, span.clone(), &p, "[when] has", NEVER);
                    push_condition(sec, when, Condition::Has(p), span);
                } else {
                    sec.doc.error(span, format!("\"{p}\" in `when.has` is not a field path; write dotted names like \"user.email\""));
                }
            }
            continue;
        }
        let field = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if !is_valid_path(&field) {
            sec.doc.error(
                f.key_span.clone(),
                format!("\"{field}\" in [when] is not a field path; write dotted names like \"attribution.network\""),
            );
            continue;
        }
        if f.item.is_table_like() {
            if let Some(s) = f.as_section("{}") {
                read_when(&s, &field, when, known);
            }
            continue;
        }
        let Some(values) = when_values(sec, &f, &field) else {
            continue;
        };
        known.check(sec.doc, f.key_span.clone(), &field, "[when]", NEVER);
        for (v, span) in &values {
            known.check_case(sec.doc, span.clone(), &field, v);
            known.check_usual(sec.doc, span.clone(), &field, v);
            known.check_type(sec.doc, span.clone(), &field, v);
        }
        let values = values.into_iter().map(|(v, _)| v).collect();
        push_condition(
            sec,
            when,
            Condition::OneOf { field, values },
            f.key_span.clone(),
        );
    }
}

/// The values of one `[when]` condition, each with its place.
fn when_values(
    sec: &Section<'_>,
    f: &crate::toml_reader::Field<'_>,
    field: &str,
) -> Option<Vec<AllowEntry>> {
    let example = format!("\"{field}\" = \"value\" or \"{field}\" = [\"a\", \"b\"]");
    match &f.item {
        Item::Value(TomlValue::Array(arr)) => {
            let mut out = Vec::new();
            for v in arr.iter() {
                match toml_scalar(v) {
                    Some(s) => out.push((s, v.span())),
                    None => sec.doc.error(
                        v.span(),
                        format!("[when] `{field}` must list plain values; for example: {example}"),
                    ),
                }
            }
            if arr.is_empty() {
                f.error(format!("[when] `{field}` lists nothing, so no event would match; for example: {example}"));
            }
            Some(out)
        }
        Item::Value(v) => {
            match toml_scalar(v) {
                Some(s) => Some(vec![(s, v.span())]),
                None => {
                    f.error(format!("[when] `{field}` must be a value or a list of values; for example: {example}"));
                    None
                }
            }
        }
        _ => None,
    }
}

/// `[rename.<field>]` tables.
fn read_renames(root: &Section<'_>, known: &Known<'_>) -> Vec<Rename> {
    let mut renames = Vec::new();
    if let Some(sec) = root.section("rename", "{ event_name = { purchase = \"Purchase\" } }") {
        for (key, field) in sec.entries() {
            if let Some(s) =
                field.as_section(&format!("{{ old = \"new\" }}, written as [rename.{key}]"))
            {
                read_rename(&s, &key, field.key_span.clone(), &mut renames, known);
            }
        }
    }
    renames
}

fn toml_scalar(v: &TomlValue) -> Option<String> {
    match v {
        TomlValue::String(s) => Some(s.value().clone()),
        TomlValue::Integer(i) => Some(i.value().to_string()),
        TomlValue::Float(f) => Some(f.value().to_string()),
        TomlValue::Boolean(b) => Some(b.value().to_string()),
        _ => None,
    }
}

fn read_rename(
    sec: &Section<'_>,
    field: &str,
    span: Option<Range<usize>>,
    out: &mut Vec<Rename>,
    known: &Known<'_>,
) {
    if !is_valid_path(field) {
        sec.doc.error(
            span,
            format!("\"{field}\" in [rename] is not a field path; write it like [rename.event_name] or [rename.\"attribution.network\"]"),
        );
        return;
    }
    let mut rename = Rename {
        field: field.to_string(),
        map: Default::default(),
    };
    for (old, f) in sec.entries() {
        if f.item.is_table_like() {
            if let Some(s) = f.as_section("{}") {
                read_rename(
                    &s,
                    &format!("{field}.{old}"),
                    f.key_span.clone(),
                    out,
                    known,
                );
            }
            continue;
        }
        match f.item.as_value().and_then(toml_scalar) {
            Some(new) if f.item.is_str() => {
                rename.map.insert(old, new);
            }
            _ => f.error(format!(
                "[rename.{field}] maps old values to new ones in quotes, like: {old} = \"NewName\""
            )),
        }
    }
    if !rename.map.is_empty() {
        known.check(sec.doc, span, field, "[rename]", ", so nothing is renamed");
        out.push(rename);
    }
}

#[cfg(test)]
mod tests;
