//! The contract every `Store` backend passes: one suite of behaviour tests and a
//! randomized model test (a sequence of accept / claim / complete / retry /
//! dead-letter / release / replay / purge / restart checked against a plain in-memory
//! model), run against each backend by its own test module.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use proptest::prelude::*;

use super::{
    AcceptOutcome, DedupeKey, Delivery, EventToAccept, NewDelivery, PartnerStatus, PendingCheck,
    ReplaySelector, Store,
};
use crate::outbound::{Method, OutboundRequest};

pub const NOW: i64 = 1_700_000_000_000;
pub const DAY_MS: i64 = 86_400_000;

/// One backend under test. A fresh one starts empty with a 7-day dedupe window and a
/// 14-day dead-letter retention.
pub trait Backend: Send {
    fn store(&self) -> Arc<dyn Store>;
    /// Drop the store as a crash would and open it again; false when the backend
    /// keeps nothing across a restart (then the suite skips restart checks).
    fn restart(&mut self) -> bool;
}

pub type Fresh = dyn Fn() -> Box<dyn Backend> + Sync;

pub fn key(n: u64) -> DedupeKey {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&n.to_be_bytes());
    DedupeKey(k)
}

pub fn event(k: DedupeKey, destinations: &[&str]) -> EventToAccept {
    EventToAccept {
        dedupe_key: k,
        deliveries: destinations
            .iter()
            .map(|d| NewDelivery {
                destination: (*d).to_owned(),
                request: OutboundRequest {
                    method: Method::Post,
                    url: format!("https://{d}.example.test/postback"),
                    headers: vec![("Content-Type".into(), "application/json".into())],
                    body: Some(r#"{"event_name":"purchase","value":9.99}"#.into()),
                    event_time_ms: None,
                },
            })
            .collect(),
    }
}

pub fn ids(o: &AcceptOutcome) -> Vec<String> {
    match o {
        AcceptOutcome::Accepted { delivery_ids } => delivery_ids.clone(),
        AcceptOutcome::Duplicate => panic!("expected accepted, got duplicate"),
    }
}

pub async fn counts_of(s: &dyn Store) -> Vec<(String, u64, u64)> {
    let mut c: Vec<_> = s
        .counts()
        .await
        .expect("counts")
        .into_iter()
        .filter(|c| c.queued > 0 || c.dead > 0)
        .map(|c| (c.destination, c.queued, c.dead))
        .collect();
    c.sort();
    c
}

/// Whether `s` turns ready within `within` (a store that reopens or reconnects by
/// itself), asking every 20 ms.
pub async fn becomes_ready(s: &dyn Store, within: std::time::Duration) -> bool {
    let end = tokio::time::Instant::now() + within;
    loop {
        if s.ready().await.is_ok() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub fn c(d: &str, q: u64, dead: u64) -> (String, u64, u64) {
    (d.to_owned(), q, dead)
}

/// Every behaviour test, each on a fresh backend.
pub async fn suite(fresh: &Fresh) {
    claimed_once_when_due(fresh()).await;
    duplicates_in_window_batch_and_restart(fresh()).await;
    unsettled_claims_due_again_after_restart(fresh()).await;
    complete_and_retry_later(fresh()).await;
    dead_letters_list_and_replay(fresh()).await;
    purge_expired_only(fresh()).await;
    late_settles_are_no_ops(fresh()).await;
    lookup_follows_a_delivery(fresh()).await;
    partner_status_is_recorded_on_delivered_receipts(fresh()).await;
    status_checks_are_kept_until_forgotten(fresh()).await;
    retire_moves_a_destination_to_the_dlq(fresh()).await;
    same_key_concurrently_accepted_once(fresh()).await;
}

async fn claimed_once_when_due(b: Box<dyn Backend>) {
    let s = b.store();
    let out = s
        .accept(vec![event(key(1), &["a", "b"]), event(key(2), &["a"])], NOW)
        .await
        .expect("accept");
    assert_eq!(out.len(), 2);
    let first = ids(&out[0]);
    assert_eq!(first.len(), 2);
    assert!(s
        .claim_due("a", NOW - 1, 10)
        .await
        .expect("claim")
        .is_empty());
    assert_eq!(s.next_due("a").await.expect("next"), Some(NOW));
    let claimed = s.claim_due("a", NOW, 10).await.expect("claim");
    assert_eq!(claimed.len(), 2);
    assert!(claimed
        .iter()
        .all(|d| d.destination == "a" && d.attempts == 0));
    assert_eq!(claimed[0].id, first[0], "in the order accepted");
    assert!(claimed
        .iter()
        .all(|d| d.request.url == "https://a.example.test/postback"));
    assert!(s.claim_due("a", NOW, 10).await.expect("claim").is_empty());
    assert_eq!(s.next_due("a").await.expect("next"), None);
    assert_eq!(s.claim_due("b", NOW, 10).await.expect("claim").len(), 1);
    s.release(&claimed[1].id).await.expect("release");
    assert_eq!(s.claim_due("a", NOW, 10).await.expect("claim").len(), 1);
    assert_eq!(counts_of(&*s).await, vec![c("a", 2, 0), c("b", 1, 0)]);
    assert!(s
        .claim_due("nobody", NOW, 10)
        .await
        .expect("claim")
        .is_empty());
}

async fn duplicates_in_window_batch_and_restart(mut b: Box<dyn Backend>) {
    let s = b.store();
    let out = s
        .accept(vec![event(key(1), &["a"])], NOW)
        .await
        .expect("accept");
    assert!(matches!(out[0], AcceptOutcome::Accepted { .. }));
    let batch = vec![
        event(key(1), &["a"]),
        event(key(2), &["a"]),
        event(key(2), &["a"]),
    ];
    let out = s.accept(batch, NOW + 1000).await.expect("accept");
    assert_eq!(out[0], AcceptOutcome::Duplicate);
    assert!(matches!(out[1], AcceptOutcome::Accepted { .. }));
    assert_eq!(out[2], AcceptOutcome::Duplicate);
    assert_eq!(counts_of(&*s).await, vec![c("a", 2, 0)]);
    drop(s);
    if b.restart() {
        let s = b.store();
        let out = s
            .accept(vec![event(key(1), &["a"])], NOW + DAY_MS)
            .await
            .expect("accept");
        assert_eq!(
            out[0],
            AcceptOutcome::Duplicate,
            "dedupe survives a restart"
        );
    }
    let s = b.store();
    let later = NOW + 8 * DAY_MS;
    let out = s
        .accept(vec![event(key(1), &["a"])], later)
        .await
        .expect("accept");
    assert!(
        matches!(out[0], AcceptOutcome::Accepted { .. }),
        "window over"
    );
    let out = s
        .accept(vec![event(key(1), &["a"])], later + 1)
        .await
        .expect("accept");
    assert_eq!(out[0], AcceptOutcome::Duplicate);
    assert_eq!(counts_of(&*s).await, vec![c("a", 3, 0)]);
}

async fn unsettled_claims_due_again_after_restart(mut b: Box<dyn Backend>) {
    let s = b.store();
    s.accept(vec![event(key(1), &["a"]), event(key(2), &["a"])], NOW)
        .await
        .expect("accept");
    let claimed = s.claim_due("a", NOW, 10).await.expect("claim");
    assert_eq!(claimed.len(), 2);
    let mut d = claimed[1].clone();
    d.attempts = 1;
    d.next_attempt_at = NOW + 10;
    s.retry_later(d).await.expect("retry");
    let again = s.claim_due("a", NOW + 10, 10).await.expect("claim");
    assert_eq!(again.len(), 1);
    drop((s, claimed, again));
    if b.restart() {
        let s = b.store();
        let mut back: Vec<String> = s
            .claim_due("a", NOW + 10, 10)
            .await
            .expect("claim")
            .into_iter()
            .map(|d| d.id)
            .collect();
        back.sort();
        assert_eq!(back.len(), 2, "both due again after a crash");
    }
}

async fn complete_and_retry_later(b: Box<dyn Backend>) {
    let s = b.store();
    s.accept(vec![event(key(1), &["a"]), event(key(2), &["a"])], NOW)
        .await
        .expect("accept");
    let claimed = s.claim_due("a", NOW, 10).await.expect("claim");
    s.complete(&claimed[0].id).await.expect("complete");
    assert_eq!(counts_of(&*s).await, vec![c("a", 1, 0)]);
    let mut d = claimed[1].clone();
    d.attempts = 1;
    d.first_attempt_at = Some(NOW);
    d.last_attempt_at = Some(NOW);
    d.last_status = Some(503);
    d.last_error = Some("HTTP 503".into());
    d.next_attempt_at = NOW + 5_000;
    s.retry_later(d.clone()).await.expect("retry");
    assert!(s
        .claim_due("a", NOW + 4_999, 10)
        .await
        .expect("claim")
        .is_empty());
    assert_eq!(s.next_due("a").await.expect("next"), Some(NOW + 5_000));
    let again = s.claim_due("a", NOW + 5_000, 10).await.expect("claim");
    assert_eq!(again, vec![d.clone()], "same id, updated record");
    assert_eq!(counts_of(&*s).await, vec![c("a", 1, 0)]);
    s.complete(&d.id).await.expect("complete");
    assert_eq!(counts_of(&*s).await, vec![]);
    assert_eq!(s.next_due("a").await.expect("next"), None);
}

async fn dead_letters_list_and_replay(mut b: Box<dyn Backend>) {
    let s = b.store();
    let events = vec![
        event(key(1), &["a"]),
        event(key(2), &["a"]),
        event(key(3), &["b"]),
        event(key(4), &["b"]),
    ];
    s.accept(events, NOW).await.expect("accept");
    let mut all = s.claim_due("a", NOW, 10).await.expect("claim");
    all.extend(s.claim_due("b", NOW, 10).await.expect("claim"));
    for (i, d) in all.iter().enumerate() {
        let mut d = d.clone();
        d.attempts = 12;
        d.first_attempt_at = Some(NOW);
        d.last_error = Some("HTTP 404".into());
        s.dead_letter(d, NOW + i as i64).await.expect("dead letter");
    }
    assert_eq!(counts_of(&*s).await, vec![c("a", 0, 2), c("b", 0, 2)]);
    let listed = s.dlq_list(None, 10).await.expect("list");
    let listed_ids: Vec<_> = listed.iter().map(|d| d.delivery.id.clone()).collect();
    let all_ids: Vec<_> = all.iter().map(|d| d.id.clone()).collect();
    assert_eq!(listed_ids, all_ids, "oldest first");
    assert_eq!(listed[0].delivery.last_error.as_deref(), Some("HTTP 404"));
    assert_eq!(listed[0].delivery.destination, "a");
    assert_eq!(s.dlq_list(Some("b"), 10).await.expect("list").len(), 2);
    assert_eq!(s.dlq_list(None, 1).await.expect("list").len(), 1);
    assert!(s
        .claim_due("a", NOW + DAY_MS, 10)
        .await
        .expect("claim")
        .is_empty());

    let at = NOW + DAY_MS;
    let n = s
        .dlq_replay(ReplaySelector::Id(all[0].id.clone()), at)
        .await
        .expect("replay");
    assert_eq!(n, 1);
    assert_eq!(counts_of(&*s).await, vec![c("a", 1, 1), c("b", 0, 2)]);
    let back = s.claim_due("a", at, 10).await.expect("claim");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].id, all[0].id, "the id is kept");
    assert_eq!((back[0].attempts, back[0].first_attempt_at), (0, None));
    assert_eq!(back[0].next_attempt_at, at);
    let n = s
        .dlq_replay(ReplaySelector::Destination("b".into()), at)
        .await
        .expect("replay");
    assert_eq!(n, 2);
    assert_eq!(counts_of(&*s).await, vec![c("a", 1, 1), c("b", 2, 0)]);
    let none = ReplaySelector::Id("dlv_nope".into());
    assert_eq!(s.dlq_replay(none, at).await.expect("replay"), 0);
    assert_eq!(
        s.dlq_replay(ReplaySelector::All, at).await.expect("replay"),
        1
    );
    assert!(s.dlq_list(None, 10).await.expect("list").is_empty());
    drop((s, back));
    if b.restart() {
        let s = b.store();
        assert_eq!(counts_of(&*s).await, vec![c("a", 2, 0), c("b", 2, 0)]);
        assert_eq!(s.claim_due("b", at, 10).await.expect("claim").len(), 2);
    }
}

async fn purge_expired_only(b: Box<dyn Backend>) {
    let s = b.store();
    s.accept(vec![event(key(1), &["a"]), event(key(2), &["a"])], NOW)
        .await
        .expect("accept");
    s.accept(vec![event(key(3), &["a"])], NOW + 2 * DAY_MS)
        .await
        .expect("accept");
    let claimed = s.claim_due("a", NOW + 2 * DAY_MS, 10).await.expect("claim");
    s.dead_letter(claimed[0].clone(), NOW).await.expect("dead");
    s.dead_letter(claimed[1].clone(), NOW + 10 * DAY_MS)
        .await
        .expect("dead");
    let at = NOW + 7 * DAY_MS + 1000;
    assert_eq!(s.purge(at).await.expect("purge"), (2, 0));
    assert_eq!(s.purge(at).await.expect("purge"), (0, 0));
    let out = s
        .accept(vec![event(key(3), &["a"])], at)
        .await
        .expect("accept");
    assert_eq!(out[0], AcceptOutcome::Duplicate, "unexpired key kept");
    let out = s
        .accept(vec![event(key(1), &["a"])], at)
        .await
        .expect("accept");
    assert!(
        matches!(out[0], AcceptOutcome::Accepted { .. }),
        "purged key is new"
    );
    assert_eq!(s.purge(NOW + 15 * DAY_MS).await.expect("purge").1, 1);
    let left = s.dlq_list(None, 10).await.expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].delivery.id, claimed[1].id);
    assert_eq!(counts_of(&*s).await, vec![c("a", 2, 1)]);
}

