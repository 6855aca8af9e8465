//! Every request body under a deadline: `TimedBody` wraps hyper's body with the
//! request's `body_read_timeout`, counted from the end of its head, and tells the
//! connection's clock (`conn::ConnState`) that a body is open until it ends or is
//! dropped. Whoever reads it (ingest, `/ui/login`, the admin API, a lingering
//! drain) gets `BodyError::Timeout` once the deadline passes, so no route can wait
//! on a client forever; the watchdog closes a connection whose body outlives its
//! deadline even when nobody reads it.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use super::conn::{ConnState, OpenBody};

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// The deadline passed before the body's end.
    Timeout,
    /// The connection broke or the framing was wrong.
    Read(hyper::Error),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Timeout => write!(f, "the body did not arrive within body_read_timeout"),
            BodyError::Read(e) => write!(f, "could not read the body: {e}"),
        }
    }
}

impl Error for BodyError {}

/// A request body that ends in `BodyError::Timeout` at its deadline.
pub struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    /// Registered with the connection until the body ends or is dropped.
    open: Option<OpenBody>,
}

impl TimedBody {
    pub fn new(inner: Incoming, deadline: Instant, conn: &Arc<ConnState>) -> TimedBody {
        let open = (!inner.is_end_stream()).then(|| conn.open_body(deadline));
        TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            open,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.open.is_none() && this.inner.is_end_stream() {
            return Poll::Ready(None);
        }
        if this.deadline.is_elapsed() {
            return Poll::Ready(Some(Err(BodyError::Timeout)));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.open = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => Poll::Ready(Some(frame.map_err(BodyError::Read))),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Timeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why `read_limited` gave up.
#[derive(Debug)]
pub enum ReadError {
    /// More than the limit.
    TooLarge,
    /// The deadline passed.
    Timeout,
    /// The connection broke.
    Broken,
}

/// Reads the body whole, refusing it past `limit` bytes (what is left stays in the
/// body, for a lingering drain). `reserve`: bytes to allocate up front (a declared
/// length already within the limit), so the buffer never grows past what was counted.
pub async fn read_limited(
    body: &mut TimedBody,
    limit: usize,
    reserve: usize,
) -> Result<Bytes, ReadError> {
    use http_body_util::BodyExt;
    let mut buf = BytesMut::with_capacity(reserve.min(limit));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match e {
            BodyError::Timeout => ReadError::Timeout,
            BodyError::Read(_) => ReadError::Broken,
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}
