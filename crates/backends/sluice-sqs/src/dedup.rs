//! The dedup window's claims, following `sluice_core::dedup`, which decide what a receipt
//! says: SQS FIFO drops a copy of a message id within its 5 minutes by itself, silently,
//! so the claims only tell `Published` from `Duplicate`.
//!
//! Invariants:
//! - Claims are kept in the options' `dedup_store` under the topic's physical name (without
//!   `.fifo`), so namespaces sharing one store never see each other's claims.
//! - A publish takes a pending claim of its id before it is sent, confirms it once SNS took
//!   the message, and releases it if SNS did not. Only a confirmed claim makes a receipt say
//!   `Duplicate` (the copy is sent anyway: SQS drops it). Another publish's pending claim
//!   fails the publish with a retryable error: nobody knows yet which receipt is true.
//! - The store's failure does not stop a publish (SQS deduplicates without it): it is
//!   logged, the message is sent and reported `Published`. A failed confirm or release is
//!   logged too; the claim ends after `PENDING_CLAIM`.
//! - A publish dropped between claim and outcome releases its claim on the running tokio
//!   runtime ([`spawn_release`]); with none running, the claim ends after `PENDING_CLAIM`.

use std::time::Duration;

use sluice_core::dedup::{PendingClaim, PENDING_CLAIM};
use sluice_core::idempotency::BoxFuture;
use sluice_core::{Result, TopicName};

use crate::backend::Shared;

/// What the dedup window makes of a publish.
pub(crate) enum Admission {
    /// First within the window: reported `Published`; the claim is settled after the call.
    Claimed(PendingClaim),
    /// Published within the window: still sent (SQS drops the copy), reported `Duplicate`.
    Duplicate,
    /// The store failed (logged): sent, reported `Published`.
    Unknown,
}

impl Shared {
    /// The name a topic's dedup claims are kept under: its physical name (without `.fifo`).
    pub(crate) fn dedup_topic(&self, topic: &TopicName) -> String {
        self.names.naming().topic(topic)
    }

    /// Claims `id` on `topic` as pending while it is published. Another publish of the id
    /// in progress is a retryable error; the store's own failure is not an error (see the
    /// module docs).
    pub(crate) async fn claim(&self, topic: &TopicName, id: &str) -> Result<Admission> {
        let store = &self.options.dedup_store;
        let dedup_topic = self.dedup_topic(topic);
        match store.claim(&dedup_topic, id, PENDING_CLAIM).await {
            Ok(answer) => Ok(
                match answer.into_pending(store, dedup_topic, topic.as_str(), id, spawn_release)? {
                    Some(claim) => Admission::Claimed(claim),
                    None => Admission::Duplicate,
                },
            ),
            Err(err) => {
                tracing::warn!(%topic, id, %err, "the dedup store could not claim the id: the message is sent anyway (SQS drops a copy itself) and reported published");
                Ok(Admission::Unknown)
            }
        }
    }
}

/// Confirms the claim of a published message for `window`; a failure is logged.
pub(crate) async fn confirm(topic: &TopicName, claim: PendingClaim, window: Duration) {
    let id = claim.id().to_owned();
    if let Err(err) = claim.confirm(window).await {
        tracing::warn!(%topic, id, %err, "the message is published but its dedup claim could not be confirmed: a copy published after the claim's pending time is reported published (SQS drops it)");
    }
}

/// Drops the claim of a failed publish; a failure is logged.
pub(crate) async fn release(topic: &TopicName, claim: PendingClaim) {
    let id = claim.id().to_owned();
    if let Err(err) = claim.release().await {
        tracing::warn!(%topic, id, %err, "could not drop the dedup claim of a failed publish: a retry fails as in progress until the claim's pending time ends");
    }
}

/// Releases the claim of a publish dropped before it settled, on the running runtime.
fn spawn_release(release: BoxFuture<'static, Result<()>>) {
    // No runtime (the process is ending): the claim ends after its pending time.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            if let Err(err) = release.await {
                tracing::warn!(%err, "could not drop the dedup claim of a dropped publish: it ends after its pending time");
            }
        });
    }
}
