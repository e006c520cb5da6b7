//! The Redis Streams peer for `--peer redis://HOST:PORT`: the same workload as
//! [`super::workload`] written directly on the `redis` crate, with no Sluice code in the
//! loop — a fresh stream key, producers sending each batch as one pipeline of `XADD`s whose
//! replies (the entries' IDs) are the batch's confirm, and one consumer group whose
//! consumers each `XREADGROUP` up to a batch (`BLOCK` 50 ms) and `XACK` the batch's IDs in
//! one command.
//!
//! This is an in-memory peer, not a durable one: the Redis on the machines Sluice is
//! measured on keeps nothing on disk (no RDB snapshots, no AOF), so a confirm means the
//! entry is in the server's memory. Read it as the ceiling of a broker that never touches
//! the disk. Each producer and each consumer has a connection of its own (a blocking
//! `XREADGROUP` holds its connection).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands as _, AsyncConnectionConfig, Client};

use super::workload::{histogram, merged, share, timed_batches, BackendResult};
use super::BenchArgs;

const HEADER: &str = "bench-t";

/// The stream field that holds the payload.
const PAYLOAD: &str = "payload";

/// The one consumer group every consumer reads in.
const GROUP: &str = "bench";

/// How long one `XREADGROUP` blocks when the stream has nothing new.
const BLOCK_MS: usize = 50;

/// Runs the workload on the `redis` crate against the server at `url`
/// (`redis://HOST:PORT`). The stream key (and with it the group) is deleted at the end,
/// whether the run succeeded or not.
pub(crate) async fn run(url: &str, args: &BenchArgs) -> anyhow::Result<BackendResult> {
    let client = Client::open(url).with_context(|| format!("{url} is not a Redis URL"))?;
    let mut admin = connect(&client, url).await?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let key = format!("sluice-bench-raw-{nanos:08x}");
    let created: redis::RedisResult<()> = admin.xgroup_create_mkstream(&key, GROUP, "$").await;
    created.with_context(|| format!("creating the stream {key} and its consumer group"))?;
    let outcome = measure(&client, url, &key, args).await;
    let _: redis::RedisResult<usize> = admin.del(&key).await;
    let (total, publish, end_to_end, seconds) = outcome?;
    Ok(BackendResult::new(
        "Redis Streams (memory only)".to_owned(),
        "redis-streams".to_owned(),
        (total, args.size, seconds),
        &publish,
        &end_to_end,
    ))
}

/// A connection of its own; replies may take longer than the crate's 500 ms default while
/// the server is saturated.
async fn connect(client: &Client, url: &str) -> anyhow::Result<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("connecting to Redis at {url}"))
}

/// Connects the producers and consumers, runs the warm-up and then the measured round.
/// Returns the messages measured, the publish and end-to-end latencies and the seconds.
async fn measure(
    client: &Client,
    url: &str,
    key: &str,
    args: &BenchArgs,
) -> anyhow::Result<(u64, Histogram<u64>, Histogram<u64>, f64)> {
    let mut producers = Vec::new();
    for _ in 0..args.producers.max(1) {
        producers.push(connect(client, url).await?);
    }
    let mut consumers = Vec::new();
    for _ in 0..args.consumers.max(1) {
        consumers.push(connect(client, url).await?);
    }
    let clients = (producers.as_slice(), consumers.as_slice(), key);
    let origin = Instant::now();
    let warmup = (args.messages / 10).max(args.batch as u64);
    round(clients, args, warmup, origin).await?;
    let total = args.messages;
    let (publish, end_to_end, seconds) = round(clients, args, total, origin).await?;
    Ok((total, publish, end_to_end, seconds))
}

type Clients<'a> = (
    &'a [MultiplexedConnection],
    &'a [MultiplexedConnection],
    &'a str,
);

/// Publishes `total` messages and waits until all are acked. Returns the publish and
/// end-to-end latency histograms and the round's seconds.
async fn round(
    (producers, consumers, key): Clients<'_>,
    args: &BenchArgs,
    total: u64,
    origin: Instant,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>, f64)> {
    let started = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (c, connection) in consumers.iter().enumerate() {
        let (connection, key, acked) = (connection.clone(), key.to_owned(), Arc::clone(&acked));
        let name = format!("consumer-{c}");
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            consume(connection, (&key, &name), batch, total, acked, origin).await
        }));
    }
    let payload = Bytes::from(vec![b'x'; args.size]);
    let producer_count = producers.len() as u64;
    let mut publishers = Vec::new();
    for (p, connection) in (0..producer_count).zip(producers) {
        let share = share(total, producer_count, p);
        let (connection, key, payload, batch) = (
            connection.clone(),
            key.to_owned(),
            payload.clone(),
            args.batch,
        );
        publishers.push(tokio::spawn(async move {
            timed_batches(share, batch, origin, |n, t: String| {
                let (mut connection, key, payload) =
                    (connection.clone(), key.clone(), payload.clone());
                async move {
                    let mut pipeline = redis::pipe();
                    let fields: [(&str, &[u8]); 2] = [(HEADER, t.as_bytes()), (PAYLOAD, &payload)];
                    for _ in 0..n {
                        pipeline.xadd(&key, "*", &fields);
                    }
                    let ids: Vec<String> = pipeline.query_async(&mut connection).await?;
                    anyhow::ensure!(
                        ids.len() as u64 == n,
                        "Redis confirmed {} of {n} XADDs",
                        ids.len()
                    );
                    Ok(())
                }
            })
            .await
        }));
    }
    let publish = merged(publishers).await?;
    let end_to_end = merged(tasks).await?;
    Ok((publish, end_to_end, started.elapsed().as_secs_f64()))
}

/// One consumer of the group: reads up to `batch` new entries at a time and acks them in one
/// `XACK`, until `total` messages are acked in all.
async fn consume(
    mut connection: MultiplexedConnection,
    (key, name): (&str, &str),
    batch: usize,
    total: u64,
    acked: Arc<AtomicU64>,
    origin: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = histogram();
    let options = StreamReadOptions::default()
        .group(GROUP, name)
        .count(batch)
        .block(BLOCK_MS);
    while acked.load(Ordering::Relaxed) < total {
        let reply: Option<StreamReadReply> =
            connection.xread_options(&[key], &[">"], &options).await?;
        let entries = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .collect::<Vec<_>>();
        if entries.is_empty() {
            continue;
        }
        let now = origin.elapsed().as_micros() as u64;
        for entry in &entries {
            let sent = entry
                .get::<String>(HEADER)
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(t) = sent {
                latency.record(now.saturating_sub(t))?;
            }
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let _: usize = connection.xack(key, GROUP, &ids).await?;
        acked.fetch_add(entries.len() as u64, Ordering::Relaxed);
    }
    Ok(latency)
}
