//! Normalisation rules, each with where it comes from. The partners' published
//! vector files run in `vectors.rs`.

use super::*;

fn meta() -> Normaliser {
    Normaliser::default()
}

fn with_country(style: HashStyle, code: &str) -> Normaliser {
    Normaliser {
        style,
        default_country: parse_country(code),
    }
}

#[test]
fn email_is_trimmed_and_lower_cased_before_hashing() {
    // docs/partners.md "Hashing test vectors", and Meta's customer-information-parameters
    // page (`em`: trim, lower-case, then SHA-256), the same rule as Snap's, whose
    // docs give this very example: Person@Example.com -> person@example.com.
    let expected = sha256_hex("person@example.com");
    assert_eq!(
        hash_str(" Person@Example.com ", FieldKind::Email, HashStyle::Digits),
        Some(expected.clone())
    );
    // Snap's published digest of the same normalised address.
    assert_eq!(
        expected,
        "542d240129883c019e106e3b1b2d3f3cb3537c43c425364de8e951d5a3083345"
    );
}

#[test]
fn invalid_emails_are_dropped_not_hashed() {
    // capi-param-builder emailUtil.js: getNormalizedEmail returns null unless EMAIL_RE.
    for bad in [
        "not-an-email",
        "a@b",
        "@example.com",
        "a b@example.com",
        "324342@@@@bar.com",
    ] {
        assert_eq!(meta().normalise(bad, FieldKind::Email), None, "{bad}");
    }
}

#[test]
fn phones_are_e164_per_partner_and_invalid_ones_are_dropped() {
    // Meta `ph`: digits with country code, no `+`; TikTok (T2) and Google: E.164.
    let n = with_country(HashStyle::Digits, "GB");
    assert_eq!(
        n.normalise("+44 (0)20 7946 0958", FieldKind::Phone)
            .as_deref(),
        Some("442079460958")
    );
    assert_eq!(
        n.normalise("020 7946 0958", FieldKind::Phone).as_deref(),
        Some("442079460958")
    );
    let t = with_country(HashStyle::E164, "US");
    assert_eq!(
        t.normalise("(650) 253-0000", FieldKind::Phone).as_deref(),
        Some("+16502530000")
    );
    // No country code and no default_country: the country is unknown, so dropped.
    assert_eq!(meta().normalise("650 253 0000", FieldKind::Phone), None);
    assert_eq!(t.normalise("+1 (555) 010-0100", FieldKind::Phone), None);
}

#[test]
fn google_wants_e164_phones_and_gmail_without_dots() {
    // Google Ads API "Normalization and hashing": E.164, and remove periods before
    // gmail.com / googlemail.com.
    let g = with_country(HashStyle::Google, "US");
    assert_eq!(
        g.normalise("+1 (650) 253-0000", FieldKind::Phone)
            .as_deref(),
        Some("+16502530000")
    );
    assert_eq!(
        g.normalise(" Jo.Hn@Gmail.com", FieldKind::Email).as_deref(),
        Some("john@gmail.com")
    );
    assert_eq!(
        g.normalise("jo.hn@example.com", FieldKind::Email)
            .as_deref(),
        Some("jo.hn@example.com")
    );
}

#[test]
fn names_lose_spaces_and_punctuation_but_keep_accents() {
    // capi-param-builder stringUtil.js getNormalizedName: whitespace and ASCII
    // punctuation stripped, lower-cased ("Mary Ann" -> "maryann").
    let n = meta();
    assert_eq!(
        n.normalise(" O'Brien-Smith. ", FieldKind::Name).as_deref(),
        Some("obriensmith")
    );
    assert_eq!(
        n.normalise("Mary Ann", FieldKind::Name).as_deref(),
        Some("maryann")
    );
    // NFD input (e + combining acute) hashes like the precomposed letter.
    assert_eq!(
        n.hash_str("Jose\u{301}", FieldKind::Name),
        n.hash_str("Jos\u{e9}", FieldKind::Name)
    );
    assert_eq!(
        n.normalise("Jos\u{e9}", FieldKind::Name).as_deref(),
        Some("jos\u{e9}")
    );
    assert_eq!(FieldKind::of_path("user.first_name"), FieldKind::Name);
    assert_eq!(FieldKind::of_path("user.email"), FieldKind::Email);
    assert_eq!(FieldKind::of_path("user.phone"), FieldKind::Phone);
    assert_eq!(
        FieldKind::of_path("user.external_id"),
        FieldKind::ExternalId
    );
    assert_eq!(FieldKind::of_path("user.zip"), FieldKind::Zip);
    assert_eq!(FieldKind::of_path("user.prefs"), FieldKind::Other);
}

