//! Automatic lease extension: while a handler runs, its delivery's lease is extended before
//! it runs out (and the idempotency claim renewed with it), so long work is not redelivered
//! to another consumer. A hard cap bounds the total: past it the handler is abandoned and
//! the delivery released (see [`crate::WorkerBuilder::lease_extension`]).

use std::time::Duration;

use sluice_core::{ClaimToken, Delivery, IdempotencyKey};
use tokio::time::Instant;

use crate::idempotency::Idempotency;
use crate::metrics::{self, Labels};
use crate::observe::WorkerStats;

/// How leases are extended while handlers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseExtension {
    /// Never: a handler slower than the lease lets the message be redelivered.
    Off,
    /// Extend by the subscription's lease whenever half of it is left, for at most this long
    /// in total; past it the handler is abandoned and the delivery released.
    UpTo(Duration),
}

/// Default hard cap on a handler's run time with lease extension.
pub const DEFAULT_MAX_EXTENSION: Duration = Duration::from_secs(30 * 60);

impl Default for LeaseExtension {
    fn default() -> Self {
        LeaseExtension::UpTo(DEFAULT_MAX_EXTENSION)
    }
}

/// What to renew along with the lease.
pub(crate) struct Renewal<'a> {
    pub(crate) lease: Duration,
    pub(crate) claim: Option<(&'a Idempotency, &'a IdempotencyKey, &'a ClaimToken)>,
    pub(crate) labels: &'a Labels,
    pub(crate) stats: &'a WorkerStats,
}

/// Keeps the delivery's lease alive until dropped. Never completes: when the lease is lost
/// it stops extending and waits (the handler's verb will then report `LeaseLost`).
pub(crate) async fn keep_alive<D: Delivery>(delivery: &mut D, renewal: Renewal<'_>) {
    extend_until_lost(delivery, renewal).await;
    std::future::pending().await
}

/// Extends the delivery's lease whenever half of it is left (and renews the claim with it);
/// returns when an extension fails (the lease is lost).
pub(crate) async fn extend_until_lost<D: Delivery>(delivery: &mut D, renewal: Renewal<'_>) {
    let lease = renewal.lease.max(Duration::from_millis(2));
    loop {
        let deadline = Instant::from_std(delivery.lease_deadline());
        let renew_at = deadline
            .checked_sub(lease / 2)
            .unwrap_or(deadline)
            .max(Instant::now());
        tokio::time::sleep_until(renew_at).await;
        if let Err(err) = delivery.extend_lease(lease).await {
            tracing::warn!(id = %delivery.message().id(), %err, "could not extend the lease; the message may be delivered again");
            return;
        }
        renewal.stats.lease_extended();
        metrics::lease_extended(renewal.labels);
        if let Some((idempotency, key, token)) = renewal.claim {
            match idempotency.store.renew(key, token, lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(%key, "the idempotency claim was lost while the handler ran")
                }
                Err(err) => tracing::warn!(%key, %err, "could not renew the idempotency claim"),
            }
        }
    }
}
