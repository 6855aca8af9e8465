//! What goes out to a partner: the rendered request and the destination's delivery
//! settings. These are the values that `rules` produces, `store` persists and
//! `deliver` sends; they hold only what a rule allowed, already rendered.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

/// HTTP method of a postback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "POST")]
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// One fully rendered partner request. Persisted as is in the queue: a delivery
/// accepted under one rule set keeps this request even after a rule reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundRequest {
    pub method: Method,
    pub url: String,
    /// Header name and value, in order (includes `Content-Type` when there is a body).
    pub headers: Vec<(String, String)>,
    /// The body (JSON or form-encoded), when the method carries one.
    pub body: Option<String>,
    /// The event's time (Unix milliseconds), so the deliver path can refuse to send
    /// an event older than the partner accepts. (No `skip_serializing_if`: the store
    /// encodes requests with postcard, which needs every field in place.)
    #[serde(default)]
    pub event_time_ms: Option<i64>,
}

/// Requests allowed per period (`rate_limit = "50/s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub per: Duration,
}

/// Retry settings of a destination (`retry = { ... }` in its rule file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    pub max_attempts: u32,
    pub give_up_after: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 12,
            give_up_after: Duration::from_secs(3 * 86400),
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3600),
        }
    }
}

/// Marks a credential's place in a stored request: `\u{1}NAME\u{1}`. A control
/// character cannot come from a rendered event value (URL placeholders are
/// percent-encoded; header values with control characters are refused).
const MARK: char = '\u{1}';

/// Shortest value treated as a credential: shorter ones (a region code, a version)
/// would match inside unrelated text.
pub const MIN_CREDENTIAL_LEN: usize = 8;

/// The values a rule file took from the environment (`${NAME}`): partner tokens,
/// keys, IDs. A queued request never holds them: `redact` puts markers in their
/// place before the request is stored, `attach` puts the destination's current values
/// back at send time (so a rotated token is used by retries and replays).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// (name, value), longest value first.
    values: Vec<(String, String)>,
}

/// Never prints a value.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.values.iter().map(|(n, _)| n))
            .finish()
    }
}

impl Credentials {
    pub fn new(substituted: &[(String, String)]) -> Credentials {
        let mut values: Vec<(String, String)> = substituted
            .iter()
            .filter(|(_, v)| v.chars().count() >= MIN_CREDENTIAL_LEN && !v.contains(MARK))
            .cloned()
            .collect();
        values.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
        values.dedup();
        Credentials { values }
    }

    /// Replaces every credential in the URL, the header values and the body by its
    /// marker: the value as written, and as a JSON string or a percent-encoded
    /// component writes it (each form has its own marker, so `attach` writes the
    /// current value back the same way).
    pub fn redact(&self, request: &mut OutboundRequest) {
        for (name, value) in &self.values {
            for (form, text) in forms(value) {
                let mark = form.marker(name);
                replace_in(&mut request.url, &text, &mark);
                for (_, v) in &mut request.headers {
                    replace_in(v, &text, &mark);
                }
                if let Some(body) = &mut request.body {
                    replace_in(body, &text, &mark);
                }
            }
        }
    }

    /// `text` with every credential (in each of its written forms) replaced by
    /// `mask` (for showing a request to a human).
    pub fn mask_in(&self, text: &str, mask: &str) -> String {
        let mut out = text.to_string();
        for (_, value) in &self.values {
            for (_, form) in forms(value) {
                replace_in(&mut out, &form, mask);
            }
        }
        out
    }

    /// The request to send: every marker replaced by the current value. An error
    /// names the variable when the destination's rule no longer sets it.
    pub fn attach(&self, stored: &OutboundRequest) -> Result<OutboundRequest, String> {
        let mut out = stored.clone();
        let marked = stored.url.contains(MARK)
            || stored.headers.iter().any(|(_, v)| v.contains(MARK))
            || stored.body.as_deref().is_some_and(|b| b.contains(MARK));
        if !marked {
            return Ok(out);
        }
        out.url = self.fill(&stored.url)?;
        for (_, v) in &mut out.headers {
            *v = self.fill(v)?;
        }
        if let Some(body) = &stored.body {
            out.body = Some(self.fill(body)?);
        }
        Ok(out)
    }

    /// A stored URL with every marker replaced by the current value.
    pub fn attach_url(&self, stored: &str) -> Result<String, String> {
        self.fill(stored)
    }

    fn fill(&self, text: &str) -> Result<String, String> {
        if !text.contains(MARK) {
            return Ok(text.to_string());
        }
        let mut out = String::with_capacity(text.len() + 32);
        let mut parts = text.split(MARK);
        out.push_str(parts.next().unwrap_or_default());
        while let Some(marker) = parts.next() {
            let (name, form) = Form::parse(marker);
            let value = self
                .values
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
                .ok_or_else(|| {
                    format!("the destination's rule no longer sets ${{{name}}}, which this delivery needs")
                })?;
            out.push_str(&form.write(value));
            out.push_str(parts.next().unwrap_or_default());
        }
        Ok(out)
    }
}

