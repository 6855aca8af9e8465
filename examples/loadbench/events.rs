//! Pre-generated, uniquely signed requests for `POST /v1/events`.
//!
//! Every event has its own `event_id` and `click_id`, and every request its own
//! `webhook-id`, so neither dedupe nor the webhook-id check is a shortcut. Requests are
//! whole HTTP/1.1 messages (head and body) ready to write to a socket, signed per
//! Standard Webhooks with a timestamp taken when the pool is made (so a pool must be
//! used within the relay's 5 minute tolerance: the bench makes one per shape).

use std::sync::Arc;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The bench config's ingest secret ("whsec_" + base64 of the key bytes).
pub const SECRET: &str = "whsec_cG9zdGJhY2stcmVsYXktbG9hZGJlbmNoLXNlY3JldCEh";

/// The network the bench rules' `[when]` requires.
pub const NETWORK: &str = "bench-net";

/// A pool of ready-to-send requests.
pub struct Pool {
    pub requests: Vec<bytes::Bytes>,
    /// Total bytes of the pool (heads and bodies).
    pub bytes: usize,
}

fn key() -> Result<Vec<u8>, String> {
    let b64 = SECRET
        .strip_prefix("whsec_")
        .ok_or("the bench secret lacks whsec_")?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the bench secret is not base64: {e}"))
}

/// One event, about 600 bytes of JSON like examples/purchase.json, unique by `n`.
pub fn event(run: &str, n: u64, iso: &str) -> String {
    format!(
        concat!(
            r#"{{"event_id":"evt_{run}_{n}","event_name":"purchase","click_id":"clk_{run}_{n}","#,
            r#""timestamp":"{iso}","attribution":{{"network":"{net}","campaign":"spring-sale","adgroup":"ag-{ag}"}},"#,
            r#""user":{{"email":"Person.{n}@Example.com","phone":"+1 555 {ph:04}","ip":"203.0.113.{ip}","#,
            r#""user_agent":"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15","external_id":"u{n}"}},"#,
            r#""device":{{"idfa":"6D92078A-8246-4BA4-AE5B-{n:012X}","os":"ios","att_status":"authorized"}},"#,
            r#""consent":{{"ad_user_data":true,"ad_personalization":false,"gpc":false}},"#,
            r#""properties":{{"value":9.99,"currency":"USD","order_id":"o-{run}-{n}"}}}}"#
        ),
        run = run,
        n = n,
        iso = iso,
        net = NETWORK,
        ag = n % 50,
        ph = n % 10_000,
        ip = n % 250 + 1,
    )
}

/// A whole HTTP/1.1 request for `body`, signed now-ish (`ts`, Unix seconds).
fn request(mac: &Hmac<Sha256>, id: &str, ts: i64, body: &str) -> bytes::Bytes {
    let mut m = mac.clone();
    m.update(id.as_bytes());
    m.update(b".");
    m.update(ts.to_string().as_bytes());
    m.update(b".");
    m.update(body.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nwebhook-id: {id}\r\nwebhook-timestamp: {ts}\r\n\
         webhook-signature: v1,{sig}\r\n\r\n",
        body.len()
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body.as_bytes());
    out.into()
}

/// `count` requests of `per_request` events each (a single object when 1, else a JSON
/// array), events numbered from `first_event`; the last request may hold fewer events
/// when `total_events` is set. Built on all cores (`threads`).
pub fn pool(
    run: &str,
    count: usize,
    per_request: u64,
    total_events: Option<u64>,
    threads: usize,
) -> Result<Pool, String> {
    let key = key()?;
    let mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| format!("hmac key: {e}"))?;
    let now = chrono::Utc::now();
    let ts = now.timestamp();
    let iso = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let threads = threads.max(1);
    let chunk = count.div_ceil(threads).max(1);
    let run: Arc<str> = run.into();
    let mut handles = Vec::new();
    for t in 0..threads {
        let (from, to) = (t * chunk, ((t + 1) * chunk).min(count));
        if from >= to {
            break;
        }
        let (mac, run, iso) = (mac.clone(), run.clone(), iso.clone());
        handles.push(std::thread::spawn(move || {
            let mut out = Vec::with_capacity(to - from);
            let mut body = String::new();
            for r in from..to {
                let first = r as u64 * per_request;
                let last = match total_events {
                    Some(t) => (first + per_request).min(t),
                    None => first + per_request,
                };
                body.clear();
                if per_request == 1 {
                    body.push_str(&event(&run, first, &iso));
                } else {
                    body.push('[');
                    for n in first..last {
                        if n > first {
                            body.push(',');
                        }
                        body.push_str(&event(&run, n, &iso));
                    }
                    body.push(']');
                }
                out.push(request(&mac, &format!("msg_{run}_{r}"), ts, &body));
            }
            out
        }));
    }
    let mut requests = Vec::with_capacity(count);
    for h in handles {
        requests.extend(h.join().map_err(|_| "a pool thread panicked".to_string())?);
    }
    let bytes = requests.iter().map(|r| r.len()).sum();
    Ok(Pool { requests, bytes })
}

/// The byte size of one request of `per_request` events (for sizing pools).
pub fn request_size(per_request: u64) -> usize {
    let iso = "2026-01-01T00:00:00Z";
    let body: usize = (0..per_request)
        .map(|n| event("r0000000", 1_000_000 + n, iso).len() + 1)
        .sum();
    body + 260
}
