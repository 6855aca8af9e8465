//! A partner's later word: after a delivery, how the partner processed it, read back
//! from partners that process asynchronously. Google's Data Manager answers
//! `events:ingest` with a `requestId` and processes later; `requestStatus:retrieve`
//! (GET, next to the ingest URL) tells per destination whether it worked
//! (docs/partners.md D7). Google asks to wait 30 minutes, then to ask again with an
//! exponential backoff until the status is final (up to 24 hours).
//!
//! Owns: the request ID taken from a delivered answer, the status URL, the checks
//! (the first `StatusCheck::first_after` after the delivery, each next one twice as
//! late, at most `tries`; with the destination's OAuth token, as the ingest had),
//! reading the status answer, and recording what it says on the receipts of the
//! request's deliveries (`processing` at once, then each check's word), with a warn
//! log line when processing failed and a metric for each final word. Never: keeps
//! or logs anything of the answer but Google's status and reason words and counts.
//! Each check still to come is kept in the store (`Store::keep_check`) before its
//! wait, and forgotten at the final word: a restart (or, on a shared store, another
//! relay) takes up those whose maker is gone (`resume`, from `Deliverer`'s sweep).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::{PostbackClient, Sent};
use super::oauth::TokenSource;
use super::{DeliveryObserver, PartnerStatusResult};
use crate::outbound::{PartnerAnswers, StatusCheck, SuccessRule};
use crate::store::{PartnerStatus, Store};

/// Most request checks waiting at once per relay; past it a delivered request is
/// recorded `processing` without checks (a backlog of checks must not grow without
/// bound while Google is slow).
pub const MAX_PENDING: usize = 10_000;

/// Longest reason text kept (Google lists at most a few dozen reasons, with counts).
const REASON_MAX: usize = 512;

/// The partner's ID of a delivered request to ask about later: Google Data
/// Manager's `requestId` (a 2xx of `events:ingest`; `validateOnly` answers `{}`).
pub fn request_id(rule: &SuccessRule, status: u16, body: &str) -> Option<String> {
    if rule != &SuccessRule::Partner(PartnerAnswers::GoogleDataManager)
        || !(200..300).contains(&status)
    {
        return None;
    }
    let answer: Value = serde_json::from_str(body).ok()?;
    let id = answer.get("requestId")?.as_str()?;
    let plain = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    (plain && (1..=128).contains(&id.len())).then(|| id.to_string())
}

/// `requestStatus:retrieve` next to `ingest` (the rule's URL, as sent), asking about
/// `request_id`: the same host and API version, so a rule pointed elsewhere (a test
/// partner) is asked there too. `None` when `ingest` does not end in `events:ingest`.
pub fn status_url(ingest: &str, request_id: &str) -> Option<String> {
    let mut url = url::Url::parse(ingest).ok()?;
    let base = url.path().strip_suffix("/events:ingest")?.to_string();
    url.set_path(&format!("{base}/requestStatus:retrieve"));
    url.set_query(None);
    url.set_fragment(None);
    url.query_pairs_mut().append_pair("requestId", request_id);
    Some(url.into())
}

/// What a status answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// Not final yet (`PROCESSING`, `REQUEST_STATUS_UNKNOWN`, no destination listed).
    Processing,
    /// Final for every destination of the request: the worst of them, and Google's
    /// reasons with their counts.
    Final {
        result: PartnerStatusResult,
        reason: Option<String>,
    },
}

/// Google's reason words only (`PROCESSING_ERROR_REASON_INVALID_GCLID`): anything
/// else in their place is not kept.
fn reason_word(v: Option<&Value>) -> Option<&str> {
    let w = v?.as_str()?;
    let plain = !w.is_empty()
        && w.len() <= 100
        && w.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    plain.then_some(w)
}

