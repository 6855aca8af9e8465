//! The partners' published normalisation vectors, run against our normaliser.
//! Sources and disputed cases: `tests/vectors/README.md`.

use super::*;
use serde_json::Value;

const META: &str = include_str!("../../../../tests/vectors/meta-capi-param-builder.json");
const META_DISPUTES: &str = include_str!("../../../../tests/vectors/meta-disputes.json");

fn kind(field: &str) -> FieldKind {
    match field {
        "em" => FieldKind::Email,
        "ph" => FieldKind::Phone,
        "name" => FieldKind::Name,
        "ct" => FieldKind::City,
        "st" => FieldKind::State,
        "country" => FieldKind::Country,
        "zp" => FieldKind::Zip,
        _ => FieldKind::ExternalId,
    }
}

/// (field, input) -> what we send instead, with why.
fn disputes() -> Vec<(String, String, Option<String>)> {
    let v: Value = serde_json::from_str(META_DISPUTES).expect("meta-disputes.json parses");
    v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            (
                c["field"].as_str().unwrap_or_default().to_string(),
                c["input"].as_str().unwrap_or_default().to_string(),
                c["relay"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[test]
fn meta_capi_param_builder_vectors() {
    // facebook/capi-param-builder nodejs tests (docs/partners.md M5): 1,448 assertions.
    let v: Value = serde_json::from_str(META).expect("vector file parses");
    let cases = v["cases"].as_array().expect("cases");
    assert!(cases.len() > 1300);
    let disputes = disputes();
    let n = Normaliser::default();
    let mut wrong = Vec::new();
    let mut disputed = std::collections::HashSet::new();
    for c in cases {
        let field = c["field"].as_str().unwrap_or_default();
        let input = c["input"].as_str().unwrap_or_default();
        let expected = c["expected"].as_str().filter(|s| !s.is_empty());
        if is_sha256_hex(meta::js_trim(input)) {
            // Meta passes digests through as written; we send them lower-cased.
            let got = n.hash_str(input, kind(field));
            assert_eq!(got, Some(meta::js_trim(input).to_ascii_lowercase()));
            continue;
        }
        let got = n.normalise(input, kind(field));
        let want = match disputes.iter().find(|(f, i, _)| f == field && i == input) {
            Some((_, _, relay)) => {
                disputed.insert((field, input));
                relay.clone()
            }
            None => expected.map(str::to_string),
        };
        if got != want {
            wrong.push(format!(
                "{field} {input:?}: got {got:?}, want {want:?} (Meta: {expected:?})"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Every dispute listed is one of Meta's cases (no stale entries).
    assert_eq!(
        disputed.len(),
        disputes.len(),
        "meta-disputes.json has entries Meta's tests do not"
    );
}

#[test]
fn meta_php_sdk_vectors() {
    // facebook/facebook-php-business-sdk test/FacebookAdsTest/Object/ServerSide/
    // ServerSideNormalizeTest.php (docs/partners.md M6). Where the SDK cleans an invalid
    // e-mail ("foo(.bar)@baz.com/" -> "foo.bar@baz.com"), the newer capi-param-builder
    // (M5) drops it; we follow M5 (README in tests/vectors).
    let n = with_country(HashStyle::Digits, "US");
    let agree: &[(FieldKind, &str, Option<&str>)] = &[
        (FieldKind::Phone, "123-456-7890", None), // SDK: "1234567890"; not a valid number
        (FieldKind::Phone, "+442071838750", Some("442071838750")),
        (FieldKind::Zip, "  98121", Some("98121")),
        (FieldKind::Zip, "98121-4892", Some("98121")),
        (FieldKind::Zip, "NR9 5AL", Some("nr9 5al")), // SDK: "nr95al"; M5 keeps the space
        (FieldKind::Zip, "98-121-4892", Some("98")),
        (FieldKind::City, "Menlo Park", Some("menlopark")),
        (FieldKind::City, "Seattle-98121", Some("seattle98121")), // SDK: "seattle"; M5 keeps digits
        (FieldKind::City, "Washington D.C", Some("washingtondc")),
        (FieldKind::Country, "   US   ", Some("us")),
        (FieldKind::Country, "*****UU*****", Some("uu")),
        (FieldKind::Email, "foo(.bar)@baz.com/", None), // SDK: "foo.bar@baz.com"
        (FieldKind::Email, "foo\"@bar.com", None),      // SDK: "foo@bar.com"
        (FieldKind::Email, "foo()@bar.com", None),      // SDK: "foo@bar.com"
    ];
    for (kind, input, want) in agree {
        assert_eq!(
            n.normalise(input, *kind).as_deref(),
            *want,
            "{kind:?} {input:?}"
        );
    }
}
