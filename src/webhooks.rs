//! Standard Webhooks, the one place that speaks it: `whsec_` secrets, signing, and
//! verifying `webhook-id`, `webhook-timestamp`, `webhook-signature` =
//! space-separated `v1,<base64 HMAC-SHA256("{id}.{ts}.{body}")>`.
//!
//! Used by ingest (verify), delivery (sign outbound postbacks), the rule loader
//! (check a partner's `sign_secret`) and `send` (sign like a sender). Owns: secret
//! parsing, one `sign`, and verification in two steps — the headers (presence, shape,
//! timestamp tolerance) before a byte of the body is read, then the body. Never: puts
//! a secret, or any part of one, in an error or a log.

use std::time::Duration;

use base64::Engine;
use hmac::Mac;
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// More signatures than this in one header is refused outright: a legitimate sender
/// signs with a few keys at most, and each costs a comparison per secret.
pub const MAX_SIGNATURES: usize = 16;
/// Longest accepted `webhook-id`.
pub const MAX_ID_LEN: usize = 256;
/// The key length below which an ingest secret is refused (bytes).
pub const MIN_INGEST_KEY: usize = 16;

/// A Standard Webhooks secret, decoded: `whsec_` + base64 of the key bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
    prefixed: bool,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// Why a text is not a usable secret. Never carries any of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretError {
    Empty,
    NotBase64,
}

impl std::fmt::Display for SecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretError::Empty => f.write_str("secret is empty"),
            SecretError::NotBase64 => f.write_str("the part after \"whsec_\" is not valid base64"),
        }
    }
}

impl Secret {
    /// Reads `whsec_<base64>`; the prefix is optional, as in the reference libraries
    /// (`has_prefix` tells whether it was there).
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let (b64, prefixed) = match text.strip_prefix("whsec_") {
            Some(rest) => (rest, true),
            None => (text, false),
        };
        if b64.trim().is_empty() {
            return Err(SecretError::Empty);
        }
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| SecretError::NotBase64)?;
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Secret { key, prefixed })
    }

    /// The key length in bytes.
    pub fn key_len(&self) -> usize {
        self.key.len()
    }

    /// Whether the text started with `whsec_`.
    pub fn has_prefix(&self) -> bool {
        self.prefixed
    }

    fn mac(&self) -> Option<HmacSha256> {
        <HmacSha256 as Mac>::new_from_slice(&self.key).ok()
    }
}

/// The `webhook-signature` value for one message: `v1,<base64>`.
pub fn sign(secret: &Secret, id: &str, timestamp: i64, body: &[u8]) -> String {
    // An HMAC takes a key of any length: `mac()` cannot fail for a parsed secret.
    let Some(mut mac) = secret.mac() else {
        return String::new();
    };
    feed(&mut mac, id, &timestamp.to_string(), body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn feed(mac: &mut HmacSha256, id: &str, timestamp: &str, body: &[u8]) {
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
}

/// A timestamp outside the tolerance, with what the sender needs to fix its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    pub timestamp: i64,
    pub now: i64,
    pub tolerance_s: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    MissingHeader(&'static str),
    BadId,
    BadTimestamp,
    /// Older than `now - tolerance` (all Unix seconds).
    TooOld(Stale),
    /// Later than `now + tolerance`.
    TooNew(Stale),
    TooManySignatures,
    NoValidSignature,
}

impl VerifyError {
    /// A fixed label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            VerifyError::MissingHeader(_) | VerifyError::BadId | VerifyError::BadTimestamp => {
                "bad_headers"
            }
            VerifyError::TooOld(_) | VerifyError::TooNew(_) => "stale_timestamp",
            VerifyError::TooManySignatures | VerifyError::NoValidSignature => "bad_signature",
        }
    }
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::MissingHeader(h) => write!(f, "missing header {h}"),
            VerifyError::BadId => write!(f, "webhook-id is empty or too long"),
            VerifyError::BadTimestamp => {
                write!(f, "webhook-timestamp is not a Unix time in seconds")
            }
            VerifyError::TooOld(s) => write!(
                f,
                "webhook-timestamp {} is {} s behind this server's clock ({}, {}); the tolerance \
                 is {} s both ways: send the current Unix time in seconds, and check the \
                 sender's clock",
                s.timestamp,
                s.now.saturating_sub(s.timestamp),
                s.now,
                rfc3339(s.now),
                s.tolerance_s
            ),
            VerifyError::TooNew(s) => write!(
                f,
                "webhook-timestamp {} is {} s ahead of this server's clock ({}, {}); the \
                 tolerance is {} s both ways: send the current Unix time in seconds (not \
                 milliseconds), and check the sender's clock",
                s.timestamp,
                s.timestamp.saturating_sub(s.now),
                s.now,
                rfc3339(s.now),
                s.tolerance_s
            ),
            VerifyError::TooManySignatures => write!(
                f,
                "webhook-signature lists more than {MAX_SIGNATURES} signatures"
            ),
            VerifyError::NoValidSignature => write!(f, "no valid signature"),
        }
    }
}

