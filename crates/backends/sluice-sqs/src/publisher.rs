//! [`SqsPublisher`]: SNS `Publish` and `PublishBatch` (ten per call), FIFO group and
//! deduplication ids, the dedup window's duplicate reports.
//!
//! Invariants:
//! - Every message is checked (size, encoding) and, on a topic with a dedup window, claimed
//!   before any call: a bad one fails alone. One whose id another publish holds pending
//!   fails retryably, and so does every later message of its batch, unsent (a caller
//!   retrying it must not find later messages of its key ahead of it).
//! - The claims only decide whether a receipt says `Duplicate` (SQS FIFO drops the copies
//!   itself; `dedup.rs`): a claim is pending while the message is sent, confirmed once SNS
//!   took it, released if SNS did not. The dedup store's failure never stops a publish. The
//!   claims live in the options' dedup store: per process by default; across processes and
//!   restarts with a shared durable store, e.g. `sluice-redis` or `sluice-sql`.
//! - A copy of an id met earlier in a batch is a `Duplicate` of that copy, decided before
//!   claiming, and sent like any duplicate.
//! - On a FIFO topic the `MessageGroupId` is the ordering key (the message id when there is
//!   none, so such messages are not ordered against each other), and the
//!   `MessageDeduplicationId` is the message id when the topic has a dedup window, a fresh
//!   UUID otherwise (so a FIFO topic without a window drops nothing).
//! - The batches of a FIFO topic leave one after another, so messages sharing an ordering key
//!   keep their batch order; a standard topic's batches leave concurrently.
//! - `close` refuses new publishes at once and returns when none is in flight.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_sns::types::PublishBatchRequestEntry;
use futures::future::join_all;
use sluice_core::dedup::PendingClaim;
use sluice_core::{
    Error, Message, MessageId, PublishOutcome, PublishReceipt, Publisher, Result, TopicName,
};
use tokio::sync::Notify;

use crate::backend::{Shared, TopicState};
use crate::batch::MAX_BATCH;
use crate::dedup::{self, Admission};
use crate::error::{is_not_found, to_error};
use crate::wire::{self, Attribute};

/// Attributes for SNS.
fn sns_attributes(
    attributes: &[Attribute],
) -> HashMap<String, aws_sdk_sns::types::MessageAttributeValue> {
    attributes
        .iter()
        .map(|a| {
            let value = aws_sdk_sns::types::MessageAttributeValue::builder()
                .data_type(a.data_type)
                .string_value(&a.value)
                .build()
                .expect("data type is set");
            (a.name.to_owned(), value)
        })
        .collect()
}

/// Attributes for SQS.
pub(crate) fn sqs_attributes(
    attributes: &[Attribute],
) -> HashMap<String, aws_sdk_sqs::types::MessageAttributeValue> {
    attributes
        .iter()
        .map(|a| {
            let value = aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type(a.data_type)
                .string_value(&a.value)
                .build()
                .expect("data type is set");
            (a.name.to_owned(), value)
        })
        .collect()
}

/// A message checked and encoded, ready for SNS.
struct Prepared {
    message: Message,
    out: wire::Outgoing,
    group_id: Option<String>,
    dedup_id: Option<String>,
    /// The id was published within the window (the dedup store says so, or the batch holds
    /// an earlier copy): still sent (SQS FIFO drops the copy itself), reported `Duplicate`.
    duplicate: bool,
    /// Its pending dedup claim and the window to confirm it for.
    claim: Option<(PendingClaim, Duration)>,
}

impl Prepared {
    fn receipt(&self) -> PublishReceipt {
        let outcome = if self.duplicate {
            PublishOutcome::Duplicate
        } else {
            PublishOutcome::Published
        };
        PublishReceipt::new(self.message.id().clone(), outcome)
    }

