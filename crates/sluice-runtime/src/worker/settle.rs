//! Applying verbs: a verb that fails with a retryable error is tried again (the delivery is
//! handed back by the contract); one that still fails is recorded, and the lease running out
//! brings the message back.

use std::time::Duration;

use sluice_core::{DeadLetterReason, Delivery, Error};

use super::Pipeline;
use crate::observe::{Outcome, OutcomeKind};

/// A verb to apply.
#[derive(Debug, Clone)]
pub(crate) enum Verb {
    Ack,
    Retry(Duration),
    Release,
    DeadLetter(DeadLetterReason),
}

impl Verb {
    fn name(&self) -> &'static str {
        match self {
            Verb::Ack => "ack",
            Verb::Retry(_) => "retry",
            Verb::Release => "release",
            Verb::DeadLetter(_) => "dead_letter",
        }
    }
}

const VERB_TRIES: u32 = 3;

/// Applies `verb`, trying again on retryable errors.
pub(crate) async fn apply<D: Delivery>(mut delivery: D, verb: &Verb) -> Result<(), Error> {
    let mut tries = 0;
    loop {
        tries += 1;
        let result = match verb {
            Verb::Ack => delivery.ack().await,
            Verb::Retry(after) => delivery.retry(*after).await,
            Verb::Release => delivery.release().await,
            Verb::DeadLetter(reason) => delivery.dead_letter(reason.clone()).await,
        };
        match result {
            Ok(()) => return Ok(()),
            Err(failed) if failed.error.is_retryable() && tries < VERB_TRIES => {
                delivery = failed.delivery;
                tokio::time::sleep(Duration::from_millis(50 * u64::from(tries))).await;
            }
            Err(failed) => return Err(failed.error),
        }
    }
}

/// Applies `verb` and reports `kind` (or the verb's failure) to the stats and observer.
pub(crate) async fn settle<D: Delivery, H>(
    pipeline: &Pipeline<H>,
    delivery: D,
    verb: Verb,
    kind: OutcomeKind,
) {
    settle_with(pipeline, delivery, verb, kind, None).await;
}

/// [`settle`], with the result the handler left for the job's status. The job's status is
/// written before the verb: a verb that fails brings the message back, and the status
/// already says what its next delivery should do (skip a job that succeeded).
pub(crate) async fn settle_with<D: Delivery, H>(
    pipeline: &Pipeline<H>,
    delivery: D,
    verb: Verb,
    kind: OutcomeKind,
    result: Option<serde_json::Value>,
) {
    if let Some(lifecycle) = &pipeline.lifecycle {
        lifecycle.settled(delivery.message(), &kind, result).await;
    }
    let mut event = Outcome {
        topic: delivery.topic().to_string(),
        subscription: delivery.subscription().to_string(),
        id: delivery.message().id().to_string(),
        message_type: delivery.message().message_type().map(str::to_owned),
        attempt: delivery.attempt(),
        kind,
    };
    if let Err(err) = apply(delivery, &verb).await {
        tracing::warn!(subscription = %event.subscription, id = %event.id, verb = verb.name(), %err, "verb failed; the message will be delivered again when its lease runs out");
        event.kind = OutcomeKind::VerbFailed {
            verb: verb.name(),
            error: err.to_string(),
        };
    }
    pipeline.stats.record(&event.kind);
    crate::metrics::outcome(&event);
    if let Some(observer) = &pipeline.observer {
        // A panicking observer must not take the delivery's bookkeeping down with it.
        let call = std::panic::AssertUnwindSafe(|| observer.on_outcome(&event));
        if std::panic::catch_unwind(call).is_err() {
            tracing::error!(id = %event.id, "the worker's observer panicked");
        }
    }
}

/// Releases a delivery that was received during shutdown and never handled.
pub(crate) async fn release_unhandled<D: Delivery, H>(pipeline: &Pipeline<H>, delivery: D) {
    let labels = crate::metrics::Labels::of(&delivery);
    let _in_flight = super::process::InFlight::start(pipeline, labels);
    settle(pipeline, delivery, Verb::Release, OutcomeKind::Released).await;
}