fn rfc3339(unix_s: i64) -> String {
    chrono::DateTime::from_timestamp(unix_s, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Headers that passed the first step: well formed, timestamp within tolerance, at
/// least one `v1` signature of the right length. The body is still to be checked.
#[derive(Debug, Clone)]
pub struct SignedHeaders {
    id: String,
    timestamp: String,
    candidates: Vec<[u8; 32]>,
}

impl SignedHeaders {
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Verifies requests against every configured secret (several = key rotation).
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<HmacSha256>,
    tolerance: Duration,
}

impl Verifier {
    pub fn new(secrets: &[Secret], tolerance: Duration) -> Verifier {
        let keys = secrets.iter().filter_map(Secret::mac).collect();
        Verifier { keys, tolerance }
    }

    /// Step one, before the body is read: the headers are present and well formed,
    /// and the timestamp is within tolerance of `now` (Unix seconds), both ways.
    pub fn check_headers(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        now: i64,
    ) -> Result<SignedHeaders, VerifyError> {
        let id = id.ok_or(VerifyError::MissingHeader("webhook-id"))?;
        let ts_text = timestamp.ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
        let sig_header = signature.ok_or(VerifyError::MissingHeader("webhook-signature"))?;
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(VerifyError::BadId);
        }
        if ts_text.is_empty() || ts_text.len() > 12 || !ts_text.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(VerifyError::BadTimestamp);
        }
        let ts: i64 = ts_text.parse().map_err(|_| VerifyError::BadTimestamp)?;
        let tol = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        let stale = Stale {
            timestamp: ts,
            now,
            tolerance_s: tol,
        };
        if ts < now.saturating_sub(tol) {
            return Err(VerifyError::TooOld(stale));
        }
        if ts > now.saturating_add(tol) {
            return Err(VerifyError::TooNew(stale));
        }
        let candidates = candidates(sig_header)?;
        Ok(SignedHeaders {
            id: id.to_string(),
            timestamp: ts_text.to_string(),
            candidates,
        })
    }

    /// Step two: one of the signatures is the HMAC of the body under one secret.
    pub fn verify_body(&self, headers: &SignedHeaders, body: &[u8]) -> Result<(), VerifyError> {
        for key in &self.keys {
            let mut mac = key.clone();
            feed(&mut mac, &headers.id, &headers.timestamp, body);
            let expected = mac.finalize().into_bytes();
            for c in &headers.candidates {
                // constant-time comparison
                if subtle::ConstantTimeEq::ct_eq(expected.as_slice(), c.as_slice()).into() {
                    return Ok(());
                }
            }
        }
        Err(VerifyError::NoValidSignature)
    }

    /// Both steps at once.
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let headers = self.check_headers(id, timestamp, signature, now)?;
        self.verify_body(&headers, body)
    }
}

