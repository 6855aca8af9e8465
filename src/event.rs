//! The event as app backends send it: validation and dotted-path access.
//!
//! Owns: what makes an event valid: the JSON Schema in `docs/event.schema.json`
//! (`schema`: required fields, the types of the fields it names), plus what a schema
//! cannot say (ID lengths in bytes; `timestamp` RFC 3339 or Unix seconds, defaulting
//! to the time received), and looking up `a.b.c` paths in it. Never: decides what
//! leaves the relay (that is `rules`).

pub mod schema;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde_json::{Map, Value};

/// Longest accepted `event_id`, `event_name` or `click_id`, in bytes.
pub const MAX_ID_LEN: usize = 512;

/// A validated event. `fields` is the whole object as sent, except that
/// `timestamp` is normalised to RFC 3339 UTC (and filled in when absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub name: String,
    pub click_id: Option<String>,
    pub timestamp: DateTime<Utc>,
    pub fields: Map<String, Value>,
}

impl Event {
    /// Dotted paths of the event's fields, in order: every value that is not a
    /// non-empty object (a list counts as one field). Names only, never a value.
    pub fn field_paths(&self) -> Vec<String> {
        fn walk(prefix: &str, fields: &Map<String, Value>, out: &mut Vec<String>) {
            for (k, v) in fields {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    Value::Object(inner) if !inner.is_empty() => walk(&path, inner, out),
                    _ => out.push(path),
                }
            }
        }
        let mut out = Vec::new();
        walk("", &self.fields, &mut out);
        out
    }

    /// Validates one JSON value as an event. The error names the field.
    pub fn from_value(value: Value, received: DateTime<Utc>) -> Result<Event, String> {
        let Value::Object(mut fields) = value else {
            return Err(format!(
                "event: must be a JSON object, not {}",
                json_type(&value)
            ));
        };
        schema::schema().validate(&fields)?;
        let id = required_string(&fields, "event_id")?;
        let name = required_string(&fields, "event_name")?;
        let click_id = match fields.get("click_id") {
            Some(Value::String(s)) if s.len() > MAX_ID_LEN => {
                return Err(format!("click_id: longer than {MAX_ID_LEN} bytes"))
            }
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::String(_)) | None | Some(Value::Null) => None,
            Some(other) => {
                return Err(format!(
                    "click_id: must be a string, not {}",
                    json_type(other)
                ))
            }
        };
        let timestamp = match fields.get("timestamp") {
            None | Some(Value::Null) => received,
            Some(v) => parse_timestamp(v)?,
        };
        let normalised = Value::String(timestamp.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        // In place when sent (its key is kept), else added last.
        match fields.get_mut("timestamp") {
            Some(v) => *v = normalised,
            None => {
                fields.insert("timestamp".into(), normalised);
            }
        }
        Ok(Event {
            id,
            name,
            click_id,
            timestamp,
            fields,
        })
    }

    /// The value at a dotted path (`user.email`), if present and not null.
    pub fn get(&self, path: &str) -> Option<&Value> {
        get_path(&self.fields, path)
    }
}

/// The value at a dotted path in a JSON object, if present and not null.
pub fn get_path<'a>(fields: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    value_at(fields.get(parts.next()?)?, parts)
}

/// The value below `v` at the rest of a dotted path (its parts); `None` when missing
/// or null, as [`get_path`].
pub fn value_at<'v, 'p>(
    mut v: &'v Value,
    parts: impl Iterator<Item = &'p str>,
) -> Option<&'v Value> {
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    (!v.is_null()).then_some(v)
}

fn required_string(fields: &Map<String, Value>, key: &str) -> Result<String, String> {
    match fields.get(key) {
        None | Some(Value::Null) => Err(format!("{key}: missing")),
        Some(Value::String(s)) if s.is_empty() => Err(format!("{key}: empty")),
        Some(Value::String(s)) if s.len() > MAX_ID_LEN => {
            Err(format!("{key}: longer than {MAX_ID_LEN} bytes"))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("{key}: must be a string, not {}", json_type(other))),
    }
}

/// RFC 3339 (`2026-11-25T10:00:00Z`, any offset) or Unix seconds (number or digits).
pub fn parse_timestamp(v: &Value) -> Result<DateTime<Utc>, String> {
    let bad = || {
        "timestamp: must be RFC 3339 (\"2026-11-25T10:00:00Z\") or Unix seconds (1795600800)"
            .to_string()
    };
    match v {
        Value::Number(n) => {
            let secs = n.as_f64().ok_or_else(bad)?;
            from_unix(secs).ok_or_else(bad)
        }
        Value::String(s) => {
            if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
                return Ok(dt.with_timezone(&Utc));
            }
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                let secs: f64 = s.parse().map_err(|_| bad())?;
                return from_unix(secs).ok_or_else(bad);
            }
            Err(bad())
        }
        _ => Err(bad()),
    }
}

fn from_unix(secs: f64) -> Option<DateTime<Utc>> {
    // Year 1970..=9999; anything else is a mistake (milliseconds sent as seconds, say).
    if !(0.0..253_402_300_800.0).contains(&secs) {
        return None;
    }
    let whole = secs.trunc() as i64;
    let nanos = ((secs - secs.trunc()) * 1e9) as u32;
    Utc.timestamp_opt(whole, nanos).single()
}

pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_790_000_000, 0)
            .single()
            .unwrap_or_default()
    }

    #[test]
    fn a_full_event_is_valid_and_timestamp_is_normalised() {
        let e = Event::from_value(
            json!({"event_id": "e1", "event_name": "purchase", "click_id": "c",
                   "timestamp": "2026-11-25T11:00:00+01:00", "user": {"email": "a@b.c"}}),
            now(),
        )
        .expect("valid");
        assert_eq!(e.id, "e1");
        assert_eq!(e.click_id.as_deref(), Some("c"));
        assert_eq!(e.fields["timestamp"], json!("2026-11-25T10:00:00Z"));
        assert_eq!(e.get("user.email"), Some(&json!("a@b.c")));
        assert_eq!(e.get("user.phone"), None);
    }

    #[test]
    fn missing_fields_are_named() {
        let err = Event::from_value(json!({"event_id": "e1"}), now());
        assert_eq!(err, Err("event_name: missing".into()));
        let err = Event::from_value(json!({"event_name": "x", "event_id": 5}), now());
        assert_eq!(err, Err("event_id: must be a string, not a number".into()));
        let err = Event::from_value(json!([1]), now());
        assert!(err.unwrap_err().starts_with("event: must be a JSON object"));
        let err = Event::from_value(
            json!({"event_id": "e", "event_name": "n", "user": {"phone": 15550100}}),
            now(),
        );
        assert_eq!(
            err,
            Err("user.phone: must be a string, not a number".into())
        );
    }

    #[test]
    fn unix_seconds_and_default_timestamp() {
        let e = Event::from_value(
            json!({"event_id": "e", "event_name": "n", "timestamp": 1_790_000_000}),
            now(),
        )
        .expect("valid");
        assert_eq!(e.timestamp.timestamp(), 1_790_000_000);
        let e =
            Event::from_value(json!({"event_id": "e", "event_name": "n"}), now()).expect("valid");
        assert_eq!(e.timestamp, now());
        let bad = Event::from_value(
            json!({"event_id": "e", "event_name": "n", "timestamp": "yesterday"}),
            now(),
        );
        assert!(bad.unwrap_err().starts_with("timestamp: "));
        let ms = Event::from_value(
            json!({"event_id": "e", "event_name": "n", "timestamp": 1_790_000_000_000_000i64}),
            now(),
        );
        assert!(ms.is_err());
    }
}
