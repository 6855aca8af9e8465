//! The HTTP edge: listeners, connections and routes, built to face the open internet.
//!
//! Owns: the accept loop (connection cap, rate-limited accept errors), each
//! connection's limits (`conn`: header-read, body-read and idle timeouts; header size;
//! HTTP/2 stream limits; `frames`: HTTP/2 PING and SETTINGS floods), TLS (`tls`), the routes (`routes`: ingest, health, metrics),
//! the admin API (`admin`) and the preview page (`ui`). Never: logs request bodies or headers other than
//! `webhook-id`; decides what an event means (that is `ingest`, `rules`, `store`).
//!
//! HTTP/1.1 on plain listeners; HTTP/2 and HTTP/1.1 by ALPN on TLS.

pub mod admin;
pub mod auth;
pub mod body;
pub mod conn;
pub mod frames;
pub mod peers;
pub mod recent;
pub mod routes;
pub mod tls;
pub mod ui;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::config::ServerLimits;
use crate::relay::Relay;
use conn::{ConnState, Expired, TrackedIo};
use peers::{PeerSlot, Peers};
use tls::TlsCertificates;

pub use routes::HttpResponse;

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// `/v1/events`, `/healthz`, `/readyz`; with `admin`, also `/admin/*`, `/ui` and
    /// `/metrics`.
    Ingest { admin: bool },
    /// `/admin/*`, `/ui`, `/metrics`, `/healthz`, `/readyz`.
    Admin,
}

/// What every connection of every listener shares.
pub struct Edge {
    pub relay: Arc<Relay>,
    pub limits: ServerLimits,
    /// Bytes of request bodies being read, all requests together.
    pub body_budget: Arc<Semaphore>,
    /// Each client address's connections and body bytes.
    pub peers: Arc<Peers>,
    /// Wrong admin tokens per client address.
    pub attempts: auth::Attempts,
    /// The preview page's sessions.
    pub sessions: auth::Sessions,
    /// The live view: the last events' fates (names and fates, no values).
    pub recent: recent::Recent,
    /// Tasks a request leaves behind (reading what is left of a refused body):
    /// `serve` waits for them on shutdown.
    pub tasks: tokio_util::task::TaskTracker,
}

impl Edge {
    pub fn new(relay: Arc<Relay>) -> Arc<Edge> {
        let limits = relay.config.server.clone();
        let budget = usize::try_from(limits.max_body_bytes_in_flight).unwrap_or(usize::MAX);
        Arc::new(Edge {
            body_budget: Arc::new(Semaphore::new(budget.min(Semaphore::MAX_PERMITS))),
            peers: Peers::new(&limits),
            attempts: auth::Attempts::default(),
            sessions: auth::Sessions::default(),
            recent: recent::Recent::default(),
            limits,
            relay,
            tasks: tokio_util::task::TaskTracker::new(),
        })
    }
}

/// One bound listener and what it serves.
pub struct Listener {
    /// `ingest` or `admin`: for logs and metrics.
    pub name: &'static str,
    pub tcp: TcpListener,
    pub routes: Routes,
    pub tls: Option<TlsCertificates>,
}

/// The listen backlog asked of the kernel: `max_connections`, at least 1024, so a
/// burst of connects as large as the connection cap waits in the kernel's queue
/// until the accept loop takes it. std's `bind` asks for 128: past that, during a
/// burst, Linux answers SYNs with SYN cookies, and a cookie connection whose final
/// ACK finds the accept queue full is forgotten; the client's data past its first
/// segment then fails the cookie check and is answered with a reset (the relay never
/// sees the connection, so it cannot log it).
pub fn listen_backlog(limits: &ServerLimits) -> u32 {
    let wanted = limits.max_connections.max(MIN_BACKLOG);
    u32::try_from(wanted).unwrap_or(u32::MAX).min(MAX_BACKLOG)
}

const MIN_BACKLOG: usize = 1024;
/// `listen` takes an `int`; the kernel caps it at `net.core.somaxconn` anyway.
const MAX_BACKLOG: u32 = i32::MAX as u32;

/// Binds a listener at `addr` with `listen_backlog(limits)`, and warns when the
/// kernel caps that backlog lower (`net.core.somaxconn`).
pub fn bind(addr: std::net::SocketAddr, limits: &ServerLimits) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's `bind` does on Unix: a restart can bind while old connections linger.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let backlog = listen_backlog(limits);
    if let Some(cap) = kernel_backlog_cap().filter(|&cap| cap < backlog) {
        tracing::warn!(
            listen = %addr,
            backlog,
            somaxconn = cap,
            "the kernel caps the listen backlog at net.core.somaxconn={cap}, below max_connections (at least 1024) = {backlog}: a burst of more connects than that may be reset; raise it (sysctl -w net.core.somaxconn={backlog})"
        );
    }
    socket.listen(backlog)
}

