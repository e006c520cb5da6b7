//! `sluice dlq list|show|redrive|purge SUBSCRIPTION`: the dead-letter queue tools.

use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use sluice::{Backend, DeadLetteredMessage, DynBackend, RedriveOptions, SubscriptionName};

use super::{message_json, table, Target};

/// Arguments of `sluice dlq`.
#[derive(Debug, clap::Args)]
pub(crate) struct DlqArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    action: DlqAction,
}

#[derive(Debug, clap::Subcommand)]
enum DlqAction {
    /// Lists dead-lettered messages with their reason.
    List {
        /// Subscription.
        subscription: String,
        /// Most messages to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Shows one dead-lettered message in full.
    Show {
        /// Subscription.
        subscription: String,
        /// Message id.
        id: String,
    },
    /// Moves dead-lettered messages back to the subscription (attempt 1).
    Redrive {
        /// Subscription.
        subscription: String,
        /// Only these ids (repeatable; default: all).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
        /// Report what would move without moving anything.
        #[arg(long)]
        dry_run: bool,
        /// Pace: at most this many messages per second.
        #[arg(long)]
        rate: Option<u32>,
    },
    /// Deletes every dead-lettered message of the subscription, for good.
    Purge {
        /// Subscription.
        subscription: String,
        /// Confirms the deletion.
        #[arg(long)]
        yes: bool,
    },
}

fn envelope_json(d: &DeadLetteredMessage) -> serde_json::Value {
    let mut json = message_json(&d.message, None);
    if let Some(e) = &d.envelope {
        json["reason"] = e.reason.clone().into();
        json["last_error"] = e.last_error.clone().into();
        json["attempts"] = e.attempts.into();
        json["dead_lettered_at"] = sluice::envelope::format_time(e.dead_lettered_at).into();
    }
    json
}

pub(crate) async fn run(args: DlqArgs) -> anyhow::Result<()> {
    let target = &args.target;
    let backend = target.connect().await?;
    match args.action {
        DlqAction::List {
            subscription,
            limit,
        } => {
            let name = SubscriptionName::new(&subscription)?;
            let messages = backend
                .dlq_list(&name, limit)
                .await
                .with_context(|| target.failed(format!("listing the DLQ of `{subscription}`")))?;
            if target.json {
                let doc: Vec<_> = messages.iter().map(envelope_json).collect();
                println!("{}", serde_json::to_string_pretty(&doc)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = messages
                .iter()
                .map(|d| {
                    let e = d.envelope.as_ref();
                    vec![
                        d.message.id().to_string(),
                        e.map_or_else(String::new, |e| e.reason.clone()),
                        e.map_or_else(String::new, |e| e.attempts.to_string()),
                        e.and_then(|e| e.last_error.clone())
                            .unwrap_or_default()
                            .chars()
                            .take(60)
                            .collect(),
                        e.map_or_else(String::new, |e| {
                            sluice::envelope::format_time(e.dead_lettered_at)
                        }),
                    ]
                })
                .collect();
            table::print(
                &["ID", "REASON", "ATTEMPTS", "LAST ERROR", "DEAD-LETTERED AT"],
                &rows,
            );
            Ok(())
        }
        DlqAction::Show { subscription, id } => {
            let name = SubscriptionName::new(&subscription)?;
            let messages = backend
                .dlq_list(&name, usize::MAX)
                .await
                .with_context(|| target.failed(format!("reading the DLQ of `{subscription}`")))?;
            let found = messages
                .iter()
                .find(|d| d.message.id().as_str() == id)
                .with_context(|| {
                    format!(
                        "no message `{id}` in the DLQ of `{subscription}` on {}",
                        target.url()
                    )
                })?;
            println!("{}", serde_json::to_string_pretty(&envelope_json(found))?);
            Ok(())
        }
        DlqAction::Redrive {
            subscription,
            ids,
            limit,
            dry_run,
            rate,
        } => redrive(target, &backend, &subscription, ids, limit, dry_run, rate).await,
        DlqAction::Purge { subscription, yes } => {
            let name = SubscriptionName::new(&subscription)?;
            if !yes {
                let held = backend
                    .stats(&name)
                    .await
                    .ok()
                    .and_then(|s| s.dead_lettered);
                anyhow::bail!(
                    "purging deletes {} dead-lettered message(s) of `{subscription}` for good; pass --yes to confirm",
                    held.map_or_else(|| "every".into(), |n| n.to_string())
                );
            }
            let purged = backend
                .dlq_purge(&name)
                .await
                .with_context(|| target.failed(format!("purging the DLQ of `{subscription}`")))?;
            if target.json {
                println!("{}", serde_json::json!({ "purged": purged }));
            } else {
                println!("purged {purged} message(s) from the DLQ of {subscription}");
            }
            Ok(())
        }
    }
}

/// Redrives in steps of about a tenth of a second's worth at `rate`, so a progress bar can
/// follow; without a rate, in one step.
async fn redrive(
    target: &Target,
    backend: &DynBackend,
    subscription: &str,
    ids: Vec<String>,
    limit: Option<usize>,
    dry_run: bool,
    rate: Option<u32>,
) -> anyhow::Result<()> {
    let name = SubscriptionName::new(subscription)?;
    let total = match limit {
        Some(l) => Some(l as u64),
        None if ids.is_empty() => backend
            .stats(&name)
            .await
            .ok()
            .and_then(|s| s.dead_lettered),
        None => Some(ids.len() as u64),
    };
    let progress = if target.json || dry_run {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(total.unwrap_or(0));
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} redriven ({per_sec}, eta {eta})")
                .expect("template"),
        );
        bar
    };
    let step = match (rate, dry_run) {
        (Some(r), false) => (r as usize / 10).max(1),
        _ => usize::MAX,
    };
    let mut moved = Vec::new();
    loop {
        let left = limit.map_or(usize::MAX, |l| l - moved.len());
        if left == 0 {
            break;
        }
        let mut options = RedriveOptions::all()
            .ids(ids.clone())
            .dry_run(dry_run)
            .limit(step.min(left));
        if let Some(rate) = rate {
            options = options.rate_per_second(rate);
        }
        let report = backend
            .dlq_redrive(&name, &options)
            .await
            .with_context(|| {
                target.failed(format!(
                    "redriving the DLQ of `{subscription}` ({} moved before the failure)",
                    moved.len()
                ))
            })?;
        let n = report.moved.len();
        progress.inc(n as u64);
        moved.extend(report.moved);
        if n < step || dry_run {
            break;
        }
        tokio::time::sleep(Duration::ZERO).await;
    }
    progress.finish_and_clear();
    if target.json {
        println!(
            "{}",
            serde_json::json!({ "moved": moved, "dry_run": dry_run })
        );
    } else if dry_run {
        println!(
            "dry run: {} message(s) would be redriven: {}",
            moved.len(),
            moved.join(", ")
        );
    } else {
        println!("redrove {} message(s) to {subscription}", moved.len());
    }
    Ok(())
}
