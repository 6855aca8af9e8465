//! The delivery engine's one clock.
//!
//! Owns: "now" for everything delivery decides by time: which deliveries are due
//! (`claim_due`), retry times and the give-up deadline (`policy`), partner age limits,
//! the breaker's cool-down and the idle waits. Never: reads the wall clock after it
//! was made.
//!
//! The wall clock is read once, when the clock is made; from then on time advances
//! with tokio's monotonic clock. So a step of the system clock (NTP correcting a
//! wrong boot time, an operator's `date -s`) neither releases every retry at once nor
//! makes every delivery look past `give_up_after`; the step takes effect at the next
//! start. The monotonic clock still follows NTP's rate corrections (only steps are
//! ignored) and stands still while the machine is suspended. The relay stamps accepts
//! and purges dedupe marks with the same clock, so dedupe windows do not all expire
//! at a step either. And under `tokio::time::pause` the whole engine runs on paused time: tests
//! advance it instead of sleeping.

use tokio::time::Instant;

/// Wall time in Unix milliseconds, advancing with tokio's monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Unix milliseconds at `anchor`.
    wall_at_anchor_ms: i64,
    anchor: Instant,
}

impl Clock {
    /// Reads the system's wall clock now, once.
    pub fn system() -> Clock {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Clock::starting_at(wall)
    }

    /// A clock that reads `wall_ms` (Unix milliseconds) now.
    pub fn starting_at(wall_ms: i64) -> Clock {
        Clock {
            wall_at_anchor_ms: wall_ms,
            anchor: Instant::now(),
        }
    }

    /// Unix milliseconds now.
    pub fn now_ms(&self) -> i64 {
        let elapsed = Instant::now().saturating_duration_since(self.anchor);
        let elapsed = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
        self.wall_at_anchor_ms.saturating_add(elapsed)
    }

    /// The monotonic instant now (for the breaker and waits).
    pub fn instant(&self) -> Instant {
        Instant::now()
    }

    /// Now as a UTC date and time (for callers that stamp events with it).
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(self.now_ms()).unwrap_or_default()
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn time_moves_with_the_monotonic_clock_not_the_wall_clock() {
        let clock = Clock::starting_at(1_000_000);
        assert_eq!(clock.now_ms(), 1_000_000);
        // Three days pass on the monotonic clock while the wall clock (real time) moves
        // by microseconds: the relay's "now" follows the monotonic clock.
        tokio::time::advance(Duration::from_secs(3 * 86_400)).await;
        assert_eq!(clock.now_ms(), 1_000_000 + 3 * 86_400_000);
        assert_eq!(clock.now().timestamp_millis(), clock.now_ms());
    }

    #[tokio::test(start_paused = true)]
    async fn a_system_clock_reads_the_wall_clock_once() {
        let before = chrono::Utc::now().timestamp_millis();
        let clock = Clock::system();
        let after = chrono::Utc::now().timestamp_millis();
        let at_start = clock.now_ms();
        assert!(
            (before..=after).contains(&at_start),
            "{before} {at_start} {after}"
        );
        // Paused: however much real time passes, the clock does not move.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(clock.now_ms(), at_start);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now_ms(), at_start + 1500);
    }
}
