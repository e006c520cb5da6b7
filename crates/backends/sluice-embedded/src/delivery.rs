//! [`EmbeddedDelivery`]: a lease on one message; the verbs are journalled by the engine and
//! confirmed once durable. A verb with a stale lease (it ran out and the message was handed
//! out again, or it was settled) fails with `LeaseLost` and hands the delivery back.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sluice_core::{
    DeadLetterReason, Delivery, Envelope, Error, Message, SubscriptionName, TopicName, VerbError,
    VerbResult,
};
use sluice_engine::engine::{Leased, Settle, Verb};
use sluice_engine::subscription::Ref;

use crate::backend::Shared;
use crate::bridge::completion;
use crate::convert;

/// The subscription a subscriber's deliveries come from: its name, its engine (physical)
/// name and its topic, shared rather than copied into every delivery.
#[derive(Debug)]
pub(crate) struct Source {
    pub(crate) subscription: SubscriptionName,
    pub(crate) physical: Arc<str>,
    pub(crate) topic: TopicName,
}

/// A delivery from the embedded engine.
pub struct EmbeddedDelivery {
    shared: Arc<Shared>,
    /// Where it came from, shared by every delivery of its subscriber.
    from: Arc<Source>,
    message: Message,
    r: Ref,
    token: u64,
    attempt: u32,
    deadline: Instant,
}

impl std::fmt::Debug for EmbeddedDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedDelivery")
            .field("id", self.message.id())
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The tokio-clock instant of an engine deadline (ms since the epoch).
fn deadline(deadline_ms: u64) -> Instant {
    let now_ms = convert::to_ms(Some(SystemTime::now()));
    let now = tokio::time::Instant::now();
    (now + Duration::from_millis(deadline_ms.saturating_sub(now_ms))).into_std()
}

impl EmbeddedDelivery {
    pub(crate) fn new(shared: Arc<Shared>, from: Arc<Source>, leased: Leased) -> Self {
        Self {
            shared,
            from,
            message: {
                let mut message = convert::from_record(leased.record);
                // A redriven message comes back without its envelope, as on every backend.
                if matches!(leased.r, Ref::Dlq(_)) {
                    Envelope::strip(&mut message);
                }
                message
            },
            r: leased.r,
            token: leased.token,
            attempt: leased.attempt,
            deadline: deadline(leased.deadline_ms),
        }
    }

    /// An ack, retry or release: queued with the verbs issued about now, settled together.
    async fn settle_with_others(self, verb: Verb) -> VerbResult<Self> {
        let (done, settled) = completion::<()>();
        let settle = Settle {
            r: self.r,
            token: self.token,
            verb,
            done,
        };
        let shared = &self.shared;
        shared
            .settler
            .submit(&shared.engine, &self.from.physical, settle)
            .await;
        self.outcome(settled.await)
    }

    async fn settle(
        self,
        verb: impl FnOnce(&Self, Box<dyn FnOnce(sluice_engine::Result<()>) + Send>),
    ) -> VerbResult<Self> {
        let (done, settled) = completion::<()>();
        verb(&self, done);
        self.outcome(settled.await)
    }

    #[allow(clippy::result_large_err)] // the contract's VerbResult hands the delivery back
    fn outcome(self, settled: Result<(), Error>) -> VerbResult<Self> {
        match settled {
            Ok(()) => Ok(()),
            Err(error) => {
                let error = self.name_lease(error);
                Err(VerbError::new(error, self))
            }
        }
    }

    /// The engine names a lost lease by its position; the contract names it by message id.
    fn name_lease(&self, error: Error) -> Error {
        match error {
            Error::LeaseLost { .. } => Error::LeaseLost {
                id: self.message.id().to_string(),
            },
            other => other,
        }
    }
}

impl Delivery for EmbeddedDelivery {
    fn message(&self) -> &Message {
        &self.message
    }
    fn attempt(&self) -> u32 {
        self.attempt
    }
    fn lease_deadline(&self) -> Instant {
        self.deadline
    }
    fn topic(&self) -> &TopicName {
        &self.from.topic
    }
    fn subscription(&self) -> &SubscriptionName {
        &self.from.subscription
    }

    async fn ack(self) -> VerbResult<Self> {
        self.settle_with_others(Verb::Ack).await
    }

    async fn retry(self, after: Duration) -> VerbResult<Self> {
        let after_ms = ms(after);
        self.settle_with_others(Verb::Retry { after_ms }).await
    }

    async fn release(self) -> VerbResult<Self> {
        self.settle_with_others(Verb::Release).await
    }

    async fn dead_letter(self, reason: DeadLetterReason) -> VerbResult<Self> {
        let topic = self.from.topic.to_string();
        let subscription = self.from.subscription.to_string();
        let message = self.message.clone();
        self.settle(move |d, done| {
            // The engine knows the attempts and the first failure; the envelope's header names
            // are the contract's.
            let envelope = Box::new(move |attempts: u32, first_failure_ms: Option<u64>| {
                let mut dead = message;
                let mut reason_text = DeadLetterReason::new(reason.reason.clone());
                reason_text.last_error = reason.last_error.clone();
                let mut env = Envelope::new(
                    topic,
                    subscription,
                    attempts,
                    reason_text,
                    first_failure_ms.and_then(convert::from_ms),
                    SystemTime::now(),
                );
                if env.first_failure_at.is_none() {
                    env.first_failure_at = Some(env.dead_lettered_at);
                }
                env.write(&mut dead);
                convert::to_record(&dead)
            });
            d.shared
                .engine
                .dead_letter(&d.from.physical, d.r, d.token, envelope, done);
        })
        .await
    }

    async fn extend_lease(&mut self, lease: Duration) -> Result<(), Error> {
        let deadline_ms = self
            .shared
            .engine
            .extend(&self.from.physical, self.r, self.token, ms(lease).max(1))
            .map_err(|e| self.name_lease(convert::error(e)))?;
        self.deadline = deadline(deadline_ms);
        Ok(())
    }
}
