//! Sending one postback: the shared HTTP client, address checks and signing.
//!
//! Owns: the one `reqwest::Client` (rustls, keep-alive, HTTP/2 by ALPN, no redirects,
//! no proxies), the resolver that refuses non-public addresses at connect time (so a
//! name that re-resolves to a private address, DNS rebinding, is caught where it is
//! used), the same check for URLs whose host is an IP literal, Standard Webhooks
//! signing, and turning what happened into a `policy::Attempt`. Never: decides about
//! retries, touches the store, or puts request URLs, headers or bodies in errors or
//! logs (they can hold personal data and partner secrets).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::policy::{self, Attempt};
use crate::outbound::{Method, OutboundRequest};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// `User-Agent` of every postback.
pub const USER_AGENT: &str = concat!("postback-relay/", env!("CARGO_PKG_VERSION"));
/// How much of a response body is kept in memory for the destination's success rule.
/// Never stored or logged: partners echo click IDs and URL tokens in their answers.
pub const BODY_KEPT: usize = 16 * 1024;
/// How much of a response body is read at most (to reuse the connection); the rest is
/// dropped with the connection.
pub const BODY_READ_MAX: usize = 64 * 1024;
/// Most of an answer kept for a request carrying a batch (per-row results of 2,000
/// events).
pub const BATCH_BODY_KEPT: usize = 1024 * 1024;

/// How much of the answer to keep for a request carrying `events` events.
pub fn answer_cap(events: usize) -> usize {
    if events > 1 {
        BATCH_BODY_KEPT
    } else {
        BODY_KEPT
    }
}

/// One request to send.
pub struct Outgoing<'a> {
    /// `webhook-id`: the delivery's stable ID (or a batch's).
    pub id: &'a str,
    /// With credentials attached.
    pub request: &'a OutboundRequest,
    pub timeout: Duration,
    pub signer: Option<&'a SigningKey>,
    /// Most of the answer kept for judging (`answer_cap`).
    pub keep: usize,
}
/// Left as they are in a form value (RFC 3986 unreserved).
const FORM: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Longest `last_error` text.
pub const ERROR_MAX: usize = 1024;

/// Why an address is not a public unicast address, or `None` when it is.
///
/// Covers loopback, RFC 1918 private, CGNAT, link-local, multicast, unspecified,
/// broadcast and reserved, documentation and benchmarking ranges, IETF protocol
/// assignments, unique-local and site-local IPv6, and IPv6 forms that embed an IPv4
/// address (mapped, compatible, NAT64, 6to4, Teredo), judged by what they embed.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let reason = match (a, b, c) {
        (0, _, _) => "unspecified (0.0.0.0/8)",
        (10, _, _) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "shared CGNAT (100.64.0.0/10)",
        (127, _, _) => "loopback",
        (169, 254, _) => "link-local",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 88, 99) => "6to4 relay anycast",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    };
    Some(reason)
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4).map(|_| "IPv4-mapped non-public address");
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    let reason = match s {
        // ::a.b.c.d, IPv4-compatible (deprecated since 2006): never a real destination.
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible (deprecated)",
        // ::ffff:0:a.b.c.d, SIIT IPv4-translated (RFC 2765): judged by what it embeds.
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => {
            return non_public_v4(embedded(hi, lo))
                .map(|_| "IPv4-translated (SIIT) non-public address")
        }
        // NAT64 well-known prefix: as public as the IPv4 address it embeds.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => {
            return non_public_v4(embedded(hi, lo)).map(|_| "NAT64 of a non-public address")
        }
        [0x64, 0xff9b, 1, ..] => "NAT64 local-use (64:ff9b:1::/48)",
        [0x100, 0, 0, 0, ..] => "discard-only (100::/64)",
        [0x2001, 0, ..] => "Teredo (2001::/32)",
        [0x2001, 2, 0, ..] => "benchmarking (2001:2::/48)",
        [0x2001, 0xdb8, ..] => "documentation (2001:db8::/32)",
        [0x2002, hi, lo, ..] => {
            return non_public_v4(embedded(hi, lo)).map(|_| "6to4 of a non-public address")
        }
        [0x3fff, x, ..] if x & 0xf000 == 0 => "documentation (3fff::/20)",
        [x, ..] if x & 0xfe00 == 0xfc00 => "unique-local (fc00::/7)",
        [x, ..] if x & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        [x, ..] if x & 0xffc0 == 0xfec0 => "site-local (fec0::/10, deprecated)",
        [x, ..] if x & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    };
    Some(reason)
}

