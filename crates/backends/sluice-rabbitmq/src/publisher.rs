//! [`RabbitPublisher`]: confirmed, persistent publishes (on the publisher's own confirm-mode
//! channel) to a topic's exchange, delayed ones
//! through the topic's delay tiers, with the emulated dedup window.
//!
//! Invariants:
//! - `publish` returns `Ok(Published)` only after the broker's confirm.
//! - On a topic with a dedup window a publish first takes a *pending* claim of its id
//!   (`dedup.rs`), sends, and after the broker's confirm *confirms* the claim for the
//!   window; a failed publish releases it, so it can be retried with the same id. Only a
//!   confirmed claim makes a later publish `Duplicate`; another publish's pending claim, or
//!   a claim the store cannot take, fails the publish (nothing is sent), retryably when the
//!   store's error is. A claim that cannot be confirmed or released is logged and ends after
//!   `PENDING_CLAIM`: it delays a retry, never drops it.
//! - A batch sends in order and admits (checks and claims) each message just before sending
//!   it. A copy of an id met earlier in the batch is a `Duplicate` of that copy, decided
//!   before claiming (a batch never finds itself in progress). A message whose admission
//!   fails retryably fails every later message of the batch too, unsent: a caller retrying
//!   it must not find later messages of its key ahead of it.
//! - `close` refuses new publishes at once and returns when none is in flight.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::join_all;
use sluice_core::dedup::PendingClaim;
use sluice_core::{
    Error, Message, MessageError, MessageId, PublishOutcome, PublishReceipt, Publisher, TopicName,
};
use tokio::sync::Notify;

use crate::backend::Shared;
use crate::dedup;
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

/// A message checked and, on a topic with a dedup window, claimed: ready to send.
struct Admitted {
    message: Message,
    /// The delay tier it goes through, if it is delayed.
    tier: Option<Duration>,
    /// Its pending dedup claim, and the window to confirm it for.
    claim: Option<(PendingClaim, Duration)>,
}

/// A publish that was sent and waits for its confirm.
struct Sent {
    id: MessageId,
    topic: TopicName,
    exchange: String,
    routing_key: String,
    claim: Option<(PendingClaim, Duration)>,
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

    /// Validates a message and, on a topic with a dedup window, claims its id; `Ok(None)`
    /// for a duplicate.
    async fn admit(
        &self,
        topic: &TopicName,
        mut message: Message,
    ) -> Result<Option<Admitted>, Error> {
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
        let claim = match window {
            Some(window) => match shared.claim(topic, message.id().as_str()).await? {
                Some(claim) => Some((claim, window)),
                None => return Ok(None),
            },
            None => None,
        };
        Ok(Some(Admitted {
            message,
            tier,
            claim,
        }))
    }

    /// Sends an admitted message; a failure releases its claim.
    async fn send(&self, topic: &TopicName, admitted: Admitted) -> Result<Sent, Error> {
        let shared = &self.shared;
        let Admitted {
            message,
            tier,
            claim,
        } = admitted;
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
            Ok((exchange, routing_key, confirm)) => Ok(Sent {
                id: message.id().clone(),
                topic: topic.clone(),
                exchange,
                routing_key,
                claim,
                confirm,
            }),
            Err(err) => {
                shared.uncache_topic(topic.as_str());
                if let Some((claim, _)) = claim {
                    dedup::release(topic, claim).await;
                }
                Err(err)
            }
        }
    }

    /// Waits for a sent publish's confirm, then confirms its dedup claim (or releases it if
    /// the broker refused the message).
    async fn confirm(&self, sent: Sent) -> Result<PublishReceipt, Error> {
        let result = confirmed(sent.confirm, &sent.exchange, &sent.routing_key).await;
        match result {
            Ok(()) => {
                if let Some((claim, window)) = sent.claim {
                    dedup::confirm(&sent.topic, claim, window).await;
                }
                Ok(PublishReceipt::new(sent.id, PublishOutcome::Published))
            }
            Err(err) => {
                self.shared.uncache_topic(sent.topic.as_str());
                if let Some((claim, _)) = sent.claim {
                    dedup::release(&sent.topic, claim).await;
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
        match self.admit(topic, message).await? {
            Some(admitted) => {
                let sent = self.send(topic, admitted).await?;
                self.confirm(sent).await
            }
            None => Ok(PublishReceipt::new(id, PublishOutcome::Duplicate)),
        }
    }
}

/// The error of a batch's message left unsent after an earlier one failed retryably.
fn not_sent(id: &MessageId, earlier: &str) -> Error {
    Error::backend(
        format!(
            "message `{id}` not sent: an earlier message of this batch failed before it was \
             sent ({earlier}); sending this one ahead of its retry would break publish order"
        ),
        true,
    )
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
        // Without the window here, no copy is taken for a duplicate of another: each message's
        // admission then meets the same failure.
        let windowed = matches!(self.shared.topic_window(topic).await, Ok(Some(_)));
        let mut seen = HashSet::new();
        let mut failed: Option<String> = None;
        // Send in order (the wire keeps it), then wait for the confirms together.
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let id = message.id().clone();
            let sent = if let Some(earlier) = &failed {
                Err(not_sent(&id, earlier))
            } else if windowed && !seen.insert(id.clone()) {
                // A later copy of an id of this batch: a duplicate of the earlier copy.
                Ok(None)
            } else {
                match self.admit(topic, message).await {
                    Ok(Some(admitted)) => self.send(topic, admitted).await.map(Some),
                    Ok(None) => Ok(None),
                    Err(err) => {
                        if err.is_retryable() {
                            failed = Some(err.to_string());
                        }
                        Err(err)
                    }
                }
            };
            pending.push((id, sent));
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
