//! `[destination]`: where and how a partner is called (preset, URL, method, format,
//! headers) and the delivery settings (rate limit, timeout, retry, concurrency,
//! signing secret, OAuth). One reader per concern; `finish` is the caller's.

use std::time::Duration;

use crate::outbound::{DeliverySettings, Method, RateLimit, RetrySettings};
use crate::toml_reader::{parse_duration, Field, Section};

use super::super::presets::{self, Preset};
use super::super::template::{check_url, Params, Template};
use super::super::Format;
use super::body::{span_in, Checker};
use super::partner;

pub const URL_EXAMPLE: &str = "\"https://partner.example/postback?click={click_id}\"";

/// `preset = "..."`, when it names a known preset.
pub fn read_preset(field: Option<&Field<'_>>) -> Option<&'static Preset> {
    let f = field?;
    let s = f.as_str("\"meta_capi\"")?;
    let found = presets::find(s);
    if found.is_none() {
        f.error(format!(
            "unknown preset \"{s}\"; the presets are: {}",
            presets::NAMES.join(", ")
        ));
    }
    found
}

/// What `[destination]` says about the request itself, as written.
pub struct Request<'a> {
    pub url_field: Option<Field<'a>>,
    pub url: Option<Template>,
    pub method_field: Option<Field<'a>>,
    pub method: Option<Method>,
    pub format_field: Option<Field<'a>>,
    pub format: Option<Format>,
    pub headers: Vec<(String, Template)>,
}

pub fn read_request<'a>(dest: &Section<'a>, checker: &Checker<'_>, params: &Params) -> Request<'a> {
    let url_field = dest.require("url", URL_EXAMPLE);
    let url = url_field
        .as_ref()
        .and_then(|f| read_url(f, checker, params));
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
    let headers = read_headers(dest, checker, params);
    Request {
        url_field,
        url,
        method_field,
        method,
        format_field,
        format,
        headers,
    }
}

fn read_url(f: &Field<'_>, checker: &Checker<'_>, params: &Params) -> Option<Template> {
    let text = f.as_str(URL_EXAMPLE)?;
    let t = checker.template(text, f.span.clone(), params)?;
    if let Err(e) = check_url(text, &t) {
        let doc = checker.doc;
        doc.error(span_in(doc, f.span.clone(), text, e.at), e.message);
        return None;
    }
    Some(t)
}

fn read_headers(
    dest: &Section<'_>,
    checker: &Checker<'_>,
    params: &Params,
) -> Vec<(String, Template)> {
    let mut headers = Vec::new();
    let Some(sec) = dest.section("headers", "{ Authorization = \"Bearer ${PARTNER_TOKEN}\" }")
    else {
        return headers;
    };
    let doc = checker.doc;
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
        if ["host", "content-length", "transfer-encoding", "connection"].contains(&lower.as_str()) {
            doc.error(
                f.key_span.clone(),
                format!("header {key} is set by the relay itself; remove it"),
            );
            continue;
        }
        let Some(text) = f.as_str("\"Bearer ${PARTNER_TOKEN}\"") else {
            continue;
        };
        if let Some(t) = checker.template(text, f.span.clone(), params) {
            let bad_literal = t.segments.iter().any(|s| {
                matches!(s, super::super::template::Segment::Lit(l) if l.chars().any(|c| c.is_control() && c != '\t'))
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
    headers
}

/// Rate limit, timeout, retry, concurrency, signing secret and OAuth. Returns the
/// settings and the `oauth` field when written.
pub fn read_delivery<'a>(dest: &Section<'a>) -> (DeliverySettings, Option<Field<'a>>) {
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
    if let Some(n) = dest.int("concurrency", 1, 1024, "64") {
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
    (delivery, oauth_field)
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