    /// Confirms its dedup claim if SNS took the message, releases it if not.
    async fn settle(self, topic: &TopicName, published: bool) {
        match self.claim {
            Some((claim, window)) if published => dedup::confirm(topic, claim, window).await,
            Some((claim, _)) => dedup::release(topic, claim).await,
            None => {}
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

/// Publishes to SNS topics. Cheap to share; clones of the backend share its clients.
pub struct SqsPublisher {
    shared: Arc<Shared>,
    closed: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl std::fmt::Debug for SqsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsPublisher")
            .field("in_flight", &self.in_flight.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

/// Counts a publish in flight for as long as it lives.
struct InFlight<'a>(&'a SqsPublisher);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl SqsPublisher {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            closed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    fn enter(&self) -> Result<InFlight<'_>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self);
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed("publisher"));
        }
        Ok(guard)
    }

    /// Checks and encodes one message.
    fn prepare(&self, topic: &TopicState, mut message: Message) -> Result<Prepared> {
        message.check_size(self.shared.caps.max_message_size)?;
        if let Some(at) = message.deliver_at() {
            let delay = at.duration_since(SystemTime::now()).unwrap_or_default();
            if delay > crate::backend::MAX_DELAY {
                return Err(sluice_core::MessageError::DelayTooLong {
                    requested: delay,
                    max: crate::backend::MAX_DELAY,
                }
                .into());
            }
        }
        message.set_published_at(SystemTime::now());
        let out = wire::encode(&message, None)?;
        wire::check_sns_size(&message, &out)?;
        let (group_id, dedup_id) = if topic.fifo {
            let group = message.ordering_key().unwrap_or(message.id().as_str());
            let dedup = match topic.config.dedup_window {
                Some(_) => wire::dedup_id(message.id().as_str()),
                None => uuid::Uuid::now_v7().simple().to_string(),
            };
            (Some(wire::group_id(group)), Some(dedup))
        } else {
            (None, None)
        };
        Ok(Prepared {
            message,
            out,
            group_id,
            dedup_id,
            duplicate: false,
            claim: None,
        })
    }

    /// Checks, encodes and, on a topic with a dedup window, claims one message (see
    /// `dedup.rs`: only another publish in progress fails it).
    async fn admit(&self, topic: &TopicState, message: Message) -> Result<Prepared> {
        let mut prepared = self.prepare(topic, message)?;
        let Some(window) = topic.config.dedup_window else {
            return Ok(prepared);
        };
        let id = prepared.message.id().as_str();
        match self.shared.claim(&topic.name, id).await? {
            Admission::Claimed(claim) => prepared.claim = Some((claim, window)),
            Admission::Duplicate => prepared.duplicate = true,
            Admission::Unknown => {}
        }
        Ok(prepared)
    }

    /// A publish error: a missing topic is forgotten and reported as `NotFound`.
    async fn publish_error<E, R>(
        &self,
        topic: &TopicState,
        err: aws_sdk_sns::error::SdkError<E, R>,
    ) -> Error
    where
        E: aws_sdk_sns::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        if is_not_found(&err) {
            self.shared.forget_topic(&topic.name).await;
            return Error::topic_not_found(topic.name.as_str());
        }
        to_error(err, &format!("publishing to SNS topic `{}`", topic.arn))
    }

    async fn send_one(&self, topic: &TopicState, mut prepared: Prepared) -> Result<PublishReceipt> {
        let receipt = prepared.receipt();
        let result = self
            .shared
            .sns
            .publish()
            .topic_arn(&topic.arn)
            .message(std::mem::take(&mut prepared.out.body))
            .set_message_attributes(Some(sns_attributes(&prepared.out.attributes)))
            .set_message_group_id(prepared.group_id.take())
            .set_message_deduplication_id(prepared.dedup_id.take())
            .send()
            .await;
        prepared.settle(&topic.name, result.is_ok()).await;
        match result {
            Ok(_) => Ok(receipt),
            Err(err) => Err(self.publish_error(topic, err).await),
        }
    }

    /// Sends up to ten prepared messages as one `PublishBatch`; one result per message.
    async fn send_batch(
        &self,
        topic: &TopicState,
        mut batch: Vec<Prepared>,
    ) -> Vec<Result<PublishReceipt>> {
        let batch_len = batch.len();
        // The bodies and ids move into the request; what stays is what the results need.
        let entries = batch
            .iter_mut()
            .enumerate()
            .map(|(i, p)| {
                PublishBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message(std::mem::take(&mut p.out.body))
                    .set_message_attributes(Some(sns_attributes(&p.out.attributes)))
                    .set_message_group_id(p.group_id.take())
                    .set_message_deduplication_id(p.dedup_id.take())
                    .build()
                    .expect("id and message are set")
            })
            .collect();
        let result = self
            .shared
            .sns
            .publish_batch()
            .topic_arn(&topic.arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await;
        match result {
            Ok(out) => {
                let failed: HashMap<usize, String> = out
                    .failed()
                    .iter()
                    .filter_map(|f| {
                        let text = format!(
                            "publishing to SNS topic `{}`: {}: {}",
                            topic.arn,
                            f.code(),
                            f.message().unwrap_or("")
                        );
                        Some((f.id().parse().ok()?, text))
                    })
                    .collect();
                let mut results = Vec::with_capacity(batch.len());
                let mut settled = Vec::with_capacity(batch.len());
                for (i, p) in batch.into_iter().enumerate() {
                    let result = match failed.get(&i) {
                        Some(text) => Err(Error::backend(text.clone(), true)),
                        None => Ok(p.receipt()),
                    };
                    settled.push(p.settle(&topic.name, result.is_ok()));
                    results.push(result);
                }
                join_all(settled).await;
                results
            }
            Err(err) => {
                join_all(batch.into_iter().map(|p| p.settle(&topic.name, false))).await;
                let err = self.publish_error(topic, err).await;
                let not_found = matches!(err, Error::NotFound { .. });
                let (text, retryable) = (err.to_string(), err.is_retryable());
                (0..batch_len)
                    .map(|_| {
                        Err(if not_found {
                            Error::topic_not_found(topic.name.as_str())
                        } else {
                            Error::backend(text.clone(), retryable)
                        })
                    })
                    .collect()
            }
        }
    }
}

impl Publisher for SqsPublisher {
    /// Counts the publish as in flight when called (not when first polled), so `close`
    /// waits for every publish started before it.
    fn publish(
        &self,
        topic: &TopicName,
        message: Message,
    ) -> impl std::future::Future<Output = Result<PublishReceipt>> + Send {
        let guard = self.enter();
        async move {
            let _guard = guard?;
            let state = self.shared.topic(topic).await?;
            let prepared = self.admit(&state, message).await?;
            self.send_one(&state, prepared).await
        }
    }

