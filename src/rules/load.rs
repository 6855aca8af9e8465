//! Reading rule files: every mistake of every file, each with `FILE:LINE:COL`.
//!
//! Owns: the rule-file schema (which keys exist, their types, defaults and cross
//! checks: placeholders against `allow`, `hash`/`truncate_ip` inside `allow`, preset
//! hashing requirements), and compiling a file into a `Destination`. Never: applies
//! rules to events (`apply`, `template`) and never reads the environment directly
//! (`diag::Source` substitutes `${NAME}` through the `Env` it is given).

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml_edit::{Item, Value as TomlValue};

use crate::diag::{Diagnostic, Env, Source};
use crate::outbound::{
    Credentials, DeliverySettings, Method, RateLimit, RetrySettings, SuccessRule,
};
use crate::settings::{parse_duration, Doc, Section};

use super::apply::{AllowTree, Condition, Consent, Coverage, Privacy, Rename, When};
use super::normalize::FieldKind;
use super::presets::{self, Preset};
use super::template::{check_url, BodyNode, Params, Placeholder, PlaceholderSource, Template};
use super::{is_valid_path, Body, Destination, Format, RuleSet};

mod partner;

/// Loads every `*.toml` in `dir` (sorted by name; names starting with `.` are
/// ignored, as editors' lock and swap files are).
pub fn load_dir(dir: &Path, env: &dyn Env) -> Result<RuleSet, Vec<Diagnostic>> {
    let at_dir = |message: String| Diagnostic {
        file: dir.to_path_buf(),
        line: 1,
        col: 1,
        message,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            return Err(vec![at_dir(format!(
                "cannot read the rules directory: {e}"
            ))])
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        match entry {
            Ok(e) => {
                let path = e.path();
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') || !name.ends_with(".toml") || path.is_dir() {
                    continue;
                }
                files.push(path);
            }
            Err(e) => {
                return Err(vec![at_dir(format!(
                    "cannot list the rules directory: {e}"
                ))])
            }
        }
    }
    files.sort();
    let mut errors = Vec::new();
    let mut destinations = Vec::new();
    let mut disabled = Vec::new();
    for path in files {
        let text = match read_rule_file(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(Diagnostic {
                    file: path.clone(),
                    line: 1,
                    col: 1,
                    message: format!("cannot read this rule file: {e}"),
                });
                continue;
            }
        };
        match load_text(&path, text, env) {
            Ok((d, true)) => destinations.push(std::sync::Arc::new(d)),
            Ok((d, false)) => disabled.push(std::sync::Arc::new(d)),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(RuleSet {
            destinations,
            disabled,
        })
    } else {
        Err(errors)
    }
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

/// Compiles one rule file's text; the bool says whether it is enabled.
pub fn load_text(
    path: &Path,
    text: String,
    env: &dyn Env,
) -> Result<(Destination, bool), Vec<Diagnostic>> {
    let (source, mut errors) = Source::new(path, text, env);
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        errors.push(source.diag(
            None,
            format!(
                "the file name gives the destination name \"{name}\", which may only use letters, digits, `_` and `-`; rename the file, like example-aff.toml"
            ),
        ));
    }
    let doc = Doc::parse(&source);
    let result = compile(&doc, name);
    errors.extend(doc.into_errors());
    // Top to bottom reads best, whatever order the checks ran in.
    errors.sort_by_key(|d| (d.line, d.col));
    match result {
        Some(d) if errors.is_empty() => Ok(d),
        _ => Err(errors),
    }
}

const URL_EXAMPLE: &str = "\"https://partner.example/postback?click={click_id}\"";

