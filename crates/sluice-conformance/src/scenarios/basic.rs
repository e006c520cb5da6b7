//! The basics: a message arrives intact, competing consumers split the work, ack removes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sluice_core::message::RESERVED_PREFIX;
use sluice_core::{Backend, Delivery, Headers, Message, Subscriber, SubscriptionConfig};
use tokio::time::Instant;

use crate::fixture::{Fixture, Outcome};
use crate::harness::Harness;
use crate::wait::{
    ack_all, expect_nothing, label, receive_exactly, sorted_labels, Must, RECEIVE_BATCH,
};

fn user_headers(message: &Message) -> Headers {
    message
        .headers()
        .iter()
        .filter(|(name, _)| !name.starts_with(RESERVED_PREFIX))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// A published message arrives with its id, payload (every byte value), type, keys, headers
/// and content type unchanged, as attempt 1 of its topic and subscription; a message with
/// nothing but an empty payload arrives as empty.
pub async fn round_trip_keeps_id_payload_headers_and_keys<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "round_trip_keeps_id_payload_headers_and_keys").await;
    let topic = f.topic("t").await;
    let (name, sub) = f
        .subscribe_with("s", SubscriptionConfig::new(topic.clone()))
        .await;

    let full = Message::builder((0..=255u8).collect::<Vec<u8>>())
        .id("order-42-placed")
        .message_type("order.placed")
        .routing_key("eu.orders.placed")
        .ordering_key("customer-7")
        .header("tenant", "acme")
        .header("trace.id", "café ☕ 123")
        .header("empty", "")
        .content_type("application/octet-stream")
        .build()
        .must("building the full message");
    let minimal = Message::builder(Vec::new())
        .build()
        .must("building the minimal message");
    let before = SystemTime::now();
    f.publish(&topic, full.clone()).await;
    f.publish(&topic, minimal.clone()).await;

    let mut got = receive_exactly(&sub, 2, f.timing.deadline, "both messages").await;
    got.sort_by_key(|d| d.message().payload().is_empty());
    for (d, sent) in got.iter().zip([&full, &minimal]) {
        let m = d.message();
        assert_eq!(m.id(), sent.id(), "id");
        assert_eq!(m.payload(), sent.payload(), "payload of {}", sent.id());
        assert_eq!(m.message_type(), sent.message_type(), "type");
        assert_eq!(m.routing_key(), sent.routing_key(), "routing key");
        assert_eq!(m.ordering_key(), sent.ordering_key(), "ordering key");
        assert_eq!(m.content_type(), sent.content_type(), "content type");
        assert_eq!(user_headers(m), *sent.headers(), "headers of {}", sent.id());
        let published_at = m
            .published_at()
            .expect("published_at is set by the backend");
        let skew = Duration::from_secs(60);
        assert!(
            published_at + skew >= before && published_at <= SystemTime::now() + skew,
            "published_at {published_at:?} is around the time of publishing"
        );
        assert_eq!(d.attempt(), 1, "first delivery is attempt 1");
        assert_eq!(d.topic(), &topic, "delivery names its topic");
        assert_eq!(d.subscription(), &name, "delivery names its subscription");
        assert!(
            d.lease_deadline() > std::time::Instant::now(),
            "a fresh delivery's lease is in the future"
        );
    }
    ack_all(got).await;
    f.finish().await
}

/// Several subscribers of one subscription, on separate connections, each get work while the
/// others hold theirs, and together handle every message exactly once.
pub async fn competing_consumers_share_work_without_loss<H: Harness>(h: &H) -> Outcome {
    const TOTAL: usize = 30;
    const CONSUMERS: usize = 3;
    let f = Fixture::new(h, "competing_consumers_share_work_without_loss").await;
    let topic = f.topic("t").await;
    let (name, first) = f
        .subscribe_with("s", SubscriptionConfig::new(topic.clone()))
        .await;
    let mut consumers = vec![first];
    let mut backends = Vec::new();
    for _ in 1..CONSUMERS {
        let backend = h.connect().await.must("connecting another consumer");
        let subscriber = backend.subscribe(&name).await.must("subscribing");
        backends.push(backend);
        consumers.push(subscriber);
    }
    let all: Vec<String> = (0..TOTAL).map(|i| format!("m{i:02}")).collect();
    for label in &all {
        f.publish(&topic, f.message(label)).await;
    }

    // Each consumer gets a message while the others still hold theirs.
    let mut held = Vec::new();
    for subscriber in &consumers {
        let what = "a consumer gets work while the others hold theirs";
        held.extend(receive_exactly(subscriber, 1, f.timing.deadline, what).await);
    }
    let held_labels = sorted_labels(&held);
    let mut distinct = held_labels.clone();
    distinct.dedup();
    assert_eq!(
        distinct, held_labels,
        "held deliveries are distinct messages"
    );
    let seen = Arc::new(Mutex::new(held_labels));
    ack_all(held).await;

    // Then they drain the rest concurrently.
    let deadline = Instant::now() + f.timing.deadline;
    let settle = f.timing.settle;
    let mut tasks = Vec::new();
    for subscriber in consumers {
        let seen = Arc::clone(&seen);
        tasks.push(tokio::spawn(async move {
            while seen.lock().unwrap().len() < TOTAL && Instant::now() < deadline {
                let wait = settle.min(deadline.saturating_duration_since(Instant::now()));
                let batch = subscriber
                    .receive(RECEIVE_BATCH, wait)
                    .await
                    .must("receive");
                for d in batch {
                    let label = label(&d);
                    d.ack().await.must("ack");
                    seen.lock().unwrap().push(label);
                }
            }
        }));
    }
    for task in tasks {
        task.await.must("consumer task");
    }
    drop(backends);
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, all, "every message handled exactly once");
    f.finish().await
}

/// An acked message is never delivered again, not even after its lease would have run out;
/// the subscription goes on delivering new messages.
pub async fn ack_removes_message<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "ack_removes_message").await;
    let topic = f.topic("t").await;
    let config = SubscriptionConfig::new(topic.clone()).lease(f.timing.lease);
    let (_, sub) = f.subscribe_with("s", config).await;

    f.publish(&topic, f.message("first")).await;
    let got = receive_exactly(&sub, 1, f.timing.deadline, "the first message").await;
    ack_all(got).await;
    let watch = f.timing.lease + f.timing.settle;
    expect_nothing(&sub, watch, "an acked message after its lease").await;

    f.publish(&topic, f.message("second")).await;
    let got = receive_exactly(&sub, 1, f.timing.deadline, "the second message").await;
    assert_eq!(label(&got[0]), "second");
    assert_eq!(got[0].attempt(), 1);
    ack_all(got).await;
    f.finish().await
}
