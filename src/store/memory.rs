//! An in-memory backend of `Store`, for tests: the whole contract (it passes
//! `contract`), nothing durable, plus switches to make it fail and views for the
//! delivery tests.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::outbound::{Method, OutboundRequest};
use crate::store::{
    AcceptOutcome, DeadLetter, Delivery, DeliveryStatus, DestinationCounts, EventToAccept,
    PartnerStatus, PendingCheck, ReplaySelector, Store, StoreError, StoreResult,
};

#[derive(Default)]
pub struct MemStore {
    queued: Mutex<Vec<Delivery>>,
    claimed: Mutex<HashSet<String>>,
    pub dead: Mutex<Vec<DeadLetter>>,
    pub completed: Mutex<Vec<Delivery>>,
    /// The next this-many calls to `claim_due` fail.
    pub fail_claims: AtomicUsize,
    pub releases: Mutex<Vec<String>>,
    /// Dedupe key -> expiry (ms).
    marks: Mutex<HashMap<[u8; 16], i64>>,
    next_id: AtomicUsize,
    /// How long a mark lasts (ms); 0 means the default of 7 days.
    pub window_ms: i64,
    /// How long dead letters are kept (ms); 0 means the default of 14 days.
    pub retention_ms: i64,
    /// Partner statuses recorded on delivered deliveries, by delivery ID.
    pub partner: Mutex<HashMap<String, PartnerStatus>>,
    /// Partner status checks kept, by destination and request ID.
    pub checks: Mutex<HashMap<(String, String), PendingCheck>>,
    /// Says it is shared by several relays (as Redis is).
    pub shared: bool,
}

impl MemStore {
    pub fn push(&self, d: Delivery) {
        self.queued.lock().unwrap().push(d);
    }

    pub fn completed_ids(&self) -> Vec<String> {
        self.completed
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.id.clone())
            .collect()
    }

    pub fn queued(&self) -> Vec<Delivery> {
        self.queued.lock().unwrap().clone()
    }

    pub fn dead(&self) -> Vec<DeadLetter> {
        self.dead.lock().unwrap().clone()
    }
}

