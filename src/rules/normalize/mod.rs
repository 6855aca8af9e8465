//! Hash normalisation and IP truncation: the value-level privacy transforms.
//!
//! Owns: how a value is normalised before SHA-256, per field kind and per partner
//! (each partner's own normaliser, tested against its published vectors in
//! `tests/vectors/`), the "already hashed" test, IPv4 /24 / IPv6 /48 truncation and
//! IPv4-only fields. Never: decides *which* fields are hashed or truncated (that is
//! the rule file, read by `load` and applied by `apply`), and never keeps a clear
//! value it could not transform: callers drop a field when these functions return
//! `None`.

mod meta;
mod meta_tables;
mod phone;

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use phonenumber::country::Id as Country;
use serde_json::Value;
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

pub use phone::parse_country;

/// Whose normalisation conventions apply where partners differ: each partner's own
/// reference normaliser is the specification for that partner (sources in
/// `docs/partners.md`, vectors in `tests/vectors/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashStyle {
    /// Rules without a preset, Snapchat, Pinterest, Reddit, LinkedIn, Adjust: Meta's
    /// normaliser for text fields; phones as E.164 digits without `+`, only when
    /// libphonenumber finds the number valid.
    #[default]
    Digits,
    /// Meta: its own normaliser, `capi-param-builder` (M5), phones included: the
    /// digits it finds, leading zeros removed. A national number that is valid in
    /// `params.default_country` gets that country code first (M3 asks for it).
    Meta,
    /// TikTok: phone in E.164 with `+` (T2), or, when libphonenumber cannot make it
    /// one, as TikTok's server tag hashes it (T1: trimmed, lower-cased);
    /// `external_id` trimmed, case kept (T1).
    E164,
    /// Google Ads and Data Manager: phone in E.164, or as Google's Data Manager client
    /// library formats it (`+` and the digits, D5); Gmail addresses without dots and
    /// without a `+` suffix in the local part (D6).
    Google,
    /// AppsFlyer (A6): `phone_number_sha256` as digits with country code, no leading
    /// zeros (as Meta); E.164 fields (`..._e164...`) keep the `+`.
    AppsFlyer,
}

/// What a field holds, guessed from the last segment of its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Email,
    Phone,
    /// A phone field whose name says E.164 (`phone_e164`, AppsFlyer's
    /// `phone_number_e164_sha256`): E.164 with `+` whatever the style.
    PhoneE164,
    Name,
    City,
    State,
    Zip,
    Country,
    ExternalId,
    Other,
}

