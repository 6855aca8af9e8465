//! `GET /ui`: the preview page, for marketers without a terminal. Behind the admin
//! token or the preview token (`[admin] preview_token`): a login form sets an
//! HttpOnly, SameSite=Strict cookie (no token in URLs).
//!
//! Owns: the login (`POST /ui/login`, rate-limited per address by `auth::Attempts`;
//! `POST /ui/logout`, which ends the session server-side), the session cookie
//! (`auth::Sessions`: expiry, random ID and their HMAC under the token it logged in
//! with, which is its role; a new token or a restart ends every session), the page
//! itself (`ui.html`, built into the binary), and its JSON calls: `GET
//! /ui/api/state` (the login's role, destinations, the rule files with errors as the
//! rules in force know them), `POST /ui/api/preview` (one event through one
//! destination, or through a pasted draft rule that is never saved) and `POST
//! /ui/api/replay` (a destination's dead letters; the admin login only, 403 for a
//! preview login). Never: stores or logs what the page is given (events, drafts);
//! shows a secret (requests are masked by `rules::masked`).

use std::net::IpAddr;
use std::path::PathBuf;

use super::body::{read_limited, ReadError, TimedBody};
use bytes::Bytes;
use chrono::Utc;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::auth::{role_of, Role, Sessions};
use super::routes::{json_response, HttpResponse};
use super::Edge;
use crate::event::Event;
use crate::relay::Relay;
use crate::rules::{compile_draft, masked, Destination, Explanation, RuleSet};
use crate::store::ReplaySelector;

const PAGE: &str = include_str!("ui.html");
const EXAMPLE_EVENT: &str = include_str!("../../examples/purchase.json");
const COOKIE_NAME: &str = "pbr_ui";
/// How long a login lasts.
const SESSION_SECS: i64 = 12 * 3600;
/// Largest body the page may send (an event plus a draft rule).
const MAX_BODY: usize = 256 * 1024;

/// Serves every `/ui` path. `secure`: the listener speaks TLS (the cookie gets
/// `Secure`).
pub async fn handle(
    edge: &Edge,
    ip: IpAddr,
    req: Request<TimedBody>,
    secure: bool,
) -> HttpResponse {
    let relay = &edge.relay;
    let Some(token) = relay.config.admin_token.clone() else {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "the preview page is off: it needs the admin API; set [admin] token in the config"}),
        );
    };
    let preview_token = relay.config.admin_preview_token.clone();
    let tokens = Tokens {
        admin: &token,
        preview: preview_token.as_deref(),
    };
    let path = req.uri().path().to_string();
    let role = session_role(&edge.sessions, &req, &tokens);
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/ui" | "/ui/") if role.is_some() => html(StatusCode::OK, PAGE.to_string()),
        (Method::GET, "/ui" | "/ui/") => html(StatusCode::OK, login_page(None)),
        (Method::POST, "/ui/login") => match edge.attempts.check(ip) {
            Err(wait) => {
                let mut resp = html(
                    StatusCode::TOO_MANY_REQUESTS,
                    login_page(Some(
                        "Too many wrong tokens from this address: wait a minute.",
                    )),
                );
                resp.headers_mut()
                    .insert(hyper::header::RETRY_AFTER, HeaderValue::from(wait));
                resp
            }
            Ok(()) => login(edge, ip, req, &tokens, secure).await,
        },
        (Method::POST, "/ui/logout") => {
            let now = Utc::now().timestamp();
            for value in session_cookies(&req) {
                edge.sessions.revoke(value, tokens.admin, now);
                if let Some(p) = tokens.preview {
                    edge.sessions.revoke(value, p, now);
                }
            }
            redirect_with_cookie(&format!(
                "{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0"
            ))
        }
        (_, p) if p.starts_with("/ui/api/") => match role {
            Some(role) => api(edge, role, req).await,
            None => json_response(
                StatusCode::UNAUTHORIZED,
                json!({"error": "not logged in: open /ui and enter the admin token or the preview token"}),
            ),
        },
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no such page: {} {path}", req.method())}),
        ),
    }
}

