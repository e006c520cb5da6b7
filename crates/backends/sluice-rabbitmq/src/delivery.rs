//! [`RabbitDelivery`]: one message held by one consumer, and the verbs.
//!
//! RabbitMQ holds a delivery until it is acked or its channel closes (or the broker-wide
//! `consumer_timeout`, 30 minutes by default on 3.10, runs out); it has no lease. Sluice
//! adds one on the client: a lease watcher task per subscriber gives a delivery back
//! (`nack`, requeue) when its lease runs out, which counts an attempt (`x-delivery-count`).
//! `extend_lease` moves the deadline the watcher reads.
//!
//! Invariants:
//! - A delivery is settled once: by a verb or by its lease timer, whichever takes it first
//!   (a verb in progress holds the timer off; a verb after the timer fired is `LeaseLost`
//!   and touches nothing).
//! - `retry` and `dead_letter` republish (confirmed) *before* acking: a crash in between
//!   duplicates the message, never loses it.

use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;
use sluice_core::envelope::{format_time, Envelope, FIRST_FAILURE_HEADER};
use sluice_core::{
    DeadLetterReason, Delivery, Error, Message, SubscriptionName, TopicName, VerbError, VerbResult,
};
use tokio::sync::mpsc;

use crate::names::{tier_for, MAX_DELAY};
use crate::subscriber::SubscriberState;
use crate::wire::{self, Decoded};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Held,
    Settling,
    Settled,
}

pub(crate) struct Lease {
    phase: Phase,
    deadline: Instant,
}

/// One message handed to one consumer.
pub struct RabbitDelivery {
    state: Arc<SubscriberState>,
    channel: Channel,
    tag: u64,
    message: Message,
    attempt: u32,
    // std Mutex: shared with the lease timer, never held across an .await.
    lease: Arc<Mutex<Lease>>,
}

impl std::fmt::Debug for RabbitDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitDelivery")
            .field("id", self.message.id())
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// A held delivery the lease watcher keeps an eye on.
pub(crate) struct Watch {
    deadline: Instant,
    seq: u64,
    lease: Arc<Mutex<Lease>>,
    channel: Channel,
    tag: u64,
}

impl PartialEq for Watch {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for Watch {}
impl PartialOrd for Watch {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Watch {
    /// Reversed: the earliest deadline is the greatest, for a max-heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.deadline, other.seq).cmp(&(self.deadline, self.seq))
    }
}

/// One task per subscriber gives each delivery back when its lease runs out, unless a verb
/// settled it first or `extend_lease` moved its deadline (then it is watched again).
/// It ends once the subscriber and every delivery it handed out are gone and nothing is
/// left to watch.
pub(crate) async fn watch_leases(mut watches: mpsc::UnboundedReceiver<Watch>) {
    let mut heap = BinaryHeap::new();
    let mut open = true;
    let mut seq = 0u64;
    loop {
        let next = heap.peek().map(|w: &Watch| w.deadline);
        if !open && next.is_none() {
            return;
        }
        tokio::select! {
            received = watches.recv(), if open => match received {
                Some(mut watch) => {
                    seq += 1;
                    watch.seq = seq;
                    heap.push(watch);
                }
                None => open = false,
            },
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(
                next.unwrap_or_else(Instant::now),
            )), if next.is_some() => {
                let Some(mut watch) = heap.pop() else { continue };
                let (phase, deadline) = {
                    let lease = watch.lease.lock().expect("lease");
                    (lease.phase, lease.deadline)
                };
                match phase {
                    Phase::Settled => {}
                    Phase::Settling => {
                        watch.deadline = Instant::now() + Duration::from_millis(20);
                        heap.push(watch);
                    }
                    Phase::Held if Instant::now() < deadline => {
                        watch.deadline = deadline;
                        heap.push(watch);
                    }
                    Phase::Held => {
                        let fire = {
                            let mut lease = watch.lease.lock().expect("lease");
                            let fire = lease.phase == Phase::Held;
                            if fire {
                                lease.phase = Phase::Settled;
                            }
                            fire
                        };
                        if fire {
                            let requeue = BasicNackOptions {
                                requeue: true,
                                multiple: false,
                            };
                            // A failure means the channel died, which requeued it anyway.
                            let _ = watch.channel.basic_nack(watch.tag, requeue).await;
                        }
                    }
                }
            }
        }
    }
}

impl RabbitDelivery {
    pub(crate) fn new(
        state: Arc<SubscriberState>,
        channel: Channel,
        tag: u64,
        decoded: Decoded,
    ) -> Self {
        let lease = Arc::new(Mutex::new(Lease {
            phase: Phase::Held,
            deadline: Instant::now() + state.config.lease,
        }));
        let deadline = lease.lock().expect("lease").deadline;
        state.watch(Watch {
            deadline,
            seq: 0,
            lease: Arc::clone(&lease),
            channel: channel.clone(),
            tag,
        });
        Self {
            state,
            channel,
            tag,
            message: decoded.message,
            attempt: decoded.attempt,
            lease,
        }
    }

    fn lease_lost(&self) -> Error {
        Error::LeaseLost {
            id: self.message.id().to_string(),
        }
    }

