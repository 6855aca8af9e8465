//! Hash normalisation and IP truncation: the value-level privacy transforms.
//!
//! Owns: how a value is normalised before SHA-256 (per field kind and per partner
//! convention), the "already hashed" test, and IPv4 /24 / IPv6 /48 truncation.
//! Never: decides *which* fields are hashed or truncated (that is the rule file,
//! read by `load` and applied by `apply`), and never keeps a clear value it could
//! not transform: callers drop a field when these functions return `None`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Whose normalisation conventions apply where partners differ (phone numbers, e-mails).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashStyle {
    /// Meta / TikTok / Snap: phone as digits only with country code, no `+`, no leading zeros.
    #[default]
    Digits,
    /// TikTok: phone in E.164 (`+` and digits).
    E164,
    /// Google Ads: phone in E.164; dots removed before `@gmail.com` / `@googlemail.com`.
    Google,
}

/// What a field holds, guessed from the last segment of its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Email,
    Phone,
    Name,
    Other,
}

impl FieldKind {
    pub fn of_path(path: &str) -> FieldKind {
        let last = path.rsplit('.').next().unwrap_or(path).to_ascii_lowercase();
        if last == "em" || last.contains("email") {
            FieldKind::Email
        } else if last == "ph" || last.contains("phone") || last.contains("mobile") {
            FieldKind::Phone
        } else if last == "fn" || last == "ln" || last.ends_with("name") {
            FieldKind::Name
        } else {
            FieldKind::Other
        }
    }
}

/// A value that is already a SHA-256 hex digest: 64 hex digits (sent lower-cased).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The normalised text that gets hashed, or `None` when nothing is left of it.
pub fn normalise(raw: &str, kind: FieldKind, style: HashStyle) -> Option<String> {
    let t = raw.trim();
    let out = match kind {
        FieldKind::Email => {
            let lower = t.to_lowercase();
            match (style, lower.rsplit_once('@')) {
                (HashStyle::Google, Some((local, domain)))
                    if domain == "gmail.com" || domain == "googlemail.com" =>
                {
                    format!("{}@{domain}", local.replace('.', ""))
                }
                _ => lower,
            }
        }
        FieldKind::Phone => {
            let digits: String = t.chars().filter(char::is_ascii_digit).collect();
            // "0044 ..." and "+44 ..." both mean country code 44.
            let digits = digits.trim_start_matches('0');
            if digits.is_empty() {
                return None;
            }
            match style {
                HashStyle::Digits => digits.to_string(),
                HashStyle::E164 | HashStyle::Google => format!("+{digits}"),
            }
        }
        FieldKind::Name => t
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || c.is_whitespace())
            .collect::<String>()
            .trim()
            .to_string(),
        FieldKind::Other => t.to_lowercase(),
    };
    (!out.is_empty()).then_some(out)
}

pub fn sha256_hex(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// Normalises and hashes one string; an already-hashed value passes (lower-cased).
pub fn hash_str(raw: &str, kind: FieldKind, style: HashStyle) -> Option<String> {
    let t = raw.trim();
    if is_sha256_hex(t) {
        return Some(t.to_ascii_lowercase());
    }
    normalise(t, kind, style).map(|n| sha256_hex(&n))
}

/// Hashes a JSON value in place semantics: strings and numbers are hashed, arrays
/// element by element; anything else (objects, booleans, empty values) gives `None`
/// so that the caller drops it rather than send it in clear.
pub fn hash_value(v: &Value, kind: FieldKind, style: HashStyle) -> Option<Value> {
    match v {
        Value::String(s) => hash_str(s, kind, style).map(Value::String),
        Value::Number(n) => hash_str(&n.to_string(), kind, style).map(Value::String),
        Value::Array(items) => {
            let hashed: Vec<Value> = items
                .iter()
                .filter(|i| !i.is_array())
                .filter_map(|i| hash_value(i, kind, style))
                .collect();
            (!hashed.is_empty()).then_some(Value::Array(hashed))
        }
        _ => None,
    }
}

/// IPv4 to its /24, IPv6 to its /48 (IPv4-mapped IPv6 as IPv4); `None` if unparseable.
pub fn truncate_ip(raw: &str) -> Option<String> {
    let ip: IpAddr = raw.trim().parse().ok()?;
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    Some(match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            Ipv4Addr::new(a, b, c, 0).to_string()
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            // A /48 of a 6to4 address (2002:AABB:CCDD::/48) is the whole IPv4 address
            // AA.BB.CC.DD it embeds: cut that to its /24 like any IPv4.
            let third = if s[0] == 0x2002 { s[2] & 0xff00 } else { s[2] };
            Ipv6Addr::new(s[0], s[1], third, 0, 0, 0, 0, 0).to_string()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn email_is_trimmed_and_lower_cased_before_hashing() {
        // PARTNERS.md "Hashing test vectors", and Meta's customer-information-parameters
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
    fn phone_is_digits_with_country_code_without_plus_or_leading_zeros() {
        // Meta `ph`: digits only, with country code, no leading zeros (PARTNERS.md).
        assert_eq!(
            hash_str("+1 (555) 010-0100", FieldKind::Phone, HashStyle::Digits),
            Some(sha256_hex("15550100100"))
        );
        assert_eq!(
            normalise("0044 844 412 4653", FieldKind::Phone, HashStyle::Digits).as_deref(),
            Some("448444124653")
        );
        assert_eq!(normalise("n/a", FieldKind::Phone, HashStyle::Digits), None);
    }

    #[test]
    fn google_wants_e164_phones_and_gmail_without_dots() {
        // Google Ads API "Normalization and hashing": E.164, and remove periods before
        // gmail.com / googlemail.com.
        assert_eq!(
            normalise("+1 (555) 010-0100", FieldKind::Phone, HashStyle::Google).as_deref(),
            Some("+15550100100")
        );
        assert_eq!(
            normalise(" Jo.Hn@Gmail.com", FieldKind::Email, HashStyle::Google).as_deref(),
            Some("john@gmail.com")
        );
        assert_eq!(
            normalise("jo.hn@example.com", FieldKind::Email, HashStyle::Google).as_deref(),
            Some("jo.hn@example.com")
        );
    }

    #[test]
    fn names_lose_punctuation() {
        assert_eq!(
            normalise(" O'Brien-Smith. ", FieldKind::Name, HashStyle::Digits).as_deref(),
            Some("obriensmith")
        );
        assert_eq!(FieldKind::of_path("user.first_name"), FieldKind::Name);
        assert_eq!(FieldKind::of_path("user.email"), FieldKind::Email);
        assert_eq!(FieldKind::of_path("user.phone"), FieldKind::Phone);
        assert_eq!(FieldKind::of_path("user.external_id"), FieldKind::Other);
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
        assert_eq!(
            hash_value(
                &serde_json::json!({"a": 1}),
                FieldKind::Other,
                HashStyle::Digits
            ),
            None
        );
        assert_eq!(
            hash_value(
                &serde_json::json!(true),
                FieldKind::Other,
                HashStyle::Digits
            ),
            None
        );
        assert_eq!(
            hash_value(&serde_json::json!(42), FieldKind::Other, HashStyle::Digits),
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
}
