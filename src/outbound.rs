//! What goes out to a partner: the rendered request and the destination's delivery
//! settings. These are the values that `rules` produces, `store` persists and
//! `deliver` sends; they hold only what a rule allowed, already rendered.

use std::time::Duration;

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
    /// an event older than the partner accepts. Absent in deliveries queued before
    /// this field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

/// How a destination is delivered to: read from its rule file's `[destination]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    pub rate_limit: Option<RateLimit>,
    pub timeout: Duration,
    pub retry: RetrySettings,
    pub concurrency: usize,
    /// `whsec_...` secret to sign outbound requests per Standard Webhooks, if set.
    pub sign_secret: Option<String>,
    /// What counts as delivered, retried or rejected (`[success]` or the preset's).
    pub success: SuccessRule,
    /// Events older than this are dead-lettered at send time, never sent (the
    /// partner would refuse them: Meta 7 days, Adjust 58 days).
    pub max_event_age: Option<Duration>,
    /// OAuth2 refresh-token credentials: an access token is fetched at send time and
    /// sent as `Authorization: Bearer ...` (Google Ads).
    pub oauth: Option<OAuthSettings>,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            rate_limit: None,
            timeout: Duration::from_secs(10),
            retry: RetrySettings::default(),
            concurrency: 8,
            sign_secret: None,
            success: SuccessRule::default(),
            max_event_age: None,
            oauth: None,
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