/// `net.core.somaxconn`, where the system says (Linux).
fn kernel_backlog_cap() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Serves until `shutdown` turns true, then stops accepting and lets connections
/// finish their requests (up to `grace`).
pub async fn serve(
    edge: Arc<Edge>,
    listener: Listener,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let max = edge.limits.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let mut errors = AcceptErrors::new(listener.name);
    // The socket stays with this loop, so it closes when the loop ends: after
    // shutdown a new connection is refused at once instead of waiting in the
    // kernel's backlog for the grace period. Connections share only what they serve.
    let Listener {
        name,
        tcp,
        routes,
        tls,
    } = listener;
    let listener = Arc::new(Serving { name, routes, tls });
    // Every connection's task: waited for on shutdown, aborted past the grace period.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        // At the cap, stop accepting: new connections wait in the kernel's backlog
        // (`listen_backlog`) until one closes, instead of taking descriptors the
        // relay needs.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                errors.ok();
                // Past its address's share: closed at once (a plain listener says why).
                let Some(slot) = edge.peers.join(peer.ip()) else {
                    if listener.tls.is_none() {
                        let _ = stream.try_write(OVER_ADDRESS_CAP);
                    }
                    continue;
                };
                conns.spawn(connection(
                    edge.clone(),
                    listener.clone(),
                    stream,
                    (permit, slot),
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                drop(permit);
                edge.relay.metrics.accept_error(listener.name);
                let pause = errors.failed(&e);
                tokio::time::sleep(pause).await;
            }
        }
    }
    drop(tcp);
    tracing::info!(listener = name, "stopped accepting connections");
    let finished = async {
        while conns.join_next().await.is_some() {}
        edge.tasks.close();
        edge.tasks.wait().await;
    };
    if tokio::time::timeout(grace, finished).await.is_err() {
        tracing::warn!("connections still open after the grace period; closing them");
        conns.shutdown().await;
    }
}

/// The answer to a connection past `max_connections_per_address` (plain listeners).
const OVER_ADDRESS_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 80\r\n\r\n{\"error\":\"too many connections from this address (max_connections_per_address)\"}";

/// Accept errors (EMFILE, ENFILE, ECONNABORTED...) are logged at most once per
/// `EVERY`, with how many were not logged, and slow the loop down with backoff.
struct AcceptErrors {
    listener: &'static str,
    last_logged: Option<Instant>,
    suppressed: u64,
    pause: Duration,
}

impl AcceptErrors {
    const EVERY: Duration = Duration::from_secs(10);
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    const MAX_PAUSE: Duration = Duration::from_secs(1);

    fn new(listener: &'static str) -> AcceptErrors {
        AcceptErrors {
            listener,
            last_logged: None,
            suppressed: 0,
            pause: Self::FIRST_PAUSE,
        }
    }

    fn ok(&mut self) {
        self.pause = Self::FIRST_PAUSE;
    }

    /// Logs (or counts) the error; returns how long to pause before accepting again.
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        let now = Instant::now();
        if self
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= Self::EVERY)
        {
            tracing::warn!(
                listener = self.listener,
                error = %e,
                not_logged_since_last = self.suppressed,
                "cannot accept connections (at most one such line per 10s)"
            );
            self.last_logged = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        let pause = self.pause;
        self.pause = (self.pause * 2).min(Self::MAX_PAUSE);
        pause
    }
}

/// Counts an open connection in the metrics until dropped.
struct Open(Arc<Edge>, &'static str);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.relay.metrics.connection_closed(self.1);
    }
}

/// What a listener's connections share: everything but the socket.
struct Serving {
    name: &'static str,
    routes: Routes,
    tls: Option<TlsCertificates>,
}

async fn connection(
    edge: Arc<Edge>,
    listener: Arc<Serving>,
    stream: TcpStream,
    (_slot, peer): (OwnedSemaphorePermit, PeerSlot),
    shutdown: watch::Receiver<bool>,
) {
    edge.relay.metrics.connection_opened(listener.name);
    let _open = Open(edge.clone(), listener.name);
    let _ = stream.set_nodelay(true);
    let routes = Served {
        routes: listener.routes,
        peer_budget: peer.budget.clone(),
        peer_ip: peer.ip,
    };
    let Some(tls) = &listener.tls else {
        return serve_http1(edge, routes, stream, shutdown).await;
    };
    // The handshake counts as reading the first request's head.
    let handshake = tls.acceptor().accept(stream);
    let stream = match tokio::time::timeout(edge.limits.header_read_timeout, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        serve_http2(edge, routes, stream, shutdown).await
    } else {
        serve_http1(edge, routes, stream, shutdown).await
    }
}

/// What a connection serves, and its client address's share of the body budget.
#[derive(Clone)]
struct Served {
    routes: Routes,
    peer_budget: Arc<Semaphore>,
    peer_ip: std::net::IpAddr,
}