fn compile(doc: &Doc<'_>, name: String) -> Option<(Destination, bool)> {
    let root = doc.root()?;
    let description = root
        .str("description", "\"Partner X: purchases from its clicks\"")
        .unwrap_or_default();
    let enabled = root.bool("enabled").unwrap_or(true);

    let params = read_params(root.section("params", "{ app_token = \"abc123\" }"));
    let (mut privacy, allow_entries) =
        read_privacy(root.section("privacy", "{ allow = [\"click_id\"] }"));
    let when = root
        .section("when", "{ event_name = [\"purchase\"] }")
        .map(|s| {
            let mut w = When::default();
            read_when(&s, "", &mut w);
            w
        })
        .unwrap_or_default();
    let mut renames = Vec::new();
    if let Some(sec) = root.section("rename", "{ event_name = { purchase = \"Purchase\" } }") {
        for (key, field) in sec.entries() {
            match field.as_section(&format!("{{ old = \"new\" }}, written as [rename.{key}]")) {
                Some(s) => read_rename(&s, &key, field.key_span.clone(), &mut renames),
                None => continue,
            }
        }
    }
    let body_field = root.get("body");
    let success_field = root.get("success");

    let dest = root
        .require(
            "destination",
            &format!("{{ url = {URL_EXAMPLE} }}, or a [destination] table"),
        )
        .and_then(|f| f.as_section(&format!("{{ url = {URL_EXAMPLE} }}")));
    root.finish();
    let dest = dest?;

    let preset_field = dest.get("preset");
    let preset: Option<&'static Preset> = preset_field.as_ref().and_then(|f| {
        let s = f.as_str("\"meta_capi\"")?;
        let found = presets::find(s);
        if found.is_none() {
            f.error(format!(
                "unknown preset \"{s}\"; the presets are: {}",
                presets::NAMES.join(", ")
            ));
        }
        found
    });
    // A preset's default params (like Google's `api_version`) are usable in the URL.
    let mut params = params;
    for (k, v) in preset.map(|p| p.default_params).unwrap_or_default() {
        params
            .values
            .entry((*k).to_string())
            .or_insert_with(|| (*v).to_string());
    }
    privacy.default_country = partner::default_country(&params);

    let checker = Checker {
        doc,
        allow: &privacy.allow,
    };
    let url_field = dest.require("url", URL_EXAMPLE);
    let url = url_field.as_ref().and_then(|f| {
        let text = f.as_str(URL_EXAMPLE)?;
        let t = checker.template(text, f.span.clone(), &params)?;
        if let Err(e) = check_url(text, &t) {
            doc.error(span_in(doc, f.span.clone(), text, e.at), e.message);
            return None;
        }
        Some(t)
    });

    let method_field = dest.get("method");
    let method = method_field.as_ref().and_then(|f| {
        let s = f.as_str("\"POST\"")?;
        match s.to_ascii_uppercase().as_str() {
            "GET" => Some(Method::Get),
            "POST" => Some(Method::Post),
            _ => {
                f.error(format!(
                    "`destination.method` is \"{s}\"; write \"GET\" or \"POST\""
                ));
                None
            }
        }
    });
    let format_field = dest.get("format");
    let format = format_field.as_ref().and_then(|f| {
        let s = f.as_str("\"json\"")?;
        match s.to_ascii_lowercase().as_str() {
            "json" => Some(Format::Json),
            "form" => Some(Format::Form),
            _ => {
                f.error(format!(
                    "`destination.format` is \"{s}\"; write \"json\" (a JSON body) or \"form\" (form-encoded)"
                ));
                None
            }
        }
    });
    let mut headers = Vec::new();
    if let Some(sec) = dest.section("headers", "{ Authorization = \"Bearer ${PARTNER_TOKEN}\" }") {
        for (key, f) in sec.entries() {
            let valid_name = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid_name {
                doc.error(
                    f.key_span.clone(),
                    format!("\"{key}\" is not a valid header name; use letters, digits and `-`, like X-Api-Key"),
                );
                continue;
            }
            let lower = key.to_ascii_lowercase();
            if ["host", "content-length", "transfer-encoding", "connection"]
                .contains(&lower.as_str())
            {
                doc.error(
                    f.key_span.clone(),
                    format!("header {key} is set by the relay itself; remove it"),
                );
                continue;
            }
            let Some(text) = f.as_str("\"Bearer ${PARTNER_TOKEN}\"") else {
                continue;
            };
            if let Some(t) = checker.template(text, f.span.clone(), &params) {
                let bad_literal = t.segments.iter().any(|s| {
                    matches!(s, super::template::Segment::Lit(l) if l.chars().any(|c| c.is_control() && c != '\t'))
                });
                if bad_literal {
                    f.error(format!(
                        "header {key} contains a line break or control character"
                    ));
                } else {
                    headers.push((key, t));
                }
            }
        }
    }

    let mut delivery = DeliverySettings::default();
    if let Some(f) = dest.get("rate_limit") {
        if let Some(s) = f.as_str("\"50/s\"") {
            match parse_rate(s) {
                Ok(r) => delivery.rate_limit = Some(r),
                Err(e) => f.error(format!("`destination.rate_limit`: {e}")),
            }
        }
    }
    if let Some(f) = dest.get("timeout") {
        if let Some(d) = f.as_duration("\"10s\"") {
            if d.is_zero() {
                f.error("`destination.timeout` must be more than zero, like \"10s\"");
            } else {
                delivery.timeout = d;
            }
        }
    }
    if let Some(f) = dest.get("retry") {
        if let Some(sec) = f.as_section(
            "{ max_attempts = 12, give_up_after = \"3d\", initial_backoff = \"5s\", max_backoff = \"1h\" }",
        ) {
            delivery.retry = read_retry(&sec);
            sec.finish();
        }
    }
    if let Some(n) = dest.int("concurrency", 1, 1024, "8") {
        delivery.concurrency = n as usize;
    }
    if let Some(f) = dest.get("sign_secret") {
        if let Some(s) = f.as_str("\"${PARTNER_SIGNING_SECRET}\"") {
            match check_whsec(s) {
                Ok(()) => delivery.sign_secret = Some(s.to_string()),
                Err(e) => f.error(e),
            }
        }
    }
    let oauth_field = dest.get("oauth");
    if let Some(f) = &oauth_field {
        delivery.oauth = partner::read_oauth(f);
    }
    dest.finish();
    if preset.is_none() {
        if let Some(sec) = success_field
            .as_ref()
            .and_then(|f| f.as_section(partner::SUCCESS_EXAMPLE))
        {
            delivery.success = SuccessRule::Declared(partner::read_success(&sec));
            sec.finish();
        }
    }

    // Method, format and body fit together.
    let mut method = method.unwrap_or(Method::Post);
    let mut format = format.unwrap_or(Format::Json);
    if let Some(p) = preset {
        if let Some(f) = method_field.as_ref().filter(|_| method != p.method) {
            f.error(format!(
                "preset {} sends {}; remove `method` or set it to \"{}\"",
                p.name,
                p.method.as_str(),
                p.method.as_str()
            ));
        }
        if let Some(f) = format_field.as_ref().filter(|_| format != p.format) {
            f.error(format!(
                "preset {} sends a {} body; remove `format`",
                p.name,
                p.format.as_str()
            ));
        }
        method = p.method;
        format = p.format;
        privacy.style = p.hash_style;
        if let Some(pf) = &preset_field {
            let check = partner::PresetCheck {
                doc,
                preset: p,
                preset_field: pf,
                params: &params,
                url_text: url_field.as_ref().and_then(|f| f.item.as_str()),
                has_auth_header: headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case("authorization")),
                oauth_written: oauth_field.is_some(),
            };
            check.apply(&mut delivery, &privacy, success_field.as_ref());
        }
    } else if method == Method::Get {
        if let Some(f) = &format_field {
            f.error("`format` applies to POST bodies; a GET request has none, so remove `format`");
        }
    }
    if method == Method::Get {
        if let Some(f) = &body_field {
            doc.error(
                f.key_span.clone().or(f.span.clone()),
                "a GET request has no body; remove [body], or set method = \"POST\" in [destination]",
            );
        }
    }

    // A preset: its params, its hashing requirements, its body under the user's.
    let mut preset_body = None;
    if let (Some(p), Some(pf)) = (preset, &preset_field) {
        let mut pparams = params.clone();
        pparams.lenient = true;
        for (k, v) in p.default_params {
            pparams
                .values
                .entry((*k).to_string())
                .or_insert_with(|| (*v).to_string());
        }
        for (k, example) in p.required_params {
            if !pparams.values.contains_key(*k) {
                pf.error(format!(
                    "preset {} needs `{k}`; add it under [params], like: {k} = {example}",
                    p.name
                ));
            }
        }
        for must in p.must_hash {
            if privacy.allow.coverage(must) != Coverage::Allowed
                || privacy.hash.iter().any(|(h, _)| h == must)
            {
                continue;
            }
            let (entry, span) = allow_entries
                .iter()
                .find(|(a, _)| must == a || must.starts_with(&format!("{a}.")))
                .cloned()
                .unwrap_or_default();
            let what = if entry == *must {
                format!("`{must}` is allowed")
            } else {
                format!("allowing `{entry}` lets `{must}` through")
            };
            doc.error(
                span,
                format!(
                    "{what}, but {} only accepts it hashed; add \"{must}\" to `hash` in [privacy]",
                    p.name
                ),
            );
        }
        preset_body = compile_preset(p, &pparams);
        if preset_body.is_none() {
            pf.error(format!(
                "internal error: preset {} does not compile",
                p.name
            ));
        }
    }

    let user_body = body_field
        .as_ref()
        .filter(|_| method == Method::Post)
        .and_then(|f| {
            if f.item.as_table_like().is_none() {
                f.error("`body` must be a table: a [body] section with key = value lines");
                return None;
            }
            let mut c = BodyCompiler {
                doc: Some(doc),
                check: Some(&checker),
                params: &params,
                ok: true,
            };
            let node = c.item(f.item, f.span.clone());
            partner::check_hashed_names(doc, f.item, &privacy);
            c.ok.then_some(node)
        });

    let body_node = match (preset_body, user_body) {
        (Some(p), Some(u)) => Some(p.merge(u)),
        (p, u) => p.or(u),
    };
    let body = match (method, format, body_node) {
        (Method::Get, _, _) => Body::None,
        (Method::Post, Format::Json, Some(node)) => Body::Json(node),
        (Method::Post, Format::Json, None) => Body::FilteredJson,
        (Method::Post, Format::Form, None) => Body::FilteredForm,
        (Method::Post, Format::Form, Some(BodyNode::Object(entries))) => {
            let mut flat = Vec::with_capacity(entries.len());
            for (k, node) in entries {
                match node {
                    BodyNode::Str(t) => flat.push((k, t)),
                    BodyNode::Const(v) => flat.push((
                        k,
                        Template {
                            segments: vec![super::template::Segment::Lit(
                                super::template::scalar_text(&v).into_owned(),
                            )],
                        },
                    )),
                    _ => {
                        let span = body_field.as_ref().and_then(|f| f.key_span.clone());
                        doc.error(span, format!("a form body is flat: `{k}` must be a single value, not a table or list"));
                    }
                }
            }
            Body::Form(flat)
        }
        (Method::Post, Format::Form, Some(_)) => Body::FilteredForm,
    };

    if let Some(p) = preset {
        privacy.ipv4_only = p.ipv4_only.iter().map(|s| (*s).to_string()).collect();
    }
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
            url: url?,
            headers,
            body,
            partner: preset,
            needs_source_url: preset.is_some_and(|p| {
                p.name == "meta_capi"
                    && params.values.get("action_source").map(String::as_str) == Some("website")
            }),
        },
        enabled,
    ))
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

