//! Retries with backoff, then the dead-letter queue, then a redrive.
//!
//! `cargo run -p sluice-examples --example retries_to_dlq`

use std::time::Duration;

use sluice::prelude::*;
use sluice::RedriveOptions;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let backend = sluice::connect("memory:").await?;
    let topic = TopicName::new("payments")?;
    let subscription = SubscriptionName::new("settlement")?;
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await?;
    backend
        .ensure_subscription(
            &subscription,
            &SubscriptionConfig::new(topic.clone()).max_attempts(3),
        )
        .await?;
    let publisher = backend.publisher().await?;
    publisher
        .publish(
            &topic,
            Message::builder("settle 42").id("payment-42").build()?,
        )
        .await?;

    // A handler whose downstream is down: retried after ~50 ms, ~100 ms, then dead-lettered.
    let worker = Worker::builder(
        backend.subscribe(&subscription).await?,
        raw_handler(|_payload, ctx: Context| async move {
            println!(
                "attempt {} of {}: bank unavailable",
                ctx.attempt(),
                ctx.max_attempts()
            );
            Err(HandlerError::transient("bank API returned 503"))
        }),
    )
    .backoff(Backoff::exponential(
        Duration::from_millis(50),
        Duration::from_secs(1),
    ))
    .build();
    let stats = worker.stats();
    let shutdown = CancellationToken::new();
    let running = worker.spawn(shutdown.clone());
    while stats.snapshot().dead_lettered < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await?;

    for dead in backend.dlq_list(&subscription, 10).await? {
        let envelope = dead.envelope.expect("dead-lettered by Sluice");
        println!(
            "in the DLQ: {} after {} attempts: {} ({})",
            dead.message.id(),
            envelope.attempts,
            envelope.reason,
            envelope.last_error.unwrap_or_default()
        );
    }
    // The bank is back: move the message back, attempt starting again at 1.
    let report = backend
        .dlq_redrive(&subscription, &RedriveOptions::all())
        .await?;
    println!("redriven: {:?}", report.moved);
    Ok(())
}
