//! `sluice topics`: list topics; `sluice topics create NAME` and `sluice topics subscribe`
//! make the objects the other commands work on.

use anyhow::Context;
use sluice::{
    Backend, Filter, StartPosition, SubscriptionConfig, SubscriptionName, TopicConfig, TopicName,
};

use super::{table, Target};

/// Arguments of `sluice topics`.
#[derive(Debug, clap::Args)]
pub(crate) struct TopicsArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    action: Option<TopicsAction>,
}

#[derive(Debug, clap::Subcommand)]
enum TopicsAction {
    /// Ensures a topic exists (idempotent; a different configuration is a conflict).
    Create {
        /// Topic name.
        topic: String,
        /// Drop a publish whose id was seen within this window (e.g. `10m`).
        #[arg(long, value_parser = crate::duration::parse)]
        dedup_window: Option<std::time::Duration>,
        /// Deliver messages sharing an ordering key in publish order (FIFO on SQS).
        #[arg(long)]
        ordered: bool,
    },
    /// Ensures a subscription of a topic exists.
    Subscribe {
        /// Topic name.
        topic: String,
        /// Subscription name.
        subscription: String,
        /// Routing-key filter (`eu.*`, `orders.#`).
        #[arg(long)]
        filter: Option<String>,
        /// Start with every message the topic retains instead of new ones.
        #[arg(long)]
        from_beginning: bool,
        /// Attempts before a message is dead-lettered.
        #[arg(long, default_value_t = sluice::config::DEFAULT_MAX_ATTEMPTS)]
        max_attempts: u32,
    },
    /// Deletes a topic and its subscriptions.
    Delete {
        /// Topic name.
        topic: String,
    },
}

pub(crate) async fn run(args: TopicsArgs) -> anyhow::Result<()> {
    let target = &args.target;
    let backend = target.connect().await?;
    match args.action {
        None => list(target, &backend).await,
        Some(TopicsAction::Create {
            topic,
            dedup_window,
            ordered,
        }) => {
            let name = TopicName::new(&topic)?;
            let mut config = TopicConfig::default().ordered(ordered);
            if let Some(window) = dedup_window {
                config = config.dedup_window(window);
            }
            backend
                .ensure_topic(&name, &config)
                .await
                .with_context(|| target.failed(format!("creating topic `{topic}`")))?;
            println!("topic `{topic}` exists");
            Ok(())
        }
        Some(TopicsAction::Subscribe {
            topic,
            subscription,
            filter,
            from_beginning,
            max_attempts,
        }) => {
            let mut config =
                SubscriptionConfig::new(TopicName::new(&topic)?).max_attempts(max_attempts);
            if let Some(filter) = filter {
                config = config.filter(Filter::new(filter)?);
            }
            if from_beginning {
                config = config.start(StartPosition::Earliest);
            }
            backend
                .ensure_subscription(&SubscriptionName::new(&subscription)?, &config)
                .await
                .with_context(|| {
                    target.failed(format!("creating subscription `{subscription}`"))
                })?;
            println!("subscription `{subscription}` of `{topic}` exists");
            Ok(())
        }
        Some(TopicsAction::Delete { topic }) => {
            backend
                .delete_topic(&TopicName::new(&topic)?)
                .await
                .with_context(|| target.failed(format!("deleting topic `{topic}`")))?;
            println!("topic `{topic}` deleted");
            Ok(())
        }
    }
}

async fn list(target: &Target, backend: &sluice::DynBackend) -> anyhow::Result<()> {
    let topics = backend
        .list_topics()
        .await
        .with_context(|| target.failed("listing topics"))?;
    if target.json {
        let json: Vec<_> = topics
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name.as_str(),
                    "subscriptions": t.subscriptions.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                    "dedup_window_ms": t.config.dedup_window.map(|d| d.as_millis() as u64),
                    "ordered": t.config.ordered,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = topics
        .iter()
        .map(|t| {
            vec![
                t.name.to_string(),
                t.subscriptions
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                t.config
                    .dedup_window
                    .map_or_else(|| "–".into(), |d| humantime::format_duration(d).to_string()),
            ]
        })
        .collect();
    table::print(&["TOPIC", "SUBSCRIPTIONS", "DEDUP WINDOW"], &rows);
    Ok(())
}
