//! `postback-relay preview`: what each destination would receive, for humans.
//!
//! Owns: the text layout of a preview and the masking of secrets in it (header
//! values other than Content-Type/Accept; URL query values whose key looks secret).
//! Never: sends or stores anything; it only calls `Destination::evaluate`.

use std::fmt::Write as _;

use crate::event::Event;
use crate::outbound::OutboundRequest;

use super::{Destination, RuleSet};

const MASK: &str = "***";

/// `req` as a human may see it: every value the rule file took from the environment
/// masked wherever it stands (URL, headers, body), header values other than Content-Type/Accept masked,
/// and URL query values whose key looks secret masked.
pub fn masked(d: &Destination, req: &OutboundRequest) -> OutboundRequest {
    let mut out = req.clone();
    d.delivery.credentials.redact(&mut out);
    out.url = mask_url(&unmark(&out.url));
    for (name, value) in &mut out.headers {
        *value = mask_header(name, &unmark(value));
    }
    out.body = out.body.map(|b| unmark(&b));
    out
}

/// Replaces each credential marker (`\u{1}NAME\u{1}`) by the mask.
fn unmark(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, part) in text.split('\u{1}').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        } else {
            out.push_str(MASK);
        }
    }
    out
}

/// For each enabled destination, in name order: the exact request (secrets masked,
/// JSON bodies pretty-printed) or the reason the event is not sent there; then the
/// disabled ones.
pub fn preview(rules: &RuleSet, event: &Event) -> String {
    let mut out = String::new();
    for d in rules.destinations() {
        if !out.is_empty() {
            out.push('\n');
        }
        preview_one(&mut out, d, event, false);
    }
    for d in rules.disabled() {
        if !out.is_empty() {
            out.push('\n');
        }
        preview_one(&mut out, d, event, true);
    }
    if out.is_empty() {
        out.push_str("no destinations: the rules directory has no rule files\n");
    }
    out
}

/// The preview of one destination (enabled or disabled) by name; `None` when no rule
/// file has that name.
pub fn preview_named(rules: &RuleSet, event: &Event, name: &str) -> Option<String> {
    let mut out = String::new();
    if let Some(d) = rules.destinations().iter().find(|d| d.name == name) {
        preview_one(&mut out, d, event, false);
    } else {
        let d = rules.disabled().iter().find(|d| d.name == name)?;
        preview_one(&mut out, d, event, true);
    }
    Some(out)
}

fn preview_one(out: &mut String, d: &Destination, event: &Event, disabled: bool) {
    let _ = writeln!(out, "== {} ==", d.name);
    if disabled {
        let _ = writeln!(
            out,
            "disabled (enabled = false in its rule file): nothing is sent; while enabled it would be:"
        );
    }
    let r = match d.evaluate(event) {
        Ok(r) => r,
        Err(skip) => {
            let _ = writeln!(out, "not sent: {skip}");
            return;
        }
    };
    if let Some(max) = d.delivery.max_event_age {
        let age = chrono::Utc::now().signed_duration_since(event.timestamp);
        if age.num_seconds() > i64::try_from(max.as_secs()).unwrap_or(i64::MAX) {
            let _ = writeln!(
                out,
                "not sent: the event is {} days old and this partner takes events up to {} days old (it would be queued, then dead-lettered unsent); it would be:",
                age.num_days(),
                max.as_secs() / 86400
            );
        }
    }
    // Masked as `/ui` masks it: environment values wherever they stand.
    let req = &masked(d, &r.request);
    let _ = writeln!(out, "{} {}", req.method.as_str(), req.url);
    for (name, value) in &req.headers {
        let _ = writeln!(out, "{name}: {value}");
    }
    if !r.consent_dropped.is_empty() {
        let require = d
            .privacy
            .consent
            .as_ref()
            .map(|c| c.require.as_str())
            .unwrap_or("consent");
        let _ = writeln!(
            out,
            "(consent: {require} is not true, so these fields were dropped: {})",
            r.consent_dropped.join(", ")
        );
    }
    if let Some(body) = &req.body {
        out.push('\n');
        let pretty = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .filter(|_| d.format == super::Format::Json)
            .and_then(|v| serde_json::to_string_pretty(&v).ok());
        out.push_str(pretty.as_deref().unwrap_or(body));
        out.push('\n');
    }
}

fn mask_header(name: &str, value: &str) -> String {
    if name.eq_ignore_ascii_case("content-type") || name.eq_ignore_ascii_case("accept") {
        return value.to_string();
    }
    // Keep the auth scheme: "Bearer ***" tells more than "***".
    match value.split_once(' ') {
        Some((scheme, _))
            if ["bearer", "basic", "token"].contains(&scheme.to_ascii_lowercase().as_str()) =>
        {
            format!("{scheme} {MASK}")
        }
        _ => MASK.to_string(),
    }
}

fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "sig"
        || [
            "token",
            "key",
            "secret",
            "password",
            "passwd",
            "auth",
            "signature",
        ]
        .iter()
        .any(|s| k.contains(s))
}

/// `url` with its userinfo (`user:password@`) and secret-looking query values masked.
fn mask_url(url: &str) -> String {
    let url = mask_userinfo(url);
    let url = url.as_str();
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let Some((path, query)) = base.split_once('?') else {
        return url.to_string();
    };
    let masked: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if secret_key(k) && !v.is_empty() => format!("{k}={MASK}"),
            _ => pair.to_string(),
        })
        .collect();
    let mut out = format!("{path}?{}", masked.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// `scheme://user:password@host/...` as `scheme://***@host/...`.
fn mask_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{MASK}{}", &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_masked() {
        assert_eq!(
            mask_url("https://u:p4ss@h.example/p?x=1"),
            "https://***@h.example/p?x=1"
        );
        assert_eq!(mask_url("https://h.example/a@b"), "https://h.example/a@b");
    }

    #[test]
    fn secret_query_values_are_masked() {
        assert_eq!(
            mask_url("https://h/p?access_token=abc&click=1&api_key=k&sig=s&x=#f"),
            "https://h/p?access_token=***&click=1&api_key=***&sig=***&x=#f"
        );
        assert_eq!(mask_url("https://h/p"), "https://h/p");
    }

    #[test]
    fn credential_markers_become_masks() {
        assert_eq!(
            unmark("https://h/\u{1}PIXEL\u{1}/events"),
            "https://h/***/events"
        );
        assert_eq!(unmark("plain"), "plain");
    }

    #[test]
    fn header_values_are_masked_except_content_type() {
        assert_eq!(mask_header("Authorization", "Bearer s3cr3t"), "Bearer ***");
        assert_eq!(mask_header("developer-token", "abc"), "***");
        assert_eq!(
            mask_header("Content-Type", "application/json"),
            "application/json"
        );
    }
}
