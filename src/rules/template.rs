//! Compiled templates for URLs, headers and bodies, and their rendering.
//!
//! Owns: the placeholder syntax, compiled once at load into segment lists, and turning
//! a template plus an already-filtered event into text or JSON. Never: looks at the raw
//! event (the caller hands over only what privacy allowed, so nothing else can leak)
//! and never decides what is allowed (`load` checks placeholders against `allow`).
//!
//! Syntax, inside any URL, header value or body string:
//! - `{dotted.path}`: a field of the filtered event. In a URL it is percent-encoded
//!   (component encoding); in a URL or header a missing field renders as empty; in a
//!   body, a string that is exactly one placeholder keeps the field's JSON type, and
//!   a string with a missing field is omitted (key removed, array element removed;
//!   an object or array left empty by omissions is removed too).
//! - `{path|json}`: the value as a JSON *string* (AppsFlyer `eventValue`); a missing
//!   value renders as `{}`.
//! - `{params.NAME}`: a constant from the file's `[params]` table.
//! - `{timestamp.unix}` (integer seconds), `{timestamp.unix_ms}` (integer milliseconds),
//!   `{timestamp.iso}` (RFC 3339 UTC), `{timestamp.datetime_ms}`
//!   (`2026-11-25 10:00:00.000`, UTC), `{timestamp.datetime_offset}`
//!   (`2026-11-25 10:00:00+00:00`): the event's time, always available.
//! - `{{` and `}}` are literal braces.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use percent_encoding::utf8_percent_encode;
use serde_json::{Map, Value};

use super::is_valid_path;
use super::view::Fields;

/// Characters left as they are in a URL component (RFC 3986 "unreserved").
use crate::outbound::URL_COMPONENT as COMPONENT;

/// The derived placeholders, always available whatever `allow` says.
pub const DERIVED: &[&str] = &[
    "timestamp.unix",
    "timestamp.unix_ms",
    "timestamp.iso",
    "timestamp.datetime_ms",
    "timestamp.datetime_offset",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derived {
    Unix,
    UnixMs,
    Iso,
    DatetimeMs,
    DatetimeOffset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceholderSource {
    Field(String),
    Derived(Derived),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub source: PlaceholderSource,
    /// `|json`: render as a JSON string.
    pub json: bool,
    /// Byte offset of the `{` in the template text, for diagnostics.
    pub at: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Lit(String),
    Ph(Placeholder),
    /// An optional preset parameter that the file does not set: always missing.
    Absent,
}

/// A compiled string template.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    pub segments: Vec<Segment>,
}

/// The `[params]` a template may name, and whether unknown ones are errors.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pub values: BTreeMap<String, String>,
    /// Presets: an unset optional parameter is simply omitted.
    pub lenient: bool,
}

impl Params {
    /// Meta's `action_source` as the rule sets it (`params.action_source`), else the
    /// preset's default, `website`.
    pub fn meta_action_source(&self) -> &str {
        self.values
            .get("action_source")
            .map(String::as_str)
            .unwrap_or("website")
    }
}

/// A mistake in a template: byte offset in its text and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub at: usize,
    pub message: String,
}

