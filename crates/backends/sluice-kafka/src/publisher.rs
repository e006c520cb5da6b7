//! [`KafkaPublisher`]: publishes through the backend's one idempotent producer (`acks=all`,
//! batched by librdkafka with a 5 ms linger), confirmed on each record's delivery report.
//!
//! - The ordering key is the record key (same key, same partition, in order: the idempotent
//!   producer keeps order across its retries).
//! - A delayed message goes to the topic's delay tier (`names::tier_for`), moved to the topic
//!   when due by the topic's delay mover. The publisher runs that mover from its first
//!   delayed publish to a topic until it is closed (as every subscriber of the topic does):
//!   a producer whose consumers are not Sluice's still gets its delayed messages delivered.
//! - The topic's dedup window is emulated (`dedup.rs`): a publish takes a *pending* claim of
//!   its id in the options' dedup store (per process by default; across processes and
//!   restarts with a shared durable store, e.g. `sluice-redis` or `sluice-sql`), queues its
//!   record, and *confirms* the claim for the window after the delivery report; a failed
//!   publish releases it so the caller's retry goes through. Only a confirmed claim makes a
//!   later publish `Duplicate`; another publish's pending claim, or a claim the store cannot
//!   take, fails the publish (retryably when the store's error is). A claim that cannot be
//!   confirmed or released is logged and ends after `PENDING_CLAIM`.
//! - A publish is admitted (checked, and claimed on a topic with a window) before its record
//!   is queued; a batch admits all its messages first, then queues their records in order.
//!   A copy of an id met earlier in the batch is a `Duplicate` of that copy, decided before
//!   claiming. A message whose admission fails retryably fails every later message of the
//!   batch too (their claims released, their records never queued): a caller retrying it
//!   must not find later messages of its key ahead of it. With a store that answers over the
//!   network, separate concurrent `publish` calls to a topic with a window are queued in the
//!   order their claims come back.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::join_all;
use rdkafka::producer::{FutureRecord, Producer as _};
use sluice_core::dedup::PendingClaim;
use sluice_core::{
    Error, Message, MessageError, MessageId, PublishOutcome, PublishReceipt, Publisher, Result,
    TopicName,
};

use crate::backend::Shared;
use crate::dedup;
use crate::error::{is_unknown_topic, to_error};
use crate::mover::Mover;
use crate::names::MAX_DELAY;
use crate::wire::{self, Outgoing};

/// How long a publish waits for room in the producer's local queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// Produces one record to `topic` and waits for its delivery report.
pub(crate) async fn produce(shared: &Shared, topic: &str, record: Outgoing) -> Result<()> {
    let headers = record.kafka_headers();
    let mut future = FutureRecord::to(topic)
        .payload(&record.value)
        .headers(headers);
    if let Some(key) = &record.key {
        future = future.key(key);
    }
    match shared.producer.send(future, QUEUE_TIMEOUT).await {
        Ok(_) => Ok(()),
        Err((err, _)) if is_unknown_topic(&err) => Err(Error::NotFound {
            kind: sluice_core::ObjectKind::Topic,
            name: topic.to_owned(),
        }),
        Err((err, _)) => Err(to_error(err, &format!("publishing to `{topic}`"))),
    }
}

/// Publishes messages to Kafka topics.
pub struct KafkaPublisher {
    shared: Arc<Shared>,
    /// The delay movers of the topics this publisher sent a delayed message to.
    movers: Mutex<HashMap<TopicName, Arc<Mover>>>,
    closed: AtomicBool,
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher").finish_non_exhaustive()
    }
}

/// Counts a publish in flight for [`Publisher::close`].
struct InFlight<'a>(&'a KafkaPublisher);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl KafkaPublisher {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            movers: Mutex::default(),
            closed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
        }
    }

    /// The topic's configuration (checks that it exists), or why publishing cannot start.
    /// Counts a publish in flight, unless the publisher is closed. Counted before the
    /// check, so `close` waits for every publish that got past it.
    fn begin(&self) -> Result<InFlight<'_>> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(self);
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("publisher"));
        }
        Ok(guard)
    }

    /// The topic's configuration (checks that it exists).
    async fn prepare(&self, topic: &TopicName) -> Result<sluice_core::TopicConfig> {
        self.shared.cached_topic_config(topic).await
    }

    /// Checks a message of a prepared topic and, if the topic has a dedup window, claims its
    /// id (which may wait on the dedup store).
    async fn admit(
        &self,
        topic: &TopicName,
        config: &sluice_core::TopicConfig,
        mut message: Message,
    ) -> Result<Admitted> {
        let shared = &self.shared;
        message.check_size(shared.caps.max_message_size)?;
        let delay = message
            .deliver_at()
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .filter(|d| !d.is_zero());
        if let Some(delay) = delay.filter(|d| *d > MAX_DELAY) {
            return Err(MessageError::DelayTooLong {
                requested: delay,
                max: MAX_DELAY,
            }
            .into());
        }
        let claim = match config.dedup_window {
            Some(window) => match shared.claim(topic, message.id().as_str()).await? {
                Some(claim) => Some((claim, window)),
                None => return Ok(Admitted::Duplicate(message.id().clone())),
            },
            None => None,
        };
        if message.published_at().is_none() {
            message.set_published_at(SystemTime::now());
        }
        let target = match delay {
            Some(delay) => {
                self.keep_mover(topic)?;
                shared.names.delay_tier(topic, delay)
            }
            None => shared.names.topic(topic),
        };
        Ok(Admitted::Ready {
            message: Box::new(message),
            target,
            claim,
        })
    }

    /// Runs the topic's delay mover while this publisher lives (one per topic and process,
    /// shared with the topic's subscribers here).
    fn keep_mover(&self, topic: &TopicName) -> Result<()> {
        let mut movers = self.movers.lock().unwrap_or_else(|e| e.into_inner());
        if movers.get(topic).is_none_or(|m| m.is_stopped()) {
            movers.insert(topic.clone(), self.shared.mover(topic)?);
        }
        Ok(())
    }

    /// Queues an admitted message and waits for its delivery report, then confirms its
    /// dedup claim (or releases it if the record was not delivered). Nothing is awaited
    /// before the record is queued, so concurrent calls polled in order queue their records
    /// in order.
    async fn queue(&self, topic: &TopicName, admitted: Admitted) -> Result<PublishReceipt> {
        let (message, target, claim) = match admitted {
            Admitted::Duplicate(id) => {
                return Ok(PublishReceipt::new(id, PublishOutcome::Duplicate))
            }
            Admitted::Ready {
                message,
                target,
                claim,
            } => (message, target, claim),
        };
        let shared = &self.shared;
        let id = message.id().clone();
        match produce(shared, &target, wire::encode(&message, None)).await {
            Ok(()) => {
                if let Some((claim, window)) = claim {
                    dedup::confirm(topic, claim, window).await;
                }
                Ok(PublishReceipt::new(id, PublishOutcome::Published))
            }
            Err(err) => {
                if let Some((claim, _)) = claim {
                    dedup::release(topic, claim).await;
                }
                Err(match err {
                    Error::NotFound { .. } => {
                        shared.forget_topic(topic);
                        Error::topic_not_found(topic.as_str())
                    }
                    other => other,
                })
            }
        }
    }
}

