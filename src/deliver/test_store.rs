//! A test double of `Store`: deliveries in a `Mutex<Vec<_>>`, dead letters in another.
//! Just enough of the contract for the delivery tests, plus switches to make it fail.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::outbound::{Method, OutboundRequest};
use crate::store::{
    AcceptOutcome, DeadLetter, Delivery, DestinationCounts, EventToAccept, ReplaySelector, Store,
    StoreError, StoreResult,
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
        _events: Vec<EventToAccept>,
        _now_ms: i64,
    ) -> StoreResult<Vec<AcceptOutcome>> {
        Err(StoreError::Unavailable("not in this test double".into()))
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
        due.sort_by_key(|d| d.next_attempt_at);
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
        queued.retain(|d| d.id != delivery.id);
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
        Ok(self
            .dead
            .lock()
            .unwrap()
            .iter()
            .filter(|d| destination.is_none_or(|n| d.delivery.destination == n))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn dlq_replay(&self, _which: ReplaySelector, _now_ms: i64) -> StoreResult<usize> {
        Ok(0)
    }

    async fn counts(&self) -> StoreResult<Vec<DestinationCounts>> {
        Ok(Vec::new())
    }

    async fn purge(&self, _now_ms: i64) -> StoreResult<(usize, usize)> {
        Ok((0, 0))
    }

    async fn ready(&self) -> bool {
        true
    }
}
