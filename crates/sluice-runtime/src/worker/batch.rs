//! Batch mode ([`WorkerBuilder::batch`](super::WorkerBuilder::batch)): the pull loop fills a
//! batch, then one task takes it through the pipeline.
//!
//! - **Forming**: a batch slot (of `concurrency`) is taken *before* pulling, so a slow
//!   handler leaves its backlog in the broker. The batch closes when it holds `max_messages`,
//!   or `max_bytes` of payload, or `max_wait` after its first message arrived, or half the
//!   lease left of any of its messages, whichever comes first: a batch never waits for its leases to
//!   run out.
//! - **Running**: stages 1 to 3 of [`super::process`] per message (max attempts, decode,
//!   idempotency: duplicates never reach the handler), then the handler once for the
//!   batch, under panic recovery and the timeout, while every message's lease (and claim) is
//!   kept alive; then stages 5 and 6 per message, from its own result, attempt and backoff.
//! - **Ordering keys**: a batch waits for every earlier batch sharing one of its keys
//!   ([`super::order`]); inside a batch, the messages of a key after one that is retried are
//!   retried with it, never acked before it ([`hold_back`]).
//! - **Shutdown**: the open batch is closed and run (not released), and running batches get
//!   the grace period; past it they are abandoned and their messages released.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use sluice_core::{ClaimToken, Delivery, IdempotencyKey, Subscriber};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::order::{KeyOrder, Turn};
use super::process::{
    admit, backoff, conclude, lease_remaining, release_claim, timed, Admitted, InFlight,
};
use super::settle::{settle, Verb};
use super::{Pipeline, Worker};
use crate::batch::{BatchContext, BatchHandler, Batched};
use crate::handler::{Context, ErrorKind, HandlerError, HandlerResult};
use crate::lease::{keep_alive, LeaseExtension, Renewal};
use crate::metrics::{self, Labels};
use crate::observe::{OutcomeKind, StatsSnapshot};
use crate::rate_limit::Limiter;
use crate::recover::catch_panic;
use crate::retry::{decide, Disposition};

/// Default largest batch, in messages: two batches (the default concurrency) fill the
/// default prefetch of 64.
pub const DEFAULT_BATCH_MAX_MESSAGES: usize = 32;
/// Default longest wait for a batch to fill after its first message.
pub const DEFAULT_BATCH_MAX_WAIT: Duration = Duration::from_millis(100);
/// Default largest batch, in payload bytes.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Default number of batches handled at once: one fills while the other runs.
pub const DEFAULT_BATCH_CONCURRENCY: usize = 2;

/// When a batch closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchLimits {
    pub(crate) max_messages: usize,
    pub(crate) max_wait: Duration,
    pub(crate) max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_messages: DEFAULT_BATCH_MAX_MESSAGES,
            max_wait: DEFAULT_BATCH_MAX_WAIT,
            max_bytes: DEFAULT_BATCH_MAX_BYTES,
        }
    }
}

/// Runs a batch worker until `shutdown`, then drains; returns the final counters.
pub(crate) async fn run<S: Subscriber, B: BatchHandler>(
    worker: Worker<S, Batched<B>>,
    shutdown: CancellationToken,
) -> StatsSnapshot {
    let Worker {
        subscriber,
        pipeline,
        concurrency,
        rate_limit,
        control,
        shutdown_grace,
        poll_wait,
        batch: limits,
        ..
    } = worker;
    let slots = Arc::new(Semaphore::new(concurrency));
    let hard_stop = CancellationToken::new();
    let order = Arc::new(KeyOrder::default());
    let control_task = super::control::start(control.clone()).await;
    let subscription = subscriber.subscription().clone();
    tracing::debug!(%subscription, concurrency, max_messages = limits.max_messages, "batch worker started");
    let mut tasks = JoinSet::new();
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        while tasks.try_join_next().is_some() {}
        if control.as_ref().is_some_and(|c| c.paused()) {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            }
        }
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("semaphore never closed"),
        };
        // A batch was told the downstream is rate limiting: pulling waits as long.
        if !pipeline.wait_unpaused(&shutdown, &subscription).await {
            break;
        }
        let pull = Pull {
            subscriber: &subscriber,
            limits,
            rate_limit: rate_limit.as_ref(),
            poll_wait,
            shutdown: &shutdown,
        };
        let (deliveries, closed) = pull.fill(&mut failures).await;
        if !deliveries.is_empty() {
            let turn = order.enter(deliveries.iter().filter_map(|d| d.message().ordering_key()));
            let pipeline = pipeline.clone();
            let hard_stop = hard_stop.clone();
            tasks.spawn(run_batch(pipeline, deliveries, slot, turn, hard_stop));
        }
        if closed {
            break;
        }
    }

    let in_flight = tasks.len();
    if in_flight > 0 {
        tracing::info!(%subscription, batches = in_flight, grace = ?shutdown_grace, "batch worker draining");
    }
    super::drain(&mut tasks, shutdown_grace, &hard_stop).await;
    drop(control_task);
    if let Some(control) = &control {
        control.forget().await;
    }
    if let Err(err) = subscriber.close().await {
        tracing::warn!(%subscription, %err, "closing the subscriber failed");
    }
    tracing::debug!(%subscription, "batch worker stopped");
    pipeline.stats.snapshot()
}

