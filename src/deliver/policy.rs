//! The retry policy: what one attempt's outcome means, and when to try again.
//!
//! Owns: classifying an attempt (`classify`), the backoff schedule with full jitter and
//! the `Retry-After` floor (`next_delay`), the give-up rule (`decide`), and parsing
//! `Retry-After`. Never: does I/O, reads a clock or holds state. Every input, the
//! current time and the random source included, is passed in, so the schedule is
//! tested as plain values.

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::outbound::RetrySettings;

/// What happened when one postback was attempted, as a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The partner answered (any status; redirects are never followed).
    Response {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No complete answer within the destination's timeout.
    Timeout,
    /// Could not connect or the connection broke (DNS failure, refused, reset, TLS).
    Connect(String),
    /// The partner's address is not public and private networks are not allowed.
    Refused(String),
    /// The stored request cannot be sent at all (bad URL, bad header, bad secret).
    Invalid(String),
    /// The destination's credentials were refused before a request could be made (an
    /// OAuth token endpoint refused the refresh token): the destination is held.
    Credential(String),
}

/// What an attempt means for the delivery, before the give-up rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: done.
    Delivered,
    /// Worth another attempt: 408, 425, 429, 5xx, timeouts, connection errors.
    Retry,
    /// No later attempt can succeed: other 4xx, 3xx, refused addresses, invalid requests.
    Reject,
}

/// Whether an outcome says the partner is unhealthy (what the circuit breaker counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The partner answered: it is up, even when it rejected the payload.
    Up,
    /// Timeout, connection error, 429 or 5xx.
    Down,
    /// Says nothing about the partner (refused before connecting, invalid request).
    Unknown,
}

/// The classification table of the delivery contract.
pub fn classify(attempt: &Attempt) -> Verdict {
    match attempt {
        Attempt::Response { status, .. } => match *status {
            200..=299 => Verdict::Delivered,
            408 | 425 | 429 | 500..=599 => Verdict::Retry,
            _ => Verdict::Reject,
        },
        Attempt::Timeout | Attempt::Connect(_) => Verdict::Retry,
        Attempt::Refused(_) | Attempt::Invalid(_) => Verdict::Reject,
        // Not the delivery's fault: kept (the destination is held, see `flight`).
        Attempt::Credential(_) => Verdict::Retry,
    }
}

/// What an attempt says about the partner's health. Only retriable failures count as
/// down, except 408/425 which are about this request, not the partner.
pub fn health(attempt: &Attempt) -> Health {
    match attempt {
        Attempt::Response { status, .. } => match *status {
            429 | 500..=599 => Health::Down,
            _ => Health::Up,
        },
        Attempt::Timeout | Attempt::Connect(_) => Health::Down,
        Attempt::Refused(_) | Attempt::Invalid(_) | Attempt::Credential(_) => Health::Unknown,
    }
}

/// The delay before the next attempt after `attempts` attempts (>= 1) have failed.
///
/// Exponential cap `initial_backoff * 2^(attempts-1)`, at most `max_backoff`; the delay
/// is drawn uniformly from `0..=cap` (full jitter) so retries of many deliveries
/// spread out instead of arriving together. A `Retry-After` from the partner is a
/// floor, even above `max_backoff`, but never above `give_up_after` (a longer one
/// means giving up, which `decide` does).
pub fn next_delay<R: Rng + ?Sized>(
    retry: &RetrySettings,
    attempts: u32,
    retry_after: Option<Duration>,
    rng: &mut R,
) -> Duration {
    let cap = backoff_cap(retry, attempts);
    let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    let jittered = Duration::from_millis(rng.random_range(0..=cap_ms));
    match retry_after {
        Some(floor) => jittered.max(floor.min(retry.give_up_after)),
        None => jittered,
    }
}

/// The upper bound of the jittered delay after `attempts` failed attempts.
pub fn backoff_cap(retry: &RetrySettings, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1);
    let grown = match 1u32.checked_shl(doublings) {
        Some(factor) if doublings < 32 => retry.initial_backoff.checked_mul(factor),
        _ => None,
    };
    grown.unwrap_or(retry.max_backoff).min(retry.max_backoff)
}

/// What to do with a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Complete,
    /// Try again at this Unix millisecond.
    RetryAt(i64),
    /// Move to the dead-letter queue.
    DeadLetter(GiveUp),
}

