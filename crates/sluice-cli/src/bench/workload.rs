//! The end-to-end workload against one backend: consumers start first, then producers
//! publish with confirms in batches; consumers receive in batches and ack every message.
//! A warm-up of a tenth of the messages runs first and is not measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use hdrhistogram::Histogram;
use sluice::prelude::*;
use sluice::{DynBackend, DynPublisher, DynSubscriber};

use super::BenchArgs;

/// The figures of one backend.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct BackendResult {
    /// The URL measured.
    pub(crate) url: String,
    /// The backend's name.
    pub(crate) backend: String,
    /// Messages measured (after warm-up).
    pub(crate) messages: u64,
    /// Wall time of the measured part, in seconds.
    pub(crate) seconds: f64,
    /// End-to-end throughput (messages acked per second).
    pub(crate) messages_per_sec: f64,
    /// The same in MiB of payload per second.
    pub(crate) mib_per_sec: f64,
    /// Publish-confirm latency of a batch: p50, p99, p99.9 in microseconds.
    pub(crate) publish_us: [u64; 3],
    /// Publish → ack-time latency of a message: p50, p99, p99.9 in microseconds.
    pub(crate) end_to_end_us: [u64; 3],
}

const HEADER: &str = "bench-t";

fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("valid histogram precision")
}

fn percentiles(h: &Histogram<u64>) -> [u64; 3] {
    [
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
    ]
}

pub(crate) async fn run(url: &str, args: &BenchArgs) -> anyhow::Result<BackendResult> {
    let backend = sluice::connect(url).await?;
    let suffix = uuid_suffix();
    let topic = TopicName::new(format!("bench-{suffix}"))?;
    let subscription = SubscriptionName::new(format!("bench-{suffix}"))?;
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await?;
    let config = SubscriptionConfig::new(topic.clone())
        .lease(Duration::from_secs(60))
        .prefetch(u32::try_from(args.batch * 4).unwrap_or(u32::MAX));
    backend.ensure_subscription(&subscription, &config).await?;

    let origin = Instant::now();
    let warmup = (args.messages / 10).max(args.batch as u64);
    round(&backend, &topic, &subscription, args, warmup, origin).await?;
    let started = Instant::now();
    let (publish, end_to_end) =
        round(&backend, &topic, &subscription, args, args.messages, origin).await?;
    let seconds = started.elapsed().as_secs_f64();

    let _ = backend.delete_topic(&topic).await;
    Ok(BackendResult {
        url: url.to_owned(),
        backend: backend.capabilities().backend.to_owned(),
        messages: args.messages,
        seconds,
        messages_per_sec: args.messages as f64 / seconds,
        mib_per_sec: (args.messages as f64 * args.size as f64) / seconds / (1024.0 * 1024.0),
        publish_us: percentiles(&publish),
        end_to_end_us: percentiles(&end_to_end),
    })
}

fn uuid_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:08x}{:04x}", nanos, std::process::id() & 0xffff)
}

/// Publishes `total` messages and waits until all are acked. Returns the publish and
/// end-to-end latency histograms.
async fn round(
    backend: &DynBackend,
    topic: &TopicName,
    subscription: &SubscriptionName,
    args: &BenchArgs,
    total: u64,
    origin: Instant,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let acked = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for _ in 0..args.consumers.max(1) {
        let subscriber = backend.subscribe(subscription).await?;
        consumers.push(tokio::spawn(consume(
            subscriber,
            args.batch,
            total,
            acked.clone(),
            origin,
        )));
    }
    let payload = Bytes::from(vec![b'x'; args.size]);
    let mut producers = Vec::new();
    let producer_count = args.producers.max(1) as u64;
    for p in 0..producer_count {
        let share = total / producer_count + u64::from(p < total % producer_count);
        let publisher = backend.publisher().await?;
        producers.push(tokio::spawn(produce(
            publisher,
            topic.clone(),
            share,
            args.batch,
            payload.clone(),
            origin,
        )));
    }
    let mut publish = histogram();
    for producer in producers {
        publish.add(producer.await??)?;
    }
    let mut end_to_end = histogram();
    for consumer in consumers {
        end_to_end.add(consumer.await??)?;
    }
    Ok((publish, end_to_end))
}

async fn produce(
    publisher: DynPublisher,
    topic: TopicName,
    count: u64,
    batch: usize,
    payload: Bytes,
    origin: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = histogram();
    let mut sent = 0u64;
    while sent < count {
        let n = (count - sent).min(batch as u64);
        let t = origin.elapsed().as_micros().to_string();
        let messages: Vec<Message> = (0..n)
            .map(|_| {
                Message::builder(payload.clone())
                    .header(HEADER, t.clone())
                    .build()
            })
            .collect::<Result<_, _>>()?;
        let began = Instant::now();
        for result in publisher.publish_batch(&topic, messages).await {
            result?;
        }
        latency.record(began.elapsed().as_micros() as u64)?;
        sent += n;
    }
    Ok(latency)
}

async fn consume(
    subscriber: DynSubscriber,
    batch: usize,
    total: u64,
    acked: Arc<AtomicU64>,
    origin: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = histogram();
    while acked.load(Ordering::Relaxed) < total {
        let deliveries = subscriber.receive(batch, Duration::from_millis(50)).await?;
        if deliveries.is_empty() {
            continue;
        }
        let now = origin.elapsed().as_micros() as u64;
        for d in &deliveries {
            if let Some(t) = d
                .message()
                .header(HEADER)
                .and_then(|t| t.parse::<u64>().ok())
            {
                latency.record(now.saturating_sub(t))?;
            }
        }
        let n = deliveries.len() as u64;
        for result in join_all(deliveries.into_iter().map(Delivery::ack)).await {
            result.map_err(|e| e.error)?;
        }
        acked.fetch_add(n, Ordering::Relaxed);
    }
    subscriber.close().await?;
    Ok(latency)
}
