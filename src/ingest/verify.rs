//! Standard Webhooks verification: `webhook-id`, `webhook-timestamp`,
//! `webhook-signature` = space-separated `v1,<base64 HMAC-SHA256("{id}.{ts}.{body}")>`.
//!
//! Owns: the signature check (every configured secret, so keys can rotate; constant
//! time) and the timestamp tolerance, both ways. Never: parses the body.

use std::time::Duration;

use base64::Engine;
use hmac::Mac;
use sha2::Sha256;

use crate::config::WebhookSecret;

type HmacSha256 = hmac::Hmac<Sha256>;

/// More signatures than this in one header is refused outright: a legitimate sender
/// signs with a few keys at most, and each costs a comparison per secret.
pub const MAX_SIGNATURES: usize = 16;
/// Longest accepted `webhook-id`.
pub const MAX_ID_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    MissingHeader(&'static str),
    BadId,
    BadTimestamp,
    TooOld,
    TooNew,
    TooManySignatures,
    NoValidSignature,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::MissingHeader(h) => write!(f, "missing header {h}"),
            VerifyError::BadId => write!(f, "webhook-id is empty or too long"),
            VerifyError::BadTimestamp => {
                write!(f, "webhook-timestamp is not a Unix time in seconds")
            }
            VerifyError::TooOld => write!(f, "webhook-timestamp is too old (outside tolerance)"),
            VerifyError::TooNew => {
                write!(
                    f,
                    "webhook-timestamp is too far in the future (outside tolerance)"
                )
            }
            VerifyError::TooManySignatures => write!(
                f,
                "webhook-signature lists more than {MAX_SIGNATURES} signatures"
            ),
            VerifyError::NoValidSignature => write!(f, "no valid signature"),
        }
    }
}

/// Verifies requests against every configured secret.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<HmacSha256>,
    tolerance: Duration,
}

impl Verifier {
    pub fn new(secrets: &[WebhookSecret], tolerance: Duration) -> Verifier {
        let keys = secrets
            .iter()
            .filter_map(|s| <HmacSha256 as Mac>::new_from_slice(&s.key).ok())
            .collect();
        Verifier { keys, tolerance }
    }

    /// Checks headers and body; `now` is Unix seconds.
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
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
        let tol = self.tolerance.as_secs() as i64;
        if ts < now - tol {
            return Err(VerifyError::TooOld);
        }
        if ts > now + tol {
            return Err(VerifyError::TooNew);
        }
        let sigs: Vec<&str> = sig_header.split_ascii_whitespace().collect();
        if sigs.len() > MAX_SIGNATURES {
            return Err(VerifyError::TooManySignatures);
        }
        // Decode the candidate signatures first: only `v1,` with exactly 32 bytes counts.
        let mut candidates: Vec<[u8; 32]> = Vec::with_capacity(sigs.len());
        for s in sigs {
            let Some(b64) = s.strip_prefix("v1,") else {
                continue;
            };
            if b64.len() != 44 {
                continue;
            }
            let mut out = [0u8; 33];
            if let Ok(32) = base64::engine::general_purpose::STANDARD.decode_slice(b64, &mut out) {
                let mut sig = [0u8; 32];
                sig.copy_from_slice(&out[..32]);
                candidates.push(sig);
            }
        }
        if candidates.is_empty() {
            return Err(VerifyError::NoValidSignature);
        }
        for key in &self.keys {
            let mut mac = key.clone();
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(ts_text.as_bytes());
            mac.update(b".");
            mac.update(body);
            let expected = mac.finalize().into_bytes();
            for c in &candidates {
                // constant-time comparison
                if subtle::ConstantTimeEq::ct_eq(expected.as_slice(), c.as_slice()).into() {
                    return Ok(());
                }
            }
        }
        Err(VerifyError::NoValidSignature)
    }
}

/// Signs like a Standard Webhooks sender: returns the `webhook-signature` value.
pub fn sign(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = <HmacSha256 as Mac>::new_from_slice(&secret.key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
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

    fn verifier() -> Verifier {
        let s = WebhookSecret::parse(SPEC_SECRET).expect("valid secret");
        Verifier::new(&[s], Duration::from_secs(300))
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
    fn the_specification_example_verifies() {
        assert_eq!(check(SPEC_SIG, SPEC_TS, SPEC_TS), Ok(()));
        let s = WebhookSecret::parse(SPEC_SECRET).expect("valid");
        assert_eq!(sign(&s, SPEC_ID, SPEC_TS, SPEC_BODY.as_bytes()), SPEC_SIG);
    }

    #[test]
    fn several_signatures_and_rotated_keys() {
        let other = WebhookSecret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").expect("valid");
        let spec = WebhookSecret::parse(SPEC_SECRET).expect("valid");
        let v = Verifier::new(&[other, spec], Duration::from_secs(300));
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
            check(
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=AAAA",
                now,
                now
            ),
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
        // body tampered
        let v = verifier();
        assert_eq!(
            v.verify(
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
    fn missing_headers_are_named() {
        let v = verifier();
        let ts = SPEC_TS.to_string();
        let b = SPEC_BODY.as_bytes();
        assert_eq!(
            v.verify(None, Some(&ts), Some(SPEC_SIG), b, SPEC_TS),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            v.verify(Some(SPEC_ID), None, Some(SPEC_SIG), b, SPEC_TS),
            Err(VerifyError::MissingHeader("webhook-timestamp"))
        );
        assert_eq!(
            v.verify(Some(SPEC_ID), Some(&ts), None, b, SPEC_TS),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
        assert_eq!(
            v.verify(Some(SPEC_ID), Some("-5"), Some(SPEC_SIG), b, SPEC_TS),
            Err(VerifyError::BadTimestamp)
        );
    }

    #[test]
    fn tolerance_holds_both_ways() {
        let s = WebhookSecret::parse(SPEC_SECRET).expect("valid");
        let v = verifier();
        let body = SPEC_BODY.as_bytes();
        let now = 1_790_000_000;
        for (ts, want) in [
            (now - 301, Err(VerifyError::TooOld)),
            (now + 301, Err(VerifyError::TooNew)),
            (now - 300, Ok(())),
            (now + 300, Ok(())),
        ] {
            let sig = sign(&s, SPEC_ID, ts, body);
            assert_eq!(
                v.verify(Some(SPEC_ID), Some(&ts.to_string()), Some(&sig), body, now),
                want,
                "ts offset {}",
                ts - now
            );
        }
    }
}
