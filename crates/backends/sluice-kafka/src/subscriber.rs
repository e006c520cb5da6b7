//! [`KafkaSubscriber`] and [`KafkaDelivery`]: a subscription's consumer-group member and the
//! per-message verbs on top of committed offsets.
//!
//! | verb | on Kafka |
//! |---|---|
//! | ack | completes the record; the committed position moves past the completed prefix |
//! | retry(after) | copies the record to the subscription's retry tier (due time and attempt in headers), then completes it |
//! | dead_letter | copies it to the subscription's DLQ topic with the envelope, then completes it |
//! | release | hands it out again from memory, attempt unchanged |
//! | extend_lease | moves the in-memory deadline |
//!
//! The subscriber's group consumes the topic and the subscription's retry tiers, so a retried
//! record comes back to the same subscription only (ordering `until_retry`: later records of
//! its key may overtake it).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use sluice_core::envelope::{format_time, FIRST_FAILURE_HEADER};
use sluice_core::{
    DeadLetterReason, Delivery, Envelope, Error, Message, Result, Subscriber, SubscriptionConfig,
    SubscriptionName, TopicName, VerbError, VerbResult,
};

use crate::backend::Shared;
use crate::consumer::{Core, Entry, MoveGuard, Sink, Spec};
use crate::mover::Mover;
use crate::names::{tier_for, MAX_DELAY, TIERS};
use crate::publisher::produce;
use crate::wire;

/// What a subscriber's deliveries share.
struct Context {
    shared: Arc<Shared>,
    name: SubscriptionName,
    config: SubscriptionConfig,
    core: Arc<Core>,
}

/// The subscription's retry tier and DLQ, for records the engine cannot hand out.
struct ToSubscription {
    shared: Arc<Shared>,
    name: SubscriptionName,
    config: SubscriptionConfig,
}

impl Sink for ToSubscription {
    fn move_expired(&self, entry: Entry) -> BoxFuture<'static, bool> {
        let shared = Arc::clone(&self.shared);
        let topic = shared.names.retry_tier(&self.name, TIERS[0]);
        Box::pin(async move {
            let mut message = entry.message;
            message.set_deliver_at(None);
            // `entry.attempt` already counts the expired delivery.
            let record = wire::encode(&message, Some(entry.attempt.saturating_sub(1)));
            match produce(&shared, &topic, record).await {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(%topic, error = %err, "moving an expired delivery failed; the next owner reads it again");
                    false
                }
            }
        })
    }

    fn dead_letter_poison(
        &self,
        entry: Entry,
        _raw: wire::Outgoing,
        reason: String,
    ) -> BoxFuture<'static, bool> {
        let (shared, name, config) = (
            Arc::clone(&self.shared),
            self.name.clone(),
            self.config.clone(),
        );
        Box::pin(async move {
            let reason = DeadLetterReason::new(format!("undecodable record: {reason}"));
            tracing::warn!(subscription = %name, reason = %reason.reason, "dead-lettering a poison record");
            if !config.dead_letter_queue {
                return true;
            }
            let message = with_envelope(entry.message, &name, &config, entry.attempt, reason);
            let topic = shared.names.dlq(&name);
            let record = wire::encode(&message, Some(entry.attempt));
            for attempt in 1..=3u32 {
                match produce(&shared, &topic, record.clone()).await {
                    Ok(()) => return true,
                    Err(err) => {
                        tracing::warn!(%topic, attempt, error = %err, "dead-lettering a poison record failed");
                        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                    }
                }
            }
            // Left pending: the partition's position stops before it, and the next owner
            // (or this one after a restart) tries again.
            false
        })
    }
}

/// The message as it goes to the DLQ: the envelope written, due now.
fn with_envelope(
    mut message: Message,
    name: &SubscriptionName,
    config: &SubscriptionConfig,
    attempt: u32,
    reason: DeadLetterReason,
) -> Message {
    let first_failure = message
        .header(FIRST_FAILURE_HEADER)
        .and_then(|v| humantime::parse_rfc3339(v).ok())
        .unwrap_or_else(SystemTime::now);
    Envelope::new(
        config.topic.as_str(),
        name.as_str(),
        attempt,
        reason,
        Some(first_failure),
        SystemTime::now(),
    )
    .write(&mut message);
    message.set_deliver_at(None);
    message
}

/// A subscriber of one subscription: a member of its consumer group.
pub struct KafkaSubscriber {
    context: Arc<Context>,
    /// The topic's delay mover, kept running while this subscriber is.
    mover: Mutex<Option<Arc<Mover>>>,
}

impl std::fmt::Debug for KafkaSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscriber")
            .field("subscription", &self.context.name)
            .finish_non_exhaustive()
    }
}

impl KafkaSubscriber {
    pub(crate) fn start(
        shared: Arc<Shared>,
        name: SubscriptionName,
        config: SubscriptionConfig,
    ) -> Result<Self> {
        let names = &shared.names;
        let tiers = names.retry_tiers(&name);
        let mut topics = vec![names.topic(&config.topic)];
        topics.extend(tiers.iter().cloned());
        let prefetch = usize::try_from(config.prefetch.max(1)).unwrap_or(usize::MAX);
        let spec = Spec {
            brokers: shared.options.brokers.clone(),
            group: names.group(&name),
            topics,
            tiers: tiers.into_iter().collect(),
            filter: config.filter.clone(),
            lease: config.lease,
            prefetch,
            buffer: (prefetch * 4).max(1000),
            leave_after: shared.leave_after(),
        };
        let expiry = Arc::new(ToSubscription {
            shared: Arc::clone(&shared),
            name: name.clone(),
            config: config.clone(),
        });
        // The mover first: if it cannot start, no group member is left running.
        let mover = shared.mover(&config.topic)?;
        let core = Core::start(spec, shared.member_config(), Some(expiry))?;
        Ok(Self {
            context: Arc::new(Context {
                shared,
                name,
                config,
                core,
            }),
            mover: Mutex::new(Some(mover)),
        })
    }
}

