//! Deliveries pushed to clients and not yet taken by them, per subscription.
//!
//! A pushed delivery is leased on the engine (in flight), but until the client hands it to a
//! handler nobody works on it; stats count it as ready, so `ready` / `in_flight` mean the same
//! on `sluice://` as in-process (and as on every other backend): waiting vs being handled.

use std::collections::HashMap;
use std::sync::Mutex;

use sluice_core::{Backend, Error, SubscriptionName, SubscriptionStats};
use sluice_embedded::EmbeddedBackend;

/// Counts of pushed, untaken deliveries by physical subscription name.
#[derive(Debug, Default)]
pub(crate) struct Prefetched(
    // std Mutex: held for a map update only, never across an .await.
    Mutex<HashMap<String, u64>>,
);

impl Prefetched {
    pub(crate) fn add(&self, subscription: &str, n: u64) {
        *self
            .0
            .lock()
            .expect("prefetch lock")
            .entry(subscription.to_owned())
            .or_default() += n;
    }

    pub(crate) fn remove(&self, subscription: &str, n: u64) {
        let mut map = self.0.lock().expect("prefetch lock");
        if let Some(held) = map.get_mut(subscription) {
            *held = held.saturating_sub(n);
            if *held == 0 {
                map.remove(subscription);
            }
        }
    }

    /// The engine's stats of `name` with pushed, untaken deliveries counted as ready.
    pub(crate) async fn stats(
        &self,
        backend: &EmbeddedBackend,
        name: &SubscriptionName,
    ) -> Result<SubscriptionStats, Error> {
        let mut stats = backend.stats(name).await?;
        let physical = backend.naming().subscription(name);
        let held = self
            .0
            .lock()
            .expect("prefetch lock")
            .get(&physical)
            .copied()
            .unwrap_or(0);
        if let (Some(in_flight), Some(ready)) = (stats.in_flight, stats.ready) {
            let moved = held.min(in_flight);
            stats.in_flight = Some(in_flight - moved);
            stats.ready = Some(ready + moved);
        }
        Ok(stats)
    }
}
