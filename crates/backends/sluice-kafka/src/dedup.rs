//! The emulated dedup window's claims, following `sluice_core::dedup`: a publish takes a
//! pending claim of its id before queueing its record, confirms it after the delivery
//! report, and releases it after a failure.
//!
//! Invariants:
//! - Claims are kept in the options' `dedup_store` under the topic's physical name, so
//!   namespaces sharing one store never see each other's claims.
//! - Only a confirmed claim makes a publish a `Duplicate`; another publish's pending claim
//!   fails it with a retryable error. A failed confirm or release is logged, never returned:
//!   after a confirm the message is published whatever the store says (the pending claim
//!   ends after `PENDING_CLAIM`), and a failed publish already has its own error.
//! - A publish dropped between claim and outcome releases its claim on the running tokio
//!   runtime ([`spawn_release`]); with none running, the claim ends after `PENDING_CLAIM`.

use std::time::Duration;

use sluice_core::dedup::{PendingClaim, PENDING_CLAIM};
use sluice_core::idempotency::BoxFuture;
use sluice_core::{Result, TopicName};

use crate::backend::Shared;

impl Shared {
    /// The name a topic's dedup claims are kept under: its physical name.
    pub(crate) fn dedup_topic(&self, topic: &TopicName) -> String {
        self.names.topic(topic)
    }

    /// Claims `id` on `topic` as pending while it is published: `Some` to publish (then
    /// [`confirm`] or [`release`] the claim), `None` for a duplicate. Another publish of the
    /// id in progress fails with a retryable error, the store's failure with its own error;
    /// either fails the publish (nothing is sent).
    pub(crate) async fn claim(&self, topic: &TopicName, id: &str) -> Result<Option<PendingClaim>> {
        let store = &self.options.dedup_store;
        let dedup_topic = self.dedup_topic(topic);
        store
            .claim(&dedup_topic, id, PENDING_CLAIM)
            .await?
            .into_pending(store, dedup_topic, topic.as_str(), id, spawn_release)
    }
}

/// Confirms the claim of a published message for `window`; a failure is logged.
pub(crate) async fn confirm(topic: &TopicName, claim: PendingClaim, window: Duration) {
    let id = claim.id().to_owned();
    if let Err(err) = claim.confirm(window).await {
        tracing::warn!(%topic, id, %err, "the message is published but its dedup claim could not be confirmed: a publish of the id after the claim's pending time is not dropped as a duplicate");
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
