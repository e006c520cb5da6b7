//! Backlog bounds: `Reject` fails at once, `Block` waits for a settle up to its timeout, the
//! slowest subscription decides, and a refused publish changes nothing.

use std::time::Duration;

use sluice_core::{
    Backend, BacklogBound, DeadLetterReason, Delivery, Error, Message, Overflow, PublishOutcome,
    Publisher, TopicConfig,
};
use tokio::time::{advance, Instant};

use super::{ack_all, fixture_with, ids, message, one_now, ready_now, Fixture};

fn bounded(max_messages: u64, overflow: Overflow) -> TopicConfig {
    TopicConfig::default().backlog_bound(BacklogBound::new(overflow).max_messages(max_messages))
}

fn block(timeout: Duration) -> Overflow {
    Overflow::Block { timeout }
}

/// The topic, and the detail, of a `BacklogFull`; panics on anything else.
fn backlog_full<T: std::fmt::Debug>(result: Result<T, Error>) -> (String, String) {
    match result {
        Err(Error::BacklogFull { topic, detail }) => (topic, detail),
        other => panic!("expected BacklogFull, got {other:?}"),
    }
}

/// Publishes `id` from a task of its own (with a publisher of its own).
fn spawn_publish(
    f: &Fixture,
    id: &'static str,
) -> tokio::task::JoinHandle<sluice_core::Result<PublishOutcome>> {
    let (backend, topic) = (f.backend.clone(), f.topic.clone());
    tokio::spawn(async move {
        let publisher = backend.publisher().await?;
        Ok(publisher.publish(&topic, message(id)).await?.outcome)
    })
}

#[tokio::test(start_paused = true)]
async fn reject_fails_at_once_delivers_nothing_extra_and_an_ack_makes_room() {
    let f = fixture_with(bounded(2, Overflow::Reject)).await;
    let billing = f.subscribe("billing", f.config()).await;
    f.publish_ids(&["a", "b"]).await;

    let started = Instant::now();
    let (topic, detail) = backlog_full(f.publisher.publish(&f.topic, message("c")).await);
    assert_eq!(started.elapsed(), Duration::ZERO, "reject does not wait");
    assert_eq!(topic, "orders");
    assert!(
        detail.contains("backlog of 2 messages")
            && detail.contains("bound of 2 messages")
            && detail.contains("the slowest subscription is `billing`"),
        "{detail}"
    );
    let err = Error::backlog_full(topic, detail);
    assert!(err.is_retryable());
    assert!(err.to_string().starts_with("topic `orders` is full: "));

    let deliveries = ready_now(&billing, 10).await;
    assert_eq!(
        ids(&deliveries),
        ["a", "b"],
        "the refused message is not delivered"
    );
    // In flight still counts: only a settle makes room.
    let results = f
        .publisher
        .publish_batch(&f.topic, vec![message("c"), message("d")])
        .await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(Error::BacklogFull { .. }))),
        "{results:?}"
    );
    let mut deliveries = deliveries.into_iter();
    let a = deliveries.next().unwrap();
    a.ack().await.unwrap();
    f.publish(message("c")).await;
    backlog_full(f.publisher.publish(&f.topic, message("d")).await);
    assert_eq!(ids(&ready_now(&billing, 10).await), ["c"]);
}

#[tokio::test(start_paused = true)]
async fn retry_and_release_keep_the_backlog_and_dead_letter_frees_it() {
    let f = fixture_with(bounded(1, Overflow::Reject)).await;
    let billing = f.subscribe("billing", f.config()).await;
    f.publish_ids(&["a"]).await;
    let a = one_now(&billing).await;
    a.retry(Duration::from_secs(1)).await.unwrap();
    backlog_full(f.publisher.publish(&f.topic, message("b")).await);
    advance(Duration::from_secs(1)).await;
    let a = one_now(&billing).await;
    a.release().await.unwrap();
    backlog_full(f.publisher.publish(&f.topic, message("b")).await);
    let a = one_now(&billing).await;
    a.dead_letter(DeadLetterReason::new("poison"))
        .await
        .unwrap();
    f.publish(message("b")).await;
}

#[tokio::test(start_paused = true)]
async fn the_slowest_subscription_decides_and_without_subscriptions_there_is_no_backlog() {
    let f = fixture_with(bounded(2, Overflow::Reject)).await;
    f.publish_ids(&["x", "y", "z"]).await;
    let fast = f.subscribe("fast", f.config()).await;
    let slow = f.subscribe("slow", f.config()).await;
    f.publish_ids(&["a", "b"]).await;
    ack_all(ready_now(&fast, 10).await).await;
    let (_, detail) = backlog_full(f.publisher.publish(&f.topic, message("c")).await);
    assert!(
        detail.contains("the slowest subscription is `slow`"),
        "{detail}"
    );
    ack_all(ready_now(&slow, 1).await).await;
    f.publish(message("c")).await;
}