/// A message checked (and claimed) for publishing.
enum Admitted {
    /// To be queued to `target` (the topic or one of its delay tiers).
    Ready {
        // Boxed: a message is large, a duplicate's id small.
        message: Box<Message>,
        target: String,
        /// Its pending dedup claim and the window to confirm it for.
        claim: Option<(PendingClaim, Duration)>,
    },
    /// Its id was published within the window (or earlier in the batch): dropped,
    /// reported as a duplicate.
    Duplicate(MessageId),
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

/// The same error again, for every message of a batch that could not start.
fn same_error(err: &Error) -> Error {
    match err {
        Error::NotFound { kind, name } => Error::NotFound {
            kind: *kind,
            name: name.clone(),
        },
        Error::Closed(what) => Error::Closed(what),
        Error::Timeout(after) => Error::Timeout(*after),
        other => Error::backend(other.to_string(), other.is_retryable()),
    }
}

impl Publisher for KafkaPublisher {
    async fn publish(&self, topic: &TopicName, message: Message) -> Result<PublishReceipt> {
        let _in_flight = self.begin()?;
        let config = self.prepare(topic).await?;
        let admitted = self.admit(topic, &config, message).await?;
        self.queue(topic, admitted).await
    }

    async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<Message>,
    ) -> Vec<Result<PublishReceipt>> {
        let _in_flight = match self.begin() {
            Ok(guard) => guard,
            Err(err) => return messages.iter().map(|_| Err(same_error(&err))).collect(),
        };
        let config = match self.prepare(topic).await {
            Ok(config) => config,
            Err(err) => return messages.iter().map(|_| Err(same_error(&err))).collect(),
        };
        // Every message is admitted (its claim taken) first; then every record is queued in
        // order before any is awaited: librdkafka batches them, and records of one key keep
        // their order on their partition.
        let config = &config;
        let ids: Vec<MessageId> = messages.iter().map(|m| m.id().clone()).collect();
        let mut seen = HashSet::new();
        let mut admitted = join_all(messages.into_iter().map(|message| {
            // A later copy of an id of this batch is a duplicate of the earlier copy, never
            // claimed (the batch would find its own claim in progress).
            let copy = config.dedup_window.is_some() && !seen.insert(message.id().clone());
            async move {
                if copy {
                    return Ok(Admitted::Duplicate(message.id().clone()));
                }
                self.admit(topic, config, message).await
            }
        }))
        .await;
        let failed = admitted.iter().enumerate().find_map(|(i, a)| match a {
            Err(err) if err.is_retryable() => Some((i, err.to_string())),
            _ => None,
        });
        if let Some((first, earlier)) = failed {
            let mut claims = Vec::new();
            // A later message failed on its own keeps its own error.
            for (admitted, id) in admitted.iter_mut().zip(&ids).skip(first + 1) {
                if admitted.is_err() {
                    continue;
                }
                let unsent = std::mem::replace(admitted, Err(not_sent(id, &earlier)));
                if let Ok(Admitted::Ready {
                    claim: Some((claim, _)),
                    ..
                }) = unsent
                {
                    claims.push(dedup::release(topic, claim));
                }
            }
            join_all(claims).await;
        }
        join_all(admitted.into_iter().map(|admitted| async move {
            match admitted {
                Ok(admitted) => self.queue(topic, admitted).await,
                Err(err) => Err(err),
            }
        }))
        .await
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        loop {
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                break;
            }
            idle.await;
        }
        let producer = self.shared.producer.clone();
        let flushed = crate::backend::blocking(move || {
            producer
                .flush(Duration::from_secs(30))
                .map_err(|e| to_error(e, "flushing the producer"))
        })
        .await;
        let movers: Vec<Arc<Mover>> = self
            .movers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, mover)| mover)
            .collect();
        crate::mover::close_all(movers).await;
        flushed
    }
}
