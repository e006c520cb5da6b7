//! Metrics, through the `metrics` facade: install any recorder (the Prometheus exporter
//! behind the `prometheus` feature, see [`install_prometheus`]) and these are recorded.
//! Names and labels are listed in `docs/observability.md`; keep the two in step.
//!
//! Labels: `topic`, `subscription` (consumer side), `type` (the message type, empty when
//! unset). Keep message types a small set: every value is a new series.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

use crate::observe::{Outcome, OutcomeKind};

/// Messages published (`outcome` = `published` or `duplicate`).
pub const PUBLISHED: &str = "sluice_published_total";
/// Publishes that failed.
pub const PUBLISH_ERRORS: &str = "sluice_publish_errors_total";
/// Deliveries received by workers.
pub const DELIVERED: &str = "sluice_delivered_total";
/// Deliveries acked after their handler succeeded.
pub const ACKED: &str = "sluice_acked_total";
/// Deliveries retried after a failure.
pub const RETRIED: &str = "sluice_retried_total";
/// Deliveries released unhandled (shutdown, hard cap).
pub const RELEASED: &str = "sluice_released_total";
/// Deliveries dead-lettered (`reason` label).
pub const DEAD_LETTERED: &str = "sluice_dead_lettered_total";
/// Duplicates acked without running the handler.
pub const DUPLICATES_SKIPPED: &str = "sluice_duplicates_skipped_total";
/// Duplicates retried because their first copy was in progress.
pub const DUPLICATES_IN_PROGRESS: &str = "sluice_duplicates_in_progress_total";
/// Deliveries acked without a handler (unknown type under the `ack` policy).
pub const SKIPPED: &str = "sluice_skipped_total";
/// Verbs that failed (`verb` label).
pub const VERB_FAILURES: &str = "sluice_verb_failures_total";
/// Lease extensions made while handlers ran.
pub const LEASE_EXTENSIONS: &str = "sluice_lease_extensions_total";
/// Handler run time in seconds (`outcome` = `ok`, `error`, `panic`, `timeout`, `abandoned`,
/// `rate_limited`).
pub const HANDLER_DURATION: &str = "sluice_handler_duration_seconds";
/// Deliveries being handled now.
pub const IN_FLIGHT: &str = "sluice_in_flight";
/// A worker's circuit breaker: 0 closed, 1 half-open, 2 open.
pub const CIRCUIT_STATE: &str = "sluice_circuit_state";
/// Deliveries deferred to the broker because their key was at its limit.
pub const DEFERRED: &str = "sluice_deferred_total";
/// Deliveries a worker holds parked until their key's limits let them run.
pub const PARKED: &str = "sluice_parked";
/// How many handlers a worker with adaptive concurrency lets run at once now.
pub const CONCURRENCY_LIMIT: &str = "sluice_concurrency_limit";

/// Messages per batch handed to a batch handler (`topic`, `subscription`).
pub const BATCH_SIZE: &str = "sluice_batch_size";
/// Batch handler run time in seconds (`outcome` = `ok`, `error`, `panic`, `timeout`,
/// `abandoned`; `ok` when the handler returned per-message results).
pub const BATCH_DURATION: &str = "sluice_batch_duration_seconds";

/// The labels of a consumer-side series.
#[derive(Debug, Clone)]
pub(crate) struct Labels {
    pub(crate) topic: String,
    pub(crate) subscription: String,
    pub(crate) message_type: String,
}

impl Labels {
    /// The labels of a delivery.
    pub(crate) fn of<D: sluice_core::Delivery>(delivery: &D) -> Self {
        Self {
            topic: delivery.topic().to_string(),
            subscription: delivery.subscription().to_string(),
            message_type: delivery
                .message()
                .message_type()
                .unwrap_or_default()
                .to_owned(),
        }
    }

