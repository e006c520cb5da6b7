//! [`SqsSubscriber`]: long-polling receivers that keep a bounded buffer of deliveries.
//!
//! Invariants:
//! - **Credit**: a semaphore of `prefetch` permits bounds what this subscriber holds
//!   (buffered plus handed out and not settled). A poller takes its permits before it asks
//!   SQS for messages, and each delivery carries its permit until it is settled or dropped.
//! - **Pollers**: `ceil(prefetch / 10)` of them (at most 8) on a standard queue, each asking
//!   for up to 10 messages. On a FIFO queue each asks for one message at a time
//!   ([`SqsOptions::fifo_pollers`](crate::SqsOptions) of them, 1 by default): SQS never
//!   returns a message of a group that has one in flight, so one message per call gives
//!   strict per-key ordering — one in flight per key, and a key held while its message waits
//!   for a retry — with concurrency across keys. (One call may return several messages of
//!   one group, which is why a call asks for one.)
//! - **Never handed out early**: a message whose `deliver_at` is in the future is made
//!   invisible until it is due (in hops of at most 12 hours) and not delivered; a message the
//!   subscription's filter does not match (a pattern SNS could not express whole) is deleted;
//!   a message whose attributes do not decode goes to the DLQ with the reason.
//! - **No receive is cancelled midway** (its messages would stay hidden for a lease): at
//!   close, a poll in flight finishes and its messages are made visible again; buffered
//!   deliveries are released at once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::MessageSystemAttributeName;
use sluice_core::envelope::Envelope;
use sluice_core::{
    DeadLetterReason, Error, Message, MessageParts, Result, Subscriber, SubscriptionConfig,
    SubscriptionName,
};
use tokio::sync::{mpsc, Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{
    decode_raw, system_number, whole_seconds, Shared, SubscriptionState, MAX_VISIBILITY,
};
use crate::batch::MAX_BATCH;
use crate::delivery::SqsDelivery;
use crate::error::to_error;
use crate::receives::Receive;

/// Most pollers per subscriber.
const MAX_POLLERS: usize = 8;

/// The system attributes Sluice reads on every received message.
pub(crate) fn system_attributes() -> Vec<MessageSystemAttributeName> {
    vec![
        MessageSystemAttributeName::ApproximateReceiveCount,
        MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
        MessageSystemAttributeName::SentTimestamp,
    ]
}

/// What a delivery holds while it lives: its credit permit, its receive (stale once the
/// message is received again) and, on a FIFO queue, its group.
pub(crate) struct Hold {
    _permit: OwnedSemaphorePermit,
    receive: Option<Receive>,
    group: Option<(Arc<StdMutex<HashSet<String>>>, String)>,
}

impl Hold {
    /// The message was received again since this delivery's receive.
    pub(crate) fn superseded(&self) -> bool {
        self.receive.as_ref().is_some_and(Receive::superseded)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some((groups, group)) = &self.group {
            groups.lock().expect("groups").remove(group);
        }
    }
}

struct Inner {
    /// The queue turned out to be deleted.
    gone: AtomicBool,
    /// FIFO groups this subscriber holds a delivery of (a second one is never handed out).
    groups: Arc<StdMutex<HashSet<String>>>,
    shared: Arc<Shared>,
    state: Arc<SubscriptionState>,
    credit: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<SqsDelivery>,
    rx: Mutex<mpsc::UnboundedReceiver<SqsDelivery>>,
    buffered: Arc<AtomicI64>,
    cancel: CancellationToken,
}

/// Pulls deliveries of one subscription. Dropping it stops its pollers (as `close` does, but
/// without waiting).
pub struct SqsSubscriber {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqsSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsSubscriber")
            .field("subscription", &self.inner.state.name)
            .finish_non_exhaustive()
    }
}

impl SqsSubscriber {
    pub(crate) fn start(shared: Arc<Shared>, state: Arc<SubscriptionState>) -> Self {
        let prefetch = state.config.prefetch.max(1) as usize;
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            gone: AtomicBool::new(false),
            groups: Arc::default(),
            buffered: shared.buffered(&state.name),
            shared,
            credit: Arc::new(Semaphore::new(prefetch)),
            tx,
            rx: Mutex::new(rx),
            cancel: CancellationToken::new(),
            state,
        });
        let pollers = if inner.state.fifo {
            inner.shared.options.fifo_pollers.clamp(1, MAX_POLLERS)
        } else {
            prefetch.div_ceil(MAX_BATCH).min(MAX_POLLERS)
        };
        for _ in 0..pollers {
            tokio::spawn(poll(Arc::clone(&inner)));
        }
        Self { inner }
    }
}

impl Drop for SqsSubscriber {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let inner = Arc::clone(&self.inner);
            handle.spawn(async move { release_buffered(&inner).await });
        }
    }
}