/// The page's JSON calls, for a logged-in `role`.
async fn api(edge: &Edge, role: Role, req: Request<TimedBody>) -> HttpResponse {
    let relay = &edge.relay;
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/ui/api/state") => json_response(StatusCode::OK, state(relay, role).await),
        (Method::GET, "/ui/api/recent") => json_response(
            StatusCode::OK,
            super::admin::recent(edge, &super::admin::query(&req)),
        ),
        (Method::POST, "/ui/api/preview") => match read_json(req).await {
            Ok(v) => preview(relay, &v),
            Err(resp) => resp,
        },
        (Method::POST, "/ui/api/replay") if role == Role::Preview => {
            super::admin::preview_forbidden("replaying dead letters")
        }
        (Method::POST, "/ui/api/replay") => match read_json(req).await {
            Ok(v) => match v["destination"].as_str() {
                Some(d) => {
                    super::admin::replay(relay, ReplaySelector::Destination(d.to_string())).await
                }
                None => json_response(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "say which destination's dead letters to replay: {\"destination\": \"...\"}"}),
                ),
            },
            Err(resp) => resp,
        },
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no such page: {} {path}", req.method())}),
        ),
    }
}

/// The tokens a `/ui` login may use.
struct Tokens<'a> {
    admin: &'a str,
    preview: Option<&'a str>,
}

fn html(status: StatusCode, body: String) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    resp
}

fn login_page(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p id=\"login-error\" class=\"error\">{e}</p>"))
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>postback-relay: log in</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28em;margin:4em auto;padding:0 1em}}
input{{font:inherit;padding:.4em;width:100%;box-sizing:border-box}}button{{font:inherit;padding:.4em 1.2em;margin-top:.8em}}
.error{{color:#a00}}</style></head>
<body><h1>Rule preview</h1>
<p>Enter the relay's admin token (<code>[admin] token</code> in the config), or its
preview token (<code>[admin] preview_token</code>: look and preview only).</p>
{error}<form method="post" action="/ui/login">
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus>
<button id="login" type="submit">Log in</button></form></body></html>"#
    )
}

async fn login(
    edge: &Edge,
    ip: IpAddr,
    req: Request<TimedBody>,
    tokens: &Tokens<'_>,
    secure: bool,
) -> HttpResponse {
    let mut body = req.into_body();
    let body = match read_limited(&mut body, 4096, 0).await {
        Ok(b) => b,
        Err(e) => {
            let (status, why) = match e {
                ReadError::Timeout => (
                    StatusCode::REQUEST_TIMEOUT,
                    "The form did not arrive in time.",
                ),
                ReadError::TooLarge => (StatusCode::BAD_REQUEST, "The form was too large."),
                ReadError::Broken => (StatusCode::BAD_REQUEST, "The form could not be read."),
            };
            let mut resp = html(status, login_page(Some(why)));
            // The body was not read to its end: the connection cannot carry another.
            resp.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
    };
    let given = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let token = match role_of(&given, tokens.admin, tokens.preview) {
        Some(Role::Admin) => tokens.admin,
        Some(Role::Preview) => tokens.preview.unwrap_or(tokens.admin),
        None => {
            edge.attempts.failed(ip, "ui login");
            return html(
                StatusCode::UNAUTHORIZED,
                login_page(Some(
                    "Wrong token: nothing was opened. Check [admin] token (or preview_token) in the config.",
                )),
            );
        }
    };
    let expires = Utc::now().timestamp() + SESSION_SECS;
    // The session's MAC is under the token it logged in with: that is its role.
    let value = edge.sessions.mint(token, expires);
    redirect_with_cookie(&format!(
        "{COOKIE_NAME}={value}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={SESSION_SECS}{}",
        if secure { "; Secure" } else { "" }
    ))
}

fn redirect_with_cookie(cookie: &str) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    let h = resp.headers_mut();
    h.insert(LOCATION, HeaderValue::from_static("/ui"));
    if let Ok(v) = HeaderValue::from_str(cookie) {
        h.insert(SET_COOKIE, v);
    }
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The values of the request's session cookies.
fn session_cookies(req: &Request<TimedBody>) -> Vec<&str> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))
        .collect()
}