impl Template {
    pub fn parse(text: &str, params: &Params) -> Result<Template, TemplateError> {
        let mut segments = Vec::new();
        let mut lit = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => {
                    return Err(TemplateError {
                        at: i,
                        message: "a `}` without its `{`; write `}}` for a literal brace".into(),
                    })
                }
                '{' => {
                    let Some(close) = text[i + 1..].find('}').map(|p| i + 1 + p) else {
                        return Err(TemplateError {
                            at: i,
                            message: "a `{` that is never closed; write `{field.name}` for a placeholder or `{{` for a literal brace".into(),
                        });
                    };
                    let inner = text[i + 1..close].trim();
                    while chars.peek().is_some_and(|&(j, _)| j <= close) {
                        chars.next();
                    }
                    if !lit.is_empty() {
                        segments.push(Segment::Lit(std::mem::take(&mut lit)));
                    }
                    segments.push(parse_placeholder(inner, i, params)?);
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            segments.push(Segment::Lit(lit));
        }
        // Adjacent literals (a resolved param next to text) merge, keeping "exactly one
        // placeholder" meaningful.
        let mut merged: Vec<Segment> = Vec::with_capacity(segments.len());
        for s in segments {
            match (merged.last_mut(), s) {
                (Some(Segment::Lit(a)), Segment::Lit(b)) => a.push_str(&b),
                (_, s) => merged.push(s),
            }
        }
        Ok(Template { segments: merged })
    }

    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Ph(p) => Some(p),
            _ => None,
        })
    }

    /// The literal text, when the template has no placeholder.
    #[cfg(test)]
    pub fn as_literal(&self) -> Option<String> {
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Lit(l) => out.push_str(l),
                _ => return None,
            }
        }
        Some(out)
    }

    /// Text rendering; `encode` percent-encodes placeholder values (URLs). Returns the
    /// text and whether every placeholder had a value.
    pub fn render_text(&self, ctx: &Ctx<'_>, encode: bool) -> (String, bool) {
        // Sized for the literal text and a short value per placeholder: most renders
        // allocate once.
        let hint: usize = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Lit(l) => l.len(),
                Segment::Ph(_) => 32,
                Segment::Absent => 0,
            })
            .sum();
        let mut out = String::with_capacity(hint);
        let mut complete = true;
        for s in &self.segments {
            match s {
                Segment::Lit(l) => out.push_str(l),
                Segment::Absent => complete = false,
                Segment::Ph(p) => match ctx.resolve(p) {
                    Some(v) => {
                        let text = scalar_text(&v);
                        if encode {
                            out.extend(utf8_percent_encode(&text, COMPONENT));
                        } else {
                            out.push_str(&text);
                        }
                    }
                    None => complete = false,
                },
            }
        }
        (out, complete)
    }

    /// Body rendering of one string: typed when it is exactly one placeholder,
    /// omitted (`None`) when any placeholder is missing.
    pub fn render_json(&self, ctx: &Ctx<'_>) -> Option<Value> {
        if let [Segment::Ph(p)] = self.segments.as_slice() {
            return ctx.resolve(p).map(Cow::into_owned);
        }
        let (text, complete) = self.render_text(ctx, false);
        complete.then_some(Value::String(text))
    }
}