/// An int64 in proto3 JSON is a string ("3"); a number is taken too.
fn count(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// `Reason: N events` for each entry of `list` (`errorCounts` / `warningCounts`).
fn counted(list: Option<&Value>, prefix: &str, out: &mut Vec<String>) {
    for c in list.and_then(Value::as_array).into_iter().flatten() {
        let Some(word) = reason_word(c.get("reason")) else {
            continue;
        };
        let text = match count(c.get("recordCount")) {
            Some(1) => format!("{prefix}{word}: 1 event"),
            Some(n) => format!("{prefix}{word}: {n} events"),
            None => format!("{prefix}{word}"),
        };
        if !out.contains(&text) {
            out.push(text);
        }
    }
}

/// Reads a `RetrieveRequestStatusResponse` (`requestStatusPerDestination[]`, each
/// with `requestStatus`, `errorInfo.errorCounts[]`, `warningInfo.warningCounts[]`;
/// googleapis `request_status_per_destination.proto`, `processing_errors.proto`).
/// `None` when the answer is not one.
pub fn read_status(body: &str) -> Option<Reading> {
    let answer: Value = serde_json::from_str(body).ok()?;
    let answer = answer.as_object()?;
    let per = match answer.get("requestStatusPerDestination") {
        Some(Value::Array(per)) => per.as_slice(),
        None => &[],
        Some(_) => return None,
    };
    let mut worst = None;
    let mut reasons = Vec::new();
    for d in per {
        let result = match d.get("requestStatus").and_then(Value::as_str) {
            Some("SUCCESS") => PartnerStatusResult::Success,
            Some("PARTIAL_SUCCESS") => PartnerStatusResult::PartialSuccess,
            Some("FAILED") => PartnerStatusResult::Failure,
            _ => return Some(Reading::Processing),
        };
        worst = worst.max(Some(result));
        counted(
            d.get("errorInfo").and_then(|e| e.get("errorCounts")),
            "",
            &mut reasons,
        );
        counted(
            d.get("warningInfo").and_then(|w| w.get("warningCounts")),
            "warning ",
            &mut reasons,
        );
    }
    let Some(result) = worst else {
        return Some(Reading::Processing);
    };
    let reason =
        (!reasons.is_empty()).then(|| super::client::truncate(&reasons.join(", "), REASON_MAX));
    Some(Reading::Final { result, reason })
}

/// The checks this relay is making: how many (bounded by `MAX_PENDING`) and which
/// (destination, request ID), so a kept one is not taken up twice.
#[derive(Default)]
pub(crate) struct Following {
    count: AtomicUsize,
    keys: std::sync::Mutex<HashSet<(String, String)>>,
}

impl Following {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        crate::sync::lock(&self.keys)
    }
}

/// What a follow-up needs of the engine, owned (it outlives the request).
#[derive(Clone)]
pub(crate) struct Checker {
    pub store: Arc<dyn Store>,
    pub client: PostbackClient,
    pub clock: super::Clock,
    pub observer: Option<Arc<dyn DeliveryObserver>>,
    pub tasks: TaskTracker,
    pub stopping: CancellationToken,
    pub following: Arc<Following>,
}

/// One delivered request to ask about.
pub(crate) struct FollowUp {
    pub destination: String,
    /// The deliveries the request carried.
    pub ids: Vec<String>,
    pub request_id: String,
    /// `status_url` of the request, credentials in place (what is asked).
    pub url: String,
    /// The same with credential markers (what the store keeps).
    pub stored_url: String,
    pub check: StatusCheck,
    pub oauth: Option<Arc<TokenSource>>,
    pub timeout: Duration,
    /// Checks already made (by an earlier process, for a kept one).
    pub tries: u32,
    /// Wait before the next check.
    pub wait: Duration,
}

impl FollowUp {
    /// A kept check taken up again, with the destination's settings of now.
    pub fn resumed(
        kept: crate::store::PendingCheck,
        url: String,
        check: StatusCheck,
        oauth: Option<Arc<TokenSource>>,
        timeout: Duration,
        now_ms: i64,
    ) -> FollowUp {
        let wait = u64::try_from(kept.due_at.saturating_sub(now_ms)).unwrap_or(0);
        FollowUp {
            destination: kept.destination,
            ids: kept.ids,
            request_id: kept.request_id,
            url,
            stored_url: kept.url,
            check,
            oauth,
            timeout,
            tries: kept.tries,
            wait: Duration::from_millis(wait),
        }
    }

    fn key(&self) -> (String, String) {
        (self.destination.clone(), self.request_id.clone())
    }
}

