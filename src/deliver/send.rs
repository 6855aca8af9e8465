//! One attempt at send time: the steps between a claimed delivery and its verdict.
//!
//! Owns: the age check (an event older than the partner accepts is never sent),
//! attaching a renewing OAuth token (and one renewal and resend after a 401), and
//! judging the answer with the destination's success rule. Never: touches the store
//! or the breaker (the worker does), or logs anything.

use std::time::Duration;

use super::answer;
use super::client::{Sent, SigningKey};
use super::oauth::TokenSource;
use super::policy::{self, Attempt, Health, Verdict};
use super::worker::Context;
use crate::outbound::DeliverySettings;
use crate::store::Delivery;

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
}

/// What the worker needs to make one attempt.
pub(crate) struct Sender<'a> {
    pub ctx: &'a Context,
    pub settings: &'a DeliverySettings,
    pub signer: &'a Result<Option<SigningKey>, String>,
    pub oauth: Option<&'a TokenSource>,
}

impl Sender<'_> {
    /// Checks the event's age, sends (with a fresh token where the destination uses
    /// OAuth) and judges the answer.
    pub async fn attempt(&self, delivery: &Delivery, now_ms: i64) -> Judged {
        let max_age = self.settings.max_event_age;
        if policy::too_old(delivery.request.event_time_ms, max_age, now_ms) {
            let days = max_age.map(|d| d.as_secs() / 86400).unwrap_or(0);
            return Judged {
                verdict: Verdict::Reject,
                retry_after: None,
                error: Some(format!(
                    "not sent: the event is older than the {days} days this partner accepts"
                )),
                status: None,
                health: Health::Unknown,
                too_old: true,
            };
        }
        let sent = self.send(delivery).await;
        judge_sent(&self.settings.success, sent)
    }

    async fn send(&self, delivery: &Delivery) -> Sent {
        // The stored request holds markers where the partner's credentials go: the
        // destination's current values are put back only for the send.
        let outgoing = match self.settings.credentials.attach(&delivery.request) {
            Ok(request) => Delivery {
                request,
                ..delivery.clone()
            },
            Err(e) => return Sent::failed(Attempt::Invalid(e)),
        };
        let delivery = &outgoing;
        let signer = match self.signer {
            Ok(s) => s.as_ref(),
            Err(e) => return Sent::failed(Attempt::Invalid(e.clone())),
        };
        let client = &self.ctx.client;
        let timeout = self.settings.timeout;
        let Some(source) = self.oauth else {
            return client.send(delivery, timeout, signer).await;
        };
        let token = match source.token(client, timeout).await {
            Ok(t) => t,
            Err(a) => return Sent::failed(a),
        };
        let sent = client
            .send_with_token(delivery, timeout, signer, Some(&token))
            .await;
        if !matches!(sent.attempt, Attempt::Response { status: 401, .. }) {
            return sent;
        }
        // Revoked or expired early: renew once and send again in this attempt.
        match source.renew(client, timeout, &token).await {
            Ok(fresh) => {
                client
                    .send_with_token(delivery, timeout, signer, Some(&fresh))
                    .await
            }
            Err(a) => Sent::failed(a),
        }
    }
}

/// The verdict on what was sent: answers by the success rule, the rest by the
/// delivery contract.
pub(crate) fn judge_sent(rule: &crate::outbound::SuccessRule, sent: Sent) -> Judged {
    let health = policy::health(&sent.attempt);
    let Attempt::Response {
        status,
        retry_after,
    } = sent.attempt
    else {
        return Judged {
            verdict: policy::classify(&sent.attempt),
            retry_after: None,
            error: sent.error,
            status: None,
            health,
            too_old: false,
        };
    };
    let j = answer::judge(rule, status, &sent.body);
    let error = match (j.verdict, j.reason, sent.error) {
        (Verdict::Delivered, _, _) => None,
        (_, Some(reason), Some(e)) => Some(super::client::truncate(
            &format!("{reason} ({e})"),
            super::client::ERROR_MAX,
        )),
        (_, Some(reason), None) => Some(format!("{reason} (HTTP {status})")),
        (_, None, e) => e.or_else(|| Some(format!("HTTP {status}"))),
    };
    Judged {
        verdict: j.verdict,
        retry_after: retry_after.max(j.retry_after),
        error,
        status: Some(status),
        health,
        too_old: false,
    }
}