async fn late_settles_are_no_ops(b: Box<dyn Backend>) {
    let s = b.store();
    s.accept(vec![event(key(1), &["a"])], NOW)
        .await
        .expect("accept");
    let d = s.claim_due("a", NOW, 10).await.expect("claim").remove(0);
    s.complete(&d.id).await.expect("complete");
    s.complete(&d.id).await.expect("again");
    let mut late = d.clone();
    late.next_attempt_at = NOW + 1;
    s.retry_later(late.clone()).await.expect("late retry");
    s.dead_letter(late, NOW).await.expect("late dead letter");
    s.complete("dlv_0000000000000000000000000")
        .await
        .expect("unknown");
    assert_eq!(counts_of(&*s).await, vec![]);
    assert!(s
        .claim_due("a", NOW + DAY_MS, 10)
        .await
        .expect("claim")
        .is_empty());
    assert!(s.dlq_list(None, 10).await.expect("list").is_empty());
}

async fn lookup_follows_a_delivery(b: Box<dyn Backend>) {
    let s = b.store();
    let out = s
        .accept(vec![event(key(1), &["a", "b"])], NOW)
        .await
        .expect("accept");
    let [a, bb] = <[String; 2]>::try_from(ids(&out[0])).expect("two ids");
    let st = s.lookup(&a).await.expect("lookup").expect("known");
    assert_eq!(
        (st.state, st.destination.as_str(), st.attempts),
        ("queued", "a", 0)
    );
    let mut d = s.claim_due("a", NOW, 10).await.expect("claim").remove(0);
    d.attempts = 1;
    d.last_status = Some(503);
    d.next_attempt_at = NOW + 100;
    s.retry_later(d).await.expect("retry");
    let st = s.lookup(&a).await.expect("lookup").expect("known");
    assert_eq!(
        (st.state, st.attempts, st.last_status),
        ("retrying", 1, Some(503))
    );
    assert_eq!(st.next_attempt_at, Some(NOW + 100));
    let d = s
        .claim_due("a", NOW + 100, 10)
        .await
        .expect("claim")
        .remove(0);
    s.complete(&d.id).await.expect("complete");
    let st = s.lookup(&a).await.expect("lookup").expect("known");
    assert_eq!(st.state, "delivered");
    let d = s.claim_due("b", NOW, 10).await.expect("claim").remove(0);
    s.dead_letter(d, NOW + 5).await.expect("dead");
    let st = s.lookup(&bb).await.expect("lookup").expect("known");
    assert_eq!((st.state, st.finished_at), ("dead", Some(NOW + 5)));
    assert!(s.lookup("dlv_nope").await.expect("lookup").is_none());
    assert!(s.lookup("").await.expect("lookup").is_none());
}

