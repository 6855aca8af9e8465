//! Partners at internet distance: shapes (k) to (n).
//!
//! Every other shape puts the partner on loopback, answering at once. Real partner
//! APIs answer in 50-300 ms; these shapes put a fake partner 100 ms away (it answers
//! after `--partner-delay`) and run the relay **with the rule files' default
//! settings** (no `concurrency`, no `[batch]`: the presets batch by default, and the
//! adaptive controller finds the concurrency):
//!
//! - (k) a backlog: events queued (partners down) for a batching preset (`meta_capi`)
//!   and a single-event GET postback, then drained with the partners up and the rule
//!   files' defaults; events/s delivered to each;
//! - (l) a partner that answers 429 + `Retry-After: 1` above 500 requests/s: how many
//!   seconds it was sent more than that, and whether the backlog drains;
//! - (m) a batch of 1,000 with one event the partner refuses (Meta-style: the whole
//!   request fails): delivered, dead-lettered, and the extra requests it took;
//! - (n) low traffic (one event a second): time from the 202 to the partner.
//!
//! Only 127.0.0.1 is contacted.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::events::{self, NETWORK};
use crate::relay::{self, RelaySetup, ADMIN_TOKEN};
use crate::report::{self, Row};
use crate::{start_relay, Ctx};

/// How one distant partner behaves.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Answer after this long.
    pub delay: Duration,
    /// Answer as Meta does: `{"events_received": N}`, or 400 for a whole request
    /// holding `poison`.
    pub meta: bool,
    pub poison: Option<String>,
    /// Requests per second above which it answers 429 + `Retry-After: 1`.
    pub limit: Option<u64>,
}

/// What a distant partner saw.
#[derive(Default)]
pub struct Seen {
    pub requests: AtomicU64,
    /// Events taken (answered 2xx): one per request without a JSON list, else the
    /// list's length.
    pub events: AtomicU64,
    pub refused: AtomicU64,
    /// Requests received in each second since the partner started (what it limits).
    pub per_second: Mutex<BTreeMap<u64, u64>>,
    /// Requests received in each tenth of a second (for the sliding 1 s rate).
    pub per_tenth: Mutex<BTreeMap<u64, u64>>,
    /// When each request arrived (shape n).
    pub arrivals: Mutex<Vec<Instant>>,
}