/// The role of the request's live session cookie: made with the admin token, or
/// with the preview token.
fn session_role(
    sessions: &Sessions,
    req: &Request<TimedBody>,
    tokens: &Tokens<'_>,
) -> Option<Role> {
    let now = Utc::now().timestamp();
    let cookies = session_cookies(req);
    let made_with = |token: &str| {
        cookies
            .iter()
            .any(|value| sessions.valid(value, token, now).is_some())
    };
    if made_with(tokens.admin) {
        Some(Role::Admin)
    } else if tokens.preview.is_some_and(made_with) {
        Some(Role::Preview)
    } else {
        None
    }
}

/// A JSON body (the page always sends `Content-Type: application/json`, which a
/// cross-site form cannot).
async fn read_json(req: Request<TimedBody>) -> Result<Value, HttpResponse> {
    let bad = |error: String| json_response(StatusCode::BAD_REQUEST, json!({"error": error}));
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return Err(bad("send Content-Type: application/json".into()));
    }
    let mut body = req.into_body();
    let body = read_limited(&mut body, MAX_BODY, 0)
        .await
        .map_err(|e| match e {
            ReadError::Timeout => json_response(
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": "the body did not arrive within body_read_timeout"}),
            ),
            _ => bad(format!("body unreadable or over {} KiB", MAX_BODY / 1024)),
        })?;
    serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON: {e}")))
}

/// The destinations to pick from (each with its state), the rule files with errors
/// as the rules in force know them (the same as `/admin/destinations`, `/metrics`
/// and the log), and example events.
async fn state(relay: &Relay, role: Role) -> Value {
    let counts = relay.store.counts().await.unwrap_or_default();
    let dead = |name: &str| {
        counts
            .iter()
            .find(|c| c.destination == name)
            .map_or(0, |c| c.dead)
    };
    let rules = relay.rules.current();
    let list = |ds: &[std::sync::Arc<Destination>], enabled: bool| -> Vec<Value> {
        ds.iter()
            .map(|d| {
                let broken = rules.broken_file(&d.name).is_some();
                json!({"name": d.name, "enabled": enabled, "broken": broken,
                       "file": file_name(&d.file), "description": d.description,
                       "method": d.method.as_str(), "preset": d.preset,
                       "dlq_size": dead(&d.name)})
            })
            .collect()
    };
    let mut destinations = list(rules.destinations(), true);
    destinations.extend(list(rules.disabled(), false));
    json!({
        "role": role.as_str(),
        "destinations": destinations,
        "broken": rules.broken().iter().map(super::admin::broken_json).collect::<Vec<_>>(),
        "errors": diagnostics(&rules.errors()),
        "warnings": diagnostics(rules.warnings()),
        "examples": examples(),
    })
}

/// A rule file's name without its directory (`meta.toml`).
fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn diagnostics(d: &[crate::diag::Diagnostic]) -> Vec<String> {
    d.iter().map(|x| x.to_string()).collect()
}

