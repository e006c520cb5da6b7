//! The raw rdkafka baseline for `kafka://` URLs: the same workload as [`super::workload`]
//! written directly on rdkafka with the settings Sluice uses — a topic of 3 partitions, one
//! idempotent producer (`acks=all`, 5 ms linger) publishing batches whose records are all
//! queued before their delivery reports are awaited, and one consumer-group member per
//! consumer committing its position every 200 ms. What Sluice adds on top (its wire
//! mapping, per-message leases, ordering keys, the offset tracker, the catalog) is the
//! difference.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

use super::workload::{histogram, merged, share, timed_batches, BackendResult};
use super::BenchArgs;

const HEADER: &str = "bench-t";

/// Runs the workload on raw rdkafka against the brokers of `url` (a `kafka://` URL).
pub(crate) async fn run(url: &str, args: &BenchArgs) -> anyhow::Result<BackendResult> {
    let brokers = match sluice::BackendUrl::parse(url)?.kind {
        sluice::BackendKind::Kafka { brokers } => brokers.join(","),
        _ => anyhow::bail!("{url} is not a kafka:// URL"),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let topic = format!("bench-raw-{nanos:08x}");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    let new = NewTopic::new(&topic, 3, TopicReplication::Fixed(1));
    admin.create_topics([&new], &AdminOptions::new()).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("partitioner", "murmur2_random")
        .create()?;
    let mut consumers = Vec::new();
    for _ in 0..args.consumers.max(1) {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &topic)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("fetch.wait.max.ms", "100")
            .create()?;
        consumer.subscribe(&[&topic])?;
        consumers.push(Arc::new(consumer));
    }

    let origin = Instant::now();
    let warmup = (args.messages / 10).max(args.batch as u64);
    round((&producer, &consumers, &topic), args, warmup, origin).await?;
    let total = args.messages;
    let (publish, end_to_end, seconds) =
        round((&producer, &consumers, &topic), args, total, origin).await?;
    drop(consumers);
    let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
    Ok(BackendResult::new(
        "raw rdkafka (same brokers)".to_owned(),
        "rdkafka".to_owned(),
        (total, args.size, seconds),
        &publish,
        &end_to_end,
    ))
}

type Clients<'a> = (&'a FutureProducer, &'a [Arc<StreamConsumer>], &'a str);

async fn round(
    (producer, consumers, topic): Clients<'_>,
    args: &BenchArgs,
    total: u64,
    origin: Instant,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>, f64)> {
    let started = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for consumer in consumers {
        let (consumer, acked) = (Arc::clone(consumer), Arc::clone(&acked));
        tasks.push(tokio::spawn(consume(consumer, total, acked, origin)));
    }
    let payload = bytes::Bytes::from(vec![b'x'; args.size]);
    let producer_count = args.producers.max(1) as u64;
    let mut producers = Vec::new();
    for p in 0..producer_count {
        let share = share(total, producer_count, p);
        let (producer, topic, payload, batch) = (
            producer.clone(),
            topic.to_owned(),
            payload.clone(),
            args.batch,
        );
        producers.push(tokio::spawn(async move {
            timed_batches(share, batch, origin, |n, t: String| {
                let (producer, topic, payload) = (producer.clone(), topic.clone(), payload.clone());
                async move {
                    let sends = (0..n).map(|_| {
                        let headers = OwnedHeaders::new().insert(Header {
                            key: HEADER,
                            value: Some(t.as_bytes()),
                        });
                        let record = FutureRecord::<(), _>::to(&topic)
                            .payload(payload.as_ref())
                            .headers(headers);
                        producer.send(record, Duration::from_secs(10))
                    });
                    for out in futures::future::join_all(sends).await {
                        out.map_err(|(e, _)| e)?;
                    }
                    Ok(())
                }
            })
            .await
        }));
    }
    let publish = merged(producers).await?;
    let end_to_end = merged(tasks).await?;
    Ok((publish, end_to_end, started.elapsed().as_secs_f64()))
}

async fn consume(
    consumer: Arc<StreamConsumer>,
    total: u64,
    acked: Arc<AtomicU64>,
    origin: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = histogram();
    let mut last_commit = Instant::now();
    while acked.load(Ordering::Relaxed) < total {
        let record = match tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await {
            Ok(record) => record?,
            Err(_) => continue,
        };
        let now = origin.elapsed().as_micros() as u64;
        let sent = record
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == HEADER))
            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse::<u64>().ok());
        if let Some(t) = sent {
            latency.record(now.saturating_sub(t))?;
        }
        consumer.store_offset_from_message(&record)?;
        acked.fetch_add(1, Ordering::Relaxed);
        if last_commit.elapsed() >= Duration::from_millis(200) {
            let _ = consumer.commit_consumer_state(CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    let _ = consumer.commit_consumer_state(CommitMode::Async);
    Ok(latency)
}
