//! [`RabbitPublisher`]: confirmed, persistent publishes (on the publisher's own confirm-mode
//! channel) to a topic's exchange, delayed ones
//! through the topic's delay tiers, with the emulated dedup window.
//!
//! Invariants:
//! - `publish` returns `Ok(Published)` only after the broker's confirm.
//! - A dedup claim is taken before sending and dropped if the publish fails, so a failed
//!   publish can be retried with the same id. A claim the store cannot take fails the
//!   publish (nothing is sent); a claim it cannot drop is logged and ends with its window.
//! - The claims live in the options' `dedup_store`, keyed by the topic's physical name: per
//!   process by default; across processes and restarts with a shared durable store, e.g.
//!   `sluice-redis` or `sluice-sql`.
//! - `close` refuses new publishes at once and returns when none is in flight.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use futures::future::join_all;
use sluice_core::{
    Error, Message, MessageError, PublishOutcome, PublishReceipt, Publisher, TopicName,
};
use tokio::sync::Notify;

use crate::backend::Shared;
use crate::link::{confirmed, reply_code, ConfirmChannel, NOT_FOUND};
use crate::names::{tier_for, MAX_DELAY};
use crate::wire;

/// Publishes to topics on its own confirm-mode channel of the backend's connection.
pub struct RabbitPublisher {
    shared: Arc<Shared>,
    channel: ConfirmChannel,
    closed: AtomicBool,
    in_flight: Arc<AtomicUsize>,
    idle: Arc<Notify>,
}

impl std::fmt::Debug for RabbitPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitPublisher").finish_non_exhaustive()
    }
}

/// Counts a publish in flight for as long as it lives.
struct InFlight {
    count: Arc<AtomicUsize>,
    idle: Arc<Notify>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// A publish that was sent and waits for its confirm.
struct Sent {
    id: sluice_core::MessageId,
    topic: TopicName,
    exchange: String,
    routing_key: String,
    claimed: bool,
    confirm: lapin::publisher_confirm::PublisherConfirm,
}

impl RabbitPublisher {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            channel: ConfirmChannel::default(),
            closed: AtomicBool::new(false),
            in_flight: Arc::new(AtomicUsize::new(0)),
            idle: Arc::new(Notify::new()),
        }
    }

    fn enter(&self) -> Result<InFlight, Error> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight {
            count: Arc::clone(&self.in_flight),
            idle: Arc::clone(&self.idle),
        };
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed("the publisher is closed"));
        }
        Ok(guard)
    }

    /// Validates, claims the id (dedup) and sends; `Ok(None)` for a duplicate.
    async fn send(&self, topic: &TopicName, mut message: Message) -> Result<Option<Sent>, Error> {
        let shared = &self.shared;
        message.check_size(shared.caps.max_message_size)?;
        let window = shared.topic_window(topic).await?;
        let now = SystemTime::now();
        let tier = match message.deliver_at() {
            Some(at) if at > now => {
                let delay = at.duration_since(now).unwrap_or_default();
                let tier = tier_for(delay).ok_or(MessageError::DelayTooLong {
                    requested: delay,
                    max: MAX_DELAY,
                })?;
                Some(tier)
            }
            _ => None,
        };
        message.set_deliver_at(None);
        message.set_published_at(now);
        let claimed = match window {
            Some(window) => {
                if !shared.claim(topic, message.id().as_str(), window).await? {
                    return Ok(None);
                }
                true
            }
            None => false,
        };
        let sent = async {
            let (exchange, extra) = match tier {
                Some(tier) => {
                    let label = shared.delay_tier(topic, tier).await?;
                    let exchange = shared.names.delay_exchange(topic);
                    (exchange, vec![(wire::DELAY_TIER, label)])
                }
                None => (shared.names.exchange(topic), Vec::new()),
            };
            let out = wire::encode(&message, &extra)?;
            let mandatory = shared.options.unroutable_is_error && tier.is_none();
            let confirm = self
                .channel
                .send(
                    &shared.link,
                    &exchange,
                    &out.routing_key,
                    mandatory,
                    &out.body,
                    out.properties,
                )
                .await?;
            Ok::<_, Error>((exchange, out.routing_key, confirm))
        }
        .await;
        match sent {
            Ok((exchange, routing_key, confirm)) => Ok(Some(Sent {
                id: message.id().clone(),
                topic: topic.clone(),
                exchange,
                routing_key,
                claimed,
                confirm,
            })),
            Err(err) => {
                shared.uncache_topic(topic.as_str());
                if claimed {
                    shared.release_claim(topic, message.id().as_str()).await;
                }
                Err(err)
            }
        }
    }

    /// Waits for a sent publish's confirm.
    async fn confirm(&self, sent: Sent) -> Result<PublishReceipt, Error> {
        let result = confirmed(sent.confirm, &sent.exchange, &sent.routing_key).await;
        match result {
            Ok(()) => Ok(PublishReceipt::new(sent.id, PublishOutcome::Published)),
            Err(err) => {
                self.shared.uncache_topic(sent.topic.as_str());
                if sent.claimed {
                    self.shared
                        .release_claim(&sent.topic, sent.id.as_str())
                        .await;
                }
                Err(self.not_found(err, &sent.topic).await)
            }
        }
    }

    /// A publish that failed because the exchange is gone means the topic is.
    async fn not_found(&self, err: Error, topic: &TopicName) -> Error {
        let gone = match &err {
            Error::Backend {
                source: Some(source),
                ..
            } => source
                .downcast_ref::<lapin::Error>()
                .is_some_and(|e| reply_code(e) == Some(NOT_FOUND)),
            _ => false,
        };
        if gone {
            self.shared.forget_topic(topic).await;
            return Error::topic_not_found(topic.as_str());
        }
        err
    }

    async fn publish_one(
        &self,
        topic: &TopicName,
        message: Message,
    ) -> Result<PublishReceipt, Error> {
        let id = message.id().clone();
        match self.send(topic, message).await? {
            Some(sent) => self.confirm(sent).await,
            None => Ok(PublishReceipt::new(id, PublishOutcome::Duplicate)),
        }
    }
}

impl Publisher for RabbitPublisher {
    async fn publish(&self, topic: &TopicName, message: Message) -> Result<PublishReceipt, Error> {
        let _in_flight = self.enter()?;
        self.publish_one(topic, message).await
    }

    async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<Message>,
    ) -> Vec<Result<PublishReceipt, Error>> {
        let _in_flight = match self.enter() {
            Ok(guard) => guard,
            Err(_) => {
                return messages
                    .iter()
                    .map(|_| Err(Error::Closed("the publisher is closed")))
                    .collect()
            }
        };
        // Send in order (the wire keeps it), then wait for the confirms together.
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let id = message.id().clone();
            pending.push((id, self.send(topic, message).await));
        }
        join_all(pending.into_iter().map(|(id, sent)| async move {
            match sent? {
                Some(sent) => self.confirm(sent).await,
                None => Ok(PublishReceipt::new(id, PublishOutcome::Duplicate)),
            }
        }))
        .await
    }

    async fn close(&self) -> Result<(), Error> {
        self.closed.store(true, Ordering::SeqCst);
        loop {
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return Ok(());
            }
            idle.await;
        }
    }
}
