//! The partners' published normalisation vectors, run against our normaliser with
//! each partner's own style. Sources and disputed cases: `tests/vectors/README.md`.
//!
//! Prints "N of M vectors match" per partner and asserts issue 19's goal (at least
//! 1,320 match); every case that does not match must be listed, with why, in
//! `tests/vectors/disputes.json` (and every listed dispute must still be a miss).

use std::collections::{BTreeMap, HashSet};

use super::*;
use serde_json::Value;

const META: &str = include_str!("../../../../tests/vectors/meta-capi-param-builder.json");
const PARTNERS: &str = include_str!("../../../../tests/vectors/partners.json");
const DISPUTES: &str = include_str!("../../../../tests/vectors/disputes.json");

/// Issue 19: "at least 1,320 of the 1,359 vectors".
const GOAL: usize = 1_320;

fn kind(field: &str) -> FieldKind {
    match field {
        "em" => FieldKind::Email,
        "ph" => FieldKind::Phone,
        "ph_e164" => FieldKind::PhoneE164,
        "name" => FieldKind::Name,
        "ct" => FieldKind::City,
        "st" => FieldKind::State,
        "country" => FieldKind::Country,
        "zp" => FieldKind::Zip,
        _ => FieldKind::ExternalId,
    }
}

/// The style of the preset that sends to this partner (`presets.rs`).
fn style(partner: &str) -> HashStyle {
    match partner {
        "meta" => HashStyle::Meta,
        "tiktok" => HashStyle::E164,
        "google" => HashStyle::Google,
        "appsflyer" => HashStyle::AppsFlyer,
        other => panic!("vector of unknown partner {other:?}"),
    }
}

/// One published case: what the partner's source sends for `input`.
struct Case {
    partner: String,
    field: String,
    input: String,
    country: Option<String>,
    expected: Option<String>,
    sha256: Option<String>,
}

fn text(c: &Value, key: &str) -> Option<String> {
    c[key].as_str().map(str::to_string)
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let meta: Value = serde_json::from_str(META).expect("meta-capi-param-builder.json parses");
    let partners: Value = serde_json::from_str(PARTNERS).expect("partners.json parses");
    let all = meta["cases"]
        .as_array()
        .expect("meta cases")
        .iter()
        .map(|c| (c, "meta"));
    let more = partners["cases"].as_array().expect("partner cases").iter();
    for (c, default_partner) in all.chain(more.map(|c| (c, ""))) {
        let case = Case {
            partner: text(c, "partner").unwrap_or_else(|| default_partner.to_string()),
            field: text(c, "field").expect("every case has a field"),
            input: text(c, "input").expect("every case has a string input"),
            country: text(c, "default_country"),
            expected: text(c, "expected").filter(|s| !s.is_empty()),
            sha256: text(c, "sha256"),
        };
        // A vector is a distinct (partner, field, input, country): the builder's tests
        // assert some inputs more than once.
        let key = (
            case.partner.clone(),
            case.field.clone(),
            case.input.clone(),
            case.country.clone(),
        );
        if seen.insert(key) {
            out.push(case);
        }
    }
    out
}

/// What the relay sends for a case: the normalised text, or the digest as given.
fn relay_value(c: &Case) -> Option<String> {
    let n = Normaliser {
        style: style(&c.partner),
        default_country: c.country.as_deref().and_then(parse_country),
    };
    if is_sha256_hex(meta::js_trim(&c.input)) {
        return n.hash_str(&c.input, kind(&c.field));
    }
    let got = n.normalise(&c.input, kind(&c.field));
    if let (Some(g), Some(digest)) = (&got, &c.sha256) {
        // The source's own digest of its expected text: the hash we send is that one.
        assert_eq!(&sha256_hex(g), digest, "{} {:?}", c.field, c.input);
    }
    got
}

fn matches(c: &Case, got: &Option<String>) -> bool {
    match (&c.expected, got) {
        // Digests are sent lower-cased (Meta passes them as written).
        (Some(e), Some(g)) if is_sha256_hex(e) => e.eq_ignore_ascii_case(g),
        (e, g) => e == g,
    }
}

/// (partner, field, input) -> what the relay sends instead, from disputes.json.
fn disputes() -> BTreeMap<(String, String, String), Option<String>> {
    let v: Value = serde_json::from_str(DISPUTES).expect("disputes.json parses");
    let cases = v["cases"].as_array().expect("disputes.json has cases");
    cases
        .iter()
        .map(|c| {
            let key = (
                text(c, "partner").expect("dispute partner"),
                text(c, "field").expect("dispute field"),
                text(c, "input").expect("dispute input"),
            );
            assert!(text(c, "why").is_some(), "dispute {key:?} says why");
            (key, text(c, "relay"))
        })
        .collect()
}

#[test]
fn partners_published_vectors_match() {
    let disputes = disputes();
    let mut tally: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut unexplained = Vec::new();
    let mut disputed = HashSet::new();
    for c in cases() {
        let got = relay_value(&c);
        let t = tally.entry(c.partner.clone()).or_default();
        t.1 += 1;
        if matches(&c, &got) {
            t.0 += 1;
            continue;
        }
        let key = (c.partner.clone(), c.field.clone(), c.input.clone());
        match disputes.get(&key) {
            Some(relay) if *relay == got => {
                disputed.insert(key);
            }
            _ => unexplained.push(format!(
                "{} {} {:?}: relay {got:?}, partner {:?}",
                c.partner, c.field, c.input, c.expected
            )),
        }
    }
    let (mut matched, mut total) = (0, 0);
    for (partner, (n, m)) in &tally {
        println!("{partner}: {n} of {m} vectors match");
        matched += n;
        total += m;
    }
    println!("all partners: {matched} of {total} vectors match (goal: at least {GOAL})");
    assert!(
        unexplained.is_empty(),
        "{} misses not in tests/vectors/disputes.json:\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
    let stale: Vec<_> = disputes.keys().filter(|k| !disputed.contains(*k)).collect();
    assert!(
        stale.is_empty(),
        "disputes.json lists cases that match or do not exist: {stale:?}"
    );
    assert!(
        matched >= GOAL,
        "{matched} of {total} vectors match; the goal is {GOAL}"
    );
}
