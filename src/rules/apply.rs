//! Applying one destination's rule to one event: `when`, then `rename`, then
//! `privacy` (consent, allow, hash, truncate_ip).
//!
//! Owns: the compiled forms of those sections and the filtered copy of the event
//! they produce. Never: renders requests (`template`), reads files (`load`), or
//! logs anything: the values it handles are personal data.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde_json::{Map, Value};

use super::normalize::{ipv4_only, truncate_ip, FieldKind, HashStyle, Normaliser};
use super::view::{Edit, Fields, Node};

/// Why an event is not sent to a destination. `Display` is for humans; it names the
/// condition and never shows field values other than `event_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// `[when] event_name = [...]` does not list this event's name.
    EventName { name: String, expected: Vec<String> },
    /// `[when] "field" = ...` does not hold (the field is missing or has another value).
    FieldMismatch {
        field: String,
        expected: Vec<String>,
        missing: bool,
    },
    /// `[when] has = [...]`: this field is missing, null or empty.
    Missing { field: String },
    /// A rendered header value would contain a line break or control character.
    InvalidHeader { header: String },
    /// None of the fields the partner matches conversions on is left after privacy:
    /// sending would be refused (Meta: `user_data` required) or match nothing.
    NoIdentifier {
        partner: String,
        /// The identifier fields this rule allows.
        needs: Vec<String>,
        /// The consent field and what it dropped, when consent removed some.
        consent: Option<(String, Vec<String>)>,
    },
    /// A field the partner requires is missing.
    Required {
        partner: String,
        field: String,
        why: String,
    },
}

impl Skip {
    /// A short label for counting skips by reason (metrics, logs): never a value.
    pub fn kind(&self) -> &'static str {
        match self {
            Skip::EventName { .. } | Skip::FieldMismatch { .. } | Skip::Missing { .. } => "when",
            Skip::InvalidHeader { .. } => "invalid_header",
            Skip::NoIdentifier {
                consent: Some(_), ..
            } => "no_consent",
            Skip::NoIdentifier { .. } => "no_identifier",
            Skip::Required { .. } => "missing_required",
        }
    }
}

fn quoted_list(v: &[String]) -> String {
    v.iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::EventName { name, expected } => write!(
                f,
                "event_name \"{name}\" is not listed in [when] event_name = [{}]",
                quoted_list(expected)
            ),
            Skip::FieldMismatch {
                field,
                expected,
                missing: true,
            } => write!(
                f,
                "{field} is missing, but [when] requires it to be {}",
                one_of(expected)
            ),
            Skip::FieldMismatch {
                field, expected, ..
            } => write!(
                f,
                "{field} is not {} as [when] requires",
                one_of(expected)
            ),
            Skip::Missing { field } => write!(
                f,
                "{field} is missing or empty, but [when] has = [...] requires it"
            ),
            Skip::InvalidHeader { header } => write!(
                f,
                "header {header} would contain a line break or control character after filling in its placeholders"
            ),
            Skip::NoIdentifier {
                partner,
                needs,
                consent,
            } => {
                write!(
                    f,
                    "nothing {partner} can match this conversion on is left (it needs one of: {})",
                    needs.join(", ")
                )?;
                if let Some((require, dropped)) = consent {
                    write!(
                        f,
                        "; {require} is not true, so {} were dropped",
                        dropped.join(", ")
                    )?;
                }
                Ok(())
            }
            Skip::Required {
                partner,
                field,
                why,
            } => write!(f, "{field} is missing, and {partner} needs it: {why}"),
        }
    }
}

fn one_of(v: &[String]) -> String {
    match v {
        [one] => format!("\"{one}\""),
        many => format!("one of {}", quoted_list(many)),
    }
}

impl std::error::Error for Skip {}

/// One `[when]` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The field, as text, is one of these values.
    OneOf { field: String, values: Vec<String> },
    /// The field is present, not null and not empty.
    Has(String),
}

/// `[when]`: all conditions must hold, checked in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct When {
    pub conditions: Vec<Condition>,
    /// (line, column) in the rule file of each condition, for explanations.
    pub places: Vec<(usize, usize)>,
}