/// Why a delivery went to the dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The partner rejected it, or it cannot be sent (`Verdict::Reject`).
    Rejected,
    /// `max_attempts` reached.
    MaxAttempts,
    /// The next attempt would fall after `started_ms + give_up_after`.
    Expired,
    /// The event is older than the partner accepts: sending it can only fail.
    TooOld,
}

impl GiveUp {
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUp::Rejected => "rejected",
            GiveUp::MaxAttempts => "max_attempts reached",
            GiveUp::Expired => "give_up_after passed",
            GiveUp::TooOld => "the event is older than the partner accepts",
        }
    }
}

/// The whole rule: classify, then retry unless `attempts` (counting this one) reached
/// `max_attempts` or the next attempt would be later than `started_ms + give_up_after`.
/// `started_ms` is when the delivery's first attempt was made. (The engine judges
/// the answer's body first and calls `decide_verdict`; the tests state the policy
/// through this.)
#[cfg(test)]
pub fn decide<R: Rng + ?Sized>(
    retry: &RetrySettings,
    attempt: &Attempt,
    attempts: u32,
    started_ms: i64,
    now_ms: i64,
    rng: &mut R,
) -> Decision {
    let retry_after = match attempt {
        Attempt::Response { retry_after, .. } => *retry_after,
        _ => None,
    };
    let schedule = Schedule {
        attempts,
        started_ms,
        now_ms,
    };
    decide_verdict(retry, classify(attempt), retry_after, schedule, rng)
}

/// Where a delivery stands when an attempt is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Attempts made, counting this one.
    pub attempts: u32,
    /// When the first attempt was made (Unix ms).
    pub started_ms: i64,
    pub now_ms: i64,
}

/// `decide` for a verdict already reached (from the status and the answer's body,
/// see `answer::judge`); `retry_after` is the partner's requested wait, a floor.
pub fn decide_verdict<R: Rng + ?Sized>(
    retry: &RetrySettings,
    verdict: Verdict,
    retry_after: Option<Duration>,
    at: Schedule,
    rng: &mut R,
) -> Decision {
    match verdict {
        Verdict::Delivered => Decision::Complete,
        Verdict::Reject => Decision::DeadLetter(GiveUp::Rejected),
        Verdict::Retry => {
            if at.attempts >= retry.max_attempts {
                return Decision::DeadLetter(GiveUp::MaxAttempts);
            }
            let delay = next_delay(retry, at.attempts, retry_after, rng);
            let next = at.now_ms.saturating_add(millis(delay));
            let deadline = at.started_ms.saturating_add(millis(retry.give_up_after));
            if next > deadline {
                Decision::DeadLetter(GiveUp::Expired)
            } else {
                Decision::RetryAt(next)
            }
        }
    }
}

