//! Adaptive request concurrency: how many requests one destination has in flight.
//!
//! Owns: the controller (`Controller`, pure: samples in, a limit out) and the gate the
//! dispatcher waits at (`Gate`: a counting semaphore whose size the controller moves).
//! Modelled on Vector's adaptive request concurrency and TCP congestion control:
//!
//! - the limit starts at `START` and doubles every window while nothing signals
//!   congestion and the limit was reached (slow start), until the first decrease;
//! - after that it grows by `max(1, limit / 8)` per window under the same conditions
//!   (additive increase, scaled so a 100 ms partner needing hundreds in flight is
//!   reached in seconds, not minutes);
//! - a window with a congestion signal (timeout, connection error, 429, 5xx, a
//!   partner's "too many requests" answer) or with a mean round-trip time above
//!   `RTT_RISE` x the shortest window mean of the last `BASE_RTT_SPAN` (and more than
//!   `RTT_SLACK` above it: a queue building up, at the partner or in the relay itself)
//!   multiplies the limit by `DECREASE`;
//! - never above the destination's `concurrency` (the user's ceiling), never below 1.
//!
//! A window lasts one long-run mean round trip, at least `MIN_WINDOW`.
//!
//! In flight is not a rate: against a partner that answers in a millisecond, one
//! request in flight is a thousand a second. So a partner's own rate limit (a 429)
//! also sets a **learned rate**: the requests it took in the last second, less 10%
//! (a later 429 cuts the rate by 10%, at most once a second); request starts are then paced to it, and it grows by
//! 10% for each second without a 429 in which the pacing held a request back. A
//! partner limited to N requests a second is thus sent more than N only in the
//! seconds where the learned rate probes past it. The destination's own
//! `rate_limit` is applied separately. Never: sleeps (the gate's `pace` does, for
//! the dispatcher), reads a clock of its own in the controller (instants are passed
//! in), or knows about HTTP.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::sync::lock;

/// First limit of a destination (also after a rules reload that changes its ceiling).
pub const START: usize = 4;
/// Multiplicative decrease on congestion.
pub const DECREASE: f64 = 0.7;
/// A window's mean round trip above this multiple of the base (shortest) one is
/// congestion...
pub const RTT_RISE: f64 = 2.0;
/// ...when it is also this much above it (so loopback jitter of a few hundred
/// microseconds is not taken for a queue building up).
pub const RTT_SLACK: Duration = Duration::from_millis(5);
/// How long the shortest window mean stands as the base round trip before the
/// current one replaces it (a partner whose path got longer is not congested forever).
pub const BASE_RTT_SPAN: Duration = Duration::from_secs(30);
/// Shortest window.
pub const MIN_WINDOW: Duration = Duration::from_millis(50);
/// Weight of a new window in the long-run mean round trip.
const RTT_ALPHA: f64 = 0.25;

/// What one finished request says about the partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Answered without a sign of overload (delivered or rejected).
    Fine,
    /// Timeout, connection error, 5xx or a partner's own "slow down".
    Congested,
    /// The partner's rate limit (429): congestion, and the rate is learned from it.
    RateLimited,
    /// Says nothing about the partner (never sent).
    Nothing,
}

/// The pure controller.
#[derive(Debug, Clone)]
pub struct Controller {
    limit: usize,
    ceiling: usize,
    slow_start: bool,
    /// Long-run mean round trip, seconds (the window length).
    mean_rtt: Option<f64>,
    /// Shortest window mean round trip lately, seconds, and since when.
    base_rtt: Option<(f64, Instant)>,
    window_start: Instant,
    samples: u32,
    rtt_sum: f64,
    congested: bool,
    reached: bool,
    /// Requests a second learned from the partner's 429s; `None` until the first.
    rate: Option<f64>,
    /// When the requests answered without a rate limit in the last second ended.
    taken: VecDeque<Instant>,
    last_cut: Option<Instant>,
    /// Start of the second in which the rate may grow, and whether pacing held a
    /// request back in it.
    rate_second: Instant,
    paced: bool,
}

/// Share of the last second's requests the learned rate keeps after a 429.
const RATE_CUT: f64 = 0.9;
/// Growth of the learned rate per second without a 429 in which it held requests back
/// (additive: 2% of the rate, so it probes past a partner's limit only every few
/// seconds, and by little).
const RATE_GROWTH: f64 = 0.02;

