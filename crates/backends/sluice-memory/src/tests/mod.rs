//! Unit tests of the memory backend, on tokio's paused clock (`start_paused = true`):
//! time moves only with `tokio::time::advance` or when every task sleeps, so leases, delays
//! and windows are tested to the millisecond without waiting.
//!
//! A caveat of paused time: `Message::builder(..).deliver_after(d)` reads the real system
//! clock, while the backend's wall clock follows the paused one; tests publish delayed
//! messages before moving time, so both agree to within microseconds.

mod backlog;
mod delivery;
mod dlq;
mod model;
mod ordering;
mod publish;
mod topology;

use std::time::Duration;

use sluice_core::{
    Backend, Delivery, Message, Publisher, Subscriber, SubscriptionConfig, SubscriptionName,
    TopicConfig, TopicName,
};

use crate::{MemoryBackend, MemoryDelivery, MemoryPublisher, MemorySubscriber};

/// A backend with topic `orders` (no dedup window) and a publisher.
struct Fixture {
    backend: MemoryBackend,
    publisher: MemoryPublisher,
    topic: TopicName,
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

fn sub(name: &str) -> SubscriptionName {
    SubscriptionName::new(name).unwrap()
}

fn message(id: &str) -> Message {
    Message::builder(format!("payload of {id}"))
        .id(id)
        .build()
        .unwrap()
}

fn ids(deliveries: &[MemoryDelivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|delivery| delivery.message().id().to_string())
        .collect()
}

async fn fixture() -> Fixture {
    fixture_with(TopicConfig::default()).await
}

async fn fixture_with(config: TopicConfig) -> Fixture {
    let backend = MemoryBackend::new();
    let topic = topic("orders");
    backend.ensure_topic(&topic, &config).await.unwrap();
    let publisher = backend.publisher().await.unwrap();
    Fixture {
        backend,
        publisher,
        topic,
    }
}

impl Fixture {
    /// The default subscription config on `orders`.
    fn config(&self) -> SubscriptionConfig {
        SubscriptionConfig::new(self.topic.clone())
    }

    /// Ensures a subscription and returns a subscriber of it.
    async fn subscribe(&self, name: &str, config: SubscriptionConfig) -> MemorySubscriber {
        self.backend
            .ensure_subscription(&sub(name), &config)
            .await
            .unwrap();
        self.backend.subscribe(&sub(name)).await.unwrap()
    }

    async fn publish(&self, message: Message) {
        self.publisher.publish(&self.topic, message).await.unwrap();
    }

    async fn publish_ids(&self, ids: &[&str]) {
        for id in ids {
            self.publish(message(id)).await;
        }
    }
}

/// What is ready right now, without waiting.
async fn ready_now(subscriber: &MemorySubscriber, max: usize) -> Vec<MemoryDelivery> {
    subscriber.receive(max, Duration::ZERO).await.unwrap()
}

/// Exactly one delivery ready right now.
async fn one_now(subscriber: &MemorySubscriber) -> MemoryDelivery {
    let mut deliveries = ready_now(subscriber, 10).await;
    assert_eq!(
        deliveries.len(),
        1,
        "expected exactly one ready delivery, got {:?}",
        ids(&deliveries)
    );
    deliveries.pop().unwrap()
}

async fn ack_all(deliveries: Vec<MemoryDelivery>) {
    for delivery in deliveries {
        delivery
            .ack()
            .await
            .expect("ack of a live delivery succeeds");
    }
}
