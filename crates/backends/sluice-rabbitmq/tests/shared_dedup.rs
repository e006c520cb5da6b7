//! The emulated dedup window across backend handles: two handles (as two processes would
//! have) sharing one `RedisStore` share one window; with the default in-memory stores each
//! handle has its own (the in-process limit). A claim left pending (its answer lost, its
//! publisher gone) delays a publish, retryably, and never makes it a duplicate. Against the RabbitMQ broker at 127.0.0.1:5672
//! and the Redis at 127.0.0.1:6379, each run in its own namespace and key prefix.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::dedup::PENDING_CLAIM;
use sluice_core::{
    Backend, DedupClaim, DedupStore, Message, Namespace, Naming, PublishOutcome, Publisher,
    SubscriptionConfig, SubscriptionName, TopicConfig, TopicName,
};
use sluice_rabbitmq::{RabbitBackend, RabbitOptions};
use sluice_redis::RedisStore;

const URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const REDIS: &str = "redis://127.0.0.1:6379";

fn unique(prefix: &str) -> String {
    let uuid = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}{}", &uuid[uuid.len() - 10..])
}

fn charge(id: &str) -> Message {
    Message::builder("charge").id(id).build().unwrap()
}

async fn redis_store() -> Arc<dyn DedupStore> {
    Arc::new(
        RedisStore::connect(REDIS)
            .await
            .expect("Redis runs at 127.0.0.1:6379")
            .with_prefix(unique("sluice-test-")),
    )
}

