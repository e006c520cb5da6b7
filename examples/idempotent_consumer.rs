//! An idempotent consumer: the same order delivered twice is charged once.
//!
//! `cargo run -p sluice-examples --example idempotent_consumer`

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice::prelude::*;

#[derive(serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    order_id: u64,
    amount_cents: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let backend = sluice::connect("memory:").await?;
    let orders = TopicName::new("orders")?;
    let billing = SubscriptionName::new("billing")?;
    backend
        .ensure_topic(&orders, &TopicConfig::default())
        .await?;
    backend
        .ensure_subscription(&billing, &SubscriptionConfig::new(orders.clone()))
        .await?;

    // The producer retries a publish it thinks failed: two copies of the same id. (A dedup
    // window on the topic would drop the second; here the consumer has to cope.)
    let publisher = backend.publisher().await?;
    for _ in 0..2 {
        let message = json_message(&OrderPlaced {
            order_id: 42,
            amount_cents: 1999,
        })?
        .id("order-42-placed")
        .build()?;
        publisher.publish(&orders, message).await?;
    }

    let charges = Arc::new(AtomicU32::new(0));
    let counted = charges.clone();
    let worker = Worker::builder(
        backend.subscribe(&billing).await?,
        json_handler(move |order: OrderPlaced, _ctx: Context| {
            let counted = counted.clone();
            async move {
                println!(
                    "charging {} cents for order {}",
                    order.amount_cents, order.order_id
                );
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }),
    )
    .idempotency(Idempotency::new(InMemoryStore::new()).ttl(Duration::from_secs(3600)))
    .build();
    let stats = worker.stats();
    let shutdown = CancellationToken::new();
    let running = worker.spawn(shutdown.clone());
    while stats.snapshot().acked + stats.snapshot().duplicates_skipped < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    let report = running.await?;
    println!(
        "charged {} time(s); {} duplicate(s) skipped",
        charges.load(Ordering::SeqCst),
        report.duplicates_skipped
    );
    Ok(())
}
