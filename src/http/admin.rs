//! The admin API, behind `Authorization: Bearer <token>`: destinations, dead
//! letters, replay, rule reload. The preview token (`[admin] preview_token`) may read
//! only `GET /admin/destinations` and `GET /admin/recent` (403 elsewhere).
//!
//! Owns: authentication of admin calls and their JSON shapes. Never: exposes a
//! queued request (URLs and headers can hold partner secrets) or event data.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::body::{read_limited, ReadError, TimedBody};
use chrono::Utc;
use hyper::header::AUTHORIZATION;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};

use super::auth::{role_of, Role};
use super::routes::{json_response, HttpResponse};
use super::Edge;
use crate::relay::Relay;
use crate::store::{DeadLetter, ReplaySelector};

/// 429 to an address that sent too many wrong admin tokens.
pub fn too_many_attempts(wait: u64) -> HttpResponse {
    let mut resp = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        json!({"error": "too many wrong admin tokens from this address; retry later"}),
    );
    resp.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from(wait),
    );
    resp
}

/// The bearer token of an `Authorization` header; the scheme is case-insensitive
/// (RFC 9110: `bearer`, `Bearer` and `BEARER` are the same).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The role of the token `req` carries (`Authorization: Bearer`) from an address not
/// locked out; else the answer to send (404 without a token configured, 429, 401). A
/// wrong token is counted against `ip`.
pub fn authenticate<B>(
    edge: &Edge,
    ip: IpAddr,
    req: &Request<B>,
) -> Result<Role, Box<HttpResponse>> {
    let config = &edge.relay.config;
    let Some(token) = config.admin_token.as_deref() else {
        return Err(Box::new(json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "the admin API is off; set [admin] token in the config to turn it on"}),
        )));
    };
    if let Err(wait) = edge.attempts.check(ip) {
        return Err(Box::new(too_many_attempts(wait)));
    }
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or("");
    match role_of(given, token, config.admin_preview_token.as_deref()) {
        Some(role) => Ok(role),
        None => {
            edge.attempts.failed(ip, "admin");
            Err(Box::new(json_response(
                StatusCode::UNAUTHORIZED,
                json!({"error": "missing or wrong admin token (Authorization: Bearer <token>)"}),
            )))
        }
    }
}

/// `None` when `req` carries the admin token (not the preview token); else the
/// answer to send (`authenticate`'s, or 403).
pub fn refusal<B>(edge: &Edge, ip: IpAddr, req: &Request<B>) -> Option<HttpResponse> {
    match authenticate(edge, ip, req) {
        Ok(Role::Admin) => None,
        Ok(Role::Preview) => Some(preview_forbidden(req.uri().path())),
        Err(resp) => Some(*resp),
    }
}

/// 403 for the preview token (or a preview-only `/ui` login) on `what`.
pub fn preview_forbidden(what: &str) -> HttpResponse {
    json_response(
        StatusCode::FORBIDDEN,
        json!({"error": format!("the preview token may look and preview only: {what} needs the admin token ([admin] token)")}),
    )
}

/// What the preview token may call: the destinations and the live view.
fn preview_may(method: &Method, path: &str) -> bool {
    *method == Method::GET && matches!(path, "/admin/destinations" | "/admin/recent")
}

