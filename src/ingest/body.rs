//! Request bodies: one JSON event, a JSON array of events, or NDJSON.
//!
//! Owns: content types, splitting a body into per-event results, and precise parse
//! errors (line and column). Never: touches signatures, rules or the store.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::event::Event;

/// How the body is framed, from `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Json,
    Ndjson,
}

/// `application/json` (or none), `application/x-ndjson` / `application/jsonl`;
/// anything else is unsupported (415).
pub fn framing(content_type: Option<&str>) -> Option<Framing> {
    let Some(ct) = content_type else {
        return Some(Framing::Json);
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" | "" => Some(Framing::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "application/jsonlines" => Some(Framing::Ndjson),
        _ => None,
    }
}

/// Why the body as a whole was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not parseable at all (400): the message names line and column.
    Unparseable(String),
    /// More events than `max_batch` (413).
    TooManyEvents { count: usize, max: usize },
}

/// One event's outcome of parsing and validation, by its index in the body.
pub type Parsed = Result<Event, String>;

/// Parses and validates every event; one bad event is rejected alone.
pub fn parse_events(
    body: &[u8],
    framing: Framing,
    max_batch: usize,
    received: DateTime<Utc>,
) -> Result<Vec<Parsed>, BodyError> {
    match framing {
        Framing::Json => {
            let value: Value = serde_json::from_slice::<Strict>(body)
                .map(|s| s.0)
                .map_err(|e| {
                    let text = e.to_string();
                    let what = strip_position(&text);
                    // One JSON value per line sent as application/json: say what to send.
                    let hint = if what.starts_with("trailing characters") && e.line() > 1 {
                        "; one event per line is NDJSON: send it with Content-Type: application/x-ndjson (or send a JSON array)"
                    } else {
                        ""
                    };
                    BodyError::Unparseable(format!(
                        "invalid JSON at line {}, column {}: {what}{hint}",
                        e.line(),
                        e.column(),
                    ))
                })?;
            match value {
                Value::Array(items) => {
                    if items.len() > max_batch {
                        return Err(BodyError::TooManyEvents {
                            count: items.len(),
                            max: max_batch,
                        });
                    }
                    Ok(items
                        .into_iter()
                        .map(|v| Event::from_value(v, received))
                        .collect())
                }
                other => Ok(vec![Event::from_value(other, received)]),
            }
        }
        Framing::Ndjson => parse_ndjson(body, max_batch, received),
    }
}

/// NDJSON: one event per non-empty line; a line that is not JSON is rejected alone.
fn parse_ndjson(
    body: &[u8],
    max_batch: usize,
    received: DateTime<Utc>,
) -> Result<Vec<Parsed>, BodyError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        BodyError::Unparseable(format!(
            "body is not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    if lines.len() > max_batch {
        return Err(BodyError::TooManyEvents {
            count: lines.len(),
            max: max_batch,
        });
    }
    if lines.is_empty() {
        return Err(BodyError::Unparseable(
            "empty NDJSON body: no events".into(),
        ));
    }
    let mut out = Vec::with_capacity(lines.len());
    let mut any_parsed = false;
    let mut first_error = None;
    for (n, line) in lines {
        match serde_json::from_str::<Strict>(line).map(|s| s.0) {
            Ok(v) => {
                any_parsed = true;
                out.push(Event::from_value(v, received));
            }
            Err(e) => {
                let msg = format!(
                    "invalid JSON at line {}, column {}: {}",
                    n + 1,
                    e.column(),
                    strip_position(&e.to_string())
                );
                first_error.get_or_insert_with(|| msg.clone());
                out.push(Err(msg));
            }
        }
    }
    if !any_parsed {
        return Err(BodyError::Unparseable(first_error.unwrap_or_default()));
    }
    Ok(out)
}

