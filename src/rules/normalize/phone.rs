//! Phone numbers to E.164 through libphonenumber's metadata (the `phonenumber`
//! crate, a port of Google's libphonenumber).
//!
//! `e164` uses a number only when libphonenumber says it is valid. Where a partner's
//! own reference normaliser hashes numbers libphonenumber refuses, that partner's
//! style falls back to the partner's rule (`digits_found`, `as_typed`,
//! `plus_digits`): each partner's own code is the specification for that partner.

use phonenumber::country::Id as Country;
use phonenumber::Mode;

/// `"GB"`, `"us"`: an ISO 3166-1 alpha-2 region libphonenumber knows.
pub fn parse_country(code: &str) -> Option<Country> {
    code.trim().to_ascii_uppercase().parse().ok()
}

/// `+<country code><national number>`, or `None` when the number cannot be made
/// valid. `+` and the international prefix `00` mark a country code; otherwise the
/// number is read as a national number of `default_country`, when there is one.
pub fn e164(raw: &str, default_country: Option<Country>) -> Option<String> {
    let t = raw.trim();
    let international = if t.starts_with('+') {
        Some(t.to_string())
    } else {
        let digits_start = t.trim_start_matches(|c: char| !c.is_ascii_digit());
        digits_start
            .strip_prefix("00")
            .map(|rest| format!("+{rest}"))
    };
    let number = match (international, default_country) {
        (Some(text), _) => phonenumber::parse(None, text).ok()?,
        (None, Some(country)) => phonenumber::parse(Some(country), t).ok()?,
        (None, None) => return None,
    };
    phonenumber::is_valid(&number).then(|| number.format().mode(Mode::E164).to_string())
}

/// A national number (no `+`, no `00`) read in `default_country`, when valid, in
/// E.164; `None` for anything else (an international number, no default country).
pub fn national_e164(raw: &str, default_country: Option<Country>) -> Option<String> {
    let t = raw.trim();
    let digits_start = t.trim_start_matches(|c: char| !c.is_ascii_digit());
    if t.starts_with('+') || digits_start.starts_with("00") {
        return None;
    }
    e164(t, default_country)
}

/// Meta's capi-param-builder `getNormalizedPhone` (`phoneUtil.js`): every ASCII
/// digit of the text, leading zeros removed (`"1-800-FLOWERS"` -> `"1800"`,
/// `"+44 (0)20 ..."` keeps the trunk 0). AppsFlyer's `phone_number_sha256` (A6):
/// "no symbols, letters, or leading zeroes". Empty when there is no digit.
pub fn digits_found(raw: &str) -> String {
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    digits.trim_start_matches('0').to_string()
}

/// TikTok's server tag (T1, `template.js` `hash(val, true)`): lower-cased and
/// trimmed, hashed as typed. `None` for text without a digit (it is no phone number
/// and could match nobody).
pub fn as_typed(raw: &str) -> Option<String> {
    let t = super::meta::js_trim(raw).to_lowercase();
    t.chars().any(|c| c.is_ascii_digit()).then_some(t)
}

/// Google's Data Manager client library (D5, `Formatter.format_phone_number`):
/// white space and every non-digit removed, `+` put in front. `None` without a digit.
pub fn plus_digits(raw: &str) -> Option<String> {
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    (!digits.is_empty()).then(|| format!("+{digits}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_become_e164_only_when_valid() {
        let gb = parse_country("gb");
        let us = parse_country("US");
        // A trunk zero written after the country code is not part of the number.
        assert_eq!(
            e164("+44 (0)20 7946 0958", None).as_deref(),
            Some("+442079460958")
        );
        assert_eq!(e164("020 7946 0958", gb).as_deref(), Some("+442079460958"));
        assert_eq!(
            e164("0044 20 7946 0958", None).as_deref(),
            Some("+442079460958")
        );
        assert_eq!(e164("(650) 253-0000", us).as_deref(), Some("+16502530000"));
        assert_eq!(e164("+1 650 253 0000", gb).as_deref(), Some("+16502530000"));
        // Without a country code and without a default country: which country? None.
        assert_eq!(e164("650 253 0000", None), None);
        // Not a number anywhere (555 is not a US area code).
        assert_eq!(e164("+1 (555) 010-0100", None), None);
        assert_eq!(e164("n/a", us), None);
        assert_eq!(parse_country("XX"), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn any_text_is_read_without_panicking(raw in "[+0-9 ()\\-.#*a-zA-Z\\x{0660}-\\x{0669}]{0,40}") {
            for country in [None, parse_country("US"), parse_country("GB"), parse_country("DE")] {
                if let Some(n) = e164(&raw, country) {
                    proptest::prop_assert!(n.starts_with('+') && n[1..].bytes().all(|b| b.is_ascii_digit()));
                }
            }
        }
    }
}
