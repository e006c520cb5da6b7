//! `sluice stats [SUBSCRIPTION] [--watch]`: counts per subscription, once or refreshing.

use std::time::Duration;

use anyhow::Context;
use sluice::{Backend, DynBackend, SubscriptionStats};

use super::{table, Target};

/// Arguments of `sluice stats`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    target: Target,
    /// Only this subscription (default: every subscription of every topic).
    subscription: Option<String>,
    /// Refresh until interrupted.
    #[arg(long)]
    watch: bool,
    /// Refresh interval with `--watch`.
    #[arg(long, default_value = "1s", value_parser = crate::duration::parse)]
    interval: Duration,
}

struct Line {
    topic: String,
    subscription: String,
    stats: SubscriptionStats,
}

async fn collect(backend: &DynBackend, only: Option<&str>) -> sluice::Result<Vec<Line>> {
    let mut lines = Vec::new();
    for topic in backend.list_topics().await? {
        for sub in &topic.subscriptions {
            if only.is_some_and(|o| o != sub.as_str()) {
                continue;
            }
            lines.push(Line {
                topic: topic.name.to_string(),
                subscription: sub.to_string(),
                stats: backend.stats(sub).await?,
            });
        }
    }
    Ok(lines)
}

fn age(d: Option<Duration>) -> String {
    d.map_or_else(
        || "–".into(),
        |d| humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string(),
    )
}

fn print(lines: &[Line], json: bool) -> anyhow::Result<()> {
    if json {
        let doc: Vec<_> = lines
            .iter()
            .map(|l| {
                serde_json::json!({
                    "topic": l.topic,
                    "subscription": l.subscription,
                    "ready": l.stats.ready,
                    "in_flight": l.stats.in_flight,
                    "delayed": l.stats.delayed,
                    "unsettled": l.stats.unsettled,
                    "dead_lettered": l.stats.dead_lettered,
                    "oldest_age_ms": l.stats.oldest_age.map(|d| d.as_millis() as u64),
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&doc)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            vec![
                l.topic.clone(),
                l.subscription.clone(),
                table::count(l.stats.ready),
                table::count(l.stats.in_flight),
                table::count(l.stats.delayed),
                table::count(l.stats.unsettled),
                table::count(l.stats.dead_lettered),
                age(l.stats.oldest_age),
            ]
        })
        .collect();
    table::print(
        &[
            "TOPIC",
            "SUBSCRIPTION",
            "READY",
            "IN FLIGHT",
            "DELAYED",
            "UNSETTLED",
            "DEAD-LETTERED",
            "OLDEST",
        ],
        &rows,
    );
    Ok(())
}

pub(crate) async fn run(args: StatsArgs) -> anyhow::Result<()> {
    let target = &args.target;
    let backend = target.connect().await?;
    let only = args.subscription.as_deref();
    if let Some(name) = only {
        // A name that does not exist is an error, not an empty table.
        backend
            .stats(&sluice::SubscriptionName::new(name)?)
            .await
            .with_context(|| target.failed(format!("reading stats of `{name}`")))?;
    }
    loop {
        let lines = collect(&backend, only)
            .await
            .with_context(|| target.failed("reading stats"))?;
        if args.watch && !target.json {
            // Clear the screen and redraw at the top.
            print!(
                "\x1b[2J\x1b[H{}  (every {:?}, Ctrl-C to stop)\n\n",
                target.url(),
                args.interval
            );
        }
        print(&lines, target.json)?;
        if !args.watch {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
