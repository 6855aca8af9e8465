//! The filtered event as a view of the event: what `[privacy]` and `[rename]` let
//! through, without copying what they let through unchanged.
//!
//! Owns: [`Fields`], the allowed fields in the event's order, each the event's own
//! value (borrowed), a value the rules replaced (hashed, truncated, renamed), or an
//! object of which only some fields are allowed. Templates, partner checks and the
//! filtered bodies read it; `serde` writes it as the JSON object it stands for.
//! Never: logs or formats values (they are personal data).
//!
//! Why a view: the copy it replaces cost a key and a value allocation per allowed
//! field per destination (most of the allocations of rules + render in
//! `cargo bench --bench stages`).

use std::borrow::Cow;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::event::value_at;

/// One allowed field.
#[derive(Debug, Clone, PartialEq)]
pub enum Node<'a> {
    /// The event's own value, allowed whole.
    Event(&'a Value),
    /// A value the rules put in its place.
    Owned(Value),
    /// An object of which only some fields are allowed (never empty).
    Object(Fields<'a>),
}

/// The allowed fields of one object, in the event's order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields<'a> {
    entries: Vec<(Cow<'a, str>, Node<'a>)>,
}

/// What an edit does to the value it was shown.
pub enum Edit {
    Keep,
    Set(Value),
    Remove,
}

impl<'a> Fields<'a> {
    /// Every field of `map`, as it is.
    pub fn all(map: &'a Map<String, Value>) -> Fields<'a> {
        Fields {
            entries: map
                .iter()
                .map(|(k, v)| (Cow::Borrowed(k.as_str()), Node::Event(v)))
                .collect(),
        }
    }

    pub(super) fn with_capacity(n: usize) -> Fields<'a> {
        Fields {
            entries: Vec::with_capacity(n),
        }
    }

    pub(super) fn push(&mut self, key: &'a str, node: Node<'a>) {
        self.entries.push((Cow::Borrowed(key), node));
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node<'a>)> {
        self.entries.iter().map(|(k, n)| (k.as_ref(), n))
    }

    fn find(&self, key: &str) -> Option<&Node<'a>> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }

    fn find_mut(&mut self, key: &str) -> Option<&mut Node<'a>> {
        self.entries
            .iter_mut()
            .find(|(k, _)| k == key)
            .map(|(_, n)| n)
    }

    /// The value at a dotted path; `None` when it is missing or null (as
    /// `event::get_path` reads a map). A partly allowed object is made into a value
    /// (a copy of its allowed part).
    pub fn get(&self, path: &str) -> Option<Cow<'_, Value>> {
        let mut parts = path.split('.');
        let mut node = self.find(parts.next()?)?;
        loop {
            match node {
                Node::Event(v) => return value_at(v, parts).map(Cow::Borrowed),
                Node::Owned(v) => return value_at(v, parts).map(Cow::Borrowed),
                Node::Object(fields) => match parts.next() {
                    Some(p) => node = fields.find(p)?,
                    None => return Some(Cow::Owned(Value::Object(fields.to_map()))),
                },
            }
        }
    }

    /// Shows the value at `path` (not when missing or null) to `f`, and does what it
    /// says: keep it, put another in its place, or remove it (as [`Fields::remove`]).
    pub fn edit(&mut self, path: &str, f: impl FnOnce(&Value) -> Edit) {
        let Some(node) = self.node_mut(path) else {
            return;
        };
        let edit = match node {
            Node::Event(v) => f(v),
            Node::Owned(v) => f(v),
            Node::Object(fields) => f(&Value::Object(fields.to_map())),
        };
        match edit {
            Edit::Keep => {}
            Edit::Set(v) => *node = Node::Owned(v),
            Edit::Remove => {
                self.remove(path);
            }
        }
    }

    /// Removes the field at a dotted path; an object emptied this way is removed too
    /// (a partner never gets `"user": {}` after consent dropped the e-mail). Whether
    /// there was a field to remove.
    pub fn remove(&mut self, path: &str) -> bool {
        match path.rsplit_once('.') {
            None => self.remove_key(path),
            Some((parent, last)) => {
                let Some(obj) = self.node_mut(parent).and_then(Node::fields_mut) else {
                    return false;
                };
                let removed = obj.remove_key(last);
                if removed && obj.is_empty() {
                    self.remove(parent);
                }
                removed
            }
        }
    }

    fn remove_key(&mut self, key: &str) -> bool {
        match self.entries.iter().position(|(k, _)| k == key) {
            Some(i) => {
                self.entries.remove(i);
                true
            }
            None => false,
        }
    }

    /// The node at a dotted path, not when missing or null; the objects on the way
    /// become views of their own, so that the node can be changed alone.
    fn node_mut(&mut self, path: &str) -> Option<&mut Node<'a>> {
        let mut parts = path.split('.');
        let mut node = self.find_mut(parts.next()?)?;
        for p in parts {
            node = node.fields_mut()?.find_mut(p)?;
        }
        (!node.is_null()).then_some(node)
    }

    /// A copy as a JSON object.
    pub fn to_map(&self) -> Map<String, Value> {
        self.entries
            .iter()
            .map(|(k, n)| (k.to_string(), n.to_value()))
            .collect()
    }
}