/// hyper's read buffer per HTTP/1 connection: a whole head and a little more, so a
/// thousand connections draining refused bodies hold a few KiB each, not 400.
fn read_buffer(limits: &ServerLimits) -> usize {
    (limits.max_header_size + 8192).max(8192)
}

async fn serve_http1<I>(edge: Arc<Edge>, routes: Served, io: I, shutdown: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = ConnState::new(true);
    let io = TokioIo::new(TrackedIo::new(io, state.clone()));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The watchdog times head reads; hyper's timer would also count idle time.
        .header_read_timeout(None)
        .max_header_size(edge.limits.max_header_size)
        .max_buf_size(read_buffer(&edge.limits))
        .keep_alive(true);
    let conn = builder.serve_connection(io, service(edge.clone(), routes, state.clone()));
    drive(conn, &edge, &state, shutdown).await;
}

async fn serve_http2<I>(edge: Arc<Edge>, routes: Served, io: I, shutdown: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = ConnState::new(false);
    // PING and SETTINGS floods: hyper and h2 answer every one (`frames`).
    let io = TrackedIo::new(io, state.clone()).limit_control_frames(routes.peer_ip);
    let io = TokioIo::new(io);
    let limits = &edge.limits;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(256)
        // What a client may send ahead of the relay reading it: bounded per stream
        // and per connection, so unread bodies hold little memory.
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_send_buf_size(H2_SEND_BUFFER)
        .keep_alive_interval(limits.idle_timeout / 2)
        .keep_alive_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(io, service(edge.clone(), routes, state.clone()));
    drive(conn, &edge, &state, shutdown).await;
}

/// HTTP/2 flow-control windows and send buffer (hyper's defaults: 1 MiB, 1 MiB,
/// 400 KiB).
const H2_STREAM_WINDOW: u32 = 128 << 10;
const H2_CONNECTION_WINDOW: u32 = 256 << 10;
const H2_SEND_BUFFER: usize = 64 << 10;

/// The hyper service of one connection: every request marks the connection busy.
#[derive(Clone)]
struct Handler {
    edge: Arc<Edge>,
    routes: Served,
    state: Arc<ConnState>,
}

type HandlerFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<HttpResponse, Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Handler {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = HandlerFuture;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> HandlerFuture {
        let busy = self.state.begin();
        let (edge, routes, state) = (self.edge.clone(), self.routes.clone(), self.state.clone());
        // Every body, whoever reads it, ends by its deadline (before authentication).
        let deadline = tokio::time::Instant::now() + edge.limits.body_read_timeout;
        let req = req.map(|b| body::TimedBody::new(b, deadline, &state));
        Box::pin(async move {
            let conn = routes::Conn {
                state: &state,
                peer_budget: &routes.peer_budget,
                peer_ip: routes.peer_ip,
            };
            let resp = routes::route(&edge, routes.routes, req, conn).await;
            drop(busy);
            Ok(resp)
        })
    }
}

fn service(edge: Arc<Edge>, routes: Served, state: Arc<ConnState>) -> Handler {
    Handler {
        edge,
        routes,
        state,
    }
}

/// Runs a connection until it ends, overstays (watchdog) or the relay stops.
async fn drive<C>(conn: C, edge: &Edge, state: &ConnState, mut shutdown: watch::Receiver<bool>)
where
    C: GracefulConnection,
{
    let limits = &edge.limits;
    tokio::pin!(conn);
    let bound = tokio::select! {
        _ = conn.as_mut() => return,
        expired = state.watchdog(limits.header_read_timeout, limits.idle_timeout) => match expired {
            // A slow head, or a body past its deadline: nothing to finish, just close.
            Expired::Header | Expired::Body => return,
            Expired::Idle => limits.linger_timeout,
        },
        _ = shutdown.wait_for(|stop| *stop) => limits.body_read_timeout,
    };
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(bound, conn).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listen_backlog_is_the_connection_cap_and_never_stds_128() {
        let mut limits = ServerLimits::default();
        assert_eq!(listen_backlog(&limits), 1024);
        limits.max_connections = 1;
        assert_eq!(listen_backlog(&limits), 1024);
        limits.max_connections = 20_000;
        assert_eq!(listen_backlog(&limits), 20_000);
        limits.max_connections = usize::MAX;
        assert_eq!(listen_backlog(&limits), i32::MAX as u32);
    }

    #[tokio::test]
    async fn bind_listens_on_the_address_it_is_given() {
        let limits = ServerLimits::default();
        let listener = bind("127.0.0.1:0".parse().expect("addr"), &limits).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let client = tokio::net::TcpStream::connect(addr);
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        assert!(accepted.is_ok() && connected.is_ok());
        let taken = bind(addr, &limits).expect_err("the address is taken");
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
    }
}