impl FieldKind {
    pub fn of_path(path: &str) -> FieldKind {
        let last = path.rsplit('.').next().unwrap_or(path).to_ascii_lowercase();
        match last.as_str() {
            "em" => return FieldKind::Email,
            "ph" => return FieldKind::Phone,
            "fn" | "ln" => return FieldKind::Name,
            "ct" | "city" => return FieldKind::City,
            "st" | "state" | "region" => return FieldKind::State,
            "zp" | "zip" | "zip_code" | "postal_code" | "postcode" => return FieldKind::Zip,
            "country" | "country_code" => return FieldKind::Country,
            "external_id" => return FieldKind::ExternalId,
            _ => {}
        }
        if last.contains("email") {
            FieldKind::Email
        } else if last.contains("e164") {
            FieldKind::PhoneE164
        } else if last.contains("phone") || last.contains("mobile") {
            FieldKind::Phone
        } else if last.ends_with("name") {
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

/// How one destination normalises: the partner's conventions and, for phone numbers
/// written without a country code, the country they belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Normaliser {
    pub style: HashStyle,
    pub default_country: Option<Country>,
}

impl Normaliser {
    /// The normalised text that gets hashed, or `None` when nothing valid is left
    /// (an invalid e-mail, a phone number that cannot be made valid).
    pub fn normalise(&self, raw: &str, kind: FieldKind) -> Option<String> {
        // Accents typed as a letter plus a combining mark (NFD) hash like the
        // precomposed letters Meta's and Google's examples use (NFC).
        // ASCII text is its own NFC: borrowed as it is (most e-mails, phones, IDs).
        let text: Cow<'_, str> = if raw.is_ascii() {
            Cow::Borrowed(raw)
        } else {
            Cow::Owned(raw.nfc().collect())
        };
        let text = text.as_ref();
        let out = match (kind, self.style) {
            (FieldKind::Email, HashStyle::Google) => meta::email(text).and_then(gmail_canonical),
            (FieldKind::Email, _) => meta::email(text),
            (FieldKind::Phone, _) => self.phone(text),
            (FieldKind::PhoneE164, _) => phone::e164(text, self.default_country),
            (FieldKind::Name, _) => Some(meta::name(text)),
            (FieldKind::City, _) => meta::city(text),
            (FieldKind::State, _) => meta::state(text),
            (FieldKind::Zip, _) => meta::zip(text),
            (FieldKind::Country, _) => meta::country(text),
            (FieldKind::ExternalId, HashStyle::E164) => Some(meta::js_trim(text).to_string()),
            (FieldKind::ExternalId, _) => Some(meta::external_id(text)),
            (FieldKind::Other, _) => Some(meta::js_trim(text).to_lowercase()),
        };
        out.filter(|s| !s.is_empty())
    }

    /// A phone number as this destination's partner normalises it (see `HashStyle`).
    fn phone(&self, text: &str) -> Option<String> {
        let country = self.default_country;
        match self.style {
            HashStyle::Digits => {
                phone::e164(text, country).map(|p| p.trim_start_matches('+').to_string())
            }
            HashStyle::Meta | HashStyle::AppsFlyer => Some(
                phone::national_e164(text, country)
                    .map(|p| p.trim_start_matches('+').to_string())
                    .unwrap_or_else(|| phone::digits_found(text)),
            ),
            HashStyle::E164 => phone::e164(text, country).or_else(|| phone::as_typed(text)),
            HashStyle::Google => phone::e164(text, country).or_else(|| phone::plus_digits(text)),
        }
    }

    /// Normalises and hashes one string; an already-hashed value passes (lower-cased).
    pub fn hash_str(&self, raw: &str, kind: FieldKind) -> Option<String> {
        let t = meta::js_trim(raw);
        if is_sha256_hex(t) {
            return Some(t.to_ascii_lowercase());
        }
        self.normalise(raw, kind).map(|n| sha256_hex(&n))
    }

    /// Hashes a JSON value: strings and numbers are hashed, arrays element by element;
    /// anything else (objects, booleans, empty values) gives `None` so that the caller
    /// drops it rather than send it in clear.
    pub fn hash_value(&self, v: &Value, kind: FieldKind) -> Option<Value> {
        match v {
            Value::String(s) => self.hash_str(s, kind).map(Value::String),
            Value::Number(n) => self.hash_str(&n.to_string(), kind).map(Value::String),
            Value::Array(items) => {
                let hashed: Vec<Value> = items
                    .iter()
                    .filter(|i| !i.is_array())
                    .filter_map(|i| self.hash_value(i, kind))
                    .collect();
                (!hashed.is_empty()).then_some(Value::Array(hashed))
            }
            _ => None,
        }
    }
}

/// Google's Data Manager "Format user data" (D6): for gmail.com and googlemail.com,
/// remove all periods before the `@` and the `+` with everything after it in the local
/// part; other domains keep both (`user.name+NYC@Example.com` -> `user.name+nyc@example.com`).
/// `None` when nothing is left of the local part (`+shop@gmail.com`).
fn gmail_canonical(email: String) -> Option<String> {
    match email.rsplit_once('@') {
        Some((local, domain)) if domain == "gmail.com" || domain == "googlemail.com" => {
            let base = local.split('+').next().unwrap_or_default().replace('.', "");
            (!base.is_empty()).then(|| format!("{base}@{domain}"))
        }
        _ => Some(email),
    }
}

/// Normalises and hashes one string with a style's defaults (no default country).
pub fn hash_str(raw: &str, kind: FieldKind, style: HashStyle) -> Option<String> {
    Normaliser {
        style,
        default_country: None,
    }
    .hash_str(raw, kind)
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

/// An IPv4 address as text (an IPv4-mapped IPv6 address as its IPv4 form); `None`
/// for IPv6 and garbage: for partners that take IPv4 only (Adjust, AppsFlyer).
pub fn ipv4_only(raw: &str) -> Option<String> {
    match raw.trim().parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) => Some(v4.to_string()),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(|v4| v4.to_string()),
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
mod tests;