fn read_privacy(sec: Option<Section<'_>>) -> (Privacy, Vec<AllowEntry>) {
    let mut privacy = Privacy::default();
    let mut entries = Vec::new();
    let Some(sec) = sec else {
        return (privacy, entries);
    };
    let doc = sec.doc;
    let valid = |p: &str, span: &Option<Range<usize>>, key: &str| {
        let ok = is_valid_path(p);
        if !ok {
            doc.error(
                span.clone(),
                format!("\"{p}\" in `{key}` is not a field path; write dotted names like \"user.email\""),
            );
        }
        ok
    };
    if let Some(list) = sec
        .get("allow")
        .and_then(|f| f.as_str_list("[\"click_id\", \"event_name\", \"properties.value\"]"))
    {
        for (p, span) in list {
            if valid(&p, &span, "privacy.allow") {
                privacy.allow.insert(&p);
                entries.push((p, span));
            }
        }
    }
    let in_allow = |p: &str, span: &Option<Range<usize>>, key: &str| {
        let ok = privacy.allow.coverage(p) == Coverage::Allowed;
        if !ok {
            doc.error(
                span.clone(),
                format!(
                    "\"{p}\" is in `{key}` but not in `allow`, so it is never sent; add \"{p}\" to `allow` in [privacy], or remove it from `{key}`"
                ),
            );
        }
        ok
    };
    let mut hash = Vec::new();
    if let Some(list) = sec
        .get("hash")
        .and_then(|f| f.as_str_list("[\"user.email\", \"user.phone\"]"))
    {
        for (p, span) in list {
            if valid(&p, &span, "hash") && in_allow(&p, &span, "hash") {
                let kind = FieldKind::of_path(&p);
                hash.push((p, kind));
            }
        }
    }
    let mut truncate = Vec::new();
    if let Some(list) = sec
        .get("truncate_ip")
        .and_then(|f| f.as_str_list("[\"user.ip\"]"))
    {
        for (p, span) in list {
            if valid(&p, &span, "truncate_ip") && in_allow(&p, &span, "truncate_ip") {
                truncate.push(p);
            }
        }
    }
    if let Some(c) = sec.section(
        "consent",
        "{ require = \"consent.ad_user_data\", drop = [\"user.email\"] }",
    ) {
        let require = c
            .require("require", "\"consent.ad_user_data\"")
            .and_then(|f| {
                let s = f.as_str("\"consent.ad_user_data\"")?;
                valid(s, &f.span, "privacy.consent.require").then(|| s.to_string())
            });
        let drop = c
            .require("drop", "[\"user.email\", \"user.phone\"]")
            .and_then(|f| f.as_str_list("[\"user.email\", \"user.phone\"]"))
            .map(|list| {
                list.into_iter()
                    .filter(|(p, span)| valid(p, span, "privacy.consent.drop"))
                    .map(|(p, _)| p)
                    .collect::<Vec<_>>()
            });
        c.finish();
        if let (Some(require), Some(drop)) = (require, drop) {
            privacy.consent = Some(Consent { require, drop });
        }
    }
    sec.finish();
    privacy.hash = hash;
    privacy.truncate_ip = truncate;
    (privacy, entries)
}