pub async fn handle(edge: &Edge, ip: IpAddr, req: Request<TimedBody>) -> HttpResponse {
    let relay = &edge.relay;
    let role = match authenticate(edge, ip, &req) {
        Ok(role) => role,
        Err(resp) => return *resp,
    };
    let path = req.uri().path().to_string();
    if role == Role::Preview && !preview_may(req.method(), &path) {
        return preview_forbidden(&format!("{} {path}", req.method()));
    }
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/admin/destinations") => destinations(relay).await,
        (Method::GET, "/admin/recent") => json_response(StatusCode::OK, recent(edge, &query(&req))),
        (Method::GET, "/admin/dlq") => dlq(relay, &query(&req)).await,
        (Method::POST, "/admin/dlq/replay") => match replay_request(req).await {
            Ok(selector) => replay(relay, selector).await,
            Err(resp) => resp,
        },
        (Method::POST, "/admin/reload") => {
            // Reading and parsing the files is blocking work: off the async workers.
            let r = relay.clone();
            match tokio::task::spawn_blocking(move || reload(&r)).await {
                Ok(resp) => resp,
                Err(e) => json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": format!("reload did not finish: {e}")}),
                ),
            }
        }
        (Method::GET, p) if p.starts_with("/admin/deliveries/") => {
            delivery(relay, &p["/admin/deliveries/".len()..]).await
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no such admin endpoint: {} {path}", req.method())}),
        ),
    }
}

/// `GET /admin/recent[?destination=NAME][&limit=N]`: the live view, newest first.
pub fn recent(edge: &Edge, query: &BTreeMap<String, String>) -> Value {
    use super::recent::{CAPACITY, PER_SECOND};
    let limit = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(100usize)
        .min(CAPACITY);
    let destination = query.get("destination").map(String::as_str);
    json!({
        "events": edge.recent.list(destination, limit),
        "capacity": CAPACITY,
        "recorded_per_second": PER_SECOND,
    })
}

pub fn query(req: &Request<TimedBody>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .map(|q| {
            q.split('&')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    let v = percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .to_string();
                    (k.to_string(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn dlq(relay: &Relay, query: &BTreeMap<String, String>) -> HttpResponse {
    let limit = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(1000usize);
    match relay
        .store
        .dlq_list(query.get("destination").map(String::as_str), limit)
        .await
    {
        Ok(list) => json_response(
            StatusCode::OK,
            json!({"dead_letters": list.iter().map(dead_letter_json).collect::<Vec<_>>()}),
        ),
        Err(e) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": e.to_string()}),
        ),
    }
}

/// The replay selector of a `POST /admin/dlq/replay` body, or the 400 to answer.
async fn replay_request(req: Request<TimedBody>) -> Result<ReplaySelector, HttpResponse> {
    let bad = |error: String| json_response(StatusCode::BAD_REQUEST, json!({"error": error}));
    let mut body = req.into_body();
    let body = read_limited(&mut body, 64 * 1024, 0)
        .await
        .map_err(|e| match e {
            ReadError::Timeout => json_response(
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": "the body did not arrive within body_read_timeout"}),
            ),
            _ => bad("body unreadable or over 64KiB".into()),
        })?;
    let v: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON: {e}")))?
    };
    replay_selector(&v).map_err(bad)
}

/// `GET /admin/deliveries/{id}`: where one delivery stands, never its payload.
async fn delivery(relay: &Relay, id: &str) -> HttpResponse {
    match relay.store.lookup(id).await {
        Ok(Some(status)) => {
            // Times as everywhere in the admin API: RFC 3339, UTC.
            let mut v = json!(status);
            v["created_at"] = ms_to_iso(Some(status.created_at));
            v["last_attempt_at"] = ms_to_iso(status.last_attempt_at);
            v["next_attempt_at"] = ms_to_iso(status.next_attempt_at);
            v["finished_at"] = ms_to_iso(status.finished_at);
            if let Some(p) = &status.partner_status {
                v["partner_status"]["checked_at"] = ms_to_iso(p.checked_at);
            }
            json_response(StatusCode::OK, v)
        }
        Ok(None) => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "no such delivery (unknown ID, or delivered/dead longer ago than the dead-letter retention)"}),
        ),
        Err(e) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": e.to_string()}),
        ),
    }
}

