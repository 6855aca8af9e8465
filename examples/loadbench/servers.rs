//! The two servers the bench runs next to the relay, both plain hyper 1.x:
//!
//! - the **bare hyper baseline** (`loadbench baseline`, its own process like the
//!   relay, multi-threaded runtime like the relay): reads the POST body, answers 202,
//!   nothing else: the ceiling of an HTTP ingest on this machine;
//! - the **fake partners**: answer 200 to anything at once and count requests and
//!   body bytes (one thread, one single-threaded runtime for all partners, so they
//!   cost little and never become the bottleneck).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub async fn serve_connections<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handler))
                .await;
        });
    }
}

/// `loadbench baseline --listen ADDR`: runs until killed.
pub fn baseline(listen: SocketAddr) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        eprintln!("bare hyper baseline listening on {listen}");
        serve_connections(listener, |req: Request<Incoming>| async move {
            // Read the whole body, as an ingest must, and do nothing with it.
            let _ = req.into_body().collect().await;
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::ACCEPTED;
            Ok::<_, Infallible>(resp)
        })
        .await;
        Ok(())
    })
}

/// What one fake partner saw.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    /// Events received: `"click_id"` keys in the bodies (every bench rule sends one
    /// per event, one event per request or several in a batch).
    pub events: AtomicU64,
    pub body_bytes: AtomicU64,
    /// Bytes of the request URLs (`http://` + host + path and query).
    pub url_bytes: AtomicU64,
    /// Bytes (name + value) of the headers a rule renders: Content-Type, Authorization.
    pub rule_header_bytes: AtomicU64,
}

/// Fake partners listening on given ports, on their own thread; stopped on drop.
pub struct Partners {
    pub counters: Vec<Arc<Counters>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Partners {
    pub fn start(ports: &[u16]) -> Result<Partners, String> {
        let mut listeners = Vec::new();
        for &port in ports {
            let l = std::net::TcpListener::bind(("127.0.0.1", port))
                .map_err(|e| format!("fake partner cannot listen on 127.0.0.1:{port}: {e}"))?;
            l.set_nonblocking(true)
                .map_err(|e| format!("fake partner socket: {e}"))?;
            listeners.push(l);
        }
        let counters: Vec<Arc<Counters>> = ports
            .iter()
            .map(|_| Arc::new(Counters::default()))
            .collect();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let c2 = counters.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread = std::thread::Builder::new()
            .name("fake-partners".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("partner runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    for (l, counters) in listeners.into_iter().zip(c2) {
                        let listener = match TcpListener::from_std(l) {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = ready_tx.send(Err(format!("partner listener: {e}")));
                                return;
                            }
                        };
                        tokio::spawn(serve_connections(listener, move |req| {
                            let counters = counters.clone();
                            answer(req, counters)
                        }));
                    }
                    let _ = ready_tx.send(Ok(()));
                    let _ = rx.await;
                });
                // Dropping the runtime closes every listener and connection.
            })
            .map_err(|e| format!("cannot start the fake partners: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "the fake partners thread died".to_string())??;
        Ok(Partners {
            counters,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn total_requests(&self) -> u64 {
        self.counters
            .iter()
            .map(|c| c.requests.load(Ordering::Relaxed))
            .sum()
    }

    pub fn total(&self, f: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        self.counters
            .iter()
            .map(|c| f(c).load(Ordering::Relaxed))
            .sum()
    }
}

impl Drop for Partners {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    counters: Arc<Counters>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .map_or(0, |h| h.len());
    let url = "http://".len() + host + req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let rule_headers: usize = [hyper::header::CONTENT_TYPE, hyper::header::AUTHORIZATION]
        .iter()
        .filter_map(|n| req.headers().get(n).map(|v| n.as_str().len() + v.len()))
        .sum();
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = bytes.len();
    let events = bytes.windows(10).filter(|w| w == b"\"click_id\"").count();
    counters.events.fetch_add(events as u64, Ordering::Relaxed);
    counters
        .body_bytes
        .fetch_add(body as u64, Ordering::Relaxed);
    counters.url_bytes.fetch_add(url as u64, Ordering::Relaxed);
    counters
        .rule_header_bytes
        .fetch_add(rule_headers as u64, Ordering::Relaxed);
    counters.requests.fetch_add(1, Ordering::Relaxed);
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}
