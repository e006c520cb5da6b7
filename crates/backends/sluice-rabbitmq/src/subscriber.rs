//! [`RabbitSubscriber`]: a consumer on the subscription's quorum queue (manual acks,
//! prefetch = the subscription's `prefetch`), re-established after a connection loss.
//!
//! Invariants:
//! - A background task owns the lapin consumer and forwards deliveries to `receive`; when
//!   the channel dies it opens a new one and consumes again (backoff 100 ms doubling to
//!   2 s). The broker requeues what the dead channel held, so nothing is lost; deliveries
//!   still held from the dead channel fail their verbs with `LeaseLost`.
//! - A delivery's lease starts when `receive` hands it out, not when it was prefetched.
//! - After `close`, nothing more is handed out; what was prefetched and not handed out is
//!   given back to the queue (`nack`, requeue).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use sluice_core::{Error, Subscriber, SubscriptionConfig, SubscriptionName};
use tokio::sync::mpsc;

use crate::backend::Shared;
use crate::delivery::{watch_leases, RabbitDelivery, Watch};
use crate::link::{reply_code, to_error, NOT_FOUND};
use crate::wire;

/// One prefetched delivery and the channel it came on.
pub(crate) struct Incoming {
    channel: Channel,
    delivery: AmqpDelivery,
}

/// What a subscriber and its consumer task share.
pub(crate) struct SubscriberState {
    pub(crate) shared: Arc<Shared>,
    pub(crate) name: SubscriptionName,
    pub(crate) config: SubscriptionConfig,
    closed: AtomicBool,
    buffered: Arc<AtomicI64>,
    // std Mutex: the current consumer, swapped without an .await held.
    current: Mutex<Option<(Channel, String)>>,
    leases: mpsc::UnboundedSender<Watch>,
}

impl SubscriberState {
    /// Hands a delivery's lease to the lease watcher.
    pub(crate) fn watch(&self, watch: Watch) {
        // The watcher lives as long as this sender: it cannot be gone.
        let _ = self.leases.send(watch);
    }
}

/// Receives deliveries of one subscription.
pub struct RabbitSubscriber {
    state: Arc<SubscriberState>,
    receiver: tokio::sync::Mutex<mpsc::UnboundedReceiver<Incoming>>,
    _task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RabbitSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitSubscriber")
            .field("subscription", &self.state.name)
            .finish_non_exhaustive()
    }
}

async fn nack(channel: &Channel, tag: u64) {
    let requeue = BasicNackOptions {
        requeue: true,
        multiple: false,
    };
    // A failure means the channel died, which requeues it anyway.
    let _ = channel.basic_nack(tag, requeue).await;
}

/// Opens a channel and starts consuming the subscription's queue.
async fn consume(state: &SubscriberState) -> Result<(Channel, lapin::Consumer), Error> {
    let channel = state.shared.link.channel().await?;
    let prefetch = u16::try_from(state.config.prefetch).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|err| to_error(err, "setting the prefetch"))?;
    let queue = state.shared.names.queue(&state.name);
    let consumer = channel
        .basic_consume(
            &queue,
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|err| match reply_code(&err) {
            Some(NOT_FOUND) => Error::subscription_not_found(state.name.as_str()),
            _ => to_error(err, &format!("consuming `{queue}`")),
        })?;
    Ok((channel, consumer))
}