async fn partner_status_is_recorded_on_delivered_receipts(mut b: Box<dyn Backend>) {
    let s = b.store();
    let out = s
        .accept(
            vec![
                event(key(1), &["a"]),
                event(key(2), &["a"]),
                event(key(3), &["a"]),
            ],
            NOW,
        )
        .await
        .expect("accept");
    let [x, y, z] = [ids(&out[0]), ids(&out[1]), ids(&out[2])].map(|v| v[0].clone());
    let claimed = s.claim_due("a", NOW, 10).await.expect("claim");
    assert_eq!(claimed.len(), 3);
    s.complete(&x).await.expect("complete");
    s.complete(&y).await.expect("complete");
    let processing = PartnerStatus {
        state: "processing".into(),
        reason: None,
        request_id: "req-1".into(),
        checked_at: None,
    };
    // Only delivered receipts take it: `z` is still claimed, the last ID unknown.
    let all = [x.clone(), y.clone(), z.clone(), "dlv_nope".to_string()];
    assert_eq!(
        s.record_partner_status(&all, &processing)
            .await
            .expect("record"),
        2
    );
    let st = s.lookup(&x).await.expect("lookup").expect("known");
    assert_eq!(
        (st.state, st.partner_status),
        ("delivered", Some(processing))
    );
    assert_eq!(
        s.lookup(&z)
            .await
            .expect("lookup")
            .expect("known")
            .partner_status,
        None
    );
    // A later word replaces the earlier one, and it lasts as the receipt does.
    let failed = PartnerStatus {
        state: "failure".into(),
        reason: Some("PROCESSING_ERROR_REASON_INVALID_GCLID: 1 event".into()),
        request_id: "req-1".into(),
        checked_at: Some(NOW + 1_800_000),
    };
    assert_eq!(
        s.record_partner_status(std::slice::from_ref(&y), &failed)
            .await
            .expect("record"),
        1
    );
    let st = s.lookup(&y).await.expect("lookup").expect("known");
    assert_eq!(st.partner_status, Some(failed.clone()));
    drop((s, claimed));
    if b.restart() {
        let s = b.store();
        let st = s.lookup(&y).await.expect("lookup").expect("known");
        assert_eq!((st.state, st.partner_status), ("delivered", Some(failed)));
    }
}

