//! The routes: `POST /v1/events` from headers to answer, `/healthz`, `/readyz`,
//! `/metrics`, and the hand-off to `admin` and `ui` (the preview page).
//!
//! Ingest order, cheapest refusal first: content type, `Content-Length` against
//! `max_body`, the Standard Webhooks headers and the timestamp tolerance — all before
//! a byte of the body is read — then a share of the body-bytes budget, the body
//! (bounded in size and time), its signature, parsing, and one durable store commit.
//! A refused body is drained and discarded for a bounded time ("lingering close"), so
//! that a client still sending it gets to read the answer instead of a reset.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, RETRY_AFTER};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, Version};
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use super::body::{read_limited, ReadError, TimedBody};
use super::conn::ConnState;
use super::{Edge, Routes};
use crate::ingest::body::{self, BodyError, Framing};
use crate::ingest::{accept, AcceptContext};
use crate::metrics::IngestResult;
use crate::webhooks::{SignedHeaders, VerifyError};

pub type HttpResponse = Response<Full<Bytes>>;

/// The connection a request came on: its clock and its client address's share of
/// the body budget.
#[derive(Clone, Copy)]
pub struct Conn<'a> {
    pub state: &'a Arc<ConnState>,
    pub peer_budget: &'a Arc<tokio::sync::Semaphore>,
    pub peer_ip: std::net::IpAddr,
}

pub async fn route(
    edge: &Edge,
    routes: Routes,
    req: Request<TimedBody>,
    conn: Conn<'_>,
) -> HttpResponse {
    let path = req.uri().path().to_string();
    let ingest = matches!(routes, Routes::Ingest { .. });
    let admin = matches!(routes, Routes::Admin | Routes::Ingest { admin: true });
    match (req.method(), path.as_str()) {
        (&Method::POST, "/v1/events") if ingest => events(edge, req, conn).await,
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, json!({"status": "ok"})),
        (&Method::GET, "/readyz") => ready(edge).await,
        // On the ingest listener, behind the admin token; on the admin one, open.
        (&Method::GET, "/metrics") if admin => {
            match ingest.then(|| super::admin::refusal(edge, conn.peer_ip, &req)) {
                Some(Some(resp)) => resp,
                _ => metrics(edge).await,
            }
        }
        (_, p) if admin && p.starts_with("/admin/") => {
            super::admin::handle(edge, conn.peer_ip, req).await
        }
        (_, p) if admin && (p == "/ui" || p.starts_with("/ui/")) => {
            // Only the ingest listener may speak TLS; the admin one never does.
            let secure = ingest && edge.relay.tls.is_some();
            super::ui::handle(edge, conn.peer_ip, req, secure).await
        }
        (_, "/healthz" | "/readyz") => not_allowed(req.method(), &path),
        (_, "/v1/events") if ingest => not_allowed(req.method(), &path),
        (_, "/metrics") if admin => not_allowed(req.method(), &path),
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no such endpoint: {path}")}),
        ),
    }
}

fn not_allowed(method: &Method, path: &str) -> HttpResponse {
    json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        json!({"error": format!("method {method} not allowed on {path}")}),
    )
}

async fn ready(edge: &Edge) -> HttpResponse {
    match edge.relay.store.ready().await {
        Ok(()) => json_response(StatusCode::OK, json!({"status": "ready"})),
        Err(why) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not ready", "error": format!("the store cannot take writes: {why}")}),
        ),
    }
}

async fn metrics(edge: &Edge) -> HttpResponse {
    let relay = &edge.relay;
    let counts = relay.store.counts().await.unwrap_or_default();
    let rules = relay.rules.current();
    let broken: Vec<(String, usize)> = rules
        .broken()
        .iter()
        .map(|b| (b.name.clone(), b.errors.len()))
        .collect();
    relay.metrics.set_rule_errors(&broken);
    relay
        .metrics
        .set_store_ready(relay.store.ready().await.is_ok());
    let queued: Vec<String> = counts
        .iter()
        .filter(|c| c.queued > 0)
        .map(|c| c.destination.clone())
        .collect();
    let ages = relay.deliverer.backlog_ages(&queued).await;
    let text = relay
        .metrics
        .render(&counts, &relay.deliverer.status(), &ages);
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    resp
}

/// An ingest request refused before its events were looked at.
struct Refusal {
    status: StatusCode,
    error: String,
    /// The `result` label of `postback_relay_ingest_requests_total`.
    result: IngestResult,
    retry_after: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, result: IngestResult, error: impl Into<String>) -> Refusal {
        Refusal {
            status,
            error: error.into(),
            result,
            retry_after: None,
        }
    }

    fn response(&self) -> HttpResponse {
        let mut resp = json_response(self.status, json!({"error": self.error}));
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// A body read whole and signed, with its share of the body budget.
struct SignedBody {
    bytes: Bytes,
    framing: Framing,
    _budget: [OwnedSemaphorePermit; 2],
}

async fn events(edge: &Edge, req: Request<TimedBody>, conn: Conn<'_>) -> HttpResponse {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let (resp, result) = match read_signed(edge, &parts, body, conn).await {
        Ok(signed) => process(edge, signed, started).await,
        Err(refusal) => {
            if refusal.status == StatusCode::UNAUTHORIZED {
                tracing::debug!(reason = %refusal.error, "request refused: signature");
            }
            (refusal.response(), refusal.result)
        }
    };
    edge.relay.metrics.ingest_request(result);
    resp
}