/// Forwards deliveries until closed, consuming again after every loss.
async fn run(
    state: Arc<SubscriberState>,
    sender: mpsc::UnboundedSender<Incoming>,
    mut current: Option<(Channel, lapin::Consumer)>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if state.closed.load(Ordering::SeqCst) {
            return;
        }
        let (channel, mut consumer) = match current.take() {
            Some(started) => started,
            None => match consume(&state).await {
                Ok(started) => started,
                Err(err) => {
                    tracing::debug!(subscription = %state.name, %err, "consuming again later");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(100);
        *state.current.lock().expect("current") =
            Some((channel.clone(), consumer.tag().to_string()));
        while let Some(next) = consumer.next().await {
            let Ok(delivery) = next else { break };
            if state.closed.load(Ordering::SeqCst) {
                nack(&channel, delivery.delivery_tag).await;
                continue;
            }
            state.buffered.fetch_add(1, Ordering::SeqCst);
            let incoming = Incoming {
                channel: channel.clone(),
                delivery,
            };
            if let Err(returned) = sender.send(incoming) {
                state.buffered.fetch_sub(1, Ordering::SeqCst);
                nack(&returned.0.channel, returned.0.delivery.delivery_tag).await;
            }
        }
        tracing::debug!(subscription = %state.name, "consumer ended; consuming again");
    }
}

impl RabbitSubscriber {
    pub(crate) async fn start(
        shared: Arc<Shared>,
        name: SubscriptionName,
        config: SubscriptionConfig,
    ) -> Result<Self, Error> {
        let buffered = shared.buffered(&name);
        let (leases, watches) = mpsc::unbounded_channel();
        tokio::spawn(watch_leases(watches));
        let state = Arc::new(SubscriberState {
            shared,
            name,
            config,
            closed: AtomicBool::new(false),
            buffered,
            current: Mutex::new(None),
            leases,
        });
        // The first consume is awaited, so that a subscriber exists on the broker (and gets
        // its share of what is published) once `subscribe` returns.
        let started = consume(&state).await?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(Arc::clone(&state), sender, Some(started)));
        Ok(Self {
            state,
            receiver: tokio::sync::Mutex::new(receiver),
            _task: task,
        })
    }

    fn hand_out(&self, incoming: Incoming) -> Option<RabbitDelivery> {
        self.state.buffered.fetch_sub(1, Ordering::SeqCst);
        if !incoming.channel.status().connected() {
            // From a channel that died: the broker has requeued it.
            return None;
        }
        let d = incoming.delivery;
        let decoded = wire::decode(
            wire::Route::new(&d.exchange, &d.routing_key),
            &d.properties,
            d.data.into(),
        );
        Some(RabbitDelivery::new(
            Arc::clone(&self.state),
            incoming.channel,
            d.delivery_tag,
            decoded,
        ))
    }
}

impl Subscriber for RabbitSubscriber {
    type Delivery = RabbitDelivery;

    fn subscription(&self) -> &SubscriptionName {
        &self.state.name
    }

    fn config(&self) -> &SubscriptionConfig {
        &self.state.config
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<RabbitDelivery>, Error> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut receiver = self.receiver.lock().await;
        let mut got = Vec::new();
        while got.is_empty() {
            if self.state.closed.load(Ordering::SeqCst) {
                return Ok(got);
            }
            let first = match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(first)) => first,
                Ok(None) | Err(_) => return Ok(got),
            };
            got.extend(self.hand_out(first));
            while got.len() < max {
                let Ok(next) = receiver.try_recv() else { break };
                got.extend(self.hand_out(next));
            }
        }
        Ok(got)
    }

    async fn close(&self) -> Result<(), Error> {
        self.state.closed.store(true, Ordering::SeqCst);
        let current = self.state.current.lock().expect("current").take();
        if let Some((channel, tag)) = current {
            let _ = channel
                .basic_cancel(&tag, BasicCancelOptions::default())
                .await;
        }
        let mut receiver = self.receiver.lock().await;
        while let Ok(incoming) = receiver.try_recv() {
            self.state.buffered.fetch_sub(1, Ordering::SeqCst);
            nack(&incoming.channel, incoming.delivery.delivery_tag).await;
        }
        Ok(())
    }
}

impl Drop for RabbitSubscriber {
    fn drop(&mut self) {
        // The task is not aborted: it gives back whatever still arrives, and ends once
        // the consumer is cancelled.
        self.state.closed.store(true, Ordering::SeqCst);
        let current = self.state.current.lock().expect("current").take();
        let buffered = Arc::clone(&self.state.buffered);
        let mut leftovers = Vec::new();
        if let Ok(mut receiver) = self.receiver.try_lock() {
            while let Ok(incoming) = receiver.try_recv() {
                buffered.fetch_sub(1, Ordering::SeqCst);
                leftovers.push(incoming);
            }
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Some((channel, tag)) = current {
                    let _ = channel
                        .basic_cancel(&tag, BasicCancelOptions::default())
                        .await;
                }
                for incoming in leftovers {
                    nack(&incoming.channel, incoming.delivery.delivery_tag).await;
                }
            });
        }
    }
}