impl Controller {
    pub fn new(ceiling: usize, now: Instant) -> Controller {
        let ceiling = ceiling.max(1);
        Controller {
            limit: START.min(ceiling),
            ceiling,
            slow_start: true,
            mean_rtt: None,
            base_rtt: None,
            window_start: now,
            samples: 0,
            rtt_sum: 0.0,
            congested: false,
            reached: false,
            rate: None,
            taken: VecDeque::new(),
            last_cut: None,
            rate_second: now,
            paced: false,
        }
    }

    /// The learned rate, requests a second.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// The pacing held a request back (the learned rate is binding).
    pub fn paced(&mut self) {
        self.paced = true;
    }

    fn learn_rate(&mut self, now: Instant, signal: Signal) {
        while self
            .taken
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > Duration::from_secs(1))
        {
            self.taken.pop_front();
        }
        match signal {
            Signal::Fine | Signal::Congested => self.taken.push_back(now),
            Signal::RateLimited => {
                let recent = self
                    .last_cut
                    .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1));
                if !recent {
                    // The first 429 sets the rate from what the partner took; later
                    // ones cut the rate (what was taken just after a pause says
                    // little about the partner's limit).
                    let took = self.taken.len() as f64 * RATE_CUT;
                    self.rate = Some(self.rate.map_or(took, |r| r * RATE_CUT).max(1.0));
                    self.last_cut = Some(now);
                    self.rate_second = now;
                    self.paced = false;
                }
            }
            Signal::Nothing => {}
        }
        if now.saturating_duration_since(self.rate_second) >= Duration::from_secs(1) {
            if self.paced {
                self.rate = self.rate.map(|r| r + (r * RATE_GROWTH).max(1.0));
            }
            self.rate_second = now;
            self.paced = false;
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A new ceiling (rules reload): the limit is clamped to it; growth goes on.
    pub fn set_ceiling(&mut self, ceiling: usize) {
        self.ceiling = ceiling.max(1);
        self.limit = self.limit.min(self.ceiling);
    }

    /// The dispatcher had work and found every slot taken.
    pub fn limit_reached(&mut self) {
        self.reached = true;
    }

    /// One request finished after `rtt`; returns the new limit when it changed.
    pub fn record(&mut self, now: Instant, rtt: Duration, signal: Signal) -> Option<usize> {
        self.learn_rate(now, signal);
        match signal {
            Signal::Nothing => {}
            // A rate limit is the learned rate's business, not the concurrency's.
            Signal::Congested => self.congested = true,
            Signal::RateLimited => {}
            Signal::Fine => {
                self.samples += 1;
                self.rtt_sum += rtt.as_secs_f64();
            }
        }
        let window = self
            .mean_rtt
            .map(Duration::from_secs_f64)
            .unwrap_or(MIN_WINDOW)
            .max(MIN_WINDOW);
        if now.saturating_duration_since(self.window_start) < window {
            return None;
        }
        self.end_window(now)
    }

    fn end_window(&mut self, now: Instant) -> Option<usize> {
        let before = self.limit;
        let window_rtt = (self.samples > 0).then(|| self.rtt_sum / f64::from(self.samples));
        let rising = match (window_rtt, self.base_rtt) {
            (Some(w), Some((b, _))) => w > b * RTT_RISE && w - b > RTT_SLACK.as_secs_f64(),
            _ => false,
        };
        if let Some(w) = window_rtt {
            self.base_rtt = match self.base_rtt {
                Some((b, since))
                    if b <= w && now.saturating_duration_since(since) < BASE_RTT_SPAN =>
                {
                    Some((b, since))
                }
                _ => Some((w, now)),
            };
        }
        if self.congested || rising {
            self.slow_start = false;
            self.limit = ((self.limit as f64 * DECREASE).floor() as usize).max(1);
        } else if self.reached {
            let step = if self.slow_start {
                self.limit
            } else {
                (self.limit / 8).max(1)
            };
            self.limit = (self.limit + step).min(self.ceiling);
        }
        if let Some(w) = window_rtt {
            self.mean_rtt = Some(match self.mean_rtt {
                Some(m) => m + RTT_ALPHA * (w - m),
                None => w,
            });
        }
        self.window_start = now;
        self.samples = 0;
        self.rtt_sum = 0.0;
        self.congested = false;
        self.reached = false;
        (self.limit != before).then_some(self.limit)
    }
}

