//! One connection's clock: what it is doing (waiting for a request, reading a
//! request's head, busy with requests) and since when, so that a watchdog can close
//! it when it dawdles.
//!
//! hyper's own header-read timer counts from the moment the connection goes idle, so
//! it cannot tell "idle between requests" from "reading headers slowly"; this one can.
//! `TrackedIo` notes the first byte of a new request, `Busy` guards mark a request
//! (or a body being drained after an answer) in progress.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What one connection is doing, with times in ms since `epoch` (+1, so 0 = unset).
#[derive(Debug)]
pub struct ConnState {
    epoch: Instant,
    busy: AtomicUsize,
    /// When the first byte of the request being read arrived; 0 while none is.
    head_started: AtomicU64,
    /// When the last request finished.
    idle_since: AtomicU64,
    /// HTTP/1: bytes between requests start a request head. HTTP/2 frames do not.
    track_heads: bool,
    /// The deadlines (ms, as above) of the request bodies still open, by a number
    /// each `OpenBody` holds.
    bodies: Mutex<Vec<(u64, u64)>>,
    next_body: AtomicU64,
}

/// Why the watchdog wants the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request's head was not complete within `header_read_timeout`.
    Header,
    /// No request for `idle_timeout`.
    Idle,
    /// A request's body was still open (unread or unfinished) a second past its
    /// deadline: a request in progress does not keep a connection forever.
    Body,
}

/// How long past its deadline an open body may stay before the watchdog closes the
/// connection (the route's own 408 goes out first).
const BODY_GRACE_MS: u64 = 1000;

impl ConnState {
    /// A new connection. An HTTP/1 connection is reading its first request's head
    /// from the start: a client that connects and sends nothing is a slow header.
    pub fn new(http1: bool) -> Arc<ConnState> {
        let state = ConnState {
            epoch: Instant::now(),
            busy: AtomicUsize::new(0),
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(1),
            track_heads: http1,
            bodies: Mutex::new(Vec::new()),
            next_body: AtomicU64::new(0),
        };
        if http1 {
            state.head_started.store(1, Ordering::Relaxed);
        }
        Arc::new(state)
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// A request (or the draining of a refused body) is in progress until the guard
    /// is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// A request body with this deadline is open until the guard is dropped.
    pub fn open_body(self: &Arc<Self>, deadline: Instant) -> OpenBody {
        let id = self.next_body.fetch_add(1, Ordering::Relaxed);
        let at = u64::try_from(deadline.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX / 2)
            + 1;
        if let Ok(mut b) = self.bodies.lock() {
            b.push((id, at));
        }
        OpenBody(self.clone(), id)
    }

    /// Whether an open body is past its deadline (plus the grace).
    fn body_overdue(&self, now: u64) -> bool {
        self.bodies
            .lock()
            .map(|b| {
                b.iter()
                    .any(|&(_, at)| now > at.saturating_add(BODY_GRACE_MS))
            })
            .unwrap_or(false)
    }

    fn on_read(&self, n: usize) {
        if self.track_heads
            && n > 0
            && self.busy.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(self.now(), Ordering::Relaxed);
        }
    }

    /// Whether the connection overstayed, now.
    pub fn expired(&self, header: Duration, idle: Duration) -> Option<Expired> {
        let now = self.now();
        if self.busy.load(Ordering::Acquire) > 0 {
            return self.body_overdue(now).then_some(Expired::Body);
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2);
        let head = self.head_started.load(Ordering::Relaxed);
        if head != 0 {
            return (now.saturating_sub(head) > ms(header)).then_some(Expired::Header);
        }
        let idle_since = self.idle_since.load(Ordering::Relaxed);
        (now.saturating_sub(idle_since) > ms(idle)).then_some(Expired::Idle)
    }

    /// Resolves when the connection overstayed.
    pub async fn watchdog(&self, header: Duration, idle: Duration) -> Expired {
        let tick =
            (header.min(idle) / 4).clamp(Duration::from_millis(10), Duration::from_millis(500));
        loop {
            tokio::time::sleep(tick).await;
            if let Some(e) = self.expired(header, idle) {
                return e;
            }
        }
    }
}

/// A request in progress on a connection.
#[derive(Debug)]
pub struct Busy(Arc<ConnState>);

impl Drop for Busy {
    fn drop(&mut self) {
        let state = &self.0;
        state.idle_since.store(state.now(), Ordering::Relaxed);
        state.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request body still open on a connection (see `ConnState::open_body`).
#[derive(Debug)]
pub struct OpenBody(Arc<ConnState>, u64);

impl Drop for OpenBody {
    fn drop(&mut self) {
        if let Ok(mut b) = self.0.bodies.lock() {
            b.retain(|&(id, _)| id != self.1);
        }
    }
}

/// A stream that tells its `ConnState` when bytes arrive, and on an HTTP/2
/// connection counts the client's control frames (`frames`).
pub struct TrackedIo<T> {
    inner: T,
    state: Arc<ConnState>,
    frames: Option<super::frames::ControlFrames>,
}

impl<T> TrackedIo<T> {
    pub fn new(inner: T, state: Arc<ConnState>) -> TrackedIo<T> {
        TrackedIo {
            inner,
            state,
            frames: None,
        }
    }

    /// HTTP/2 from this client address: past the control-frame limit, reads fail and
    /// the connection closes.
    pub fn limit_control_frames(mut self, peer: std::net::IpAddr) -> TrackedIo<T> {
        self.frames = Some(super::frames::ControlFrames::new(peer));
        self
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            self.state.on_read(buf.filled().len() - before);
            if let Some(frames) = self.frames.as_mut() {
                frames.check(&buf.filled()[before..])?;
            }
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_millis(100);
    const I: Duration = Duration::from_millis(300);

    #[tokio::test(start_paused = true)]
    async fn a_silent_new_connection_is_a_slow_header() {
        let s = ConnState::new(true);
        assert_eq!(s.expired(H, I), None);
        assert_eq!(s.watchdog(H, I).await, Expired::Header);
    }

    // Paused time: the clock is tokio's, so these test the limits exactly, whatever
    // the machine's load.
    #[tokio::test(start_paused = true)]
    async fn between_requests_the_idle_timeout_counts_until_a_byte_arrives() {
        let s = ConnState::new(true);
        let busy = s.begin();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(s.expired(H, I), None, "busy is never expired");
        drop(busy);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(s.expired(H, I), None, "idle, within idle_timeout");
        s.on_read(3);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(s.expired(H, I), Some(Expired::Header));
    }

    #[tokio::test(start_paused = true)]
    async fn http2_reads_do_not_start_a_head_and_idle_expires() {
        let s = ConnState::new(false);
        s.on_read(9);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(s.expired(H, I), None);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(s.expired(H, I), Some(Expired::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_expires_when_a_body_outlives_its_deadline() {
        let s = ConnState::new(true);
        let busy = s.begin();
        let body = s.open_body(Instant::now() + H);
        tokio::time::sleep(H * 5).await;
        assert_eq!(s.expired(H, I), None, "within the grace");
        tokio::time::sleep(Duration::from_millis(BODY_GRACE_MS)).await;
        assert_eq!(s.expired(H, I), Some(Expired::Body));
        drop(body);
        assert_eq!(s.expired(H, I), None, "busy, no body open");
        drop(busy);
    }
}