fn read_when(sec: &Section<'_>, prefix: &str, when: &mut When) {
    for (key, f) in sec.entries() {
        if key == "has" && prefix.is_empty() {
            if let Some(list) = f.as_str_list("[\"click_id\"]") {
                for (p, span) in list {
                    if is_valid_path(&p) {
                        when.conditions.push(Condition::Has(p));
                    } else {
                        sec.doc.error(span, format!("\"{p}\" in `when.has` is not a field path; write dotted names like \"user.email\""));
                    }
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
                read_when(&s, &field, when);
            }
            continue;
        }
        let example = format!("\"{field}\" = \"value\" or \"{field}\" = [\"a\", \"b\"]");
        let values = match &f.item {
            Item::Value(TomlValue::Array(arr)) => {
                let mut out = Vec::new();
                for v in arr.iter() {
                    match toml_scalar(v) {
                        Some(s) => out.push(s),
                        None => sec.doc.error(
                            v.span(),
                            format!(
                                "[when] `{field}` must list plain values; for example: {example}"
                            ),
                        ),
                    }
                }
                if arr.is_empty() {
                    f.error(format!("[when] `{field}` lists nothing, so no event would match; for example: {example}"));
                }
                out
            }
            Item::Value(v) => match toml_scalar(v) {
                Some(s) => vec![s],
                None => {
                    f.error(format!("[when] `{field}` must be a value or a list of values; for example: {example}"));
                    continue;
                }
            },
            _ => continue,
        };
        when.conditions.push(Condition::OneOf { field, values });
    }
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

fn read_rename(sec: &Section<'_>, field: &str, span: Option<Range<usize>>, out: &mut Vec<Rename>) {
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
                read_rename(&s, &format!("{field}.{old}"), f.key_span.clone(), out);
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
        out.push(rename);
    }
}

fn read_retry(sec: &Section<'_>) -> RetrySettings {
    let mut r = RetrySettings::default();
    if let Some(n) = sec.int("max_attempts", 1, 1000, "12") {
        r.max_attempts = n as u32;
    }
    if let Some(d) = sec.duration("give_up_after", "\"3d\"") {
        r.give_up_after = d;
    }
    if let Some(d) = sec.duration("initial_backoff", "\"5s\"") {
        r.initial_backoff = d;
    }
    let max = sec.get("max_backoff");
    if let Some(d) = max.as_ref().and_then(|f| f.as_duration("\"1h\"")) {
        r.max_backoff = d;
    }
    if r.initial_backoff > r.max_backoff {
        let span = max.map(|f| f.span).unwrap_or_else(|| sec.span());
        sec.doc.error(
            span,
            "`retry.max_backoff` is shorter than `retry.initial_backoff`; make max_backoff the larger one",
        );
    }
    r
}

/// `"50/s"`, `"1000/m"`, `"10/h"`, `"5/1d"`, `"30/10s"`.
pub fn parse_rate(s: &str) -> Result<RateLimit, String> {
    let hint = "write a count per period, like \"50/s\", \"1000/m\" or \"10/h\"";
    let (n, per) = s
        .split_once('/')
        .ok_or_else(|| format!("\"{s}\" is not a rate; {hint}"))?;
    let count: u32 = n
        .trim()
        .parse()
        .ok()
        .filter(|&c| c > 0)
        .ok_or_else(|| format!("\"{s}\" needs a whole count above zero; {hint}"))?;
    let per = per.trim();
    let per = if per.starts_with(|c: char| c.is_ascii_digit()) {
        per.to_string()
    } else {
        format!("1{per}")
    };
    let per: Duration =
        parse_duration(&per).map_err(|_| format!("\"{s}\" has an unknown period; {hint}"))?;
    if per.is_zero() {
        return Err(format!("\"{s}\" has a zero period; {hint}"));
    }
    Ok(RateLimit { count, per })
}

/// A Standard Webhooks secret: `whsec_` + base64 of the key bytes. Never echoes it.
fn check_whsec(s: &str) -> Result<(), String> {
    if !s.starts_with("whsec_") {
        return Err("`destination.sign_secret` must start with whsec_ (a Standard Webhooks secret: whsec_ + base64 of the key); write it as \"${PARTNER_SIGNING_SECRET}\"".into());
    }
    match crate::webhooks::Secret::parse(s) {
        Ok(_) => Ok(()),
        Err(_) => Err("`destination.sign_secret`: the part after whsec_ is not valid base64; copy the secret exactly as the partner gave it".into()),
    }
}

/// The span of byte `at` inside a string value at `span`, when the string is written
/// without escapes; otherwise the start of the string.
fn span_in(
    doc: &Doc<'_>,
    span: Option<Range<usize>>,
    value: &str,
    at: usize,
) -> Option<Range<usize>> {
    let span = span?;
    let raw = doc.source.text.get(span.clone())?;
    for q in ["\"\"\"", "'''", "\"", "'"] {
        if raw.len() >= 2 * q.len()
            && raw.starts_with(q)
            && raw.ends_with(q)
            && raw.get(q.len()..raw.len() - q.len()) == Some(value)
        {
            let start = span.start + q.len() + at;
            return Some(start..start + 1);
        }
    }
    Some(span)
}

/// Checks user-written placeholders against `allow`.
struct Checker<'d> {
    doc: &'d Doc<'d>,
    allow: &'d AllowTree,
}