/// Everything up to a body whose signature holds. A refusal that leaves the body
/// unread drains it (`linger`).
async fn read_signed(
    edge: &Edge,
    parts: &Parts,
    mut body: TimedBody,
    conn: Conn<'_>,
) -> Result<SignedBody, Refusal> {
    let declared = declared_length(parts);
    let (framing, headers) = match check_head(edge, parts, declared) {
        Ok(x) => x,
        Err(refusal) => {
            linger(edge, parts, body, declared, conn.state);
            return Err(refusal);
        }
    };
    let max_body = edge.relay.config.ingest.max_body;
    let want = declared
        .unwrap_or(Some(max_body))
        .unwrap_or(max_body)
        .min(max_body);
    // Waiting for a share of the budget (the address's, then everyone's) and reading
    // share one deadline.
    let deadline = tokio::time::Instant::now() + edge.limits.body_read_timeout;
    let permits = match budget_shares(edge, conn, want, deadline).await {
        Ok(p) => p,
        Err(refusal) => {
            linger(edge, parts, body, declared, conn.state);
            return Err(refusal);
        }
    };
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let reserve = usize::try_from(want).unwrap_or(limit);
    let read = tokio::time::timeout_at(deadline, read_limited(&mut body, limit, reserve)).await;
    let bytes = match read {
        Err(_) | Ok(Err(ReadError::Timeout)) => {
            return Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                IngestResult::BodyTimeout,
                "the body did not arrive within body_read_timeout",
            ))
        }
        Ok(Err(ReadError::TooLarge)) => {
            linger(edge, parts, body, None, conn.state);
            return Err(too_large(max_body));
        }
        Ok(Err(ReadError::Broken)) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                IngestResult::BadRequest,
                "could not read the request body",
            ))
        }
        Ok(Ok(b)) => b,
    };
    if let Err(e) = edge.relay.verifier.verify_body(&headers, &bytes) {
        return Err(unauthorized(&e));
    }
    Ok(SignedBody {
        bytes,
        framing,
        _budget: permits,
    })
}

/// `want` bytes of the client address's body budget, then of everyone's, by
/// `deadline`; a 503 when either stays full.
async fn budget_shares(
    edge: &Edge,
    conn: Conn<'_>,
    want: u64,
    deadline: tokio::time::Instant,
) -> Result<[OwnedSemaphorePermit; 2], Refusal> {
    let n = u32::try_from(want).unwrap_or(u32::MAX);
    let overloaded = |whose: &str| {
        let mut r = Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            IngestResult::Overloaded,
            format!("too many request bodies being read at once{whose}; retry later"),
        );
        r.retry_after = Some(1);
        r
    };
    let mine = tokio::time::timeout_at(deadline, conn.peer_budget.clone().acquire_many_owned(n));
    let Ok(Ok(mine)) = mine.await else {
        return Err(overloaded(
            " from this address (max_body_bytes_per_address)",
        ));
    };
    let all = tokio::time::timeout_at(deadline, edge.body_budget.clone().acquire_many_owned(n));
    let Ok(Ok(all)) = all.await else {
        return Err(overloaded(""));
    };
    Ok([mine, all])
}

/// `Content-Length`: `None` when absent (chunked), `Some(None)` when not a number.
fn declared_length(parts: &Parts) -> Option<Option<u64>> {
    parts
        .headers
        .get(CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok()))
}

/// The checks that need no body: content type, declared size, signature headers and
/// timestamp.
fn check_head(
    edge: &Edge,
    parts: &Parts,
    declared: Option<Option<u64>>,
) -> Result<(Framing, SignedHeaders), Refusal> {
    let cfg = &edge.relay.config.ingest;
    let headers = &parts.headers;
    ambiguous_head(headers)?;
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let Some(framing) = body::framing(content_type) else {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestResult::UnsupportedType,
            "unsupported Content-Type; send application/json or application/x-ndjson",
        ));
    };
    match declared {
        Some(Some(n)) if n > cfg.max_body => return Err(too_large(cfg.max_body)),
        Some(None) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                IngestResult::BadRequest,
                "Content-Length is not a number",
            ))
        }
        _ => {}
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = edge
        .relay
        .verifier
        .check_headers(
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
            Utc::now().timestamp(),
        )
        .map_err(|e| unauthorized(&e))?;
    Ok((framing, signed))
}

