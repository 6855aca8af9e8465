//! OAuth2 access tokens that renew (Google Ads): the refresh-token grant of RFC 6749
//! section 6, used at send time.
//!
//! Owns: one destination's access token, cached in memory and renewed before it
//! expires (Google's live 3,600 s) and once more when the partner answers 401.
//! Never: writes a token or secret to disk, to the queue or to a log; errors name the
//! token endpoint's status and OAuth error code only.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::client::PostbackClient;
use super::policy::Attempt;
use crate::outbound::OAuthSettings;

/// A token is renewed when less than this is left of its life.
pub const RENEW_BEFORE: Duration = Duration::from_secs(60);

/// Lifetime assumed when the token endpoint does not say (`expires_in` missing).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

struct Cached {
    token: String,
    renew_at: Instant,
}

/// One destination's token. Shared by its sends; one refresh at a time.
pub struct TokenSource {
    settings: OAuthSettings,
    cached: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("token_url", &self.settings.token_url)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub fn new(settings: OAuthSettings) -> TokenSource {
        TokenSource {
            settings,
            cached: Mutex::new(None),
        }
    }

    pub fn settings(&self) -> &OAuthSettings {
        &self.settings
    }

    /// A token that has more than `RENEW_BEFORE` to live, fetched if needed.
    pub async fn token(
        &self,
        client: &PostbackClient,
        timeout: Duration,
    ) -> Result<String, Attempt> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| Instant::now() < c.renew_at) {
            return Ok(c.token.clone());
        }
        let fresh = self.refresh(client, timeout).await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// The partner refused `rejected` (401): a new token, unless another send already
    /// renewed it.
    pub async fn renew(
        &self,
        client: &PostbackClient,
        timeout: Duration,
        rejected: &str,
    ) -> Result<String, Attempt> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| c.token != rejected) {
            return Ok(c.token.clone());
        }
        *cached = None;
        let fresh = self.refresh(client, timeout).await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    async fn refresh(&self, client: &PostbackClient, timeout: Duration) -> Result<Cached, Attempt> {
        let s = &self.settings;
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", s.client_id.as_str()),
            ("client_secret", s.client_secret.as_str()),
            ("refresh_token", s.refresh_token.as_str()),
        ];
        let asked = Instant::now();
        let (status, body) = match client.post_form(&s.token_url, &form, timeout).await {
            Ok(answer) => answer,
            Err(Attempt::Timeout) => {
                return Err(Attempt::Connect(
                    "the OAuth token endpoint timed out".into(),
                ))
            }
            Err(Attempt::Connect(e)) => {
                return Err(Attempt::Connect(format!(
                    "cannot reach the OAuth token endpoint: {e}"
                )))
            }
            Err(other) => return Err(other),
        };
        read_token(status, &body, asked)
    }
}

/// The token endpoint's answer: a token and when to renew it, or why not. A refused
/// refresh token (400/401: `invalid_grant`, `invalid_client`) cannot succeed on a
/// retry; a 429 or 5xx can.
fn read_token(status: u16, body: &str, asked: Instant) -> Result<Cached, Attempt> {
    let answer: Option<Value> = serde_json::from_str(body).ok();
    if !(200..300).contains(&status) {
        let code = answer
            .as_ref()
            .and_then(|a| a.get("error"))
            .and_then(Value::as_str)
            .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .unwrap_or("no error code");
        let message = format!("the OAuth token endpoint answered HTTP {status} ({code})");
        return Err(if status == 429 || status >= 500 {
            Attempt::Connect(message)
        } else {
            Attempt::Credential(format!(
                "{message}: check the client ID, client secret and refresh token"
            ))
        });
    }
    let token = answer
        .as_ref()
        .and_then(|a| a.get("access_token"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Attempt::Invalid("the OAuth token endpoint answered without an access_token".into())
        })?;
    let lifetime = answer
        .as_ref()
        .and_then(|a| a.get("expires_in"))
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LIFETIME);
    Ok(Cached {
        token: token.to_string(),
        renew_at: asked + lifetime.saturating_sub(RENEW_BEFORE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_partner::{FakePartner, Reply};

    fn source(url: String) -> TokenSource {
        TokenSource::new(OAuthSettings {
            token_url: url,
            client_id: "cid".into(),
            client_secret: "csecret".into(),
            refresh_token: "rtoken".into(),
        })
    }

    fn token_reply(token: &str, expires_in: u64) -> Reply {
        Reply::ok()
            .header("Content-Type", "application/json")
            .body(format!(
                r#"{{"access_token":"{token}","expires_in":{expires_in},"token_type":"Bearer","scope":"https://www.googleapis.com/auth/adwords"}}"#
            ))
    }

    #[tokio::test]
    async fn a_token_is_cached_until_shortly_before_it_expires() {
        let endpoint = FakePartner::start().await.unwrap();
        endpoint.enqueue([
            token_reply("ya29.first", 3600),
            token_reply("ya29.second", 3600),
        ]);
        let client = PostbackClient::new(true).unwrap();
        let s = source(endpoint.url("/token"));
        let t = Duration::from_secs(5);
        assert_eq!(s.token(&client, t).await.unwrap(), "ya29.first");
        assert_eq!(s.token(&client, t).await.unwrap(), "ya29.first");
        assert_eq!(endpoint.request_count(), 1);
        // The refresh-token grant, RFC 6749 section 6, as Google's OAuth endpoint takes it.
        let req = &endpoint.requests()[0];
        assert_eq!(req.method, "POST");
        let form = String::from_utf8_lossy(&req.body).into_owned();
        assert_eq!(
            form,
            "grant_type=refresh_token&client_id=cid&client_secret=csecret&refresh_token=rtoken"
        );
        // After a 401 the token is renewed once, and a second renew of the same
        // rejected token reuses the new one.
        assert_eq!(
            s.renew(&client, t, "ya29.first").await.unwrap(),
            "ya29.second"
        );
        assert_eq!(
            s.renew(&client, t, "ya29.first").await.unwrap(),
            "ya29.second"
        );
        assert_eq!(endpoint.request_count(), 2);
    }

    #[tokio::test]
    async fn a_short_lived_token_is_renewed_before_it_expires() {
        let endpoint = FakePartner::start().await.unwrap();
        // 61 s of life and a 60 s margin: due for renewal after one second.
        endpoint.enqueue([token_reply("ya29.a", 61), token_reply("ya29.b", 3600)]);
        let client = PostbackClient::new(true).unwrap();
        let s = source(endpoint.url("/token"));
        let t = Duration::from_secs(5);
        assert_eq!(s.token(&client, t).await.unwrap(), "ya29.a");
        // Pacing: the second of the token's life this test is about (due for renewal).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(s.token(&client, t).await.unwrap(), "ya29.b");
    }

    #[tokio::test]
    async fn refusals_and_outages_of_the_token_endpoint_are_told_apart() {
        let endpoint = FakePartner::start().await.unwrap();
        endpoint.enqueue([
            Reply::status(400).body(r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#),
            Reply::status(503),
        ]);
        let client = PostbackClient::new(true).unwrap();
        let s = source(endpoint.url("/token"));
        let t = Duration::from_secs(5);
        match s.token(&client, t).await {
            Err(Attempt::Credential(e)) => {
                assert!(e.contains("HTTP 400 (invalid_grant)"), "{e}");
                assert!(!e.contains("rtoken") && !e.contains("csecret"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.token(&client, t).await,
            Err(Attempt::Connect(_))
        ));
    }
}