impl Checker<'_> {
    fn problem(&self, p: &Placeholder) -> Option<String> {
        match &p.source {
            PlaceholderSource::Derived(_) => None,
            PlaceholderSource::Field(path) => (self.allow.coverage(path) == Coverage::No).then(|| {
                format!(
                    "`{{{path}}}` names a field that [privacy] does not allow, so it would never be sent; add \"{path}\" to `allow` in [privacy]"
                )
            }),
        }
    }

    /// Parses and checks one template string, reporting at the exact column.
    fn template(
        &self,
        text: &str,
        span: Option<Range<usize>>,
        params: &Params,
    ) -> Option<Template> {
        match Template::parse(text, params) {
            Err(e) => {
                self.doc
                    .error(span_in(self.doc, span, text, e.at), e.message);
                None
            }
            Ok(t) => {
                let mut ok = true;
                for p in t.placeholders() {
                    if let Some(msg) = self.problem(p) {
                        self.doc
                            .error(span_in(self.doc, span.clone(), text, p.at), msg);
                        ok = false;
                    }
                }
                ok.then_some(t)
            }
        }
    }
}

/// Compiles a `[body]` table (user-written, checked) or a preset body (unchecked).
struct BodyCompiler<'x> {
    doc: Option<&'x Doc<'x>>,
    check: Option<&'x Checker<'x>>,
    params: &'x Params,
    ok: bool,
}

