//! Leases and the verbs that end or extend them: retry, lease expiry, release, extend_lease,
//! and a verb that comes too late.

use std::time::Duration;

use sluice_core::{Delivery, Error, SubscriptionConfig};
use tokio::time::Instant;

use crate::fixture::{Fixture, Outcome};
use crate::harness::Harness;
use crate::wait::{ack_all, expect_nothing, receive_exactly, Must};

/// The time left until `instant`, zero if it passed.
fn until(instant: Instant) -> Duration {
    instant.saturating_duration_since(Instant::now())
}

/// After `retry(after)` the message comes back no earlier than `after`, with `attempt + 1`;
/// `retry(0)` brings it back at once.
pub async fn retry_redelivers_no_earlier_than_asked_with_next_attempt<H: Harness>(
    h: &H,
) -> Outcome {
    let f = Fixture::new(
        h,
        "retry_redelivers_no_earlier_than_asked_with_next_attempt",
    )
    .await;
    let topic = f.topic("t").await;
    let sub = f.subscribe(&topic, "s").await;
    let (delay, tolerance, deadline) = (f.timing.delay, f.timing.tolerance, f.timing.deadline);
    f.publish(&topic, f.message("retried")).await;

    let first = receive_exactly(&sub, 1, deadline, "first delivery")
        .await
        .remove(0);
    assert_eq!(first.attempt(), 1);
    let id = first.message().id().clone();
    let start = Instant::now();
    first.retry(delay).await.must("retry");
    let earliest = start + delay.saturating_sub(tolerance);
    expect_nothing(&sub, until(earliest), "before the retry delay").await;
    let second = receive_exactly(&sub, 1, deadline, "after the retry delay")
        .await
        .remove(0);
    assert!(start.elapsed() + tolerance >= delay, "redelivered early");
    assert_eq!(second.message().id(), &id);
    assert_eq!(second.attempt(), 2, "a retry counts an attempt");

    second.retry(Duration::ZERO).await.must("retry(0)");
    let third = receive_exactly(&sub, 1, deadline, "after retry(0)")
        .await
        .remove(0);
    assert_eq!((third.message().id(), third.attempt()), (&id, 3));
    ack_all(vec![third]).await;
    expect_nothing(&sub, f.timing.settle, "after the ack").await;
    f.finish().await
}

/// A delivery dropped without a verb comes back once its lease runs out, not before, with
/// `attempt + 1`; the lease deadline it reported is the lease from the time of receiving.
pub async fn lease_expiry_redelivers_with_next_attempt<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "lease_expiry_redelivers_with_next_attempt").await;
    let topic = f.topic("t").await;
    let (lease, tolerance) = (f.timing.lease, f.timing.tolerance);
    let config = SubscriptionConfig::new(topic.clone()).lease(lease);
    let (_, sub) = f.subscribe_with("s", config).await;
    f.publish(&topic, f.message("forgotten")).await;

    let asked = std::time::Instant::now();
    let first = receive_exactly(&sub, 1, f.timing.deadline, "first delivery")
        .await
        .remove(0);
    let received = std::time::Instant::now();
    let lease_deadline = first.lease_deadline();
    assert!(
        lease_deadline + tolerance >= asked + lease
            && lease_deadline <= received + lease + tolerance,
        "lease deadline is {lease:?} after receiving"
    );
    let id = first.message().id().clone();
    drop(first);

    let earliest = Instant::from_std(lease_deadline) - tolerance;
    expect_nothing(&sub, until(earliest), "before the lease runs out").await;
    let second = receive_exactly(&sub, 1, f.timing.deadline, "after the lease")
        .await
        .remove(0);
    assert!(
        std::time::Instant::now() + tolerance >= lease_deadline,
        "redelivered early"
    );
    assert_eq!(second.message().id(), &id);
    assert_eq!(second.attempt(), 2, "a lease expiry counts an attempt");
    ack_all(vec![second]).await;
    f.finish().await
}