impl<'a> Node<'a> {
    fn is_null(&self) -> bool {
        match self {
            Node::Event(v) => v.is_null(),
            Node::Owned(v) => v.is_null(),
            Node::Object(_) => false,
        }
    }

    /// A copy as a JSON value.
    pub fn to_value(&self) -> Value {
        match self {
            Node::Event(v) => (*v).clone(),
            Node::Owned(v) => v.clone(),
            Node::Object(fields) => Value::Object(fields.to_map()),
        }
    }

    /// This node's fields, when it is an object: a whole object (the event's or a
    /// replaced one) becomes a view of its fields first.
    fn fields_mut(&mut self) -> Option<&mut Fields<'a>> {
        match self {
            Node::Event(v) => {
                let v: &'a Value = v;
                if let Value::Object(m) = v {
                    *self = Node::Object(Fields::all(m));
                }
            }
            Node::Owned(Value::Object(m)) => {
                let m = std::mem::take(m);
                *self = Node::Object(Fields {
                    entries: m
                        .into_iter()
                        .map(|(k, v)| (Cow::Owned(k), Node::Owned(v)))
                        .collect(),
                });
            }
            _ => {}
        }
        match self {
            Node::Object(fields) => Some(fields),
            _ => None,
        }
    }
}

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.entries.len()))?;
        for (k, n) in &self.entries {
            map.serialize_entry(k.as_ref(), n)?;
        }
        map.end()
    }
}

impl Serialize for Node<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Event(v) => v.serialize(s),
            Node::Owned(v) => v.serialize(s),
            Node::Object(fields) => fields.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Map<String, Value> {
        json!({"a": 1, "user": {"email": "e", "ip": "i", "n": null}, "z": "last"})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn a_view_reads_and_writes_as_the_object_it_stands_for() {
        let ev = event();
        let f = Fields::all(&ev);
        assert_eq!(
            serde_json::to_value(&f).ok(),
            Some(Value::Object(ev.clone()))
        );
        assert_eq!(f.to_map(), ev);
        assert_eq!(f.get("user.email").as_deref(), Some(&json!("e")));
        assert_eq!(f.get("user.n"), None);
        assert_eq!(f.get("user.email.x"), None);
        assert_eq!(f.get("nope"), None);
    }

    #[test]
    fn edits_replace_one_field_and_leave_the_event_as_it_was() {
        let ev = event();
        let mut f = Fields::all(&ev);
        f.edit("user.email", |_| Edit::Set(json!("h")));
        f.edit("user.n", |_| Edit::Set(json!("never: null is not edited")));
        f.edit("a", |_| Edit::Keep);
        assert_eq!(
            serde_json::to_string(&f).ok().as_deref(),
            Some(r#"{"a":1,"user":{"email":"h","ip":"i","n":null},"z":"last"}"#)
        );
        assert_eq!(
            f.get("user").as_deref(),
            Some(&json!({"email": "h", "ip": "i", "n": null}))
        );
        assert_eq!(ev["user"]["email"], json!("e"));
        // Inside a value the rules replaced, a later edit changes that value.
        f.edit("z", |_| Edit::Set(json!({"k": 1, "j": 2})));
        f.edit("z.k", |_| Edit::Set(json!(3)));
        assert_eq!(f.get("z").as_deref(), Some(&json!({"k": 3, "j": 2})));
    }

    #[test]
    fn removing_the_last_field_of_an_object_removes_the_object() {
        let ev = event();
        let mut f = Fields::all(&ev);
        assert!(f.remove("user.email"));
        assert!(!f.remove("user.email"));
        assert!(!f.remove("a.b"));
        f.edit("user.ip", |_| Edit::Remove);
        assert_eq!(f.get("user").as_deref(), Some(&json!({"n": null})));
        assert!(f.remove("user.n"));
        assert_eq!(
            f.to_map(),
            json!({"a": 1, "z": "last"})
                .as_object()
                .cloned()
                .unwrap_or_default()
        );
    }
}