/// The repository's example event, with and without consent, and as an install.
fn examples() -> Vec<Value> {
    let mut base: Value = serde_json::from_str(EXAMPLE_EVENT).unwrap_or_else(|_| json!({}));
    if let Some(o) = base.as_object_mut() {
        // Partners judge an event's age by its time: a fresh example is always sent.
        o.shift_remove("timestamp");
    }
    let mut no_consent = base.clone();
    no_consent["consent"]["ad_user_data"] = json!(false);
    no_consent["event_id"] = json!("evt_no_consent");
    let mut install = base.clone();
    install["event_name"] = json!("install");
    install["event_id"] = json!("evt_install");
    vec![
        json!({"name": "purchase", "event": base}),
        json!({"name": "purchase without consent", "event": no_consent}),
        json!({"name": "install", "event": install}),
    ]
}

/// `{"destination": NAME, "event": {...}, "draft": "TOML"?}`: what that partner would
/// receive, or why not. With `draft`, the draft is compiled in place of the file
/// (never saved); its errors come back located.
fn preview(relay: &Relay, v: &Value) -> HttpResponse {
    let bad = |error: String| json_response(StatusCode::BAD_REQUEST, json!({"error": error}));
    let name = v["destination"].as_str().unwrap_or("").to_string();
    let event = match Event::from_value(v["event"].clone(), Utc::now()) {
        Ok(e) => e,
        Err(e) => return bad(format!("the event is not valid: {e}")),
    };
    let rules = relay.rules.current();
    if v["all"] == json!(true) {
        return json_response(StatusCode::OK, everywhere(&rules, &event));
    }
    match v["draft"].as_str().filter(|d| !d.trim().is_empty()) {
        Some(draft) => match draft_name(v["draft_name"].as_str().unwrap_or("")) {
            Ok(draft_name) => preview_draft(relay, &draft_name, draft, &event),
            Err(e) => bad(e),
        },
        None => match (rules.find(&name), rules.broken_file(&name)) {
            (Some(d), _) => json_response(StatusCode::OK, in_force(&rules, d, &event)),
            (None, Some(b)) => json_response(
                StatusCode::OK,
                json!({"destination": name, "source": "rules", "errors": [], "warnings": [],
                       "sent": false, "banner": banner_broken(b),
                       "reason": format!("its rule file has errors: {}", b.consequence())}),
            ),
            (None, None) => bad(format!("no destination named \"{name}\"")),
        },
    }
}

/// A destination of the rules in force's verdict, with the banner a disabled or
/// broken one gets: nothing is sent, and why.
fn in_force(rules: &RuleSet, d: &Destination, event: &Event) -> Value {
    let mut v = verdict(d, event, "rules", Vec::new());
    v["file"] = json!(file_name(&d.file));
    if rules.get(&d.name).is_none() {
        v["enabled"] = json!(false);
        v["banner"] = json!(format!(
            "Nothing is sent to {}, because its rule file {} says enabled = false. What it would get once enabled is shown below.",
            d.name,
            file_name(&d.file)
        ));
        let disabled = "disabled (enabled = false): nothing is sent";
        if v["sent"] == json!(true) {
            v["sent"] = json!(false);
            v["would_send"] = json!(true);
            v["reason"] = json!(disabled);
        } else {
            let skip = v["reason"].as_str().unwrap_or("").to_string();
            v["reason"] = json!(format!("{disabled}; once enabled, not sent either: {skip}"));
        }
    } else {
        v["enabled"] = json!(true);
    }
    if let Some(b) = rules.broken_file(&d.name) {
        v["banner"] = json!(format!(
            "The rule file {} has errors (listed above), so its text on disk is not in force: the last good version is, and that is what is previewed here.",
            file_name(&b.file)
        ));
    }
    v
}

fn banner_broken(b: &crate::rules::Broken) -> String {
    format!(
        "Nothing is sent to {}, because its rule file {} has errors (listed above) and no good version of it loaded since the relay started. Paste it as a draft to check a fix.",
        b.name,
        file_name(&b.file)
    )
}

