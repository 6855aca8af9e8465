//! The circuit breaker of one destination.
//!
//! Owns: the closed / open / half-open state machine and its cool-down. Never: reads a
//! clock (the current `Instant` is passed in), sends anything, or decides what counts
//! as a failure (the caller passes `policy::Health`: only a partner being down, never a
//! partner rejecting a payload, trips it).
//!
//! Closed: everything goes. After `failure_threshold` consecutive failures it opens
//! for `cool_down`. Open: nothing goes until the cool-down ends, then it is half-open
//! and lets exactly one probe through. The probe's success closes it; its failure
//! opens it again with the cool-down doubled, up to `max_cool_down`.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::policy::Health;

/// The breaker's state as shown to operators (`GET /admin/destinations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// First cool-down after opening.
    pub cool_down: Duration,
    /// The cool-down doubles while probes fail, up to this.
    pub max_cool_down: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failure_threshold: 5,
            cool_down: Duration::from_secs(30),
            max_cool_down: Duration::from_secs(300),
        }
    }
}

/// What the breaker lets through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: send as much as the other limits allow.
    Open,
    /// Half-open: send exactly one probe (now marked in flight).
    Probe,
    /// Open: nothing until then.
    WaitUntil(Instant),
    /// Half-open with the probe in flight: wait for its outcome.
    WaitForProbe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    inner: Inner,
    consecutive_failures: u32,
    cool_down: Duration,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Breaker {
            settings,
            inner: Inner::Closed,
            consecutive_failures: 0,
            cool_down: settings.cool_down,
        }
    }

    /// The state at `now` (an open breaker whose cool-down ended reads half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.inner {
            Inner::Closed => BreakerState::Closed,
            Inner::Open { until } if now >= until => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Ask to send. `Probe` marks the probe in flight: settle it with `record`, or give
    /// it back with `cancel_probe` when there was nothing to send.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.inner {
            Inner::Closed => Admission::Open,
            Inner::Open { until } if now < until => Admission::WaitUntil(until),
            Inner::Open { .. }
            | Inner::HalfOpen {
                probe_in_flight: false,
            } => {
                self.inner = Inner::HalfOpen {
                    probe_in_flight: true,
                };
                Admission::Probe
            }
            Inner::HalfOpen {
                probe_in_flight: true,
            } => Admission::WaitForProbe,
        }
    }

    /// The probe was admitted but nothing was sent.
    pub fn cancel_probe(&mut self) {
        if let Inner::HalfOpen { .. } = self.inner {
            self.inner = Inner::HalfOpen {
                probe_in_flight: false,
            };
        }
    }

    /// The outcome of a send.
    pub fn record(&mut self, health: Health, now: Instant) {
        match health {
            Health::Up => {
                self.inner = Inner::Closed;
                self.consecutive_failures = 0;
                self.cool_down = self.settings.cool_down;
            }
            Health::Down => match self.inner {
                Inner::Closed => {
                    self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                    if self.consecutive_failures >= self.settings.failure_threshold.max(1) {
                        self.inner = Inner::Open {
                            until: now + self.cool_down,
                        };
                    }
                }
                Inner::HalfOpen { .. } => {
                    self.cool_down = (self.cool_down * 2).min(self.settings.max_cool_down);
                    self.inner = Inner::Open {
                        until: now + self.cool_down,
                    };
                }
                // A send that started before the circuit opened: it changes nothing.
                Inner::Open { .. } => {}
            },
            Health::Unknown => self.cancel_probe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings::default())
    }

    #[test]
    fn opens_after_five_consecutive_failures() {
        let now = Instant::now();
        let mut b = breaker();
        for _ in 0..4 {
            b.record(Health::Down, now);
            assert_eq!(b.state(now), BreakerState::Closed);
            assert_eq!(b.admit(now), Admission::Open);
        }
        b.record(Health::Down, now);
        assert_eq!(b.state(now), BreakerState::Open);
        assert_eq!(
            b.admit(now),
            Admission::WaitUntil(now + Duration::from_secs(30))
        );
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let now = Instant::now();
        let mut b = breaker();
        for _ in 0..4 {
            b.record(Health::Down, now);
        }
        b.record(Health::Up, now);
        for _ in 0..4 {
            b.record(Health::Down, now);
        }
        assert_eq!(b.state(now), BreakerState::Closed);
    }

    #[test]
    fn rejections_and_refusals_do_not_open_it() {
        let now = Instant::now();
        let mut b = breaker();
        for _ in 0..20 {
            b.record(Health::Unknown, now);
        }
        assert_eq!(b.state(now), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_after_cool_down_lets_one_probe_and_closes_on_success() {
        let mut b = breaker();
        for _ in 0..5 {
            b.record(Health::Down, Instant::now());
        }
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(matches!(b.admit(Instant::now()), Admission::WaitUntil(_)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(Instant::now()), BreakerState::HalfOpen);
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        // Only one probe at a time.
        assert_eq!(b.admit(Instant::now()), Admission::WaitForProbe);
        b.record(Health::Up, Instant::now());
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
        assert_eq!(b.admit(Instant::now()), Admission::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_with_a_doubled_cool_down_up_to_five_minutes() {
        let mut b = breaker();
        for _ in 0..5 {
            b.record(Health::Down, Instant::now());
        }
        let mut cool_downs = Vec::new();
        for _ in 0..6 {
            let Admission::WaitUntil(until) = b.admit(Instant::now()) else {
                panic!("expected open");
            };
            cool_downs.push((until - Instant::now()).as_secs());
            tokio::time::advance(until - Instant::now()).await;
            assert_eq!(b.admit(Instant::now()), Admission::Probe);
            b.record(Health::Down, Instant::now());
            assert_eq!(b.state(Instant::now()), BreakerState::Open);
        }
        assert_eq!(cool_downs, [30, 60, 120, 240, 300, 300]);
        // Recovery resets the cool-down for the next incident.
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        b.record(Health::Up, Instant::now());
        for _ in 0..5 {
            b.record(Health::Down, Instant::now());
        }
        assert_eq!(
            b.admit(Instant::now()),
            Admission::WaitUntil(Instant::now() + Duration::from_secs(30))
        );
    }

    #[test]
    fn a_cancelled_or_inconclusive_probe_frees_the_slot() {
        let now = Instant::now();
        let mut b = Breaker::new(BreakerSettings {
            cool_down: Duration::ZERO,
            ..BreakerSettings::default()
        });
        for _ in 0..5 {
            b.record(Health::Down, now);
        }
        assert_eq!(b.admit(now), Admission::Probe);
        b.cancel_probe();
        assert_eq!(b.admit(now), Admission::Probe);
        b.record(Health::Unknown, now);
        assert_eq!(b.admit(now), Admission::Probe);
    }

    #[test]
    fn state_serializes_in_snake_case() {
        assert_eq!(
            serde_json::to_string(&BreakerState::HalfOpen)
                .ok()
                .as_deref(),
            Some("\"half_open\"")
        );
    }
}
