//! The load generator: N keep-alive HTTP/1.1 connections on one thread (like
//! `wrk -t1`), each writing the next pre-built request of a shared pool and reading
//! the answer before sending again (closed loop), or, with a rate, sending on a fixed
//! schedule (open loop, `wrk2`-style, so a stalled server is not hidden).
//!
//! Requests are written as raw bytes and answers are read with a minimal HTTP/1.1
//! response reader (status, Content-Length or chunked body), so the generator costs
//! about what `wrk` costs and leaves the CPU to the server under test.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Spec {
    /// The servers under test; connection i goes to `addrs[i % len]` (several relays
    /// behind one load balancer).
    pub addrs: Vec<SocketAddr>,
    pub connections: usize,
    pub warmup: Duration,
    /// Measured window after the warm-up; `None`: until the pool is used up.
    pub duration: Option<Duration>,
    /// Requests per second in total (open loop), or as fast as answers come.
    pub rate: Option<f64>,
    pub pool: Arc<Vec<bytes::Bytes>>,
    /// Cycle through the pool (for the baseline, which keeps no state); else stop
    /// when it is used up (the relay would see duplicates).
    pub wrap: bool,
    /// Give up on the whole run after this long.
    pub deadline: Duration,
}

#[derive(Debug, Default)]
pub struct Outcome {
    /// Requests answered 2xx inside the measured window.
    pub ok: u64,
    /// Other answers inside the window, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Connection errors (each followed by a reconnect).
    pub io_errors: u64,
    pub first_io_error: Option<String>,
    /// The measured window (shorter than asked when the pool ran out).
    pub window: Duration,
    /// The pool ran out before the window ended.
    pub exhausted: bool,
    /// Latencies (microseconds) of the requests answered in the window, from the
    /// moment the request was written.
    pub latencies_us: Vec<u32>,
    /// Open loop only: latencies from the moment each request was due.
    pub corrected_us: Vec<u32>,
    /// Requests sent in all (warm-up included).
    pub sent: u64,
}

impl Outcome {
    pub fn requests_per_sec(&self) -> f64 {
        let s = self.window.as_secs_f64();
        if s > 0.0 {
            self.ok as f64 / s
        } else {
            0.0
        }
    }

    pub fn non_2xx(&self) -> u64 {
        self.statuses.values().sum()
    }
}

/// The `q` quantile (0..=1) of sorted microsecond values, in milliseconds.
pub fn quantile_ms(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)] as f64 / 1000.0)
}

/// Runs the load on a fresh single-threaded runtime in its own OS thread.
pub fn run(spec: Spec) -> Result<Outcome, String> {
    std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("load generator runtime: {e}"))?;
            rt.block_on(drive(spec))
        })
        .map_err(|e| format!("cannot start the load generator thread: {e}"))?
        .join()
        .map_err(|_| "the load generator panicked".to_string())?
}

struct Shared {
    next: Cell<usize>,
    exhausted_at: Cell<Option<Instant>>,
    /// When the last answer arrived.
    last_done: Cell<Option<Instant>>,
}

async fn drive(spec: Spec) -> Result<Outcome, String> {
    let spec = Rc::new(spec);
    if spec.pool.is_empty() {
        return Err("empty request pool".into());
    }
    // Connect everything before the clock starts.
    if spec.addrs.is_empty() {
        return Err("no server to load".into());
    }
    let mut streams = Vec::with_capacity(spec.connections);
    for i in 0..spec.connections {
        let addr = spec.addrs[i % spec.addrs.len()];
        streams.push((addr, connect(addr).await?));
    }
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = spec.duration.map(|d| measure_from + d);
    let hard_end = start + spec.deadline;
    let shared = Rc::new(Shared {
        next: Cell::new(0),
        exhausted_at: Cell::new(None),
        last_done: Cell::new(None),
    });
    let local = tokio::task::LocalSet::new();
    let mut tasks = Vec::new();
    for (addr, stream) in streams {
        let (spec, shared) = (spec.clone(), shared.clone());
        tasks.push(local.spawn_local(async move {
            let at = (addr, stream);
            connection(at, &spec, &shared, start, measure_from, end, hard_end).await
        }));
    }
    let mut total = Outcome::default();
    local
        .run_until(async {
            for t in tasks {
                match t.await {
                    Ok(o) => merge(&mut total, o),
                    Err(e) => {
                        total.io_errors += 1;
                        total.first_io_error.get_or_insert(format!("task: {e}"));
                    }
                }
            }
        })
        .await;
    // A window cut short by the end of the pool ends with its last answer.
    let last = shared.last_done.get().unwrap_or(measure_from);
    let stop = match (shared.exhausted_at.get(), end) {
        (Some(x), Some(e)) if x < e => {
            total.exhausted = true;
            last.min(e)
        }
        (_, Some(e)) => e,
        (_, None) => last,
    };
    total.window = stop.saturating_duration_since(measure_from);
    total.latencies_us.sort_unstable();
    total.corrected_us.sort_unstable();
    Ok(total)
}