/// A delivery due now to `url`.
pub fn delivery(id: &str, destination: &str, url: &str) -> Delivery {
    Delivery {
        id: id.to_string(),
        destination: destination.to_string(),
        request: OutboundRequest {
            method: Method::Post,
            url: url.to_string(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Some(format!(r#"{{"delivery":"{id}"}}"#)),
            event_time_ms: None,
        },
        attempts: 0,
        created_at: 0,
        first_attempt_at: None,
        last_attempt_at: None,
        next_attempt_at: 0,
        last_status: None,
        last_error: None,
    }
}

#[async_trait]
impl Store for MemStore {
    fn dedupe_secret(&self) -> [u8; 32] {
        [0; 32]
    }

    async fn accept(
        &self,
        events: Vec<EventToAccept>,
        now_ms: i64,
    ) -> StoreResult<Vec<AcceptOutcome>> {
        let window = if self.window_ms > 0 {
            self.window_ms
        } else {
            7 * 86_400_000
        };
        let mut marks = self.marks.lock().unwrap();
        let mut queued = self.queued.lock().unwrap();
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            if marks.get(&ev.dedupe_key.0).is_some_and(|&exp| exp > now_ms) {
                out.push(AcceptOutcome::Duplicate);
                continue;
            }
            marks.insert(ev.dedupe_key.0, now_ms + window);
            let mut ids = Vec::new();
            for d in ev.deliveries {
                let n = self.next_id.fetch_add(1, Ordering::SeqCst);
                let id = format!("mem_{n:08}");
                queued.push(Delivery {
                    id: id.clone(),
                    destination: d.destination,
                    request: d.request,
                    attempts: 0,
                    created_at: now_ms,
                    first_attempt_at: None,
                    last_attempt_at: None,
                    next_attempt_at: now_ms,
                    last_status: None,
                    last_error: None,
                });
                ids.push(id);
            }
            out.push(AcceptOutcome::Accepted { delivery_ids: ids });
        }
        Ok(out)
    }

    async fn claim_due(
        &self,
        destination: &str,
        now_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        if self
            .fail_claims
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Unavailable("injected failure".into()));
        }
        let queued = self.queued.lock().unwrap();
        let mut claimed = self.claimed.lock().unwrap();
        let mut due: Vec<&Delivery> = queued
            .iter()
            .filter(|d| {
                d.destination == destination
                    && d.next_attempt_at <= now_ms
                    && !claimed.contains(&d.id)
            })
            .collect();
        due.sort_by_key(|d| (d.next_attempt_at, d.id.clone()));
        let out: Vec<Delivery> = due.into_iter().take(limit).cloned().collect();
        for d in &out {
            claimed.insert(d.id.clone());
        }
        Ok(out)
    }

    async fn next_due(&self, destination: &str) -> StoreResult<Option<i64>> {
        let queued = self.queued.lock().unwrap();
        let claimed = self.claimed.lock().unwrap();
        Ok(queued
            .iter()
            .filter(|d| d.destination == destination && !claimed.contains(&d.id))
            .map(|d| d.next_attempt_at)
            .min())
    }

    async fn complete(&self, id: &str) -> StoreResult<()> {
        let mut queued = self.queued.lock().unwrap();
        self.claimed.lock().unwrap().remove(id);
        if let Some(i) = queued.iter().position(|d| d.id == id) {
            let d = queued.remove(i);
            self.completed.lock().unwrap().push(d);
        }
        Ok(())
    }

    async fn retry_later(&self, delivery: Delivery) -> StoreResult<()> {
        let mut queued = self.queued.lock().unwrap();
        self.claimed.lock().unwrap().remove(&delivery.id);
        if let Some(d) = queued.iter_mut().find(|d| d.id == delivery.id) {
            *d = delivery;
        }
        Ok(())
    }

    async fn dead_letter(&self, delivery: Delivery, now_ms: i64) -> StoreResult<()> {
        let mut queued = self.queued.lock().unwrap();
        self.claimed.lock().unwrap().remove(&delivery.id);
        let before = queued.len();
        queued.retain(|d| d.id != delivery.id);
        if queued.len() == before {
            return Ok(()); // settled already: a late caller changes nothing
        }
        self.dead.lock().unwrap().push(DeadLetter {
            delivery,
            dead_at: now_ms,
        });
        Ok(())
    }

    async fn release(&self, id: &str) -> StoreResult<()> {
        self.claimed.lock().unwrap().remove(id);
        self.releases.lock().unwrap().push(id.to_string());
        Ok(())
    }

    async fn dlq_list(
        &self,
        destination: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetter>> {
        let mut out: Vec<DeadLetter> = self
            .dead
            .lock()
            .unwrap()
            .iter()
            .filter(|d| destination.is_none_or(|n| d.delivery.destination == n))
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.dead_at, &a.delivery.id).cmp(&(b.dead_at, &b.delivery.id)));
        out.truncate(limit);
        Ok(out)
    }

    async fn dlq_replay(&self, which: ReplaySelector, now_ms: i64) -> StoreResult<usize> {
        let mut dead = self.dead.lock().unwrap();
        let mut queued = self.queued.lock().unwrap();
        let (take, keep): (Vec<DeadLetter>, Vec<DeadLetter>) =
            dead.drain(..).partition(|d| match &which {
                ReplaySelector::All => true,
                ReplaySelector::Destination(n) => &d.delivery.destination == n,
                ReplaySelector::Id(id) => &d.delivery.id == id,
            });
        *dead = keep;
        let n = take.len();
        for mut d in take.into_iter().map(|d| d.delivery) {
            d.attempts = 0;
            d.first_attempt_at = None;
            d.next_attempt_at = now_ms;
            queued.push(d);
        }
        Ok(n)
    }

    async fn counts(&self) -> StoreResult<Vec<DestinationCounts>> {
        let mut counts: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for d in self.queued.lock().unwrap().iter() {
            counts.entry(d.destination.clone()).or_default().0 += 1;
        }
        for d in self.dead.lock().unwrap().iter() {
            counts.entry(d.delivery.destination.clone()).or_default().1 += 1;
        }
        Ok(counts
            .into_iter()
            .map(|(destination, (queued, dead))| DestinationCounts {
                destination,
                queued,
                dead,
            })
            .collect())
    }

    async fn purge(&self, now_ms: i64) -> StoreResult<(usize, usize)> {
        let retention = if self.retention_ms > 0 {
            self.retention_ms
        } else {
            14 * 86_400_000
        };
        let mut marks = self.marks.lock().unwrap();
        let before = marks.len();
        marks.retain(|_, exp| *exp > now_ms);
        let keys = before - marks.len();
        let mut dead = self.dead.lock().unwrap();
        let before = dead.len();
        dead.retain(|d| d.dead_at >= now_ms - retention);
        Ok((keys, before - dead.len()))
    }

    async fn lookup(&self, id: &str) -> StoreResult<Option<DeliveryStatus>> {
        let status = |d: &Delivery, state: &'static str, finished_at: Option<i64>| DeliveryStatus {
            id: d.id.clone(),
            destination: d.destination.clone(),
            state,
            attempts: d.attempts,
            created_at: d.created_at,
            last_attempt_at: d.last_attempt_at,
            next_attempt_at: (state != "dead").then_some(d.next_attempt_at),
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            finished_at,
            partner_status: None,
        };
        if let Some(d) = self.queued.lock().unwrap().iter().find(|d| d.id == id) {
            let state = if d.attempts == 0 {
                "queued"
            } else {
                "retrying"
            };
            return Ok(Some(status(d, state, None)));
        }
        if let Some(d) = self
            .dead
            .lock()
            .unwrap()
            .iter()
            .find(|d| d.delivery.id == id)
        {
            return Ok(Some(status(&d.delivery, "dead", Some(d.dead_at))));
        }
        if let Some(d) = self.completed.lock().unwrap().iter().find(|d| d.id == id) {
            let mut s = status(d, "delivered", d.last_attempt_at);
            s.next_attempt_at = None;
            s.partner_status = self.partner.lock().unwrap().get(id).cloned();
            return Ok(Some(s));
        }
        Ok(None)
    }

    async fn record_partner_status(
        &self,
        ids: &[String],
        status: &PartnerStatus,
    ) -> StoreResult<usize> {
        let completed = self.completed.lock().unwrap();
        let mut partner = self.partner.lock().unwrap();
        let mut n = 0;
        for id in ids {
            if completed.iter().any(|d| d.id == *id) {
                partner.insert(id.clone(), status.clone());
                n += 1;
            }
        }
        Ok(n)
    }

    fn shared(&self) -> bool {
        self.shared
    }

    async fn keep_check(&self, check: &PendingCheck) -> StoreResult<()> {
        let key = (check.destination.clone(), check.request_id.clone());
        self.checks.lock().unwrap().insert(key, check.clone());
        Ok(())
    }

    async fn forget_check(&self, destination: &str, request_id: &str) -> StoreResult<()> {
        let key = (destination.to_owned(), request_id.to_owned());
        self.checks.lock().unwrap().remove(&key);
        Ok(())
    }

    async fn pending_checks(&self) -> StoreResult<Vec<PendingCheck>> {
        Ok(self.checks.lock().unwrap().values().cloned().collect())
    }

    async fn retire_destination(
        &self,
        destination: &str,
        reason: &str,
        now_ms: i64,
    ) -> StoreResult<usize> {
        let mut queued = self.queued.lock().unwrap();
        let (gone, keep): (Vec<Delivery>, Vec<Delivery>) =
            queued.drain(..).partition(|d| d.destination == destination);
        *queued = keep;
        let n = gone.len();
        let mut dead = self.dead.lock().unwrap();
        for mut d in gone {
            self.claimed.lock().unwrap().remove(&d.id);
            d.last_error = Some(reason.to_string());
            dead.push(DeadLetter {
                delivery: d,
                dead_at: now_ms,
            });
        }
        Ok(n)
    }

    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    async fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::MemStore;
    use crate::store::contract::{self, Backend};
    use crate::store::Store;

    struct Memory(Arc<MemStore>);

    impl Backend for Memory {
        fn store(&self) -> Arc<dyn Store> {
            self.0.clone()
        }
        fn restart(&mut self) -> bool {
            false
        }
    }

    fn fresh() -> Box<dyn Backend> {
        Box::new(Memory(Arc::new(MemStore::default())))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_store_contract() {
        contract::suite(&fresh).await;
    }

    proptest! {
        #[test]
        fn agrees_with_the_model(ops in prop::collection::vec(contract::model_op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            rt.block_on(contract::run_model(fresh(), ops));
        }
    }
}