/// A Standard Webhooks header given twice is refused: which one would be verified?
/// (`Content-Length` beside `Transfer-Encoding` never gets here: hyper frames such a
/// request by `Transfer-Encoding` alone and closes the connection after it, as RFC
/// 9112 section 6.1 allows; tests/bad_input.rs holds it to that.)
fn ambiguous_head(headers: &hyper::HeaderMap) -> Result<(), Refusal> {
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        if headers.get_all(name).iter().nth(1).is_some() {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                IngestResult::Unauthorized,
                format!(
                    "{name} appears more than once; send it once (several signatures go in one webhook-signature, space-separated)"
                ),
            ));
        }
    }
    Ok(())
}

fn unauthorized(e: &VerifyError) -> Refusal {
    match e {
        // A clock problem, not a signing one: the message says what to fix.
        VerifyError::TooOld(_) | VerifyError::TooNew(_) => Refusal::new(
            StatusCode::UNAUTHORIZED,
            IngestResult::StaleTimestamp,
            e.to_string(),
        ),
        _ => Refusal::new(
            StatusCode::UNAUTHORIZED,
            IngestResult::Unauthorized,
            format!("{e}; sign the request per Standard Webhooks with one of the relay's secrets"),
        ),
    }
}

fn too_large(max: u64) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        IngestResult::TooLarge,
        format!("body larger than {max} bytes (max_body)"),
    )
}

/// After a refusal, reads and discards what is left of the body, up to
/// `linger_bytes` and `linger_timeout`, so a client that sends the whole body before
/// reading (no `Expect: 100-continue`) reads the answer instead of a reset. The
/// answer says `Connection: close`; hyper closes once the body is drained or dropped.
fn linger(
    edge: &Edge,
    parts: &Parts,
    body: TimedBody,
    declared: Option<Option<u64>>,
    conn: &Arc<ConnState>,
) {
    let limits = &edge.limits;
    let expects_continue = parts
        .headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let too_much = matches!(declared, Some(Some(n)) if n > limits.linger_bytes);
    // HTTP/2 resets the stream itself; a client waiting for 100 Continue sends nothing.
    if parts.version == Version::HTTP_2 || expects_continue || too_much || body.is_end_stream() {
        return;
    }
    let busy = conn.begin();
    let (max, time) = (limits.linger_bytes, limits.linger_timeout);
    edge.tasks.spawn(async move {
        let mut body = body;
        let drain = async {
            let mut seen = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    seen += data.len() as u64;
                    if seen > max {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(time, drain).await;
        drop(busy);
    });
}

/// Parse, accept, answer; returns the answer and its `result` label.
async fn process(
    edge: &Edge,
    signed: SignedBody,
    started: Instant,
) -> (HttpResponse, IngestResult) {
    let relay = &edge.relay;
    let cfg = &relay.config.ingest;
    // The delivery engine's clock: a step of the system clock must not expire (or
    // revive) every dedupe mark at once.
    let now = relay.deliverer.clock().now();
    let parsed = match body::parse_events(&signed.bytes, signed.framing, cfg.max_batch, now) {
        Ok(p) => p,
        Err(BodyError::Unparseable(m)) => {
            return (
                json_response(StatusCode::BAD_REQUEST, json!({"error": m})),
                IngestResult::BadRequest,
            )
        }
        Err(BodyError::TooManyEvents { count, max }) => {
            let error = format!("{count} events in one request; at most {max} (max_batch)");
            return (
                json_response(StatusCode::PAYLOAD_TOO_LARGE, json!({"error": error})),
                IngestResult::TooManyEvents,
            );
        }
    };
    drop(signed);
    let rules = relay.rules.current();
    // The live view's record of these events (names and fates only), kept below once
    // the store has answered.
    let recent = edge.recent.prepare(&rules, &parsed, now);
    let cx = AcceptContext {
        rules: &rules,
        dedupe: &relay.dedupe,
        dedupe_secret: &relay.dedupe_secret,
        store: relay.store.as_ref(),
    };
    match accept(cx, parsed, now).await {
        Ok(report) => {
            for d in &report.destinations {
                relay.deliverer.notify(d);
            }
            edge.recent.commit(recent, &report.results);
            relay.metrics.ingest_accepted(
                report.accepted,
                report.duplicates,
                report.rejected,
                started.elapsed(),
            );
            tracing::debug!(
                accepted = report.accepted,
                duplicates = report.duplicates,
                rejected = report.rejected,
                "events processed"
            );
            // Nothing taken, nothing a duplicate: every event was rejected (400, with the
            // same per-event results).
            if report.accepted == 0 && report.duplicates == 0 && report.rejected > 0 {
                return (
                    json_response(StatusCode::BAD_REQUEST, &report),
                    IngestResult::BadRequest,
                );
            }
            (
                json_response(StatusCode::ACCEPTED, &report),
                IngestResult::Accepted,
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "store refused the write; answering 503");
            let mut r = Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                IngestResult::StoreUnavailable,
                format!("{e}; {}", e.outcome()),
            );
            r.retry_after = Some(e.retry_after().as_secs().max(1));
            (r.response(), IngestResult::StoreUnavailable)
        }
    }
}

pub fn json_response(status: StatusCode, body: impl serde::Serialize) -> HttpResponse {
    let text = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if matches!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
    ) {
        // The body was not read to its end: this connection cannot carry another
        // request.
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
