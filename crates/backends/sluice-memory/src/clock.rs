//! The backend's clock: one origin for instants and wall-clock times, so that tests running
//! under `tokio::time::pause()` control both.
//!
//! Invariants:
//! - `now_system() = base_system + (tokio::time::Instant::now() - base_instant)`, both bases
//!   captured once when the backend is created. It never goes backwards (tokio's `Instant`
//!   is monotonic), so publish times in a topic log are sorted.
//! - A wall-clock time (a message's `deliver_at`) is turned into an instant by its distance
//!   from `now_system()`, never by reading `SystemTime::now()` again.
//! - Every instant is finite: a delay too large for `Instant` becomes thirty years (as
//!   tokio's own "far future"), which is as good as never for an in-process backend.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Thirty years: the stand-in for a delay that does not fit in an `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The backend's clock (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base_system: SystemTime,
    base_instant: Instant,
}

impl Clock {
    /// A clock whose origin is now.
    pub(crate) fn new() -> Self {
        Self {
            base_system: SystemTime::now(),
            base_instant: Instant::now(),
        }
    }

    /// The current instant (tokio's clock: paused in tests).
    pub(crate) fn now(&self) -> Instant {
        Instant::now()
    }

    /// The wall-clock time of an instant.
    pub(crate) fn system_at(&self, at: Instant) -> SystemTime {
        self.base_system + at.saturating_duration_since(self.base_instant)
    }

    /// The current wall-clock time, on the backend's clock. (Operations read the time once,
    /// as an instant, and convert it with [`system_at`](Self::system_at).)
    #[cfg(test)]
    pub(crate) fn now_system(&self) -> SystemTime {
        self.system_at(self.now())
    }

    /// `now + delay`, saturating at the far future.
    pub(crate) fn after(&self, now: Instant, delay: Duration) -> Instant {
        now.checked_add(delay).unwrap_or_else(|| now + FAR_FUTURE)
    }

    /// The instant at which the wall-clock time `at` falls, if it is later than `now`.
    pub(crate) fn due(&self, now: Instant, at: SystemTime) -> Option<Instant> {
        let delay = at.duration_since(self.system_at(now)).ok()?;
        (!delay.is_zero()).then(|| self.after(now, delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wall_clock_follows_the_paused_tokio_clock() {
        let clock = Clock::new();
        let start = clock.now_system();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(
            clock.now_system().duration_since(start).unwrap(),
            Duration::from_secs(90),
            "advancing tokio's clock advances the backend's wall clock by the same amount"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_time_converts_to_an_instant_by_its_distance_from_now() {
        let clock = Clock::new();
        let now = clock.now();
        let in_ten = clock.now_system() + Duration::from_secs(10);
        assert_eq!(clock.due(now, in_ten), Some(now + Duration::from_secs(10)));
        assert_eq!(
            clock.due(now, clock.now_system() - Duration::from_secs(1)),
            None,
            "a time in the past is due at once"
        );
        let never = clock.due(
            now,
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 4),
        );
        assert!(
            never.is_some(),
            "an absurdly late time is still in the future"
        );
    }
}
