//! Normalisation rules, each with where it comes from. The partners' published
//! vector files run in `vectors.rs`.

use super::*;

fn meta() -> Normaliser {
    Normaliser {
        style: HashStyle::Meta,
        default_country: None,
    }
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
fn digits_style_phones_are_e164_digits_and_invalid_ones_are_dropped() {
    // Rules without a preset, Snapchat (S2: `+44 844 412 4653` -> `448444124653`),
    // Pinterest, Reddit, LinkedIn: E.164 digits without `+`, valid numbers only.
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
    // No country code and no default_country: the country is unknown, so dropped.
    let d = Normaliser::default();
    assert_eq!(d.normalise("650 253 0000", FieldKind::Phone), None);
    assert_eq!(d.normalise("+1 (555) 010-0100", FieldKind::Phone), None);
}

#[test]
fn meta_hashes_the_digits_its_param_builder_finds() {
    // facebook/capi-param-builder nodejs/capi-param-builder/src/piiUtil/phoneUtil.js
    // @ b0b6f0b (M5): every digit, leading zeros removed, whatever libphonenumber
    // says; its tests (tests/vectors/meta-capi-param-builder.json) and the PHP SDK's
    // (M6) assert these. The relay used to drop all of them.
    let n = meta();
    for (input, want) in [
        ("1(650)123-4567", "16501234567"),
        ("4792813113", "4792813113"),
        ("+001 (616) 954-78 88", "16169547888"),
        ("1-800-FLOWERS", "1800"),
        ("+1-555-123-4567 ext. 123", "15551234567123"),
        ("+44 (0)20 7946 0958", "4402079460958"),
        ("44-12390821300A", "4412390821300"),
        ("00001", "1"),
    ] {
        assert_eq!(
            n.normalise(input, FieldKind::Phone).as_deref(),
            Some(want),
            "{input}"
        );
    }
    assert_eq!(n.normalise("n/a", FieldKind::Phone), None);
    assert_eq!(n.normalise("000", FieldKind::Phone), None);
    // A national number valid in params.default_country gets its country code
    // (M3: "include the country code"); anything else stays as the builder has it.
    let gb = with_country(HashStyle::Meta, "GB");
    assert_eq!(
        gb.normalise("020 7946 0958", FieldKind::Phone).as_deref(),
        Some("442079460958")
    );
    assert_eq!(
        gb.normalise("12345", FieldKind::Phone).as_deref(),
        Some("12345")
    );
}

#[test]
fn tiktok_phones_are_e164_or_as_its_server_tag_hashes_them() {
    // T2: E.164 with "+". T1 (tiktok/gtm-template-eapi template.js `hash(val, true)`,
    // template.tpl TestPIIHashAndCleaning @ 089e34e): a number libphonenumber cannot
    // make E.164 is hashed as typed, trimmed and lower-cased; the relay dropped it.
    let t = with_country(HashStyle::E164, "US");
    assert_eq!(
        t.normalise("(650) 253-0000", FieldKind::Phone).as_deref(),
        Some("+16502530000")
    );
    assert_eq!(
        t.hash_str("  1231231234  ", FieldKind::Phone).as_deref(),
        Some("065f45b37b5dad20b5a67158468161cdf35b1ae3cda2a666e7852feab7424897")
    );
    assert_eq!(
        t.normalise("+1 (555) 010-0100", FieldKind::Phone)
            .as_deref(),
        Some("+1 (555) 010-0100")
    );
    // Text without a digit is no phone number: not sent (the tag would hash it).
    assert_eq!(t.normalise(" N/A ", FieldKind::Phone), None);
}

#[test]
fn appsflyer_phones_keep_the_plus_only_in_e164_fields() {
    // AppsFlyer "Audiences: additional identifiers" (A6): phone_number_sha256 is
    // "442070313000" (no symbols, letters or leading zeros, with country code);
    // phone_number_e164_sha256 is "+442070313000". The relay had no E.164 field.
    let a = Normaliser {
        style: HashStyle::AppsFlyer,
        default_country: None,
    };
    assert_eq!(
        a.normalise("442070313000", FieldKind::Phone).as_deref(),
        Some("442070313000")
    );
    assert_eq!(FieldKind::of_path("user.phone_e164"), FieldKind::PhoneE164);
    assert_eq!(
        FieldKind::of_path("user.phone_number_e164_sha256"),
        FieldKind::PhoneE164
    );
    assert_eq!(
        a.normalise("+44 20 7031 3000", FieldKind::PhoneE164)
            .as_deref(),
        Some("+442070313000")
    );
    assert_eq!(a.normalise("not a phone", FieldKind::PhoneE164), None);
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
    // Data Manager API "Format user data" (D6): Gmail also loses the "+" suffix;
    // other domains keep dots and "+". The relay kept Gmail's "+shopping".
    assert_eq!(
        g.normalise("cloudy.sanfrancisco+shopping@gmail.com", FieldKind::Email)
            .as_deref(),
        Some("cloudysanfrancisco@gmail.com")
    );
    assert_eq!(
        g.normalise("user.name+NYC@Example.com", FieldKind::Email)
            .as_deref(),
        Some("user.name+nyc@example.com")
    );
    assert_eq!(g.normalise("+shop@gmail.com", FieldKind::Email), None);
    // googleads/data-manager-python Formatter.format_phone_number (D5, its
    // tests/formatter_test.py @ 5abbf5d): a number libphonenumber cannot place is
    // "+" and its digits; the relay dropped "441134960987" without a default country.
    let bare = Normaliser {
        style: HashStyle::Google,
        default_country: None,
    };
    assert_eq!(
        bare.normalise("441134960987", FieldKind::Phone).as_deref(),
        Some("+441134960987")
    );
    assert_eq!(
        bare.hash_str("1-800-555-0100   ", FieldKind::Phone)
            .as_deref(),
        Some("fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30")
    );
    assert_eq!(bare.normalise(" +A BCD EFG ", FieldKind::Phone), None);
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