/// The `v1` signatures of exactly 32 bytes in a `webhook-signature` header.
fn candidates(header: &str) -> Result<Vec<[u8; 32]>, VerifyError> {
    let sigs: Vec<&str> = header.split_ascii_whitespace().collect();
    if sigs.len() > MAX_SIGNATURES {
        return Err(VerifyError::TooManySignatures);
    }
    let mut out: Vec<[u8; 32]> = Vec::with_capacity(sigs.len());
    for s in sigs {
        let Some(b64) = s.strip_prefix("v1,") else {
            continue;
        };
        if b64.len() != 44 {
            continue;
        }
        let mut buf = [0u8; 33];
        if let Ok(32) = base64::engine::general_purpose::STANDARD.decode_slice(b64, &mut buf) {
            let mut sig = [0u8; 32];
            sig.copy_from_slice(&buf[..32]);
            out.push(sig);
        }
    }
    if out.is_empty() {
        return Err(VerifyError::NoValidSignature);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example in the Standard Webhooks specification (spec/standard-webhooks.md,
    // "Signature scheme"), also used by its reference libraries' tests.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret() -> Secret {
        Secret::parse(SPEC_SECRET).expect("valid secret")
    }

    fn verifier() -> Verifier {
        Verifier::new(&[secret()], Duration::from_secs(300))
    }

    fn check(sig: &str, ts: i64, now: i64) -> Result<(), VerifyError> {
        verifier().verify(
            Some(SPEC_ID),
            Some(&ts.to_string()),
            Some(sig),
            SPEC_BODY.as_bytes(),
            now,
        )
    }

    #[test]
    fn the_specification_example_verifies_and_signs() {
        assert_eq!(check(SPEC_SIG, SPEC_TS, SPEC_TS), Ok(()));
        assert_eq!(
            sign(&secret(), SPEC_ID, SPEC_TS, SPEC_BODY.as_bytes()),
            SPEC_SIG
        );
    }

    #[test]
    fn secrets_parse_with_or_without_prefix_and_errors_never_repeat_them() {
        assert_eq!(secret().key_len(), 24);
        assert!(secret().has_prefix());
        let bare = Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("bare");
        assert!(!bare.has_prefix());
        assert_eq!(sign(&bare, "a", 1, b"b"), sign(&secret(), "a", 1, b"b"));
        assert_eq!(Secret::parse("whsec_"), Err(SecretError::Empty));
        assert_eq!(Secret::parse(""), Err(SecretError::Empty));
        let e = Secret::parse("whsec_hunter2!!").unwrap_err();
        assert_eq!(e, SecretError::NotBase64);
        let text = e.to_string();
        assert!(!text.contains("hunter") && !text.contains('!'), "{text}");
        assert!(!format!("{:?}", secret()).contains("MfKQ"));
    }

    #[test]
    fn several_signatures_and_rotated_keys() {
        let other = Secret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").expect("valid");
        let v = Verifier::new(&[other, secret()], Duration::from_secs(300));
        let header = format!("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= v2,xyz {SPEC_SIG}");
        assert_eq!(
            v.verify(
                Some(SPEC_ID),
                Some(&SPEC_TS.to_string()),
                Some(&header),
                SPEC_BODY.as_bytes(),
                SPEC_TS
            ),
            Ok(())
        );
    }

    #[test]
    fn signatures_that_must_fail() {
        let now = SPEC_TS;
        assert_eq!(check("v1,", now, now), Err(VerifyError::NoValidSignature));
        assert_eq!(
            check("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE", now, now),
            Err(VerifyError::NoValidSignature)
        );
        assert_eq!(
            check(&SPEC_SIG.replace("v1,", "v2,"), now, now),
            Err(VerifyError::NoValidSignature)
        );
        assert_eq!(
            check(&SPEC_SIG.replace("g0h", "g1h"), now, now),
            Err(VerifyError::NoValidSignature)
        );
        let thousand = vec![SPEC_SIG; 1000].join(" ");
        assert_eq!(
            check(&thousand, now, now),
            Err(VerifyError::TooManySignatures)
        );
        assert_eq!(
            verifier().verify(
                Some(SPEC_ID),
                Some(&now.to_string()),
                Some(SPEC_SIG),
                b"{\"test\": 1}",
                now
            ),
            Err(VerifyError::NoValidSignature)
        );
    }

    #[test]
    fn headers_are_judged_without_the_body() {
        let v = verifier();
        let ts = SPEC_TS.to_string();
        assert_eq!(
            v.check_headers(None, Some(&ts), Some(SPEC_SIG), SPEC_TS)
                .unwrap_err(),
            VerifyError::MissingHeader("webhook-id")
        );
        assert_eq!(
            v.check_headers(Some(SPEC_ID), None, Some(SPEC_SIG), SPEC_TS)
                .unwrap_err(),
            VerifyError::MissingHeader("webhook-timestamp")
        );
        assert_eq!(
            v.check_headers(Some(SPEC_ID), Some(&ts), None, SPEC_TS)
                .unwrap_err(),
            VerifyError::MissingHeader("webhook-signature")
        );
        assert_eq!(
            v.check_headers(Some(SPEC_ID), Some("-5"), Some(SPEC_SIG), SPEC_TS)
                .unwrap_err(),
            VerifyError::BadTimestamp
        );
        assert_eq!(
            v.check_headers(Some(SPEC_ID), Some(&ts), Some(SPEC_SIG), SPEC_TS + 301)
                .unwrap_err(),
            VerifyError::TooOld(Stale {
                timestamp: SPEC_TS,
                now: SPEC_TS + 301,
                tolerance_s: 300
            })
        );
        let h = v
            .check_headers(Some(SPEC_ID), Some(&ts), Some(SPEC_SIG), SPEC_TS)
            .expect("headers fine");
        assert_eq!(h.id(), SPEC_ID);
        assert_eq!(v.verify_body(&h, SPEC_BODY.as_bytes()), Ok(()));
    }

    #[test]
    fn tolerance_holds_both_ways() {
        let v = verifier();
        let body = SPEC_BODY.as_bytes();
        let now = 1_790_000_000;
        for (ts, want) in [
            (now - 301, Err("too old")),
            (now + 301, Err("too new")),
            (now - 300, Ok(())),
            (now + 300, Ok(())),
        ] {
            let sig = sign(&secret(), SPEC_ID, ts, body);
            let got = v
                .verify(Some(SPEC_ID), Some(&ts.to_string()), Some(&sig), body, now)
                .map_err(|e| match e {
                    VerifyError::TooOld(_) => "too old",
                    VerifyError::TooNew(_) => "too new",
                    _ => "other",
                });
            assert_eq!(got, want, "ts offset {}", ts - now);
        }
    }

    #[test]
    fn a_stale_timestamp_names_the_tolerance_and_the_server_time_not_secrets() {
        let stale = Stale {
            timestamp: 1_764_064_800,
            now: 1_764_068_400,
            tolerance_s: 300,
        };
        assert_eq!(
            VerifyError::TooOld(stale).to_string(),
            "webhook-timestamp 1764064800 is 3600 s behind this server's clock (1764068400, \
             2025-11-25T11:00:00Z); the tolerance is 300 s both ways: send the current Unix \
             time in seconds, and check the sender's clock"
        );
        let ms = Stale {
            timestamp: 1_764_068_400_000,
            ..stale
        };
        let text = VerifyError::TooNew(ms).to_string();
        assert!(text.contains("ahead of this server's clock") && text.contains("not milliseconds"));
        assert!(!text.contains("secret"));
    }
}
