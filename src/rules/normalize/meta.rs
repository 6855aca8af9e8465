//! Meta's normaliser, rule for rule: a port of facebook/capi-param-builder
//! `nodejs/capi-param-builder/src/piiUtil/` (`emailUtil.js`, `stringUtil.js`,
//! `zipCodeUtil.js`, `commonUtil.js`), checked against its 1,448 test assertions in
//! `tests/vectors/meta-capi-param-builder.json`. The other presets reuse the parts
//! their partners document the same way (e-mail: trim and lower-case).
//!
//! JavaScript details kept on purpose: `\s` is ECMAScript white space, lengths count
//! UTF-16 units, and the state / country tables are searched in Meta's order.

use super::meta_tables::{COUNTRIES, STATES};

/// ECMAScript `\s`: WhiteSpace and LineTerminator.
pub fn is_js_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r' | ' ' | '\u{A0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200A}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202F}'
                | '\u{205F}'
                | '\u{3000}'
                | '\u{FEFF}'
    )
}

/// JavaScript's `String.prototype.trim`.
pub fn js_trim(s: &str) -> &str {
    s.trim_matches(is_js_space)
}

/// `em`: lower-cased, trimmed, and only when it looks like an e-mail address
/// (Meta's `EMAIL_RE`, "a good approximation of RFC 2822"); otherwise nothing.
pub fn email(raw: &str) -> Option<String> {
    let e = js_trim(&raw.to_lowercase()).to_string();
    is_email(&e).then_some(e)
}

fn is_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_!#$%&'*+/=?^`{|}~-".contains(c)
}

/// `^[\w!#$%&'*+/=?^`{|}~-]+(:?\.[\w...]+)*@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$`
/// (case-insensitive). Meta's `(:?` lets one `:` stand before each inner dot.
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let parts: Vec<&str> = local.split('.').collect();
    let last = parts.len() - 1;
    let local_ok = parts.iter().enumerate().all(|(i, p)| {
        let p = if i < last {
            p.strip_suffix(':').unwrap_or(p)
        } else {
            p
        };
        !p.is_empty() && p.chars().all(is_local_char)
    });
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    };
    local_ok && labels.len() >= 2 && labels.iter().all(label_ok)
}

/// `fn`, `ln`: white space and ASCII punctuation removed, lower-cased. Letters of
/// any script (and their accents) stay.
pub fn name(raw: &str) -> String {
    raw.chars()
        .filter(|c| !(is_js_space(*c) || c.is_ascii_punctuation()))
        .collect::<String>()
        .to_lowercase()
}

/// `ct`: only Latin letters and digits, lower-cased; must start with a letter.
pub fn city(raw: &str) -> Option<String> {
    let s: String = raw
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_lowercase();
    starts_with_letter(s)
}

fn starts_with_letter(s: String) -> Option<String> {
    s.starts_with(|c: char| c.is_ascii_lowercase()).then_some(s)
}

/// `st`: a US state or Canadian province name becomes its two-letter code; other
/// text is cut to two letters.
pub fn state(raw: &str) -> Option<String> {
    two_letter(raw, STATES)
}

/// `country`: a country name becomes its ISO 3166-1 alpha-2 code; other text is cut
/// to two letters.
pub fn country(raw: &str) -> Option<String> {
    two_letter(raw, COUNTRIES)
}

/// Meta's `normalizeTwoLetterAbbreviations`, then truncation to 2 and the
/// "starts with a letter" test.
fn two_letter(raw: &str, table: &[(&str, &str)]) -> Option<String> {
    let letters: String = raw
        .to_lowercase()
        .chars()
        .filter(char::is_ascii_lowercase)
        .collect();
    let mapped = if letters.len() == 2 {
        letters
    } else if let Some((_, code)) = table.iter().find(|(n, _)| *n == letters) {
        (*code).to_string()
    } else if let Some((_, code)) = table.iter().find(|(n, _)| letters.contains(n)) {
        (*code).to_string()
    } else {
        letters
    };
    let cut: String = mapped.chars().take(2).collect();
    starts_with_letter(cut)
}

/// `zp`: lower-cased, cut at the first `-` (ZIP+4 loses its +4), trimmed; at least
/// two characters.
pub fn zip(raw: &str) -> Option<String> {
    let lower = raw.to_lowercase();
    let first = lower.split('-').next().unwrap_or_default();
    let z = js_trim(first);
    (z.encode_utf16().count() >= 2).then(|| z.to_string())
}

/// `external_id`: all white space removed, lower-cased.
pub fn external_id(raw: &str) -> String {
    raw.chars()
        .filter(|c| !is_js_space(*c))
        .collect::<String>()
        .to_lowercase()
}
