//! The deliveries leased over HTTP, by lease token, and the one subscriber per
//! subscription that every HTTP consumer shares.
//!
//! Invariants: a token names one delivery from the moment a receive hands it out until a
//! verb settles it or its lease is found lost; each delivery sits in its own slot, so a
//! verb on one lease (an `extend` included, which keeps it) never makes another verb on the
//! same lease see it as gone: the second waits for the first, then sees what it left.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::StatusCode;
use sluice_core::{Backend, Delivery, Error, Subscriber, SubscriptionName};
use sluice_embedded::{EmbeddedBackend, EmbeddedDelivery, EmbeddedSubscriber};

use super::ApiError;

/// Held leases at which expired ones are first swept.
const SWEEP_AT: usize = 4096;

/// One leased delivery; `None` once settled or lost.
pub(crate) type Slot = tokio::sync::Mutex<Option<EmbeddedDelivery>>;

struct Held {
    /// Physical name of its subscription.
    subscription: String,
    slot: Arc<Slot>,
}

/// The deliveries leased over HTTP and the subscribers they come from.
#[derive(Default)]
pub(crate) struct Leases {
    // std Mutexes: never held across an .await.
    held: Mutex<HashMap<String, Held>>,
    subscribers: Mutex<HashMap<String, Arc<EmbeddedSubscriber>>>,
    sweep_at: AtomicUsize,
    /// Set at shutdown: no new subscriber (so no new long poll) after it.
    closed: AtomicBool,
}

/// The refusal of a token the server does not hold (any more).
pub(crate) fn lease_lost() -> ApiError {
    ApiError::coded(
        StatusCode::GONE,
        "lease_lost",
        "the lease is not held: settled already, or its lease ran out (the message is, or will be, delivered again)",
    )
}

impl Leases {
    /// Holds `deliveries` under new lease tokens, each shown first by `show`.
    pub(crate) fn hold<T>(
        &self,
        subscription: &str,
        deliveries: Vec<EmbeddedDelivery>,
        mut show: impl FnMut(String, &EmbeddedDelivery) -> T,
    ) -> Vec<T> {
        // Shown before the lock is taken: writing up to a batch of messages must not hold up
        // every other receive and verb (nor poison the lock if it failed).
        let shown: Vec<(String, T, EmbeddedDelivery)> = deliveries
            .into_iter()
            .map(|delivery| {
                // 128 random bits from the thread's CSPRNG: a lease cannot be guessed.
                let token = format!("{:032x}", rand::random::<u128>());
                (token.clone(), show(token, &delivery), delivery)
            })
            .collect();
        let mut held = self.held.lock().expect("leases lock");
        let now = Instant::now();
        if held.len() >= self.sweep_at.load(Ordering::Relaxed).max(SWEEP_AT) {
            // Leases never settled (a client that went away): forget the expired ones; the
            // engine delivers them again on its own. A slot in use is kept.
            held.retain(|_, h| match h.slot.try_lock() {
                Ok(d) => d.as_ref().is_some_and(|d| d.lease_deadline() > now),
                Err(_) => true,
            });
            self.sweep_at
                .store((held.len() * 2).max(SWEEP_AT), Ordering::Relaxed);
        }
        shown
            .into_iter()
            .map(|(token, shown, delivery)| {
                held.insert(
                    token,
                    Held {
                        subscription: subscription.to_owned(),
                        slot: Arc::new(tokio::sync::Mutex::new(Some(delivery))),
                    },
                );
                shown
            })
            .collect()
    }

    /// The slot of `token`, if it is one of `subscription`'s leases.
    pub(crate) fn slot(&self, token: &str, subscription: &str) -> Result<Arc<Slot>, ApiError> {
        match self.held.lock().expect("leases lock").get(token) {
            None => Err(lease_lost()),
            Some(h) if h.subscription != subscription => Err(ApiError::coded(
                StatusCode::BAD_REQUEST,
                "wrong_subscription",
                "the lease belongs to another subscription",
            )),
            Some(h) => Ok(h.slot.clone()),
        }
    }

    /// Forgets a settled or lost lease.
    pub(crate) fn forget(&self, token: &str) {
        self.held.lock().expect("leases lock").remove(token);
    }

    /// The subscriber of `name` in `backend` (created once, shared by every HTTP consumer).
    pub(crate) async fn subscriber(
        &self,
        backend: &EmbeddedBackend,
        physical: &str,
        name: &SubscriptionName,
    ) -> Result<Arc<EmbeddedSubscriber>, Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("server"));
        }
        // The subscription as it is now: deleted, or re-created with another configuration
        // since this subscriber was made (by any client, on either protocol), it is not
        // used any more.
        let current = backend.describe_subscription(name).await;
        let cached = self
            .subscribers
            .lock()
            .expect("leases lock")
            .get(physical)
            .cloned();
        match (&current, cached) {
            (Err(_), _) => self.forget_subscriber(physical),
            (Ok(info), Some(s)) if info.config == *s.config() => return Ok(s),
            (Ok(_), Some(_)) => self.forget_subscriber(physical),
            (Ok(_), None) => {}
        }
        current?;
        let subscriber = Arc::new(backend.subscribe(name).await?);
        Ok(self
            .subscribers
            .lock()
            .expect("leases lock")
            .entry(physical.to_owned())
            .or_insert(subscriber)
            .clone())
    }

    /// Drops the subscriber of a subscription (deleted, or closed): the next receive
    /// subscribes afresh.
    pub(crate) fn forget_subscriber(&self, physical: &str) {
        self.subscribers
            .lock()
            .expect("leases lock")
            .remove(physical);
    }

    /// Closes every subscriber: receives waiting for messages return at once (shutdown).
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let subscribers: Vec<_> = self
            .subscribers
            .lock()
            .expect("leases lock")
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in subscribers {
            let _ = s.close().await;
        }
    }
}
