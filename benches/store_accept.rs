//! Accept throughput of the embedded store (durable: every accept waits for its
//! group commit's fsync), in a temp dir.
//!
//! - `single_event_64_tasks`: 64 tasks each accepting one event (3 deliveries) at a
//!   time, as single-event HTTP requests would.
//! - `batch_100x3_8_tasks`: 8 tasks each accepting batches of 100 events with 3
//!   deliveries of ~300-byte bodies, as batched requests would.
//!
//! `cargo bench --bench store_accept -- --quick` for a short run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use postback_relay::outbound::{Method, OutboundRequest};
use postback_relay::store::embedded::{EmbeddedOptions, EmbeddedStore};
use postback_relay::store::{DedupeKey, EventToAccept, NewDelivery, Store};
use rand::RngCore;

const DESTINATIONS: [&str; 3] = ["meta", "tiktok", "example-aff"];

fn event() -> EventToAccept {
    let mut k = [0u8; 16];
    rand::rng().fill_bytes(&mut k);
    let body = format!(
        r#"{{"data":[{{"event_name":"Purchase","event_time":1764064800,"event_id":"evt_{:016x}","action_source":"website","user_data":{{"em":["{}"],"client_ip_address":"203.0.113.0"}},"custom_data":{{"value":9.99,"currency":"USD"}}}}]}}"#,
        u64::from_le_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]]),
        "a".repeat(64)
    );
    EventToAccept {
        dedupe_key: DedupeKey(k),
        deliveries: DESTINATIONS
            .iter()
            .map(|d| NewDelivery {
                destination: (*d).to_owned(),
                request: OutboundRequest {
                    method: Method::Post,
                    url: format!("https://{d}.example.test/v1/events"),
                    headers: vec![("Content-Type".into(), "application/json".into())],
                    body: Some(body.clone()),
                    event_time_ms: None,
                },
            })
            .collect(),
    }
}

fn open(dir: &std::path::Path) -> Arc<EmbeddedStore> {
    Arc::new(
        EmbeddedStore::open(EmbeddedOptions {
            data_dir: dir.to_path_buf(),
            dedupe_window: Duration::from_secs(7 * 86_400),
            max_queued: u64::MAX,
            min_free_space: 0,
            dlq_retention: Duration::from_secs(14 * 86_400),
        })
        .expect("open store"),
    )
}

/// Run `iters` accepts of `events_per_accept` events spread over `tasks` tasks.
fn run(
    rt: &tokio::runtime::Runtime,
    store: &Arc<EmbeddedStore>,
    tasks: u64,
    events_per_accept: usize,
    iters: u64,
) -> Duration {
    rt.block_on(async {
        // Events are built before the clock starts: only the store is measured.
        let work: Vec<Vec<Vec<EventToAccept>>> = (0..tasks)
            .map(|t| {
                let n = iters / tasks + u64::from(t < iters % tasks);
                (0..n)
                    .map(|_| (0..events_per_accept).map(|_| event()).collect())
                    .collect()
            })
            .collect();
        let start = Instant::now();
        let handles: Vec<_> = work
            .into_iter()
            .map(|batches| {
                let store = store.clone();
                tokio::spawn(async move {
                    for events in batches {
                        store
                            .accept(events, 1_764_064_800_000)
                            .await
                            .expect("accept");
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("task");
        }
        start.elapsed()
    })
}

fn accept(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("store_accept");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(10);

    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    group.throughput(Throughput::Elements(1));
    group.bench_function("single_event_64_tasks", |b| {
        b.iter_custom(|iters| run(&rt, &store, 64, 1, iters))
    });
    drop(store);

    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    group.throughput(Throughput::Elements(100));
    group.bench_function("batch_100x3_8_tasks", |b| {
        b.iter_custom(|iters| run(&rt, &store, 8, 100, iters))
    });
    group.finish();
}

criterion_group!(benches, accept);
criterion_main!(benches);