/// Whether an event is older than the partner accepts, at `now_ms`.
pub fn too_old(event_time_ms: Option<i64>, max_age: Option<Duration>, now_ms: i64) -> bool {
    match (event_time_ms, max_age) {
        (Some(t), Some(max)) => now_ms.saturating_sub(t) > millis(max),
        _ => false,
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Longest `Retry-After` taken from a partner; anything longer is read as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30 * 86400);

/// `Retry-After` as delta-seconds or an HTTP-date (RFC 9110 10.2.3). A date in the
/// past means "now" (zero). Garbage is `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn settings() -> RetrySettings {
        RetrySettings {
            max_attempts: 12,
            give_up_after: Duration::from_secs(3 * 86400),
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3600),
        }
    }

    fn response(status: u16) -> Attempt {
        Attempt::Response {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn classification_table_matches_the_delivery_contract() {
        let table: &[(Attempt, Verdict)] = &[
            (response(200), Verdict::Delivered),
            (response(201), Verdict::Delivered),
            (response(204), Verdict::Delivered),
            (response(299), Verdict::Delivered),
            (response(100), Verdict::Reject),
            (response(301), Verdict::Reject),
            (response(302), Verdict::Reject),
            (response(304), Verdict::Reject),
            (response(307), Verdict::Reject),
            (response(308), Verdict::Reject),
            (response(400), Verdict::Reject),
            (response(401), Verdict::Reject),
            (response(403), Verdict::Reject),
            (response(404), Verdict::Reject),
            (response(405), Verdict::Reject),
            (response(409), Verdict::Reject),
            (response(410), Verdict::Reject),
            (response(413), Verdict::Reject),
            (response(422), Verdict::Reject),
            (response(451), Verdict::Reject),
            (response(408), Verdict::Retry),
            (response(425), Verdict::Retry),
            (response(429), Verdict::Retry),
            (response(500), Verdict::Retry),
            (response(502), Verdict::Retry),
            (response(503), Verdict::Retry),
            (response(504), Verdict::Retry),
            (response(599), Verdict::Retry),
            (Attempt::Timeout, Verdict::Retry),
            (Attempt::Connect("reset".into()), Verdict::Retry),
            (Attempt::Refused("loopback".into()), Verdict::Reject),
            (Attempt::Invalid("bad url".into()), Verdict::Reject),
        ];
        for (attempt, want) in table {
            assert_eq!(classify(attempt), *want, "{attempt:?}");
        }
    }

    #[test]
    fn only_partner_side_failures_count_against_its_health() {
        assert_eq!(health(&response(503)), Health::Down);
        assert_eq!(health(&response(429)), Health::Down);
        assert_eq!(health(&Attempt::Timeout), Health::Down);
        assert_eq!(health(&Attempt::Connect("x".into())), Health::Down);
        assert_eq!(health(&response(200)), Health::Up);
        assert_eq!(health(&response(400)), Health::Up);
        assert_eq!(health(&response(302)), Health::Up);
        assert_eq!(health(&Attempt::Refused("x".into())), Health::Unknown);
        assert_eq!(health(&Attempt::Invalid("x".into())), Health::Unknown);
    }

    #[test]
    fn backoff_cap_doubles_from_initial_up_to_max() {
        let s = settings();
        let caps: Vec<u64> = (1..=12).map(|n| backoff_cap(&s, n).as_secs()).collect();
        assert_eq!(
            caps,
            [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        // Far past the point where 2^n overflows: still the max, no panic.
        assert_eq!(backoff_cap(&s, 40).as_secs(), 3600);
        assert_eq!(backoff_cap(&s, u32::MAX).as_secs(), 3600);
        // Zero attempts behaves like the first.
        assert_eq!(backoff_cap(&s, 0).as_secs(), 5);
    }

    #[test]
    fn jittered_delay_stays_within_zero_and_the_cap_for_every_attempt() {
        let s = settings();
        let mut rng = StdRng::seed_from_u64(7);
        for attempts in 1..=20u32 {
            let cap = backoff_cap(&s, attempts);
            let mut seen_low = false;
            let mut seen_high = false;
            for _ in 0..500 {
                let d = next_delay(&s, attempts, None, &mut rng);
                assert!(d <= cap, "attempt {attempts}: {d:?} > {cap:?}");
                seen_low |= d < cap / 4;
                seen_high |= d > cap * 3 / 4;
            }
            // Full jitter: the whole range is used, not just a band near the cap.
            assert!(seen_low && seen_high, "attempt {attempts}");
        }
    }

    /// The example rule file says what the schedule is; it must be this one (the
    /// settings of `settings()`, the caps of `backoff_cap_doubles_from_initial_up_to_max`).
    #[test]
    fn the_example_rules_retry_comment_describes_this_schedule() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/example-aff.toml");
        let text = std::fs::read_to_string(path).expect("rules/example-aff.toml");
        let comment: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            comment.contains(
                "Retries: up to 12 attempts within 3 days. The wait before retry N is random between 0 and 5s x 2^(N-1), at most 1h (\"full jitter\""
            ),
            "{comment}"
        );
        assert!(text.contains(
            "retry = { max_attempts = 12, give_up_after = \"3d\", initial_backoff = \"5s\", max_backoff = \"1h\" }"
        ));
        let s = settings();
        assert_eq!(
            (s.max_attempts, s.give_up_after.as_secs()),
            (12, 3 * 86_400)
        );
        assert_eq!(
            (s.initial_backoff.as_secs(), s.max_backoff.as_secs()),
            (5, 3600)
        );
    }

    #[test]
    fn same_seed_gives_the_same_schedule() {
        let s = settings();
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (1..=10)
                .map(|n| next_delay(&s, n, None, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
    }

    #[test]
    fn retry_after_is_a_floor_even_above_max_backoff_but_not_above_give_up_after() {
        let s = settings();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let d = next_delay(&s, 1, Some(Duration::from_secs(4)), &mut rng);
            assert!(d >= Duration::from_secs(4) && d <= Duration::from_secs(5));
        }
        let two_hours = Duration::from_secs(7200);
        assert_eq!(next_delay(&s, 1, Some(two_hours), &mut rng), two_hours);
        let ten_days = Duration::from_secs(10 * 86400);
        assert_eq!(next_delay(&s, 1, Some(ten_days), &mut rng), s.give_up_after);
    }

    #[test]
    fn gives_up_when_max_attempts_is_reached() {
        let s = RetrySettings {
            max_attempts: 3,
            ..settings()
        };
        let mut rng = StdRng::seed_from_u64(3);
        let now = 1_000_000;
        for attempts in 1..3 {
            assert!(matches!(
                decide(&s, &response(503), attempts, now, now, &mut rng),
                Decision::RetryAt(at) if at >= now && at <= now + 20_000
            ));
        }
        assert_eq!(
            decide(&s, &response(503), 3, now, now, &mut rng),
            Decision::DeadLetter(GiveUp::MaxAttempts)
        );
        // Success on the last attempt is still a success.
        assert_eq!(
            decide(&s, &response(200), 3, now, now, &mut rng),
            Decision::Complete
        );
    }

    #[test]
    fn gives_up_when_the_next_attempt_would_be_after_give_up_after() {
        let s = RetrySettings {
            give_up_after: Duration::from_secs(60),
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(10),
            max_attempts: 100,
        };
        let mut rng = StdRng::seed_from_u64(5);
        let started = 0;
        // 45 s in, the next attempt lands at most 55 s in: retried.
        assert!(matches!(
            decide(&s, &Attempt::Timeout, 2, started, 45_000, &mut rng),
            Decision::RetryAt(_)
        ));
        // 61 s in, any next attempt is past the deadline.
        assert_eq!(
            decide(&s, &Attempt::Timeout, 2, started, 61_000, &mut rng),
            Decision::DeadLetter(GiveUp::Expired)
        );
        // A Retry-After beyond the deadline means giving up now, not waiting for nothing.
        let late = Attempt::Response {
            status: 429,
            retry_after: Some(Duration::from_secs(120)),
        };
        assert_eq!(
            decide(&s, &late, 1, started, 1_000, &mut rng),
            Decision::DeadLetter(GiveUp::Expired)
        );
    }

    #[test]
    fn events_past_the_partners_age_limit_are_too_old() {
        let week = Some(Duration::from_secs(7 * 86400));
        let now = 10 * 86_400_000;
        assert!(too_old(Some(now - 8 * 86_400_000), week, now));
        assert!(!too_old(Some(now - 6 * 86_400_000), week, now));
        assert!(!too_old(None, week, now));
        assert!(!too_old(Some(0), None, now));
    }

    #[test]
    fn a_verdict_from_the_body_can_ask_for_a_long_wait() {
        let s = settings();
        let mut rng = StdRng::seed_from_u64(11);
        let six_hours = Duration::from_secs(6 * 3600);
        let at = Schedule {
            attempts: 1,
            started_ms: 0,
            now_ms: 0,
        };
        assert_eq!(
            decide_verdict(&s, Verdict::Retry, Some(six_hours), at, &mut rng),
            Decision::RetryAt(6 * 3_600_000)
        );
        assert_eq!(
            decide_verdict(&s, Verdict::Reject, None, at, &mut rng),
            Decision::DeadLetter(GiveUp::Rejected)
        );
    }

    #[test]
    fn rejections_go_to_the_dead_letters_on_the_first_attempt() {
        let s = settings();
        let mut rng = StdRng::seed_from_u64(9);
        for a in [
            response(400),
            response(301),
            Attempt::Refused("private".into()),
            Attempt::Invalid("bad".into()),
        ] {
            assert_eq!(
                decide(&s, &a, 1, 0, 0, &mut rng),
                Decision::DeadLetter(GiveUp::Rejected)
            );
        }
    }

    #[test]
    fn retry_after_parses_delta_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        // A date in the past: retry now.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        // Absurdly large values are bounded, not overflowed.
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        for bad in ["", "soon", "-5", "1.5", "Wed, 99 Foo 2015"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}
