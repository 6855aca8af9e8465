//! Dedupe keys: which fields make two events "the same conversion", and the keyed
//! hash that is all the store ever sees of them.
//!
//! Owns: the key material of an event (the configured fields, per event name
//! overrides, `event_id` when a key field is missing) and its HMAC under the
//! installation's secret. Never: stores anything or decides the window (`store` does).

use std::collections::HashMap;

use hmac::Mac;
use sha2::Sha256;

use crate::config::DedupeConfig;
use crate::event::Event;
use crate::store::DedupeKey;

/// The configured key fields.
#[derive(Debug, Clone)]
pub struct DedupeRule {
    default: Vec<String>,
    by_event: HashMap<String, Vec<String>>,
}

impl DedupeRule {
    pub fn new(cfg: &DedupeConfig) -> DedupeRule {
        DedupeRule {
            default: cfg.key.clone(),
            by_event: cfg
                .by_event
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Unambiguous key material: each part length-prefixed, so no two different
    /// field lists collide. `event_name` is matched before any rename.
    pub fn material(&self, event: &Event) -> Vec<u8> {
        let fields = self.by_event.get(&event.name).unwrap_or(&self.default);
        let mut out = Vec::with_capacity(64);
        let mut values = Vec::with_capacity(fields.len());
        for f in fields {
            let v = match f.as_str() {
                "event_name" => Some(event.name.clone()),
                "event_id" => Some(event.id.clone()),
                _ => event.get(f).and_then(|v| match v {
                    serde_json::Value::String(s) if s.is_empty() => None,
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Object(_) | serde_json::Value::Array(_) => None,
                    other => Some(other.to_string()),
                }),
            };
            match v {
                Some(v) => values.push((f.as_str(), v)),
                None => {
                    // A key field is missing: the event is its own conversion.
                    push_part(&mut out, "event_id");
                    push_part(&mut out, &event.id);
                    return out;
                }
            }
        }
        push_part(&mut out, "key");
        for (f, v) in values {
            push_part(&mut out, f);
            push_part(&mut out, &v);
        }
        out
    }

    /// The keyed hash of the event's key material.
    pub fn key(&self, secret: &[u8; 32], event: &Event) -> DedupeKey {
        hash_key(secret, &self.material(event))
    }
}

fn push_part(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// HMAC-SHA256 under the installation secret, truncated to 128 bits.
pub fn hash_key(secret: &[u8; 32], material: &[u8]) -> DedupeKey {
    let mut mac = match <hmac::Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm cannot be reached.
        Err(_) => return DedupeKey([0; 16]),
    };
    mac.update(material);
    let full = mac.finalize().into_bytes();
    let mut k = [0u8; 16];
    k.copy_from_slice(&full[..16]);
    DedupeKey(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn rule() -> DedupeRule {
        DedupeRule::new(&DedupeConfig {
            window: Duration::from_secs(1),
            key: vec!["click_id".into(), "event_name".into()],
            by_event: BTreeMap::from([(
                "purchase".to_string(),
                vec!["click_id".to_string(), "properties.order_id".to_string()],
            )]),
        })
    }

    fn ev(v: serde_json::Value) -> Event {
        Event::from_value(v, Utc::now()).expect("valid")
    }

    #[test]
    fn same_click_and_name_is_the_same_key_whatever_the_event_id() {
        let s = [7u8; 32];
        let a = ev(json!({"event_id": "1", "event_name": "install", "click_id": "c1"}));
        let b = ev(json!({"event_id": "2", "event_name": "install", "click_id": "c1"}));
        let c = ev(json!({"event_id": "3", "event_name": "signup", "click_id": "c1"}));
        assert_eq!(rule().key(&s, &a), rule().key(&s, &b));
        assert_ne!(rule().key(&s, &a), rule().key(&s, &c));
        assert_ne!(rule().key(&s, &a), rule().key(&[8u8; 32], &a));
    }

    #[test]
    fn missing_key_field_falls_back_to_event_id() {
        let s = [7u8; 32];
        let a = ev(json!({"event_id": "1", "event_name": "install"}));
        let b = ev(json!({"event_id": "2", "event_name": "install"}));
        let a2 = ev(json!({"event_id": "1", "event_name": "other"}));
        assert_ne!(rule().key(&s, &a), rule().key(&s, &b));
        assert_eq!(rule().key(&s, &a), rule().key(&s, &a2));
    }

    #[test]
    fn by_event_overrides_the_default() {
        let s = [7u8; 32];
        let p1 = ev(
            json!({"event_id": "1", "event_name": "purchase", "click_id": "c", "properties": {"order_id": "o1"}}),
        );
        let p2 = ev(
            json!({"event_id": "2", "event_name": "purchase", "click_id": "c", "properties": {"order_id": "o2"}}),
        );
        let p1again = ev(
            json!({"event_id": "3", "event_name": "purchase", "click_id": "c", "properties": {"order_id": "o1"}}),
        );
        assert_ne!(rule().key(&s, &p1), rule().key(&s, &p2));
        assert_eq!(rule().key(&s, &p1), rule().key(&s, &p1again));
    }

    #[test]
    fn material_is_unambiguous() {
        let a = ev(json!({"event_id": "1", "event_name": "ab", "click_id": "c"}));
        let b = ev(json!({"event_id": "1", "event_name": "a", "click_id": "bc"}));
        assert_ne!(rule().material(&a), rule().material(&b));
    }
}