/// Waits until the subscription holds `expected` ready messages.
async fn wait_for_ready(backend: &RabbitBackend, subscription: &SubscriptionName, expected: u64) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = backend.stats(subscription).await.unwrap().ready;
        if ready == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < until,
            "expected {expected} messages in the queue, found {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish(backend: &RabbitBackend, topic: &TopicName, id: &str) -> PublishOutcome {
    let publisher = backend.publisher().await.unwrap();
    let message = charge(id);
    let receipt = publisher.publish(topic, message).await.unwrap();
    publisher.close().await.unwrap();
    receipt.outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_sharing_a_redis_dedup_store_drop_a_second_publish_that_default_stores_let_through()
{
    let namespace = Namespace::new(unique("d")).unwrap();
    let store = redis_store().await;
    let shared = || {
        RabbitOptions::default()
            .namespace(Some(namespace.clone()))
            .dedup_store(Arc::clone(&store))
    };
    let first = RabbitBackend::connect(URI, shared()).await.unwrap();
    let second = RabbitBackend::connect(URI, shared()).await.unwrap();
    let topic = TopicName::new("orders").unwrap();
    let window = TopicConfig::default().dedup_window(Duration::from_secs(60));
    first.ensure_topic(&topic, &window).await.unwrap();
    let billing = SubscriptionName::new("billing").unwrap();
    first
        .ensure_subscription(&billing, &SubscriptionConfig::new(topic.clone()))
        .await
        .unwrap();

    assert_eq!(
        publish(&first, &topic, "order-42").await,
        PublishOutcome::Published
    );
    assert_eq!(
        publish(&second, &topic, "order-42").await,
        PublishOutcome::Duplicate,
        "a handle sharing the store sees the other handle's claim"
    );

    // Default stores: each handle keeps its own claims, so both publishes go through.
    let default = || RabbitOptions::default().namespace(Some(namespace.clone()));
    let third = RabbitBackend::connect(URI, default()).await.unwrap();
    let fourth = RabbitBackend::connect(URI, default()).await.unwrap();
    assert_eq!(
        publish(&third, &topic, "order-43").await,
        PublishOutcome::Published
    );
    assert_eq!(
        publish(&fourth, &topic, "order-43").await,
        PublishOutcome::Published,
        "without a shared store the window is per handle"
    );

    // The broker holds one copy of order-42 and two of order-43.
    wait_for_ready(&first, &billing, 3).await;

    // Claims are keyed by the physical topic: another namespace sharing the store has its
    // own window for its own `orders`.
    let other_namespace = Namespace::new(unique("e")).unwrap();
    let other = RabbitBackend::connect(
        URI,
        RabbitOptions::default()
            .namespace(Some(other_namespace))
            .dedup_store(Arc::clone(&store)),
    )
    .await
    .unwrap();
    other.ensure_topic(&topic, &window).await.unwrap();
    assert_eq!(
        publish(&other, &topic, "order-42").await,
        PublishOutcome::Published,
        "another namespace's topic of the same name is another window"
    );

    // Deleting the topic forgets its claims, in the shared store too.
    first.delete_topic(&topic).await.unwrap();
    second.ensure_topic(&topic, &window).await.unwrap();
    assert_eq!(
        publish(&second, &topic, "order-42").await,
        PublishOutcome::Published,
        "a topic created again under the name starts with an empty window"
    );
    second.delete_topic(&topic).await.unwrap();
    other.delete_topic(&topic).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_pending_fails_publishes_retryably_and_after_its_release_they_go_through() {
    let namespace = Namespace::new(unique("p")).unwrap();
    let store = redis_store().await;
    let backend = RabbitBackend::connect(
        URI,
        RabbitOptions::default()
            .namespace(Some(namespace.clone()))
            .dedup_store(Arc::clone(&store)),
    )
    .await
    .unwrap();
    let topic = TopicName::new("orders").unwrap();
    let window = TopicConfig::default().dedup_window(Duration::from_secs(60));
    backend.ensure_topic(&topic, &window).await.unwrap();
    let billing = SubscriptionName::new("billing").unwrap();
    backend
        .ensure_subscription(&billing, &SubscriptionConfig::new(topic.clone()))
        .await
        .unwrap();

    // A publish of order-7 claimed its id and never settled (its answer was lost, or its
    // process died): the claim is pending under the topic's physical name.
    let physical = Naming::new(Some(namespace.clone())).topic(&topic);
    let DedupClaim::Claimed(token) = store
        .claim(&physical, "order-7", PENDING_CLAIM)
        .await
        .unwrap()
    else {
        panic!("order-7 is free in a fresh store")
    };

    let publisher = backend.publisher().await.unwrap();
    let err = publisher
        .publish(&topic, charge("order-7"))
        .await
        .expect_err("a pending claim is never a duplicate: the publish fails");
    assert!(err.is_retryable(), "the caller may retry: {err:?}");
    let text = err.to_string();
    assert!(
        text.contains("in progress") && text.contains("order-7") && text.contains("orders"),
        "the error names the id, the topic and why: {text}"
    );

    // In a batch, the messages after it are not sent either, so a retry keeps their order.
    let results = publisher
        .publish_batch(&topic, vec![charge("order-7"), charge("order-8")])
        .await;
    assert_eq!(results.len(), 2);
    for result in &results {
        let err = result.as_ref().expect_err("nothing of the batch is sent");
        assert!(err.is_retryable(), "{err:?}");
    }
    assert!(
        results[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("earlier message of this batch"),
        "{:?}",
        results[1]
    );

    store.release(&physical, "order-7", &token).await.unwrap();
    assert_eq!(
        publisher
            .publish(&topic, charge("order-7"))
            .await
            .unwrap()
            .outcome,
        PublishOutcome::Published,
        "after the release the publish goes through"
    );
    assert_eq!(
        publisher
            .publish(&topic, charge("order-7"))
            .await
            .unwrap()
            .outcome,
        PublishOutcome::Duplicate,
        "and once confirmed, the id is a duplicate"
    );
    // A batch holding one id twice: the later copy is a duplicate of the earlier.
    let outcomes: Vec<_> = publisher
        .publish_batch(&topic, vec![charge("order-8"), charge("order-8")])
        .await
        .into_iter()
        .map(|r| r.expect("the batch is published").outcome)
        .collect();
    assert_eq!(
        outcomes,
        [PublishOutcome::Published, PublishOutcome::Duplicate]
    );
    publisher.close().await.unwrap();

    wait_for_ready(&backend, &billing, 2).await;
    backend.delete_topic(&topic).await.unwrap();
}
