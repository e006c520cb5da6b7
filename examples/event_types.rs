//! Several event types on one topic: one typed handler per type, and a policy for types no
//! handler knows (dead-lettered by default, so nothing is lost).
//!
//! `cargo run -p sluice-examples --example event_types`

use std::time::Duration;

use sluice::prelude::*;
use sluice::runtime::{Event, Producer, Router, UnknownType};

#[derive(serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    order_id: u64,
    amount_cents: u64,
}
impl Event for OrderPlaced {
    const TYPE: &'static str = "order.placed";
}

#[derive(serde::Serialize, serde::Deserialize)]
struct OrderCancelled {
    order_id: u64,
}
impl Event for OrderCancelled {
    const TYPE: &'static str = "order.cancelled";
}

/// A type this consumer has no handler for (yet).
#[derive(serde::Serialize, serde::Deserialize)]
struct OrderRefunded {
    order_id: u64,
}
impl Event for OrderRefunded {
    const TYPE: &'static str = "order.refunded";
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let backend = sluice::connect("memory:").await?;
    let orders = TopicName::new("orders")?;
    let ledger = SubscriptionName::new("ledger")?;
    backend
        .ensure_topic(&orders, &TopicConfig::default())
        .await?;
    backend
        .ensure_subscription(&ledger, &SubscriptionConfig::new(orders.clone()))
        .await?;

    // Publishing an event sets the message type.
    let producer = Producer::new(backend.publisher().await?);
    producer
        .publish_event(
            &orders,
            &OrderPlaced {
                order_id: 1,
                amount_cents: 2500,
            },
        )
        .await?;
    producer
        .publish_event(
            &orders,
            &OrderPlaced {
                order_id: 2,
                amount_cents: 990,
            },
        )
        .await?;
    producer
        .publish_event(&orders, &OrderCancelled { order_id: 2 })
        .await?;
    producer
        .publish_event(&orders, &OrderRefunded { order_id: 1 })
        .await?;

    let router = Router::new()
        .on(|e: OrderPlaced, _ctx: Context| async move {
            println!(
                "ledger: +{:.2} for order {}",
                e.amount_cents as f64 / 100.0,
                e.order_id
            );
            Ok(())
        })
        .on(|e: OrderCancelled, _ctx: Context| async move {
            println!("ledger: order {} cancelled, reversing", e.order_id);
            Ok(())
        })
        .unknown_type(UnknownType::DeadLetter);
    let worker = Worker::builder(backend.subscribe(&ledger).await?, router)
        .concurrency(1)
        .build();
    let stats = worker.stats();
    let shutdown = CancellationToken::new();
    let running = worker.spawn(shutdown.clone());
    while stats.snapshot().acked + stats.snapshot().dead_lettered < 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    running.await?;

    for dead in backend.dlq_list(&ledger, 10).await? {
        let envelope = dead.envelope.expect("dead-lettered by Sluice");
        println!(
            "DLQ: {} — {} ({})",
            dead.message.message_type().unwrap_or("?"),
            envelope.reason,
            envelope.last_error.unwrap_or_default()
        );
    }
    Ok(())
}