impl When {
    pub fn check(&self, fields: &Map<String, Value>) -> Result<(), Skip> {
        self.check_each(fields).map_err(|(_, skip)| skip)
    }

    /// Like `check`; a failure also says which condition (its index) failed.
    pub fn check_each(&self, fields: &Map<String, Value>) -> Result<(), (usize, Skip)> {
        for (i, c) in self.conditions.iter().enumerate() {
            Self::holds(c, fields).map_err(|skip| (i, skip))?;
        }
        Ok(())
    }

    fn holds(c: &Condition, fields: &Map<String, Value>) -> Result<(), Skip> {
        match c {
            Condition::OneOf { field, values } => {
                let got = crate::event::get_path(fields, field).and_then(scalar_string);
                if got
                    .as_deref()
                    .is_some_and(|g| values.iter().any(|v| v == g))
                {
                    return Ok(());
                }
                if field == "event_name" {
                    if let Some(name) = got {
                        return Err(Skip::EventName {
                            name: name.into_owned(),
                            expected: values.clone(),
                        });
                    }
                }
                Err(Skip::FieldMismatch {
                    field: field.clone(),
                    expected: values.clone(),
                    missing: crate::event::get_path(fields, field).is_none(),
                })
            }
            Condition::Has(field) => {
                let present = match crate::event::get_path(fields, field) {
                    None => false,
                    Some(Value::String(s)) => !s.trim().is_empty(),
                    Some(Value::Array(a)) => !a.is_empty(),
                    Some(Value::Object(o)) => !o.is_empty(),
                    Some(_) => true,
                };
                if present {
                    Ok(())
                } else {
                    Err(Skip::Missing {
                        field: field.clone(),
                    })
                }
            }
        }
    }
}

/// A scalar as the text `[when]` and `[rename]` compare: strings as they are,
/// numbers and booleans as written in JSON.
/// Borrowed for strings, so a comparison allocates nothing.
pub fn scalar_string(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s.as_str())),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

/// `[rename.<field>]`: replaces listed values of one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rename {
    pub field: String,
    pub map: HashMap<String, String>,
}

impl Rename {
    pub fn apply(&self, fields: &mut Fields<'_>) {
        fields.edit(&self.field, |v| {
            match scalar_string(v).and_then(|s| self.map.get(s.as_ref())) {
                Some(new) => Edit::Set(Value::String(new.clone())),
                None => Edit::Keep,
            }
        });
    }
}

/// The allowed paths as a tree: a node with `all` passes its whole subtree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowTree {
    all: bool,
    children: BTreeMap<String, AllowTree>,
}

/// How a path relates to the allow list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// The path, or one of its parents, is allowed.
    Allowed,
    /// Something below the path is allowed (the path names a partly allowed object).
    Partly,
    No,
}

impl AllowTree {
    pub fn insert(&mut self, path: &str) {
        let mut node = self;
        for part in path.split('.') {
            if node.all {
                return;
            }
            node = node.children.entry(part.to_string()).or_default();
        }
        node.all = true;
        node.children.clear();
    }

    pub fn coverage(&self, path: &str) -> Coverage {
        let mut node = self;
        for part in path.split('.') {
            if node.all {
                return Coverage::Allowed;
            }
            match node.children.get(part) {
                Some(n) => node = n,
                None => return Coverage::No,
            }
        }
        if node.all {
            Coverage::Allowed
        } else {
            Coverage::Partly
        }
    }

    /// The allowed parts of `src`, in `src`'s order, as a view of it (nothing copied).
    pub fn view<'a>(&self, src: &'a Map<String, Value>) -> Fields<'a> {
        // Sized once: at most one entry per allowed name (no regrowth while filling).
        let mut out = Fields::with_capacity(self.children.len().min(src.len()));
        for (k, v) in src {
            let Some(child) = self.children.get(k) else {
                continue;
            };
            if child.all {
                out.push(k, Node::Event(v));
            } else if let Value::Object(inner) = v {
                let sub = child.view(inner);
                if !sub.is_empty() {
                    out.push(k, Node::Object(sub));
                }
            }
        }
        out
    }
}

