//! `FakePartner`: a real, tiny HTTP server standing in for a partner in tests and
//! benches.
//!
//! Owns: listening on 127.0.0.1:0, recording every request (method, target, headers,
//! body, arrival time) and answering from a script a test can change at runtime
//! (`503, 503, 503` then the default `200`; a `429` with `Retry-After`; a reply that
//! never comes). Never: used by the relay itself.

use crate::sync::lock;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How the fake partner answers one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Wait this long before answering.
    pub delay: Option<Duration>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: None,
        }
    }

    pub fn ok() -> Reply {
        Reply::status(200)
    }

    /// Never answers (within any test's lifetime).
    pub fn hang() -> Reply {
        Reply::ok().delay(Duration::from_secs(3600))
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<String>) -> Reply {
        self.body = body.into();
        self
    }

    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = Some(delay);
        self
    }
}

/// One request as the partner saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub received_at: Instant,
    /// The HTTP version, e.g. `HTTP/1.1`.
    pub version: String,
    /// The status the partner answers (or would have, had the request not hung or
    /// the sender gone away first).
    pub status: u16,
}

impl RecordedRequest {
    /// The first value of a header (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
struct Script {
    next: VecDeque<Reply>,
    default: Reply,
}

/// Chooses a reply from the request body (before the script is asked).
pub type Responder = Arc<dyn Fn(&[u8]) -> Option<Reply> + Send + Sync>;

struct State {
    script: Mutex<Script>,
    responder: Mutex<Option<Responder>>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Requests answered so far (a hanging one is recorded but not answered).
    answered: std::sync::atomic::AtomicUsize,
    arrived: Notify,
    /// Keep every request (tests) or only count them (benches).
    record: bool,
    count: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// A partner endpoint on `127.0.0.1:<port>`. Stops when dropped.
#[derive(Debug)]
pub struct FakePartner {
    addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

impl Drop for FakePartner {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakePartner {
    /// Starts a partner answering 200 to everything and recording every request.
    pub async fn start() -> std::io::Result<FakePartner> {
        FakePartner::start_with(true).await
    }

    /// Starts a partner that only counts requests (for benches: no memory growth).
    pub async fn start_counting() -> std::io::Result<FakePartner> {
        FakePartner::start_with(false).await
    }

    async fn start_with(record: bool) -> std::io::Result<FakePartner> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            script: Mutex::new(Script {
                next: VecDeque::new(),
                default: Reply::ok(),
            }),
            responder: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            answered: Default::default(),
            arrived: Notify::new(),
            record,
            count: Default::default(),
        });
        let server = tokio::spawn(serve(listener, state.clone()));
        Ok(FakePartner {
            addr,
            state,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` + `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The reply once the scripted ones are used up.
    pub fn set_default(&self, reply: Reply) {
        lock(&self.state.script).default = reply;
    }

    /// Answers from the body: `f` returns the reply, or `None` to leave it to the
    /// script (for partners whose answer depends on what was sent: a batch with a
    /// poisoned event, a count of events received).
    pub fn respond_with(&self, f: impl Fn(&[u8]) -> Option<Reply> + Send + Sync + 'static) {
        *lock(&self.state.responder) = Some(Arc::new(f));
    }

    /// Replies for the next requests, in order, before the default applies again.
    pub fn enqueue(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.state.script).next.extend(replies);
    }

    /// Every request received so far (empty for a counting partner).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// How many requests arrived (answered or not).
    pub fn request_count(&self) -> usize {
        self.state.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many requests were answered.
    pub fn answered_count(&self) -> usize {
        self.state
            .answered
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until at least `n` requests arrived; false on timeout.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.state.arrived.notified();
            if self.request_count() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.request_count() >= n;
            }
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Reap finished connections so a long bench does not accumulate them.
        while connections.try_join_next().is_some() {}
        let state = state.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| answer(req, state.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let responder = lock(&state.responder).clone();
    let reply = match responder.and_then(|f| f(&body)) {
        Some(reply) => reply,
        None => {
            let mut script = lock(&state.script);
            script
                .next
                .pop_front()
                .unwrap_or_else(|| script.default.clone())
        }
    };
    if state.record {
        let recorded = RecordedRequest {
            method: parts.method.to_string(),
            target: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
            received_at: Instant::now(),
            version: format!("{:?}", parts.version),
            status: reply.status,
        };
        lock(&state.requests).push(recorded);
    }
    state
        .count
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    state.arrived.notify_waiters();
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() =
        hyper::StatusCode::from_u16(reply.status).unwrap_or(hyper::StatusCode::OK);
    for (name, value) in &reply.headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    state
        .answered
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Ok(response)
}
