//! Shared integration-test harness: a real relay on port 0 with its own data and
//! rules directories, and a signing client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use postback_relay::app::{self, Running};
use postback_relay::config::{Config, Overrides, WebhookSecret};
use postback_relay::ingest::verify::sign;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub struct TestRelay {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub client: reqwest::Client,
    pub config: Config,
}

/// The config text for a test relay; `extra` is appended (TOML).
pub fn config_text(extra: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
data_dir = "data"
rules_dir = "rules"

[ingest]
secrets = ["{SECRET}"]
tolerance = "5m"
max_body = "64KiB"
max_batch = 100

[delivery]
allow_private_networks = true

[admin]
token = "{ADMIN_TOKEN}"
{extra}
"#
    )
}

impl TestRelay {
    /// Starts a relay with these rule files (name, TOML) and config additions.
    pub async fn start(rules: &[(&str, &str)], extra_config: &str) -> TestRelay {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, rules, extra_config).await
    }

    pub async fn start_in(
        dir: tempfile::TempDir,
        rules: &[(&str, &str)],
        extra_config: &str,
    ) -> TestRelay {
        Self::start_in_with_config(dir, rules, &config_text(extra_config)).await
    }

    /// Starts a relay with this whole config text (e.g. `config_text("")` edited),
    /// for settings `extra_config` cannot reach, such as keys in `[delivery]`.
    pub async fn start_with_config(rules: &[(&str, &str)], config: &str) -> TestRelay {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in_with_config(dir, rules, config).await
    }

    pub async fn start_in_with_config(
        dir: tempfile::TempDir,
        rules: &[(&str, &str)],
        config: &str,
    ) -> TestRelay {
        let rules_dir = dir.path().join("rules");
        std::fs::create_dir_all(&rules_dir).expect("rules dir");
        for (name, text) in rules {
            std::fs::write(rules_dir.join(format!("{name}.toml")), text).expect("write rule");
        }
        let cfg_path = dir.path().join("postback-relay.toml");
        std::fs::write(&cfg_path, config).expect("write config");
        let env: HashMap<String, String> = HashMap::new();
        let config = Config::load(&cfg_path, &env, &Overrides::default()).expect("valid config");
        let running = app::start(config.clone(), std::sync::Arc::new(env))
            .await
            .expect("relay starts");
        let base = format!("http://{}", running.addr);
        TestRelay {
            running: Some(running),
            dir,
            base,
            client: reqwest::Client::new(),
            config,
        }
    }

    /// The config file the relay was started from.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("postback-relay.toml")
    }

    pub fn rules_dir(&self) -> PathBuf {
        self.dir.path().join("rules")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Signs `body` as a Standard Webhooks sender would and posts it.
    pub async fn post_signed(
        &self,
        id: &str,
        body: &str,
        content_type: &str,
    ) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
        let secret = WebhookSecret::parse(SECRET).expect("secret");
        let ts = chrono::Utc::now().timestamp();
        let sig = sign(&secret, id, ts, body.as_bytes());
        let resp = self
            .client
            .post(format!("{}/v1/events", self.base))
            .header("content-type", content_type)
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let v = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, v, headers)
    }

    pub async fn post_json(&self, id: &str, body: &str) -> (u16, serde_json::Value) {
        let (s, v, _) = self.post_signed(id, body, "application/json").await;
        (s, v)
    }

    pub async fn admin_get(&self, path: &str) -> serde_json::Value {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin request")
            .json()
            .await
            .expect("admin json")
    }

    pub async fn admin_post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("admin request");
        let s = resp.status().as_u16();
        (s, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        self.dir
    }
}

/// Polls `f` until it returns true or `secs` pass; returns whether it did.
pub async fn eventually<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if f().await {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A unique event as JSON text.
pub fn event(id: &str, name: &str, click: &str) -> String {
    serde_json::json!({
        "event_id": id, "event_name": name, "click_id": click,
        "attribution": {"network": "example-aff"},
        "user": {"email": "Person@Example.com", "ip": "203.0.113.7"},
        "consent": {"ad_user_data": true},
        "properties": {"value": 9.99, "currency": "USD", "order_id": format!("o-{id}")}
    })
    .to_string()
}