/// Makes every buffered delivery visible again.
async fn release_buffered(inner: &Inner) {
    let mut rx = inner.rx.lock().await;
    let mut released = Vec::new();
    while let Ok(delivery) = rx.try_recv() {
        inner.buffered.fetch_sub(1, Ordering::SeqCst);
        released.push(delivery.give_back());
    }
    drop(rx);
    futures::future::join_all(released).await;
}

/// Deliveries of all of `inner`'s pollers.
async fn poll(inner: Arc<Inner>) {
    let fifo = inner.state.fifo;
    let per_call = if fifo { 1 } else { MAX_BATCH };
    let wait = whole_seconds(inner.shared.options.poll_wait, Duration::from_secs(20)).max(1);
    let mut backoff = Duration::from_millis(100);
    loop {
        let first = tokio::select! {
            biased;
            () = inner.cancel.cancelled() => return,
            permit = Arc::clone(&inner.credit).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        if inner.cancel.is_cancelled() {
            return;
        }
        let mut permits = vec![first];
        while permits.len() < per_call {
            match Arc::clone(&inner.credit).try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let result = inner
            .shared
            .sqs
            .receive_message()
            .queue_url(&inner.state.queue_url)
            .max_number_of_messages(permits.len() as i32)
            .wait_time_seconds(wait)
            .message_attribute_names("All")
            .set_message_system_attribute_names(Some(system_attributes()))
            .send()
            .await;
        // SQS starts a message's visibility timeout when it answers: the lease is counted from
        // the answer's arrival (a long poll may wait up to 20 s before it).
        let received_at = Instant::now();
        let messages = match result {
            Ok(out) => {
                backoff = Duration::from_millis(100);
                out.messages.unwrap_or_default()
            }
            Err(err) if crate::error::is_not_found(&err) => {
                // The subscription was deleted: receive says so from now on.
                tracing::warn!(subscription = %inner.state.name, "the subscription's queue is gone");
                inner.gone.store(true, Ordering::SeqCst);
                inner.cancel.cancel();
                return;
            }
            Err(err) => {
                let queue = &inner.state.queue_url;
                let err = to_error(err, &format!("receiving from `{queue}`"));
                tracing::warn!(subscription = %inner.state.name, error = %err, "receive failed; trying again");
                drop(permits);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {},
                    () = inner.cancel.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        for raw in messages {
            let Some(permit) = permits.pop() else {
                // SQS returned more than asked for: put the extra back.
                if let Some(receipt) = raw.receipt_handle() {
                    let _ = inner.state.visibility.submit(receipt, 0).await;
                }
                continue;
            };
            handle(&inner, raw, received_at, permit).await;
        }
    }
}

/// How many receives a delayed message spent being held back before it was due: one per
/// hop of at most 12 hours between its first receive and its due time.
fn hold_backs(deliver_at: Option<SystemTime>, first_receive_ms: Option<u64>) -> u32 {
    let (Some(due), Some(first)) = (deliver_at, first_receive_ms) else {
        return 0;
    };
    let due_ms = due
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    if first >= due_ms {
        return 0;
    }
    let hop = MAX_VISIBILITY.as_millis() as u64;
    (due_ms - first).div_ceil(hop) as u32
}

async fn handle(
    inner: &Arc<Inner>,
    raw: aws_sdk_sqs::types::Message,
    received_at: Instant,
    permit: OwnedSemaphorePermit,
) {
    let state = &inner.state;
    let Some(receipt) = raw.receipt_handle().map(str::to_owned) else {
        return;
    };
    let incoming = match decode_raw(&raw) {
        Ok(incoming) => incoming,
        Err(reason) => {
            poison(inner, &raw, &receipt, reason).await;
            return;
        }
    };
    let message = incoming.message;
    if state.plan.check_on_receive {
        let filter = state.config.filter.as_ref();
        if filter.is_some_and(|f| !f.matches(message.routing_key())) {
            let _ = state.deletes.submit(&receipt, 0).await;
            return;
        }
    }
    let now = SystemTime::now();
    if let Some(due) = message.deliver_at().filter(|due| *due > now) {
        let remaining = due.duration_since(now).unwrap_or_default();
        let seconds = whole_seconds(remaining, MAX_VISIBILITY);
        let _ = state.visibility.submit(&receipt, seconds).await;
        return;
    }
    let receives =
        system_number(&raw, MessageSystemAttributeName::ApproximateReceiveCount).unwrap_or(1);
    let first_receive = system_number(
        &raw,
        MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
    );
    let held = hold_backs(message.deliver_at(), first_receive);
    let attempt = (incoming.attempt_base as u64 + receives)
        .saturating_sub(u64::from(held))
        .clamp(1, u64::from(u32::MAX)) as u32;
    let mut hold = Hold {
        _permit: permit,
        receive: raw
            .message_id()
            .map(|id| inner.shared.receives.register(id.to_owned(), receives)),
        group: None,
    };
    if state.fifo {
        // SQS hands out one message per group at a time; moto's concurrent long polls do not
        // always. A second message of a group this subscriber still holds comes back a
        // second later instead of being handed out beside the first.
        let group = message
            .ordering_key()
            .unwrap_or(message.id().as_str())
            .to_owned();
        if !inner.groups.lock().expect("groups").insert(group.clone()) {
            tracing::debug!(subscription = %state.name, %group, "a second message of a held group: made visible again");
            let _ = state.visibility.submit(&receipt, 1).await;
            return;
        }
        hold.group = Some((Arc::clone(&inner.groups), group));
    }
    let lease = Duration::from_secs(whole_seconds(state.config.lease, MAX_VISIBILITY) as u64);
    let first_receive_at = first_receive.map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    let delivery = SqsDelivery::new(
        Arc::clone(&inner.shared),
        Arc::clone(state),
        message,
        attempt,
        receipt,
        (received_at, received_at + lease),
        first_receive_at,
        hold,
    );
    if inner.cancel.is_cancelled() {
        delivery.give_back().await;
        return;
    }
    inner.buffered.fetch_add(1, Ordering::SeqCst);
    if let Err(unsent) = inner.tx.send(delivery) {
        inner.buffered.fetch_sub(1, Ordering::SeqCst);
        unsent.0.give_back().await;
        return;
    }
    // Closed meanwhile: its drain may have run before this send; drain again.
    if inner.cancel.is_cancelled() {
        release_buffered(inner).await;
    }
}

/// A message whose Sluice attributes do not decode: to the DLQ with the reason (its body as
/// the payload), never to a handler, never back to the queue.
async fn poison(inner: &Inner, raw: &aws_sdk_sqs::types::Message, receipt: &str, reason: String) {
    let state = &inner.state;
    tracing::error!(subscription = %state.name, %reason, "undecodable message: dead-lettered");
    if let Some(dlq) = &state.dlq_url {
        let mut parts = MessageParts::default();
        parts.payload = raw.body().unwrap_or("").as_bytes().to_vec().into();
        let mut message = Message::from_parts(parts);
        let reason = DeadLetterReason::new(format!("undecodable message: {reason}"));
        let attempts =
            system_number(raw, MessageSystemAttributeName::ApproximateReceiveCount).unwrap_or(1);
        Envelope::new(
            state.config.topic.as_str(),
            state.name.as_str(),
            attempts as u32,
            reason,
            Some(SystemTime::now()),
            SystemTime::now(),
        )
        .write(&mut message);
        if let Err(err) = inner
            .shared
            .send_to_queue(dlq, state.fifo, &message, None)
            .await
        {
            tracing::error!(subscription = %state.name, error = %err, "could not dead-letter an undecodable message; it stays in the queue");
            return;
        }
    }
    let _ = state.deletes.submit(receipt, 0).await;
}

impl Subscriber for SqsSubscriber {
    type Delivery = SqsDelivery;

    fn subscription(&self) -> &SubscriptionName {
        &self.inner.state.name
    }

    fn config(&self) -> &SubscriptionConfig {
        &self.inner.state.config
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<SqsDelivery>> {
        if self.inner.gone.load(Ordering::SeqCst) {
            return Err(Error::subscription_not_found(
                self.inner.state.name.as_str(),
            ));
        }
        if self.inner.cancel.is_cancelled() {
            return Err(Error::Closed("subscriber"));
        }
        let max = max.max(1);
        let deadline = Instant::now() + wait;
        let mut rx = self.inner.rx.lock().await;
        let mut out = Vec::new();
        while out.len() < max {
            let next = if out.is_empty() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(delivery)) => delivery,
                    Ok(None) | Err(_) => break,
                }
            } else {
                match rx.try_recv() {
                    Ok(delivery) => delivery,
                    Err(_) => break,
                }
            };
            self.inner.buffered.fetch_sub(1, Ordering::SeqCst);
            // A lease that ran out in the buffer: SQS delivers the message again.
            let mut next = next;
            if next.lease_expired() || !next.refresh().await {
                continue;
            }
            out.push(next);
        }
        Ok(out)
    }

    async fn close(&self) -> Result<()> {
        self.inner.cancel.cancel();
        release_buffered(&self.inner).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_backs_count_the_hops_before_the_due_time() {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let hour = 3_600_000;
        assert_eq!(hold_backs(None, Some(5)), 0);
        assert_eq!(hold_backs(Some(at(1_000)), None), 0);
        assert_eq!(
            hold_backs(Some(at(1_000)), Some(2_000)),
            0,
            "first received when due"
        );
        assert_eq!(hold_backs(Some(at(10_000)), Some(2_000)), 1, "one hop");
        assert_eq!(
            hold_backs(Some(at(12 * hour + 1)), Some(1)),
            1,
            "exactly 12 h"
        );
        assert_eq!(
            hold_backs(Some(at(30 * hour)), Some(0)),
            3,
            "12 h + 12 h + 6 h"
        );
    }
}
