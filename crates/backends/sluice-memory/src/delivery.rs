//! [`MemoryDelivery`]: one leased message and its verbs.
//!
//! Invariants: a delivery names its message by (subscription incarnation, arrival number,
//! lease token). A verb succeeds only while the subscription's entry still carries that
//! token and its deadline is ahead; otherwise it fails with `LeaseLost` (or `NotFound` if
//! the subscription was deleted) and hands the delivery back. Verbs do not need the
//! subscriber: they stay valid after it is closed.

use std::time::Duration;

use sluice_core::{
    DeadLetterReason, Delivery, Error, Message, Result, SubscriptionName, TopicName, VerbError,
    VerbResult,
};
use tokio::time::Instant;

use crate::backend::MemoryBackend;
use crate::subscription::{Lease, Seq, Verb};

/// A message leased to one consumer of a [`MemoryBackend`] subscription.
#[derive(Debug)]
pub struct MemoryDelivery {
    // Boxed: a delivery travels by value through every verb and back in its `VerbError`;
    // one pointer keeps that cheap.
    lease: Box<Leased>,
}

#[derive(Debug)]
struct Leased {
    backend: MemoryBackend,
    topic: TopicName,
    subscription: SubscriptionName,
    incarnation: u64,
    seq: Seq,
    token: u64,
    attempt: u32,
    deadline: Instant,
    message: Message,
}

impl MemoryDelivery {
    pub(crate) fn new(
        backend: MemoryBackend,
        topic: TopicName,
        subscription: SubscriptionName,
        incarnation: u64,
        lease: Lease,
    ) -> Self {
        Self {
            lease: Box::new(Leased {
                backend,
                topic,
                subscription,
                incarnation,
                seq: lease.seq,
                token: lease.token,
                attempt: lease.attempt,
                deadline: lease.deadline,
                message: lease.message,
            }),
        }
    }

    /// Applies a verb under the backend's lock; returns the new deadline for
    /// `ExtendLease`.
    fn apply(&self, verb: Verb) -> Result<Option<Instant>> {
        let lease = &self.lease;
        // Settling frees room in the topic's backlog: publishers waiting for it try again.
        let frees_room = matches!(verb, Verb::Ack | Verb::DeadLetter(_));
        lease.backend.with_state(|state, now, clock| {
            let deadline = state
                .incarnation(&lease.subscription, lease.incarnation)?
                .settle(lease.seq, lease.token, verb, now, clock)
                .map_err(|_| Error::LeaseLost {
                    id: lease.message.id().to_string(),
                })?;
            if frees_room {
                state.room.notify_waiters();
            }
            Ok(deadline)
        })
    }

    /// A settling verb: the delivery is consumed on success, handed back on failure.
    fn settle(self, verb: Verb) -> VerbResult<Self> {
        match self.apply(verb) {
            Ok(_) => Ok(()),
            Err(error) => Err(VerbError::new(error, self)),
        }
    }
}

impl Delivery for MemoryDelivery {
    fn message(&self) -> &Message {
        &self.lease.message
    }

    fn attempt(&self) -> u32 {
        self.lease.attempt
    }

    fn lease_deadline(&self) -> std::time::Instant {
        self.lease.deadline.into_std()
    }

    fn topic(&self) -> &TopicName {
        &self.lease.topic
    }

    fn subscription(&self) -> &SubscriptionName {
        &self.lease.subscription
    }

    async fn ack(self) -> VerbResult<Self> {
        self.settle(Verb::Ack)
    }

    async fn retry(self, after: Duration) -> VerbResult<Self> {
        self.settle(Verb::Retry(after))
    }

    async fn release(self) -> VerbResult<Self> {
        self.settle(Verb::Release)
    }

    async fn dead_letter(self, reason: DeadLetterReason) -> VerbResult<Self> {
        self.settle(Verb::DeadLetter(reason))
    }

    async fn extend_lease(&mut self, lease: Duration) -> Result<()> {
        if let Some(deadline) = self.apply(Verb::ExtendLease(lease))? {
            self.lease.deadline = deadline;
        }
        Ok(())
    }
}
