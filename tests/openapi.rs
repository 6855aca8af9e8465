//! The HTTP API document, `docs/openapi.json`: it parses, its references resolve,
//! every route the server's source answers is in it, and every route in it is
//! answered by a real relay (no "no such endpoint").

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use common::{TestRelay, ADMIN_TOKEN};

fn docs() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
}

fn document() -> Value {
    let text = std::fs::read_to_string(docs().join("openapi.json")).expect("docs/openapi.json");
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

/// (METHOD, path) of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            out.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    out
}

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn the_document_parses_and_its_references_resolve() {
    let doc = document();
    assert!(doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1")));
    assert!(doc["info"]["title"].is_string());
    for (method, path) in documented(&doc) {
        let op = &doc["paths"][&path][method.to_ascii_lowercase()];
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path} has no responses"
        );
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 20);
    for r in all {
        match r.strip_prefix("#/") {
            Some(pointer) => assert!(
                doc.pointer(&format!("/{pointer}")).is_some(),
                "{r} does not resolve"
            ),
            None => {
                let text =
                    std::fs::read_to_string(docs().join(&r)).unwrap_or_else(|e| panic!("{r}: {e}"));
                let _: Value = serde_json::from_str(&text).expect("a JSON schema");
            }
        }
    }
}

/// (METHOD, path) of every route the HTTP modules match on: a `Method::X` beside a
/// path literal on one line. A literal ending in `/` is a prefix (`/admin/deliveries/`).
fn routes_in_source() -> BTreeSet<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut out = BTreeSet::new();
    for file in ["routes.rs", "admin.rs", "ui.rs"] {
        let text = std::fs::read_to_string(src.join(file)).expect("readable");
        for line in text.lines() {
            let Some(at) = line.find("Method::") else {
                continue;
            };
            let method: String = line[at + 8..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase())
                .collect();
            let Some(start) = line.find("\"/") else {
                continue;
            };
            let path: String = line[start + 1..]
                .chars()
                .take_while(|c| *c != '"')
                .collect();
            if !method.is_empty() {
                out.insert((method, path));
            }
        }
    }
    out
}

#[test]
fn every_route_the_server_answers_is_documented() {
    let doc = document();
    let documented = documented(&doc);
    let routes = routes_in_source();
    assert!(
        routes.len() >= 13,
        "the source scan found too few routes: {routes:?}"
    );
    for (method, path) in routes {
        let found = if path.ends_with('/') {
            documented
                .iter()
                .any(|(m, p)| *m == method && p.starts_with(&format!("{path}{{")))
        } else {
            documented.contains(&(method.clone(), path.clone()))
        };
        assert!(
            found,
            "{method} {path} is answered but not in docs/openapi.json"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_answered() {
    let relay = TestRelay::start(&[], "").await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (method, path) in documented(&document()) {
        let url = format!("{}{}", relay.base, path.replace("{id}", "dlv_0"));
        let mut req = client
            .request(method.parse().unwrap(), &url)
            .bearer_auth(ADMIN_TOKEN);
        if method == "POST" {
            req = req.header("content-type", "application/json").body("{}");
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(
            !body.contains("no such endpoint")
                && !body.contains("no such admin endpoint")
                && !body.contains("no such page"),
            "{method} {path} is documented but not answered: {status} {body}"
        );
    }
    relay.stop().await;
}
