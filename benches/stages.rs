//! The accept path, stage by stage, in process (no sockets): nanoseconds and heap
//! allocations per event for each stage, as one Markdown table.
//!
//! The events, the signing secret and the three rule files are the load bench's own
//! (`examples/loadbench/events.rs` and `relay.rs`): ~600-byte unique purchase events,
//! three JSON POST destinations (one hashing and truncating, one renaming with a key
//! header). The allocator is the relay binary's (mimalloc), wrapped to count.
//!
//! Stages, each timed alone over the same events:
//! - signature: `Verifier::verify` (headers, tolerance, HMAC-SHA256 of the body);
//! - parse and validate: `parse_events` as ingest calls it, split in two: validate is
//!   `Event::from_value` on values parsed beforehand, parse the rest;
//! - dedupe key: the keyed hash of `click_id` + `event_name`;
//! - rules + render: `RuleSet::route` (when, rename, privacy, render) for 3 destinations;
//! - store commit: the embedded store's `accept` (one event, 3 deliveries, fsync'd
//!   group commit), 64 tasks at once as 64 connections would; wall time per event;
//! - response: the 202 body (`results` with the delivery IDs) serialised.
//!
//! `cargo bench --bench stages` (about 20 s). `STAGES_EVENTS=N` changes the number of
//! events (default 20,000).

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postback_relay::config::{DedupeConfig, WebhookSecret};
use postback_relay::event::Event;
use postback_relay::rules::RuleSet;
use postback_relay::store::embedded::{EmbeddedOptions, EmbeddedStore};
use postback_relay::store::{EventToAccept, NewDelivery, Store};
use postback_relay::testing::DedupeRule;
use postback_relay::webhooks::{sign, Verifier};
use postback_relay::{parse_events, AcceptReport, EventResult, Framing};

#[allow(dead_code)]
#[path = "../examples/loadbench/events.rs"]
mod events;
#[allow(dead_code)]
#[path = "../examples/loadbench/relay.rs"]
mod relay;

