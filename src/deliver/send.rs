//! One request at send time: the steps between claimed deliveries and a verdict.
//!
//! Owns: the age check (an event older than the partner accepts is never sent),
//! attaching the destination's credentials and a renewing OAuth token (and one
//! renewal and resend after a 401), and judging the answer with the destination's
//! success rule, for the whole request or per event. Never: touches the store, the
//! breaker or the gate (`flight` does), or logs anything.

use std::time::Duration;

use super::answer;
use super::client::PostbackClient;
use super::client::{Outgoing, Sent, SigningKey};
use super::oauth::TokenSource;
use super::policy::{self, Attempt, Health, Verdict};
use crate::outbound::{DeliverySettings, OutboundRequest};

/// An attempt, judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Judged {
    pub verdict: Verdict,
    /// The partner's requested wait (header or body), a floor for the next attempt.
    pub retry_after: Option<Duration>,
    pub error: Option<String>,
    pub status: Option<u16>,
    pub health: Health,
    /// Not sent: the event is older than the partner accepts.
    pub too_old: bool,
    /// The destination's credentials were refused: hold the destination, keep the
    /// deliveries as they were.
    pub held: bool,
    /// Delivered to a partner that processes later: its ID of the request, to ask
    /// about it (`followup`).
    pub partner_request: Option<String>,
}

/// A request's answer, judged: for every event it carried, or for each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Judgement {
    Whole(Judged),
    /// In the request's order.
    PerEvent(Vec<Judged>),
}

/// What the worker needs to make one attempt.
pub(crate) struct Sender<'a> {
    pub client: &'a PostbackClient,
    pub settings: &'a DeliverySettings,
    pub signer: &'a Result<Option<SigningKey>, String>,
    pub oauth: Option<&'a TokenSource>,
}

impl Sender<'_> {
    /// `Some` (the verdict to dead-letter with) when an event of `event_time_ms` is
    /// older than the partner accepts at `now_ms`: it is never sent.
    pub fn too_old(&self, event_time_ms: Option<i64>, now_ms: i64) -> Option<Judged> {
        let max_age = self.settings.max_event_age;
        if !policy::too_old(event_time_ms, max_age, now_ms) {
            return None;
        }
        let days = max_age.map(|d| d.as_secs() / 86400).unwrap_or(0);
        Some(Judged {
            verdict: Verdict::Reject,
            retry_after: None,
            error: Some(format!(
                "not sent: the event is older than the {days} days this partner accepts"
            )),
            status: None,
            health: Health::Unknown,
            too_old: true,
            held: false,
            partner_request: None,
        })
    }

    /// Sends `stored` (carrying `events` events) as `webhook-id: id`, with the
    /// destination's credentials attached (unless `attached` says they already are: a
    /// batch is joined from requests attached one by one), and judges the answer. The second value is
    /// the pause the partner asked of the whole destination (`Retry-After` on a 429
    /// or 503).
    pub async fn attempt(
        &self,
        id: &str,
        stored: &OutboundRequest,
        events: usize,
        attached: bool,
    ) -> (Judgement, Option<Duration>) {
        let sent = self.send(id, stored, events, attached).await;
        let pause = match sent.attempt {
            Attempt::Response {
                status: 429 | 503,
                retry_after,
            } => retry_after,
            _ => None,
        };
        (
            judge_batch_sent(&self.settings.success, sent, events),
            pause,
        )
    }

    async fn send(
        &self,
        id: &str,
        stored: &OutboundRequest,
        events: usize,
        attached: bool,
    ) -> Sent {
        // The stored request holds markers where the partner's credentials go: the
        // destination's current values are put back only for the send.
        let request = if attached {
            std::borrow::Cow::Borrowed(stored)
        } else {
            match self.settings.credentials.attach(stored) {
                Ok(request) => std::borrow::Cow::Owned(request),
                Err(e) => return Sent::failed(Attempt::Invalid(e)),
            }
        };
        let signer = match self.signer {
            Ok(s) => s.as_ref(),
            Err(e) => return Sent::failed(Attempt::Invalid(e.clone())),
        };
        let out = Outgoing {
            id,
            request: &request,
            timeout: self.settings.timeout,
            signer,
            keep: super::client::answer_cap(events),
        };
        let client = self.client;
        let Some(source) = self.oauth else {
            return client.send(&out, None).await;
        };
        let token = match source.token(client, out.timeout).await {
            Ok(t) => t,
            Err(a) => return Sent::failed(a),
        };
        let sent = client.send(&out, Some(&token)).await;
        if !matches!(sent.attempt, Attempt::Response { status: 401, .. }) {
            return sent;
        }
        // Revoked or expired early: renew once and send again in this attempt.
        match source.renew(client, out.timeout, &token).await {
            Ok(fresh) => client.send(&out, Some(&fresh)).await,
            Err(a) => Sent::failed(a),
        }
    }
}

/// The verdict on what was sent: answers by the success rule (for the whole request
/// or per event), the rest by the delivery contract.
pub(crate) fn judge_batch_sent(
    rule: &crate::outbound::SuccessRule,
    sent: Sent,
    events: usize,
) -> Judgement {
    let health = policy::health(&sent.attempt);
    let Attempt::Response {
        status,
        retry_after,
    } = sent.attempt
    else {
        return Judgement::Whole(Judged {
            verdict: policy::classify(&sent.attempt),
            retry_after: None,
            held: matches!(sent.attempt, Attempt::Credential(_)),
            error: sent.error,
            status: None,
            health,
            too_old: false,
            partner_request: None,
        });
    };
    let partner_request = super::followup::request_id(rule, status, &sent.body);
    let judged = |j: answer::Judgement| {
        let error = match (j.verdict, j.reason, sent.error.as_deref()) {
            (Verdict::Delivered, _, _) => None,
            (_, Some(reason), Some(e)) => Some(super::client::truncate(
                &format!("{reason} ({e})"),
                super::client::ERROR_MAX,
            )),
            (_, Some(reason), None) => Some(format!("{reason} (HTTP {status})")),
            (_, None, e) => e
                .map(str::to_string)
                .or_else(|| Some(format!("HTTP {status}"))),
        };
        Judged {
            verdict: j.verdict,
            retry_after: retry_after.max(j.retry_after),
            error,
            status: Some(status),
            health,
            too_old: false,
            held: j.credential,
            partner_request: partner_request
                .clone()
                .filter(|_| j.verdict == Verdict::Delivered),
        }
    };
    match answer::judge_batch(rule, status, &sent.body, events) {
        answer::BatchJudgement::Whole(j) => Judgement::Whole(judged(j)),
        answer::BatchJudgement::PerEvent(rows) => {
            Judgement::PerEvent(rows.into_iter().map(judged).collect())
        }
    }
}
