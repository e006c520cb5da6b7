//! The pipeline one delivery goes through, in this order (each stage is its own module):
//!
//! 1. **max attempts** — `attempt > max_attempts` ⇒ dead-letter before any handler runs (the
//!    only defence against a message that crashes the process).
//! 2. **decode** ([`Handler::decode`]) — an undecodable payload or an unknown type ⇒
//!    dead-letter with the reason (or ack and skip, if the decoder says so).
//!    **job status** (jobs only, `Lifecycle`) — a cancelled, superseded or finished job ⇒
//!    ack without running; else the job is marked running.
//! 3. **idempotency** ([`crate::idempotency`]) — done ⇒ ack and skip; in progress ⇒ retry
//!    after the claim's remaining time; else claim for the lease.
//! 4. **handler** under panic recovery ([`crate::recover`]) and its timeout, while
//!    [`crate::lease`] keeps the lease (and the claim) alive; cancelled at hard stop or at the
//!    lease extension's hard cap (then released).
//! 5. **retry policy** ([`crate::retry`]) ⇒ ack, retry with backoff, or dead-letter.
//! 6. **idempotency** — done marker written *before* the ack; claim dropped on retry,
//!    dead-letter or release.
//!
//! All of it runs inside the delivery's span ([`crate::trace`]), which continues the
//! producer's trace.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{ClaimToken, DeadLetterReason, Delivery, IdempotencyKey};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::settle::{settle, settle_with, Verb};
use super::{Admit, Pipeline};
use crate::handler::{Context, DecodeError, ErrorKind, Handler, HandlerError, HandlerResult};
use crate::idempotency::Gate;
use crate::lease::{keep_alive, LeaseExtension, Renewal};
use crate::metrics::{self, Labels};
use crate::observe::OutcomeKind;
use crate::recover::catch_panic;
use crate::retry::{decide, Disposition};

pub(crate) fn lease_remaining<D: Delivery>(delivery: &D) -> Duration {
    Instant::from_std(delivery.lease_deadline())
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

fn dead_letter_kind(reason: &DeadLetterReason) -> OutcomeKind {
    OutcomeKind::DeadLettered {
        reason: reason.reason.clone(),
    }
}

/// A delivery the handler could not run because the downstream is rate limiting
/// ([`HandlerError::rate_limited`]): unsettled, its idempotency claim dropped, to run again
/// after `after` without spending an attempt.
pub(crate) struct Throttled<D> {
    pub(crate) delivery: D,
    pub(crate) after: Duration,
}

/// Runs one delivery through the pipeline. Never fails: every outcome is a verb, or the
/// delivery handed back [`Throttled`]. `first`: not a run again after a [`Throttled`] (only
/// a first run counts as a delivery).
pub(crate) async fn process<D: Delivery, H: Handler>(
    pipeline: &Pipeline<H>,
    delivery: D,
    hard_stop: CancellationToken,
    first: bool,
) -> Option<Throttled<D>> {
    let labels = Labels::of(&delivery);
    let span = crate::trace::delivery_span(&delivery);
    let _in_flight = if first {
        InFlight::start(pipeline, labels.clone())
    } else {
        InFlight::resume(pipeline, labels.clone())
    };
    run(pipeline, delivery, hard_stop, &labels)
        .instrument(span)
        .await
}

/// Settles the delivery: nothing handed back.
async fn settled<D: Delivery, H>(
    pipeline: &Pipeline<H>,
    delivery: D,
    verb: Verb,
    kind: OutcomeKind,
) -> Option<Throttled<D>> {
    settle(pipeline, delivery, verb, kind).await;
    None
}

/// Counts a delivery in flight until dropped, so a panic anywhere cannot leave the gauge up.
pub(crate) struct InFlight<'a> {
    stats: &'a crate::observe::WorkerStats,
    labels: Labels,
}

impl<'a> InFlight<'a> {
    pub(crate) fn start<H>(pipeline: &'a Pipeline<H>, labels: Labels) -> Self {
        pipeline.stats.delivered();
        metrics::delivered(&labels);
        Self {
            stats: &pipeline.stats,
            labels,
        }
    }