/// A JSON value that names no key twice in any object. `serde_json::Value` keeps the
/// last of duplicate keys silently, while the sender's JSON library may have meant the
/// first: such a body is refused, naming the key (not its values).
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // One lookup per key: the duplicate check and the insert share it.
            match out.entry(key) {
                serde_json::map::Entry::Occupied(o) => {
                    let shown: String = o.key().chars().take(64).collect();
                    return Err(serde::de::Error::custom(format_args!(
                        "duplicate key \"{shown}\" in one object; send each key once"
                    )));
                }
                serde_json::map::Entry::Vacant(slot) => {
                    let Strict(v) = map.next_value()?;
                    slot.insert(v);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// serde_json appends " at line L column C"; we say it ourselves, first.
fn strip_position(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(p) => &msg[..p],
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH
    }

    #[test]
    fn content_types() {
        assert_eq!(framing(None), Some(Framing::Json));
        assert_eq!(
            framing(Some("application/json; charset=utf-8")),
            Some(Framing::Json)
        );
        assert_eq!(framing(Some("application/x-ndjson")), Some(Framing::Ndjson));
        assert_eq!(framing(Some("text/plain")), None);
        assert_eq!(framing(Some("application/x-www-form-urlencoded")), None);
    }

    #[test]
    fn single_array_and_ndjson() {
        let one = parse_events(
            br#"{"event_id":"a","event_name":"n"}"#,
            Framing::Json,
            10,
            now(),
        )
        .expect("ok");
        assert_eq!(one.len(), 1);
        let arr = parse_events(
            br#"[{"event_id":"a","event_name":"n"},{"event_id":"b"}]"#,
            Framing::Json,
            10,
            now(),
        )
        .expect("ok");
        assert!(arr[0].is_ok());
        assert_eq!(
            arr[1].as_ref().err().map(String::as_str),
            Some("event_name: missing")
        );
        let nd = parse_events(
            b"{\"event_id\":\"a\",\"event_name\":\"n\"}\n\n{oops\n{\"event_id\":\"c\",\"event_name\":\"n\"}\n",
            Framing::Ndjson,
            10,
            now(),
        )
        .expect("ok");
        assert_eq!(nd.len(), 3);
        assert!(nd[1]
            .as_ref()
            .err()
            .is_some_and(|e| e.starts_with("invalid JSON at line 3, column 2")));
    }

    #[test]
    fn unparseable_bodies_name_the_position() {
        match parse_events(b"{\"a\":1}\n{\"a\":2}\n", Framing::Json, 10, now()) {
            Err(BodyError::Unparseable(m)) => assert_eq!(
                m,
                "invalid JSON at line 2, column 1: trailing characters; one event per line is NDJSON: send it with Content-Type: application/x-ndjson (or send a JSON array)"
            ),
            other => panic!("{other:?}"),
        }
        let e = parse_events(b"{\n  \"event_id\": ,\n}", Framing::Json, 10, now());
        match e {
            Err(BodyError::Unparseable(m)) => {
                assert!(m.starts_with("invalid JSON at line 2, column 15"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_events(b"nope\n", Framing::Ndjson, 10, now()),
            Err(BodyError::Unparseable(_))
        ));
    }

    #[test]
    fn batches_are_bounded() {
        let body = format!("[{}]", ["{}"; 11].join(","));
        assert_eq!(
            parse_events(body.as_bytes(), Framing::Json, 10, now()),
            Err(BodyError::TooManyEvents { count: 11, max: 10 })
        );
    }

    #[test]
    fn a_key_named_twice_in_one_object_is_refused_naming_the_key() {
        for body in [
            &br#"{"event_id":"e1","event_name":"a","click_id":"c1","click_id":"c2"}"#[..],
            br#"[{"event_id":"e1","event_name":"a","properties":{"value":1,"value":2}}]"#,
        ] {
            match parse_events(body, Framing::Json, 10, now()) {
                Err(BodyError::Unparseable(m)) => {
                    assert!(m.contains("duplicate key") && m.contains("line 1"), "{m}")
                }
                other => panic!("{other:?}"),
            }
        }
        match parse_events(b"{\"a\":1,\"a\":1}\n", Framing::Ndjson, 10, now()) {
            Err(BodyError::Unparseable(m)) => assert!(m.contains("duplicate key \"a\""), "{m}"),
            other => panic!("{other:?}"),
        }
        // The same key in sibling objects is fine; values keep their types.
        let body = br#"[{"event_id":"e1","event_name":"a","p":{"v":1.5,"n":null,"b":true}},{"event_id":"e2","event_name":"a","p":{"v":-2}}]"#;
        let parsed = parse_events(body, Framing::Json, 10, now()).expect("parses");
        assert!(parsed.iter().all(Result::is_ok), "{parsed:?}");
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let body = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        match parse_events(body.as_bytes(), Framing::Json, 10, now()) {
            Err(BodyError::Unparseable(m)) => assert!(m.contains("recursion limit"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
