//! `sluice publish TOPIC [DATA]`: one message from the argument, or one per line of
//! `--file F` or standard input, published with confirms in batches.

use std::io::{BufRead, IsTerminal};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use sluice::{Backend, Message, PublishOutcome, Publisher, TopicName};

use super::Target;

/// Messages per publish batch when reading lines.
const BATCH: usize = 256;

/// Arguments of `sluice publish`.
#[derive(Debug, clap::Args)]
pub(crate) struct PublishArgs {
    #[command(flatten)]
    target: Target,
    /// Topic to publish to.
    topic: String,
    /// The payload of one message (omit it to read one message per line of --file or stdin).
    data: Option<String>,
    /// Read one message per line of this file.
    #[arg(long, conflicts_with = "data")]
    file: Option<std::path::PathBuf>,
    /// Routing key (what filters match).
    #[arg(long)]
    key: Option<String>,
    /// Ordering key.
    #[arg(long)]
    ordering_key: Option<String>,
    /// Message id (idempotency key); only with a single message.
    #[arg(long, conflicts_with = "file")]
    id: Option<String>,
    /// Event type.
    #[arg(long = "type")]
    message_type: Option<String>,
    /// A header `name=value` (repeatable).
    #[arg(long = "header", value_parser = header)]
    headers: Vec<(String, String)>,
    /// Deliver no earlier than this from now (e.g. `10s`).
    #[arg(long, value_parser = crate::duration::parse)]
    delay: Option<Duration>,
}

fn header(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("header `{text}` is not NAME=VALUE"))
}

impl PublishArgs {
    fn message(&self, payload: String) -> anyhow::Result<Message> {
        let mut builder = Message::builder(payload);
        if let Some(id) = &self.id {
            builder = builder.id(id.clone());
        }
        if let Some(key) = &self.key {
            builder = builder.routing_key(key.clone());
        }
        if let Some(key) = &self.ordering_key {
            builder = builder.ordering_key(key.clone());
        }
        if let Some(t) = &self.message_type {
            builder = builder.message_type(t.clone());
        }
        for (k, v) in &self.headers {
            builder = builder.header(k.clone(), v.clone());
        }
        if let Some(delay) = self.delay {
            builder = builder.deliver_after(delay);
        }
        Ok(builder.build()?)
    }
}

pub(crate) async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let target = &args.target;
    let topic = TopicName::new(&args.topic)?;
    let backend = target.connect().await?;
    let publisher = backend
        .publisher()
        .await
        .with_context(|| target.failed("opening a publisher"))?;
    let lines: Box<dyn Iterator<Item = std::io::Result<String>>> = match (&args.data, &args.file) {
        (Some(data), _) => Box::new(std::iter::once(Ok(data.clone()))),
        (None, Some(path)) => Box::new(
            std::io::BufReader::new(
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
            )
            .lines(),
        ),
        (None, None) if std::io::stdin().is_terminal() => {
            anyhow::bail!(
                "nothing to publish: give DATA, --file F, or pipe lines into standard input"
            )
        }
        (None, None) => Box::new(std::io::stdin().lock().lines()),
    };
    let progress = if args.data.is_none() && !target.json {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {pos} published ({per_sec})")
                .expect("template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    let (mut published, mut duplicates, mut ids) = (0u64, 0u64, Vec::new());
    let mut batch = Vec::with_capacity(BATCH);
    let mut lines = lines
        .filter(|l| l.as_ref().map_or(true, |l| !l.is_empty()))
        .peekable();
    while lines.peek().is_some() {
        batch.clear();
        for line in lines.by_ref().take(BATCH) {
            batch.push(args.message(line.context("reading the input")?)?);
        }
        let first = published + duplicates;
        for (i, result) in publisher
            .publish_batch(&topic, std::mem::take(&mut batch))
            .await
            .into_iter()
            .enumerate()
        {
            let receipt = result.with_context(|| {
                target.failed(format!(
                    "publishing message {} to `{}` ({published} published before it)",
                    first + i as u64 + 1,
                    args.topic
                ))
            })?;
            match receipt.outcome {
                PublishOutcome::Published => published += 1,
                PublishOutcome::Duplicate => duplicates += 1,
            }
            if ids.len() < 1000 {
                ids.push(receipt.id.to_string());
            }
            progress.inc(1);
        }
    }
    publisher
        .close()
        .await
        .with_context(|| target.failed("closing the publisher"))?;
    progress.finish_and_clear();
    if target.json {
        println!(
            "{}",
            serde_json::json!({ "topic": args.topic, "published": published, "duplicates": duplicates, "ids": ids })
        );
    } else if published + duplicates == 1 {
        if duplicates == 1 {
            println!(
                "{} was a duplicate within the dedup window of {}: not published again",
                ids[0], args.topic
            );
        } else {
            println!("{} published to {}", ids[0], args.topic);
        }
    } else {
        println!(
            "published {published} messages to {} ({duplicates} duplicates dropped)",
            args.topic
        );
    }
    Ok(())
}
