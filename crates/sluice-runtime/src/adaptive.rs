//! Adaptive concurrency: a worker finds how many handlers the downstream takes at once from
//! the latency it observes, instead of a number fixed in advance.
//!
//! A downstream with capacity C (C requests served at once) answers in its own time up to C
//! in flight; past C, requests queue and latency grows with the queue (C + k in flight take
//! about (C + k) / C times as long). The limit follows a gradient on latency, as Netflix's
//! concurrency-limits and Envoy's adaptive concurrency do:
//!
//! - each **window** (`max(limit, 5)` handler runs, or a second) gives a sample: the mean
//!   latency of its runs, compared with the **least latency** seen (the downstream unloaded);
//! - latency within `1 + increase_below` of the least (5 % by default) and the limit in use
//!   (at least 80 % of it ran at once): **one more**;
//! - latency past `1 + decrease_above` (15 % by default): the limit is scaled down by the
//!   gradient, `limit × (1 + increase_below) / ratio`, at most halved at once;
//! - a window with transient failures past 10 % of its runs (timeouts, 503s): × 0.9;
//! - in between: unchanged. Bounded by `min` and `max` always.
//!
//! So the limit settles where latency is 5–15 % above the unloaded one: C to 1.15 C. Every
//! `probe_every` (30 s) one window runs at half the limit and its least latency replaces the
//! one kept, so a downstream that became slower (or faster) for good is followed.
//!
//! The limit is in the `sluice_concurrency_limit` gauge and [`StatsSnapshot`]'s
//! `concurrency_limit`; [`WorkerBuilder::concurrency`](crate::WorkerBuilder::concurrency) is
//! its initial value.
//!
//! [`StatsSnapshot`]: crate::StatsSnapshot

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::observe::WorkerStats;

/// How a worker's concurrency adapts: see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveConcurrency {
    /// The least the limit goes (1 by default).
    pub min: usize,
    /// The most the limit goes (256 by default).
    pub max: usize,
    /// Latency within this share above the least seen lets the limit grow (0.05).
    pub increase_below: f64,
    /// Latency past this share above the least seen shrinks the limit (0.15).
    pub decrease_above: f64,
    /// How often the least latency is measured again (30 s).
    pub probe_every: Duration,
}

impl Default for AdaptiveConcurrency {
    fn default() -> Self {
        Self {
            min: 1,
            max: 256,
            increase_below: 0.05,
            decrease_above: 0.15,
            probe_every: Duration::from_secs(30),
        }
    }
}

impl AdaptiveConcurrency {
    /// The defaults (see the fields).
    pub fn new() -> Self {
        Self::default()
    }
    /// The least the limit goes (at least 1).
    #[must_use]
    pub fn min(mut self, min: usize) -> Self {
        self.min = min.max(1);
        self.max = self.max.max(self.min);
        self
    }
    /// The most the limit goes (at least `min`).
    #[must_use]
    pub fn max(mut self, max: usize) -> Self {
        self.max = max.max(self.min);
        self
    }
}

/// The least number of runs in a window.
const MIN_WINDOW_RUNS: usize = 5;
/// The longest a window lasts when it has a run.
const MAX_WINDOW: Duration = Duration::from_secs(1);
/// The share of failures in a window that shrinks the limit.
const FAILURE_SHARE: f64 = 0.1;

struct Window {
    started: Instant,
    runs: usize,
    successes: usize,
    failures: usize,
    total: Duration,
    least: Option<Duration>,
    /// The most running at once during the window.
    peak: usize,
    /// This window measures the least latency again (at half the limit).
    probing: bool,
}

impl Window {
    fn new(probing: bool) -> Self {
        Self {
            started: Instant::now(),
            runs: 0,
            successes: 0,
            failures: 0,
            total: Duration::ZERO,
            least: None,
            peak: 0,
            probing,
        }
    }
}

struct State {
    limit: f64,
    least: Option<Duration>,
    window: Window,
    probed_at: Instant,
    /// The limit before a probe window halved it.
    before_probe: f64,
}

/// A pulled delivery's place under the limit, given back when dropped.
pub(crate) struct Claim(Arc<Controller>);

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
        self.0.finished.notify_waiters();
    }
}

/// A worker's adaptive limit.
pub(crate) struct Controller {
    config: AdaptiveConcurrency,
    subscription: String,
    stats: Arc<WorkerStats>,
    // std Mutex: never held across an .await.
    state: Mutex<State>,
    running: AtomicUsize,
    limit: AtomicU32,
    /// Woken when a claim is given back (room may have appeared).
    pub(crate) finished: Notify,
}

impl Controller {
    pub(crate) fn new(
        config: AdaptiveConcurrency,
        initial: usize,
        subscription: String,
        stats: Arc<WorkerStats>,
    ) -> Self {
        let mut config = config;
        config.min = config.min.max(1);
        config.max = config.max.max(config.min);
        let initial = initial.clamp(config.min, config.max);
        crate::metrics::concurrency_limit(&subscription, initial);
        stats.set_concurrency_limit(initial);
        Self {
            config,
            subscription,
            stats,
            state: Mutex::new(State {
                limit: initial as f64,
                least: None,
                window: Window::new(false),
                probed_at: Instant::now(),
                before_probe: initial as f64,
            }),
            running: AtomicUsize::new(0),
            limit: AtomicU32::new(initial as u32),
            finished: Notify::new(),
        }
    }