/// `[privacy.consent]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    pub require: String,
    pub drop: Vec<String>,
}

/// `[privacy]`, compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Privacy {
    pub allow: AllowTree,
    pub hash: Vec<(String, FieldKind)>,
    pub truncate_ip: Vec<String>,
    pub consent: Option<Consent>,
    pub style: HashStyle,
    /// Fields the partner takes only as IPv4 (set by presets): IPv6 is dropped.
    pub ipv4_only: Vec<String>,
    /// Phone numbers without a country code are read as numbers of this country.
    pub default_country: Option<phonenumber::country::Id>,
}

impl Privacy {
    /// Consent fields to drop for this event: those listed in `drop` that the event
    /// has, when its `require` field is not exactly `true`. Read from the event as
    /// received.
    pub fn consent_drops(&self, original: &Map<String, Value>) -> Vec<String> {
        match &self.consent {
            Some(c) if crate::event::get_path(original, &c.require) != Some(&Value::Bool(true)) => {
                c.drop
                    .iter()
                    .filter(|p| crate::event::get_path(original, p).is_some())
                    .cloned()
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// The allowed, renamed, consent-filtered, hashed and truncated event, as a view
    /// of `original` (what passes unchanged is not copied).
    pub fn view<'a>(
        &self,
        original: &'a Map<String, Value>,
        renames: &[Rename],
        consent_drops: &[String],
    ) -> Fields<'a> {
        // Filtering first takes only allowed subtrees; renaming a field that is not
        // allowed could not show anyway, so the result equals rename-then-filter.
        let mut fields = self.allow.view(original);
        for r in renames {
            r.apply(&mut fields);
        }
        for p in consent_drops {
            fields.remove(p);
        }
        let normaliser = Normaliser {
            style: self.style,
            default_country: self.default_country,
        };
        for (p, kind) in &self.hash {
            fields.edit(p, |v| match normaliser.hash_value(v, *kind) {
                Some(h) => Edit::Set(h),
                None => Edit::Remove,
            });
        }
        for (paths, f) in [
            (&self.truncate_ip, truncate_ip as fn(&str) -> Option<String>),
            (&self.ipv4_only, ipv4_only),
        ] {
            for p in paths {
                fields.edit(p, |v| match v.as_str().and_then(f) {
                    Some(t) => Edit::Set(Value::String(t)),
                    None => Edit::Remove,
                });
            }
        }
        fields
    }

    /// [`Privacy::view`] as a copy.
    #[cfg(test)]
    pub fn apply(
        &self,
        original: &Map<String, Value>,
        renames: &[Rename],
        consent_drops: &[String],
    ) -> Map<String, Value> {
        self.view(original, renames, consent_drops).to_map()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn when_checks_event_name_fields_and_has() {
        let when = When {
            conditions: vec![
                Condition::OneOf {
                    field: "event_name".into(),
                    values: vec!["install".into(), "purchase".into()],
                },
                Condition::OneOf {
                    field: "attribution.network".into(),
                    values: vec!["example-aff".into()],
                },
                Condition::Has("click_id".into()),
            ],
            places: vec![(1, 1), (2, 1), (3, 1)],
        };
        let ok = obj(
            json!({"event_name": "purchase", "attribution": {"network": "example-aff"}, "click_id": "c"}),
        );
        assert_eq!(when.check(&ok), Ok(()));
        let e = when
            .check(&obj(json!({"event_name": "signup"})))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "event_name \"signup\" is not listed in [when] event_name = [\"install\", \"purchase\"]"
        );
        let e = when
            .check(&obj(
                json!({"event_name": "install", "attribution": {"network": "other"}}),
            ))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "attribution.network is not \"example-aff\" as [when] requires"
        );
        let e = when
            .check(&obj(json!({"event_name": "install"})))
            .unwrap_err();
        assert!(e.to_string().starts_with("attribution.network is missing"));
        let e = when
            .check(&obj(json!({"event_name": "install", "attribution": {"network": "example-aff"}, "click_id": " "})))
            .unwrap_err();
        assert_eq!(
            e,
            Skip::Missing {
                field: "click_id".into()
            }
        );
        let failed = when.check_each(&obj(json!({"event_name": "install"})));
        assert_eq!(failed.map_err(|(i, _)| when.places[i]), Err((2, 1)));
    }

