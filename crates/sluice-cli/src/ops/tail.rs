//! `sluice tail TOPIC`: follows a topic through a temporary subscription (deleted on exit),
//! printing every message; the topic's real subscriptions are untouched.

use std::time::Duration;

use anyhow::Context;
use sluice::{Backend, StartPosition, Subscriber, SubscriptionConfig, SubscriptionName, TopicName};

use super::consume::print_and_ack;
use super::Target;

/// Arguments of `sluice tail`.
#[derive(Debug, clap::Args)]
pub(crate) struct TailArgs {
    #[command(flatten)]
    target: Target,
    /// Topic to follow.
    topic: String,
    /// Start with every message the topic retains instead of new ones.
    #[arg(long)]
    from_beginning: bool,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop once nothing arrived for this long.
    #[arg(long, value_parser = crate::duration::parse)]
    idle: Option<Duration>,
}

pub(crate) async fn run(args: TailArgs) -> anyhow::Result<()> {
    let target = &args.target;
    let backend = target.connect().await?;
    let topic = TopicName::new(&args.topic)?;
    let suffix = uuid_suffix();
    let name = SubscriptionName::new(format!("tail-{suffix}"))?;
    let start = if args.from_beginning {
        StartPosition::Earliest
    } else {
        StartPosition::Latest
    };
    backend
        .ensure_subscription(
            &name,
            &SubscriptionConfig::new(topic)
                .start(start)
                .dead_letter_queue(false),
        )
        .await
        .with_context(|| {
            target.failed(format!(
                "creating a temporary subscription of `{}`",
                args.topic
            ))
        })?;
    let subscriber = backend
        .subscribe(&name)
        .await
        .with_context(|| target.failed("subscribing"))?;
    let result = print_and_ack(target, &subscriber, args.count, args.idle).await;
    subscriber.close().await.ok();
    backend
        .delete_subscription(&name)
        .await
        .with_context(|| target.failed(format!("deleting the temporary subscription `{name}`")))?;
    result.map(|_| ())
}

/// Eight hex digits, different per run.
fn uuid_suffix() -> String {
    use rand::Rng;
    format!("{:08x}", rand::thread_rng().gen::<u32>())
}
