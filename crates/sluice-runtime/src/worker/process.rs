//! The pipeline one delivery goes through, in this order (each stage is its own module):
//!
//! 1. **max attempts** — `attempt > max_attempts` ⇒ dead-letter before any handler runs (the
//!    only defence against a message that crashes the process).
//! 2. **decode** ([`Handler::decode`]) — an undecodable payload ⇒ dead-letter with the reason.
//! 3. **idempotency** ([`crate::idempotency`]) — done ⇒ ack and skip; in progress ⇒ retry
//!    after the claim's remaining time; else claim for the lease.
//! 4. **handler** under panic recovery ([`crate::recover`]), cancelled at hard stop.
//! 5. **retry policy** ([`crate::retry`]) ⇒ ack, retry with backoff, or dead-letter.
//! 6. **idempotency** — done marker written *before* the ack; claim dropped on retry or
//!    dead-letter.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{DeadLetterReason, Delivery, IdempotencyKey};
use tokio_util::sync::CancellationToken;

use super::settle::{settle, Verb};
use super::Pipeline;
use crate::handler::{Context, Handler};
use crate::idempotency::Gate;
use crate::observe::EventKind;
use crate::recover::catch_panic;
use crate::retry::{decide, Disposition};

fn lease_remaining<D: Delivery>(delivery: &D) -> Duration {
    let deadline = tokio::time::Instant::from_std(delivery.lease_deadline());
    deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_millis(1))
}

fn dead_letter_kind(reason: &DeadLetterReason) -> EventKind {
    EventKind::DeadLettered {
        reason: reason.reason.clone(),
    }
}

/// Runs one delivery through the pipeline. Never fails: every outcome is a verb.
pub(crate) async fn process<D: Delivery, H: Handler>(
    pipeline: &Pipeline<H>,
    delivery: D,
    hard_stop: CancellationToken,
) {
    pipeline.stats.delivered();
    run(pipeline, delivery, hard_stop).await;
    pipeline.stats.finished();
}

async fn run<D: Delivery, H: Handler>(
    pipeline: &Pipeline<H>,
    delivery: D,
    hard_stop: CancellationToken,
) {
    let attempt = delivery.attempt();
    let max_attempts = pipeline.max_attempts;

    // 1. max attempts
    if attempt > max_attempts {
        let reason = DeadLetterReason::new(format!(
            "max attempts exceeded (delivered {attempt} times, limit {max_attempts})"
        ));
        let kind = dead_letter_kind(&reason);
        return settle(pipeline, delivery, Verb::DeadLetter(reason), kind).await;
    }

    // 2. decode
    let input = match pipeline.handler.decode(delivery.message()) {
        Ok(input) => input,
        Err(err) => {
            let reason = DeadLetterReason::new("undecodable payload").with_last_error(err.0);
            let kind = dead_letter_kind(&reason);
            return settle(pipeline, delivery, Verb::DeadLetter(reason), kind).await;
        }
    };

    // 3. idempotency gate
    let key = IdempotencyKey {
        subscription: delivery.subscription().clone(),
        id: delivery.message().id().clone(),
    };
    let claim = match &pipeline.idempotency {
        None => None,
        Some(idempotency) => match idempotency.gate(&key, lease_remaining(&delivery)).await {
            Ok(Gate::Run(token)) => token,
            Ok(Gate::Done) => {
                return settle(pipeline, delivery, Verb::Ack, EventKind::DuplicateSkipped).await;
            }
            Ok(Gate::InProgress(remaining)) => {
                let kind = EventKind::DuplicateInProgress { after: remaining };
                return settle(pipeline, delivery, Verb::Retry(remaining), kind).await;
            }
            Err(err) => {
                // The store is unreachable: running the handler could apply the effect twice.
                let after = backoff(pipeline, attempt);
                tracing::warn!(%key, %err, "idempotency store failed; retrying the delivery");
                let kind = EventKind::Retried {
                    after,
                    error: format!("idempotency store: {err}"),
                };
                return settle(pipeline, delivery, Verb::Retry(after), kind).await;
            }
        },
    };

    // 4. handler, under panic recovery, cancelled at hard stop
    let ctx = Context {
        message: Arc::new(delivery.message().clone()),
        attempt,
        max_attempts,
        topic: delivery.topic().clone(),
        subscription: delivery.subscription().clone(),
        lease_deadline: delivery.lease_deadline(),
        shutdown: hard_stop.clone(),
    };
    let outcome = tokio::select! {
        outcome = catch_panic(pipeline.handler.handle(input, ctx)) => Some(outcome),
        _ = hard_stop.cancelled() => None,
    };
    let Some((result, panicked)) = outcome else {
        release_claim(pipeline, &key, claim.as_ref()).await;
        return settle(pipeline, delivery, Verb::Release, EventKind::Released).await;
    };
    if panicked {
        pipeline.stats.panicked();
    }

    // 5. retry policy, 6. idempotency bookkeeping
    match decide(result, attempt, max_attempts, || backoff(pipeline, attempt)) {
        Disposition::Ack => {
            if let (Some(idempotency), Some(token)) = (&pipeline.idempotency, &claim) {
                if let Err(err) = idempotency
                    .store
                    .complete(&key, token, idempotency.ttl)
                    .await
                {
                    // Ack anyway: the effect is done; a redelivery would only be skipped
                    // if the marker had been written.
                    tracing::warn!(%key, %err, "could not record the message as done");
                }
            }
            settle(pipeline, delivery, Verb::Ack, EventKind::Acked).await;
        }
        Disposition::Retry { after, error } => {
            release_claim(pipeline, &key, claim.as_ref()).await;
            tracing::debug!(%key, attempt, ?after, %error, "handler failed; retrying");
            settle(
                pipeline,
                delivery,
                Verb::Retry(after),
                EventKind::Retried { after, error },
            )
            .await;
        }
        Disposition::DeadLetter { reason, last_error } => {
            release_claim(pipeline, &key, claim.as_ref()).await;
            let mut reason = DeadLetterReason::new(reason);
            reason.last_error = last_error;
            let kind = dead_letter_kind(&reason);
            settle(pipeline, delivery, Verb::DeadLetter(reason), kind).await;
        }
    }
}

fn backoff<H>(pipeline: &Pipeline<H>, attempt: u32) -> Duration {
    let mut rng = pipeline.rng.lock().expect("rng poisoned");
    pipeline.backoff.delay(attempt, &mut *rng)
}

async fn release_claim<H>(
    pipeline: &Pipeline<H>,
    key: &IdempotencyKey,
    claim: Option<&sluice_core::ClaimToken>,
) {
    if let (Some(idempotency), Some(token)) = (&pipeline.idempotency, claim) {
        if let Err(err) = idempotency.store.release(key, token).await {
            tracing::warn!(%key, %err, "could not release the idempotency claim; it expires with the lease");
        }
    }
}
