//! What a backend's test file provides: a [`Harness`] (how to connect, how long things take
//! on this backend, and the optional hooks for connection loss and broker restarts).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use sluice_core::{Backend, Result};

/// Per-backend durations. The suite runs in real time against the real broker, so every wait
/// is expressed in these: short for in-process backends, whole seconds for SQS.
///
/// Build one with [`Timing::new`] (or [`Timing::in_process`]) and adjust it with the
/// `with_*` methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timing {
    /// The lease given to subscriptions in scenarios that let a lease run out.
    pub lease: Duration,
    /// A short delay: for `retry(after)` and delayed publishes.
    pub delay: Duration,
    /// How long to watch before concluding that something does *not* arrive.
    pub settle: Duration,
    /// The longest wait for something that must happen (a delivery, a stats update).
    pub deadline: Duration,
    /// The longest wait for a backend to recover from a connection loss or a broker restart.
    pub recovery: Duration,
    /// How much earlier than asked a redelivery may arrive and still count as "no earlier"
    /// (clock reads on both sides, timer rounding).
    pub tolerance: Duration,
}

impl Timing {
    /// Durations derived from a lease and a short delay: `settle = delay`,
    /// `deadline = max(10 × lease, 5 s)`, `recovery = 30 s`, `tolerance = 50 ms`.
    pub fn new(lease: Duration, delay: Duration) -> Self {
        Self {
            lease,
            delay,
            settle: delay,
            deadline: (lease * 10).max(Duration::from_secs(5)),
            recovery: Duration::from_secs(30),
            tolerance: Duration::from_millis(50),
        }
    }

    /// Durations for an in-process backend: lease 300 ms, delay 200 ms, settle 200 ms,
    /// deadline 5 s, recovery 10 s, tolerance 10 ms.
    pub fn in_process() -> Self {
        Self::new(Duration::from_millis(300), Duration::from_millis(200))
            .with_recovery(Duration::from_secs(10))
            .with_tolerance(Duration::from_millis(10))
    }

    /// Sets [`settle`](Self::settle).
    #[must_use]
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Sets [`deadline`](Self::deadline).
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Sets [`recovery`](Self::recovery).
    #[must_use]
    pub fn with_recovery(mut self, recovery: Duration) -> Self {
        self.recovery = recovery;
        self
    }

    /// Sets [`tolerance`](Self::tolerance).
    #[must_use]
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// How long one scenario may run before it is declared hung: generous, it only exists
    /// so a stuck backend fails its test instead of stalling the whole run.
    pub fn scenario_limit(&self) -> Duration {
        self.deadline * 8 + self.recovery * 2 + self.lease * 8
    }

    /// The interval between two polls of a condition (stats, DLQ listings).
    pub fn poll_interval(&self) -> Duration {
        (self.deadline / 100).clamp(Duration::from_millis(10), Duration::from_millis(500))
    }
}

/// How the suite reaches one backend. A backend's `tests/conformance.rs` implements it and
/// calls [`conformance_tests!`](crate::conformance_tests).
///
/// Each test gets its own harness (the macro evaluates the constructor once per test), and
/// every scenario uses fresh, unique topic and subscription names, so tests may run in
/// parallel against one broker.
pub trait Harness: Send + Sync + 'static {
    /// The backend under test.
    type Backend: Backend;

    /// The backend's name, as printed in `SKIPPED <backend>::<scenario>` lines.
    fn name(&self) -> &'static str;

    /// A fresh handle to the same broker: a new connection for networked backends, a clone
    /// sharing the same state for in-process ones. Called once per "process" a scenario
    /// simulates (competing consumers, a consumer replacing a closed one).
    fn connect(&self) -> impl Future<Output = Result<Self::Backend>> + Send;

    /// The durations to use with this backend.
    fn timing(&self) -> Timing;

    /// The broker's TCP address, for the connection-loss scenario's proxy. `None` (the
    /// default) skips that scenario.
    fn broker_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// Why this backend does not pass `scenario` yet, or `None` (the default). A scenario
    /// named here is skipped with the reason printed (`SKIPPED`), never passed: each one is
    /// an open defect, listed in the backend's docs until it is fixed.
    fn known_defect(&self, scenario: &str) -> Option<&'static str> {
        let _ = scenario;
        None
    }

    /// A handle that reaches the broker through `proxy_addr` instead of
    /// [`broker_addr`](Self::broker_addr). `None` (the default) skips the connection-loss
    /// scenario.
    fn connect_through(
        &self,
        proxy_addr: SocketAddr,
    ) -> impl Future<Output = Option<Result<Self::Backend>>> + Send {
        let _ = proxy_addr;
        async { None }
    }

    /// Stops and restarts the broker, keeping its data; returns once it accepts
    /// connections again. `None` (the default) skips the broker-restart scenario. The
    /// generated tests run that scenario alone (see
    /// [`EXCLUSIVE`](crate::scenarios::EXCLUSIVE)), so a restart never breaks another one.
    fn restart_broker(&self) -> impl Future<Output = Option<Result<()>>> + Send {
        async { None }
    }
}