    fn pairs(&self) -> [(&'static str, String); 3] {
        [
            ("topic", self.topic.clone()),
            ("subscription", self.subscription.clone()),
            ("type", self.message_type.clone()),
        ]
    }
}

pub(crate) fn published(topic: &str, message_type: &str, duplicate: bool) {
    let outcome = if duplicate { "duplicate" } else { "published" };
    counter!(PUBLISHED, "topic" => topic.to_owned(), "type" => message_type.to_owned(), "outcome" => outcome).increment(1);
}

pub(crate) fn publish_error(topic: &str, message_type: &str) {
    counter!(PUBLISH_ERRORS, "topic" => topic.to_owned(), "type" => message_type.to_owned())
        .increment(1);
}

pub(crate) fn delivered(labels: &Labels) {
    counter!(DELIVERED, &labels.pairs()).increment(1);
    gauge!(IN_FLIGHT, "topic" => labels.topic.clone(), "subscription" => labels.subscription.clone()).increment(1.0);
}

pub(crate) fn resumed(labels: &Labels) {
    gauge!(IN_FLIGHT, "topic" => labels.topic.clone(), "subscription" => labels.subscription.clone()).increment(1.0);
}

pub(crate) fn finished(labels: &Labels) {
    gauge!(IN_FLIGHT, "topic" => labels.topic.clone(), "subscription" => labels.subscription.clone()).decrement(1.0);
}

pub(crate) fn handler_ran(labels: &Labels, outcome: &'static str, took: Duration) {
    let mut pairs = labels.pairs().to_vec();
    pairs.push(("outcome", outcome.to_owned()));
    histogram!(HANDLER_DURATION, &pairs).record(took.as_secs_f64());
}

pub(crate) fn batch_ran(
    topic: &str,
    subscription: &str,
    size: usize,
    outcome: &'static str,
    took: Duration,
) {
    histogram!(BATCH_SIZE, "topic" => topic.to_owned(), "subscription" => subscription.to_owned())
        .record(size as f64);
    histogram!(BATCH_DURATION, "topic" => topic.to_owned(), "subscription" => subscription.to_owned(), "outcome" => outcome)
        .record(took.as_secs_f64());
}

pub(crate) fn circuit(subscription: &str, state: f64) {
    gauge!(CIRCUIT_STATE, "subscription" => subscription.to_owned()).set(state);
}

pub(crate) fn concurrency_limit(subscription: &str, limit: usize) {
    gauge!(CONCURRENCY_LIMIT, "subscription" => subscription.to_owned()).set(limit as f64);
}

pub(crate) fn parked(subscription: &str, now: usize) {
    gauge!(PARKED, "subscription" => subscription.to_owned()).set(now as f64);
}

pub(crate) fn lease_extended(labels: &Labels) {
    counter!(LEASE_EXTENSIONS, &labels.pairs()).increment(1);
}

/// Counts one delivery outcome.
pub(crate) fn outcome(event: &Outcome) {
    let labels = Labels {
        topic: event.topic.clone(),
        subscription: event.subscription.clone(),
        message_type: event.message_type.clone().unwrap_or_default(),
    };
    let mut pairs = labels.pairs().to_vec();
    let name = match &event.kind {
        OutcomeKind::Acked => ACKED,
        OutcomeKind::Retried { .. } => RETRIED,
        OutcomeKind::Released => RELEASED,
        OutcomeKind::Deferred { .. } => DEFERRED,
        OutcomeKind::DeadLettered { reason } => {
            pairs.push(("reason", reason_label(reason).to_owned()));
            DEAD_LETTERED
        }
        OutcomeKind::DuplicateSkipped => DUPLICATES_SKIPPED,
        OutcomeKind::DuplicateInProgress { .. } => DUPLICATES_IN_PROGRESS,
        OutcomeKind::Skipped { .. } => SKIPPED,
        OutcomeKind::VerbFailed { verb, .. } => {
            pairs.push(("verb", (*verb).to_owned()));
            VERB_FAILURES
        }
    };
    counter!(name, &pairs).increment(1);
}

/// A bounded label for a dead-letter reason (the free text stays in the envelope).
fn reason_label(reason: &str) -> &'static str {
    if reason.starts_with("max attempts") {
        "max_attempts"
    } else if reason.starts_with("undecodable") {
        "undecodable"
    } else if reason.starts_with("unknown message type") {
        "unknown_type"
    } else if reason.starts_with("permanent") {
        "permanent"
    } else {
        "other"
    }
}

/// Installs a Prometheus recorder and serves `/metrics` on `addr` (feature `prometheus`).
#[cfg(feature = "prometheus")]
pub fn install_prometheus(
    addr: std::net::SocketAddr,
) -> Result<(), metrics_exporter_prometheus::BuildError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(HANDLER_DURATION.to_owned()),
            &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0],
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(BATCH_DURATION.to_owned()),
            &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0],
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(BATCH_SIZE.to_owned()),
            &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0],
        )?
        .install()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_is_listed_in_the_docs() {
        let doc = include_str!("../../../docs/observability.md");
        for name in [
            super::PUBLISHED,
            super::PUBLISH_ERRORS,
            super::DELIVERED,
            super::ACKED,
            super::RETRIED,
            super::RELEASED,
            super::DEFERRED,
            super::PARKED,
            super::CONCURRENCY_LIMIT,
            super::CIRCUIT_STATE,
            super::DEAD_LETTERED,
            super::DUPLICATES_SKIPPED,
            super::DUPLICATES_IN_PROGRESS,
            super::SKIPPED,
            super::VERB_FAILURES,
            super::LEASE_EXTENSIONS,
            super::HANDLER_DURATION,
            super::IN_FLIGHT,
            super::BATCH_SIZE,
            super::BATCH_DURATION,
        ] {
            assert!(
                doc.contains(&format!("| `{name}` |")),
                "docs/observability.md does not list {name}"
            );
        }
    }
}