/// The event at every destination: sent or why not, and, when it reaches none, why.
fn everywhere(rules: &RuleSet, event: &Event) -> Value {
    let mut list: Vec<Value> = rules
        .destinations()
        .iter()
        .chain(rules.disabled())
        .map(|d| {
            let v = in_force(rules, d, event);
            json!({"destination": d.name, "sent": v["sent"], "reason": v["reason"],
                   "banner": v["banner"]})
        })
        .collect();
    for b in rules.broken().iter().filter(|b| !b.last_good) {
        list.push(
            json!({"destination": b.name, "sent": false, "banner": banner_broken(b),
                         "reason": format!("its rule file has errors: {}", b.consequence())}),
        );
    }
    let sent = list.iter().filter(|v| v["sent"] == json!(true)).count();
    let summary = match (sent, list.len()) {
        (0, 0) => "This event reaches no destination: there is no rule file.".to_string(),
        (0, _) => "This event reaches no destination: each one's reason is below.".to_string(),
        (n, _) => format!("This event is sent to {n} destination(s)."),
    };
    json!({"all": true, "summary": summary, "sent_to": sent, "verdicts": list})
}

/// A draft's own file name (`meta-v2.toml`; empty: `draft.toml`), as the destination
/// name it is previewed under.
fn draft_name(given: &str) -> Result<String, String> {
    let given = given.trim();
    let stem = given.strip_suffix(".toml").unwrap_or(given);
    if stem.is_empty() {
        return Ok("draft".to_string());
    }
    if stem.len() > 64
        || !stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("the draft's file name: letters, digits, `_` and `-`, at most 64, then .toml (e.g. meta-v2.toml)".into());
    }
    Ok(stem.to_string())
}

fn preview_draft(relay: &Relay, name: &str, draft: &str, event: &Event) -> HttpResponse {
    let path = PathBuf::from("draft").join(format!("{name}.toml"));
    let (result, warnings) = compile_draft(
        &path,
        draft.to_string(),
        relay.rules.env(),
        relay.rules.options(),
    );
    let file = format!("{name}.toml");
    match result {
        Ok(d) => {
            let mut v = verdict(&d, event, "draft", diagnostics(&warnings));
            v["file"] = json!(file);
            json_response(StatusCode::OK, v)
        }
        Err(errors) => json_response(
            StatusCode::OK,
            json!({"destination": name, "file": file, "source": "draft", "errors": diagnostics(&errors),
                   "warnings": diagnostics(&warnings)}),
        ),
    }
}

/// One destination's verdict as the page shows it.
fn verdict(d: &Destination, event: &Event, source: &str, warnings: Vec<String>) -> Value {
    let Explanation {
        when_failed,
        consent,
        fields,
        outcome,
    } = d.explain(event);
    let mut out = json!({
        "destination": d.name,
        "source": source,
        "errors": [],
        "warnings": warnings,
        "when_failed": when_failed.map(|w| json!({
            "reason": w.reason,
            "at": format!("{}:{}:{}", w.file.display(), w.line, w.col),
        })),
        "consent": consent.map(|(field, given)| json!({"field": field, "given": given})),
        "fields": fields.iter().map(|(p, f)| json!({"path": p, "fate": f.as_str()})).collect::<Vec<_>>(),
    });
    match outcome {
        Ok(r) => {
            let req = masked(d, &r.request);
            let body = req.body.as_deref().map(|b| {
                serde_json::from_str::<Value>(b)
                    .ok()
                    .and_then(|v| serde_json::to_string_pretty(&v).ok())
                    .unwrap_or_else(|| b.to_string())
            });
            out["sent"] = json!(true);
            out["request"] = json!({"method": req.method.as_str(), "url": req.url,
                                    "headers": req.headers, "body": body});
            out["consent_dropped"] = json!(r.consent_dropped);
        }
        Err(skip) => {
            out["sent"] = json!(false);
            out["reason"] = json!(skip.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_are_valid_events() {
        for e in examples() {
            assert!(
                Event::from_value(e["event"].clone(), Utc::now()).is_ok(),
                "{e}"
            );
        }
    }
}
