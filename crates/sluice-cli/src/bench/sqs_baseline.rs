//! The raw AWS SDK baseline for `sqs://` URLs: the same workload as [`super::workload`]
//! written directly on `aws-sdk-sns` / `aws-sdk-sqs` with the client settings Sluice uses
//! (`sluice_sqs::sdk_config`) — a standard SNS topic, an SQS queue subscribed with raw
//! delivery, `PublishBatch` calls of ten, and per consumer one loop of long-polling
//! `ReceiveMessage` (ten at a time) and `DeleteMessageBatch`. What Sluice adds on top (its
//! wire mapping, receivers and credit, batched verbs, the catalog) is the difference.
//! Against an emulator this measures the client side and the emulator, not AWS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName};
use hdrhistogram::Histogram;

use super::workload::{histogram, merged, share, timed_batches, BackendResult};
use super::BenchArgs;

const HEADER: &str = "bench-t";

/// Runs the workload on the raw SDK against the SQS + SNS of `url` (an `sqs://` URL).
pub(crate) async fn run(url: &str, args: &BenchArgs) -> anyhow::Result<BackendResult> {
    let (region, endpoint) = match sluice::BackendUrl::parse(url)?.kind {
        sluice::BackendKind::Sqs { region, endpoint } => (region, endpoint),
        _ => anyhow::bail!("{url} is not an sqs:// URL"),
    };
    let options = sluice::sqs::SqsOptions::new(region).endpoint(endpoint);
    let config = sluice::sqs::sdk_config(&options).await;
    let (sns, sqs) = (
        aws_sdk_sns::Client::new(&config),
        aws_sdk_sqs::Client::new(&config),
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!("bench-raw-{nanos:08x}");
    let topic = sns.create_topic().name(&name).send().await?;
    let topic_arn = topic.topic_arn().unwrap_or_default().to_owned();
    let queue = sqs.create_queue().queue_name(&name).send().await?;
    let queue_url = queue.queue_url().unwrap_or_default().to_owned();
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await?;
    let queue_arn = attributes
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .unwrap_or_default();
    sns.subscribe()
        .topic_arn(&topic_arn)
        .protocol("sqs")
        .endpoint(&queue_arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await?;

    let origin = Instant::now();
    let clients = (&sns, &sqs, topic_arn.as_str(), queue_url.as_str());
    let warmup = (args.messages / 10).max(args.batch as u64);
    round(clients, args, warmup, origin).await?;
    let total = args.messages;
    let (publish, end_to_end, seconds) = round(clients, args, total, origin).await?;

    let _ = sqs.delete_queue().queue_url(&queue_url).send().await;
    let _ = sns.delete_topic().topic_arn(&topic_arn).send().await;
    Ok(BackendResult::new(
        "raw aws-sdk (same endpoint)".to_owned(),
        "aws-sdk".to_owned(),
        (total, args.size, seconds),
        &publish,
        &end_to_end,
    ))
}

type Clients<'a> = (
    &'a aws_sdk_sns::Client,
    &'a aws_sdk_sqs::Client,
    &'a str,
    &'a str,
);

async fn round(
    (sns, sqs, topic_arn, queue_url): Clients<'_>,
    args: &BenchArgs,
    total: u64,
    origin: Instant,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>, f64)> {
    let started = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for _ in 0..args.consumers.max(1) {
        let (sqs, url, acked) = (sqs.clone(), queue_url.to_owned(), Arc::clone(&acked));
        consumers.push(tokio::spawn(consume(sqs, url, total, acked, origin)));
    }
    let payload = "x".repeat(args.size);
    let producer_count = args.producers.max(1) as u64;
    let mut producers = Vec::new();
    for p in 0..producer_count {
        let share = share(total, producer_count, p);
        let (sns, arn, payload, batch) = (
            sns.clone(),
            topic_arn.to_owned(),
            payload.clone(),
            args.batch,
        );
        producers.push(tokio::spawn(async move {
            timed_batches(share, batch, origin, |n, t: String| {
                let (sns, arn, payload) = (sns.clone(), arn.clone(), payload.clone());
                async move {
                    let mut calls = Vec::new();
                    let mut left = n;
                    while left > 0 {
                        let chunk = left.min(10);
                        let entries = (0..chunk)
                            .map(|i| {
                                let stamp = MessageAttributeValue::builder()
                                    .data_type("Number")
                                    .string_value(&t)
                                    .build()
                                    .expect("data type is set");
                                PublishBatchRequestEntry::builder()
                                    .id(i.to_string())
                                    .message(&payload)
                                    .message_attributes(HEADER, stamp)
                                    .build()
                                    .expect("id and message are set")
                            })
                            .collect();
                        calls.push(
                            sns.publish_batch()
                                .topic_arn(&arn)
                                .set_publish_batch_request_entries(Some(entries))
                                .send(),
                        );
                        left -= chunk;
                    }
                    for out in futures::future::join_all(calls).await {
                        anyhow::ensure!(out?.failed().is_empty(), "SNS refused a publish");
                    }
                    Ok(())
                }
            })
            .await
        }));
    }
    let publish = merged(producers).await?;
    let end_to_end = merged(consumers).await?;
    Ok((publish, end_to_end, started.elapsed().as_secs_f64()))
}

async fn consume(
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    total: u64,
    acked: Arc<AtomicU64>,
    origin: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = histogram();
    while acked.load(Ordering::Relaxed) < total {
        let out = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names(HEADER)
            .send()
            .await?;
        let now = origin.elapsed().as_micros() as u64;
        let mut entries = Vec::new();
        for (i, message) in out.messages().iter().enumerate() {
            let sent = message
                .message_attributes()
                .and_then(|a| a.get(HEADER))
                .and_then(|v| v.string_value()?.parse::<u64>().ok());
            if let Some(t) = sent {
                latency.record(now.saturating_sub(t))?;
            }
            entries.push(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(message.receipt_handle().unwrap_or_default())
                    .build()?,
            );
        }
        if entries.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let count = entries.len() as u64;
        sqs.delete_message_batch()
            .queue_url(&queue_url)
            .set_entries(Some(entries))
            .send()
            .await?;
        acked.fetch_add(count, Ordering::Relaxed);
    }
    Ok(latency)
}