/// mimalloc, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the allocator that does the work.
        unsafe { INNER.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above; `ptr` came from `INNER`.
        unsafe { INNER.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { INNER.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One stage's cost per event.
struct Row {
    stage: &'static str,
    ns: f64,
    allocs: f64,
}

/// CPU time this thread has used, in ns: on a shared machine, wall time would count
/// the time other processes had the core.
fn thread_cpu_ns() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime");
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

/// Runs `f` once (it does `n` events' work on this thread) and returns its CPU time
/// and allocations per event.
fn measure(stage: &'static str, n: usize, f: impl FnOnce()) -> Row {
    let a0 = ALLOCATIONS.load(Ordering::Relaxed);
    let t0 = thread_cpu_ns();
    f();
    let cpu = thread_cpu_ns() - t0;
    let allocs = ALLOCATIONS.load(Ordering::Relaxed) - a0;
    Row {
        stage,
        ns: cpu / n as f64,
        allocs: allocs as f64 / n as f64,
    }
}

/// `measure` for work spread over other threads: wall time per event.
fn measure_wall(stage: &'static str, n: usize, f: impl FnOnce()) -> Row {
    let a0 = ALLOCATIONS.load(Ordering::Relaxed);
    let t0 = Instant::now();
    f();
    let wall = t0.elapsed().as_nanos() as f64;
    let allocs = ALLOCATIONS.load(Ordering::Relaxed) - a0;
    Row {
        stage,
        ns: wall / n as f64,
        allocs: allocs as f64 / n as f64,
    }
}

fn main() {
    let n: usize = std::env::var("STAGES_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let listen: SocketAddr = ([127, 0, 0, 1], 9).into();
    let setup = relay::write_setup(dir.path(), listen, &[9, 9, 9], 3, relay::EMBEDDED)
        .expect("bench rule files");
    let rules = RuleSet::load_dir(&setup.dir.join("rules"), &HashMap::<String, String>::new())
        .unwrap_or_else(|e| panic!("bench rules: {e:?}"));
    let secret = WebhookSecret::parse(events::SECRET).expect("secret");
    let verifier = Verifier::new(std::slice::from_ref(&secret), Duration::from_secs(300));
    let now = chrono::Utc::now();
    let ts = now.timestamp();
    let iso = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let bodies: Vec<String> = (0..n as u64)
        .map(|i| events::event("st", i, &iso))
        .collect();
    let signed: Vec<(String, String)> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let id = format!("msg_{i}");
            let sig = sign(&secret, &id, ts, b.as_bytes());
            (id, sig)
        })
        .collect();
    let ts_text = ts.to_string();
    let mut rows = Vec::new();

    rows.push(measure("signature (verify)", n, || {
        for (b, (id, sig)) in bodies.iter().zip(&signed) {
            let ok = verifier.verify(Some(id), Some(&ts_text), Some(sig), b.as_bytes(), ts);
            assert!(ok.is_ok(), "bench signature refused");
        }
    }));

    // Each stage is timed on its own output thrown away at once (as a request's would
    // be), so that it reuses memory instead of paying first-touch page faults; what the
    // next stage needs is built again outside the clock.
    let parse = |b: &String| -> Event {
        let mut p = parse_events(b.as_bytes(), Framing::Json, 1000, now).expect("parse");
        p.pop().expect("one").expect("valid")
    };
    let total = measure("parse + validate (`parse_events`)", n, || {
        for b in &bodies {
            std::hint::black_box(parse(b));
        }
    });
    let values: Vec<serde_json::Value> = bodies
        .iter()
        .map(|b| serde_json::from_str(b).expect("json"))
        .collect();
    let validate = measure("validate (`Event::from_value`)", n, || {
        for v in values {
            std::hint::black_box(Event::from_value(v, now).expect("valid"));
        }
    });
    rows.push(Row {
        stage: "parse (JSON, duplicate keys refused)",
        ns: total.ns - validate.ns,
        allocs: total.allocs - validate.allocs,
    });
    rows.push(validate);
    let parsed: Vec<Event> = bodies.iter().map(parse).collect();

    let dedupe = DedupeRule::new(&DedupeConfig::default());
    let key_secret = [7u8; 32];
    rows.push(measure("dedupe key", n, || {
        for e in &parsed {
            std::hint::black_box(dedupe.key(&key_secret, e));
        }
    }));
    let route = |e: &Event| -> Vec<NewDelivery> {
        rules
            .route(e)
            .into_iter()
            .filter_map(|r| {
                r.outcome.ok().map(|request| NewDelivery {
                    destination: r.destination.name.clone(),
                    request,
                })
            })
            .collect()
    };
    rows.push(measure("rules + render (3 destinations)", n, || {
        for e in &parsed {
            std::hint::black_box(route(e));
        }
    }));
    let to_store: Vec<EventToAccept> = parsed
        .iter()
        .map(|e| EventToAccept {
            dedupe_key: dedupe.key(&key_secret, e),
            deliveries: route(e),
        })
        .collect();
    assert!(
        to_store.iter().all(|e| e.deliveries.len() == 3),
        "every bench event goes to the 3 destinations"
    );

    let store = Arc::new(
        EmbeddedStore::open(EmbeddedOptions {
            data_dir: setup.data_dir.clone(),
            dedupe_window: Duration::from_secs(7 * 86_400),
            max_queued: u64::MAX,
            min_free_space: 0,
            dlq_retention: Duration::from_secs(14 * 86_400),
        })
        .expect("open store"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut ids: Vec<Vec<String>> = Vec::with_capacity(n);
    rows.push(measure_wall("store commit (64 at once, fsync)", n, || {
        ids = rt.block_on(commit(&store, to_store));
    }));

    let answers: Vec<(String, Vec<String>)> =
        parsed.iter().map(|e| e.id.clone()).zip(ids).collect();
    rows.push(measure("response (202 body)", n, || {
        for (event_id, d) in answers {
            // As ingest answers: the report built from the store's outcome (moved in),
            // serialised.
            let report = AcceptReport {
                accepted: 1,
                results: vec![EventResult::accepted(event_id, d)],
                ..AcceptReport::default()
            };
            std::hint::black_box(serde_json::to_vec(&report).expect("json"));
        }
    }));

    print_table(&rows, n);
}

/// Accepts every event, one per call, from 64 tasks; the delivery IDs of each.
async fn commit(store: &Arc<EmbeddedStore>, events: Vec<EventToAccept>) -> Vec<Vec<String>> {
    let mut lanes: Vec<Vec<(usize, EventToAccept)>> = (0..64).map(|_| Vec::new()).collect();
    for (i, e) in events.into_iter().enumerate() {
        lanes[i % 64].push((i, e));
    }
    let total: usize = lanes.iter().map(Vec::len).sum();
    let tasks: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut out = Vec::with_capacity(lane.len());
                for (i, e) in lane {
                    let now = chrono::Utc::now().timestamp_millis();
                    let got = store.accept(vec![e], now).await.expect("accept");
                    let ids = match got.into_iter().next() {
                        Some(postback_relay::store::AcceptOutcome::Accepted { delivery_ids }) => {
                            delivery_ids
                        }
                        other => panic!("bench event not accepted: {other:?}"),
                    };
                    out.push((i, ids));
                }
                out
            })
        })
        .collect();
    let mut all = vec![Vec::new(); total];
    for t in tasks {
        for (i, ids) in t.await.expect("task") {
            all[i] = ids;
        }
    }
    all
}

fn print_table(rows: &[Row], n: usize) {
    println!("\n| stage (per event, {n} events) | ns | allocations |");
    println!("|---|---:|---:|");
    let (mut ns, mut allocs) = (0.0, 0.0);
    for r in rows {
        println!("| {} | {:.0} | {:.1} |", r.stage, r.ns, r.allocs);
        ns += r.ns;
        allocs += r.allocs;
    }
    println!("| **total** | **{ns:.0}** | **{allocs:.1}** |");
    println!(
        "\nThe store commit is wall time per event with 64 commits in flight (fsync \
         included, so it moves with the disk and the machine's load); every other stage \
         is CPU time of one thread."
    );
}
