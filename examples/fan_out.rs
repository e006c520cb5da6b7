//! Fan-out: every subscription gets every message it matches; a new consumer is a new
//! subscription, the producer does not change.
//!
//! `cargo run -p sluice-examples --example fan_out`

use std::time::Duration;

use sluice::prelude::*;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let backend = sluice::connect("memory:").await?;
    let topic = TopicName::new("orders")?;
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await?;
    let all = SubscriptionName::new("analytics")?;
    let eu = SubscriptionName::new("eu-invoicing")?;
    backend
        .ensure_subscription(&all, &SubscriptionConfig::new(topic.clone()))
        .await?;
    backend
        .ensure_subscription(
            &eu,
            &SubscriptionConfig::new(topic.clone()).filter(Filter::new("order.*.eu")?),
        )
        .await?;

    let publisher = backend.publisher().await?;
    for region in ["eu", "us", "eu"] {
        let message = Message::builder(format!("order from {region}"))
            .routing_key(format!("order.placed.{region}"))
            .build()?;
        publisher.publish(&topic, message).await?;
    }

    for subscription in [&all, &eu] {
        let subscriber = backend.subscribe(subscription).await?;
        let deliveries = subscriber.receive(10, Duration::from_millis(100)).await?;
        println!("{subscription} received {} message(s)", deliveries.len());
        for delivery in deliveries {
            delivery.ack().await.map_err(|e| e.error)?;
        }
    }
    Ok(())
}
