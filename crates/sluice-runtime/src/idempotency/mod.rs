//! Idempotency middleware: claim `(subscription, id)` before the handler runs, mark it done
//! after, skip duplicates (DESIGN §2).
//!
//! Order matters and is why this stage sits after the max-attempts guard and decoding but
//! before the handler: a done marker is written *before* the ack, so a lost ack leads to a
//! redelivery that is skipped, never to a second effect.

mod memory;

use std::sync::Arc;
use std::time::Duration;

pub use memory::InMemoryStore;
use sluice_core::{Claim, ClaimToken, IdempotencyKey, IdempotencyStore};

/// Default time a done marker is kept.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// A store and how long its done markers live.
#[derive(Clone)]
pub struct Idempotency {
    pub(crate) store: Arc<dyn IdempotencyStore>,
    pub(crate) ttl: Duration,
}

impl Idempotency {
    /// Idempotency over `store`, done markers kept for [`DEFAULT_IDEMPOTENCY_TTL`].
    pub fn new(store: impl IdempotencyStore) -> Self {
        Self::from_arc(Arc::new(store))
    }
    /// Idempotency over a shared store.
    pub fn from_arc(store: Arc<dyn IdempotencyStore>) -> Self {
        Self {
            store,
            ttl: DEFAULT_IDEMPOTENCY_TTL,
        }
    }
    /// Keeps done markers for `ttl` (the `idempotency_ttl`): longer than the longest time a
    /// duplicate can arrive (the broker's redelivery horizon plus producer retries).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

/// What the idempotency stage decided for one delivery.
pub(crate) enum Gate {
    /// Run the handler, holding this claim.
    Run(Option<ClaimToken>),
    /// Another copy is being handled: retry after this long.
    InProgress(Duration),
    /// Already done: ack and skip.
    Done,
}

impl Idempotency {
    pub(crate) async fn gate(
        &self,
        key: &IdempotencyKey,
        lease: Duration,
    ) -> sluice_core::Result<Gate> {
        Ok(match self.store.claim(key, lease).await? {
            Claim::Acquired(token) => Gate::Run(Some(token)),
            Claim::InProgress { remaining } => Gate::InProgress(remaining),
            Claim::Done => Gate::Done,
        })
    }
}