    /// In flight again, not delivered again (a run after the downstream said "wait").
    pub(crate) fn resume<H>(pipeline: &'a Pipeline<H>, labels: Labels) -> Self {
        pipeline.stats.resumed();
        metrics::resumed(&labels);
        Self {
            stats: &pipeline.stats,
            labels,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        metrics::finished(&self.labels);
        self.stats.finished();
    }
}

/// How the handler stage ended.
enum Ran {
    Finished(HandlerResult),
    /// Hard stop (shutdown grace over) or the lease extension's hard cap.
    Abandoned(&'static str),
}

/// What the stages before the handler (1 to 3) decided about a delivery.
pub(crate) enum Admitted<D, I> {
    /// Run the handler on `input`; `claim` is the idempotency claim held for it.
    Run {
        delivery: D,
        input: I,
        key: IdempotencyKey,
        claim: Option<ClaimToken>,
    },
    /// Settled without a handler: a poison message, a duplicate, a skipped job, a store
    /// that failed. `retried`: the delay, when the verb was a retry (the message comes back).
    Settled { retried: Option<Duration> },
}

/// Stages 1 to 3 for one delivery: max attempts, `decode`, job status, idempotency gate.
/// Shared by single and batch handlers.
pub(crate) async fn admit<D: Delivery, H, I>(
    pipeline: &Pipeline<H>,
    delivery: D,
    decode: impl FnOnce(&sluice_core::Message) -> Result<I, DecodeError>,
) -> Admitted<D, I> {
    let attempt = delivery.attempt();
    let max_attempts = pipeline.max_attempts;

    // 1. max attempts
    if attempt > max_attempts {
        // A message whose effect is already done (its ack was lost on the last attempt) is
        // a duplicate, not a poison message.
        if already_done(pipeline, &delivery).await {
            settle(pipeline, delivery, Verb::Ack, OutcomeKind::DuplicateSkipped).await;
            return Admitted::Settled { retried: None };
        }
        let reason = DeadLetterReason::new(format!(
            "max attempts exceeded (delivered {attempt} times, limit {max_attempts})"
        ));
        let kind = dead_letter_kind(&reason);
        settle(pipeline, delivery, Verb::DeadLetter(reason), kind).await;
        return Admitted::Settled { retried: None };
    }

    // 2. decode
    let input = match decode(delivery.message()) {
        Ok(input) => input,
        Err(err) if err.is_ack_and_skip() => {
            let kind = OutcomeKind::Skipped {
                reason: err.to_string(),
            };
            settle(pipeline, delivery, Verb::Ack, kind).await;
            return Admitted::Settled { retried: None };
        }
        Err(err) => {
            let reason = DeadLetterReason::new(err.reason()).with_last_error(err.detail());
            let kind = dead_letter_kind(&reason);
            settle(pipeline, delivery, Verb::DeadLetter(reason), kind).await;
            return Admitted::Settled { retried: None };
        }
    };

    // 2b. job status: a cancelled, superseded or finished job is acked without running
    if let Some(lifecycle) = &pipeline.lifecycle {
        match lifecycle.admit(delivery.message(), attempt).await {
            Ok(Admit::Run) => {}
            Ok(Admit::Skip(reason)) => {
                let kind = OutcomeKind::Skipped { reason };
                settle(pipeline, delivery, Verb::Ack, kind).await;
                return Admitted::Settled { retried: None };
            }
            Ok(Admit::Later(after)) => {
                let kind = OutcomeKind::DuplicateInProgress { after };
                settle(pipeline, delivery, Verb::Retry(after), kind).await;
                return Admitted::Settled {
                    retried: Some(after),
                };
            }
            Err(err) => {
                let after = backoff(pipeline, attempt);
                let id = delivery.message().id().clone();
                tracing::warn!(%id, %err, "job store failed; retrying the delivery");
                let kind = OutcomeKind::Retried {
                    after,
                    error: format!("job store: {err}"),
                };
                settle(pipeline, delivery, Verb::Retry(after), kind).await;
                return Admitted::Settled {
                    retried: Some(after),
                };
            }
        }
    }

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
                settle(pipeline, delivery, Verb::Ack, OutcomeKind::DuplicateSkipped).await;
                return Admitted::Settled { retried: None };
            }
            Ok(Gate::InProgress(remaining)) => {
                let kind = OutcomeKind::DuplicateInProgress { after: remaining };
                settle(pipeline, delivery, Verb::Retry(remaining), kind).await;
                return Admitted::Settled {
                    retried: Some(remaining),
                };
            }
            Err(err) => {
                // The store is unreachable: running the handler could apply the effect twice.
                let after = backoff(pipeline, attempt);
                tracing::warn!(%key, %err, "idempotency store failed; retrying the delivery");
                let kind = OutcomeKind::Retried {
                    after,
                    error: format!("idempotency store: {err}"),
                };
                settle(pipeline, delivery, Verb::Retry(after), kind).await;
                return Admitted::Settled {
                    retried: Some(after),
                };
            }
        },
    };
    Admitted::Run {
        delivery,
        input,
        key,
        claim,
    }
}

