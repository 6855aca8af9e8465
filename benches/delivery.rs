//! Postbacks per second from the `Deliverer` to 3 local `FakePartner`s answering 200.
//!
//! A queue of N deliveries (N/3 per partner) is filled in a minimal in-memory store
//! (below: a bench double, not the real backend), the workers are notified, and the
//! time to drain it is measured. Store cost is therefore near zero here: this measures
//! the engine and its HTTP client, partners included (same process, same cores).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use postback_relay::deliver::testing::FakePartner;
use postback_relay::deliver::{DeliverOptions, Deliverer};
use postback_relay::outbound::{DeliverySettings, Method, OutboundRequest};
use postback_relay::store::{
    AcceptOutcome, DeadLetter, Delivery, DestinationCounts, EventToAccept, ReplaySelector, Store,
    StoreError, StoreResult,
};
use tokio::sync::Notify;

const PER_PARTNER: usize = 3_000;
const PARTNERS: usize = 3;

/// Due-now queues per destination and a claimed set; counts completions.
#[derive(Default)]
struct BenchStore {
    queues: Mutex<HashMap<String, VecDeque<Delivery>>>,
    claimed: Mutex<HashMap<String, Delivery>>,
    done: AtomicUsize,
    drained: Notify,
    target: AtomicUsize,
}

impl BenchStore {
    fn fill(&self, destination: &str, url: &str, n: usize, round: usize) {
        let mut queues = self.queues.lock().unwrap();
        let q = queues.entry(destination.to_string()).or_default();
        for i in 0..n {
            q.push_back(Delivery {
                id: format!("{destination}-{round}-{i}"),
                destination: destination.to_string(),
                request: OutboundRequest {
                    method: Method::Post,
                    url: url.to_string(),
                    headers: vec![("Content-Type".into(), "application/json".into())],
                    body: Some(
                        r#"{"event_name":"purchase","click_id":"clk_9f2c","value":9.99}"#.into(),
                    ),
                },
                attempts: 0,
                created_at: 0,
                first_attempt_at: None,
                last_attempt_at: None,
                next_attempt_at: 0,
                last_status: None,
                last_error: None,
            });
        }
    }

    fn settled(&self) {
        let done = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        if done >= self.target.load(Ordering::SeqCst) {
            self.drained.notify_one();
        }
    }
}

#[async_trait]
impl Store for BenchStore {
    fn dedupe_secret(&self) -> [u8; 32] {
        [0; 32]
    }
    async fn accept(&self, _: Vec<EventToAccept>, _: i64) -> StoreResult<Vec<AcceptOutcome>> {
        Err(StoreError::Unavailable("bench double".into()))
    }
    async fn claim_due(
        &self,
        destination: &str,
        now_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        let mut queues = self.queues.lock().unwrap();
        let Some(q) = queues.get_mut(destination) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        while out.len() < limit && q.front().is_some_and(|d| d.next_attempt_at <= now_ms) {
            if let Some(d) = q.pop_front() {
                out.push(d);
            }
        }
        let mut claimed = self.claimed.lock().unwrap();
        for d in &out {
            claimed.insert(d.id.clone(), d.clone());
        }
        Ok(out)
    }
    async fn next_due(&self, destination: &str) -> StoreResult<Option<i64>> {
        let queues = self.queues.lock().unwrap();
        Ok(queues
            .get(destination)
            .and_then(|q| q.iter().map(|d| d.next_attempt_at).min()))
    }
    async fn complete(&self, id: &str) -> StoreResult<()> {
        self.claimed.lock().unwrap().remove(id);
        self.settled();
        Ok(())
    }
    async fn retry_later(&self, delivery: Delivery) -> StoreResult<()> {
        self.claimed.lock().unwrap().remove(&delivery.id);
        let mut queues = self.queues.lock().unwrap();
        queues
            .entry(delivery.destination.clone())
            .or_default()
            .push_back(delivery);
        Ok(())
    }
    async fn dead_letter(&self, delivery: Delivery, _: i64) -> StoreResult<()> {
        self.claimed.lock().unwrap().remove(&delivery.id);
        self.settled();
        Ok(())
    }
    async fn release(&self, id: &str) -> StoreResult<()> {
        if let Some(d) = self.claimed.lock().unwrap().remove(id) {
            let mut queues = self.queues.lock().unwrap();
            queues
                .entry(d.destination.clone())
                .or_default()
                .push_front(d);
        }
        Ok(())
    }
    async fn dlq_list(&self, _: Option<&str>, _: usize) -> StoreResult<Vec<DeadLetter>> {
        Ok(Vec::new())
    }
    async fn dlq_replay(&self, _: ReplaySelector, _: i64) -> StoreResult<usize> {
        Ok(0)
    }
    async fn counts(&self) -> StoreResult<Vec<DestinationCounts>> {
        Ok(Vec::new())
    }
    async fn purge(&self, _: i64) -> StoreResult<(usize, usize)> {
        Ok((0, 0))
    }
    async fn ready(&self) -> bool {
        true
    }
}

fn delivery_throughput(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let store = Arc::new(BenchStore::default());
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
        let store_dyn: Arc<dyn Store> = store.clone();
        let opts = DeliverOptions {
            allow_private_networks: true,
            ..DeliverOptions::default()
        };
        let deliverer = Deliverer::start(store_dyn, destinations, opts).expect("deliverer");
        (partners, deliverer)
    });

    let mut group = c.benchmark_group("delivery");
    group.sample_size(10);
    group.throughput(Throughput::Elements((PER_PARTNER * PARTNERS) as u64));
    let mut round = 0usize;
    group.bench_function("drain_3_partners_200", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                store.done.store(0, Ordering::SeqCst);
                store.target.store(PER_PARTNER * PARTNERS, Ordering::SeqCst);
                for (i, p) in partners.iter().enumerate() {
                    store.fill(&format!("p{i}"), &p.url("/pb"), PER_PARTNER, round);
                }
                let start = Instant::now();
                runtime.block_on(async {
                    for i in 0..PARTNERS {
                        deliverer.notify(&format!("p{i}"));
                    }
                    while store.done.load(Ordering::SeqCst) < PER_PARTNER * PARTNERS {
                        let _ = tokio::time::timeout(
                            Duration::from_millis(50),
                            store.drained.notified(),
                        )
                        .await;
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