/// A fake partner on its own thread and runtime; stopped on drop.
pub struct Distant {
    pub port: u16,
    pub seen: Arc<Seen>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Distant {
    pub fn start(behaviour: Behaviour) -> Result<Distant, String> {
        Distant::start_on(0, behaviour)
    }

    /// On this port (0: any free one).
    pub fn start_on(port: u16, behaviour: Behaviour) -> Result<Distant, String> {
        let l = std::net::TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("distant partner on port {port}: {e}"))?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let seen = Arc::new(Seen::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let s2 = seen.clone();
        let thread = std::thread::Builder::new()
            .name("distant-partner".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(l) else {
                        return;
                    };
                    let started = Instant::now();
                    let b = Arc::new(behaviour);
                    tokio::spawn(crate::servers::serve_connections(listener, move |req| {
                        answer(req, b.clone(), s2.clone(), started)
                    }));
                    let _ = rx.await;
                });
            })
            .map_err(|e| format!("cannot start a distant partner: {e}"))?;
        Ok(Distant {
            port,
            seen,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn events(&self) -> u64 {
        self.seen.events.load(Ordering::Relaxed)
    }
}

impl Drop for Distant {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Events in a body: the length of its `data` list, else 1.
fn events_in(body: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    v.get("data")
        .and_then(|d| d.as_array())
        .map_or(1, |a| a.len() as u64)
}

async fn answer(
    req: Request<Incoming>,
    b: Arc<Behaviour>,
    seen: Arc<Seen>,
    started: Instant,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let arrived = Instant::now();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.requests.fetch_add(1, Ordering::Relaxed);
    seen.arrivals.lock().map(|mut a| a.push(arrived)).ok();
    let since = arrived.duration_since(started);
    let second = since.as_secs();
    if let Ok(mut t) = seen.per_tenth.lock() {
        *t.entry(since.as_millis() as u64 / 100).or_insert(0) += 1;
    }
    let this_second = {
        let mut per = seen.per_second.lock().unwrap_or_else(|e| e.into_inner());
        let n = per.entry(second).or_insert(0);
        *n += 1;
        *n
    };
    tokio::time::sleep(b.delay).await;
    let reply = |status: StatusCode, text: String| {
        let mut r = Response::new(Full::new(Bytes::from(text)));
        *r.status_mut() = status;
        r
    };
    if b.limit.is_some_and(|l| this_second > l) {
        seen.refused.fetch_add(1, Ordering::Relaxed);
        let mut r = reply(StatusCode::TOO_MANY_REQUESTS, String::new());
        r.headers_mut()
            .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
        return Ok(r);
    }
    let poisoned = b
        .poison
        .as_deref()
        .is_some_and(|p| body.windows(p.len()).any(|w| w == p.as_bytes()));
    if poisoned {
        seen.refused.fetch_add(1, Ordering::Relaxed);
        let text =
            r#"{"error":{"message":"Invalid parameter","type":"OAuthException","code":100}}"#;
        return Ok(reply(StatusCode::BAD_REQUEST, text.into()));
    }
    let n = if b.meta { events_in(&body) } else { 1 };
    seen.events.fetch_add(n, Ordering::Relaxed);
    let text = if b.meta {
        format!(r#"{{"events_received":{n},"fbtrace_id":"bench"}}"#)
    } else {
        "ok".into()
    };
    Ok(reply(StatusCode::OK, text))
}

/// While the backlog is queued with the partners down: fast retries, many attempts
/// (the drain then runs on the rule defaults).
const FILL_RETRY: &str = "retry = { max_attempts = 1000, give_up_after = \"1d\", initial_backoff = \"100ms\", max_backoff = \"1s\" }\n";

/// A Meta destination as a user writes it from rules/meta.toml: preset defaults
/// (plus `extra` in `[destination]`).
fn meta_rule(port: u16) -> String {
    meta_rule_with(port, "")
}

fn meta_rule_with(port: u16, extra: &str) -> String {
    format!(
        r#"description = "loadbench: Meta Conversions API 100 ms away, preset defaults"
[destination]
{extra}url = "http://127.0.0.1:{port}/v25.0/123456789012345/events"
headers = {{ Authorization = "Bearer loadbench-meta-token" }}
preset = "meta_capi"
[params]
action_source = "app"
[when]
event_name = ["purchase"]
"attribution.network" = "{NETWORK}"
[privacy]
allow = ["event_id", "event_name", "user.email", "user.ip", "user.user_agent",
         "properties.value", "properties.currency", "properties.order_id"]
hash = ["user.email"]
"#
    )
}

/// A classic GET postback as in rules/example-aff.toml, without `concurrency`.
fn get_rule(port: u16) -> String {
    get_rule_with(port, "")
}

fn get_rule_with(port: u16, extra: &str) -> String {
    format!(
        r#"description = "loadbench: affiliate GET postback 100 ms away, defaults"
[destination]
{extra}url = "http://127.0.0.1:{port}/postback?clickid={{click_id}}&goal={{event_name}}&payout={{properties.value}}"
method = "GET"
[when]
event_name = ["purchase"]
"attribution.network" = "{NETWORK}"
has = ["click_id"]
[privacy]
allow = ["click_id", "event_name", "properties.value"]
"#
    )
}

fn setup(ctx: &Ctx, name: &str, rules: &[(&str, String)]) -> Result<RelaySetup, String> {
    let dir = ctx.args.work.join(format!("shape-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    let listen: SocketAddr = ([127, 0, 0, 1], relay::free_port()?).into();
    let setup = relay::write_setup(&dir, listen, &[], 0, relay::EMBEDDED)?;
    for (file, text) in rules {
        let p = setup.dir.join("rules").join(format!("{file}.toml"));
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(setup)
}

/// Fills `events` events in batches of 100 as fast as the relay takes them.
fn fill(ctx: &Ctx, addr: SocketAddr, events: u64) -> Result<crate::load::Outcome, String> {
    let batches = events.div_ceil(100) as usize;
    let pool = events::pool(&ctx.run_id, batches, 100, Some(events), ctx.threads)?;
    crate::load::run(crate::load::Spec {
        addrs: vec![addr],
        connections: ctx.args.connections,
        warmup: Duration::ZERO,
        duration: None,
        rate: None,
        pool: Arc::new(pool.requests),
        wrap: false,
        deadline: Duration::from_secs_f64(ctx.args.drain_timeout),
    })
}

/// Waits until `done()` or the deadline; when it became true.
fn until(deadline: Instant, mut done: impl FnMut() -> bool) -> Option<Instant> {
    while Instant::now() < deadline {
        if done() {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done().then(Instant::now)
}

fn postback_row(shape: String, rate: f64) -> Row {
    Row {
        shape,
        rps: None,
        eps: None,
        p50: None,
        p99: None,
        postbacks: Some(rate),
        rss_kib: None,
        ratio: None,
    }
}

/// (k): a backlog of events to a batching preset and a single-event postback, both
/// 100 ms away: queued with the partners down, then drained with the rule defaults.
pub fn campaign(ctx: &Ctx, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> Result<(), String> {
    let delay = Duration::from_secs_f64(ctx.args.partner_delay_ms / 1000.0);
    let (meta_port, aff_port) = (relay::free_port()?, relay::free_port()?);
    let events = ctx.args.distance_events;
    eprintln!(
        "loadbench: (k) {events} events queued for a batching preset and a GET postback (partners down), then drained {} ms away",
        delay.as_millis()
    );
    let filling = [
        ("dist-meta", meta_rule_with(meta_port, FILL_RETRY)),
        ("dist-aff", get_rule_with(aff_port, FILL_RETRY)),
    ];
    let setup = setup(ctx, "k", &filling)?;
    let (mut r, _) = start_relay(ctx, &setup, "relay-k-fill.log")?;
    let t = Instant::now();
    let o = fill(ctx, r.addr, events)?;
    let filled = t.elapsed();
    let queued = relay::queued(r.addr)?;
    r.proc.kill9();
    // The drain: the rule files as a user writes them, the partners 100 ms away.
    for (file, text) in [
        ("dist-meta", meta_rule(meta_port)),
        ("dist-aff", get_rule(aff_port)),
    ] {
        let p = setup.dir.join("rules").join(format!("{file}.toml"));
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let meta = Distant::start_on(
        meta_port,
        Behaviour {
            delay,
            meta: true,
            ..Behaviour::default()
        },
    )?;
    let aff = Distant::start_on(
        aff_port,
        Behaviour {
            delay,
            ..Behaviour::default()
        },
    )?;
    let (mut r, _) = start_relay(ctx, &setup, "relay-k-drain.log")?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(ctx.args.drain_timeout);
    let meta_done = until(deadline, || meta.events() >= events);
    let aff_done = until(deadline, || aff.events() >= events);
    let peak = r.proc.status_kib("VmHWM");
    r.proc.terminate(Duration::from_secs(30));
    for (label, seen, done) in [
        ("batching preset (meta_capi)", &meta, meta_done),
        ("single-event GET postback", &aff, aff_done),
    ] {
        let took = done.map_or(deadline, |d| d).duration_since(t0);
        let got = seen.events();
        rows.push(postback_row(
            format!("(k) {} ms away, {label}, rule defaults", delay.as_millis()),
            got as f64 / took.as_secs_f64().max(1e-9),
        ));
        notes.push(format!(
            "(k) {label}: {got} of {events} queued events delivered in {} requests, {:.1} s from ready{}",
            seen.seen.requests.load(Ordering::Relaxed),
            took.as_secs_f64(),
            if done.is_none() { " (NOT all delivered)" } else { "" }
        ));
    }
    notes.push(format!(
        "(k) backlog: {queued} deliveries queued ({events} events x 2) in {:.1} s with the partners down (non-2xx {}); drain peak RSS {}",
        filled.as_secs_f64(),
        o.non_2xx(),
        report::mib(peak)
    ));
    let _ = std::fs::remove_dir_all(&setup.dir);
    Ok(())
}

/// (l): a partner limited to 500 requests/s (429 + Retry-After above it), 100 ms away.
pub fn rate_limited(ctx: &Ctx, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> Result<(), String> {
    let limit = 500;
    let delay = Duration::from_secs_f64(ctx.args.partner_delay_ms / 1000.0);
    let p = Distant::start(Behaviour {
        delay,
        limit: Some(limit),
        ..Behaviour::default()
    })?;
    let setup = setup(ctx, "l", &[("dist-limited", get_rule(p.port))])?;
    let (mut r, _) = start_relay(ctx, &setup, "relay-l.log")?;
    let events = (ctx.args.distance_events / 10).max(2000);
    eprintln!("loadbench: (l) {events} events to a GET postback limited to {limit} requests/s");
    let t0 = Instant::now();
    fill(ctx, r.addr, events)?;
    let deadline = t0 + Duration::from_secs_f64(ctx.args.drain_timeout);
    let done = until(deadline, || p.events() >= events);
    r.proc.terminate(Duration::from_secs(30));
    let per = p
        .seen
        .per_second
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    let tenths = p
        .seen
        .per_tenth
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    let (over_s, longest) = over_limit(&tenths, limit);
    let (over_seconds, over_in_a_row) = calendar_over(&per, limit);
    let took = done.map_or(deadline, |d| d).duration_since(t0);
    rows.push(postback_row(
        format!(
            "(l) {} ms away, 429 above {limit} requests/s, rule defaults",
            delay.as_millis()
        ),
        p.events() as f64 / took.as_secs_f64().max(1e-9),
    ));
    notes.push(format!(
        "(l) {} of {events} delivered in {:.1} s{}; {} requests, {} answered 429; sent over {limit} requests in the trailing second for {over_s:.1} s in all, {longest:.1} s at the longest; by the partner's own count (calendar seconds) over it in {over_seconds} seconds, at most {over_in_a_row} in a row; busiest calendar second {} requests",
        p.events(),
        took.as_secs_f64(),
        if done.is_none() { " (NOT drained)" } else { "" },
        p.seen.requests.load(Ordering::Relaxed),
        p.seen.refused.load(Ordering::Relaxed),
        per.values().max().copied().unwrap_or(0)
    ));
    let _ = std::fs::remove_dir_all(&setup.dir);
    Ok(())
}

/// From requests per calendar second (what the partner limits): in how many seconds
/// it received more than `limit`, and the most such seconds in a row.
fn calendar_over(per_second: &BTreeMap<u64, u64>, limit: u64) -> (u64, u64) {
    let (mut over, mut longest, mut run, mut last) = (0, 0, 0, None);
    for (&second, &n) in per_second {
        if n > limit {
            over += 1;
            run = if last == Some(second.wrapping_sub(1)) {
                run + 1
            } else {
                1
            };
            last = Some(second);
            longest = longest.max(run);
        }
    }
    (over, longest)
}

/// From requests per tenth of a second: how long (seconds, in all and the longest
/// stretch) the trailing one-second count was above `limit`.
fn over_limit(tenths: &BTreeMap<u64, u64>, limit: u64) -> (f64, f64) {
    let end = tenths.keys().last().copied().unwrap_or(0);
    let (mut total, mut longest, mut run) = (0u64, 0u64, 0u64);
    for t in 0..=end {
        let window: u64 = (t.saturating_sub(9)..=t)
            .filter_map(|k| tenths.get(&k))
            .sum();
        if window > limit {
            total += 1;
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    (total as f64 / 10.0, longest as f64 / 10.0)
}

/// Sends one pre-signed request and reads the status.
fn send_one(addr: SocketAddr, request: &[u8]) -> Result<u16, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    s.write_all(request).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "no status".to_string())
}

/// (m): one request of 1,000 events, one of which the partner refuses (whole request).
pub fn poisoned(ctx: &Ctx, notes: &mut Vec<String>) -> Result<(), String> {
    let poison = format!("evt_{}_637\"", ctx.run_id);
    let p = Distant::start(Behaviour {
        delay: Duration::from_secs_f64(ctx.args.partner_delay_ms / 1000.0),
        meta: true,
        poison: Some(poison),
        ..Behaviour::default()
    })?;
    let setup = setup(ctx, "m", &[("dist-meta", meta_rule(p.port))])?;
    let (mut r, _) = start_relay(ctx, &setup, "relay-m.log")?;
    let pool = events::pool(&ctx.run_id, 1, 1000, Some(1000), 1)?;
    let status = send_one(r.addr, &pool.requests[0])?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let dead = || -> u64 {
        relay::http(
            r.addr,
            "GET",
            "/admin/destinations",
            Some(ADMIN_TOKEN),
            Duration::from_secs(10),
        )
        .ok()
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["destinations"][0]["dlq_size"].as_u64())
        .unwrap_or(0)
    };
    let done = until(deadline, || p.events() >= 999 && dead() >= 1);
    let requests = p.seen.requests.load(Ordering::Relaxed);
    notes.push(format!(
        "(m) a batch of 1,000 with one refused event (answered {status}): {} delivered, {} dead-lettered, {} extra requests (budget ceil(log2 1000) + 1 = 11){}",
        p.events(),
        dead(),
        requests.saturating_sub(1),
        if done.is_none() { " (NOT settled within 120 s)" } else { "" }
    ));
    r.proc.terminate(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&setup.dir);
    Ok(())
}

/// (n): one event a second to a batching preset: time from the 202 to the partner.
pub fn low_traffic(ctx: &Ctx, notes: &mut Vec<String>) -> Result<(), String> {
    let delay = Duration::from_secs_f64(ctx.args.partner_delay_ms / 1000.0);
    let p = Distant::start(Behaviour {
        delay,
        meta: true,
        ..Behaviour::default()
    })?;
    let setup = setup(ctx, "n", &[("dist-meta", meta_rule(p.port))])?;
    let (mut r, _) = start_relay(ctx, &setup, "relay-n.log")?;
    let n = 8;
    let pool = events::pool(&ctx.run_id, n, 1, None, 1)?;
    let mut waits = Vec::new();
    for (i, request) in pool.requests.iter().enumerate() {
        let sent = Instant::now();
        send_one(r.addr, request)?;
        let accepted = Instant::now();
        let got = until(sent + Duration::from_secs(10), || {
            p.seen.arrivals.lock().map(|a| a.len() > i).unwrap_or(false)
        });
        if let Some(arrived) = p.seen.arrivals.lock().ok().and_then(|a| a.get(i).copied()) {
            waits.push(arrived.saturating_duration_since(accepted));
        }
        if got.is_none() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(sent.elapsed()));
    }
    r.proc.terminate(Duration::from_secs(30));
    waits.sort();
    let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    notes.push(format!(
        "(n) one event a second to a batching preset ({} ms away, max_wait 1 s): request sent after the 202 in median {:.0} ms, at most {:.0} ms ({} of {n} events); the budget is max_wait + one round trip = {} ms",
        delay.as_millis(),
        ms(waits.get(waits.len() / 2)),
        ms(waits.last()),
        waits.len(),
        1000 + delay.as_millis()
    ));
    let _ = std::fs::remove_dir_all(&setup.dir);
    Ok(())
}