/// What filling one batch needs.
struct Pull<'a, S> {
    subscriber: &'a S,
    limits: BatchLimits,
    rate_limit: Option<&'a Limiter>,
    poll_wait: Duration,
    shutdown: &'a CancellationToken,
}

impl<S: Subscriber> Pull<'_, S> {
    /// Pulls until the batch closes (see the module docs). Returns it, and whether the
    /// subscriber is closed. At shutdown the batch closes with what it holds.
    async fn fill(&self, failures: &mut u32) -> (Vec<S::Delivery>, bool) {
        let limits = self.limits;
        let mut batch: Vec<S::Delivery> = Vec::new();
        let mut bytes = 0usize;
        let mut close_at: Option<Instant> = None;
        // How long the next receive may wait: until the batch closes, or a poll.
        let wait_for = |close_at: Option<Instant>| match close_at {
            None => Some(self.poll_wait),
            Some(at) => at
                .checked_duration_since(Instant::now())
                .filter(|left| !left.is_zero()),
        };
        loop {
            if wait_for(close_at).is_none() {
                break;
            }
            // As many as the batch has room for, in messages and (at the average size so
            // far) in bytes.
            let mut want = limits.max_messages - batch.len();
            if !batch.is_empty() {
                let average = (bytes / batch.len()).max(1);
                want = want.min((limits.max_bytes.saturating_sub(bytes) / average).max(1));
            }
            if let Some(bucket) = self.rate_limit {
                // Not raced against the batch's close: a shared bucket's call is not
                // cancel-safe (tokens would be lost); the wait is recomputed after it.
                want = tokio::select! {
                    _ = self.shutdown.cancelled() => break,
                    granted = bucket.acquire(want as u32) => granted as usize,
                };
            }
            let Some(wait) = wait_for(close_at) else {
                if let Some(bucket) = self.rate_limit {
                    bucket.give_back(want as u32);
                }
                break;
            };
            // Never drop a receive half-way: at shutdown finish it and keep what it returns.
            let receive = self
                .subscriber
                .receive(want, wait.max(Duration::from_millis(1)));
            tokio::pin!(receive);
            let (received, stopping) = tokio::select! {
                r = &mut receive => (r, false),
                _ = self.shutdown.cancelled() => (receive.await, true),
            };
            match received {
                Ok(deliveries) => {
                    *failures = 0;
                    if let Some(bucket) = self.rate_limit {
                        bucket.give_back(want.saturating_sub(deliveries.len()) as u32);
                    }
                    for delivery in deliveries {
                        // Never later than half of any message's lease left.
                        let by_lease = Instant::now() + lease_remaining(&delivery) / 2;
                        let first = close_at.unwrap_or(Instant::now() + limits.max_wait);
                        close_at = Some(first.min(by_lease));
                        bytes += delivery.message().payload().len();
                        batch.push(delivery);
                    }
                }
                Err(sluice_core::Error::Closed(_)) => return (batch, true),
                Err(err) => {
                    if let Some(bucket) = self.rate_limit {
                        bucket.give_back(want as u32);
                    }
                    *failures += 1;
                    let subscription = self.subscriber.subscription();
                    if !batch.is_empty() {
                        tracing::warn!(%subscription, %err, "receive failed; running the batch as it is");
                        break;
                    }
                    let pause = Duration::from_millis(100 * 2u64.pow((*failures).min(6)));
                    tracing::warn!(%subscription, %err, ?pause, "receive failed; trying again");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            }
            if stopping || batch.len() >= limits.max_messages || bytes >= limits.max_bytes {
                break;
            }
        }
        (batch, false)
    }
}

