//! `sluice publish TOPIC [DATA]`: one message from the argument, or one per line of
//! `--file F` or standard input, published with confirms in batches.
//!
//! Every line is checked (size, id, delay) before the first is published, so a bad line
//! publishes nothing; a publish the backend refuses midway names exactly which lines were
//! published and which were not. An empty payload is a message like any other: `''` and an
//! empty line each publish one.

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
    /// The payload of one message (omit it to read one message per line of --file or stdin;
    /// `''` publishes an empty message).
    data: Option<String>,
    /// Read one message per line of this file (an empty line is an empty message).
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
    /// Content type of the payload (e.g. `application/json`).
    #[arg(long)]
    content_type: Option<String>,
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
        if let Some(content_type) = &self.content_type {
            builder = builder.content_type(content_type.clone());
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

/// Lines `first..=last` (1-based) as text: `3`, `3-7`.
fn span(first: usize, last: usize) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

/// Sorted line numbers as ranges: `1-4, 6, 9-12` (`none` when empty).
fn ranges(lines: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = lines.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last = iter.next().unwrap_or(last);
        }
        out.push(span(first, last));
    }
    if out.is_empty() {
        "none".to_owned()
    } else {
        out.join(", ")
    }
}

/// The messages to publish, every one checked against the backend's size limit first: one
/// from DATA, or one per line of the file or standard input.
fn read_messages(args: &PublishArgs, max_size: usize) -> anyhow::Result<Vec<Message>> {
    let lines: Vec<String> = match (&args.data, &args.file) {
        (Some(data), _) => vec![data.clone()],
        (None, Some(path)) => std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        )
        .lines()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", path.display()))?,
        (None, None) if std::io::stdin().is_terminal() => {
            anyhow::bail!(
                "nothing to publish: give DATA, --file F, or pipe lines into standard input"
            )
        }
        (None, None) => std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<_, _>>()
            .context("reading standard input")?,
    };
    if lines.is_empty() {
        anyhow::bail!("nothing to publish: the input has no lines");
    }
    let one = args.data.is_some();
    lines
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            let checked = args.message(line).and_then(|message| {
                message.check_size(max_size)?;
                Ok(message)
            });
            checked.with_context(|| {
                if one {
                    "the message was not published".to_owned()
                } else {
                    format!("line {} is not publishable; nothing was published", i + 1)
                }
            })
        })
        .collect()
}

pub(crate) async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let target = &args.target;
    let topic = TopicName::new(&args.topic)?;
    let backend = target.connect().await?;
    let messages = read_messages(&args, backend.capabilities().max_message_size)?;
    let total = messages.len();
    let publisher = backend
        .publisher()
        .await
        .with_context(|| target.failed("opening a publisher"))?;
    let progress = if args.data.is_none() && !target.json {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {pos}/{len} published ({per_sec})")
                .expect("template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    let (mut published, mut duplicates, mut ids) = (0u64, 0u64, Vec::new());
    // Lines (1-based) whose publish was confirmed, and the first refusal.
    let mut done: Vec<usize> = Vec::with_capacity(total);
    let mut failed: Option<(usize, sluice::Error)> = None;
    let mut messages = messages.into_iter();
    let mut line = 0usize;
    while failed.is_none() {
        let batch: Vec<Message> = messages.by_ref().take(BATCH).collect();
        if batch.is_empty() {
            break;
        }
        // Every result of the batch is looked at, also after a refusal: a later message of
        // the batch may have been published all the same.
        for result in publisher.publish_batch(&topic, batch).await {
            line += 1;
            match result {
                Ok(receipt) => {
                    match receipt.outcome {
                        PublishOutcome::Published => published += 1,
                        PublishOutcome::Duplicate => duplicates += 1,
                    }
                    if ids.len() < 1000 {
                        ids.push(receipt.id.to_string());
                    }
                    done.push(line);
                    progress.inc(1);
                }
                Err(err) => {
                    failed.get_or_insert((line, err));
                }
            }
        }
    }
    let closed = publisher.close().await;
    progress.finish_and_clear();
    if let Some((first, err)) = failed {
        let missing: Vec<usize> = (1..=total)
            .filter(|l| done.binary_search(l).is_err())
            .collect();
        if args.data.is_some() {
            return Err(err)
                .with_context(|| target.failed(format!("publishing to `{}`", args.topic)));
        }
        return Err(err).with_context(|| {
            target.failed(format!(
                "publishing line {first} to `{}` (published: lines {}; not published: lines {})",
                args.topic,
                ranges(&done),
                ranges(&missing)
            ))
        });
    }
    closed.with_context(|| target.failed("closing the publisher"))?;
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

#[cfg(test)]
mod tests {
    use super::ranges;

    #[test]
    fn line_numbers_print_as_ranges() {
        assert_eq!(ranges(&[]), "none");
        assert_eq!(ranges(&[1, 2, 3, 5, 7, 8]), "1-3, 5, 7-8");
        assert_eq!(ranges(&[4]), "4");
    }
}
