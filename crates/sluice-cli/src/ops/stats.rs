//! `sluice stats [SUBSCRIPTION] [--watch]`: counts per subscription, once or refreshing; with
//! a limiter the workers share (`sluice serve`'s, or `--limiter redis://…`), whether each is
//! paused by an operator and its workers' circuit states.

use std::time::Duration;

use anyhow::Context;
use sluice::{Backend, DynBackend, LimiterStore, SubscriptionName, SubscriptionStats};

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
    /// The limiter the workers share when the backend keeps none (RabbitMQ, SQS, Kafka):
    /// `redis://HOST:PORT`, for the PAUSED and CIRCUITS columns.
    #[arg(long)]
    limiter: Option<String>,
}

struct Line {
    topic: String,
    subscription: String,
    stats: SubscriptionStats,
    /// Paused by an operator (`None`: no limiter to ask).
    paused: Option<bool>,
    /// The circuit states of its workers with a breaker: state → workers.
    circuits: std::collections::BTreeMap<String, u32>,
}

/// Fills in the pause and circuit states from the limiter's flags.
async fn control(lines: &mut [Line], limiter: &dyn LimiterStore) -> sluice::Result<()> {
    let paused = limiter.flags("pause:").await?;
    let circuits = limiter.flags("circuit:").await?;
    for line in lines {
        let flag = sluice::limit::pause_flag(&line.subscription);
        line.paused = Some(paused.iter().any(|(k, _)| *k == flag));
        let prefix = sluice::limit::circuit_flags(&line.subscription);
        for (key, state) in &circuits {
            if key.starts_with(&prefix) {
                *line.circuits.entry(state.clone()).or_default() += 1;
            }
        }
    }
    Ok(())
}

fn circuits(line: &Line) -> String {
    if line.circuits.is_empty() {
        return "–".into();
    }
    line.circuits
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect::<Vec<_>>()
        .join(", ")
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
                paused: None,
                circuits: Default::default(),
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
                    "paused": l.paused,
                    "circuits": l.circuits,
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
                match l.paused {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "–".into(),
                },
                circuits(l),
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
            "PAUSED",
            "CIRCUITS",
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
    let mut limiter = None;
    loop {
        let mut lines = collect(&backend, only)
            .await
            .with_context(|| target.failed("reading stats"))?;
        if limiter.is_none() {
            let any = lines
                .first()
                .and_then(|l| SubscriptionName::new(l.subscription.clone()).ok());
            limiter = super::control::shared_limiter(
                target,
                &backend,
                args.limiter.as_deref(),
                any.as_ref(),
            )
            .await?;
        }
        if let Some(limiter) = &limiter {
            control(&mut lines, limiter.as_ref())
                .await
                .with_context(|| target.failed("reading the pause and circuit flags"))?;
        }
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
