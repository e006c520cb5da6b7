//! [`EmbeddedSubscriber`]: pulls leases from the engine. A receive that finds nothing waits
//! for the engine's wake-up (a durable publish, a verb) or its next timer (a lease running
//! out, a retry or a delay coming due), never polling. A receive that comes back full reads
//! the next batch ahead (`ahead.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sluice_core::{Error, Subscriber, SubscriptionConfig, SubscriptionName};

use crate::ahead::{ReadAhead, Taken};
use crate::backend::Shared;
use crate::bridge::completion;
use crate::convert;
use crate::delivery::{EmbeddedDelivery, Source};

/// A subscriber of one subscription. Each subscriber is its own holder for prefetch.
pub struct EmbeddedSubscriber {
    shared: Arc<Shared>,
    from: Arc<Source>,
    config: SubscriptionConfig,
    holder: u64,
    closed: AtomicBool,
    ahead: Arc<ReadAhead>,
}

impl std::fmt::Debug for EmbeddedSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedSubscriber")
            .field("subscription", &self.from.subscription)
            .finish_non_exhaustive()
    }
}

impl EmbeddedSubscriber {
    pub(crate) fn new(
        shared: Arc<Shared>,
        name: SubscriptionName,
        config: SubscriptionConfig,
    ) -> Self {
        let from = Arc::new(Source {
            physical: shared.subscription(&name).into(),
            topic: config.topic.clone(),
            subscription: name,
        });
        let holder = shared.holder();
        let ahead = Arc::new(ReadAhead::new(&shared, &from));
        Self {
            shared,
            from,
            config,
            holder,
            closed: AtomicBool::new(false),
            ahead,
        }
    }

    fn deliveries(&self, leased: Vec<sluice_engine::engine::Leased>) -> Vec<EmbeddedDelivery> {
        leased
            .into_iter()
            .map(|l| EmbeddedDelivery::new(self.shared.clone(), self.from.clone(), l))
            .collect()
    }

    /// After a full batch of `max`: the next one is leased now, and its journal flush
    /// completes in the background.
    fn read_ahead(&self, max: usize) {
        if max >= READ_AHEAD_MIN {
            self.ahead.start(&self.shared, self.holder, max);
        }
    }
}

/// The smallest receive that reads ahead. Read-ahead is for batch consumers, whose wait for
/// a flush is spread over many messages; a consumer taking a few at a time holds exactly
/// what it asked for (and its subscription's stats say so).
pub(crate) const READ_AHEAD_MIN: usize = 16;

impl Drop for EmbeddedSubscriber {
    fn drop(&mut self) {
        self.ahead.close_now();
    }
}

impl Subscriber for EmbeddedSubscriber {
    type Delivery = EmbeddedDelivery;

    fn subscription(&self) -> &SubscriptionName {
        &self.from.subscription
    }

    fn config(&self) -> &SubscriptionConfig {
        &self.config
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<EmbeddedDelivery>, Error> {
        let deadline = tokio::time::Instant::now() + wait;
        let max = max.clamp(1, self.shared.capabilities.max_batch);
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::Closed("subscriber"));
            }
            // Register for the wake-up before looking, so a change in between is not missed.
            let woken = self.shared.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let arrived = self.ahead.arrived().notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            match self.ahead.take(&self.shared, max) {
                Taken::Ready(leased, refill) => {
                    if refill {
                        self.read_ahead(max);
                    }
                    return Ok(self.deliveries(leased));
                }
                Taken::Failed(err) => return Err(err),
                // What is under way is leased already: wait for it (one flush at most, the
                // engine completes every receive), whatever `wait` says, as a receive of its
                // own would.
                Taken::Fetching => {
                    arrived.await;
                    continue;
                }
                Taken::Nothing => {}
            }
            let (done, leased) = completion();
            self.shared
                .engine
                .receive(&self.from.physical, self.holder, max, done);
            let leased = leased.await?;
            if !leased.is_empty() {
                if leased.len() == max {
                    self.read_ahead(max);
                }
                return Ok(self.deliveries(leased));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut until = deadline;
            if let Some(wake_ms) = self
                .shared
                .engine
                .next_wakeup_ms(&self.from.physical)
                .map_err(convert::error)?
            {
                let now_ms = convert::to_ms(Some(SystemTime::now()));
                let timer = now + Duration::from_millis(wake_ms.saturating_sub(now_ms));
                until = until.min(timer);
            }
            tokio::select! {
                _ = &mut woken => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn close(&self) -> Result<(), Error> {
        self.closed.store(true, Ordering::Release);
        self.shared.notify.notify_waiters();
        self.ahead.close(&self.shared).await;
        Ok(())
    }

    /// The engine's limiter: global rate limits are shared by every worker on this engine.
    fn limiter(&self) -> Option<Arc<dyn sluice_core::LimiterStore>> {
        Some(Arc::new(self.shared.limiter()))
    }
}
