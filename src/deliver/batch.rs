//! Batches: several stored deliveries of one destination sent as one request.
//!
//! Owns: grouping claimed deliveries that can share a request (same method, URL,
//! headers and envelope: the body with its batch array emptied), and assembling the
//! request: the first body's envelope with the items of every body's array at the
//! batch `path`, in claim order. Each delivery stays rendered and stored alone; only
//! the request on the wire is joined. Never: parses the events inside the arrays (they
//! are copied as raw JSON text), sees credentials (requests are joined as stored,
//! markers included, and credentials are attached to the joined request).

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::outbound::OutboundRequest;

/// One stored body split at the batch path.
struct Split<'a> {
    /// The body with the array at the path emptied: equal envelopes can share a request.
    envelope: String,
    /// The array's items, as raw JSON (without the brackets); may be empty.
    items: &'a str,
}

type Level<'a> = BTreeMap<String, &'a RawValue>;

fn split<'a>(body: &'a str, path: &[&str]) -> Option<Split<'a>> {
    let (first, rest) = path.split_first()?;
    let level: Level<'a> = serde_json::from_str(body).ok()?;
    let inner: &'a RawValue = level.get(*first).copied()?;
    if rest.is_empty() {
        let text = inner.get().trim();
        let items = text.strip_prefix('[')?.strip_suffix(']')?.trim();
        let empty = RawValue::from_string("[]".into()).ok()?;
        let envelope = with(&level, first, &empty)?;
        return Some(Split { envelope, items });
    }
    let nested = split(inner.get(), rest)?;
    let raw = RawValue::from_string(nested.envelope).ok()?;
    let envelope = with(&level, first, &raw)?;
    Some(Split {
        envelope,
        items: nested.items,
    })
}

/// `level` serialised with `key` set to `value`.
fn with(level: &Level<'_>, key: &str, value: &RawValue) -> Option<String> {
    let mut m: BTreeMap<&str, &RawValue> = level.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    m.insert(key, value);
    serde_json::to_string(&m).ok()
}

/// `envelope` (a body whose array at `path` is empty) with `items` as that array.
fn fill(envelope: &str, path: &[&str], items: &str) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let mut level: BTreeMap<String, Box<RawValue>> = serde_json::from_str(envelope).ok()?;
    let inner = if rest.is_empty() {
        RawValue::from_string(format!("[{items}]")).ok()?
    } else {
        let nested = fill(level.get(*first)?.get(), rest, items)?;
        RawValue::from_string(nested).ok()?
    };
    level.insert(first.to_string(), inner);
    serde_json::to_string(&level).ok()
}

/// A set of deliveries (by index into the claimed list) that go in one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub members: Vec<usize>,
}

/// Groups requests that can share one request body under `path`; a request whose
/// body is not JSON with an array at `path` is a group of its own.
pub fn group(requests: &[&OutboundRequest], path: &str) -> Vec<Group> {
    let path: Vec<&str> = path.split('.').collect();
    let mut groups: Vec<(Option<(String, &OutboundRequest)>, Group)> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let key = r
            .body
            .as_deref()
            .and_then(|b| split(b, &path))
            .map(|s| (s.envelope, *r));
        let found = key.as_ref().and_then(|(env, r)| {
            groups.iter_mut().find(|(k, _)| {
                k.as_ref().is_some_and(|(e, first)| {
                    e == env
                        && first.method == r.method
                        && first.url == r.url
                        && first.headers == r.headers
                })
            })
        });
        match found {
            Some((_, g)) => g.members.push(i),
            None => groups.push((key, Group { members: vec![i] })),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// One request carrying every request of `members` (all of one `group`): the first
/// one's method, URL, headers and envelope, with every body's items in order.
pub fn assemble(members: &[&OutboundRequest], path: &str) -> Option<OutboundRequest> {
    let first = members.first()?;
    if members.len() == 1 {
        return Some((*first).clone());
    }
    let path: Vec<&str> = path.split('.').collect();
    let mut envelope = None;
    let mut items = String::new();
    for r in members {
        let s = split(r.body.as_deref()?, &path)?;
        if s.items.is_empty() {
            continue;
        }
        if !items.is_empty() {
            items.push(',');
        }
        items.push_str(s.items);
        envelope.get_or_insert(s.envelope);
    }
    let body = fill(&envelope?, &path, &items)?;
    Some(OutboundRequest {
        body: Some(body),
        event_time_ms: members.iter().filter_map(|r| r.event_time_ms).min(),
        ..(*first).clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::Method;

    fn post(body: &str) -> OutboundRequest {
        OutboundRequest {
            method: Method::Post,
            url: "https://graph.example/v25.0/\u{1}PIXEL\u{1}/events".into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Some(body.into()),
            event_time_ms: Some(1),
        }
    }

    #[test]
    fn bodies_join_into_the_first_envelope_in_order() {
        let a = post(r#"{"data":[{"event_id":"a","v":1}],"test_event_code":"T1"}"#);
        let b = post(r#"{"test_event_code":"T1","data":[{"event_id":"b","v":{"x":[1,2]}}]}"#);
        let groups = group(&[&a, &b], "data");
        assert_eq!(
            groups,
            vec![Group {
                members: vec![0, 1]
            }]
        );
        let joined = assemble(&[&a, &b], "data").expect("joins");
        let v: serde_json::Value = serde_json::from_str(joined.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"data":[{"event_id":"a","v":1},{"event_id":"b","v":{"x":[1,2]}}],
                               "test_event_code":"T1"})
        );
        assert_eq!(joined.url, a.url, "markers stay for attach");
    }

    #[test]
    fn nested_paths_join_too() {
        let a = post(r#"{"request":{"events":[1],"validate":false},"k":"x"}"#);
        let b = post(r#"{"request":{"events":[2,3],"validate":false},"k":"x"}"#);
        let joined = assemble(&[&a, &b], "request.events").expect("joins");
        let v: serde_json::Value = serde_json::from_str(joined.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"request":{"events":[1,2,3],"validate":false},"k":"x"})
        );
    }

    #[test]
    fn different_envelopes_urls_or_non_json_bodies_do_not_share_a_request() {
        let a = post(r#"{"data":[1],"test_event_code":"T1"}"#);
        let b = post(r#"{"data":[2],"test_event_code":"T2"}"#);
        let mut c = post(r#"{"data":[3],"test_event_code":"T1"}"#);
        c.url.push_str("?x=1");
        let d = post("not json");
        let e = post(r#"{"data":{"not":"an array"}}"#);
        let f = post(r#"{"data":[4],"test_event_code":"T1"}"#);
        let groups = group(&[&a, &b, &c, &d, &e, &f], "data");
        let members: Vec<Vec<usize>> = groups.into_iter().map(|g| g.members).collect();
        assert_eq!(
            members,
            vec![vec![0, 5], vec![1], vec![2], vec![3], vec![4]]
        );
    }
}
