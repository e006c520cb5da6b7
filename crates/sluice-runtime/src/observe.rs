//! What a worker did: counters ([`WorkerStats`]) and a per-delivery event stream
//! ([`Observer`]) for tests, demos, and the metrics and tracing layers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutcomeKind {
    /// The handler succeeded and the delivery was acked.
    Acked,
    /// The handler failed (or panicked) and the delivery was retried after `after`.
    Retried {
        /// The backoff chosen.
        after: Duration,
        /// The handler's error.
        error: String,
    },
    /// Dead-lettered.
    DeadLettered {
        /// Why.
        reason: String,
    },
    /// Given back for another delivery without spending an attempt: unhandled at shutdown,
    /// or failed while the circuit breaker was open.
    Released,
    /// Its key was at its limit ([`KeyLimit`](crate::KeyLimit)) and the worker held as many
    /// parked deliveries as it may: retried after `after`, when the key's limits let it run.
    Deferred {
        /// When it comes back.
        after: Duration,
    },
    /// A duplicate already handled: acked without running the handler.
    DuplicateSkipped,
    /// Acked without running a handler (a message type no handler is registered for, under
    /// the `ack` policy).
    Skipped {
        /// Why.
        reason: String,
    },
    /// A duplicate whose first copy is still being handled: retried after the claim's
    /// remaining time.
    DuplicateInProgress {
        /// When it will be tried again.
        after: Duration,
    },
    /// A verb failed; the lease will run out and the message will come back.
    VerbFailed {
        /// The verb (`ack`, `retry`, …).
        verb: &'static str,
        /// The error.
        error: String,
    },
}

/// One delivery's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome {
    /// Topic.
    pub topic: String,
    /// Subscription.
    pub subscription: String,
    /// Message id.
    pub id: String,
    /// Message type, if any.
    pub message_type: Option<String>,
    /// Attempt of this delivery.
    pub attempt: u32,
    /// What happened.
    pub kind: OutcomeKind,
}

/// Receives every delivery outcome of a worker. Called on the worker's tasks: keep it quick.
pub trait Observer: Send + Sync + 'static {
    /// One outcome.
    fn on_outcome(&self, event: &Outcome);
}

impl<F: Fn(&Outcome) + Send + Sync + 'static> Observer for F {
    fn on_outcome(&self, event: &Outcome) {
        self(event)
    }
}

/// Counters of one worker, readable while it runs.
#[derive(Debug, Default)]
pub struct WorkerStats {
    delivered: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    released: AtomicU64,
    deferred: AtomicU64,
    duplicates_skipped: AtomicU64,
    duplicates_in_progress: AtomicU64,
    skipped: AtomicU64,
    timeouts: AtomicU64,
    lease_extensions: AtomicU64,
    panics: AtomicU64,
    verb_failures: AtomicU64,
    in_flight: AtomicU64,
    concurrency_limit: AtomicU64,
}

/// A snapshot of [`WorkerStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Deliveries received.
    pub delivered: u64,
    /// Acked after the handler succeeded.
    pub acked: u64,
    /// Retried after a failure.
    pub retried: u64,
    /// Dead-lettered.
    pub dead_lettered: u64,
    /// Released at shutdown.
    pub released: u64,
    /// Deferred to the broker while their key was at its limit.
    pub deferred: u64,
    /// Duplicates acked without running the handler.
    pub duplicates_skipped: u64,
    /// Duplicates retried because the first copy was in progress.
    pub duplicates_in_progress: u64,
    /// Acked without a handler (unknown type under the `ack` policy).
    pub skipped: u64,
    /// Handlers that ran past their timeout (counted as transient failures).
    pub timeouts: u64,
    /// Lease extensions made while handlers ran.
    pub lease_extensions: u64,
    /// Handler panics (counted as transient failures).
    pub panics: u64,
    /// Verbs that failed.
    pub verb_failures: u64,
    /// Deliveries being handled now.
    pub in_flight: u64,
    /// How many handlers may run at once now: the worker's concurrency, or where
    /// [`AdaptiveConcurrency`](crate::AdaptiveConcurrency) has taken it.
    pub concurrency_limit: u64,
}

impl WorkerStats {
    /// A snapshot of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            delivered: l(&self.delivered),
            acked: l(&self.acked),
            retried: l(&self.retried),
            dead_lettered: l(&self.dead_lettered),
            released: l(&self.released),
            deferred: l(&self.deferred),
            duplicates_skipped: l(&self.duplicates_skipped),
            duplicates_in_progress: l(&self.duplicates_in_progress),
            skipped: l(&self.skipped),
            timeouts: l(&self.timeouts),
            lease_extensions: l(&self.lease_extensions),
            panics: l(&self.panics),
            verb_failures: l(&self.verb_failures),
            in_flight: l(&self.in_flight),
            concurrency_limit: l(&self.concurrency_limit),
        }
    }

    pub(crate) fn delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_concurrency_limit(&self, limit: usize) {
        self.concurrency_limit
            .store(limit as u64, Ordering::Relaxed);
    }

    pub(crate) fn resumed(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn panicked(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn timed_out(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn lease_extended(&self) {
        self.lease_extensions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record(&self, kind: &OutcomeKind) {
        let counter = match kind {
            OutcomeKind::Acked => &self.acked,
            OutcomeKind::Retried { .. } => &self.retried,
            OutcomeKind::DeadLettered { .. } => &self.dead_lettered,
            OutcomeKind::Released => &self.released,
            OutcomeKind::Deferred { .. } => &self.deferred,
            OutcomeKind::DuplicateSkipped => &self.duplicates_skipped,
            OutcomeKind::DuplicateInProgress { .. } => &self.duplicates_in_progress,
            OutcomeKind::Skipped { .. } => &self.skipped,
            OutcomeKind::VerbFailed { .. } => &self.verb_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