impl BodyCompiler<'_> {
    fn error(&mut self, span: Option<Range<usize>>, msg: String) {
        self.ok = false;
        if let Some(d) = self.doc {
            d.error(span, msg);
        }
    }

    fn string(&mut self, s: &str, span: Option<Range<usize>>) -> BodyNode {
        match self.check {
            Some(c) => match c.template(s, span, self.params) {
                Some(t) => BodyNode::Str(t),
                None => {
                    self.ok = false;
                    BodyNode::Const(serde_json::Value::Null)
                }
            },
            None => match Template::parse(s, self.params) {
                Ok(t) => BodyNode::Str(t),
                Err(e) => {
                    self.error(span, e.message);
                    BodyNode::Const(serde_json::Value::Null)
                }
            },
        }
    }

    fn item(&mut self, item: &Item, span: Option<Range<usize>>) -> BodyNode {
        match item {
            Item::Value(v) => self.value(v),
            Item::Table(t) => BodyNode::Object(
                t.iter()
                    .map(|(k, i)| {
                        let span = i.span().or_else(|| span.clone());
                        (k.to_string(), self.item(i, span))
                    })
                    .collect(),
            ),
            Item::ArrayOfTables(a) => BodyNode::Array(
                a.iter()
                    .map(|t| {
                        let item = Item::Table(t.clone());
                        self.item(&item, t.span())
                    })
                    .collect(),
            ),
            Item::None => BodyNode::Const(serde_json::Value::Null),
        }
    }

    fn value(&mut self, v: &TomlValue) -> BodyNode {
        match v {
            TomlValue::String(s) => self.string(s.value(), v.span()),
            TomlValue::Integer(i) => BodyNode::Const(serde_json::Value::from(*i.value())),
            TomlValue::Float(f) => BodyNode::Const(
                serde_json::Number::from_f64(*f.value())
                    .map(serde_json::Value::Number)
                    .unwrap_or(serde_json::Value::Null),
            ),
            TomlValue::Boolean(b) => BodyNode::Const(serde_json::Value::Bool(*b.value())),
            TomlValue::Datetime(_) => {
                self.error(
                    v.span(),
                    "a date in [body] is ambiguous; write a placeholder like \"{timestamp.iso}\" or a string in quotes".into(),
                );
                BodyNode::Const(serde_json::Value::Null)
            }
            TomlValue::Array(a) => BodyNode::Array(a.iter().map(|v| self.value(v)).collect()),
            TomlValue::InlineTable(t) => BodyNode::Object(
                t.iter()
                    .map(|(k, v)| (k.to_string(), self.value(v)))
                    .collect(),
            ),
        }
    }
}

/// A preset's body, compiled with its params (unset optional ones are omitted).
pub fn compile_preset(p: &Preset, params: &Params) -> Option<BodyNode> {
    let doc = toml_edit::Document::parse(p.body).ok()?;
    let mut c = BodyCompiler {
        doc: None,
        check: None,
        params,
        ok: true,
    };
    let node = c.item(doc.as_item(), None);
    c.ok.then_some(node)
}

#[cfg(test)]
mod tests;
