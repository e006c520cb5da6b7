//! Circuit breaker: when a subscription's handler fails too often (a downstream is down), the
//! worker stops pulling instead of burning every message's attempts into the DLQ.
//!
//! - **Closed**: deliveries are pulled as usual; each handler outcome is counted over the
//!   last `window`. Once at least `min_calls` outcomes are in the window and the share of
//!   failures reaches `failure_ratio`, it opens.
//! - **Open**: nothing is pulled for `cool_down`. A delivery pulled before and failing while
//!   the circuit is open is released (given back without spending an attempt where the
//!   backend does not count releases), not retried: the outage is not the message's fault.
//! - **Half-open**: `probes` deliveries are let through; one failure opens it again for
//!   another cool-down, `probes` successes close it. A probe's failure is retried as any
//!   failure (it spends an attempt): a message that fails whatever the downstream does still
//!   reaches its DLQ. A probe that never reports (a duplicate skipped, a cancelled job) frees
//!   its slot after a cool-down.
//!
//! Only transient failures count (errors, timeouts, panics); a permanent failure is the
//! message's own (it goes to the DLQ) and says nothing about the downstream. Time is tokio's
//! clock. The state is in the `sluice_circuit_state` gauge (0 closed, 1 half-open, 2 open)
//! and the logs.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// When a worker's circuit opens, and how it closes again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitBreaker {
    /// Outcomes counted over this long (10 s by default).
    pub window: Duration,
    /// Outcomes the window needs before the circuit may open (10 by default).
    pub min_calls: u32,
    /// The share of failures that opens it (0.5 by default).
    pub failure_ratio: f64,
    /// How long it stays open before probing (5 s by default).
    pub cool_down: Duration,
    /// Deliveries let through half-open; all must succeed to close (3 by default).
    pub probes: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            min_calls: 10,
            failure_ratio: 0.5,
            cool_down: Duration::from_secs(5),
            probes: 3,
        }
    }
}

impl CircuitBreaker {
    /// The defaults (see the fields).
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the window.
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }
    /// Sets the outcomes needed before it may open (at least 1).
    #[must_use]
    pub fn min_calls(mut self, calls: u32) -> Self {
        self.min_calls = calls.max(1);
        self
    }
    /// Sets the share of failures that opens it (clamped to 0..=1).
    #[must_use]
    pub fn failure_ratio(mut self, ratio: f64) -> Self {
        self.failure_ratio = ratio.clamp(0.0, 1.0);
        self
    }
    /// Sets the cool-down.
    #[must_use]
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }
    /// Sets the probes (at least 1).
    #[must_use]
    pub fn probes(mut self, probes: u32) -> Self {
        self.probes = probes.max(1);
        self
    }
}

/// Where a circuit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Pulling as usual.
    Closed,
    /// Letting a few probes through.
    HalfOpen,
    /// Not pulling.
    Open,
}

impl CircuitState {
    /// `closed`, `half_open` or `open`.
    pub fn name(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }
    fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }
}

struct Inner {
    state: CircuitState,
    /// Closed: the outcomes in the window (when, succeeded), and how many failed.
    outcomes: VecDeque<(Instant, bool)>,
    failures: u32,
    opened_at: Instant,
    /// Half-open: probes let through, how many succeeded, and when the last went out.
    probes_out: u32,
    probe_successes: u32,
    probe_at: Instant,
}

/// A worker's breaker.
pub(crate) struct Breaker {
    config: CircuitBreaker,
    subscription: String,
    // std Mutex: never held across an .await.
    inner: Mutex<Inner>,
    /// Wakes a half-open worker waiting for its probes' outcomes.
    changed: Notify,
}

impl Breaker {
    /// Where the circuit is now.
    pub(crate) fn state(&self) -> CircuitState {
        self.inner.lock().expect("breaker").state
    }