/// A released message comes back at once (long before its lease would run out), with the
/// attempt the backend declares: unchanged, or +1 where `release_counts_as_attempt`.
pub async fn release_redelivers_at_declared_attempt<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "release_redelivers_at_declared_attempt").await;
    let topic = f.topic("t").await;
    // A lease far beyond the deadline: a redelivery within the deadline is the release's.
    let config = SubscriptionConfig::new(topic.clone()).lease(f.timing.deadline * 3);
    let (_, sub) = f.subscribe_with("s", config).await;
    f.publish(&topic, f.message("released")).await;

    let first = receive_exactly(&sub, 1, f.timing.deadline, "first delivery")
        .await
        .remove(0);
    let id = first.message().id().clone();
    first.release().await.must("release");
    let again = receive_exactly(&sub, 1, f.timing.deadline, "after release")
        .await
        .remove(0);
    let expected = 1 + u32::from(f.caps().release_counts_as_attempt);
    assert_eq!(again.message().id(), &id);
    assert_eq!(
        again.attempt(),
        expected,
        "release_counts_as_attempt = {}",
        f.caps().release_counts_as_attempt
    );
    ack_all(vec![again]).await;
    f.finish().await
}

/// A delivery whose lease is extended before it runs out is not delivered again, even long
/// after the original lease, and can still be acked.
pub async fn extend_lease_keeps_delivery_reserved<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "extend_lease_keeps_delivery_reserved").await;
    let topic = f.topic("t").await;
    let lease = f.timing.lease;
    let config = SubscriptionConfig::new(topic.clone()).lease(lease);
    let (_, sub) = f.subscribe_with("s", config).await;
    f.publish(&topic, f.message("long-work")).await;

    let mut held = receive_exactly(&sub, 1, f.timing.deadline, "the delivery")
        .await
        .remove(0);
    let received = Instant::now();
    for _ in 0..3 {
        let what = "a delivery whose lease is being extended";
        expect_nothing(&sub, lease / 2, what).await;
        let before = held.lease_deadline();
        held.extend_lease(lease).await.must("extend_lease");
        assert!(
            held.lease_deadline() > before,
            "extend_lease moves the deadline"
        );
    }
    assert!(received.elapsed() > lease, "held past the original lease");
    held.ack().await.must("ack after extending");
    let watch = lease + f.timing.settle;
    expect_nothing(&sub, watch, "an acked delivery after extensions").await;
    f.finish().await
}

/// A verb on a delivery whose lease ran out (and whose message was delivered again) fails
/// with `LeaseLost` or does nothing: it never settles the new copy.
pub async fn verb_after_lease_expiry_is_lease_lost_or_harmless<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "verb_after_lease_expiry_is_lease_lost_or_harmless").await;
    let topic = f.topic("t").await;
    let config = SubscriptionConfig::new(topic.clone()).lease(f.timing.lease);
    let (_, sub) = f.subscribe_with("s", config).await;
    f.publish(&topic, f.message("slow")).await;
    let deadline = f.timing.deadline;

    let stale = receive_exactly(&sub, 1, deadline, "first delivery")
        .await
        .remove(0);
    let id = stale.message().id().clone();
    let current = receive_exactly(&sub, 1, deadline, "after the lease")
        .await
        .remove(0);
    assert_eq!((current.message().id(), current.attempt()), (&id, 2));

    match stale.ack().await {
        Ok(()) => {}
        Err(err) => match &err.error {
            Error::LeaseLost { id: lost } => assert_eq!(lost, id.as_str(), "LeaseLost names it"),
            other => panic!("a stale ack fails with LeaseLost or does nothing, got {other}"),
        },
    }
    // The stale ack must not have settled the current copy: let its lease run out too.
    drop(current);
    let what = "the message, after a stale ack and another lease expiry";
    let third = receive_exactly(&sub, 1, deadline, what).await.remove(0);
    assert_eq!((third.message().id(), third.attempt()), (&id, 3));
    ack_all(vec![third]).await;
    f.finish().await
}
