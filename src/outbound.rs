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
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            rate_limit: None,
            timeout: Duration::from_secs(10),
            retry: RetrySettings::default(),
            concurrency: 8,
            sign_secret: None,
        }
    }
}
