//! The Standard Webhooks headers and signature check, from arbitrary bytes: the
//! input is split at newlines into webhook-id, webhook-timestamp, webhook-signature
//! and the body. Nothing may panic; a valid signature is only ever found for the
//! real body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postback_relay::webhooks::{sign, Secret, Verifier};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NOW: i64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = Secret::parse(&text);
    let mut parts = text.splitn(4, '\n');
    let id = parts.next();
    let ts = parts.next();
    let sig = parts.next();
    let body = parts.next().unwrap_or("").as_bytes();
    let secret = Secret::parse(SECRET).expect("the test secret parses");
    let verifier = Verifier::new(
        std::slice::from_ref(&secret),
        std::time::Duration::from_secs(300),
    );
    if let Ok(headers) = verifier.check_headers(id, ts, sig, NOW) {
        let _ = verifier.verify_body(&headers, body);
        // What we sign ourselves always verifies, whatever the id and timestamp text.
        if let (Some(id), Some(ts)) = (id, ts.and_then(|t| t.parse::<i64>().ok())) {
            let good = sign(&secret, id, ts, body);
            let headers = verifier
                .check_headers(Some(id), Some(&ts.to_string()), Some(&good), NOW)
                .expect("our own signature header is well formed");
            assert!(verifier.verify_body(&headers, body).is_ok());
        }
    }
});
