//! A worker's side of a global concurrency bound (`WorkerBuilder::global_concurrency`): slots
//! taken from the limiter before pulling, one per delivery, given back when it is settled.
//!
//! Slots are leases: the worker renews its own every third of [`SLOT_LEASE`] (a heartbeat
//! task), so the slots of a worker that crashed are free again within a lease. A release the
//! limiter did not take is kept and sent with the next call, never renewed as held.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::limit::{LimiterStore, SlotsRequest};

/// How long a worker's slots stay held without a call from it.
pub const SLOT_LEASE: Duration = Duration::from_secs(30);

/// The longest a worker waits before asking for slots again.
const MAX_WAIT: Duration = Duration::from_millis(500);

pub(crate) struct GlobalSlots {
    store: Arc<dyn LimiterStore>,
    name: String,
    holder: String,
    max: u32,
    /// Releases the limiter has not taken yet.
    pending: AtomicU32,
}

impl GlobalSlots {
    pub(crate) fn new(store: Arc<dyn LimiterStore>, name: String, max: u32) -> Self {
        Self {
            store,
            name,
            holder: format!("worker-{}", sluice_core::MessageId::generate()),
            max: max.max(1),
            pending: AtomicU32::new(0),
        }
    }

    async fn call(&self, release: u32, want: u32) -> sluice_core::Result<u32> {
        let request = SlotsRequest {
            max: self.max,
            release,
            want,
            ttl: SLOT_LEASE,
        };
        self.store.slots(&self.name, &self.holder, request).await
    }

    /// Takes between 1 and `want` slots, waiting until at least one is free.
    pub(crate) async fn acquire(&self, want: u32) -> u32 {
        let mut wait = Duration::from_millis(10);
        loop {
            let release = self.pending.swap(0, Ordering::Relaxed);
            let pause = match self.call(release, want.max(1)).await {
                Ok(taken) if taken > 0 => return taken,
                Ok(_) => wait,
                Err(err) => {
                    self.pending.fetch_add(release, Ordering::Relaxed);
                    tracing::warn!(bound = %self.name, %err, "the limiter failed; nothing is pulled until it answers");
                    match err {
                        // A limiter without slots will not grow them: ask rarely.
                        sluice_core::Error::Unsupported(_) => Duration::from_secs(5),
                        _ => wait,
                    }
                }
            };
            tokio::time::sleep(pause).await;
            wait = (wait * 2).min(MAX_WAIT);
        }
    }

    /// Gives back `n` slots (a delivery settled, or fewer deliveries than slots taken).
    pub(crate) async fn release(&self, n: u32) {
        let release = self.pending.swap(0, Ordering::Relaxed) + n;
        if release == 0 {
            return;
        }
        if let Err(err) = self.call(release, 0).await {
            tracing::warn!(bound = %self.name, %err, "could not give slots back; they go with the next call");
            self.pending.fetch_add(release, Ordering::Relaxed);
        }
    }

    /// Renews this worker's slots every third of their lease, sending pending releases.
    pub(crate) async fn heartbeat(&self) {
        loop {
            tokio::time::sleep(SLOT_LEASE / 3).await;
            let release = self.pending.swap(0, Ordering::Relaxed);
            if let Err(err) = self.call(release, 0).await {
                self.pending.fetch_add(release, Ordering::Relaxed);
                tracing::warn!(bound = %self.name, %err, "could not renew the worker's slots");
            }
        }
    }
}