/// `POST /admin/reload`: 200 when every rule file is valid; 422 when a file has
/// errors (the valid files applied all the same; each file with errors keeps its
/// last good version or stays out, as `broken` says) or nothing could be applied.
fn reload(relay: &Relay) -> HttpResponse {
    match relay.reload_rules() {
        Ok(names) => {
            let rules = relay.rules.current();
            let rule_errors: Vec<String> = rules.errors().iter().map(|d| d.to_string()).collect();
            let broken: Vec<Value> = rules.broken().iter().map(broken_json).collect();
            let (status, word) = if broken.is_empty() {
                (StatusCode::OK, "reloaded")
            } else {
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "reloaded except the rule files with errors: each keeps its last good version, or stays out if none loaded",
                )
            };
            json_response(
                status,
                json!({"status": word, "destinations": names, "broken": broken,
                       "rule_errors": rule_errors, "errors": rule_errors}),
            )
        }
        Err(errors) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({
                "status": "refused; the rules in force stay in force",
                "errors": errors.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            }),
        ),
    }
}

/// A rule file with errors as the admin API and `/ui` show it.
pub fn broken_json(b: &crate::rules::Broken) -> Value {
    json!({
        "name": b.name,
        "file": b.file.display().to_string(),
        "last_good_in_force": b.last_good,
        "consequence": b.consequence(),
        "rule_errors": b.errors.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
    })
}

/// `{"all": true}`, `{"destination": "x"}` or `{"id": "dlv_..."}`.
pub fn replay_selector(v: &Value) -> Result<ReplaySelector, String> {
    if let Some(id) = v.get("id").and_then(Value::as_str) {
        return Ok(ReplaySelector::Id(id.to_string()));
    }
    if let Some(d) = v.get("destination").and_then(Value::as_str) {
        return Ok(ReplaySelector::Destination(d.to_string()));
    }
    if v.get("all").and_then(Value::as_bool) == Some(true) {
        return Ok(ReplaySelector::All);
    }
    Err("say which dead letters to replay: {\"id\": \"...\"}, {\"destination\": \"...\"} or {\"all\": true}".into())
}

pub async fn replay(relay: &Relay, selector: ReplaySelector) -> HttpResponse {
    let unavailable = |e: crate::store::StoreError| {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": e.to_string()}),
        )
    };
    // A dead letter goes back only to a destination that has a rule file: one whose
    // file was removed has no worker, and its replayed deliveries would sit in a
    // queue nothing sends (counted against max_queued).
    let rules = relay.rules.current();
    let gone = |d: &str| {
        json_response(
            StatusCode::CONFLICT,
            json!({"error": format!("the destination {d} has no rule file in the rules directory: its dead letters would wait in a queue nothing sends; restore rules/{d}.toml, then replay")}),
        )
    };
    let now = relay.deliverer.clock().now_ms();
    let (replayed, skipped) = match selector {
        ReplaySelector::Destination(d) if !rules.has_file(&d) => return gone(&d),
        ReplaySelector::Id(id) => match relay.store.lookup(&id).await {
            Ok(Some(st)) if !rules.has_file(&st.destination) => return gone(&st.destination),
            Ok(_) => match relay.store.dlq_replay(ReplaySelector::Id(id), now).await {
                Ok(n) => (n, Vec::new()),
                Err(e) => return unavailable(e),
            },
            Err(e) => return unavailable(e),
        },
        ReplaySelector::All => {
            let counts = match relay.store.counts().await {
                Ok(c) => c,
                Err(e) => return unavailable(e),
            };
            let mut n = 0;
            let mut skipped = Vec::new();
            for c in counts.into_iter().filter(|c| c.dead > 0) {
                if !rules.has_file(&c.destination) {
                    skipped.push(c.destination);
                    continue;
                }
                match relay
                    .store
                    .dlq_replay(ReplaySelector::Destination(c.destination), now)
                    .await
                {
                    Ok(k) => n += k,
                    Err(e) => return unavailable(e),
                }
            }
            (n, skipped)
        }
        other => match relay.store.dlq_replay(other, now).await {
            Ok(n) => (n, Vec::new()),
            Err(e) => return unavailable(e),
        },
    };
    for d in rules.destinations() {
        relay.deliverer.notify(&d.name);
    }
    json_response(
        StatusCode::OK,
        json!({"replayed": replayed, "skipped_destinations": skipped}),
    )
}

