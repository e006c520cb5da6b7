//! [`RemoteDelivery`]: a lease held through the connection it arrived on. If that
//! connection breaks, the server has dropped the lease (it runs out and the message is
//! delivered again): verbs then fail with `LeaseLost`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::{
    DeadLetterReason, Delivery, Error, Message, SubscriptionName, TopicName, VerbError, VerbResult,
};
use sluice_protocol::message::WireDelivery;
use sluice_protocol::{convert, Request, Response, Verb};

use crate::link::{unexpected, Conn, Link};

/// A delivery from `sluice serve`.
pub struct RemoteDelivery {
    conn: Arc<Conn>,
    token: u64,
    message: Message,
    attempt: u32,
    deadline: Instant,
    topic: TopicName,
    subscription: SubscriptionName,
}

impl std::fmt::Debug for RemoteDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDelivery")
            .field("id", self.message.id())
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl RemoteDelivery {
    pub(crate) fn new(
        conn: Arc<Conn>,
        subscription: SubscriptionName,
        wire: WireDelivery,
        received: Instant,
    ) -> Result<Self, Error> {
        Ok(Self {
            conn,
            token: wire.token,
            message: convert::message_from_wire(wire.message)?,
            attempt: wire.attempt,
            deadline: received + Duration::from_millis(wire.lease_ms),
            topic: convert::topic(&wire.topic)?,
            subscription,
        })
    }

    fn lease_lost(&self) -> Error {
        Error::LeaseLost {
            id: self.message.id().as_str().to_owned(),
        }
    }

    /// The server reports a lease it no longer holds without the message id: name it.
    fn named(&self, error: Error) -> Error {
        match error {
            Error::LeaseLost { id } if id.is_empty() => self.lease_lost(),
            other => other,
        }
    }

    async fn call(&self, request: Request) -> Result<(), Error> {
        if self.conn.is_dead() {
            return Err(self.lease_lost());
        }
        match Link::call_waiting(&self.conn, request, Duration::ZERO).await {
            Ok(Response::Done) => Ok(()),
            Ok(other) => Err(unexpected(other)),
            // The connection broke meanwhile: the server dropped the lease with it.
            Err(err) if self.conn.is_dead() && err.is_retryable() => Err(self.lease_lost()),
            Err(err) => Err(self.named(err)),
        }
    }

    async fn settle(self, verb: Verb) -> VerbResult<Self> {
        if self.conn.is_dead() {
            return Err(VerbError::new(self.lease_lost(), self));
        }
        match self.conn.settle(self.token, verb).await {
            Ok(()) => Ok(()),
            // The connection broke meanwhile: the server dropped the lease with it.
            Err(err) if self.conn.is_dead() && err.is_retryable() => {
                Err(VerbError::new(self.lease_lost(), self))
            }
            Err(error) => {
                let error = self.named(error);
                Err(VerbError::new(error, self))
            }
        }
    }
}

impl Delivery for RemoteDelivery {
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
        &self.topic
    }

    fn subscription(&self) -> &SubscriptionName {
        &self.subscription
    }

    async fn ack(self) -> VerbResult<Self> {
        self.settle(Verb::Ack).await
    }

    async fn retry(self, after: Duration) -> VerbResult<Self> {
        self.settle(Verb::Retry {
            after_ms: convert::ms(after),
        })
        .await
    }

    async fn release(self) -> VerbResult<Self> {
        self.settle(Verb::Release).await
    }

    async fn dead_letter(self, reason: DeadLetterReason) -> VerbResult<Self> {
        self.settle(Verb::DeadLetter {
            reason: reason.reason,
            last_error: reason.last_error,
        })
        .await
    }

    async fn extend_lease(&mut self, lease: Duration) -> Result<(), Error> {
        let asked = Instant::now();
        self.call(Request::ExtendLease {
            token: self.token,
            lease_ms: convert::ms(lease),
        })
        .await?;
        self.deadline = asked + lease;
        Ok(())
    }
}