async fn status_checks_are_kept_until_forgotten(mut b: Box<dyn Backend>) {
    let s = b.store();
    assert_eq!(s.pending_checks().await.expect("list"), vec![]);
    let check = |dest: &str, req: &str, tries: u32| PendingCheck {
        destination: dest.into(),
        request_id: req.into(),
        ids: vec![format!("dlv_{dest}_{req}_1"), format!("dlv_{dest}_{req}_2")],
        url: format!("https://example.test/v1/requestStatus:retrieve?requestId={req}"),
        tries,
        due_at: NOW + i64::from(tries) * 1_000,
    };
    s.keep_check(&check("a", "r1", 0)).await.expect("keep");
    s.keep_check(&check("a", "r2", 0)).await.expect("keep");
    s.keep_check(&check("b", "r1", 0)).await.expect("keep");
    // The same destination and request ID: replaced, not added.
    s.keep_check(&check("a", "r1", 2)).await.expect("keep");
    s.forget_check("a", "r2").await.expect("forget");
    s.forget_check("a", "never-kept")
        .await
        .expect("forget nothing");
    let sorted = |mut v: Vec<PendingCheck>| {
        v.sort_by(|x, y| (&x.destination, &x.request_id).cmp(&(&y.destination, &y.request_id)));
        v
    };
    let want = vec![check("a", "r1", 2), check("b", "r1", 0)];
    assert_eq!(sorted(s.pending_checks().await.expect("list")), want);
    drop(s);
    if b.restart() {
        let s = b.store();
        assert_eq!(sorted(s.pending_checks().await.expect("list")), want);
    }
}