fn parse_placeholder(inner: &str, at: usize, params: &Params) -> Result<Segment, TemplateError> {
    let err = |message: String| TemplateError { at, message };
    let (path, filter) = match inner.split_once('|') {
        Some((p, f)) => (p.trim(), Some(f.trim())),
        None => (inner, None),
    };
    let json = match filter {
        None => false,
        Some("json") => true,
        Some(other) => {
            return Err(err(format!(
                "unknown filter `|{other}` in `{{{inner}}}`; the only filter is `|json` (the value as a JSON string)"
            )))
        }
    };
    if path.is_empty() {
        return Err(err(
            "empty placeholder `{}`; name a field like `{click_id}`, or write `{{}}` for literal braces".into(),
        ));
    }
    if !is_valid_path(path) {
        return Err(err(format!(
            "`{{{inner}}}` is not a field path; use letters, digits, `_` and `-`, with `.` between levels, like `{{user.email}}`"
        )));
    }
    if let Some(name) = path.strip_prefix("params.") {
        return match params.values.get(name) {
            Some(v) => Ok(Segment::Lit(v.clone())),
            None if params.lenient => Ok(Segment::Absent),
            None => Err(err(format!(
                "`{{{path}}}` names a parameter that is not set; add it under [params], like: {name} = \"...\""
            ))),
        };
    }
    if path == "params" {
        return Err(err("`{params}` needs a name: `{params.NAME}`".into()));
    }
    if let Some(rest) = path.strip_prefix("timestamp.") {
        let d = match rest {
            "unix" => Derived::Unix,
            "unix_ms" => Derived::UnixMs,
            "iso" => Derived::Iso,
            "datetime_ms" => Derived::DatetimeMs,
            "datetime_offset" => Derived::DatetimeOffset,
            _ => {
                return Err(err(format!(
                    "unknown time format `{{{path}}}`; use one of {}",
                    DERIVED
                        .iter()
                        .map(|d| format!("{{{d}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        };
        return Ok(Segment::Ph(Placeholder {
            source: PlaceholderSource::Derived(d),
            json,
            at,
        }));
    }
    Ok(Segment::Ph(Placeholder {
        source: PlaceholderSource::Field(path.to_string()),
        json,
        at,
    }))
}

/// What templates render from: the filtered event and its time.
pub struct Ctx<'a> {
    pub fields: &'a Fields<'a>,
    pub timestamp: DateTime<Utc>,
}

impl<'a> Ctx<'a> {
    pub fn resolve(&self, p: &Placeholder) -> Option<Cow<'a, Value>> {
        let v: Option<Cow<'a, Value>> = match &p.source {
            PlaceholderSource::Field(path) => self.fields.get(path),
            PlaceholderSource::Derived(d) => Some(Cow::Owned(self.derived(*d))),
        };
        if p.json {
            let text = match v {
                Some(v) => serde_json::to_string(v.as_ref()).unwrap_or_default(),
                None => "{}".to_string(),
            };
            return Some(Cow::Owned(Value::String(text)));
        }
        v
    }

    fn derived(&self, d: Derived) -> Value {
        let t = self.timestamp;
        match d {
            Derived::Unix => Value::from(t.timestamp()),
            Derived::UnixMs => Value::from(t.timestamp_millis()),
            Derived::Iso => Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            Derived::DatetimeMs => Value::String(t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()),
            Derived::DatetimeOffset => {
                Value::String(t.format("%Y-%m-%d %H:%M:%S+00:00").to_string())
            }
        }
    }
}

/// A value as text: strings as they are, other scalars as JSON, objects/arrays as JSON.
pub fn scalar_text(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s.as_str()),
        other => Cow::Owned(other.to_string()),
    }
}

/// Percent-encodes a form key or value.
pub fn form_encode(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// A compiled JSON body template.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyNode {
    Object(Vec<(String, BodyNode)>),
    Array(Vec<BodyNode>),
    Str(Template),
    Const(Value),
}

impl BodyNode {
    /// `None` when omitted (a missing field, or a container emptied by omissions).
    pub fn render(&self, ctx: &Ctx<'_>) -> Option<Value> {
        match self {
            BodyNode::Const(v) => Some(v.clone()),
            BodyNode::Str(t) => t.render_json(ctx),
            BodyNode::Object(entries) => {
                let mut out = Map::with_capacity(entries.len());
                for (k, node) in entries {
                    if let Some(v) = node.render(ctx) {
                        out.insert(k.clone(), v);
                    }
                }
                (entries.is_empty() || !out.is_empty()).then_some(Value::Object(out))
            }
            BodyNode::Array(items) => {
                let out: Vec<Value> = items.iter().filter_map(|n| n.render(ctx)).collect();
                (items.is_empty() || !out.is_empty()).then_some(Value::Array(out))
            }
        }
    }

    /// `over` laid on top of `self`: objects merge key by key, lists of the same
    /// length element by element (so `[[body.data]]` extends a preset's one event),
    /// anything else replaces.
    pub fn merge(self, over: BodyNode) -> BodyNode {
        match (self, over) {
            (BodyNode::Object(mut base), BodyNode::Object(top)) => {
                for (k, v) in top {
                    match base.iter().position(|(bk, _)| *bk == k) {
                        Some(i) => {
                            let old =
                                std::mem::replace(&mut base[i].1, BodyNode::Const(Value::Null));
                            base[i].1 = old.merge(v);
                        }
                        None => base.push((k, v)),
                    }
                }
                BodyNode::Object(base)
            }
            (BodyNode::Array(base), BodyNode::Array(top)) if base.len() == top.len() => {
                BodyNode::Array(base.into_iter().zip(top).map(|(b, t)| b.merge(t)).collect())
            }
            (_, top) => top,
        }
    }
}

/// Checks a URL template's static parts: scheme, a literal host, no blanks.
/// Returns the byte offset in the text and a message.
pub fn check_url(text: &str, t: &Template) -> Result<(), TemplateError> {
    let err = |at: usize, message: String| Err(TemplateError { at, message });
    let first = match t.segments.first() {
        Some(Segment::Lit(l)) => l.as_str(),
        _ => "",
    };
    let lower = first.to_ascii_lowercase();
    let rest_at = if lower.starts_with("https://") {
        8
    } else if lower.starts_with("http://") {
        7
    } else {
        return err(
            0,
            "`url` must start with https:// or http://, like \"https://partner.example/postback?click={click_id}\"".into(),
        );
    };
    let rest = &first[rest_at..];
    let end = rest.find(['/', '?', '#']);
    if end.is_none() && t.segments.len() > 1 {
        return err(
            rest_at,
            "the host of `url` must be written out, not come from a placeholder; put placeholders in the path or query".into(),
        );
    }
    let authority = &rest[..end.unwrap_or(rest.len())];
    if let Some(i) = authority.find('\\') {
        return err(
            rest_at + i,
            "`url` has a backslash before its path; the sender's URL parser reads `\\` as `/`, so the host would not be the one written; write `/`, or %5C inside the path".into(),
        );
    }
    // `https:///p` is read by the URL parser as the host `p`: say what is missing.
    if authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .is_empty()
    {
        return err(
            rest_at,
            "`url` has no host; write it like https://partner.example/path".into(),
        );
    }
    // Host and port as the sender (reqwest, through the `url` crate) reads them: a
    // URL accepted here is the URL sent.
    let url = url::Url::parse(&probe(t)).map_err(|e| TemplateError {
        at: rest_at,
        message: parse_error_message(e, authority),
    })?;
    let Some(parsed) = url.host_str() else {
        return err(
            rest_at,
            "`url` has no host; write it like https://partner.example/path".into(),
        );
    };
    if url.port() == Some(0) {
        return err(
            rest_at,
            "`url` has an invalid port `0`; use a number from 1 to 65535".into(),
        );
    }
    same_host_for_the_sender(authority, parsed, rest_at)?;
    check_literals(text, t)
}

/// The literal parts of `url`: no `<...>` (documentation's marks), no blanks or
/// control characters.
fn check_literals(text: &str, t: &Template) -> Result<(), TemplateError> {
    let err = |at: usize, message: String| Err(TemplateError { at, message });
    let mut pos = 0;
    for s in &t.segments {
        if let Segment::Lit(l) = s {
            if let Some(i) = l.find('<') {
                let at = text.find(l.as_str()).map_or(pos, |p| p + i);
                return err(at, angle_hint(&l[i..]));
            }
            if let Some(i) = l.find(|c: char| c.is_whitespace() || c.is_control()) {
                let at = text.find(l.as_str()).map_or(pos, |p| p + i);
                return err(
                    at,
                    "`url` contains a space or control character; write a space as %20".into(),
                );
            }
            pos += l.len();
        }
    }
    Ok(())
}

/// `<click id>` in a URL is how partners' documentation marks what to fill in; sent
/// as it is, the partner gets the text itself. Point at the relay's placeholders.
fn angle_hint(from: &str) -> String {
    match from.find('>') {
        Some(end) => {
            let inner = &from[1..end];
            let guess: String = inner
                .trim()
                .chars()
                .map(|c| {
                    if c.is_whitespace() || c == '-' {
                        '_'
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect();
            format!(
                "`<{inner}>` in `url` looks like a placeholder from the partner's documentation, but the relay would send it as text; write the event field in braces instead, like {{{guess}}} (see Placeholders in README-RULES.md)"
            )
        }
        None => "`url` contains `<`, which is not allowed in a URL; write it as %3C".into(),
    }
}

/// The URL text with every placeholder replaced by `x` (placeholders never reach the
/// host: `check_url` refuses that first).
fn probe(t: &Template) -> String {
    t.segments
        .iter()
        .map(|s| match s {
            Segment::Lit(l) => l.as_str(),
            Segment::Ph(_) | Segment::Absent => "x",
        })
        .collect()
}

/// The host `check_url` accepted, as the sender reads it.
pub fn url_host(t: &Template) -> Option<String> {
    url::Url::parse(&probe(t))
        .ok()?
        .host_str()
        .map(str::to_owned)
}

/// The `url` crate's refusal, said the way a rule file's author writes URLs.
fn parse_error_message(e: url::ParseError, authority: &str) -> String {
    use url::ParseError as P;
    match e {
        P::EmptyHost => "`url` has no host; write it like https://partner.example/path".into(),
        P::InvalidPort => {
            let port = authority.rsplit_once(':').map_or("", |(_, p)| p);
            format!("`url` has an invalid port `{port}`; use a number from 1 to 65535")
        }
        P::InvalidIpv6Address => format!("`url` has a malformed IPv6 host `{authority}`"),
        P::InvalidIpv4Address | P::InvalidDomainCharacter | P::IdnaError => {
            format!("`url` has an invalid host `{authority}`")
        }
        other => format!(
            "`url` is not a valid URL ({other}); write it like \"https://partner.example/postback?click={{click_id}}\""
        ),
    }
}

/// The host as written (after any `user@`, without the port) must be the host the
/// sender connects to: `http://2130706433/` or `http://0x7f.1/` read as some name but
/// connect to 127.0.0.1.
fn same_host_for_the_sender(authority: &str, parsed: &str, at: usize) -> Result<(), TemplateError> {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let written = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or(v6, |(h, _)| h),
        None => host_port.split_once(':').map_or(host_port, |(h, _)| h),
    }
    .to_ascii_lowercase();
    let parsed = parsed.trim_start_matches('[').trim_end_matches(']');
    let same = parsed == written
        || matches!(
            (parsed.parse::<std::net::IpAddr>(), written.parse::<std::net::IpAddr>()),
            (Ok(a), Ok(b)) if a == b
        );
    if same {
        Ok(())
    } else {
        Err(TemplateError {
            at,
            message: format!(
                "`url`'s host reads as `{written}`, but the sender would connect to `{parsed}`; write the host plainly"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn parse(s: &str) -> Result<Template, TemplateError> {
        Template::parse(s, &Params::default())
    }

    fn ctx<'a>(fields: &'a Fields<'a>) -> Ctx<'a> {
        Ctx {
            fields,
            timestamp: Utc
                .with_ymd_and_hms(2026, 11, 25, 10, 0, 0)
                .single()
                .unwrap_or_default(),
        }
    }

    #[test]
    fn braces_escape_and_errors_point() {
        let t = parse("a{{b}}c").unwrap();
        assert_eq!(t.as_literal().as_deref(), Some("a{b}c"));
        assert_eq!(parse("ab}c").unwrap_err().at, 2);
        assert_eq!(parse("ab{click_id").unwrap_err().at, 2);
        assert!(parse("{x|upper}").unwrap_err().message.contains("|json"));
        assert!(parse("{timestamp.millis}")
            .unwrap_err()
            .message
            .contains("{timestamp.unix_ms}"));
        assert!(parse("{params.nope}")
            .unwrap_err()
            .message
            .contains("[params]"));
    }

    #[test]
    fn url_values_are_percent_encoded_and_missing_is_empty() {
        let f = json!({"a": "x y&z=1/é", "n": 9.5})
            .as_object()
            .cloned()
            .unwrap();
        let t = parse("https://h/p?a={a}&n={n}&m={missing}").unwrap();
        let f = Fields::all(&f);
        let (s, complete) = t.render_text(&ctx(&f), true);
        assert_eq!(s, "https://h/p?a=x%20y%26z%3D1%2F%C3%A9&n=9.5&m=");
        assert!(!complete);
    }

    #[test]
    fn single_placeholder_keeps_type_and_missing_is_omitted() {
        let f = json!({"v": 9.99, "o": {"k": 1}})
            .as_object()
            .cloned()
            .unwrap();
        let f = Fields::all(&f);
        let c = ctx(&f);
        assert_eq!(parse("{v}").unwrap().render_json(&c), Some(json!(9.99)));
        assert_eq!(
            parse("v={v}").unwrap().render_json(&c),
            Some(json!("v=9.99"))
        );
        assert_eq!(parse("{nope}").unwrap().render_json(&c), None);
        assert_eq!(parse("x{nope}").unwrap().render_json(&c), None);
        assert_eq!(
            parse("{o|json}").unwrap().render_json(&c),
            Some(json!("{\"k\":1}"))
        );
        assert_eq!(
            parse("{nope|json}").unwrap().render_json(&c),
            Some(json!("{}"))
        );
        assert_eq!(
            parse("{timestamp.unix}").unwrap().render_json(&c),
            Some(json!(1795600800))
        );
        assert_eq!(
            parse("{timestamp.datetime_ms}|{timestamp.datetime_offset}|{timestamp.iso}|{timestamp.unix_ms}")
                .unwrap()
                .render_json(&c),
            Some(json!("2026-11-25 10:00:00.000|2026-11-25 10:00:00+00:00|2026-11-25T10:00:00Z|1795600800000"))
        );
    }

    #[test]
    fn url_checks() {
        let ok = |s: &str| check_url(s, &parse(s).unwrap());
        assert!(ok("https://a.example/p?x={click_id}").is_ok());
        assert!(ok("http://127.0.0.1:9999/p").is_ok());
        assert!(ok("http://[::1]:80/").is_ok());
        assert!(ok("ftp://a.example/").is_err());
        assert!(ok("https:///p").is_err());
        assert!(ok("https://{host}/p").unwrap_err().message.contains("host"));
        assert!(ok("https://a.example:99999/").is_err());
        assert!(ok("https://a.example/p q").is_err());
        assert!(ok("https://user@a.example/p").is_ok());
        assert!(ok("https://A.Example/p").is_ok());
        assert!(ok("https://a.example:0/").is_err());
        let e = ok("https://a.example:99999/").unwrap_err();
        assert!(e.message.contains("invalid port `99999`"), "{}", e.message);
        let e = ok("http://[::1/").unwrap_err();
        assert!(e.message.contains("malformed IPv6"), "{}", e.message);
        let e = ok("https://a b.example/").unwrap_err();
        assert!(e.message.contains("a b.example"), "{}", e.message);
        // A name the sender would change (IDNA) is refused: write what is sent.
        let e = ok("https://bücher.example/").unwrap_err();
        assert!(e.message.contains("xn--"), "{}", e.message);
    }

    #[test]
    fn url_check_reads_the_host_as_the_sender_does() {
        let ok = |s: &str| check_url(s, &parse(s).unwrap());
        // what a human reads as partner.example is 169.254.169.254 to the sender
        let e = ok("http://169.254.169.254\\@partner.example/").unwrap_err();
        assert!(e.message.contains("backslash"), "{}", e.message);
        assert_eq!(e.at, 22);
        // 127.0.0.1 written as one number
        let e = ok("http://2130706433/p").unwrap_err();
        assert!(e.message.contains("127.0.0.1"), "{}", e.message);
        assert!(ok("http://0x7f.1/p").is_err());
    }
}
