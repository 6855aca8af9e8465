//! The event's JSON Schema (`docs/event.schema.json`), built into the binary.
//!
//! Owns: reading the schema file (the subset of JSON Schema it uses: `type`,
//! `properties`, `required`, `minLength`, `examples`, `description`), validating an
//! event's fields against it (`validate`, used by ingest), and what rule-file checks
//! ask of it: is a dotted path known, which known path is closest to a misspelt one,
//! which values are usual for a field. Never: reads the schema from disk at run time
//! (the relay and its documentation share one file, compiled in).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};

/// The schema as shipped in `docs/`, the same text users read.
pub const SCHEMA_JSON: &str = include_str!("../../docs/event.schema.json");

/// One level of the schema: a field and what may be under it.
#[derive(Debug, Default, Clone)]
pub struct Node {
    /// JSON types allowed (`"string"`, `"number"`, ...); empty means any.
    pub types: Vec<String>,
    pub properties: BTreeMap<String, Node>,
    pub required: Vec<String>,
    pub min_length: Option<usize>,
    /// Usual values, as text (for "differs only by case" hints).
    pub examples: Vec<String>,
    pub description: String,
}

/// The event schema.
#[derive(Debug, Default, Clone)]
pub struct Schema {
    pub root: Node,
}

/// The schema compiled into the binary. A unit test proves it parses; were it ever
/// unreadable, every event would be checked only by `event::Event::from_value`.
pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema::parse(SCHEMA_JSON).unwrap_or_default())
}

impl Schema {
    /// Reads a schema text; `Err` names what is wrong with it.
    pub fn parse(text: &str) -> Result<Schema, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        Ok(Schema {
            root: node(&v, "")?,
        })
    }

    /// The first way `fields` breaks the schema, as `path: what is wrong`.
    pub fn validate(&self, fields: &Map<String, Value>) -> Result<(), String> {
        validate_object(&self.root, fields, None)
    }

    /// The node at a dotted path, if the schema names it.
    pub fn get(&self, path: &str) -> Option<&Node> {
        let mut cur = &self.root;
        for part in path.split('.') {
            cur = cur.properties.get(part)?;
        }
        Some(cur)
    }

    /// Whether the schema names `path`, or `path` lies inside a field whose inside the
    /// schema does not describe (a list, or a value of any type).
    pub fn knows(&self, path: &str) -> bool {
        let mut cur = &self.root;
        for part in path.split('.') {
            match cur.properties.get(part) {
                Some(next) => cur = next,
                None => {
                    return cur.properties.is_empty()
                        && !cur.types.is_empty()
                        && !cur.types.iter().any(|t| t == "object")
                }
            }
        }
        true
    }

    /// Every dotted path the schema names, objects included, in order.
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        collect_paths(&self.root, "", &mut out);
        out
    }

    /// The known path a misspelt one most likely meant: by the whole path, else by its
    /// last name (`network` -> `attribution.network`).
    pub fn closest(&self, path: &str, extra: &[String]) -> Option<String> {
        let mut known = self.paths();
        known.extend(extra.iter().cloned());
        closest_path(path, &known)
    }
}

/// The candidate closest to `path` when it is a plausible misspelling: the whole path
/// within a small edit distance (`clickid` -> `click_id`), or the same last name at
/// another level (`network` -> `attribution.network`).
pub fn closest_path(path: &str, known: &[String]) -> Option<String> {
    let squash = |s: &str| s.replace(['_', '-'], "").to_ascii_lowercase();
    let target = squash(path);
    let best = known
        .iter()
        .filter(|k| k.as_str() != path)
        .map(|k| (strsim::levenshtein(&target, &squash(k)), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 5))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone());
    if best.is_some() {
        return best;
    }
    let last = path.rsplit('.').next().unwrap_or(path);
    known
        .iter()
        .filter(|k| k.as_str() != path && k.contains('.'))
        .find(|k| squash(k.rsplit('.').next().unwrap_or(k)) == squash(last))
        .cloned()
}

fn collect_paths(node: &Node, prefix: &str, out: &mut Vec<String>) {
    for (name, child) in &node.properties {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        out.push(path.clone());
        collect_paths(child, &path, out);
    }
}

fn node(v: &Value, at: &str) -> Result<Node, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{at}: a schema must be an object"))?;
    let types = match obj.get("type") {
        None => Vec::new(),
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .map(|t| t.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("{at}: `type` must list names"))?,
        Some(_) => return Err(format!("{at}: `type` must be a name or a list")),
    };
    let mut properties = BTreeMap::new();
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, child) in props {
            let path = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            properties.insert(k.clone(), node(child, &path)?);
        }
    }
    let strings = |key: &str| -> Vec<String> {
        obj.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|x| match x {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Node {
        types,
        properties,
        required: strings("required"),
        min_length: obj
            .get("minLength")
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok()),
        examples: strings("examples"),
        description: obj
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

/// Where a value sits: its key and the object it is in. The dotted path is written
/// only for an error, so a valid event costs no allocation here.
#[derive(Clone, Copy)]
struct At<'a> {
    parent: Option<&'a At<'a>>,
    key: &'a str,
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(p) = self.parent {
            write!(f, "{p}.")?;
        }
        f.write_str(self.key)
    }
}