async fn retire_moves_a_destination_to_the_dlq(b: Box<dyn Backend>) {
    let s = b.store();
    s.accept(
        vec![event(key(1), &["a", "gone"]), event(key(2), &["gone"])],
        NOW,
    )
    .await
    .expect("accept");
    let mut d = s.claim_due("gone", NOW, 1).await.expect("claim").remove(0);
    d.next_attempt_at = NOW + 50;
    s.retry_later(d).await.expect("retry");
    let n = s
        .retire_destination("gone", "destination removed", NOW + 1)
        .await
        .expect("retire");
    assert_eq!(n, 2);
    assert_eq!(counts_of(&*s).await, vec![c("a", 1, 0), c("gone", 0, 2)]);
    let dead = s.dlq_list(Some("gone"), 10).await.expect("list");
    assert!(dead
        .iter()
        .all(|d| d.delivery.last_error.as_deref() == Some("destination removed")));
    assert!(s
        .claim_due("gone", NOW + DAY_MS, 10)
        .await
        .expect("claim")
        .is_empty());
    assert_eq!(
        s.retire_destination("never", "x", NOW)
            .await
            .expect("retire"),
        0
    );
}

async fn same_key_concurrently_accepted_once(b: Box<dyn Backend>) {
    let s = b.store();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.accept(vec![event(key(9), &["a"])], NOW).await })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        let out = t.await.expect("join").expect("accept");
        accepted += usize::from(matches!(out[0], AcceptOutcome::Accepted { .. }));
    }
    assert_eq!(accepted, 1);
    assert_eq!(counts_of(&*s).await, vec![c("a", 1, 0)]);
}

