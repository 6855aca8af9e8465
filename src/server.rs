//! The HTTP server: accept loop, routing, responses, graceful shutdown.
//!
//! Owns: hyper 1.x connection handling, the route table, turning ingest outcomes
//! into the statuses of INTERFACE.md (202/400/401/413/415/503), `/healthz`,
//! `/readyz`. Never: logs request bodies or headers other than `webhook-id`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::Relay;
use crate::ingest::body::{self, BodyError};
use crate::ingest::verify::VerifyError;

pub type HttpResponse = Response<Full<Bytes>>;

/// Serves until `shutdown` turns true, then stops accepting and lets in-flight
/// requests finish (up to `grace`).
pub async fn serve(
    relay: Arc<Relay>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let relay = relay.clone();
                let conn = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |req| {
                            let relay = relay.clone();
                            async move { Ok::<_, Infallible>(route(relay, req).await) }
                        }),
                    );
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("in-flight requests still running after the grace period");
        }
    }
}

async fn route(relay: Arc<Relay>, req: Request<Incoming>) -> HttpResponse {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::POST, "/v1/events") => events(relay, req).await,
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            if relay.store.ready().await {
                json_response(StatusCode::OK, json!({"status": "ready"}))
            } else {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"status": "not ready", "error": "store is not open"}),
                )
            }
        }
        (_, p) if p.starts_with("/admin/") => crate::admin::handle(relay, req).await,
        (_, "/v1/events") | (_, "/healthz") | (_, "/readyz") => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": format!("method {} not allowed on {path}", req.method())}),
        ),
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no such endpoint: {path}")}),
        ),
    }
}

async fn events(relay: Arc<Relay>, req: Request<Incoming>) -> HttpResponse {
    let cfg = &relay.config.ingest;
    let headers = req.headers();
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let Some(framing) = body::framing(content_type) else {
        return json_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!({"error": format!(
                "unsupported Content-Type {:?}; send application/json or application/x-ndjson",
                content_type.unwrap_or("")
            )}),
        );
    };
    // Refuse oversized bodies from Content-Length before reading a byte.
    if let Some(len) = headers.get(CONTENT_LENGTH) {
        match len.to_str().ok().and_then(|s| s.parse::<u64>().ok()) {
            Some(n) if n > cfg.max_body => return too_large(cfg.max_body),
            Some(_) => {}
            None => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "Content-Length is not a number"}),
                )
            }
        }
    }
    let header = |name: &str| -> Option<String> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (id, ts, sig) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    // Chunked bodies are bounded while streaming.
    let limit = usize::try_from(cfg.max_body).unwrap_or(usize::MAX);
    let bytes = match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return too_large(cfg.max_body);
            }
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "could not read the request body"}),
            );
        }
    };
    let now = Utc::now();
    if let Err(e) = relay.verifier.verify(
        id.as_deref(),
        ts.as_deref(),
        sig.as_deref(),
        &bytes,
        now.timestamp(),
    ) {
        tracing::info!(reason = %e, "request refused: signature");
        let status = StatusCode::UNAUTHORIZED;
        return json_response(status, json!({"error": unauthorized_message(&e)}));
    }
    let parsed = match body::parse_events(&bytes, framing, cfg.max_batch, now) {
        Ok(p) => p,
        Err(BodyError::Unparseable(m)) => {
            return json_response(StatusCode::BAD_REQUEST, json!({"error": m}))
        }
        Err(BodyError::TooManyEvents { count, max }) => {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("{count} events in one request; at most {max} (max_batch)")}),
            )
        }
    };
    match crate::ingest::accept(&relay, parsed, now).await {
        Ok(report) => {
            tracing::debug!(
                webhook_id = id.as_deref().unwrap_or(""),
                accepted = report.accepted,
                duplicates = report.duplicates,
                rejected = report.rejected,
                "events processed"
            );
            json_response(StatusCode::ACCEPTED, report.to_json())
        }
        Err(e) => {
            tracing::warn!(error = %e, "store refused the write; answering 503");
            let mut resp = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": format!("{e}; nothing was accepted, retry later")}),
            );
            let secs = e.retry_after().as_secs().max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(RETRY_AFTER, v);
            }
            resp
        }
    }
}

fn unauthorized_message(e: &VerifyError) -> String {
    format!("{e}; sign the request per Standard Webhooks with one of the relay's secrets")
}

fn too_large(max: u64) -> HttpResponse {
    let mut resp = json_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({"error": format!("body larger than {max} bytes (max_body)")}),
    );
    // The unread body is not drained: close the connection.
    resp.headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

pub fn json_response(status: StatusCode, body: Value) -> HttpResponse {
    let text = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
