//! The idempotency store contract: which `(subscription, message id)` a consumer has handled.
//!
//! # Semantics (the same for every store)
//! - [`claim`](IdempotencyStore::claim) before the handler runs. One claim per key at a time:
//!   a second claim while the first is live gets [`Claim::InProgress`] with the claim's
//!   remaining time (the runtime retries after it, never acks: the first copy may still fail).
//! - The claim lives as long as the delivery's lease and is renewed with it
//!   ([`renew`](IdempotencyStore::renew)). A claim left by a crashed consumer expires with
//!   its lease.
//! - [`complete`](IdempotencyStore::complete) turns the claim into a done marker kept for
//!   `idempotency_ttl`; a later claim gets [`Claim::Done`] (acked and skipped).
//! - [`release`](IdempotencyStore::release) drops the claim (on retry or release), so the
//!   next delivery runs the handler.
//!
//! The trait returns boxed futures so stores can be held as `Arc<dyn IdempotencyStore>`; a
//! store is called once per delivery, next to a network round trip, so the box is free.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::error::Result;
use crate::message::MessageId;
use crate::name::SubscriptionName;

/// A boxed, `Send` future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The key a store records: a message id within a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    /// The subscription.
    pub subscription: SubscriptionName,
    /// The message id.
    pub id: MessageId,
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.subscription, self.id)
    }
}

/// Proof of a live claim, given back to renew, complete or release it. A stale token (its
/// claim expired and someone else claimed the key) cannot release the new claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimToken(pub String);

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Claimed: run the handler.
    Acquired(ClaimToken),
    /// Another delivery of this id is being handled; its claim expires in `remaining`.
    InProgress {
        /// Time left on the other claim.
        remaining: Duration,
    },
    /// Already handled within the TTL: ack and skip.
    Done,
}

/// Records handled messages per subscription. See the module docs for the semantics.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims a key for `lease`.
    fn claim<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim>>;

    /// Extends a live claim to `lease` from now; `false` if the claim was lost.
    fn renew<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        token: &'a ClaimToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Marks the key done for `ttl`.
    fn complete<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        token: &'a ClaimToken,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<()>>;

    /// Drops a live claim (no-op if the token is stale).
    fn release<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        token: &'a ClaimToken,
    ) -> BoxFuture<'a, Result<()>>;
}

/// Boxes a future as a [`BoxFuture`].
pub fn boxed<'a, T>(future: impl Future<Output = T> + Send + 'a) -> BoxFuture<'a, T> {
    Box::pin(future)
}
