//! `sluice topics`: list topics; `sluice topics create NAME` and `sluice topics subscribe`
//! make the objects the other commands work on (every setting of `TopicConfig` and
//! `SubscriptionConfig` has its flag), `delete` and `unsubscribe` remove them.

use std::time::Duration;

use anyhow::Context;
use sluice::config::{BacklogBound, Overflow};
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
        dedup_window: Option<Duration>,
        /// Deliver messages sharing an ordering key in publish order (FIFO on SQS).
        #[arg(long)]
        ordered: bool,
        /// Most messages waiting for the slowest subscription (a backlog bound).
        #[arg(long)]
        max_backlog: Option<u64>,
        /// Most bytes waiting for the slowest subscription (a backlog bound).
        #[arg(long)]
        max_backlog_bytes: Option<u64>,
        /// With a backlog bound: a publish past it waits this long for room, then fails
        /// (default: it fails at once).
        #[arg(long, value_parser = crate::duration::parse)]
        block: Option<Duration>,
    },
    /// Ensures a subscription of a topic exists (idempotent; a different configuration is a
    /// conflict, except the prefetch, which is updated).
    Subscribe {
        /// Topic name.
        topic: String,
        /// Subscription name.
        subscription: String,
        /// Routing-key filter (`eu.*`, `orders.#`).
        #[arg(long)]
        filter: Option<String>,
        /// Start with every message the topic retains instead of new ones.
        #[arg(long, conflicts_with = "from")]
        from_beginning: bool,
        /// Start with the messages published at or after this time (RFC 3339, e.g.
        /// `2026-12-06T09:00:00Z`).
        #[arg(long, value_parser = parse_time)]
        from: Option<std::time::SystemTime>,
        /// Attempts before a message is dead-lettered.
        #[arg(long, default_value_t = sluice::config::DEFAULT_MAX_ATTEMPTS)]
        max_attempts: u32,
        /// How long a delivery is reserved before it is delivered again (e.g. `30s`).
        #[arg(long, value_parser = crate::duration::parse)]
        lease: Option<Duration>,
        /// Deliveries one subscriber may hold unsettled.
        #[arg(long)]
        prefetch: Option<u32>,
        /// No dead-letter queue: a message dead-lettered is logged and dropped.
        #[arg(long)]
        no_dlq: bool,
    },
    /// Deletes a topic and its subscriptions.
    Delete {
        /// Topic name.
        topic: String,
    },
    /// Deletes a subscription (its messages, retries and dead-letter queue); the topic and
    /// its other subscriptions stay.
    Unsubscribe {
        /// Subscription name.
        subscription: String,
    },
}

fn parse_time(text: &str) -> Result<std::time::SystemTime, String> {
    humantime::parse_rfc3339_weak(text)
        .map_err(|err| format!("`{text}` is not an RFC 3339 time ({err})"))
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
            max_backlog,
            max_backlog_bytes,
            block,
        }) => {
            let name = TopicName::new(&topic)?;
            let mut config = TopicConfig::default().ordered(ordered);
            if let Some(window) = dedup_window {
                config = config.dedup_window(window);
            }
            if max_backlog.is_some() || max_backlog_bytes.is_some() {
                let overflow = match block {
                    Some(timeout) => Overflow::Block { timeout },
                    None => Overflow::Reject,
                };
                let mut bound = BacklogBound::new(overflow);
                if let Some(max) = max_backlog {
                    bound = bound.max_messages(max);
                }
                if let Some(max) = max_backlog_bytes {
                    bound = bound.max_bytes(max);
                }
                config = config.backlog_bound(bound);
            } else if block.is_some() {
                anyhow::bail!(
                    "--block needs a backlog bound: --max-backlog or --max-backlog-bytes"
                );
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
            from,
            max_attempts,
            lease,
            prefetch,
            no_dlq,
        }) => {
            let mut config = SubscriptionConfig::new(TopicName::new(&topic)?)
                .max_attempts(max_attempts)
                .dead_letter_queue(!no_dlq);
            if let Some(filter) = filter {
                config = config.filter(Filter::new(filter)?);
            }
            if from_beginning {
                config = config.start(StartPosition::Earliest);
            }
            if let Some(at) = from {
                config = config.start(StartPosition::At(at));
            }
            if let Some(lease) = lease {
                config = config.lease(lease);
            }
            if let Some(prefetch) = prefetch {
                config = config.prefetch(prefetch);
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
        Some(TopicsAction::Unsubscribe { subscription }) => {
            backend
                .delete_subscription(&SubscriptionName::new(&subscription)?)
                .await
                .with_context(|| {
                    target.failed(format!("deleting subscription `{subscription}`"))
                })?;
            println!("subscription `{subscription}` deleted");
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