// ---------------------------------------------------------------------------------
// The model test.

#[derive(Debug, Clone)]
pub enum ModelOp {
    Accept(Vec<(u64, u8)>),
    Claim(u8),
    Complete(usize),
    Retry(usize, i64),
    Dead(usize),
    Release(usize),
    ReplayAll,
    ReplayDest(u8),
    Advance(i64),
    Purge,
    Restart,
}

const DESTS: [&str; 3] = ["a", "b", "c"];

pub fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        4 => prop::collection::vec((0u64..6, 1u8..8), 1..4).prop_map(ModelOp::Accept),
        4 => (0u8..3).prop_map(ModelOp::Claim),
        3 => (0usize..64).prop_map(ModelOp::Complete),
        2 => ((0usize..64), (0i64..3_000)).prop_map(|(i, d)| ModelOp::Retry(i, d)),
        2 => (0usize..64).prop_map(ModelOp::Dead),
        1 => (0usize..64).prop_map(ModelOp::Release),
        1 => Just(ModelOp::ReplayAll),
        1 => (0u8..3).prop_map(ModelOp::ReplayDest),
        2 => prop_oneof![Just(1_000i64), Just(DAY_MS), Just(8 * DAY_MS)].prop_map(ModelOp::Advance),
        1 => Just(ModelOp::Purge),
        1 => Just(ModelOp::Restart),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Queued { due: i64 },
    Dead { at: i64 },
    Done,
}

#[derive(Default)]
struct Model {
    marks: HashMap<u64, i64>,
    deliveries: BTreeMap<String, (String, State)>,
    claimed: BTreeMap<String, Delivery>,
}

impl Model {
    fn counts(&self) -> Vec<(String, u64, u64)> {
        let mut m: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (dest, st) in self.deliveries.values() {
            match st {
                State::Queued { .. } => m.entry(dest.clone()).or_default().0 += 1,
                State::Dead { .. } => m.entry(dest.clone()).or_default().1 += 1,
                State::Done => {}
            }
        }
        m.into_iter().map(|(d, (q, x))| (d, q, x)).collect()
    }
}