#[tokio::test(start_paused = true)]
async fn block_waits_for_an_ack_without_a_thread() {
    let timeout = Duration::from_secs(10);
    let f = fixture_with(bounded(2, block(timeout))).await;
    let billing = f.subscribe("billing", f.config()).await;
    f.publish_ids(&["a", "b"]).await;
    let mut held = ready_now(&billing, 10).await.into_iter();
    let started = Instant::now();
    let waiting = spawn_publish(&f, "c");
    advance(Duration::from_secs(3)).await;
    assert!(
        !waiting.is_finished(),
        "the publish waits while the topic is full"
    );
    assert!(ready_now(&billing, 10).await.is_empty(), "nothing extra");

    held.next().unwrap().ack().await.unwrap();
    let outcome = waiting.await.unwrap().expect("the publish goes through");
    assert_eq!(outcome, PublishOutcome::Published);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(3),
        "it went as soon as the ack made room"
    );
    assert_eq!(ids(&ready_now(&billing, 10).await), ["c"]);
}

#[tokio::test(start_paused = true)]
async fn block_fails_with_backlog_full_after_the_timeout_if_nobody_makes_room() {
    let timeout = Duration::from_secs(10);
    let f = fixture_with(bounded(1, block(timeout))).await;
    let billing = f.subscribe("billing", f.config()).await;
    f.publish_ids(&["a"]).await;
    let started = Instant::now();
    let (topic, detail) = backlog_full(f.publisher.publish(&f.topic, message("b")).await);
    assert_eq!(
        started.elapsed(),
        timeout,
        "the publish waited for the whole timeout"
    );
    assert_eq!(topic, "orders");
    assert!(
        detail.contains("the slowest subscription is `billing`")
            && detail.contains("no room was made within 10s"),
        "{detail}"
    );
    assert_eq!(
        ids(&ready_now(&billing, 10).await),
        ["a"],
        "the refused message is not delivered"
    );
}

#[tokio::test(start_paused = true)]
async fn a_bytes_bound_counts_sizes_and_a_message_larger_than_the_bound_fails_at_once() {
    let a = message("a");
    let size = a.size() as u64;
    let config = TopicConfig::default()
        .backlog_bound(BacklogBound::new(block(Duration::from_secs(10))).max_bytes(size * 2));
    let f = fixture_with(config).await;
    let billing = f.subscribe("billing", f.config()).await;
    f.publish(a).await;
    f.publish(message("b")).await;
    let huge = Message::builder(vec![b'x'; size as usize * 3])
        .id("huge")
        .build()
        .unwrap();
    let started = Instant::now();
    let (_, detail) = backlog_full(f.publisher.publish(&f.topic, huge).await);
    assert_eq!(started.elapsed(), Duration::ZERO, "waiting cannot help");
    assert!(
        detail.contains("bytes") && detail.contains("alone"),
        "{detail}"
    );
    ack_all(ready_now(&billing, 10).await).await;
    f.publish(message("c")).await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_publish_leaves_no_dedup_claim() {
    let config = bounded(1, Overflow::Reject).dedup_window(Duration::from_secs(60));
    let f = fixture_with(config).await;
    let billing = f.subscribe("billing", f.config()).await;
    f.publish_ids(&["a"]).await;
    backlog_full(f.publisher.publish(&f.topic, message("b")).await);
    ack_all(ready_now(&billing, 10).await).await;
    assert_eq!(
        f.publisher
            .publish(&f.topic, message("b"))
            .await
            .unwrap()
            .outcome,
        PublishOutcome::Published,
        "the refused id was not recorded by the dedup window"
    );
    assert_eq!(ids(&ready_now(&billing, 10).await), ["b"]);
}

#[tokio::test(start_paused = true)]
async fn deleting_the_slow_subscription_wakes_a_blocked_publish() {
    let f = fixture_with(bounded(1, block(Duration::from_secs(10)))).await;
    let _billing = f.subscribe("billing", f.config()).await;
    f.publish_ids(&["a"]).await;
    let waiting = spawn_publish(&f, "b");
    advance(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished());
    f.backend
        .delete_subscription(&super::sub("billing"))
        .await
        .unwrap();
    assert_eq!(
        waiting.await.unwrap().unwrap(),
        PublishOutcome::Published,
        "without subscriptions there is no backlog"
    );
}

#[tokio::test(start_paused = true)]
async fn the_bound_is_described_and_another_bound_is_a_conflict() {
    let config = bounded(5, Overflow::Reject);
    let f = fixture_with(config.clone()).await;
    assert_eq!(
        f.backend.describe_topic(&f.topic).await.unwrap().config,
        config
    );
    let err = f
        .backend
        .ensure_topic(&f.topic, &bounded(6, Overflow::Reject))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Conflict { difference, .. } if difference.starts_with("backlog_bound:")),
        "{err:?}"
    );
}