struct GateState {
    in_flight: usize,
    closed: bool,
    controller: Controller,
    /// The earliest start of the next request under the learned rate.
    next_start: Option<Instant>,
}

/// The dispatcher's gate: at most `controller.limit()` permits out at once.
pub struct Gate {
    state: Mutex<GateState>,
    freed: Notify,
}

/// One request's place in flight; given back on drop.
pub struct Permit {
    gate: Arc<Gate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        lock(&self.gate.state).in_flight -= 1;
        self.gate.freed.notify_one();
    }
}

impl Gate {
    pub fn new(ceiling: usize) -> Arc<Gate> {
        Arc::new(Gate {
            state: Mutex::new(GateState {
                in_flight: 0,
                closed: false,
                controller: Controller::new(ceiling, Instant::now()),
                next_start: None,
            }),
            freed: Notify::new(),
        })
    }

    /// Waits for a free place; `None` once closed.
    pub async fn acquire(self: &Arc<Self>) -> Option<Permit> {
        loop {
            let freed = self.freed.notified();
            if let Some(p) = self.try_acquire_marking(true) {
                return Some(p);
            }
            if lock(&self.state).closed {
                return None;
            }
            freed.await;
        }
    }

    /// A free place now, if there is one (does not count as reaching the limit).
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        self.try_acquire_marking(false)
    }

    fn try_acquire_marking(self: &Arc<Self>, mark: bool) -> Option<Permit> {
        let mut s = lock(&self.state);
        if s.closed {
            return None;
        }
        if s.in_flight >= s.controller.limit() {
            if mark {
                s.controller.limit_reached();
            }
            return None;
        }
        s.in_flight += 1;
        Some(Permit { gate: self.clone() })
    }

    /// A request finished: feeds the controller.
    pub fn record(&self, rtt: Duration, signal: Signal) {
        let changed = lock(&self.state)
            .controller
            .record(Instant::now(), rtt, signal);
        if changed.is_some() {
            self.freed.notify_one();
        }
    }

    /// Waits for the next request's turn under the learned rate (at once while no
    /// rate was learned).
    pub async fn pace(&self) {
        let at = {
            let mut s = lock(&self.state);
            let Some(rate) = s.controller.rate() else {
                return;
            };
            let now = Instant::now();
            let at = s.next_start.map_or(now, |t| t.max(now));
            s.next_start = Some(at + Duration::from_secs_f64(1.0 / rate.max(1.0)));
            if at > now {
                s.controller.paced();
            }
            at
        };
        tokio::time::sleep_until(at).await;
    }

    pub fn set_ceiling(&self, ceiling: usize) {
        lock(&self.state).controller.set_ceiling(ceiling);
        self.freed.notify_one();
    }

    /// No new permits from now on; a waiting `acquire` returns `None`.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.freed.notify_one();
    }

    pub fn limit(&self) -> usize {
        lock(&self.state).controller.limit()
    }

    pub fn in_flight(&self) -> usize {
        lock(&self.state).in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `n` windows of answers taking `rtt`, the limit reached in each.
    fn windows(c: &mut Controller, now: &mut Instant, n: usize, rtt: Duration, signal: Signal) {
        for _ in 0..n {
            c.limit_reached();
            *now += rtt.max(MIN_WINDOW);
            c.record(*now, rtt, signal);
        }
    }

    #[test]
    fn slow_start_reaches_hundreds_in_flight_within_a_second_at_100ms() {
        let mut now = Instant::now();
        let mut c = Controller::new(512, now);
        windows(
            &mut c,
            &mut now,
            10,
            Duration::from_millis(100),
            Signal::Fine,
        );
        assert_eq!(c.limit(), 512, "doubling from 4 reaches the ceiling");
    }

    #[test]
    fn the_limit_only_grows_when_it_was_reached() {
        let mut now = Instant::now();
        let mut c = Controller::new(512, now);
        for _ in 0..10 {
            now += Duration::from_millis(100);
            c.record(now, Duration::from_millis(100), Signal::Fine);
        }
        assert_eq!(c.limit(), START);
    }

    #[test]
    fn congestion_decreases_multiplicatively_then_growth_is_additive() {
        let mut now = Instant::now();
        let mut c = Controller::new(1000, now);
        windows(
            &mut c,
            &mut now,
            6,
            Duration::from_millis(100),
            Signal::Fine,
        );
        assert_eq!(c.limit(), 256);
        windows(
            &mut c,
            &mut now,
            1,
            Duration::from_millis(100),
            Signal::Congested,
        );
        assert_eq!(c.limit(), 179);
        windows(
            &mut c,
            &mut now,
            1,
            Duration::from_millis(100),
            Signal::Fine,
        );
        assert_eq!(
            c.limit(),
            179 + 179 / 8,
            "additive after the first decrease"
        );
    }

    #[test]
    fn rising_latency_is_congestion_but_loopback_jitter_is_not() {
        let mut now = Instant::now();
        let mut c = Controller::new(64, now);
        windows(
            &mut c,
            &mut now,
            3,
            Duration::from_millis(100),
            Signal::Fine,
        );
        let before = c.limit();
        windows(
            &mut c,
            &mut now,
            1,
            Duration::from_millis(400),
            Signal::Fine,
        );
        assert!(c.limit() < before, "{} !< {before}", c.limit());

        let mut now = Instant::now();
        let mut c = Controller::new(64, now);
        windows(
            &mut c,
            &mut now,
            2,
            Duration::from_micros(200),
            Signal::Fine,
        );
        windows(
            &mut c,
            &mut now,
            3,
            Duration::from_micros(900),
            Signal::Fine,
        );
        assert_eq!(c.limit(), 64, "4.5x of 0.2 ms is still no queue");
    }

    #[test]
    fn never_above_the_ceiling_nor_below_one() {
        let mut now = Instant::now();
        let mut c = Controller::new(3, now);
        windows(&mut c, &mut now, 5, Duration::from_millis(10), Signal::Fine);
        assert_eq!(c.limit(), 3);
        windows(
            &mut c,
            &mut now,
            20,
            Duration::from_millis(10),
            Signal::Congested,
        );
        assert_eq!(c.limit(), 1);
        c.set_ceiling(0);
        assert_eq!(c.limit(), 1);
    }

    #[test]
    fn a_429_sets_a_rate_from_what_the_partner_took_and_it_grows_while_binding() {
        let mut now = Instant::now();
        let mut c = Controller::new(512, now);
        // 600 answers in the last second, then a 429.
        for _ in 0..600 {
            now += Duration::from_micros(1600);
            c.record(now, Duration::from_millis(100), Signal::Fine);
        }
        c.record(now, Duration::from_millis(100), Signal::RateLimited);
        let r = c.rate().expect("learned");
        assert!((530.0..=545.0).contains(&r), "{r}");
        // More 429s of the same burst do not cut again within the second.
        c.record(now, Duration::from_millis(100), Signal::RateLimited);
        assert_eq!(c.rate(), Some(r));
        // A second without 429 in which pacing held requests back: +2%.
        c.paced();
        now += Duration::from_millis(1001);
        c.record(now, Duration::from_millis(100), Signal::Fine);
        let grown = c.rate().expect("still learned");
        assert!((grown / r - 1.02).abs() < 1e-9, "{grown} vs {r}");
        // Not binding: no growth.
        now += Duration::from_millis(1001);
        c.record(now, Duration::from_millis(100), Signal::Fine);
        assert_eq!(c.rate(), Some(grown));
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_spaces_requests_at_the_learned_rate() {
        let gate = Gate::new(64);
        lock(&gate.state).controller.rate = Some(10.0);
        let t0 = Instant::now();
        for _ in 0..5 {
            gate.pace().await;
        }
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_millis(450),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn the_gate_hands_out_at_most_the_limit_and_reopens_on_drop() {
        let gate = Gate::new(2);
        let a = gate.try_acquire().expect("first");
        let b = gate.try_acquire().expect("second");
        assert!(gate.try_acquire().is_none());
        drop(a);
        let c = gate.acquire().await.expect("freed");
        assert_eq!(gate.in_flight(), 2);
        gate.close();
        assert!(gate.acquire().await.is_none());
        drop((b, c));
        assert_eq!(gate.in_flight(), 0);
    }
}
