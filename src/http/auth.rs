//! Who may try the admin token, and the preview page's sessions.
//!
//! `Attempts`: wrong admin tokens (`/admin/*` bearer, `/ui/login`) are counted per
//! client address (an IPv6 address by its /64); past `MAX_FAILURES` within `WINDOW`
//! that address gets 429 with `Retry-After` until the window ends, right token or
//! not. Each wrong token is logged (address and where), never the token; the count
//! bounds the log lines too.
//!
//! `Role`: the admin token may do everything; `[admin] preview_token` may look and
//! preview only.
//!
//! `Sessions`: a `/ui` session cookie is `EXPIRES.ID.MAC`, the MAC under the token it
//! logged in with (its role; a new token ends every session) over the expiry, a random session ID and a
//! key drawn at start (a restart ends every session). `POST /ui/logout` revokes the
//! session's ID until its expiry: the old cookie no longer opens anything.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Who a token or a `/ui` session belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `[admin] token`: everything.
    Admin,
    /// `[admin] preview_token`: look and preview; no replay, reload, dead letters,
    /// deliveries or metrics.
    Preview,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Preview => "preview",
        }
    }
}

/// The role whose token `given` is (compared in constant time with each), if any.
pub fn role_of(given: &str, admin: &str, preview: Option<&str>) -> Option<Role> {
    let same = |t: &str| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            given.as_bytes(),
            t.as_bytes(),
        ))
    };
    let is_admin = same(admin);
    let is_preview = preview.is_some_and(same);
    if is_admin {
        Some(Role::Admin)
    } else if is_preview {
        Some(Role::Preview)
    } else {
        None
    }
}

/// Wrong tokens one address may send within `WINDOW`.
pub const MAX_FAILURES: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past it, finished windows are forgotten first.
const MAX_TRACKED: usize = 10_000;

/// Wrong admin tokens per client address.
#[derive(Default)]
pub struct Attempts {
    map: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Attempts {
    /// `Err(seconds)` while `ip` is locked out: how long until it may try again.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let key = super::peers::key(ip);
        let Ok(map) = self.map.lock() else {
            return Ok(());
        };
        match map.get(&key) {
            Some(&(since, n)) if n >= MAX_FAILURES && since.elapsed() < WINDOW => {
                Err((WINDOW - since.elapsed()).as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    /// Counts and logs a wrong token from `ip` at `place` (`admin` or `ui login`).
    pub fn failed(&self, ip: IpAddr, place: &'static str) {
        let key = super::peers::key(ip);
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (since, _)| since.elapsed() < WINDOW);
        }
        let entry = map.entry(key).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        let failures = entry.1;
        drop(map);
        if failures >= MAX_FAILURES {
            tracing::warn!(
                address = %key,
                place,
                failures,
                "wrong admin token; this address is refused (429) for the rest of the minute"
            );
        } else {
            tracing::warn!(address = %key, place, failures, "wrong admin token");
        }
    }
}

/// The preview page's sessions.
pub struct Sessions {
    /// Drawn at start: cookies of an earlier run are not valid in this one.
    key: [u8; 32],
    /// Session IDs logged out, with their expiry (forgotten once expired).
    revoked: Mutex<HashMap<String, i64>>,
}

impl Default for Sessions {
    fn default() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Sessions {
            key,
            revoked: Mutex::new(HashMap::new()),
        }
    }
}

impl Sessions {
    /// A new session's cookie value, valid until `expires` (Unix seconds).
    pub fn mint(&self, token: &str, expires: i64) -> String {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let id = hex(&id);
        format!("{expires}.{id}.{}", self.mac(token, expires, &id))
    }

    fn mac(&self, token: &str, expires: i64, id: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(token.as_bytes()) else {
            return String::new();
        };
        mac.update(b"postback-relay ui session|");
        mac.update(&self.key);
        mac.update(format!("|{expires}|{id}").as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// The session ID of a cookie value made with this token, unexpired at `now`
    /// and not logged out.
    pub fn valid<'v>(&self, value: &'v str, token: &str, now: i64) -> Option<&'v str> {
        let mut parts = value.splitn(3, '.');
        let (exp, id, mac) = (parts.next()?, parts.next()?, parts.next()?);
        let exp = exp.parse::<i64>().ok()?;
        let want = self.mac(token, exp, id);
        let genuine = !want.is_empty()
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                mac.as_bytes(),
                want.as_bytes(),
            ));
        let revoked = self
            .revoked
            .lock()
            .map(|r| r.contains_key(id))
            .unwrap_or(true);
        (genuine && exp > now && !revoked).then_some(id)
    }

    /// Ends the session of this cookie value (if it is one).
    pub fn revoke(&self, value: &str, token: &str, now: i64) {
        let Some(id) = self.valid(value, token, now) else {
            return;
        };
        let expires = value
            .split('.')
            .next()
            .and_then(|e| e.parse::<i64>().ok())
            .unwrap_or(now);
        if let Ok(mut r) = self.revoked.lock() {
            r.retain(|_, exp| *exp > now);
            r.insert(id.to_string(), expires);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_holds_for_its_token_until_it_expires_or_logs_out() {
        let s = Sessions::default();
        let token = "admin-token-0123456789";
        let now = 1_800_000_000;
        let good = s.mint(token, now + 60);
        assert!(s.valid(&good, token, now).is_some());
        assert!(s.valid(&good, "another-token-0123456789", now).is_none());
        assert!(s.valid(&good, token, now + 61).is_none(), "expired");
        let mut parts: Vec<&str> = good.split('.').collect();
        let later = (now + 999_999).to_string();
        parts[0] = &later;
        assert!(
            s.valid(&parts.join("."), token, now).is_none(),
            "expiry moved"
        );
        assert!(s.valid(token, token, now).is_none());
        assert!(s.valid("", token, now).is_none());
        assert!(
            Sessions::default().valid(&good, token, now).is_none(),
            "another run"
        );
        let other = s.mint(token, now + 60);
        s.revoke(&good, token, now);
        assert!(s.valid(&good, token, now).is_none(), "logged out");
        assert!(s.valid(&other, token, now).is_some(), "other sessions stay");
    }

    #[test]
    fn each_token_has_its_role() {
        let (admin, preview) = ("admin-token-0123456789", "preview-token-0123456789");
        assert_eq!(role_of(admin, admin, Some(preview)), Some(Role::Admin));
        assert_eq!(role_of(preview, admin, Some(preview)), Some(Role::Preview));
        assert_eq!(role_of(preview, admin, None), None);
        assert_eq!(role_of("", admin, Some(preview)), None);
        assert_eq!(
            role_of("wrong-token-0123456789", admin, Some(preview)),
            None
        );
    }

    #[test]
    fn an_address_is_locked_out_after_too_many_wrong_tokens() {
        let a = Attempts::default();
        let ip: IpAddr = [192, 0, 2, 1].into();
        let other: IpAddr = [192, 0, 2, 2].into();
        for _ in 0..MAX_FAILURES - 1 {
            a.failed(ip, "admin");
            assert!(a.check(ip).is_ok());
        }
        a.failed(ip, "admin");
        let wait = a.check(ip).expect_err("locked out");
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(a.check(other).is_ok(), "another address");
    }
}
