//! Duplicate injection for the demo: a subscriber wrapper that "loses" some acks, as a
//! network would. The handler's effect happened, the broker never heard the ack, the lease
//! runs out and the message is delivered again: the idempotency store must skip it.

use std::time::{Duration, Instant};

use sluice::{
    DeadLetterReason, Delivery, Message, Subscriber, SubscriptionConfig, SubscriptionName,
    TopicName, VerbError, VerbResult,
};

use super::chance;

/// Wraps a subscriber; the first delivery of a `rate` share of messages loses its ack.
pub(crate) struct LostAcks<S> {
    pub(crate) inner: S,
    pub(crate) seed: u64,
    pub(crate) rate: f64,
}

/// A delivery whose ack may be lost.
pub(crate) struct MaybeLost<D> {
    inner: D,
    lose_ack: bool,
}

impl<S: Subscriber> Subscriber for LostAcks<S> {
    type Delivery = MaybeLost<S::Delivery>;
    fn subscription(&self) -> &SubscriptionName {
        self.inner.subscription()
    }
    fn config(&self) -> &SubscriptionConfig {
        self.inner.config()
    }
    async fn receive(&self, max: usize, wait: Duration) -> sluice::Result<Vec<Self::Delivery>> {
        let deliveries = self.inner.receive(max, wait).await?;
        Ok(deliveries
            .into_iter()
            .map(|d| {
                let lose_ack = d.attempt() == 1
                    && chance(self.seed, d.message().id().as_str(), "lost-ack") < self.rate;
                MaybeLost { inner: d, lose_ack }
            })
            .collect())
    }
    async fn close(&self) -> sluice::Result<()> {
        self.inner.close().await
    }
}

fn wrap<D>(r: VerbResult<D>, lose_ack: bool) -> VerbResult<MaybeLost<D>> {
    r.map_err(|e| {
        VerbError::new(
            e.error,
            MaybeLost {
                inner: e.delivery,
                lose_ack,
            },
        )
    })
}

impl<D: Delivery> Delivery for MaybeLost<D> {
    fn message(&self) -> &Message {
        self.inner.message()
    }
    fn attempt(&self) -> u32 {
        self.inner.attempt()
    }
    fn lease_deadline(&self) -> Instant {
        self.inner.lease_deadline()
    }
    fn topic(&self) -> &TopicName {
        self.inner.topic()
    }
    fn subscription(&self) -> &SubscriptionName {
        self.inner.subscription()
    }
    async fn ack(self) -> VerbResult<Self> {
        if self.lose_ack {
            // The ack never reaches the broker: the lease will run out.
            drop(self.inner);
            return Ok(());
        }
        wrap(self.inner.ack().await, false)
    }
    async fn retry(self, after: Duration) -> VerbResult<Self> {
        wrap(self.inner.retry(after).await, self.lose_ack)
    }
    async fn release(self) -> VerbResult<Self> {
        wrap(self.inner.release().await, self.lose_ack)
    }
    async fn dead_letter(self, reason: DeadLetterReason) -> VerbResult<Self> {
        wrap(self.inner.dead_letter(reason).await, self.lose_ack)
    }
    async fn extend_lease(&mut self, lease: Duration) -> sluice::Result<()> {
        self.inner.extend_lease(lease).await
    }
}