/// The resolver's refusal, found again in the error chain to tell it from other
/// connection errors.
#[derive(Debug)]
pub struct BlockedAddress {
    pub addr: IpAddr,
    pub reason: &'static str,
}

impl std::fmt::Display for BlockedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refused: partner address {} is {} (allow_private_networks is false)",
            self.addr, self.reason
        )
    }
}

impl std::error::Error for BlockedAddress {}

/// Resolves with tokio and refuses the whole name when any of its addresses is not
/// public: one private address in the answer is enough for a connection to land there.
#[derive(Debug, Clone, Copy)]
struct PublicOnlyResolver {
    allow_private_networks: bool,
}

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private_networks;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allow {
                for addr in &addrs {
                    if let Some(reason) = non_public_reason(addr.ip()) {
                        return Err(Box::new(BlockedAddress {
                            addr: addr.ip(),
                            reason,
                        })
                            as Box<dyn std::error::Error + Send + Sync>);
                    }
                }
            }
            if addrs.is_empty() {
                return Err("name resolved to no address".into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A Standard Webhooks signing key (`whsec_` + base64 of the key bytes); the protocol
/// is `crate::webhooks`.
#[derive(Clone)]
pub struct SigningKey(crate::webhooks::Secret);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// Reads `whsec_<base64>` (the prefix is optional, as in the reference libraries).
    /// The error never repeats the secret.
    pub fn from_secret(secret: &str) -> Result<Self, String> {
        crate::webhooks::Secret::parse(secret)
            .map(SigningKey)
            .map_err(|e| format!("sign_secret is not usable: {e} (whsec_ + base64)"))
    }

    /// `v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        crate::webhooks::sign(&self.0, id, timestamp, body)
    }
}

/// One attempt's result: the outcome and, for failures, the text kept as `last_error`
/// (truncated, no request data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub attempt: Attempt,
    pub error: Option<String>,
    /// The start of the partner's answer (at most `BODY_KEPT`), for the success rule.
    pub body: String,
}

impl Sent {
    /// An attempt that got no answer (or was never made), with its error text.
    pub fn failed(attempt: Attempt) -> Sent {
        let error = match &attempt {
            Attempt::Timeout => "timed out".to_string(),
            Attempt::Connect(e) => format!("connection failed: {e}"),
            Attempt::Refused(e) | Attempt::Invalid(e) | Attempt::Credential(e) => e.clone(),
            Attempt::Response { status, .. } => status_reason(*status),
        };
        Sent {
            attempt,
            error: Some(truncate(&error, ERROR_MAX)),
            body: String::new(),
        }
    }
}

/// The client every destination shares (connection pools are per host inside it).
#[derive(Clone)]
pub struct PostbackClient {
    http: reqwest::Client,
    allow_private_networks: bool,
}

impl std::fmt::Debug for PostbackClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostbackClient")
            .field("allow_private_networks", &self.allow_private_networks)
            .finish()
    }
}

