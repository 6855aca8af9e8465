//! Reading a partner's answer: did the partner take the event?
//!
//! Owns: the success rule of each destination applied to one answer (status and a
//! bounded prefix of the body): the generic `[success]` table of a rule file, and
//! each preset partner's documented answers (Meta `events_received`, TikTok `code`,
//! Google Ads `partialFailureError` per-conversion codes, Adjust's 202 for a bad
//! token, ...). Never: does I/O or reads a clock; the result is a plain value, and
//! its `reason` names codes and fields, never body values (they may echo personal
//! data).
//!
//! A request may carry several events (a batch): `judge_batch` says whether the
//! answer speaks for all of them or for each (Google's `partialFailureError` names
//! the failed rows by index); an answer that refuses a whole batch for one bad event
//! (Meta) is `Whole`, and the worker bisects the batch to find it.

use std::time::Duration;

use serde_json::Value;

use super::policy::{self, Attempt, Verdict};
use crate::outbound::{DeclaredSuccess, PartnerAnswers, SuccessRule};

/// What one answer means for the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: Verdict,
    /// A wait the partner asked for in its body (Google `TOO_RECENT_EVENT`: 6 hours).
    pub retry_after: Option<Duration>,
    /// Why an answer with a success status is not a success (kept as `last_error`).
    pub reason: Option<String>,
    /// The partner refused the destination's credentials (401, 403, Meta code 190,
    /// Adjust's 202 for a wrong token): no event can get through until they are fixed.
    pub credential: bool,
}

impl Judgement {
    fn of(verdict: Verdict) -> Judgement {
        Judgement {
            verdict,
            retry_after: None,
            reason: None,
            credential: false,
        }
    }

    fn because(verdict: Verdict, reason: impl Into<String>) -> Judgement {
        Judgement {
            verdict,
            retry_after: None,
            reason: Some(reason.into()),
            credential: false,
        }
    }

    fn credential(reason: impl Into<String>) -> Judgement {
        Judgement {
            verdict: Verdict::Reject,
            retry_after: None,
            reason: Some(reason.into()),
            credential: true,
        }
    }
}

/// Google asks to wait 6 hours after a click before uploading its conversion.
pub const GOOGLE_TOO_RECENT_WAIT: Duration = Duration::from_secs(6 * 3600);

/// The verdict of the delivery contract for a bare status (2xx delivered; 408, 425,
/// 429, 5xx retried; the rest rejected).
fn by_status(status: u16) -> Verdict {
    policy::classify(&Attempt::Response {
        status,
        retry_after: None,
    })
}

/// Judges one answer under a destination's success rule.
#[cfg(test)]
pub fn judge(rule: &SuccessRule, status: u16, body: &str) -> Judgement {
    judge_n(rule, status, body, 1)
}

/// What an answer to a request carrying several events says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchJudgement {
    /// The same for every event of the request.
    Whole(Judgement),
    /// One judgement per event, in the request's order.
    PerEvent(Vec<Judgement>),
}

/// Judges the answer to a request carrying `events` events.
pub fn judge_batch(rule: &SuccessRule, status: u16, body: &str, events: usize) -> BatchJudgement {
    if events > 1 && rule == &SuccessRule::Partner(PartnerAnswers::GoogleAds) {
        if let Some(rows) = google_rows(status, body, events) {
            return BatchJudgement::PerEvent(rows);
        }
    }
    if events > 1 && (200..300).contains(&status) {
        let rows = match rule {
            SuccessRule::Partner(PartnerAnswers::PinterestCapi) => pinterest_rows(body, events),
            SuccessRule::Partner(PartnerAnswers::LinkedInCapi) => linkedin_rows(body, events),
            _ => None,
        };
        if let Some(rows) = rows {
            return BatchJudgement::PerEvent(rows);
        }
    }
    BatchJudgement::Whole(judge_n(rule, status, body, events))
}

