//! Templates and bodies: placeholders checked against `allow` and the event schema
//! (`Checker`), `[body]` and preset bodies compiled (`BodyCompiler`), and how
//! method, format, preset and body fit together (`shape`).

use std::ops::Range;

use toml_edit::{Item, Value as TomlValue};

use crate::outbound::{DeliverySettings, Method};
use crate::toml_reader::{Doc, Field};

use super::super::apply::{AllowTree, Coverage, Privacy};
use super::super::presets::Preset;
use super::super::template::{BodyNode, Params, Placeholder, PlaceholderSource, Segment, Template};
use super::super::{Body, FormValue, Format};
use super::destination::Request;
use super::known::Known;
use super::partner;

/// The span of byte `at` inside a string value at `span`, when the string is written
/// without escapes; otherwise the start of the string.
pub fn span_in(
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

/// Checks user-written placeholders against `allow` and the known fields.
pub struct Checker<'d> {
    pub doc: &'d Doc<'d>,
    pub allow: &'d AllowTree,
    pub known: &'d Known<'d>,
    /// `allow` itself is misspelt (reported as an unknown key): placeholders it would
    /// have allowed are not reported again, one cause, one message.
    pub allow_misspelt: bool,
}

/// What is wrong with one placeholder.
enum Problem {
    Error(String),
    Warning(String),
}

impl Checker<'_> {
    fn problem(&self, p: &Placeholder) -> Option<Problem> {
        let PlaceholderSource::Field(path) = &p.source else {
            return None;
        };
        let allowed = self.allow.coverage(path) != Coverage::No;
        let known = self.known.knows(path);
        let guess = (!known).then(|| self.known.closest(path)).flatten();
        match (allowed, guess) {
            (false, Some(g)) => Some(Problem::Error(format!(
                "`{{{path}}}` names no field of the event; did you mean `{{{g}}}`?{}",
                if self.allow.coverage(&g) == Coverage::No {
                    format!(" (then add \"{g}\" to `allow` in [privacy])")
                } else {
                    String::new()
                }
            ))),
            (false, None) => Some(Problem::Error(format!(
                "`{{{path}}}` names a field that [privacy] does not allow, so it would never be sent; add \"{path}\" to `allow` in [privacy]"
            ))),
            (true, Some(g)) => Some(Problem::Warning(format!(
                "`{{{path}}}` is not a field of the event (docs/event.schema.json), so it renders empty unless your events carry it; did you mean `{{{g}}}`?"
            ))),
            (true, None) => None,
        }
    }

    /// Parses and checks one template string, reporting at the exact column.
    pub fn template(
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
                    let at = span_in(self.doc, span.clone(), text, p.at);
                    match self.problem(p) {
                        Some(Problem::Error(_)) if self.allow_misspelt => {
                            self.doc.consequence();
                            ok = false;
                        }
                        Some(Problem::Error(msg)) => {
                            self.doc.error(at, msg);
                            ok = false;
                        }
                        Some(Problem::Warning(msg)) => self.doc.warn(at, msg),
                        None => {}
                    }
                }
                ok.then_some(t)
            }
        }
    }
}

/// Compiles a `[body]` table (user-written, checked) or a preset body (unchecked).
pub struct BodyCompiler<'x> {
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

/// The rule's method, format and body, fitted to its preset (if any): what the
/// preset sends wins, and a written `method` or `format` that disagrees is an error.
pub struct Shape<'x> {
    pub doc: &'x Doc<'x>,
    pub preset: Option<&'static Preset>,
    pub preset_field: Option<&'x Field<'x>>,
    pub body_field: Option<&'x Field<'x>>,
    pub success_field: Option<&'x Field<'x>>,
    pub oauth_written: bool,
    pub params: &'x Params,
}