async fn run<D: Delivery, H: Handler>(
    pipeline: &Pipeline<H>,
    delivery: D,
    hard_stop: CancellationToken,
    labels: &Labels,
) -> Option<Throttled<D>> {
    let Admitted::Run {
        mut delivery,
        input,
        key,
        claim,
    } = admit(pipeline, delivery, |message| {
        pipeline.handler.decode(message)
    })
    .await
    else {
        return None;
    };
    let attempt = delivery.attempt();
    let max_attempts = pipeline.max_attempts;

    // 4. handler: panics caught, timed out, lease kept alive, cancellable
    let ctx = Context {
        message: Arc::new(delivery.message().clone()),
        attempt,
        max_attempts,
        topic: delivery.topic().clone(),
        subscription: delivery.subscription().clone(),
        lease_deadline: delivery.lease_deadline(),
        shutdown: hard_stop.clone(),
        result: Arc::default(),
    };
    let left = ctx.result.clone();
    let started = Instant::now();
    let ran = {
        let handler = timed(pipeline, pipeline.handler.handle(input, ctx));
        let renewal = Renewal {
            lease: pipeline.lease,
            claim: match (&pipeline.idempotency, &claim) {
                (Some(idempotency), Some(token)) => Some((idempotency, &key, token)),
                _ => None,
            },
            labels,
            stats: &pipeline.stats,
        };
        let (extend, cap) = match pipeline.lease_extension {
            LeaseExtension::Off => (false, None),
            LeaseExtension::UpTo(cap) => (true, Some(cap)),
        };
        let keep = async {
            if extend {
                keep_alive(&mut delivery, renewal).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let cap_reached = async {
            match cap {
                Some(cap) => tokio::time::sleep(cap).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Biased: a handler that finished in the same poll as a stop keeps its result.
            biased;
            (result, panicked) = catch_panic(handler) => {
                if panicked {
                    pipeline.stats.panicked();
                }
                Ran::Finished(result)
            }
            _ = keep => unreachable!("keep_alive never completes"),
            _ = hard_stop.cancelled() => Ran::Abandoned("shutdown grace period over"),
            _ = cap_reached => Ran::Abandoned("handler outlived the lease extension's hard cap"),
        }
    };
    // The adaptive limit learns from successes and the downstream's failures; a "wait"
    // (rate limited) or a message's own permanent failure says nothing of its capacity.
    if let Some(adaptive) = &pipeline.adaptive {
        let failed = match &ran {
            Ran::Finished(Ok(())) => Some(false),
            Ran::Finished(Err(e)) => match e.kind() {
                ErrorKind::Transient { .. } => Some(true),
                ErrorKind::Permanent | ErrorKind::RateLimited { .. } => None,
            },
            Ran::Abandoned(_) => Some(true),
        };
        if let Some(failed) = failed {
            adaptive.sample(started.elapsed(), failed);
        }
    }
    let result = match ran {
        Ran::Finished(result) => result,
        Ran::Abandoned(why) => {
            tracing::warn!(%key, why, "handler abandoned; releasing the delivery");
            metrics::handler_ran(labels, "abandoned", started.elapsed());
            release_claim(pipeline, &key, claim.as_ref()).await;
            return settled(pipeline, delivery, Verb::Release, OutcomeKind::Released).await;
        }
    };
    metrics::handler_ran(labels, handler_outcome(&result), started.elapsed());
    // Rate limited by the downstream: handed back to wait, no attempt spent, not a failure
    // for the breaker.
    if let Err(ErrorKind::RateLimited { retry_after }) = result.as_ref().map_err(HandlerError::kind)
    {
        tracing::debug!(%key, attempt, ?retry_after, "the downstream is rate limiting; the delivery waits");
        release_claim(pipeline, &key, claim.as_ref()).await;
        if let Some(lifecycle) = &pipeline.lifecycle {
            lifecycle
                .settled(delivery.message(), &OutcomeKind::Released, None)
                .await;
        }
        return Some(Throttled {
            delivery,
            after: retry_after,
        });
    }
    // The breaker counts transient failures (the downstream's); one of a delivery pulled
    // before the circuit opened is given back without spending an attempt: the outage is not
    // the message's.
    if let Some(breaker) = &pipeline.breaker {
        let transient =
            matches!(&result, Err(e) if matches!(e.kind(), ErrorKind::Transient { .. }));
        if result.is_ok() || transient {
            let release = breaker.record(result.is_ok());
            if release {
                tracing::debug!(%key, attempt, "handler failed with the circuit open; releasing the delivery");
                release_claim(pipeline, &key, claim.as_ref()).await;
                return settled(pipeline, delivery, Verb::Release, OutcomeKind::Released).await;
            }
        }
    }

    // 5. retry policy, 6. idempotency bookkeeping
    let disposition = decide(result, attempt, max_attempts, || backoff(pipeline, attempt));
    let result = left.lock().expect("result").take();
    conclude(
        pipeline,
        delivery,
        &key,
        claim.as_ref(),
        disposition,
        result,
    )
    .await;
    None
}

/// Stages 5 and 6: applies the retry policy's `disposition`, with the idempotency
/// bookkeeping (done marker written before the ack; claim dropped otherwise). `result`: what
/// the handler left for the job's status.
pub(crate) async fn conclude<D: Delivery, H>(
    pipeline: &Pipeline<H>,
    delivery: D,
    key: &IdempotencyKey,
    claim: Option<&ClaimToken>,
    disposition: Disposition,
    result: Option<serde_json::Value>,
) {
    let attempt = delivery.attempt();
    match disposition {
        Disposition::Ack => {
            if let (Some(idempotency), Some(token)) = (&pipeline.idempotency, claim) {
                if let Err(err) = idempotency
                    .store
                    .complete(key, token, idempotency.ttl)
                    .await
                {
                    // Ack anyway: the effect is done; a redelivery would only be skipped
                    // if the marker had been written.
                    tracing::warn!(%key, %err, "could not record the message as done");
                }
            }
            settle_with(pipeline, delivery, Verb::Ack, OutcomeKind::Acked, result).await;
        }
        Disposition::Retry { after, error } => {
            release_claim(pipeline, key, claim).await;
            tracing::debug!(%key, attempt, ?after, %error, "handler failed; retrying");
            let kind = OutcomeKind::Retried { after, error };
            settle(pipeline, delivery, Verb::Retry(after), kind).await;
        }
        Disposition::DeadLetter { reason, last_error } => {
            release_claim(pipeline, key, claim).await;
            let mut reason = DeadLetterReason::new(reason);
            reason.last_error = last_error;
            let kind = dead_letter_kind(&reason);
            settle(pipeline, delivery, Verb::DeadLetter(reason), kind).await;
        }
    }
}

/// The handler under its timeout: running past it is a transient failure.
pub(crate) async fn timed<H, T>(
    pipeline: &Pipeline<H>,
    handler: impl std::future::Future<Output = Result<T, HandlerError>>,
) -> Result<T, HandlerError> {
    let Some(limit) = pipeline.timeout else {
        return handler.await;
    };
    match tokio::time::timeout(limit, handler).await {
        Ok(result) => result,
        Err(_) => {
            pipeline.stats.timed_out();
            Err(HandlerError::transient(TimedOut(limit)))
        }
    }
}

/// A handler ran past its timeout.
#[derive(Debug, thiserror::Error)]
#[error("handler timed out after {0:?}")]
pub struct TimedOut(pub Duration);

fn handler_outcome(result: &HandlerResult) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(err) if err.error().is::<TimedOut>() => "timeout",
        Err(err) if err.error().is::<crate::recover::Panicked>() => "panic",
        Err(err) if matches!(err.kind(), ErrorKind::RateLimited { .. }) => "rate_limited",
        Err(_) => "error",
    }
}

/// Whether the idempotency store already records this delivery's message as done. Takes
/// (and drops) a claim when it is not.
async fn already_done<D: Delivery, H>(pipeline: &Pipeline<H>, delivery: &D) -> bool {
    let Some(idempotency) = &pipeline.idempotency else {
        return false;
    };
    let key = IdempotencyKey {
        subscription: delivery.subscription().clone(),
        id: delivery.message().id().clone(),
    };
    match idempotency.store.claim(&key, Duration::from_secs(1)).await {
        Ok(sluice_core::Claim::Done) => true,
        Ok(sluice_core::Claim::Acquired(token)) => {
            let _ = idempotency.store.release(&key, &token).await;
            false
        }
        _ => false,
    }
}

pub(crate) fn backoff<H>(pipeline: &Pipeline<H>, attempt: u32) -> Duration {
    let mut rng = pipeline.rng.lock().expect("rng poisoned");
    pipeline.backoff.delay(attempt, &mut *rng)
}

pub(crate) async fn release_claim<H>(
    pipeline: &Pipeline<H>,
    key: &IdempotencyKey,
    claim: Option<&ClaimToken>,
) {
    if let (Some(idempotency), Some(token)) = (&pipeline.idempotency, claim) {
        if let Err(err) = idempotency.store.release(key, token).await {
            tracing::warn!(%key, %err, "could not release the idempotency claim; it expires with the lease");
        }
    }
}