impl PostbackClient {
    pub fn new(allow_private_networks: bool) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(PublicOnlyResolver {
                allow_private_networks,
            }))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(PostbackClient {
            http,
            allow_private_networks,
        })
    }

    /// Sends `out.request` once, with `webhook-id: <out.id>`, `Authorization: Bearer
    /// <bearer>` when given (replacing any stored Authorization header: credentials
    /// that renew never reach the queue) and, with a key, the Standard Webhooks
    /// signature headers.
    pub async fn send(&self, out: &Outgoing<'_>, bearer: Option<&str>) -> Sent {
        let request = match self.build(out, bearer) {
            Ok(r) => r,
            Err(attempt) => return Sent::failed(attempt),
        };
        let mut response = match self.http.execute(request).await {
            Ok(r) => r,
            Err(e) => return Sent::failed(attempt_from_error(e)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| policy::parse_retry_after(v, SystemTime::now()));
        // Read (capped) so the connection can be reused. The start of it is judged by
        // the success rule, then dropped: it is never stored or logged.
        let body = read_capped(&mut response, out.keep).await;
        let attempt = Attempt::Response {
            status,
            retry_after,
        };
        let error = (!(200..300).contains(&status)).then(|| status_reason(status));
        Sent {
            attempt,
            error,
            body,
        }
    }

    /// POSTs a form to `url` (an OAuth token endpoint) under the same address rules
    /// as postbacks; the status and the start of the answer. Errors never hold the
    /// form (it carries secrets).
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(u16, String), Attempt> {
        let url = self.checked_url(url)?;
        let body: Vec<String> = form
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    percent_encoding::utf8_percent_encode(k, FORM),
                    percent_encoding::utf8_percent_encode(v, FORM)
                )
            })
            .collect();
        let request = self
            .http
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body.join("&"))
            .timeout(timeout);
        let mut response = request.send().await.map_err(attempt_from_error)?;
        let status = response.status().as_u16();
        Ok((status, read_capped(&mut response, BODY_KEPT).await))
    }

    /// GETs `url` (a partner's status endpoint) under the same address rules as
    /// postbacks, with `Authorization: Bearer <bearer>` when given; the status and the
    /// start of the answer (at most `BODY_KEPT`).
    pub async fn get(
        &self,
        url: &str,
        bearer: Option<&str>,
        timeout: Duration,
    ) -> Result<(u16, String), Attempt> {
        let url = self.checked_url(url)?;
        let mut request = self.http.get(url).timeout(timeout);
        if let Some(token) = bearer {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Attempt::Invalid("the access token is not a header value".into()))?;
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let mut response = request.send().await.map_err(attempt_from_error)?;
        let status = response.status().as_u16();
        Ok((status, read_capped(&mut response, BODY_KEPT).await))
    }

    /// A partner URL that parses, is http(s), and (unless private networks are
    /// allowed) does not name a non-public IP literal.
    fn checked_url(&self, raw: &str) -> Result<reqwest::Url, Attempt> {
        let url = reqwest::Url::parse(raw)
            .map_err(|e| Attempt::Invalid(format!("partner URL does not parse: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Attempt::Invalid(format!(
                "partner URL scheme {:?} is not http or https",
                url.scheme()
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| Attempt::Invalid("partner URL has no host".into()))?;
        // IP literals never reach the resolver: check them here.
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            if !self.allow_private_networks {
                if let Some(reason) = non_public_reason(ip) {
                    return Err(Attempt::Refused(
                        BlockedAddress { addr: ip, reason }.to_string(),
                    ));
                }
            }
        }
        Ok(url)
    }

    fn build(&self, o: &Outgoing<'_>, bearer: Option<&str>) -> Result<reqwest::Request, Attempt> {
        let out = o.request;
        let url = self.checked_url(&out.url)?;

        let mut headers = HeaderMap::with_capacity(out.headers.len() + 4);
        for (i, (name, value)) in out.headers.iter().enumerate() {
            // Values can be secrets: name only the position in the error.
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Attempt::Invalid(format!("header #{} has an invalid name", i + 1)))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| Attempt::Invalid(format!("header {name} has an invalid value")))?;
            headers.append(name, value);
        }
        if let Some(token) = bearer {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Attempt::Invalid("the access token is not a header value".into()))?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let id = HeaderValue::from_str(o.id)
            .map_err(|_| Attempt::Invalid("delivery id is not a valid header value".into()))?;
        headers.insert("webhook-id", id);
        let body = out.body.clone().unwrap_or_default();
        if let Some(key) = o.signer {
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let signature = key.sign(o.id, timestamp, body.as_bytes());
            headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
            let signature = HeaderValue::from_str(&signature)
                .map_err(|_| Attempt::Invalid("signature is not a header value".into()))?;
            headers.insert("webhook-signature", signature);
        }

        let method = match out.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
        };
        let mut builder = self
            .http
            .request(method, url)
            .headers(headers)
            .timeout(o.timeout);
        if out.body.is_some() {
            builder = builder.body(body);
        }
        builder
            .build()
            .map_err(|e| Attempt::Invalid(error_chain(&e.without_url())))
    }
}