/// The wait before check number `n` (from 0): `first_after`, then twice as long each time.
fn wait_before(check: &StatusCheck, n: u32) -> Duration {
    check
        .first_after
        .saturating_mul(2u32.saturating_pow(n.min(31)))
}

impl Checker {
    /// Records the request as `processing` and checks on it later, in the background.
    pub fn start(&self, f: FollowUp) {
        let crowded = self.following.count.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING;
        self.following.lock().insert(f.key());
        self.spawn(f, crowded, true);
    }

    /// Takes up a check kept by a relay that is gone (this one before a restart, or
    /// another one on a shared store), unless this relay is making it already or
    /// has `MAX_PENDING` under way. Returns whether it did.
    pub fn resume(&self, f: FollowUp) -> bool {
        if self.following.count.load(Ordering::Relaxed) >= MAX_PENDING
            || !self.following.lock().insert(f.key())
        {
            return false;
        }
        self.following.count.fetch_add(1, Ordering::Relaxed);
        self.spawn(f, false, false);
        true
    }

    /// Whether this relay is making the check of `request_id` at `destination`.
    pub fn is_following(&self, destination: &str, request_id: &str) -> bool {
        self.following
            .lock()
            .contains(&(destination.to_owned(), request_id.to_owned()))
    }

    fn spawn(&self, f: FollowUp, crowded: bool, fresh: bool) {
        let me = self.clone();
        self.tasks.spawn(async move {
            let key = f.key();
            me.follow(f, crowded, fresh).await;
            me.following.lock().remove(&key);
            me.following.count.fetch_sub(1, Ordering::Relaxed);
        });
    }