    async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<Message>,
    ) -> Vec<Result<PublishReceipt>> {
        let count = messages.len();
        let guard = match self.enter() {
            Ok(guard) => guard,
            Err(_) => {
                return (0..count)
                    .map(|_| Err(Error::Closed("publisher")))
                    .collect()
            }
        };
        let state = match self.shared.topic(topic).await {
            Ok(state) => state,
            Err(err) => {
                let text = err.to_string();
                let not_found = matches!(err, Error::NotFound { .. });
                return (0..count)
                    .map(|_| {
                        Err(if not_found {
                            Error::topic_not_found(topic.as_str())
                        } else {
                            Error::backend(text.clone(), err.is_retryable())
                        })
                    })
                    .collect();
            }
        };
        let mut results: Vec<Option<Result<PublishReceipt>>> = (0..count).map(|_| None).collect();
        let mut ready = Vec::new();
        // The claims are taken together, before anything is sent. A later copy of an id of
        // this batch is a duplicate of the earlier copy, never claimed (the batch would find
        // its own claim in progress).
        let ids: Vec<MessageId> = messages.iter().map(|m| m.id().clone()).collect();
        let windowed = state.config.dedup_window.is_some();
        let mut seen = HashSet::new();
        let admitted = join_all(messages.into_iter().map(|message| {
            let copy = windowed && !seen.insert(message.id().clone());
            let state = &state;
            async move {
                if copy {
                    let mut prepared = self.prepare(state, message)?;
                    prepared.duplicate = true;
                    return Ok(prepared);
                }
                self.admit(state, message).await
            }
        }))
        .await;
        let mut failed: Option<String> = None;
        let mut unsent = Vec::new();
        for (i, admitted) in admitted.into_iter().enumerate() {
            match (admitted, &failed) {
                (Ok(p), Some(earlier)) => {
                    results[i] = Some(Err(not_sent(&ids[i], earlier)));
                    unsent.push(p.settle(&state.name, false));
                }
                (Ok(p), None) => ready.push((i, p)),
                // A later message failed on its own keeps its own error.
                (Err(err), Some(_)) => results[i] = Some(Err(err)),
                (Err(err), None) => {
                    if err.is_retryable() {
                        failed = Some(err.to_string());
                    }
                    results[i] = Some(Err(err));
                }
            }
        }
        join_all(unsent).await;
        // PublishBatch takes at most ten entries and 256 KiB in all.
        let mut chunks: Vec<Vec<(usize, Prepared)>> = Vec::new();
        let mut bytes = 0;
        for entry in ready {
            let size = entry.1.out.size();
            match chunks.last_mut() {
                Some(chunk) if chunk.len() < MAX_BATCH && bytes + size <= wire::SNS_MAX_BYTES => {
                    bytes += size;
                    chunk.push(entry);
                }
                _ => {
                    bytes = size;
                    chunks.push(vec![entry]);
                }
            }
        }
        let send = |chunk: Vec<(usize, Prepared)>| {
            let state = Arc::clone(&state);
            async move {
                let (positions, prepared): (Vec<usize>, Vec<Prepared>) = chunk.into_iter().unzip();
                positions
                    .into_iter()
                    .zip(self.send_batch(&state, prepared).await)
                    .collect::<Vec<_>>()
            }
        };
        let sent = if state.fifo {
            // After a failure the rest is not sent: a caller publishing it again must not
            // find later messages of a key stored before earlier ones.
            let mut sent = Vec::new();
            let mut failed = false;
            for chunk in chunks {
                if failed {
                    let mut settled = Vec::with_capacity(chunk.len());
                    for (i, p) in chunk {
                        settled.push(p.settle(&state.name, false));
                        let text = "not sent: an earlier message of this batch failed, and an \
                                    ordered topic keeps publish order";
                        sent.push((i, Err(Error::backend(text, true))));
                    }
                    join_all(settled).await;
                    continue;
                }
                let results = send(chunk).await;
                failed = results.iter().any(|(_, r)| r.is_err());
                sent.extend(results);
            }
            sent
        } else {
            join_all(chunks.into_iter().map(send))
                .await
                .into_iter()
                .flatten()
                .collect()
        };
        for (i, result) in sent {
            results[i] = Some(result);
        }
        drop(guard);
        results
            .into_iter()
            .map(|r| r.expect("every message has a result"))
            .collect()
    }

    async fn close(&self) -> Result<()> {
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
