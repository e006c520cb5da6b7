//! `sluice consume SUBSCRIPTION`: prints each delivery and acks it.

use std::time::Duration;

use anyhow::Context;
use sluice::{Backend, Delivery, DynSubscriber, Subscriber, SubscriptionName};

use super::{message_json, message_line, Target};

/// Arguments of `sluice consume`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConsumeArgs {
    #[command(flatten)]
    target: Target,
    /// Subscription to consume.
    subscription: String,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop once nothing arrived for this long (default: run until Ctrl-C).
    #[arg(long, value_parser = crate::duration::parse)]
    idle: Option<Duration>,
}

/// Receives, prints and acks until `count` messages, `idle` without any, or Ctrl-C.
pub(crate) async fn print_and_ack(
    target: &Target,
    subscriber: &DynSubscriber,
    count: Option<u64>,
    idle: Option<Duration>,
) -> anyhow::Result<u64> {
    let mut seen = 0u64;
    let mut idle_since = tokio::time::Instant::now();
    loop {
        if count.is_some_and(|c| seen >= c) {
            return Ok(seen);
        }
        let max = count.map_or(64, |c| (c - seen).min(64) as usize);
        let batch = tokio::select! {
            batch = subscriber.receive(max, Duration::from_millis(500)) => batch,
            _ = tokio::signal::ctrl_c() => return Ok(seen),
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(err) if err.is_retryable() => {
                eprintln!("receive failed ({err}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(err) => {
                return Err(err).with_context(|| {
                    target.failed(format!("receiving from `{}`", subscriber.subscription()))
                })
            }
        };
        if batch.is_empty() {
            if idle.is_some_and(|i| idle_since.elapsed() >= i) {
                return Ok(seen);
            }
            continue;
        }
        idle_since = tokio::time::Instant::now();
        for delivery in batch {
            if target.json {
                println!(
                    "{}",
                    message_json(delivery.message(), Some(delivery.attempt()))
                );
            } else {
                println!(
                    "{}",
                    message_line(delivery.message(), Some(delivery.attempt()))
                );
            }
            seen += 1;
            // A failed ack only means the message comes again: say so, keep going.
            if let Err(err) = delivery.ack().await {
                eprintln!(
                    "ack of {} failed ({}); it will be delivered again",
                    err.delivery.message().id(),
                    err.error
                );
            }
        }
    }
}

pub(crate) async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let target = &args.target;
    let backend = target.connect().await?;
    let name = SubscriptionName::new(&args.subscription)?;
    let subscriber = backend
        .subscribe(&name)
        .await
        .with_context(|| target.failed(format!("subscribing to `{}`", args.subscription)))?;
    let seen = print_and_ack(target, &subscriber, args.count, args.idle).await?;
    subscriber.close().await.ok();
    if !target.json {
        eprintln!("{seen} message(s) consumed and acked");
    }
    Ok(())
}