#[test]
fn address_fields_follow_meta() {
    // capi-param-builder: states and countries to two-letter codes, ZIP+4 cut.
    let n = meta();
    assert_eq!(
        n.normalise("California", FieldKind::State).as_deref(),
        Some("ca")
    );
    assert_eq!(
        n.normalise("United States", FieldKind::Country).as_deref(),
        Some("us")
    );
    assert_eq!(
        n.normalise("98121-4892", FieldKind::Zip).as_deref(),
        Some("98121")
    );
    assert_eq!(
        n.normalise("Menlo Park", FieldKind::City).as_deref(),
        Some("menlopark")
    );
}

#[test]
fn tiktok_keeps_the_case_of_external_ids() {
    // tiktok/gtm-template-eapi template.tpl TestPIIHashAndCleaning: external_id
    // ' UserABC' is hashed as 'UserABC'; email 'test@TEST.com\n' as 'test@test.com'.
    let t = with_country(HashStyle::E164, "US");
    assert_eq!(
        t.hash_str(" UserABC", FieldKind::ExternalId),
        Some(sha256_hex("UserABC"))
    );
    assert_eq!(
        t.hash_str("test@TEST.com\n", FieldKind::Email),
        Some(sha256_hex("test@test.com"))
    );
    // Meta lower-cases and removes white space (externalIDUtil).
    assert_eq!(
        meta().hash_str(" User ABC", FieldKind::ExternalId),
        Some(sha256_hex("userabc"))
    );
}

#[test]
fn already_hashed_values_are_not_hashed_again() {
    let h = sha256_hex("person@example.com");
    assert_eq!(
        hash_str(&h, FieldKind::Email, HashStyle::Digits),
        Some(h.clone())
    );
    assert_eq!(
        hash_str(&h.to_uppercase(), FieldKind::Email, HashStyle::Digits),
        Some(h)
    );
}

#[test]
fn objects_and_booleans_are_not_hashable() {
    let n = meta();
    assert_eq!(
        n.hash_value(&serde_json::json!({"a": 1}), FieldKind::Other),
        None
    );
    assert_eq!(
        n.hash_value(&serde_json::json!(true), FieldKind::Other),
        None
    );
    assert_eq!(
        n.hash_value(&serde_json::json!(42), FieldKind::Other),
        Some(Value::String(sha256_hex("42")))
    );
}

#[test]
fn ips_are_truncated_and_garbage_is_dropped() {
    assert_eq!(truncate_ip("203.0.113.7").as_deref(), Some("203.0.113.0"));
    assert_eq!(
        truncate_ip("2001:db8:abcd:12:34::1").as_deref(),
        Some("2001:db8:abcd::")
    );
    assert_eq!(
        truncate_ip("::ffff:203.0.113.7").as_deref(),
        Some("203.0.113.0")
    );
    assert_eq!(truncate_ip("not-an-ip"), None);
    assert_eq!(truncate_ip("203.0.113.7:443"), None);
}

#[test]
fn ipv4_only_fields_drop_ipv6() {
    // Adjust J1: "ip_address accepts only IPv4 addresses".
    assert_eq!(ipv4_only(" 203.0.113.7").as_deref(), Some("203.0.113.7"));
    assert_eq!(
        ipv4_only("::ffff:203.0.113.7").as_deref(),
        Some("203.0.113.7")
    );
    assert_eq!(ipv4_only("2001:db8::1"), None);
}

mod vectors;

#[test]
fn truncate_ip_keeps_no_full_ipv4_inside_ipv6() {
    assert_eq!(truncate_ip("203.0.113.77").as_deref(), Some("203.0.113.0"));
    assert_eq!(
        truncate_ip("::ffff:203.0.113.77").as_deref(),
        Some("203.0.113.0")
    );
    // 6to4 of 203.0.113.77: the /48 would be the whole IPv4 address
    assert_eq!(
        truncate_ip("2002:cb00:714d::1").as_deref(),
        Some("2002:cb00:7100::")
    );
    // SIIT (::ffff:0:a.b.c.d), NAT64 and IPv4-compatible forms: the /48 holds none of it
    assert_eq!(truncate_ip("::ffff:0:cb00:714d").as_deref(), Some("::"));
    assert_eq!(
        truncate_ip("64:ff9b::cb00:714d").as_deref(),
        Some("64:ff9b::")
    );
    assert_eq!(
        truncate_ip("2001:db8:1234:5678::1").as_deref(),
        Some("2001:db8:1234::")
    );
}