fn attempt_from_error(e: reqwest::Error) -> Attempt {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(blocked) = err.downcast_ref::<BlockedAddress>() {
            return Attempt::Refused(blocked.to_string());
        }
        source = err.source();
    }
    if e.is_timeout() {
        return Attempt::Timeout;
    }
    // Without the URL: reqwest puts it in its message, and it can hold personal data.
    Attempt::Connect(error_chain(&e.without_url()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(err) = source {
        parts.push(err.to_string());
        source = err.source();
    }
    parts.join(": ")
}

/// Reads up to `BODY_READ_MAX` bytes of the answer (or `keep`, if more); keeps the
/// first `keep`.
async fn read_capped(response: &mut reqwest::Response, keep: usize) -> String {
    let mut kept = Vec::new();
    let mut read = 0usize;
    while read < BODY_READ_MAX.max(keep) {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                read += chunk.len();
                let room = keep.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&kept);
    truncate(text.trim(), keep)
}

/// What is kept of a failed answer: its status and the status's standard reason
/// (`HTTP 400 Bad Request`), never the partner's body.
pub fn status_reason(status: u16) -> String {
    match reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("HTTP {status} {reason}"),
        None => format!("HTTP {status}"),
    }
}

/// At most `max` bytes of `s`, cut on a character boundary, control characters shown
/// as spaces (a body is shown in a terminal and in logs).
pub fn truncate(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max + 3));
    for ch in s.chars() {
        if out.len() + ch.len_utf8() > max {
            out.push('…');
            break;
        }
        out.push(if ch.is_control() { ' ' } else { ch });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Delivery;

    impl PostbackClient {
        /// One delivery as it is stored, sent alone.
        async fn send_delivery(
            &self,
            d: &Delivery,
            timeout: Duration,
            signer: Option<&SigningKey>,
        ) -> Sent {
            let out = Outgoing {
                id: &d.id,
                request: &d.request,
                timeout,
                signer,
                keep: BODY_KEPT,
            };
            self.send(&out, None).await
        }
    }
    use crate::fake_partner::{FakePartner, Reply};
    use crate::store::memory::delivery;
    use base64::Engine;
    use hmac::Mac;
    use sha2::Sha256;

    #[test]
    fn address_classifier_table() {
        let non_public = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254", // cloud metadata
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.7",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0:169.254.169.254", // SIIT IPv4-translated
            "::ffff:0:10.0.0.1",
            "::ffff:0:127.0.0.1",
            "::127.0.0.1",
            "::8.8.8.8", // IPv4-compatible: deprecated, refused whatever it embeds
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:2::1",
            "2001:db8::1",
            "2002:a00:1::1",  // 6to4 of 10.0.0.1
            "2002:7f00:1::1", // 6to4 of 127.0.0.1
            "3fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
        ];
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "::ffff:0:8.8.8.8",
            "64:ff9b::808:808", // NAT64 of 8.8.8.8
            "2002:808:808::1",  // 6to4 of 8.8.8.8
            "3fff:1000::1",     // just past 3fff::/20
        ];
        for a in non_public {
            let ip: IpAddr = a.parse().unwrap();
            assert!(non_public_reason(ip).is_some(), "{a} should be refused");
        }
        for a in public {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(non_public_reason(ip), None, "{a} should be allowed");
        }
    }

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // From the Standard Webhooks specification's test vectors.
        let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let err = SigningKey::from_secret("whsec_not base64!").unwrap_err();
        assert!(
            !err.contains("not base64"),
            "error repeats the secret: {err}"
        );
    }

    #[test]
    fn truncation_keeps_whole_characters_and_hides_control_characters() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("a\nb\x1b", 10), "a b ");
        assert_eq!(truncate("ééé", 5), "éé…");
    }

    #[tokio::test]
    async fn loopback_literal_is_refused_unless_private_networks_are_allowed() {
        let partner = FakePartner::start().await.unwrap();
        let d = delivery("d1", "p", &partner.url("/pb?click=abc"));

        let strict = PostbackClient::new(false).unwrap();
        let sent = strict.send_delivery(&d, Duration::from_secs(5), None).await;
        assert!(
            matches!(&sent.attempt, Attempt::Refused(e) if e.contains("loopback")),
            "{sent:?}"
        );
        // The kept error names the address, never the URL (its query can hold PII).
        assert!(!sent.error.unwrap().contains("click=abc"));
        assert_eq!(partner.request_count(), 0);

        let lax = PostbackClient::new(true).unwrap();
        let sent = lax.send_delivery(&d, Duration::from_secs(5), None).await;
        assert_eq!(
            sent.attempt,
            Attempt::Response {
                status: 200,
                retry_after: None
            }
        );
        assert_eq!(partner.request_count(), 1);
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_at_connect_time() {
        let partner = FakePartner::start().await.unwrap();
        let url = format!("http://localhost:{}/pb", partner.addr().port());
        let d = delivery("d1", "p", &url);
        let sent = PostbackClient::new(false)
            .unwrap()
            .send_delivery(&d, Duration::from_secs(5), None)
            .await;
        assert!(matches!(sent.attempt, Attempt::Refused(_)), "{sent:?}");
        assert_eq!(partner.request_count(), 0);
    }

    #[tokio::test]
    async fn ipv6_and_mapped_literals_are_refused_too() {
        let client = PostbackClient::new(false).unwrap();
        for url in [
            "http://[::1]:9/",
            "http://[::ffff:127.0.0.1]:9/",
            "http://[fe80::1]:9/",
            "http://169.254.169.254/latest/meta-data",
            "http://2130706433:9/", // 127.0.0.1 written as one number
            "http://0x7f.1:9/",
        ] {
            let sent = client
                .send_delivery(&delivery("d", "p", url), Duration::from_secs(1), None)
                .await;
            assert!(
                matches!(sent.attempt, Attempt::Refused(_)),
                "{url}: {sent:?}"
            );
        }
    }

    #[tokio::test]
    async fn request_carries_webhook_id_user_agent_a_verifiable_signature_and_its_headers() {
        let partner = FakePartner::start().await.unwrap();
        let client = PostbackClient::new(true).unwrap();
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = SigningKey::from_secret(secret).unwrap();
        let mut d = delivery("dlv_42", "p", &partner.url("/events"));
        d.request
            .headers
            .push(("Authorization".into(), "Bearer partner-secret".into()));
        let sent = client
            .send_delivery(&d, Duration::from_secs(5), Some(&key))
            .await;
        assert_eq!(sent.error, None);

        let got = &partner.requests()[0];
        assert_eq!(got.method, "POST");
        assert_eq!(got.target, "/events");
        assert_eq!(got.header("webhook-id"), Some("dlv_42"));
        assert_eq!(got.header("user-agent"), Some(USER_AGENT));
        assert_eq!(got.header("authorization"), Some("Bearer partner-secret"));
        assert_eq!(got.header("content-type"), Some("application/json"));
        // Verify as a receiver would, with an independent HMAC.
        let ts: i64 = got.header("webhook-timestamp").unwrap().parse().unwrap();
        let signed = format!("dlv_42.{ts}.{}", std::str::from_utf8(&got.body).unwrap());
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap(),
        )
        .unwrap();
        mac.update(signed.as_bytes());
        let want = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(got.header("webhook-signature"), Some(want.as_str()));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((now - ts).abs() <= 5);
    }

    #[tokio::test]
    async fn unsigned_destination_sends_no_signature_headers() {
        let partner = FakePartner::start().await.unwrap();
        let client = PostbackClient::new(true).unwrap();
        let mut d = delivery("d1", "p", &partner.url("/pb?x=1"));
        d.request.method = Method::Get;
        d.request.body = None;
        d.request.headers.clear();
        client.send_delivery(&d, Duration::from_secs(5), None).await;
        let got = &partner.requests()[0];
        assert_eq!(got.method, "GET");
        assert_eq!(got.target, "/pb?x=1");
        assert_eq!(got.header("webhook-id"), Some("d1"));
        assert_eq!(got.header("webhook-signature"), None);
        assert_eq!(got.header("webhook-timestamp"), None);
        assert!(got.body.is_empty());
    }

    #[tokio::test]
    async fn redirects_are_not_followed_and_bodies_are_capped() {
        let partner = FakePartner::start().await.unwrap();
        let client = PostbackClient::new(true).unwrap();
        partner.enqueue([
            Reply::status(302).header("Location", &partner.url("/elsewhere")),
            Reply::status(400).body("x".repeat(100_000)),
            Reply::status(503).header("Retry-After", "7"),
        ]);
        let d = delivery("d1", "p", &partner.url("/pb"));

        let sent = client.send_delivery(&d, Duration::from_secs(5), None).await;
        assert!(matches!(
            sent.attempt,
            Attempt::Response { status: 302, .. }
        ));
        assert_eq!(partner.request_count(), 1, "the redirect was followed");

        let sent = client.send_delivery(&d, Duration::from_secs(5), None).await;
        assert!(matches!(
            sent.attempt,
            Attempt::Response { status: 400, .. }
        ));
        // the partner's body is never kept: it can echo click IDs and tokens
        assert_eq!(sent.error.as_deref(), Some("HTTP 400 Bad Request"));

        let sent = client.send_delivery(&d, Duration::from_secs(5), None).await;
        assert_eq!(
            sent.attempt,
            Attempt::Response {
                status: 503,
                retry_after: Some(Duration::from_secs(7))
            }
        );
    }

    #[tokio::test]
    async fn slow_partner_times_out_and_closed_port_is_a_connection_error() {
        let partner = FakePartner::start().await.unwrap();
        partner.set_default(Reply::hang());
        let client = PostbackClient::new(true).unwrap();
        let sent = client
            .send_delivery(
                &delivery("d1", "p", &partner.url("/pb")),
                Duration::from_millis(200),
                None,
            )
            .await;
        assert_eq!(sent.attempt, Attempt::Timeout);

        // A port nobody listens on (bound, then closed).
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}/pb?email=a@b.com");
        let sent = client
            .send_delivery(&delivery("d2", "p", &url), Duration::from_secs(5), None)
            .await;
        assert!(matches!(sent.attempt, Attempt::Connect(_)), "{sent:?}");
        assert!(!sent.error.unwrap().contains("a@b.com"));
    }

    #[tokio::test]
    async fn bad_urls_and_headers_are_invalid_without_echoing_secrets() {
        let client = PostbackClient::new(true).unwrap();
        let sent = client
            .send_delivery(
                &delivery("d", "p", "ftp://x/"),
                Duration::from_secs(1),
                None,
            )
            .await;
        assert!(matches!(sent.attempt, Attempt::Invalid(_)));
        let mut d = delivery("d", "p", "http://example.test/");
        d.request
            .headers
            .push(("X-Key".into(), "top\nsecret".into()));
        let sent = client.send_delivery(&d, Duration::from_secs(1), None).await;
        assert!(matches!(sent.attempt, Attempt::Invalid(_)));
        assert!(!sent.error.unwrap().contains("secret"));
    }
}