fn validate_object(
    node: &Node,
    fields: &Map<String, Value>,
    at: Option<&At<'_>>,
) -> Result<(), String> {
    let child = |key| At { parent: at, key };
    // Required fields first, in the order listed, each checked whole.
    for r in &node.required {
        match (fields.get(r), node.properties.get(r)) {
            (None | Some(Value::Null), _) => return Err(format!("{}: missing", child(r))),
            (Some(v), Some(c)) => validate_value(c, v, &child(r))?,
            (Some(_), None) => {}
        }
    }
    // Then the fields sent, in their order, against what the schema says of each (an
    // event names fewer fields than the schema: this looks up fewer).
    for (k, v) in fields {
        match (v, node.properties.get(k)) {
            (Value::Null, _) | (_, None) => continue,
            (v, Some(c)) => validate_value(c, v, &child(k))?,
        }
    }
    Ok(())
}

fn validate_value(node: &Node, v: &Value, at: &At<'_>) -> Result<(), String> {
    if !node.types.is_empty() && !node.types.iter().any(|t| type_fits(t, v)) {
        let wanted: Vec<&str> = node
            .types
            .iter()
            .filter(|t| *t != "null")
            .map(|t| type_name(t))
            .collect();
        return Err(format!(
            "{at}: must be {}, not {}",
            wanted.join(" or "),
            super::json_type(v)
        ));
    }
    if let (Some(min), Value::String(s)) = (node.min_length, v) {
        if s.chars().count() < min {
            return Err(format!("{at}: empty"));
        }
    }
    match v {
        Value::Object(inner) => validate_object(node, inner, Some(at)),
        _ => Ok(()),
    }
}

fn type_fits(t: &str, v: &Value) -> bool {
    match t {
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "null" => v.is_null(),
        _ => true,
    }
}

fn type_name(t: &str) -> &str {
    match t {
        "string" => "a string",
        "number" => "a number",
        "integer" => "a whole number",
        "boolean" => "true or false",
        "object" => "an object",
        "array" => "an array",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn the_shipped_schema_parses_and_names_what_presets_use() {
        let s = Schema::parse(SCHEMA_JSON).expect("docs/event.schema.json parses");
        for p in [
            "event_id",
            "event_name",
            "click_id",
            "timestamp",
            "attribution.network",
            "user.email",
            "device.att_status",
            "consent.ad_user_data",
            "page.url",
            "properties.value",
        ] {
            assert!(s.knows(p), "{p}");
        }
        assert!(s.knows("properties.contents.0.id"), "inside a list");
        assert!(!s.knows("event_nme"));
        assert!(!s.knows("user.emial"));
        assert!(schema().get("event_name").is_some());
    }

    #[test]
    fn validation_names_the_field_and_the_type() {
        let s = schema();
        assert_eq!(
            s.validate(&fields(json!({"event_name": "x"}))),
            Err("event_id: missing".into())
        );
        assert_eq!(
            s.validate(&fields(json!({"event_id": "", "event_name": "x"}))),
            Err("event_id: empty".into())
        );
        assert_eq!(
            s.validate(&fields(
                json!({"event_id": "e", "event_name": "x", "user": {"email": 5}})
            )),
            Err("user.email: must be a string, not a number".into())
        );
        assert_eq!(
            s.validate(&fields(
                json!({"event_id": "e", "event_name": "x", "consent": {"ad_user_data": "yes"}})
            )),
            Err("consent.ad_user_data: must be true or false, not a string".into())
        );
        assert_eq!(
            s.validate(&fields(
                json!({"event_id": "e", "event_name": "x", "timestamp": {}})
            )),
            Err("timestamp: must be a string or a number, not an object".into())
        );
        assert!(s
            .validate(&fields(
                json!({"event_id": "e", "event_name": "x", "user": null,
                "custom": {"any": [1]}, "properties": {"value": "9.99", "sku": 3}})
            ))
            .is_ok());
    }

    #[test]
    fn misspelt_paths_find_what_they_meant() {
        let s = schema();
        assert_eq!(s.closest("event_nme", &[]).as_deref(), Some("event_name"));
        assert_eq!(s.closest("clickid", &[]).as_deref(), Some("click_id"));
        assert_eq!(
            s.closest("network", &[]).as_deref(),
            Some("attribution.network")
        );
        assert_eq!(
            s.closest("properties.sku", &["properties.sku".into()]),
            None,
            "a declared field is itself"
        );
        assert_eq!(s.closest("zzzzzz.qqqq", &[]), None);
    }
}