    /// The limit now.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed) as usize
    }

    /// How many more may start now.
    pub(crate) fn room(&self) -> usize {
        self.limit()
            .saturating_sub(self.running.load(Ordering::Relaxed))
    }

    /// `n` deliveries were pulled: each holds a place until its [`Claim`] is dropped.
    pub(crate) fn claim(self: &Arc<Self>, n: usize) -> Vec<Claim> {
        let now = self.running.fetch_add(n, Ordering::Relaxed) + n;
        let mut state = self.state.lock().expect("adaptive");
        state.window.peak = state.window.peak.max(now);
        drop(state);
        (0..n).map(|_| Claim(self.clone())).collect()
    }

    /// A handler ran for `took`; `failed`: a transient failure (a timeout, an error). Only
    /// successes say what the downstream's latency is.
    pub(crate) fn sample(&self, took: Duration, failed: bool) {
        let mut guard = self.state.lock().expect("adaptive");
        let state = &mut *guard;
        let window = &mut state.window;
        // A probe measures runs started at half the limit, not those before it.
        let started = Instant::now().checked_sub(took);
        if window.probing && started.is_none_or(|at| at < window.started) {
            if window.started.elapsed() >= MAX_WINDOW {
                self.close_window(state);
            }
            return;
        }
        window.runs += 1;
        if failed {
            window.failures += 1;
        } else {
            window.successes += 1;
            window.total += took;
            window.least = Some(window.least.map_or(took, |l| l.min(took)));
        }
        let full = window.runs >= (state.limit as usize).max(MIN_WINDOW_RUNS);
        if full || window.started.elapsed() >= MAX_WINDOW {
            self.close_window(state);
        }
    }

    fn close_window(&self, state: &mut State) {
        let config = self.config;
        let window = std::mem::replace(&mut state.window, Window::new(false));
        let mean = window.total / window.successes.max(1) as u32;
        let was = state.limit;
        if window.runs < MIN_WINDOW_RUNS && !window.probing {
            // Closed by time with too few runs to say anything (after an idle spell).
        } else if window.probing {
            // The least latency at half the limit replaces the one kept.
            if window.least.is_some() {
                state.least = window.least;
            }
            state.limit = state.before_probe;
        } else if window.failures as f64 > FAILURE_SHARE * window.runs as f64 {
            state.limit *= 0.9;
        } else {
            if let Some(least) = window.least {
                state.least = Some(state.least.map_or(least, |l| l.min(least)));
            }
            if let Some(least) = state.least.filter(|l| !l.is_zero()) {
                let ratio = mean.as_secs_f64() / least.as_secs_f64();
                if ratio > 1.0 + config.decrease_above {
                    let scaled = state.limit * (1.0 + config.increase_below) / ratio;
                    state.limit = scaled.max(state.limit / 2.0);
                } else if ratio < 1.0 + config.increase_below
                    && window.peak as f64 >= 0.8 * state.limit
                {
                    state.limit += 1.0;
                }
            }
        }
        state.limit = state.limit.clamp(config.min as f64, config.max as f64);
        if state.probed_at.elapsed() >= config.probe_every && !window.probing {
            state.probed_at = Instant::now();
            state.before_probe = state.limit;
            state.limit = (state.limit / 2.0).max(config.min as f64);
            state.window.probing = true;
        }
        let limit = state.limit.round() as usize;
        if limit != was.round() as usize {
            tracing::debug!(subscription = %self.subscription, limit, mean = ?mean, least = ?state.least, "adaptive concurrency limit changed");
        }
        self.limit.store(limit as u32, Ordering::Relaxed);
        crate::metrics::concurrency_limit(&self.subscription, limit);
        self.stats.set_concurrency_limit(limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller(initial: usize) -> Arc<Controller> {
        let config = AdaptiveConcurrency::new().min(2).max(50);
        Arc::new(Controller::new(config, initial, "s".into(), Arc::default()))
    }

    /// One full window of `runs` taking `took` each, with the limit in use.
    fn window(c: &Arc<Controller>, took: Duration, failed: bool) {
        let runs = c.limit().max(MIN_WINDOW_RUNS);
        let claims = c.claim(c.limit());
        for _ in 0..runs {
            c.sample(took, failed);
        }
        drop(claims);
    }

    #[tokio::test(start_paused = true)]
    async fn unloaded_latency_grows_the_limit_and_queueing_shrinks_it() {
        let c = controller(10);
        window(&c, Duration::from_millis(100), false);
        window(&c, Duration::from_millis(100), false);
        assert_eq!(c.limit(), 12, "one more per window at the least latency");
        window(&c, Duration::from_millis(200), false);
        assert_eq!(c.limit(), 6, "twice the least latency: halved at most");
        window(&c, Duration::from_millis(110), false);
        assert_eq!(c.limit(), 6, "between the thresholds: unchanged");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_shrink_the_limit_down_to_its_minimum() {
        let c = controller(10);
        window(&c, Duration::from_millis(100), true);
        assert_eq!(c.limit(), 9);
        for _ in 0..50 {
            window(&c, Duration::from_millis(100), true);
        }
        assert_eq!(c.limit(), 2, "never below min");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_worker_does_not_grow_its_limit() {
        let c = controller(10);
        for _ in 0..5 {
            let claims = c.claim(2);
            for _ in 0..10 {
                c.sample(Duration::from_millis(100), false);
            }
            drop(claims);
        }
        assert_eq!(
            c.limit(),
            10,
            "2 of 10 in use: no sign the downstream takes more"
        );
    }
}
