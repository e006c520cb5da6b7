//! [`SqsDelivery`]: one received message and its verbs.
//!
//! | verb | SQS call |
//! |---|---|
//! | `ack` | `DeleteMessage` (batched) |
//! | `retry(after)` | `ChangeMessageVisibility(after)` (batched), up to 12 h; longer: the message is re-sent with its due time and attempt count, then deleted |
//! | `release` | `ChangeMessageVisibility(0)`: SQS counts the next receive, so `attempt` grows |
//! | `dead_letter` | `SendMessage` to the DLQ with the envelope, then `DeleteMessage` |
//! | `extend_lease(d)` | `ChangeMessageVisibility(d)` |
//!
//! The lease is also kept on the client: a verb after the deadline, or after the message was
//! received again in this process, fails with `LeaseLost` without calling SQS (whose answer
//! to a stale receipt handle varies: real SQS may refuse it, moto accepts it).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sluice_core::envelope::Envelope;
use sluice_core::{
    DeadLetterReason, Delivery, Error, Message, Result, SubscriptionName, TopicName, VerbError,
    VerbResult,
};
use tokio::time::Instant;

use crate::backend::{whole_seconds, Shared, SubscriptionState, MAX_VISIBILITY};
use crate::batch::{Batcher, EntryError};
use crate::subscriber::Hold;

/// One message handed to one consumer.
pub struct SqsDelivery {
    shared: Arc<Shared>,
    state: Arc<SubscriptionState>,
    message: Message,
    attempt: u32,
    receipt: String,
    deadline: Instant,
    /// When SQS handed it out: it stays hidden at most 12 hours from then.
    received_at: Instant,
    first_receive_at: Option<SystemTime>,
    hold: Hold,
}

impl std::fmt::Debug for SqsDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsDelivery")
            .field("id", self.message.id())
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl SqsDelivery {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        state: Arc<SubscriptionState>,
        message: Message,
        attempt: u32,
        receipt: String,
        (received_at, deadline): (Instant, Instant),
        first_receive_at: Option<SystemTime>,
        hold: Hold,
    ) -> Self {
        Self {
            shared,
            state,
            message,
            attempt,
            receipt,
            deadline,
            received_at,
            first_receive_at,
            hold,
        }
    }

    /// How much longer SQS lets this receive stay hidden (12 hours from the receive).
    fn visibility_left(&self) -> Duration {
        MAX_VISIBILITY.saturating_sub(self.received_at.elapsed())
    }

    /// The lease ran out, or the message was received again in this process (the client's
    /// deadline is counted from the answer's arrival, a little after SQS's own).
    pub(crate) fn lease_expired(&self) -> bool {
        Instant::now() >= self.deadline || self.hold.superseded()
    }

    fn lease_lost(&self) -> Error {
        Error::LeaseLost {
            id: self.message.id().to_string(),
        }
    }

    /// Before a buffered delivery is handed out: if less than half of its lease is left, the
    /// lease starts again (a long-buffered message is not handed out about to expire).
    /// `false` if the lease was already lost.
    pub(crate) async fn refresh(&mut self) -> bool {
        let lease =
            Duration::from_secs(whole_seconds(self.state.config.lease, MAX_VISIBILITY) as u64);
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left >= lease / 2 {
            return true;
        }
        let lease = lease.min(self.visibility_left());
        lease.is_zero() || self.extend_lease(lease).await.is_ok()
    }

    /// Makes the message visible again at once (buffered deliveries at close); not when
    /// its lease is gone (a newer receive holds the message now).
    pub(crate) async fn give_back(self) {
        if self.lease_expired() {
            return;
        }
        let _ = self.state.visibility.submit(&self.receipt, 0).await;
    }

    /// Runs one batched call for this delivery, mapping a stale receipt to `LeaseLost`.
    async fn call(&self, batcher: &Batcher, seconds: i32) -> Result<()> {
        if self.lease_expired() {
            return Err(self.lease_lost());
        }
        batcher
            .submit(&self.receipt, seconds)
            .await
            .map_err(|err| match err {
                EntryError::LeaseLost => self.lease_lost(),
                EntryError::Failed(err) => err,
            })
    }

    /// Sends `message` to `queue_url`, then deletes this delivery.
    async fn move_then_delete(
        self,
        queue_url: String,
        message: Message,
        attempt: Option<u32>,
    ) -> VerbResult<Self> {
        if self.lease_expired() {
            let err = self.lease_lost();
            return Err(VerbError::new(err, self));
        }
        let sent = self
            .shared
            .send_to_queue(&queue_url, self.state.fifo, &message, attempt)
            .await;
        if let Err(err) = sent {
            return Err(VerbError::new(err, self));
        }
        // The copy is stored: a failed delete only means the original comes back once more.
        match self.call(&self.state.deletes, 0).await {
            Ok(()) => Ok(()),
            Err(err) => Err(VerbError::new(err, self)),
        }
    }
}