impl Drop for KafkaSubscriber {
    fn drop(&mut self) {
        self.context.core.close();
    }
}

impl Subscriber for KafkaSubscriber {
    type Delivery = KafkaDelivery;

    fn subscription(&self) -> &SubscriptionName {
        &self.context.name
    }

    fn config(&self) -> &SubscriptionConfig {
        &self.context.config
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<KafkaDelivery>> {
        let leases = self.context.core.take(max.max(1), wait).await?;
        Ok(leases
            .into_iter()
            .map(|lease| KafkaDelivery {
                context: Arc::clone(&self.context),
                token: lease.token,
                message: lease.entry.message,
                attempt: lease.entry.attempt,
                deadline: lease.deadline,
            })
            .collect())
    }

    /// Stops receiving. When no delivery is still held, returns once every settled record is
    /// committed and the member has left its group (a process may exit right after: nothing
    /// acked comes back, and the next member is not kept waiting for this one's session to
    /// time out). Deliveries still held stay valid, and are committed once settled. The
    /// topic's delay mover is stopped the same way when this was its last user here.
    async fn close(&self) -> Result<()> {
        let mover = self.mover.lock().unwrap_or_else(|e| e.into_inner()).take();
        let last = mover.and_then(Arc::into_inner);
        // Both members leave at once: each waits a quiet spell before it goes.
        let mover_closed = async {
            if let Some(mover) = &last {
                mover.close().await;
            }
        };
        futures::join!(self.context.core.close_and_wait(), mover_closed);
        Ok(())
    }
}

/// One record handed to one consumer.
pub struct KafkaDelivery {
    context: Arc<Context>,
    token: u64,
    message: Message,
    attempt: u32,
    deadline: Instant,
}

impl std::fmt::Debug for KafkaDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDelivery")
            .field("id", self.message.id())
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl KafkaDelivery {
    fn id(&self) -> &str {
        self.message.id().as_str()
    }

    /// Copies the record to `topic` (with `attempt` deliveries so far), then completes it.
    async fn move_to(self, topic: String, message: Message, attempt: u32) -> VerbResult<Self> {
        let core = &self.context.core;
        if let Err(err) = core.begin_move(self.token, self.id()) {
            return Err(VerbError::new(err, self));
        }
        // Ends the move even if this future is dropped midway (a timeout around the verb).
        let guard = MoveGuard::new(Arc::clone(core), self.token);
        let record = wire::encode(&message, Some(attempt));
        match produce(&self.context.shared, &topic, record).await {
            Ok(()) => {
                guard.finish(true);
                Ok(())
            }
            Err(err) => {
                guard.finish(false);
                Err(VerbError::new(err, self))
            }
        }
    }
}

impl Delivery for KafkaDelivery {
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
        &self.context.config.topic
    }

    fn subscription(&self) -> &SubscriptionName {
        &self.context.name
    }

    async fn ack(self) -> VerbResult<Self> {
        match self.context.core.ack(self.token, self.id()) {
            Ok(()) => Ok(()),
            Err(err) => Err(VerbError::new(err, self)),
        }
    }

    async fn retry(self, after: Duration) -> VerbResult<Self> {
        if after > MAX_DELAY {
            let err = Error::Unsupported(format!(
                "a retry after {after:?}: the longest delay on Kafka is {MAX_DELAY:?}"
            ));
            return Err(VerbError::new(err, self));
        }
        let mut message = self.message.clone();
        message.set_deliver_at(Some(SystemTime::now() + after));
        if message.header(FIRST_FAILURE_HEADER).is_none() {
            message.set_reserved_header(FIRST_FAILURE_HEADER, format_time(SystemTime::now()));
        }
        let topic = self
            .context
            .shared
            .names
            .retry_tier(&self.context.name, tier_for(after));
        let attempt = self.attempt;
        self.move_to(topic, message, attempt).await
    }

    async fn release(self) -> VerbResult<Self> {
        match self.context.core.release(self.token, self.id()) {
            Ok(()) => Ok(()),
            Err(err) => Err(VerbError::new(err, self)),
        }
    }

    async fn dead_letter(self, reason: DeadLetterReason) -> VerbResult<Self> {
        let context = Arc::clone(&self.context);
        if !context.config.dead_letter_queue {
            tracing::warn!(
                subscription = %context.name,
                id = %self.id(),
                reason = %reason.reason,
                "dead-lettered without a dead-letter queue: discarded"
            );
            return self.ack().await;
        }
        let message = with_envelope(
            self.message.clone(),
            &context.name,
            &context.config,
            self.attempt,
            reason,
        );
        let topic = context.shared.names.dlq(&context.name);
        let attempt = self.attempt;
        self.move_to(topic, message, attempt).await
    }

    async fn extend_lease(&mut self, lease: Duration) -> Result<()> {
        let id = self.message.id().as_str().to_owned();
        self.deadline = self.context.core.extend(self.token, &id, lease)?;
        Ok(())
    }
}