    pub(crate) fn new(config: CircuitBreaker, subscription: String) -> Self {
        crate::metrics::circuit(&subscription, CircuitState::Closed.gauge());
        // The fields are public: normalise what the builder methods would have.
        let config = CircuitBreaker {
            window: config.window.max(Duration::from_millis(1)),
            min_calls: config.min_calls.max(1),
            failure_ratio: if config.failure_ratio.is_nan() {
                0.5
            } else {
                config.failure_ratio.clamp(0.0, 1.0)
            },
            cool_down: config
                .cool_down
                .clamp(Duration::from_millis(10), Duration::from_secs(86_400)),
            probes: config.probes.max(1),
        };
        Self {
            config,
            subscription,
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                outcomes: VecDeque::new(),
                failures: 0,
                opened_at: Instant::now(),
                probes_out: 0,
                probe_successes: 0,
                probe_at: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("breaker")
    }

    fn set(&self, inner: &mut Inner, state: CircuitState, now: Instant) {
        inner.state = state;
        inner.outcomes.clear();
        inner.failures = 0;
        inner.probes_out = 0;
        inner.probe_successes = 0;
        if state == CircuitState::Open {
            inner.opened_at = now;
        }
        crate::metrics::circuit(&self.subscription, state.gauge());
        match state {
            CircuitState::Open => {
                tracing::warn!(subscription = %self.subscription, cool_down = ?self.config.cool_down, "circuit open: the handler keeps failing; nothing is pulled until the cool-down is over")
            }
            CircuitState::HalfOpen => {
                tracing::info!(subscription = %self.subscription, probes = self.config.probes, "circuit half-open: probing")
            }
            CircuitState::Closed => {
                tracing::info!(subscription = %self.subscription, "circuit closed: the handler succeeds again")
            }
        }
    }

    /// How many of `want` deliveries may be pulled now (at least 1), waiting while the
    /// circuit is open or its probes are out.
    pub(crate) async fn admit(&self, want: u32) -> u32 {
        loop {
            let notified = self.changed.notified();
            let wait = {
                let mut inner = self.lock();
                let now = Instant::now();
                match inner.state {
                    CircuitState::Closed => return want.max(1),
                    CircuitState::Open => {
                        let until = inner.opened_at + self.config.cool_down;
                        if now >= until {
                            self.set(&mut inner, CircuitState::HalfOpen, now);
                            continue;
                        }
                        until - now
                    }
                    CircuitState::HalfOpen => {
                        // A probe that never reports (skipped as a duplicate, say) must not
                        // hold the circuit half-open: after a cool-down, probe again.
                        let stale = inner.probe_at + self.config.cool_down;
                        if now >= stale {
                            inner.probes_out = inner.probe_successes;
                        }
                        let left = self.config.probes.saturating_sub(inner.probes_out);
                        if left > 0 {
                            let n = left.min(want.max(1));
                            inner.probes_out += n;
                            inner.probe_at = now;
                            return n;
                        }
                        stale.saturating_duration_since(now)
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = notified => {}
            }
        }
    }

    /// Admitted deliveries the backend did not return (fewer than asked).
    pub(crate) fn unused(&self, n: u32) {
        if n == 0 {
            return;
        }
        let mut inner = self.lock();
        if inner.state == CircuitState::HalfOpen {
            inner.probes_out = inner.probes_out.saturating_sub(n);
            drop(inner);
            self.changed.notify_waiters();
        }
    }

    /// A handler outcome (only transient failures count as failures). Returns whether a
    /// failure is to be released rather than retried: a delivery pulled before the circuit
    /// opened, failing while it is open.
    pub(crate) fn record(&self, succeeded: bool) -> bool {
        let mut inner = self.lock();
        let now = Instant::now();
        let release = inner.state == CircuitState::Open && !succeeded;
        match inner.state {
            CircuitState::Closed => {
                inner.outcomes.push_back((now, succeeded));
                inner.failures += u32::from(!succeeded);
                while let Some(&(at, ok)) = inner.outcomes.front() {
                    if now.duration_since(at) <= self.config.window {
                        break;
                    }
                    inner.outcomes.pop_front();
                    inner.failures -= u32::from(!ok);
                }
                let calls = inner.outcomes.len() as u32;
                if !succeeded
                    && calls >= self.config.min_calls
                    && f64::from(inner.failures) / f64::from(calls) >= self.config.failure_ratio
                {
                    self.set(&mut inner, CircuitState::Open, now);
                }
            }
            CircuitState::HalfOpen => {
                if succeeded {
                    inner.probe_successes += 1;
                    if inner.probe_successes >= self.config.probes {
                        self.set(&mut inner, CircuitState::Closed, now);
                    }
                } else {
                    self.set(&mut inner, CircuitState::Open, now);
                }
            }
            // A delivery pulled before the circuit opened: it says nothing new.
            CircuitState::Open => {}
        }
        drop(inner);
        self.changed.notify_waiters();
        release
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn public_fields_out_of_range_are_normalised() {
        let breaker = Breaker::new(
            CircuitBreaker {
                window: Duration::ZERO,
                min_calls: 0,
                failure_ratio: f64::NAN,
                cool_down: Duration::MAX,
                probes: 0,
            },
            "orders".into(),
        );
        assert!(
            !breaker.record(false),
            "the failure that opens it is retried"
        );
        assert!(breaker.record(false), "one while it is open is released");
        let start = Instant::now();
        assert_eq!(breaker.admit(5).await, 1, "at least one probe");
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(86_400),
            "a day at most"
        );
        assert!(!breaker.record(true), "a probe's outcome is never released");
        assert_eq!(
            breaker.admit(5).await,
            5,
            "one success of one probe closes it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_reports_frees_its_slot_after_a_cool_down() {
        let breaker = Breaker::new(
            CircuitBreaker::new()
                .min_calls(1)
                .probes(1)
                .cool_down(Duration::from_secs(5)),
            "orders".into(),
        );
        breaker.record(false);
        assert_eq!(breaker.admit(3).await, 1, "half-open after the cool-down");
        let start = Instant::now();
        assert_eq!(
            breaker.admit(3).await,
            1,
            "another probe once the first is stale"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