pub fn dead_letter_json(d: &DeadLetter) -> Value {
    let dl = &d.delivery;
    json!({
        "id": dl.id,
        "destination": dl.destination,
        "attempts": dl.attempts,
        "created_at": ms_to_iso(Some(dl.created_at)),
        "first_attempt_at": ms_to_iso(dl.first_attempt_at),
        "last_attempt_at": ms_to_iso(dl.last_attempt_at),
        "dead_at": ms_to_iso(Some(d.dead_at)),
        "last_status": dl.last_status,
        "last_error": dl.last_error,
    })
}

fn ms_to_iso(ms: Option<i64>) -> Value {
    ms.and_then(chrono::DateTime::<Utc>::from_timestamp_millis)
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

async fn destinations(relay: &Relay) -> HttpResponse {
    let counts = match relay.store.counts().await {
        Ok(c) => c,
        Err(e) => {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": e.to_string()}),
            )
        }
    };
    let rules = relay.rules.current();
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    let entry = |name: &str, state: &str| {
        json!({"name": name, "enabled": state == "enabled", "state": state,
               "queue_depth": 0, "dlq_size": 0, "circuit": "closed", "last_error": null,
               "in_flight": 0, "requests_in_flight": 0, "concurrency_limit": 0,
               "backlog_age_seconds": 0.0, "held": null,
               "delivered": 0, "last_success_at": null, "rule_errors": []})
    };
    for d in rules.destinations() {
        out.insert(d.name.clone(), entry(&d.name, "enabled"));
    }
    // Validated but `enabled = false`: shown, so an operator sees why nothing is sent.
    for d in rules.disabled() {
        out.insert(d.name.clone(), entry(&d.name, "disabled"));
    }
    // A rule file with errors: its last good version stays in force, or (none
    // loaded) no new deliveries and its queue waits for the fix.
    for b in rules.broken() {
        let mut e = entry(&b.name, "broken");
        e["enabled"] = json!(b.last_good && rules.get(&b.name).is_some());
        e["status"] = json!(format!("rule file has errors: {}", b.consequence()));
        e["file"] = json!(b.file.display().to_string());
        e["last_good_in_force"] = json!(b.last_good);
        e["rule_errors"] = json!(b.errors.iter().map(|d| d.to_string()).collect::<Vec<_>>());
        out.insert(b.name.clone(), e);
    }
    let queued: Vec<String> = counts
        .iter()
        .filter(|c| c.queued > 0)
        .map(|c| c.destination.clone())
        .collect();
    for (name, age) in relay.deliverer.backlog_ages(&queued).await {
        if let Some(e) = out.get_mut(&name) {
            e["backlog_age_seconds"] = json!(age);
        }
    }
    for c in counts {
        let e = out
            .entry(c.destination.clone())
            .or_insert_with(|| entry(&c.destination, "removed"));
        e["queue_depth"] = json!(c.queued);
        e["dlq_size"] = json!(c.dead);
    }
    for s in relay.deliverer.status() {
        if let Some(e) = out.get_mut(&s.name) {
            e["circuit"] = serde_json::to_value(s.breaker).unwrap_or(Value::Null);
            e["last_error"] = json!(s.last_error);
            e["in_flight"] = json!(s.in_flight);
            e["requests_in_flight"] = json!(s.requests_in_flight);
            e["concurrency_limit"] = json!(s.concurrency_limit);
            e["held"] = json!(s.held);
            e["delivered"] = json!(s.delivered);
            e["last_success_at"] = json!(s
                .last_success_at
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
        }
    }
    json_response(
        StatusCode::OK,
        json!({"destinations": out.into_values().collect::<Vec<_>>()}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}