    /// Takes the delivery for a verb: `LeaseLost` if the lease timer already gave it back.
    fn begin(&self) -> Result<(), Error> {
        let mut lease = self.lease.lock().expect("lease");
        if lease.phase != Phase::Held {
            return Err(self.lease_lost());
        }
        lease.phase = Phase::Settling;
        Ok(())
    }

    fn end(&self, settled: bool) {
        self.lease.lock().expect("lease").phase =
            if settled { Phase::Settled } else { Phase::Held };
    }

    /// Settles the delivery with an ack, or a nack that requeues it.
    async fn settle(self, requeue: bool) -> VerbResult<Self> {
        if let Err(err) = self.begin() {
            return Err(VerbError::new(err, self));
        }
        let result = if requeue {
            let options = BasicNackOptions {
                requeue: true,
                multiple: false,
            };
            self.channel.basic_nack(self.tag, options).await
        } else {
            self.channel
                .basic_ack(self.tag, BasicAckOptions::default())
                .await
        };
        self.end(true);
        match result {
            Ok(()) => Ok(()),
            // The channel died: the broker requeued the message, this delivery is void.
            Err(_) => Err(VerbError::new(self.lease_lost(), self)),
        }
    }

    /// Republishes `message` to `queue` (confirmed), then acks this delivery.
    async fn republish_then_ack(
        self,
        queue: String,
        message: Message,
        extra: Vec<(&'static str, String)>,
    ) -> VerbResult<Self> {
        if let Err(err) = self.begin() {
            return Err(VerbError::new(err, self));
        }
        if let Err(err) = self.republish(&queue, &message, &extra).await {
            self.end(false);
            return Err(VerbError::new(err, self));
        }
        let acked = self
            .channel
            .basic_ack(self.tag, BasicAckOptions::default())
            .await;
        self.end(true);
        if let Err(err) = acked {
            // The copy is out; the original comes back once more (at least once).
            tracing::debug!(id = %self.message.id(), %err, "ack after a republish failed");
        }
        Ok(())
    }

    /// Republishes the message straight to a queue (through the default exchange).
    async fn republish(
        &self,
        queue: &str,
        message: &Message,
        extra: &[(&str, String)],
    ) -> Result<(), Error> {
        let out = wire::encode(message, extra)?;
        self.state
            .shared
            .link
            .publish("", queue, true, &out.body, out.properties)
            .await
    }

    fn first_failure(&self) -> Option<SystemTime> {
        self.message
            .header(FIRST_FAILURE_HEADER)
            .and_then(|at| humantime::parse_rfc3339(at).ok())
    }
}

impl Delivery for RabbitDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn lease_deadline(&self) -> Instant {
        self.lease.lock().expect("lease").deadline
    }

    fn topic(&self) -> &TopicName {
        &self.state.config.topic
    }

    fn subscription(&self) -> &SubscriptionName {
        &self.state.name
    }

    async fn ack(self) -> VerbResult<Self> {
        self.settle(false).await
    }

    /// Republishes the message with `attempt + 1`, into the retry tier of at least `after`
    /// (or straight to the queue for a zero delay), then acks. Delays beyond the largest
    /// tier wait in the largest tier.
    async fn retry(self, after: Duration) -> VerbResult<Self> {
        let mut message = self.message.clone();
        if message.header(FIRST_FAILURE_HEADER).is_none() {
            message.set_reserved_header(FIRST_FAILURE_HEADER, format_time(SystemTime::now()));
        }
        let extra = vec![(wire::ATTEMPT, self.attempt.saturating_add(1).to_string())];
        let queue = if after.is_zero() {
            self.state.shared.names.queue(&self.state.name)
        } else {
            let tier = tier_for(after).unwrap_or(MAX_DELAY);
            match self.state.shared.retry_tier(&self.state.name, tier).await {
                Ok(queue) => queue,
                Err(err) => return Err(VerbError::new(err, self)),
            }
        };
        self.republish_then_ack(queue, message, extra).await
    }

    /// Gives the message back at once (`nack`, requeue). RabbitMQ 3.10 counts it in
    /// `x-delivery-count`, so the next delivery's attempt is one more.
    async fn release(self) -> VerbResult<Self> {
        self.settle(true).await
    }

    async fn dead_letter(self, reason: DeadLetterReason) -> VerbResult<Self> {
        let state = Arc::clone(&self.state);
        if !state.config.dead_letter_queue {
            tracing::warn!(
                subscription = %state.name,
                id = %self.message.id(),
                reason = %reason.reason,
                "dead-lettered without a dead-letter queue: discarded"
            );
            return self.settle(false).await;
        }
        let mut message = self.message.clone();
        let envelope = Envelope::new(
            state.config.topic.as_str(),
            state.name.as_str(),
            self.attempt,
            reason,
            Some(self.first_failure().unwrap_or_else(SystemTime::now)),
            SystemTime::now(),
        );
        envelope.write(&mut message);
        let queue = state.shared.names.dead_letter(&state.name);
        self.republish_then_ack(queue, message, Vec::new()).await
    }

    /// Moves the client-side lease timer. RabbitMQ itself holds the delivery until it is
    /// settled or the channel closes, so there is nothing to tell the broker.
    async fn extend_lease(&mut self, lease: Duration) -> Result<(), Error> {
        let mut state = self.lease.lock().expect("lease");
        if state.phase != Phase::Held {
            return Err(self.lease_lost());
        }
        state.deadline = Instant::now() + lease;
        Ok(())
    }
}