/// Most requests in flight to one destination when the rule sets no `concurrency`: the
/// ceiling of the adaptive controller, which starts low and finds the partner's pace.
pub const DEFAULT_CONCURRENCY: usize = 512;

/// Several queued deliveries in one request (`[batch]`, or a preset with a batch
/// API). Each delivery is rendered and stored alone; at send time the array at `path`
/// of each stored body is joined into the first one's envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSettings {
    /// Dotted path of the array in the JSON body (`data`, `conversions`).
    pub path: String,
    /// Most events in one request (the partner's documented maximum).
    pub max_events: usize,
    /// Longest an event waits for company before its request goes.
    pub max_wait: Duration,
}

/// Most requests in flight to a batching destination when the rule sets no
/// `concurrency`: each carries up to `max_events` deliveries in memory, and 16 batches
/// of 1,000 in flight already move 160,000 events a second to a partner 100 ms away.
pub const DEFAULT_BATCH_CONCURRENCY: usize = 16;

/// Default `max_wait` of a batch.
pub const DEFAULT_BATCH_WAIT: Duration = Duration::from_secs(1);
/// Characters left as they are in a URL component or a form value (RFC 3986
/// "unreserved"); everything else is percent-encoded.
pub const URL_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// How a credential is written where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// As it is (`\u{1}NAME\u{1}`).
    Raw,
    /// Inside a JSON string (`\u{1}NAME:json\u{1}`).
    Json,
    /// Percent-encoded, as a form value or URL placeholder (`\u{1}NAME:pct\u{1}`).
    Percent,
}

impl Form {
    fn marker(self, name: &str) -> String {
        match self {
            Form::Raw => format!("{MARK}{name}{MARK}"),
            Form::Json => format!("{MARK}{name}:json{MARK}"),
            Form::Percent => format!("{MARK}{name}:pct{MARK}"),
        }
    }

    /// The variable name and form of a marker's inside.
    fn parse(marker: &str) -> (&str, Form) {
        match marker.rsplit_once(':') {
            Some((name, "json")) => (name, Form::Json),
            Some((name, "pct")) => (name, Form::Percent),
            _ => (marker, Form::Raw),
        }
    }

    fn write(self, value: &str) -> String {
        match self {
            Form::Raw => value.to_string(),
            Form::Json => {
                let quoted = serde_json::Value::String(value.to_string()).to_string();
                quoted[1..quoted.len() - 1].to_string()
            }
            Form::Percent => utf8_percent_encode(value, URL_COMPONENT).to_string(),
        }
    }
}

/// The distinct ways `value` can be written in a request, most literal first.
fn forms(value: &str) -> Vec<(Form, String)> {
    let mut out: Vec<(Form, String)> = Vec::with_capacity(3);
    for form in [Form::Raw, Form::Json, Form::Percent] {
        let text = form.write(value);
        if !out.iter().any(|(_, t)| *t == text) {
            out.push((form, text));
        }
    }
    out
}

fn replace_in(text: &mut String, from: &str, to: &str) {
    if !from.is_empty() && text.contains(from) {
        *text = text.replace(from, to);
    }
}

/// How a destination is delivered to: read from its rule file's `[destination]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    pub rate_limit: Option<RateLimit>,
    pub timeout: Duration,
    pub retry: RetrySettings,
    /// Ceiling of requests in flight; the adaptive controller stays at or below it.
    pub concurrency: usize,
    /// Several deliveries per request, when the partner takes batches.
    pub batch: Option<BatchSettings>,
    /// `whsec_...` secret to sign outbound requests per Standard Webhooks, if set.
    pub sign_secret: Option<String>,
    /// What the rule file took from the environment, attached at send time.
    pub credentials: Credentials,
    /// What counts as delivered, retried or rejected (`[success]` or the preset's).
    pub success: SuccessRule,
    /// Events older than this are dead-lettered at send time, never sent (the
    /// partner would refuse them: Meta 7 days, Adjust 58 days).
    pub max_event_age: Option<Duration>,
    /// OAuth2 refresh-token credentials: an access token is fetched at send time and
    /// sent as `Authorization: Bearer ...` (Google Ads).
    pub oauth: Option<OAuthSettings>,
    /// The partner processes what it took later, and says how on request: after a
    /// delivery its status is read back (Google Data Manager `requestStatus:retrieve`).
    pub status_check: Option<StatusCheck>,
}