/// A message of the batch that reached the handler.
struct Running<D> {
    delivery: D,
    key: IdempotencyKey,
    claim: Option<ClaimToken>,
    labels: Labels,
    span: tracing::Span,
    /// What the handler left for the job's status ([`Context::set_result`]).
    left: Arc<std::sync::Mutex<Option<serde_json::Value>>>,
}

/// How the handler stage of a batch ended.
enum Ran {
    /// With whether it panicked.
    Finished(Result<crate::batch::BatchOutcome, HandlerError>, bool),
    Abandoned(&'static str),
}

/// Takes one batch through the pipeline to a verb per message.
async fn run_batch<D: Delivery, B: BatchHandler>(
    pipeline: Arc<Pipeline<Batched<B>>>,
    deliveries: Vec<D>,
    _slot: OwnedSemaphorePermit,
    turn: Turn,
    hard_stop: CancellationToken,
) {
    let pipeline = &*pipeline;
    let _in_flight: Vec<InFlight<'_>> = deliveries
        .iter()
        .map(|d| InFlight::start(pipeline, Labels::of(d)))
        .collect();
    let topic = deliveries[0].topic().clone();
    let subscription = deliveries[0].subscription().clone();

    // 1-3 per message, each in its own span (continuing its producer's trace): poison
    // messages and duplicates never reach the handler.
    let handler = &pipeline.handler.0;
    // Every message's ordering key and id, in batch order: one retried before the handler
    // holds its key's later messages back too.
    let keys: Vec<(Option<String>, String)> = deliveries
        .iter()
        .map(|d| {
            let message = d.message();
            (
                message.ordering_key().map(str::to_owned),
                message.id().to_string(),
            )
        })
        .collect();
    let admitted = join_all(deliveries.into_iter().map(|delivery| {
        let span = crate::trace::delivery_span(&delivery);
        let admitted = admit(pipeline, delivery, |message| handler.decode(message));
        async move { (admitted.instrument(span.clone()).await, span) }
    }))
    .await;
    let mut running = Vec::with_capacity(admitted.len());
    let mut batch = Vec::with_capacity(admitted.len());
    // Per batch position: the running message's index, or the retry verb stage 1-3 gave.
    let mut positions: Vec<Result<usize, Option<Duration>>> = Vec::with_capacity(keys.len());
    for (admitted, span) in admitted {
        let (delivery, input, key, claim) = match admitted {
            Admitted::Run {
                delivery,
                input,
                key,
                claim,
            } => (delivery, input, key, claim),
            Admitted::Settled { retried } => {
                positions.push(Err(retried));
                continue;
            }
        };
        positions.push(Ok(running.len()));
        let ctx = Context {
            message: Arc::new(delivery.message().clone()),
            attempt: delivery.attempt(),
            max_attempts: pipeline.max_attempts,
            topic: delivery.topic().clone(),
            subscription: delivery.subscription().clone(),
            lease_deadline: delivery.lease_deadline(),
            shutdown: hard_stop.clone(),
            result: Arc::default(),
        };
        running.push(Running {
            labels: Labels::of(&delivery),
            delivery,
            key,
            claim,
            span,
            left: ctx.result.clone(),
        });
        batch.push((input, ctx));
    }
    if running.is_empty() {
        // Dropping the turn waits for the earlier batches sharing a key (see order.rs).
        return;
    }
    let size = running.len();
    let ctx = BatchContext {
        len: size,
        topic: topic.clone(),
        subscription: subscription.clone(),
        lease_deadline: running
            .iter()
            .map(|r| r.delivery.lease_deadline())
            .min()
            .expect("a batch is never empty"),
        shutdown: hard_stop.clone(),
    };

    // 4. the handler, once for the batch, in a span that follows from every message's, while
    // every lease is kept alive.
    let batch_span = tracing::info_span!(
        "sluice.batch",
        otel.name = %format_args!("{subscription} process batch"),
        otel.kind = "consumer",
        messaging.system = "sluice",
        messaging.batch.message_count = size,
        topic = %topic,
        subscription = %subscription,
    );
    for r in &running {
        batch_span.follows_from(r.span.id());
    }
    let started = Instant::now();
    let ran = {
        let work = async {
            turn.ready().await;
            // Another batch was told the downstream is rate limiting: wait as long.
            while let Some(until) = pipeline.paused() {
                tokio::time::sleep_until(until).await;
            }
            timed(pipeline, handler.handle(batch, ctx)).await
        }
        .instrument(batch_span);
        let (extend, cap) = match pipeline.lease_extension {
            LeaseExtension::Off => (false, None),
            LeaseExtension::UpTo(cap) => (true, Some(cap)),
        };
        let lease = pipeline.lease;
        let idempotency = pipeline.idempotency.as_ref();
        let stats = &*pipeline.stats;
        let keep = async {
            if extend {
                join_all(running.iter_mut().map(|r| {
                    let claim = match (idempotency, &r.claim) {
                        (Some(idempotency), Some(token)) => Some((idempotency, &r.key, token)),
                        _ => None,
                    };
                    let renewal = Renewal {
                        lease,
                        claim,
                        labels: &r.labels,
                        stats,
                    };
                    keep_alive(&mut r.delivery, renewal)
                }))
                .await;
            }
            std::future::pending::<()>().await;
        };
        // The cap counts from the batch's turn, not from a wait behind an earlier batch.
        let cap_reached = async {
            turn.ready().await;
            match cap {
                Some(cap) => tokio::time::sleep(cap).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            (result, panicked) = catch_panic(work) => {
                if panicked {
                    pipeline.stats.panicked();
                }
                Ran::Finished(result, panicked)
            }
            _ = keep => unreachable!("keep_alive never completes"),
            _ = hard_stop.cancelled() => Ran::Abandoned("shutdown grace period over"),
            _ = cap_reached => Ran::Abandoned("batch outlived the lease extension's hard cap"),
        }
    };
    let took = started.elapsed();
    let results: Vec<HandlerResult> = match ran {
        Ran::Finished(Ok(outcome), _) => {
            metrics::batch_ran(topic.as_str(), subscription.as_str(), size, "ok", took);
            outcome.into_results(size)
        }
        Ran::Finished(Err(error), panicked) => {
            // The downstream is rate limiting: nothing is pulled for as long (the batch's
            // messages are retried then; a batch handler has no per-key parking).
            if let ErrorKind::RateLimited { retry_after } = error.kind() {
                pipeline.pause_until(Instant::now() + retry_after);
            }
            let outcome = if panicked {
                "panic"
            } else if error.error().is::<super::TimedOut>() {
                "timeout"
            } else {
                "error"
            };
            metrics::batch_ran(topic.as_str(), subscription.as_str(), size, outcome, took);
            tracing::debug!(%subscription, size, %error, "batch failed as a whole");
            (0..size).map(|_| Err(error.copy())).collect()
        }
        Ran::Abandoned(why) => {
            metrics::batch_ran(
                topic.as_str(),
                subscription.as_str(),
                size,
                "abandoned",
                took,
            );
            tracing::warn!(%subscription, size, why, "batch abandoned; releasing its messages");
            join_all(running.into_iter().map(|r| {
                let span = r.span.clone();
                async move {
                    release_claim(pipeline, &r.key, r.claim.as_ref()).await;
                    settle(pipeline, r.delivery, Verb::Release, OutcomeKind::Released).await;
                }
                .instrument(span)
            }))
            .await;
            return;
        }
    };

    // 5-6 per message, from its own result, attempt and backoff.
    let mut dispositions: Vec<Disposition> = results
        .into_iter()
        .zip(&running)
        .map(|(result, r)| {
            let attempt = r.delivery.attempt();
            decide(as_retry(result), attempt, pipeline.max_attempts, || {
                backoff(pipeline, attempt)
            })
        })
        .collect();
    // The whole batch in its order: messages retried before the handler hold back too.
    let keyed: Vec<Keyed<'_>> = keys
        .iter()
        .zip(&positions)
        .map(|((key, id), position)| Keyed {
            key: key.as_deref(),
            id,
            last_attempt: match position {
                Ok(i) => running[*i].delivery.attempt() >= pipeline.max_attempts,
                Err(_) => true,
            },
        })
        .collect();
    let mut all: Vec<Disposition> = positions
        .iter()
        .map(|position| match position {
            Ok(i) => dispositions[*i].clone(),
            Err(Some(after)) => Disposition::Retry {
                after: *after,
                error: String::new(),
            },
            // Settled for good (acked, dead-lettered): holds nothing back.
            Err(None) => Disposition::DeadLetter {
                reason: String::new(),
                last_error: None,
            },
        })
        .collect();
    hold_back(&keyed, &mut all);
    for (position, disposition) in positions.iter().zip(all) {
        if let Ok(i) = position {
            dispositions[*i] = disposition;
        }
    }
    drop(keyed);
    join_all(
        running
            .into_iter()
            .zip(dispositions)
            .map(|(r, disposition)| {
                let span = r.span.clone();
                async move {
                    let result = r.left.lock().expect("result").take();
                    conclude(
                        pipeline,
                        r.delivery,
                        &r.key,
                        r.claim.as_ref(),
                        disposition,
                        result,
                    )
                    .await;
                }
                .instrument(span)
            }),
    )
    .await;
    // Only now may a later batch holding one of its keys run.
    drop(turn);
}

/// A batch handler has no per-key parking: "rate limited" is a retry after its delay, which
/// spends an attempt like any transient failure (and is dead-lettered on the last one).
fn as_retry(result: HandlerResult) -> HandlerResult {
    match result {
        Err(error) => match error.kind() {
            ErrorKind::RateLimited { retry_after } => {
                Err(HandlerError::retry_after(error.to_string(), retry_after))
            }
            _ => Err(error),
        },
        ok => ok,
    }
}

/// A message's ordering key, for [`hold_back`].
struct Keyed<'a> {
    key: Option<&'a str>,
    id: &'a str,
    last_attempt: bool,
}

/// Inside a batch, a key's messages after one that is retried are retried with it, no sooner
/// than it: never acked before it. One on its last attempt is acked all the same (its
/// handler succeeded; retrying it would dead-letter a success). A dead-lettered message holds
/// nothing back: it is not coming again.
fn hold_back(messages: &[Keyed<'_>], dispositions: &mut [Disposition]) {
    let mut held: HashMap<&str, (Duration, &str)> = HashMap::new();
    for (message, disposition) in messages.iter().zip(dispositions.iter_mut()) {
        let Some(key) = message.key else { continue };
        if let Some(&(after, first)) = held.get(key) {
            match disposition {
                Disposition::Ack if !message.last_attempt => {
                    *disposition = Disposition::Retry {
                        after,
                        error: format!(
                            "held back: {first}, an earlier message of ordering key `{key}` in \
                             its batch, is retried"
                        ),
                    };
                }
                Disposition::Retry { after: own, .. } => *own = (*own).max(after),
                _ => {}
            }
        }
        if let Disposition::Retry { after, .. } = disposition {
            let after = *after;
            held.entry(key)
                .and_modify(|(latest, _)| *latest = (*latest).max(after))
                .or_insert((after, message.id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed<'a>(key: Option<&'a str>, id: &'a str) -> Keyed<'a> {
        Keyed {
            key,
            id,
            last_attempt: false,
        }
    }

    fn retry(ms: u64) -> Disposition {
        Disposition::Retry {
            after: Duration::from_millis(ms),
            error: "down".into(),
        }
    }

    #[test]
    fn a_keys_messages_after_a_retried_one_are_retried_no_sooner_than_it() {
        let messages = [
            keyed(Some("a"), "1"),
            keyed(Some("b"), "2"),
            keyed(Some("a"), "3"),
            keyed(None, "4"),
            keyed(Some("a"), "5"),
            keyed(Some("b"), "6"),
        ];
        let mut dispositions = vec![
            retry(500),
            Disposition::Ack,
            Disposition::Ack,
            Disposition::Ack,
            retry(100),
            Disposition::Ack,
        ];
        hold_back(&messages, &mut dispositions);
        assert!(
            matches!(&dispositions[2], Disposition::Retry { after, error } if *after == Duration::from_millis(500) && error.contains("`a`")),
            "{:?}",
            dispositions[2]
        );
        assert!(
            matches!(&dispositions[4], Disposition::Retry { after, .. } if *after == Duration::from_millis(500)),
            "never sooner than the first: {:?}",
            dispositions[4]
        );
        assert_eq!(dispositions[1], Disposition::Ack, "another key");
        assert_eq!(dispositions[3], Disposition::Ack, "no key");
        assert_eq!(dispositions[5], Disposition::Ack, "b was never retried");
    }

    #[test]
    fn a_dead_lettered_message_holds_nothing_back_and_a_last_attempt_is_acked() {
        let mut last = keyed(Some("a"), "3");
        last.last_attempt = true;
        let messages = [keyed(Some("a"), "1"), keyed(Some("a"), "2"), last];
        let mut dispositions = vec![
            Disposition::DeadLetter {
                reason: "permanent error".into(),
                last_error: None,
            },
            retry(10),
            Disposition::Ack,
        ];
        hold_back(&messages, &mut dispositions);
        assert!(matches!(dispositions[1], Disposition::Retry { .. }));
        assert_eq!(dispositions[2], Disposition::Ack);
    }
}