    async fn follow(&self, f: FollowUp, crowded: bool, fresh: bool) {
        let mut status = PartnerStatus {
            state: "processing".into(),
            reason: crowded.then(|| {
                format!("not checked: {MAX_PENDING} checks were waiting; ask Google with the request ID")
            }),
            request_id: f.request_id.clone(),
            checked_at: None,
        };
        if fresh {
            self.record(&f, &status).await;
        }
        if crowded {
            return;
        }
        let mut wait = f.wait;
        let mut problem = None;
        for n in f.tries..f.check.tries {
            // Kept before each wait, so that a restart takes it up where it was.
            self.keep(&f, n, wait).await;
            tokio::select! {
                // Stopping: the kept check is taken up by the next start.
                _ = self.stopping.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = wait_before(&f.check, n + 1);
            status.checked_at = Some(self.clock.now_ms());
            match self.ask(&f).await {
                Ok(Reading::Final { result, reason }) => {
                    status.state = result.as_str().into();
                    status.reason = reason;
                    self.record(&f, &status).await;
                    self.forget(&f).await;
                    self.report(&f, result, &status);
                    return;
                }
                Ok(Reading::Processing) => status.reason = None,
                Err(e) => {
                    status.reason = Some(format!("the last check failed: {e}"));
                    problem = Some(e);
                }
            }
            if !self.record(&f, &status).await {
                // No receipt is left to show Google's word: no more checks.
                tracing::debug!(destination = %f.destination, "the receipts of a request are gone: its partner status checks stop");
                self.forget(&f).await;
                return;
            }
        }
        status.state = PartnerStatusResult::Unknown.as_str().into();
        status.reason = Some(match problem {
            Some(e) => format!("no final status after {} checks (last failure: {e}); ask Google with the request ID", f.check.tries),
            None => format!("still processing after {} checks; ask Google with the request ID", f.check.tries),
        });
        self.record(&f, &status).await;
        self.forget(&f).await;
        self.report(&f, PartnerStatusResult::Unknown, &status);
    }

    /// A kept check that cannot be made any more (its destination is gone, or no
    /// longer reads statuses back): its deliveries say so, and it is forgotten.
    pub async fn give_up(&self, kept: &crate::store::PendingCheck, why: &str) {
        let status = PartnerStatus {
            state: PartnerStatusResult::Unknown.as_str().into(),
            reason: Some(format!(
                "not checked: {why}; ask Google with the request ID"
            )),
            request_id: kept.request_id.clone(),
            checked_at: None,
        };
        // Recorded, or asked again at the next sweep.
        if self
            .record_on(&kept.destination, &kept.ids, &status)
            .await
            .is_ok()
        {
            self.forget_kept(&kept.destination, &kept.request_id).await;
        }
    }

    async fn keep(&self, f: &FollowUp, tries: u32, wait: Duration) {
        let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
        let kept = crate::store::PendingCheck {
            destination: f.destination.clone(),
            request_id: f.request_id.clone(),
            ids: f.ids.clone(),
            url: f.stored_url.clone(),
            tries,
            due_at: self.clock.now_ms().saturating_add(wait_ms),
        };
        if let Err(e) = self.store.keep_check(&kept).await {
            tracing::warn!(destination = %f.destination, error = %e, "cannot keep a partner status check: a restart before it is made forgets it");
        }
    }

    async fn forget(&self, f: &FollowUp) {
        self.forget_kept(&f.destination, &f.request_id).await;
    }

    async fn forget_kept(&self, destination: &str, request_id: &str) {
        if let Err(e) = self.store.forget_check(destination, request_id).await {
            tracing::warn!(destination, error = %e, "cannot forget a partner status check");
        }
    }

    /// One `requestStatus:retrieve`: with the destination's token (renewed once after
    /// a 401), read.
    async fn ask(&self, f: &FollowUp) -> Result<Reading, String> {
        let failed = |a| Sent::failed(a).error.unwrap_or_default();
        let token = match &f.oauth {
            Some(source) => Some(
                source
                    .token(&self.client, f.timeout)
                    .await
                    .map_err(failed)?,
            ),
            None => None,
        };
        let mut answer = self
            .client
            .get(&f.url, token.as_deref(), f.timeout)
            .await
            .map_err(failed)?;
        if let (401, Some(source), Some(old)) = (answer.0, &f.oauth, &token) {
            let fresh = source
                .renew(&self.client, f.timeout, old)
                .await
                .map_err(failed)?;
            answer = self
                .client
                .get(&f.url, Some(&fresh), f.timeout)
                .await
                .map_err(failed)?;
        }
        let (status, body) = answer;
        if !(200..300).contains(&status) {
            return Err(super::client::status_reason(status));
        }
        read_status(&body).ok_or_else(|| "the answer is not a request status".to_string())
    }

    /// Records `status` on the request's receipts; `false` when none of them is
    /// left to take it (their retention ran out: Redis keeps receipts
    /// `redis_receipt_retention`, a day by default, and the checks can go on longer).
    async fn record(&self, f: &FollowUp, status: &PartnerStatus) -> bool {
        // A failure to record is no reason to stop: asked again at the next check.
        self.record_on(&f.destination, &f.ids, status)
            .await
            .map_or(true, |n| n > 0)
    }

    /// `record_partner_status`, a failure logged; how many receipts took it.
    async fn record_on(
        &self,
        destination: &str,
        ids: &[String],
        status: &PartnerStatus,
    ) -> Result<usize, ()> {
        self.store
            .record_partner_status(ids, status)
            .await
            .map_err(|e| {
                let first = ids.first().map_or("", String::as_str);
                tracing::warn!(destination, delivery_id = first, error = %e, "cannot record the partner's status of a delivered request");
            })
    }

    fn report(&self, f: &FollowUp, result: PartnerStatusResult, status: &PartnerStatus) {
        if let Some(o) = &self.observer {
            o.partner_status(&f.destination, result);
        }
        let reason = status.reason.as_deref().unwrap_or("");
        let (first, n) = (f.ids.first().map_or("", String::as_str), f.ids.len());
        match result {
            PartnerStatusResult::Failure | PartnerStatusResult::PartialSuccess => {
                tracing::warn!(destination = %f.destination, delivery_id = first, deliveries = n, partner_request_id = %f.request_id, status = result.as_str(), reason, "the partner took a delivered request but could not process all of it");
            }
            PartnerStatusResult::Unknown => {
                tracing::info!(destination = %f.destination, delivery_id = first, deliveries = n, partner_request_id = %f.request_id, reason, "no final partner status for a delivered request");
            }
            PartnerStatusResult::Success => {
                tracing::debug!(destination = %f.destination, delivery_id = first, deliveries = n, "the partner processed a delivered request");
            }
        }
    }
}

#[cfg(test)]
mod tests;
