//! Consuming: subscribers pull deliveries; a delivery is settled by exactly one verb.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::config::SubscriptionConfig;
use crate::envelope::DeadLetterReason;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::name::{SubscriptionName, TopicName};

/// A verb that failed: the error, and the delivery handed back so the caller can try again
/// or another verb.
pub struct VerbError<D> {
    /// Why the verb failed.
    pub error: Error,
    /// The delivery, unsettled.
    pub delivery: D,
}

impl<D> VerbError<D> {
    /// A failed verb.
    pub fn new(error: Error, delivery: D) -> Self {
        Self { error, delivery }
    }
    /// Drops the delivery (its lease will run out) and keeps the error.
    pub fn into_error(self) -> Error {
        self.error
    }
}

impl<D> std::fmt::Debug for VerbError<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<D> std::fmt::Display for VerbError<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl<D> std::error::Error for VerbError<D> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The result of a verb.
pub type VerbResult<D> = std::result::Result<(), VerbError<D>>;

/// One message handed to one consumer, reserved for it until its lease deadline.
///
/// # Contract
/// - **Exactly one verb**: each verb takes the delivery by value, so it is settled once.
///   Dropping it without a verb lets the lease run out: the message is delivered again with
///   `attempt + 1`.
/// - **Failure hands it back**: a verb that fails returns [`VerbError`] with the delivery, so
///   the caller can retry the verb or choose another.
/// - **After the lease**: once the lease expired, the message may already be delivered to
///   another consumer; a verb may then fail with [`Error::LeaseLost`] and has no effect.
/// - **Attempt**: 1 on first delivery, +1 on every redelivery (retry, lease expiry, and
///   `release` where [`Capabilities::release_counts_as_attempt`](crate::Capabilities)).
pub trait Delivery: Send + Sync + Sized + 'static {
    /// The message.
    fn message(&self) -> &Message;

    /// 1-based count of deliveries of this message to this subscription.
    fn attempt(&self) -> u32;

    /// When the lease runs out, on tokio's clock (`tokio::time::Instant::from_std`).
    fn lease_deadline(&self) -> Instant;

    /// The topic the message was published to.
    fn topic(&self) -> &TopicName;

    /// The subscription it was delivered through.
    fn subscription(&self) -> &SubscriptionName;

    /// Done: the message is removed from the subscription and never delivered to it again.
    /// Acking twice is impossible (the delivery is consumed).
    fn ack(self) -> impl Future<Output = VerbResult<Self>> + Send;

    /// Failed: deliver again, no earlier than `after` from now, with `attempt + 1`. For
    /// ordering level `strict`, later messages of the same key wait for it.
    fn retry(self, after: Duration) -> impl Future<Output = VerbResult<Self>> + Send;

    /// Give back without penalty where the backend allows (at shutdown): delivered again
    /// at once, `attempt` unchanged unless the backend counts releases.
    fn release(self) -> impl Future<Output = VerbResult<Self>> + Send;

    /// Move to the subscription's dead-letter queue with an envelope (topic, subscription,
    /// attempts, reason, last error, first failure time, dead-lettered at). The message keeps
    /// its id, payload and headers.
    fn dead_letter(self, reason: DeadLetterReason)
        -> impl Future<Output = VerbResult<Self>> + Send;

    /// Heartbeat for long work: the lease now runs until `lease` from now. Fails with
    /// [`Error::LeaseLost`] if the lease had already expired.
    fn extend_lease(&mut self, lease: Duration) -> impl Future<Output = Result<()>> + Send;
}

/// Pulls deliveries of one subscription.
///
/// # Contract
/// - **Thread safety**: `Send + Sync`; concurrent `receive` calls compete for messages like
///   separate consumers do.
/// - **Competing consumers**: every subscriber of a subscription, in any process, competes:
///   each message is leased to one of them at a time.
/// - **Receive**: waits up to `wait` for at least one delivery, then returns up to `max`
///   (fewer, or none, when nothing is ready). A subscriber holds at most the subscription's
///   `prefetch` unsettled deliveries at once.
/// - **Close**: stops receiving. Deliveries already handed out stay valid until settled or
///   their lease runs out; nothing is lost.
pub trait Subscriber: Send + Sync + 'static {
    /// The delivery type.
    type Delivery: Delivery;

    /// The subscription's name.
    fn subscription(&self) -> &SubscriptionName;

    /// The subscription's configuration (max attempts, lease…), read when subscribing.
    fn config(&self) -> &SubscriptionConfig;

    /// Pulls up to `max` deliveries, waiting up to `wait` for the first.
    fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Self::Delivery>>> + Send;

    /// Stops receiving.
    fn close(&self) -> impl Future<Output = Result<()>> + Send;

    /// Where global rate limits keep their buckets, if the backend keeps them itself: the
    /// embedded engine (in its process), `sluice serve` (for every client). `None` (the
    /// default) on the brokers: a worker with a global limit is then given a store.
    fn limiter(&self) -> Option<std::sync::Arc<dyn crate::limit::LimiterStore>> {
        None
    }
}