/// Runs `ops` against a fresh backend and the model, comparing after each step.
pub async fn run_model(mut b: Box<dyn Backend>, ops: Vec<ModelOp>) {
    let mut m = Model::default();
    let mut now = NOW;
    let mut s = b.store();
    for op in ops {
        match op {
            ModelOp::Accept(evs) => model_accept(&*s, &mut m, &evs, now).await,
            ModelOp::Claim(d) => {
                let dest = DESTS[usize::from(d)];
                let got = s.claim_due(dest, now, 1000).await.expect("claim");
                let got_ids: BTreeSet<String> = got.iter().map(|d| d.id.clone()).collect();
                let want: BTreeSet<String> = m
                    .deliveries
                    .iter()
                    .filter(|(id, (dd, st))| {
                        dd == dest
                            && matches!(st, State::Queued { due } if *due <= now)
                            && !m.claimed.contains_key(*id)
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                assert_eq!(got_ids, want, "claim of {dest} at {now}");
                for d in got {
                    m.claimed.insert(d.id.clone(), d);
                }
            }
            ModelOp::Complete(i)
            | ModelOp::Dead(i)
            | ModelOp::Release(i)
            | ModelOp::Retry(i, _)
                if m.claimed.is_empty() =>
            {
                let _ = i;
            }
            ModelOp::Complete(i) => {
                let d = nth(&mut m, i);
                s.complete(&d.id).await.expect("complete");
                m.deliveries.get_mut(&d.id).expect("known").1 = State::Done;
            }
            ModelOp::Retry(i, delay) => {
                let mut d = nth(&mut m, i);
                d.attempts += 1;
                d.next_attempt_at = now + delay;
                s.retry_later(d.clone()).await.expect("retry");
                m.deliveries.get_mut(&d.id).expect("known").1 = State::Queued { due: now + delay };
            }
            ModelOp::Dead(i) => {
                let d = nth(&mut m, i);
                s.dead_letter(d.clone(), now).await.expect("dead");
                m.deliveries.get_mut(&d.id).expect("known").1 = State::Dead { at: now };
            }
            ModelOp::Release(i) => {
                let d = nth(&mut m, i);
                s.release(&d.id).await.expect("release");
            }
            ModelOp::ReplayAll | ModelOp::ReplayDest(_) => {
                let which = match op {
                    ModelOp::ReplayDest(d) => {
                        ReplaySelector::Destination(DESTS[usize::from(d)].to_owned())
                    }
                    _ => ReplaySelector::All,
                };
                let n = s.dlq_replay(which.clone(), now).await.expect("replay");
                let mut want = 0;
                for (dest, st) in m.deliveries.values_mut() {
                    let hit = match &which {
                        ReplaySelector::Destination(x) => x == dest,
                        _ => true,
                    };
                    if hit && matches!(st, State::Dead { .. }) {
                        *st = State::Queued { due: now };
                        want += 1;
                    }
                }
                assert_eq!(n, want, "replayed");
            }
            ModelOp::Advance(ms) => now += ms,
            ModelOp::Purge => {
                s.purge(now).await.expect("purge");
                m.marks.retain(|_, e| *e > now);
                for (_, st) in m.deliveries.values_mut() {
                    if matches!(st, State::Dead { at } if *at < now - 14 * DAY_MS) {
                        *st = State::Done;
                    }
                }
            }
            ModelOp::Restart => {
                drop(s);
                if b.restart() {
                    m.claimed.clear();
                }
                s = b.store();
            }
        }
        assert_eq!(counts_of(&*s).await, m.counts(), "counts");
    }
}

/// The destinations a mask of `ModelOp::Accept` names.
fn dests_of(mask: u8) -> Vec<&'static str> {
    (0..3)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| DESTS[i])
        .collect()
}

/// One accept of (key, destinations mask) events, checked against the model.
async fn model_accept(s: &dyn Store, m: &mut Model, evs: &[(u64, u8)], now: i64) {
    let batch: Vec<EventToAccept> = evs
        .iter()
        .map(|(k, mask)| event(key(*k), &dests_of(*mask)))
        .collect();
    let out = s.accept(batch, now).await.expect("accept");
    let mut seen = BTreeSet::new();
    for ((k, mask), o) in evs.iter().zip(out) {
        let dup = !seen.insert(*k) || m.marks.get(k).is_some_and(|&e| e > now);
        match o {
            AcceptOutcome::Duplicate => assert!(dup, "key {k} wrongly a duplicate"),
            AcceptOutcome::Accepted { delivery_ids } => {
                assert!(!dup, "key {k} accepted twice in its window");
                m.marks.insert(*k, now + 7 * DAY_MS);
                let dests = dests_of(*mask);
                assert_eq!(delivery_ids.len(), dests.len());
                for (id, d) in delivery_ids.into_iter().zip(dests) {
                    m.deliveries
                        .insert(id, (d.to_owned(), State::Queued { due: now }));
                }
            }
        }
    }
}

/// The i-th claimed delivery (modulo), taken out of the claimed set.
fn nth(m: &mut Model, i: usize) -> Delivery {
    let key = m
        .claimed
        .keys()
        .nth(i % m.claimed.len())
        .cloned()
        .expect("non-empty");
    m.claimed.remove(&key).expect("present")
}
