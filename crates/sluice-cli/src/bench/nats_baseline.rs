//! The NATS JetStream peer for `--peer nats://HOST:PORT`: the same workload as
//! [`super::workload`] written directly on `async-nats`, with no Sluice code in the loop — a
//! stream with file storage and one replica on a fresh subject, producers publishing
//! batches whose JetStream publish acks are all awaited once the batch is sent, and one
//! durable pull consumer with explicit acks shared by the consumer tasks, each pulling
//! batches of up to `--batch` messages and acking every message.
//!
//! Each consumer task pulls through the client's pull stream (`Consumer::stream`), which asks
//! for the next batch while the current one is being acked; pulling one batch at a time
//! (`Consumer::batch`, a pull request and a fresh inbox per batch) measured 10-20 % slower
//! here, and the peer should be measured at its best. The pull streams live through both
//! rounds, as Sluice's subscribers do.
//!
//! JetStream's file store does not fsync before it acks a publish (the server syncs on a
//! timer, every two minutes by default): a confirm survives the server process dying, not
//! the machine. Each producer and each consumer has a connection of its own, as separate
//! services would.

use std::future::IntoFuture as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, Context};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::future::join_all;
use futures::StreamExt;
use hdrhistogram::Histogram;

use super::workload::{histogram, merged, share, timed_batches, BackendResult};
use super::BenchArgs;

const HEADER: &str = "bench-t";

/// Runs the workload on `async-nats` against the JetStream server at `url`
/// (`nats://HOST:PORT`). The stream (and with it the consumer) is deleted at the end,
/// whether the run succeeded or not.
pub(crate) async fn run(url: &str, args: &BenchArgs) -> anyhow::Result<BackendResult> {
    let admin = jetstream::new(connect(url).await?);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // Stream names may not hold `.`; the subject is the same word, so it is fresh too.
    let name = format!("sluice-bench-raw-{nanos:08x}");
    let stream = admin
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![name.clone()],
            storage: StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating the JetStream stream {name} (is JetStream on?)"))?;
    let outcome = async {
        // Room for every consumer's pull in flight; the server's default is 1000.
        let max_ack_pending = (args.batch * args.consumers.max(1) * 4).max(1000);
        stream
            .create_consumer(pull::Config {
                durable_name: Some(name.clone()),
                ack_policy: AckPolicy::Explicit,
                max_ack_pending: i64::try_from(max_ack_pending).unwrap_or(i64::MAX),
                ..Default::default()
            })
            .await?;
        measure(url, &name, args).await
    }
    .await;
    let _ = admin.delete_stream(&name).await;
    let (total, publish, end_to_end, seconds) = outcome?;
    Ok(BackendResult::new(
        "NATS JetStream (file, R1)".to_owned(),
        "nats-jetstream".to_owned(),
        (total, args.size, seconds),
        &publish,
        &end_to_end,
    ))
}

async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
}

/// Connects the producers and consumers, runs the warm-up and then the measured round.
/// Returns the messages measured, the publish and end-to-end latencies and the seconds.
async fn measure(
    url: &str,
    name: &str,
    args: &BenchArgs,
) -> anyhow::Result<(u64, Histogram<u64>, Histogram<u64>, f64)> {
    let mut producers = Vec::new();
    for _ in 0..args.producers.max(1) {
        producers.push(jetstream::new(connect(url).await?));
    }
    let mut pulls = Vec::new();
    for _ in 0..args.consumers.max(1) {
        let context = jetstream::new(connect(url).await?);
        let consumer: PullConsumer = context.get_consumer_from_stream(name, name).await?;
        pulls.push(
            consumer
                .stream()
                .max_messages_per_batch(args.batch)
                .messages()
                .await?,
        );
    }
    let origin = Instant::now();
    let warmup = (args.messages / 10).max(args.batch as u64);
    let (_, _, _, pulls) = round(&producers, pulls, name, args, warmup, origin).await?;
    let total = args.messages;
    let (publish, end_to_end, seconds, _) =
        round(&producers, pulls, name, args, total, origin).await?;
    Ok((total, publish, end_to_end, seconds))
}

/// Publishes `total` messages and waits until all are acked. Returns the publish and
/// end-to-end latency histograms, the round's seconds and the pull streams, for the next
/// round.
async fn round(
    producers: &[Context],
    consumers: Vec<pull::Stream>,
    subject: &str,
    args: &BenchArgs,
    total: u64,
    origin: Instant,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>, f64, Vec<pull::Stream>)> {
    let started = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for consumer in consumers {
        let acked = Arc::clone(&acked);
        tasks.push(tokio::spawn(consume(consumer, total, acked, origin)));
    }
    let payload = Bytes::from(vec![b'x'; args.size]);
    let producer_count = producers.len() as u64;
    let mut publishers = Vec::new();
    for (p, context) in (0..producer_count).zip(producers) {
        let share = share(total, producer_count, p);
        let (context, subject, payload, batch) = (
            context.clone(),
            async_nats::Subject::from(subject),
            payload.clone(),
            args.batch,
        );
        publishers.push(tokio::spawn(async move {
            timed_batches(share, batch, origin, |n, t: String| {
                let (context, subject, payload) =
                    (context.clone(), subject.clone(), payload.clone());
                async move {
                    let mut headers = HeaderMap::new();
                    headers.insert(HEADER, t.as_str());
                    let mut acks = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        let ack = context
                            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                            .await?;
                        acks.push(ack.into_future());
                    }
                    for ack in join_all(acks).await {
                        ack?;
                    }
                    Ok(())
                }
            })
            .await
        }));
    }
    let publish = merged(publishers).await?;
    let mut end_to_end = histogram();
    let mut streams = Vec::new();
    for task in tasks {
        let (latency, stream) = task.await??;
        end_to_end.add(latency)?;
        streams.push(stream);
    }
    Ok((
        publish,
        end_to_end,
        started.elapsed().as_secs_f64(),
        streams,
    ))
}

/// One consumer task: takes messages from its pull stream and acks each one until `total`
/// messages are acked in all; hands the stream back for the next round.
async fn consume(
    mut messages: pull::Stream,
    total: u64,
    acked: Arc<AtomicU64>,
    origin: Instant,
) -> anyhow::Result<(Histogram<u64>, pull::Stream)> {
    let mut latency = histogram();
    while acked.load(Ordering::Relaxed) < total {
        let next = tokio::time::timeout(Duration::from_millis(50), messages.next()).await;
        let Ok(Some(message)) = next else { continue };
        let message = message?;
        let now = origin.elapsed().as_micros() as u64;
        let sent = message
            .headers
            .as_ref()
            .and_then(|h| h.get(HEADER))
            .and_then(|t| t.as_str().parse::<u64>().ok());
        if let Some(t) = sent {
            latency.record(now.saturating_sub(t))?;
        }
        message.ack().await.map_err(anyhow::Error::from_boxed)?;
        acked.fetch_add(1, Ordering::Relaxed);
    }
    Ok((latency, messages))
}
