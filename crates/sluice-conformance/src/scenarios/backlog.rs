//! Backlog bounds: a topic bounded at N messages refuses the next publish (`reject`) or
//! makes it wait for a consumer to make room (`block`), and nothing beyond the bound is
//! delivered.

use std::pin::pin;

use sluice_core::{
    BacklogBound, Delivery, Error, Overflow, PublishOutcome, Publisher, TopicConfig, TopicName,
};
use tokio::time::Instant;

use crate::fixture::{Fixture, Outcome};
use crate::harness::Harness;
use crate::wait::{ack_all, eventually, expect_nothing, label, receive_exactly, sorted_labels};

/// A topic configuration bounded at `max` messages with `overflow`.
fn bounded(max: u64, overflow: Overflow) -> TopicConfig {
    TopicConfig::default().backlog_bound(BacklogBound::new(overflow).max_messages(max))
}

/// Fails the scenario unless `result` is `BacklogFull` naming `topic`, retryable, with a
/// message that says the topic is full.
#[track_caller]
fn assert_backlog_full<T: std::fmt::Debug>(
    result: &Result<T, Error>,
    topic: &TopicName,
    what: &str,
) {
    match result {
        Err(err @ Error::BacklogFull { topic: named, .. }) => {
            assert!(
                named.contains(topic.as_str()),
                "{what}: BacklogFull names topic `{named}`, expected `{topic}`"
            );
            assert!(err.is_retryable(), "{what}: BacklogFull is retryable");
            assert!(
                err.to_string().contains("is full"),
                "{what}: the message says the topic is full: {err}"
            );
        }
        other => panic!("{what}: expected Error::BacklogFull, got {other:?}"),
    }
}

/// With `reject`, the (N+1)-th publish fails with `BacklogFull` and nothing beyond the bound
/// is delivered; acking makes room again. With `block { timeout }`, a publish past the bound
/// waits and goes through once a consumer acks, or fails with `BacklogFull` after the
/// timeout if nobody does.
pub async fn backlog_bound_rejects_or_blocks_when_full<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "backlog_bound_rejects_or_blocks_when_full").await;
    if let Some(skipped) = f.gate() {
        return skipped;
    }
    reject(&f).await;
    block_until_an_ack(&f).await;
    block_until_the_timeout(&f).await;
    f.finish().await
}

/// `reject` at 3 messages: the 4th fails, nothing extra arrives, acking two makes room for two.
async fn reject<H: Harness>(f: &Fixture<'_, H>) {
    let topic = f.topic_with("reject", bounded(3, Overflow::Reject)).await;
    let sub = f.subscribe(&topic, "reject").await;
    f.publish_labels(&topic, &["r0", "r1", "r2"]).await;
    let result = f.publisher.publish(&topic, f.message("r3")).await;
    assert_backlog_full(&result, &topic, "reject: the publish past the bound");

    let mut got = receive_exactly(&sub, 3, f.timing.deadline, "reject: the bounded messages").await;
    expect_nothing(&sub, f.timing.settle, "reject: nothing beyond the bound").await;
    got.sort_by_key(label);
    let third = got.pop().expect("three deliveries");
    ack_all(got).await;

    // Backends may account for the acks a moment later: try until the publish is accepted
    // (a refused publish stores nothing).
    eventually(
        f.timing.deadline,
        f.timing.poll_interval(),
        "reject: publishing again once two messages were acked",
        || async {
            match f.publisher.publish(&topic, f.message("r3")).await {
                Ok(receipt) if receipt.outcome == PublishOutcome::Published => Ok(()),
                Ok(receipt) => Err(format!("outcome {:?}", receipt.outcome)),
                Err(err) => Err(err.to_string()),
            }
        },
    )
    .await;
    f.publish(&topic, f.message("r4")).await;
    let result = f.publisher.publish(&topic, f.message("r5")).await;
    assert_backlog_full(
        &result,
        &topic,
        "reject: the bound holds again once it is reached",
    );
    let got = receive_exactly(
        &sub,
        2,
        f.timing.deadline,
        "reject: the messages published after the acks",
    )
    .await;
    assert_eq!(sorted_labels(&got), ["r3", "r4"]);
    ack_all(got).await;
    third
        .ack()
        .await
        .map_err(|failed| failed.into_error())
        .expect("ack");
    expect_nothing(
        &sub,
        f.timing.settle,
        "reject: nothing refused is delivered",
    )
    .await;
}

/// `block` with a timeout of `deadline` at 1 message: the 2nd publish waits while the 1st is
/// unacked, and goes through once it is acked.
async fn block_until_an_ack<H: Harness>(f: &Fixture<'_, H>) {
    let timeout = f.timing.deadline;
    let topic = f
        .topic_with("block", bounded(1, Overflow::Block { timeout }))
        .await;
    let sub = f.subscribe(&topic, "block").await;
    f.publish(&topic, f.message("b0")).await;
    let held = receive_exactly(&sub, 1, f.timing.deadline, "block: the bounded message").await;

    let started = Instant::now();
    let mut publish = pin!(f.publisher.publish(&topic, f.message("b1")));
    let early = tokio::time::timeout(f.timing.settle, publish.as_mut()).await;
    assert!(
        early.is_err(),
        "block: the publish past the bound waits while nobody acks, got {early:?}"
    );
    ack_all(held).await;
    let receipt = tokio::time::timeout(f.timing.deadline, publish)
        .await
        .expect("block: the waiting publish completes once a consumer acked")
        .expect("block: the waiting publish succeeds once a consumer acked");
    assert_eq!(receipt.outcome, PublishOutcome::Published);
    assert!(
        started.elapsed() < timeout,
        "block: the publish went when the ack made room, not at the timeout"
    );
    let got = receive_exactly(&sub, 1, f.timing.deadline, "block: the message that waited").await;
    assert_eq!(sorted_labels(&got), ["b1"]);
    ack_all(got).await;
}

/// `block` with a timeout of `delay` at 1 message: with nobody acking, the 2nd publish fails
/// with `BacklogFull` no earlier than the timeout, and is not delivered.
async fn block_until_the_timeout<H: Harness>(f: &Fixture<'_, H>) {
    let timeout = f.timing.delay;
    let topic = f
        .topic_with("block-timeout", bounded(1, Overflow::Block { timeout }))
        .await;
    let sub = f.subscribe(&topic, "block-timeout").await;
    f.publish(&topic, f.message("t0")).await;

    let started = Instant::now();
    let result = tokio::time::timeout(
        timeout + f.timing.deadline,
        f.publisher.publish(&topic, f.message("t1")),
    )
    .await
    .expect("block: a publish nobody makes room for ends after the timeout");
    let waited = started.elapsed();
    assert_backlog_full(&result, &topic, "block: the publish nobody made room for");
    assert!(
        waited + f.timing.tolerance >= timeout,
        "block: the publish waited {waited:?}, less than the timeout of {timeout:?}"
    );
    let got = receive_exactly(&sub, 1, f.timing.deadline, "block: the bounded message").await;
    assert_eq!(sorted_labels(&got), ["t0"]);
    expect_nothing(
        &sub,
        f.timing.settle,
        "block: the refused message is not delivered",
    )
    .await;
    ack_all(got).await;
}