fn merge(total: &mut Outcome, o: Outcome) {
    total.ok += o.ok;
    for (s, n) in o.statuses {
        *total.statuses.entry(s).or_default() += n;
    }
    total.io_errors += o.io_errors;
    if total.first_io_error.is_none() {
        total.first_io_error = o.first_io_error;
    }
    total.latencies_us.extend(o.latencies_us);
    total.corrected_us.extend(o.corrected_us);
    total.sent += o.sent;
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    (addr, mut stream): (SocketAddr, TcpStream),
    spec: &Spec,
    shared: &Shared,
    start: Instant,
    measure_from: Instant,
    end: Option<Instant>,
    hard_end: Instant,
) -> Outcome {
    let mut out = Outcome::default();
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let interval = spec
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / r.max(1e-9)));
    loop {
        let now = Instant::now();
        if end.is_some_and(|e| now >= e) || now >= hard_end {
            break;
        }
        let slot = shared.next.get();
        let idx = if slot >= spec.pool.len() {
            if !spec.wrap {
                if shared.exhausted_at.get().is_none() {
                    shared.exhausted_at.set(Some(now));
                }
                break;
            }
            slot % spec.pool.len()
        } else {
            slot
        };
        shared.next.set(slot + 1);
        let due = match interval {
            Some(iv) => {
                let due = start + iv.mul_f64(slot as f64);
                if let Some(e) = end {
                    if due >= e {
                        break;
                    }
                }
                tokio::time::sleep_until(due.into()).await;
                Some(due)
            }
            None => None,
        };
        let sent_at = Instant::now();
        out.sent += 1;
        let result = match stream.write_all(&spec.pool[idx]).await {
            Ok(()) => read_response(&mut stream, &mut buf).await,
            Err(e) => Err(format!("write: {e}")),
        };
        let done = Instant::now();
        shared.last_done.set(Some(done));
        let in_window = done >= measure_from && end.is_none_or(|e| done <= e);
        match result {
            Ok((status, close)) => {
                if in_window {
                    if (200..300).contains(&status) {
                        out.ok += 1;
                    } else {
                        *out.statuses.entry(status).or_default() += 1;
                    }
                    out.latencies_us.push(micros(done - sent_at));
                    if let Some(due) = due {
                        out.corrected_us.push(micros(done - due));
                    }
                }
                if close {
                    match connect(addr).await {
                        Ok(s) => stream = s,
                        Err(e) => {
                            out.io_errors += 1;
                            out.first_io_error.get_or_insert(e);
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                out.io_errors += 1;
                out.first_io_error.get_or_insert(e);
                buf.clear();
                tokio::time::sleep(Duration::from_millis(10)).await;
                match connect(addr).await {
                    Ok(s) => stream = s,
                    Err(e) => {
                        out.first_io_error.get_or_insert(e);
                        break;
                    }
                }
            }
        }
    }
    out
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// Reads one response; its status and whether the server closes the connection.
/// `buf` keeps bytes past this response (there should be none: one request in flight).
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, bool), String> {
    buf.clear();
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        fill(stream, buf).await?;
        if buf.len() > 64 * 1024 {
            return Err("response head over 64KiB".into());
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "response head not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().map_err(|_| "bad content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    if chunked {
        let mut pos = head_end;
        loop {
            let line_end = loop {
                if let Some(p) = find(&buf[pos..], b"\r\n") {
                    break pos + p;
                }
                fill(stream, buf).await?;
            };
            let size_text = std::str::from_utf8(&buf[pos..line_end]).map_err(|_| "bad chunk")?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            let need = line_end + 2 + size + 2;
            while buf.len() < need {
                fill(stream, buf).await?;
            }
            pos = need;
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        while buf.len() < head_end + n {
            fill(stream, buf).await?;
        }
    } else if status >= 200 && status != 204 && status != 304 {
        // No length: the body runs to the end of the connection.
        loop {
            let before = buf.len();
            if fill(stream, buf).await.is_err() || buf.len() == before {
                break;
            }
        }
        close = true;
    }
    Ok((status, close))
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream
        .read(&mut chunk)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("connection closed by the server".into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