impl Shape<'_> {
    /// Method and format after the preset; runs the preset's own checks.
    pub fn method_format(
        &self,
        req: &Request<'_>,
        delivery: &mut DeliverySettings,
        privacy: &Privacy,
    ) -> (Method, Format) {
        let method = req.method.unwrap_or(Method::Post);
        let format = req.format.unwrap_or(Format::Json);
        let (method, format) = match (self.preset, self.preset_field) {
            (Some(p), Some(pf)) => {
                if let Some(f) = req.method_field.as_ref().filter(|_| method != p.method) {
                    f.error(format!(
                        "preset {} sends {}; remove `method` or set it to \"{}\"",
                        p.name,
                        p.method.as_str(),
                        p.method.as_str()
                    ));
                }
                if let Some(f) = req.format_field.as_ref().filter(|_| format != p.format) {
                    f.error(format!(
                        "preset {} sends a {} body; remove `format`",
                        p.name,
                        p.format.as_str()
                    ));
                }
                let check = partner::PresetCheck {
                    doc: self.doc,
                    preset: p,
                    preset_field: pf,
                    params: self.params,
                    url_text: req.url_field.as_ref().and_then(|f| f.item.as_str()),
                    has_auth_header: req
                        .headers
                        .iter()
                        .any(|(n, _)| n.eq_ignore_ascii_case("authorization")),
                    headers: &req.headers,
                    oauth_written: self.oauth_written,
                };
                check.apply(delivery, privacy, self.success_field);
                (p.method, p.format)
            }
            _ => {
                if let (Method::Get, Some(f)) = (method, &req.format_field) {
                    f.error("`format` applies to POST bodies; a GET request has none, so remove `format`");
                }
                (method, format)
            }
        };
        if let (Method::Get, Some(f)) = (method, self.body_field) {
            self.doc.error(
                f.key_span.clone().or(f.span.clone()),
                "a GET request has no body; remove [body], or set method = \"POST\" in [destination]",
            );
        }
        (method, format)
    }

    /// The preset's body with its params; the preset's required params and the
    /// fields it only takes hashed are checked here.
    fn preset_body(
        &self,
        privacy: &Privacy,
        allow_entries: &[(String, Option<Range<usize>>)],
    ) -> Option<BodyNode> {
        let (p, pf) = (self.preset?, self.preset_field?);
        let mut pparams = self.params.clone();
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
        self.must_hash(p, privacy, allow_entries);
        let body = compile_preset(p, &pparams);
        if body.is_none() {
            pf.error(format!(
                "internal error: preset {} does not compile",
                p.name
            ));
        }
        body
    }

    /// Fields the partner only accepts hashed must be in `hash` when allowed.
    fn must_hash(
        &self,
        p: &Preset,
        privacy: &Privacy,
        allow_entries: &[(String, Option<Range<usize>>)],
    ) {
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
            self.doc.error(
                span,
                format!(
                    "{what}, but {} only accepts it hashed; add \"{must}\" to `hash` in [privacy]",
                    p.name
                ),
            );
        }
    }

    /// The user's `[body]` (POST only), checked like every template.
    fn user_body(
        &self,
        method: Method,
        checker: &Checker<'_>,
        privacy: &Privacy,
    ) -> Option<BodyNode> {
        let f = self.body_field.filter(|_| method == Method::Post)?;
        if f.item.as_table_like().is_none() {
            f.error("`body` must be a table: a [body] section with key = value lines");
            return None;
        }
        let mut c = BodyCompiler {
            doc: Some(self.doc),
            check: Some(checker),
            params: self.params,
            ok: true,
        };
        let node = c.item(f.item, f.span.clone());
        partner::check_hashed_names(self.doc, f.item, privacy);
        c.ok.then_some(node)
    }

    /// The body: the preset's with the user's `[body]` laid over it.
    pub fn compile_body(
        &self,
        method: Method,
        format: Format,
        checker: &Checker<'_>,
        privacy: &Privacy,
        allow_entries: &[(String, Option<Range<usize>>)],
    ) -> Body {
        let preset_body = self.preset_body(privacy, allow_entries);
        let user_body = self.user_body(method, checker, privacy);
        let node = match (preset_body, user_body) {
            (Some(p), Some(u)) => Some(p.merge(u)),
            (p, u) => p.or(u),
        };
        self.body(method, format, node)
    }

    /// What the request carries, from method, format and the compiled body.
    fn body(&self, method: Method, format: Format, node: Option<BodyNode>) -> Body {
        match (method, format, node) {
            (Method::Get, _, _) => Body::None,
            (Method::Post, Format::Json, Some(node)) => Body::Json(node),
            (Method::Post, Format::Json, None) => Body::FilteredJson,
            (Method::Post, Format::Form, None) => Body::FilteredForm,
            (Method::Post, Format::Form, Some(BodyNode::Object(entries))) => {
                self.flat_form(entries)
            }
            (Method::Post, Format::Form, Some(_)) => Body::FilteredForm,
        }
    }

    fn flat_form(&self, entries: Vec<(String, BodyNode)>) -> Body {
        let objects = self.preset.map_or(&[][..], |p| p.form_objects);
        let mut flat = Vec::with_capacity(entries.len());
        for (k, node) in entries {
            match node {
                BodyNode::Object(inner) if objects.contains(&k.as_str()) => {
                    let mut object = Vec::with_capacity(inner.len());
                    for (ik, n) in inner {
                        match form_text(n) {
                            Some(t) => object.push((ik, t)),
                            None => self.form_error(format!("`{k}` is an object of strings (the partner's own rule): `{k}.{ik}` must be a single value, not a table or list")),
                        }
                    }
                    flat.push((k, FormValue::Object(object)));
                }
                node => match form_text(node) {
                    Some(t) => flat.push((k, FormValue::Text(t))),
                    None => {
                        let tables = match objects {
                            [] => String::new(),
                            some => format!(
                                " (only {} take a table)",
                                some.iter()
                                    .map(|o| format!("`{o}`"))
                                    .collect::<Vec<_>>()
                                    .join(" and ")
                            ),
                        };
                        self.form_error(format!("a form body is flat: `{k}` must be a single value, not a table or list{tables}"));
                    }
                },
            }
        }
        Body::Form(flat)
    }

    fn form_error(&self, message: String) {
        let span = self.body_field.and_then(|f| f.key_span.clone());
        self.doc.error(span, message);
    }
}

/// One form value as a template: a string as written, a constant as its text.
fn form_text(node: BodyNode) -> Option<Template> {
    match node {
        BodyNode::Str(t) => Some(t),
        BodyNode::Const(v) => Some(Template {
            segments: vec![Segment::Lit(
                super::super::template::scalar_text(&v).into_owned(),
            )],
        }),
        BodyNode::Object(_) | BodyNode::Array(_) => None,
    }
}
