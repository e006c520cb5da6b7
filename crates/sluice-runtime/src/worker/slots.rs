//! A worker's side of a global concurrency bound (`WorkerBuilder::global_concurrency`): slots
//! taken from the limiter before pulling, one per delivery, given back when it is settled
//! (or while it waits parked or paused: a waiting delivery holds no slot).
//!
//! The worker keeps the count of slots it has in use and sends it, absolute, with every
//! call (`SlotsRequest::hold`): a call repeated after a lost answer gives back nothing twice,
//! and slots taken by a call whose answer was lost are given back by the next. Calls are
//! made one at a time, so each sends the count as of its turn. Slots are leases: a heartbeat
//! renews them every third of [`SLOT_LEASE`], so the slots of a worker that crashed are free
//! again within a lease; the heartbeat stops with the worker (dropped, not only finished).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::limit::{LimiterStore, SlotsRequest};

/// How long a worker's slots stay held without a call from it.
pub const SLOT_LEASE: Duration = Duration::from_secs(30);

/// The longest a waiting delivery waits before asking for a slot again.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(500);

pub(crate) struct GlobalSlots {
    store: Arc<dyn LimiterStore>,
    name: String,
    holder: String,
    max: u32,
    /// Slots this worker has in use.
    held: AtomicU32,
    /// One call at a time.
    calls: tokio::sync::Mutex<()>,
    /// Deliveries waiting for a slot to run: they go first, the pull loop takes none meanwhile.
    waiting: AtomicU32,
}

impl GlobalSlots {
    pub(crate) fn new(store: Arc<dyn LimiterStore>, name: String, max: u32) -> Self {
        Self {
            store,
            name,
            holder: format!("worker-{}", sluice_core::MessageId::generate()),
            max: max.max(1),
            held: AtomicU32::new(0),
            calls: tokio::sync::Mutex::new(()),
            waiting: AtomicU32::new(0),
        }
    }

    /// Sends the count in use, takes up to `want` more.
    async fn call(&self, want: u32) -> sluice_core::Result<u32> {
        let _turn = self.calls.lock().await;
        let request = SlotsRequest {
            max: self.max,
            hold: self.held.load(Ordering::Relaxed),
            want,
            ttl: SLOT_LEASE,
        };
        let taken = self
            .store
            .slots(&self.name, &self.holder, request)
            .await?
            .min(want);
        self.held.fetch_add(taken, Ordering::Relaxed);
        Ok(taken)
    }

    /// Takes up to `want` slots in one call (0: none is free, or the limiter failed).
    pub(crate) async fn try_acquire(&self, want: u32) -> u32 {
        match self.call(want.max(1)).await {
            Ok(taken) => taken,
            Err(err) => {
                let level_error = matches!(err, sluice_core::Error::Unsupported(_));
                if level_error {
                    tracing::error!(bound = %self.name, %err, "the limiter keeps no concurrency slots: nothing is pulled");
                } else {
                    tracing::warn!(bound = %self.name, %err, "the limiter failed; nothing is pulled until it answers");
                }
                0
            }
        }
    }

    /// Whether deliveries wait for a slot (the pull loop then takes none).
    pub(crate) fn has_waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Takes one slot, waiting until one is free.
    pub(crate) async fn acquire_one(&self) {
        struct Waiting<'a>(&'a AtomicU32);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        let mut wait = Duration::from_millis(10);
        while self.try_acquire(1).await == 0 {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_WAIT);
        }
    }

    /// Gives back `n` slots in use (settled deliveries, fewer deliveries than slots taken).
    pub(crate) async fn release(&self, n: u32) {
        self.forget(n);
        self.sync().await;
    }

    /// Counts `n` slots as no longer in use, without telling the limiter yet.
    pub(crate) fn forget(&self, n: u32) {
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                Some(h.saturating_sub(n))
            });
    }

    /// Tells the limiter the count in use (and renews the lease).
    pub(crate) async fn sync(&self) {
        if let Err(err) = self.call(0).await {
            tracing::warn!(bound = %self.name, %err, "could not update the worker's slots; the next call will");
        }
    }

    /// Gives back every slot (the worker stopped).
    pub(crate) async fn release_all(&self) {
        self.held.store(0, Ordering::Relaxed);
        self.sync().await;
    }

    /// Renews this worker's slots every third of their lease.
    pub(crate) async fn heartbeat(&self) {
        loop {
            tokio::time::sleep(SLOT_LEASE / 3).await;
            self.sync().await;
        }
    }
}

/// One delivery's slot: given back when dropped (a task that ends any way, aborted
/// included: counted out at once, the limiter told by a task of its own).
pub(crate) struct Slot {
    slots: Arc<GlobalSlots>,
    held: bool,
}

impl Slot {
    /// A slot the pull loop took for a delivery.
    pub(crate) fn taken(slots: Arc<GlobalSlots>) -> Self {
        Self { slots, held: true }
    }

    /// Gives it back while the delivery waits.
    pub(crate) async fn give_back(&mut self) {
        if std::mem::replace(&mut self.held, false) {
            self.slots.release(1).await;
        }
    }

    /// Takes one again before the delivery runs, waiting until one is free.
    pub(crate) async fn take(&mut self) {
        if !self.held {
            self.slots.acquire_one().await;
            self.held = true;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.held {
            self.slots.forget(1);
            let slots = self.slots.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { slots.sync().await });
            }
        }
    }
}

/// A task aborted when dropped (the heartbeat, the control loop: never outliving the worker).
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
