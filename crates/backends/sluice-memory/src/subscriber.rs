//! [`MemorySubscriber`]: pulls deliveries of one subscription.
//!
//! Invariants:
//! - A subscriber is bound to one incarnation of its subscription: if the subscription is
//!   deleted (even if created again under the same name), `receive` fails with `NotFound`.
//! - `receive` never polls: it registers on the subscription's `Notify` *before* looking at
//!   the state (so no wake-up between the look and the wait is lost), then sleeps until a
//!   change, the next timer of the subscription (a delay, a retry or a lease running out),
//!   or its own deadline, whichever comes first.
//! - Each subscriber has its own id, under which the subscription counts the deliveries it
//!   holds against the prefetch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{
    Backend, Error, Result, Subscriber, SubscriptionConfig, SubscriptionName, TopicName,
};
use tokio::sync::Notify;

use crate::backend::MemoryBackend;
use crate::delivery::MemoryDelivery;

/// A subscriber of a [`MemoryBackend`] subscription. Made by [`Backend::subscribe`].
#[derive(Debug)]
pub struct MemorySubscriber {
    backend: MemoryBackend,
    name: SubscriptionName,
    config: SubscriptionConfig,
    incarnation: u64,
    id: u64,
    notify: Arc<Notify>,
    closed: AtomicBool,
}

impl MemorySubscriber {
    pub(crate) fn new(backend: MemoryBackend, name: &SubscriptionName) -> Result<Self> {
        let (config, incarnation, id, notify) = backend.with_state(|state, _, _| {
            let id = state.next_id();
            let subscription = state.subscription(name)?;
            Ok::<_, Error>((
                subscription.config.clone(),
                subscription.id,
                id,
                Arc::clone(&subscription.notify),
            ))
        })?;
        Ok(Self {
            backend,
            name: name.clone(),
            config,
            incarnation,
            id,
            notify,
            closed: AtomicBool::new(false),
        })
    }

    /// Leases what is ready now; also returns when the subscription's next timer fires.
    fn take(&self, max: usize) -> Result<(Vec<MemoryDelivery>, Option<tokio::time::Instant>)> {
        let (topic, leases, next_wake) = self.backend.with_state(|state, now, clock| {
            let subscription = state.incarnation(&self.name, self.incarnation)?;
            let leases = subscription.take(self.id, max, now, clock);
            Ok::<_, Error>((
                subscription.config.topic.clone(),
                leases,
                subscription.next_wake(),
            ))
        })?;
        let deliveries = leases
            .into_iter()
            .map(|lease| self.delivery(&topic, lease))
            .collect();
        Ok((deliveries, next_wake))
    }

    fn delivery(&self, topic: &TopicName, lease: crate::subscription::Lease) -> MemoryDelivery {
        MemoryDelivery::new(
            self.backend.clone(),
            topic.clone(),
            self.name.clone(),
            self.incarnation,
            lease,
        )
    }
}

impl Subscriber for MemorySubscriber {
    type Delivery = MemoryDelivery;

    fn subscription(&self) -> &SubscriptionName {
        &self.name
    }

    fn config(&self) -> &SubscriptionConfig {
        &self.config
    }

    /// Waits up to `wait` for at least one ready message, then leases up to
    /// `min(max, max_batch, prefetch - held by this subscriber)` of them, oldest first.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<MemoryDelivery>> {
        let max = max.min(self.backend.capabilities().max_batch);
        let deadline = tokio::time::Instant::now()
            .checked_add(wait)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400 * 365));
        loop {
            let changed = self.notify.notified();
            tokio::pin!(changed);
            // Registered before looking, so a change between the look and the wait wakes us.
            changed.as_mut().enable();
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::Closed("subscriber"));
            }
            if max == 0 {
                return Ok(Vec::new());
            }
            let (deliveries, next_wake) = self.take(max)?;
            if !deliveries.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(deliveries);
            }
            let wake = next_wake.map_or(deadline, |at| at.min(deadline));
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Stops receiving: a `receive` waiting now, and every later one, fails with
    /// `Error::Closed`. Deliveries already handed out stay valid.
    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_waiters();
        Ok(())
    }
}
