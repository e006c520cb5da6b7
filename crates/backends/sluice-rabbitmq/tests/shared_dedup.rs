//! The emulated dedup window across backend handles: two handles (as two processes would
//! have) sharing one `RedisStore` share one window; with the default in-memory stores each
//! handle has its own (the in-process limit). Against the RabbitMQ broker at 127.0.0.1:5672
//! and the Redis at 127.0.0.1:6379, each run in its own namespace and key prefix.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::{
    Backend, DedupStore, Message, Namespace, PublishOutcome, Publisher, SubscriptionConfig,
    SubscriptionName, TopicConfig, TopicName,
};
use sluice_rabbitmq::{RabbitBackend, RabbitOptions};
use sluice_redis::RedisStore;

const URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const REDIS: &str = "redis://127.0.0.1:6379";

fn unique(prefix: &str) -> String {
    let uuid = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}{}", &uuid[uuid.len() - 10..])
}

async fn publish(backend: &RabbitBackend, topic: &TopicName, id: &str) -> PublishOutcome {
    let publisher = backend.publisher().await.unwrap();
    let message = Message::builder("charge").id(id).build().unwrap();
    let receipt = publisher.publish(topic, message).await.unwrap();
    publisher.close().await.unwrap();
    receipt.outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_sharing_a_redis_dedup_store_drop_a_second_publish_that_default_stores_let_through()
{
    let namespace = Namespace::new(unique("d")).unwrap();
    let store: Arc<dyn DedupStore> = Arc::new(
        RedisStore::connect(REDIS)
            .await
            .expect("Redis runs at 127.0.0.1:6379")
            .with_prefix(unique("sluice-test-")),
    );
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
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = first.stats(&billing).await.unwrap().ready;
        if ready == Some(3) {
            break;
        }
        assert!(
            Instant::now() < until,
            "expected 3 messages in the queue, found {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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