impl Delivery for SqsDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn lease_deadline(&self) -> std::time::Instant {
        self.deadline.into_std()
    }

    fn topic(&self) -> &TopicName {
        &self.state.config.topic
    }

    fn subscription(&self) -> &SubscriptionName {
        &self.state.name
    }

    async fn ack(self) -> VerbResult<Self> {
        match self.call(&self.state.deletes, 0).await {
            Ok(()) => Ok(()),
            Err(err) => Err(VerbError::new(err, self)),
        }
    }

    async fn retry(self, after: Duration) -> VerbResult<Self> {
        // SQS hides a received message at most 12 hours from its receive.
        if after > self.visibility_left() {
            if self.state.fifo {
                // A re-sent copy would queue behind later messages of its key.
                let err = Error::Unsupported(format!(
                    "a retry after {after:?} on an ordered (FIFO) subscription: SQS keeps a \
                     message hidden at most 12 hours from its receive, and a re-sent copy \
                     would be overtaken by later messages of its key"
                ));
                return Err(VerbError::new(err, self));
            }
            let mut copy = self.message.clone();
            copy.set_deliver_at(Some(SystemTime::now() + after));
            let queue = self.state.queue_url.clone();
            let attempt = Some(self.attempt);
            return self.move_then_delete(queue, copy, attempt).await;
        }
        let seconds = whole_seconds(after, MAX_VISIBILITY);
        match self.call(&self.state.visibility, seconds).await {
            Ok(()) => Ok(()),
            Err(err) => Err(VerbError::new(err, self)),
        }
    }

    async fn release(self) -> VerbResult<Self> {
        match self.call(&self.state.visibility, 0).await {
            Ok(()) => Ok(()),
            Err(err) => Err(VerbError::new(err, self)),
        }
    }

    async fn dead_letter(self, reason: DeadLetterReason) -> VerbResult<Self> {
        let Some(dlq) = self.state.dlq_url.clone() else {
            tracing::warn!(
                subscription = %self.state.name,
                id = %self.message.id(),
                reason = %reason.reason,
                "dead-lettered without a dead-letter queue: discarded"
            );
            return match self.call(&self.state.deletes, 0).await {
                Ok(()) => Ok(()),
                Err(err) => Err(VerbError::new(err, self)),
            };
        };
        let mut message = self.message.clone();
        let first_failure = match self.attempt {
            1 => SystemTime::now(),
            _ => self.first_receive_at.unwrap_or_else(SystemTime::now),
        };
        Envelope::new(
            self.state.config.topic.as_str(),
            self.state.name.as_str(),
            self.attempt,
            reason,
            Some(first_failure),
            SystemTime::now(),
        )
        .write(&mut message);
        // Due now: a delayed message that failed is not held back again in the DLQ.
        message.set_deliver_at(None);
        self.move_then_delete(dlq, message, None).await
    }

    async fn extend_lease(&mut self, lease: Duration) -> Result<()> {
        if lease > self.visibility_left() {
            return Err(Error::Unsupported(format!(
                "a lease of {lease:?} now: SQS keeps a message hidden at most 12 hours from its \
                 receive, {:?} are left",
                self.visibility_left()
            )));
        }
        let seconds = whole_seconds(lease, MAX_VISIBILITY);
        // SQS counts the new timeout from when it takes the call, after this instant: the
        // client's deadline never outlives the server's.
        let asked = Instant::now();
        self.call(&self.state.visibility, seconds).await?;
        self.deadline = asked + Duration::from_secs(seconds as u64);
        Ok(())
    }
}