fn judge_n(rule: &SuccessRule, status: u16, body: &str, events: usize) -> Judgement {
    if rule == &SuccessRule::Partner(PartnerAnswers::GoogleAds)
        && body.contains("CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE")
    {
        // Since 2026-06-15 for developer tokens without offline-conversion imports
        // between December 2025 and May 2026 (docs/partners.md G9): no event can
        // get through this path, so the destination is held, not emptied.
        return Judgement::credential(
            "Google Ads refuses uploadClickConversions for this developer token (notAllowlistedError CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE): send conversions with preset google_data_manager instead (README-RULES.md)",
        );
    }
    if matches!(status, 401 | 403) {
        return Judgement::credential(format!(
            "the partner refused the destination's credentials (HTTP {status}): check the token in the rule file"
        ));
    }
    match rule {
        SuccessRule::AnyTwoHundred => Judgement::of(by_status(status)),
        SuccessRule::Declared(d) => declared(d, status, body),
        SuccessRule::Partner(p) => match p {
            PartnerAnswers::MetaCapi => meta(status, body, events),
            PartnerAnswers::TikTokEvents => tiktok(status, body),
            PartnerAnswers::AppsFlyer => Judgement::of(by_status(status)),
            PartnerAnswers::Adjust => adjust(status, body),
            PartnerAnswers::GoogleAds => google(status, body),
            PartnerAnswers::GoogleDataManager => data_manager(status, body),
            PartnerAnswers::SnapchatCapi | PartnerAnswers::RedditCapi => {
                Judgement::of(by_status(status))
            }
            PartnerAnswers::PinterestCapi => pinterest(status, body, events),
            PartnerAnswers::LinkedInCapi => linkedin(status, body, events),
        },
    }
}

fn json(body: &str) -> Option<Value> {
    serde_json::from_str(body).ok()
}

fn declared(d: &DeclaredSuccess, status: u16, body: &str) -> Judgement {
    let fits = if d.status.is_empty() {
        (200..300).contains(&status)
    } else {
        d.status.contains(&status)
    };
    if !fits {
        if d.retry_status.contains(&status) {
            return Judgement::of(Verdict::Retry);
        }
        return match by_status(status) {
            // A 2xx the rule does not list is not a success.
            Verdict::Delivered => Judgement::because(
                Verdict::Reject,
                format!("HTTP {status} is not listed in [success] status"),
            ),
            v => Judgement::of(v),
        };
    }
    let otherwise = if d.retry_otherwise {
        Verdict::Retry
    } else {
        Verdict::Reject
    };
    if let Some(text) = &d.contains {
        if !body.contains(text.as_str()) {
            return Judgement::because(
                otherwise,
                "the answer does not contain the text [success] contains = ... expects",
            );
        }
    }
    if !d.json.is_empty() {
        let Some(answer) = json(body) else {
            return Judgement::because(
                otherwise,
                "the answer is not JSON, so [success] json = ... cannot hold",
            );
        };
        for (path, want) in &d.json {
            let got = lookup(&answer, path);
            if !same(got, want) {
                return Judgement::because(
                    otherwise,
                    format!("the answer's `{path}` is not what [success] json = ... expects"),
                );
            }
        }
    }
    Judgement::of(Verdict::Delivered)
}