/// When a partner's asynchronous processing status is read back after a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusCheck {
    /// The first check, this long after the delivery (Google: 30 minutes).
    pub first_after: Duration,
    /// The most checks; each waits twice as long as the one before.
    pub tries: u32,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            rate_limit: None,
            timeout: Duration::from_secs(10),
            retry: RetrySettings::default(),
            concurrency: DEFAULT_CONCURRENCY,
            batch: None,
            sign_secret: None,
            credentials: Credentials::default(),
            success: SuccessRule::default(),
            max_event_age: None,
            oauth: None,
            status_check: None,
        }
    }
}

/// How a partner's answer is read: which answers mean the partner took the event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SuccessRule {
    /// Any 2xx is delivered; 408, 425, 429 and 5xx are retried; the rest rejected.
    #[default]
    AnyTwoHundred,
    /// A `[success]` table written in the rule file.
    Declared(DeclaredSuccess),
    /// A preset's reading of its partner's documented answers.
    Partner(PartnerAnswers),
}

/// `[success]` of a rule file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeclaredSuccess {
    /// Statuses that can mean delivered; empty means any 2xx.
    pub status: Vec<u16>,
    /// Dotted paths in the JSON answer and the value each must have.
    pub json: Vec<(String, serde_json::Value)>,
    /// Text the answer must contain.
    pub contains: Option<String>,
    /// Statuses retried besides 408, 425, 429 and 5xx.
    pub retry_status: Vec<u16>,
    /// When the status fits but the answer does not: retry (true) or dead-letter.
    pub retry_otherwise: bool,
}

/// The partners whose answers the presets know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartnerAnswers {
    MetaCapi,
    TikTokEvents,
    AppsFlyer,
    Adjust,
    GoogleAds,
    GoogleDataManager,
    SnapchatCapi,
    PinterestCapi,
    RedditCapi,
    LinkedInCapi,
}

/// OAuth2 refresh-token credentials (RFC 6749 section 6). Secrets: `Debug` hides them.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthSettings {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
}

impl std::fmt::Debug for OAuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthSettings")
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(url: &str, auth: &str) -> OutboundRequest {
        OutboundRequest {
            method: Method::Post,
            url: url.into(),
            headers: vec![("Authorization".into(), auth.into())],
            body: Some("{}".into()),
            event_time_ms: None,
        }
    }

    #[test]
    fn credentials_are_redacted_for_storage_and_attached_at_send_time() {
        let c = Credentials::new(&[
            ("TOKEN".into(), "tok-secret-123".into()),
            ("PIXEL".into(), "9876543210".into()),
            ("REGION".into(), "eu".into()),
        ]);
        let full = request(
            "https://p.example/v1/9876543210/events?key=tok-secret-123&r=eu",
            "Bearer tok-secret-123",
        );
        let mut stored = full.clone();
        c.redact(&mut stored);
        assert!(!stored.url.contains("tok-secret-123") && !stored.url.contains("9876543210"));
        assert!(!stored.headers[0].1.contains("tok-secret-123"));
        assert!(
            stored.url.ends_with("&r=eu"),
            "short values are not credentials"
        );
        assert_eq!(c.attach(&stored).unwrap(), full);

        // A rotated token is what retries send.
        let rotated = Credentials::new(&[
            ("TOKEN".into(), "tok-rotated-456".into()),
            ("PIXEL".into(), "9876543210".into()),
        ]);
        let sent = rotated.attach(&stored).unwrap();
        assert_eq!(sent.headers[0].1, "Bearer tok-rotated-456");
        // A variable the rule no longer sets is a clear error.
        let gone = Credentials::new(&[("PIXEL".into(), "9876543210".into())]);
        let e = gone.attach(&stored).unwrap_err();
        assert!(e.contains("${TOKEN}"), "{e}");
        assert!(
            !format!("{c:?}").contains("tok-secret"),
            "Debug shows names only"
        );
    }

    #[test]
    fn credentials_in_a_body_are_markers_in_every_written_form() {
        let secret = "app/tok+en\"quoted\"==";
        let c = Credentials::new(&[("BODY_TOKEN".into(), secret.into())]);
        let json_form = r#"app/tok+en\"quoted\"=="#;
        let pct_form = "app%2Ftok%2Ben%22quoted%22%3D%3D";
        let mut full = request("https://p.example/x", "none");
        full.body = Some(format!(
            r#"{{"token":"{json_form}","raw":"{secret}"}}&form={pct_form}"#
        ));
        let mut stored = full.clone();
        c.redact(&mut stored);
        let body = stored.body.clone().unwrap();
        for needle in ["app/", "quoted", "app%2F"] {
            assert!(!body.contains(needle), "{needle} in {body:?}");
        }
        assert_eq!(c.attach(&stored).unwrap(), full);
        let masked = c.mask_in(full.body.as_deref().unwrap(), "***");
        assert!(!masked.contains("app"), "{masked}");
        // Markers stored before bodies were redacted still read back.
        let old = "x\u{1}BODY_TOKEN\u{1}y";
        assert_eq!(c.fill(old).unwrap(), format!("x{secret}y"));
    }
}
