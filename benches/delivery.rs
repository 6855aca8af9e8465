//! Postbacks per second from the `Deliverer` to 3 local `FakePartner`s answering 200,
//! through the real embedded store.
//!
//! Each iteration queues N deliveries (N/3 per partner) with `accept` (untimed), then
//! times the drain: claims, sends, and the store commits that complete them. Partners
//! run in the same process and share the 2 cores with the relay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use postback_relay::fake_partner::FakePartner;
use postback_relay::outbound::{DeliverySettings, Method, OutboundRequest};
use postback_relay::store::embedded::{EmbeddedOptions, EmbeddedStore};
use postback_relay::store::{DedupeKey, EventToAccept, NewDelivery, Store};
use postback_relay::testing::{DeliverOptions, Deliverer};

const PER_PARTNER: usize = 3_000;
const PARTNERS: usize = 3;

async fn fill(store: &dyn Store, urls: &[String], round: u64) {
    for chunk in 0..PER_PARTNER / 100 {
        let events = (0..100)
            .map(|i| {
                let n = (round << 32) | ((chunk * 100 + i) as u64);
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&n.to_le_bytes());
                EventToAccept {
                    dedupe_key: DedupeKey(key),
                    deliveries: urls
                        .iter()
                        .enumerate()
                        .map(|(p, url)| NewDelivery {
                            destination: format!("p{p}"),
                            request: OutboundRequest {
                                method: Method::Post,
                                url: url.clone(),
                                headers: vec![("Content-Type".into(), "application/json".into())],
                                body: Some(
                                    r#"{"event_name":"purchase","click_id":"clk_9f2c","value":9.99}"#
                                        .into(),
                                ),
                                event_time_ms: None,
                            },
                        })
                        .collect(),
                }
            })
            .collect();
        store
            .accept(events, chrono::Utc::now().timestamp_millis())
            .await
            .expect("accept");
    }
}

async fn queued(store: &dyn Store) -> u64 {
    store
        .counts()
        .await
        .map(|c| c.iter().map(|d| d.queued).sum())
        .unwrap_or(u64::MAX)
}

fn delivery_throughput(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(EmbeddedOptions {
            data_dir: dir.path().to_path_buf(),
            dedupe_window: Duration::from_secs(86400),
            max_queued: u64::MAX,
            min_free_space: 0,
            dlq_retention: Duration::from_secs(86400),
        })
        .expect("store"),
    );
    let (partners, deliverer) = runtime.block_on(async {
        let mut partners = Vec::new();
        for _ in 0..PARTNERS {
            partners.push(FakePartner::start_counting().await.expect("fake partner"));
        }
        let settings = DeliverySettings {
            concurrency: 64,
            timeout: Duration::from_secs(10),
            ..DeliverySettings::default()
        };
        let destinations = (0..PARTNERS)
            .map(|i| (format!("p{i}"), settings.clone()))
            .collect();
        let opts = DeliverOptions {
            allow_private_networks: true,
            ..DeliverOptions::default()
        };
        let deliverer = Deliverer::start(store.clone(), destinations, opts).expect("deliverer");
        (partners, deliverer)
    });
    let urls: Vec<String> = partners.iter().map(|p| p.url("/pb")).collect();

    let mut group = c.benchmark_group("delivery");
    group.sample_size(10);
    group.throughput(Throughput::Elements((PER_PARTNER * PARTNERS) as u64));
    let mut round = 0u64;
    group.bench_function("drain_3_partners_200_embedded_store", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                runtime.block_on(fill(store.as_ref(), &urls, round));
                let start = Instant::now();
                runtime.block_on(async {
                    for i in 0..PARTNERS {
                        deliverer.notify(&format!("p{i}"));
                    }
                    while queued(store.as_ref()).await > 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                });
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
    let sent: usize = partners.iter().map(|p| p.request_count()).sum();
    eprintln!("partners received {sent} requests in total");
    runtime.block_on(deliverer.shutdown());
}

criterion_group!(benches, delivery_throughput);
criterion_main!(benches);