/// A dotted path into a JSON value; numeric parts index arrays.
fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for part in path.split('.') {
        cur = match cur {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Equal as JSON, with numbers compared by value (`0` equals `0.0`).
fn same(got: Option<&Value>, want: &Value) -> bool {
    match (got, want) {
        (Some(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Some(g), w) => g == w,
        (None, _) => false,
    }
}

/// Graph API error codes its documentation says to retry: 1 API Unknown, 2 API
/// Service, 4 / 17 / 32 / 613 rate limits, 341 application limit.
const META_TRANSIENT: &[i64] = &[1, 2, 4, 17, 32, 341, 613];

/// Meta Conversions API: a 200 whose `events_received` counts every event sent.
fn meta(status: u16, body: &str, events: usize) -> Judgement {
    let answer = json(body);
    if (200..300).contains(&status) {
        let received = answer
            .as_ref()
            .and_then(|a| a.get("events_received"))
            .and_then(Value::as_u64);
        let want = events.max(1) as u64;
        return match received {
            Some(n) if n >= want => Judgement::of(Verdict::Delivered),
            Some(n) => Judgement::because(
                Verdict::Reject,
                format!(
                    "Meta answered without events_received >= {want} (got {n}): not every event was taken"
                ),
            ),
            None => Judgement::because(
                Verdict::Reject,
                "Meta answered without events_received: the events were not taken",
            ),
        };
    }
    let error = answer.as_ref().and_then(|a| a.get("error"));
    let transient = error
        .and_then(|e| e.get("is_transient"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let code = error.and_then(|e| e.get("code")).and_then(Value::as_i64);
    if transient || code.is_some_and(|c| META_TRANSIENT.contains(&c)) {
        return Judgement::because(
            Verdict::Retry,
            format!("Meta error code {} is temporary", code.unwrap_or(0)),
        );
    }
    match code {
        // Graph API: 190 "Invalid OAuth 2.0 Access Token" (expired, revoked, wrong).
        Some(190) => {
            Judgement::credential("Meta error code 190: the access token is invalid or expired")
        }
        Some(c) => Judgement::because(by_status(status), format!("Meta error code {c}")),
        None => Judgement::of(by_status(status)),
    }
}

/// TikTok answer codes that are temporary (docs/partners.md T3: TikTok's business API
/// SDK code list): 40100 and 61000 too many requests, 40132 frequency limited, 60001
/// system maintenance; 5xxxx are server errors.
const TIKTOK_TRANSIENT: &[i64] = &[40100, 40132, 60001, 61000];

/// TikTok Events API: HTTP 200 with `code` 0; a non-zero code is an error inside a
/// 200 (`TIKTOK_TRANSIENT` and 5xxxx are temporary).
fn tiktok(status: u16, body: &str) -> Judgement {
    if !(200..300).contains(&status) {
        return Judgement::of(by_status(status));
    }
    let code = json(body)
        .as_ref()
        .and_then(|a| a.get("code"))
        .and_then(Value::as_i64);
    match code {
        Some(0) => Judgement::of(Verdict::Delivered),
        Some(c) if TIKTOK_TRANSIENT.contains(&c) || (50000..60000).contains(&c) => {
            Judgement::because(Verdict::Retry, format!("TikTok code {c} is temporary"))
        }
        Some(c) => Judgement::because(Verdict::Reject, format!("TikTok answered code {c}")),
        None => Judgement::because(
            Verdict::Reject,
            "TikTok answered without a `code`: the event was not confirmed",
        ),
    }
}

/// Adjust S2S: 200 OK. Its S2S security page says a missing or wrong token is
/// answered 202; "earlier unique event tracked" (400) is a duplicate, already
/// recorded; "Device not found" (404) can clear once the SDK's install arrives.
fn adjust(status: u16, body: &str) -> Judgement {
    match status {
        200 => Judgement::of(Verdict::Delivered),
        202 => Judgement::credential(
            "Adjust answered 202: the S2S token is missing or wrong, the event was not recorded",
        ),
        400 if body.contains("earlier unique event tracked") => Judgement::of(Verdict::Delivered),
        404 if body.contains("Device not found") => Judgement::because(
            Verdict::Retry,
            "Adjust has no device data yet (Device not found)",
        ),
        s => Judgement::of(by_status(s)),
    }
}

/// Google Ads `uploadClickConversions` with `partialFailure: true`: an HTTP 200 can
/// carry the conversion's failure in `partialFailureError`.
fn google(status: u16, body: &str) -> Judgement {
    let answer = json(body);
    let codes = |root: &str| -> Vec<(String, String)> {
        answer
            .as_ref()
            .and_then(|a| a.get(root))
            .map(google_codes)
            .unwrap_or_default()
    };
    if (200..300).contains(&status) {
        let codes = codes("partialFailureError");
        let has_failure = answer
            .as_ref()
            .and_then(|a| a.get("partialFailureError"))
            .is_some_and(|e| !e.is_null() && e.as_object().is_none_or(|o| !o.is_empty()));
        if !has_failure {
            return Judgement::of(Verdict::Delivered);
        }
        if codes.is_empty() {
            return Judgement::because(
                Verdict::Reject,
                "Google reported a partial failure without error codes",
            );
        }
        return google_verdict(&codes);
    }
    let codes = codes("error");
    if codes.is_empty() {
        return Judgement::of(by_status(status));
    }
    let judged = google_verdict(&codes);
    match (by_status(status), judged.verdict) {
        // A 429 / 5xx stays retryable whatever the codes say.
        (Verdict::Retry, Verdict::Reject) => Judgement {
            verdict: Verdict::Retry,
            ..judged
        },
        _ => judged,
    }
}

/// Data Manager `ErrorReason`s that no event can get past until the destination's
/// setup is fixed (terms not accepted, a wrong destination or conversion action):
/// the destination is held rather than emptied into the dead letters.
const DATA_MANAGER_SETUP: &[&str] = &[
    "TERMS_AND_CONDITIONS_NOT_SIGNED",
    "INVALID_DESTINATION",
    "INVALID_CONVERSION_ACTION_ID",
    "INVALID_CONVERSION_ACTION_TYPE",
    "DESTINATION_ACCOUNT_ENHANCED_CONVERSIONS_TERMS_NOT_SIGNED",
    "DESTINATION_ACCOUNT_DATA_POLICY_PROHIBITS_ENHANCED_CONVERSIONS",
    "DESTINATION_ACCOUNT_NOT_ENABLED_ENHANCED_CONVERSIONS_FOR_LEADS",
    "PERMISSION_DENIED",
];

/// Google Data Manager `events:ingest` (docs/partners.md D1-D3): a 2xx (with its
/// `requestId`; `{}` for `validateOnly`) took every event. Errors follow Google's
/// error model (`error.status`, `details[]` with `ErrorInfo.reason` and
/// `BadRequest.fieldViolations[].reason`), and the API fails fast: one invalid event
/// refuses the whole request, so a batch refused is bisected to find it.
fn data_manager(status: u16, body: &str) -> Judgement {
    if (200..300).contains(&status) {
        return Judgement::of(Verdict::Delivered);
    }
    let answer = json(body);
    let error = answer.as_ref().and_then(|a| a.get("error"));
    let mut reasons: Vec<String> = Vec::new();
    let details = error
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array);
    for d in details.into_iter().flatten() {
        if let Some(r) = d.get("reason").and_then(Value::as_str) {
            reasons.push(r.to_string());
        }
        let violations = d.get("fieldViolations").and_then(Value::as_array);
        for v in violations.into_iter().flatten() {
            if let Some(r) = v.get("reason").and_then(Value::as_str) {
                reasons.push(r.to_string());
            }
        }
    }
    reasons.dedup();
    let canonical = error
        .and_then(|e| e.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let named = if reasons.is_empty() {
        canonical.to_string()
    } else {
        reasons.join(", ")
    };
    if reasons
        .iter()
        .any(|r| DATA_MANAGER_SETUP.contains(&r.as_str()))
    {
        return Judgement::credential(format!(
            "Google Data Manager refused the destination's setup ({named}): fix the account, conversion action or terms named there"
        ));
    }
    let verdict = match canonical {
        "RESOURCE_EXHAUSTED" | "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED" | "ABORTED" => {
            Verdict::Retry
        }
        _ => by_status(status),
    };
    if named.is_empty() {
        return Judgement::of(verdict);
    }
    Judgement::because(verdict, format!("Google Data Manager: {named}"))
}

/// Pinterest API for Conversions (P1): a 2xx carries `events[]` in request order,
/// each `status` "processed" or "failed" (its `error_message` is not kept: it may
/// quote the event).
fn pinterest_rows(body: &str, events: usize) -> Option<Vec<Judgement>> {
    let answer = json(body)?;
    let rows = answer.get("events")?.as_array()?;
    if rows.len() != events {
        return None;
    }
    Some(
        rows.iter()
            .map(|r| match r.get("status").and_then(Value::as_str) {
                Some("failed") => Judgement::because(
                    Verdict::Reject,
                    "Pinterest did not process the event (status failed)",
                ),
                _ => Judgement::of(Verdict::Delivered),
            })
            .collect(),
    )
}

fn pinterest(status: u16, body: &str, events: usize) -> Judgement {
    if !(200..300).contains(&status) {
        return Judgement::of(by_status(status));
    }
    match pinterest_rows(body, events) {
        Some(rows) => rows
            .into_iter()
            .find(|j| j.verdict != Verdict::Delivered)
            .unwrap_or_else(|| Judgement::of(Verdict::Delivered)),
        None => Judgement::of(Verdict::Delivered),
    }
}

/// LinkedIn `BATCH_CREATE` (L1): a 2xx carries `elements[]` in request order, each
/// with its own HTTP `status` (201 created); a 4xx element is that event's failure,
/// a 429 / 5xx element is retried.
fn linkedin_rows(body: &str, events: usize) -> Option<Vec<Judgement>> {
    let answer = json(body)?;
    let rows = answer.get("elements")?.as_array()?;
    if rows.len() != events {
        return None;
    }
    Some(
        rows.iter()
            .map(|r| {
                let code = r
                    .get("status")
                    .and_then(Value::as_u64)
                    .and_then(|c| u16::try_from(c).ok())
                    .unwrap_or(201);
                match by_status(code) {
                    Verdict::Delivered => Judgement::of(Verdict::Delivered),
                    v => Judgement::because(
                        v,
                        format!("LinkedIn answered HTTP {code} for this conversion"),
                    ),
                }
            })
            .collect(),
    )
}

fn linkedin(status: u16, body: &str, events: usize) -> Judgement {
    if !(200..300).contains(&status) {
        return Judgement::of(by_status(status));
    }
    match linkedin_rows(body, events) {
        Some(rows) => rows
            .into_iter()
            .find(|j| j.verdict != Verdict::Delivered)
            .unwrap_or_else(|| Judgement::of(Verdict::Delivered)),
        None => Judgement::of(Verdict::Delivered),
    }
}

/// (category, code) pairs of a Google Ads failure: `details[].errors[].errorCode`.
fn google_codes(failure: &Value) -> Vec<(String, String)> {
    google_row_codes(failure)
        .into_iter()
        .map(|(_, category, code)| (category, code))
        .collect()
}

/// (row, category, code) of each error of a Google Ads failure; the row is the index
/// in `location.fieldPathElements` of the `conversions` field, when it is given.
fn google_row_codes(failure: &Value) -> Vec<(Option<usize>, String, String)> {
    let mut out = Vec::new();
    let details = failure.get("details").and_then(Value::as_array);
    for detail in details.into_iter().flatten() {
        let errors = detail.get("errors").and_then(Value::as_array);
        for error in errors.into_iter().flatten() {
            let row = error
                .pointer("/location/fieldPathElements")
                .and_then(Value::as_array)
                .and_then(|path| {
                    path.iter()
                        .find(|e| e.get("fieldName").and_then(Value::as_str) == Some("conversions"))
                })
                .and_then(|e| e.get("index"))
                .and_then(Value::as_u64)
                .and_then(|i| usize::try_from(i).ok());
            if let Some(Value::Object(code)) = error.get("errorCode") {
                for (category, value) in code {
                    let value = value.as_str().unwrap_or_default();
                    out.push((row, category.clone(), value.to_string()));
                }
            }
        }
    }
    out
}

/// A 2xx whose `partialFailureError` names the failed conversions by row: one
/// judgement per row (the rows it does not name were taken). `None` when the answer
/// is not such a partial failure (or names no row, or a row past `events`).
fn google_rows(status: u16, body: &str, events: usize) -> Option<Vec<Judgement>> {
    if !(200..300).contains(&status) {
        return None;
    }
    let answer = json(body)?;
    let failure = answer.get("partialFailureError")?;
    let codes = google_row_codes(failure);
    if codes.is_empty()
        || codes
            .iter()
            .any(|(row, _, _)| row.is_none_or(|r| r >= events))
    {
        return None;
    }
    let mut per_row: Vec<Vec<(String, String)>> = vec![Vec::new(); events];
    for (row, category, code) in codes {
        if let Some(r) = row {
            per_row[r].push((category, code));
        }
    }
    Some(
        per_row
            .iter()
            .map(|codes| {
                if codes.is_empty() {
                    Judgement::of(Verdict::Delivered)
                } else {
                    google_verdict(codes)
                }
            })
            .collect(),
    )
}

/// Google's error codes (google-ads-python `errors/types/conversion_upload_error.py`,
/// `quota_error.py`, `internal_error.py`) sorted into done, later and never.
fn google_verdict(codes: &[(String, String)]) -> Judgement {
    let mut later = None;
    let mut never = None;
    for (category, code) in codes {
        match (category.as_str(), code.as_str()) {
            // Already recorded: the partner has it. CLICK_NOT_FOUND: Google's upload
            // guide says to treat it as a warning (the click may be too old or not
            // from an ad it attributes); retrying cannot change it (docs/partners.md G8).
            (
                "conversionUploadError",
                "CLICK_CONVERSION_ALREADY_EXISTS"
                | "DUPLICATE_CLICK_CONVERSION_IN_REQUEST"
                | "CLICK_NOT_FOUND",
            ) => {}
            // "Retry after 6 hours have passed."
            ("conversionUploadError", "TOO_RECENT_EVENT" | "TOO_RECENT_CONVERSION_ACTION") => {
                later.get_or_insert((code.clone(), Some(GOOGLE_TOO_RECENT_WAIT)));
            }
            ("quotaError", "RESOURCE_EXHAUSTED" | "RESOURCE_TEMPORARILY_EXHAUSTED")
            | ("internalError", _) => {
                later.get_or_insert((code.clone(), None));
            }
            _ => {
                never.get_or_insert(format!("{category} {code}"));
            }
        }
    }
    if let Some(what) = never {
        return Judgement::because(Verdict::Reject, format!("Google Ads: {what}"));
    }
    match later {
        Some((code, wait)) => Judgement {
            verdict: Verdict::Retry,
            retry_after: wait,
            reason: Some(format!("Google Ads: {code}, retried later")),
            credential: false,
        },
        None => Judgement::of(Verdict::Delivered),
    }
}

#[cfg(test)]
mod tests;