    #[test]
    fn when_compares_numbers_and_booleans_as_text() {
        let when = When {
            conditions: vec![Condition::OneOf {
                field: "consent.gpc".into(),
                values: vec!["false".into()],
            }],
            places: vec![(1, 1)],
        };
        assert!(when.check(&obj(json!({"consent": {"gpc": false}}))).is_ok());
        assert!(when.check(&obj(json!({"consent": {"gpc": true}}))).is_err());
    }

    #[test]
    fn rename_replaces_listed_values_only() {
        let r = Rename {
            field: "event_name".into(),
            map: [("purchase".to_string(), "Purchase".to_string())].into(),
        };
        let ev = obj(json!({"event_name": "purchase"}));
        let mut f = Fields::all(&ev);
        r.apply(&mut f);
        assert_eq!(f.get("event_name").as_deref(), Some(&json!("Purchase")));
        let ev = obj(json!({"event_name": "install"}));
        let mut f = Fields::all(&ev);
        r.apply(&mut f);
        assert_eq!(f.get("event_name").as_deref(), Some(&json!("install")));
    }

    #[test]
    fn allow_tree_filters_subtrees_and_keeps_event_order() {
        let mut t = AllowTree::default();
        t.insert("user.email");
        t.insert("properties");
        t.insert("click_id");
        let ev = obj(json!({
            "click_id": "c", "secret": "s",
            "user": {"email": "e", "phone": "p"},
            "properties": {"value": 1, "nested": {"x": 1}},
            "device": {"idfa": "i"}
        }));
        let f = t.view(&ev);
        assert_eq!(
            serde_json::to_string(&f).ok().as_deref(),
            Some(
                r#"{"click_id":"c","user":{"email":"e"},"properties":{"value":1,"nested":{"x":1}}}"#
            )
        );
        assert_eq!(t.coverage("user"), Coverage::Partly);
        assert_eq!(t.coverage("properties.value"), Coverage::Allowed);
        assert_eq!(t.coverage("user.phone"), Coverage::No);
    }

    #[test]
    fn consent_drops_fields_unless_required_flag_is_exactly_true() {
        let mut allow = AllowTree::default();
        allow.insert("user");
        let p = Privacy {
            allow,
            consent: Some(Consent {
                require: "consent.ad_user_data".into(),
                drop: vec!["user.email".into(), "user.ip".into()],
            }),
            ..Privacy::default()
        };
        for consent in [json!(false), json!("true"), json!(null)] {
            let ev = obj(
                json!({"user": {"email": "e", "phone": "p"}, "consent": {"ad_user_data": consent}}),
            );
            let drops = p.consent_drops(&ev);
            assert_eq!(drops, vec!["user.email".to_string()]);
            assert_eq!(
                Value::Object(p.apply(&ev, &[], &drops)),
                json!({"user": {"phone": "p"}})
            );
        }
        let ev = obj(json!({"user": {"email": "e"}, "consent": {"ad_user_data": true}}));
        assert!(p.consent_drops(&ev).is_empty());
    }

    #[test]
    fn hashing_and_truncation_never_leave_clear_values() {
        let mut allow = AllowTree::default();
        allow.insert("user");
        let p = Privacy {
            allow,
            hash: vec![
                ("user.email".into(), FieldKind::Email),
                ("user.prefs".into(), FieldKind::Other),
            ],
            truncate_ip: vec!["user.ip".into(), "user.ip6".into(), "user.bad".into()],
            ..Privacy::default()
        };
        let out = p.apply(
            &obj(
                json!({"user": {"email": "Person@Example.com", "prefs": {"a": 1},
                "ip": "203.0.113.7", "ip6": "2001:db8:1:2::9", "bad": "garbage"}}),
            ),
            &[],
            &[],
        );
        assert_eq!(
            Value::Object(out),
            json!({"user": {"email": super::super::normalize::sha256_hex("person@example.com"),
                "ip": "203.0.113.0", "ip6": "2001:db8:1::"}})
        );
    }
}
