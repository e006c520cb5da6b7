//! `--batch-handler N`: what a batch handler buys a consumer that writes to PostgreSQL.
//!
//! The same backlog of `--messages` is drained twice from the same backend, into the same
//! table: once by a worker whose handler inserts one row per message (one `INSERT` per call,
//! [`DEFAULT_CONCURRENCY`] handlers at once, the way a per-message consumer is written), once
//! by a batch handler that inserts each batch of up to N messages in one statement
//! (`INSERT … SELECT FROM UNNEST`). The clock runs from the worker's start until every
//! message is acked; the report gives both rates and their ratio.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice::runtime::{
    batch_handler, raw_handler, BatchContext, BatchOutcome, CancellationToken, Context,
    HandlerError, Worker, WorkerStats, DEFAULT_CONCURRENCY,
};
use sluice::sql::sqlx::{self, postgres::PgPoolOptions, PgPool};
use sluice::{
    Backend, DynBackend, Message, Publisher, SubscriptionConfig, SubscriptionName, TopicConfig,
    TopicName,
};

use super::BenchArgs;

/// The two drains of one backend.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct BatchHandlerResult {
    /// The backend's URL.
    pub(crate) url: String,
    /// Messages drained by each handler.
    pub(crate) messages: u64,
    /// The batch handler's largest batch.
    pub(crate) batch: usize,
    /// One row per message: messages per second.
    pub(crate) per_message_per_sec: f64,
    /// One statement per batch: messages per second.
    pub(crate) batched_per_sec: f64,
    /// `batched_per_sec / per_message_per_sec`.
    pub(crate) ratio: f64,
    /// The batch handler's mean batch size.
    pub(crate) mean_batch: f64,
}

/// Drains `--messages` twice from `url` into PostgreSQL at `database`.
pub(crate) async fn run(
    url: &str,
    args: &BenchArgs,
    batch: usize,
    database: &str,
) -> anyhow::Result<BatchHandlerResult> {
    let pool = PgPoolOptions::new()
        .max_connections(DEFAULT_CONCURRENCY as u32 + 4)
        .connect(database)
        .await
        .with_context(|| "connecting to PostgreSQL (--database)".to_owned())?;
    let table = format!("sluice_bench_{}", super::workload::uuid_suffix());
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (message_id TEXT NOT NULL, body BYTEA NOT NULL)"
    ))
    .execute(&pool)
    .await
    .context("creating the benchmark's table")?;
    let backend = sluice::connect(url).await?;
    let measured = async {
        let single = drain(&backend, &pool, &table, args, Mode::PerMessage).await?;
        let batched = drain(&backend, &pool, &table, args, Mode::Batch(batch)).await?;
        anyhow::Ok((single, batched))
    }
    .await;
    let _ = sqlx::raw_sql(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await;
    let ((single, _), (batched, mean_batch)) = measured?;
    let rate = |seconds: f64| args.messages as f64 / seconds.max(1e-9);
    Ok(BatchHandlerResult {
        url: url.to_owned(),
        messages: args.messages,
        batch,
        per_message_per_sec: rate(single),
        batched_per_sec: rate(batched),
        ratio: single / batched.max(1e-9),
        mean_batch,
    })
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    PerMessage,
    Batch(usize),
}

/// Publishes the backlog to a topic of its own, then times a worker draining it. Returns
/// the seconds and the mean batch size.
async fn drain(
    backend: &DynBackend,
    pool: &PgPool,
    table: &str,
    args: &BenchArgs,
    mode: Mode,
) -> anyhow::Result<(f64, f64)> {
    let suffix = super::workload::uuid_suffix();
    let topic = TopicName::new(format!("bench-{suffix}"))?;
    let subscription = SubscriptionName::new(format!("bench-{suffix}"))?;
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await?;
    let prefetch = match mode {
        Mode::PerMessage => DEFAULT_CONCURRENCY * 4,
        Mode::Batch(n) => n * 4,
    };
    let config = SubscriptionConfig::new(topic.clone())
        .lease(Duration::from_secs(60))
        .prefetch(u32::try_from(prefetch).unwrap_or(u32::MAX));
    backend.ensure_subscription(&subscription, &config).await?;
    let publisher = backend.publisher().await?;
    let payload = vec![b'x'; args.size];
    let mut sent = 0u64;
    while sent < args.messages {
        let n = (args.messages - sent).min(args.batch.max(1) as u64);
        let messages = (0..n)
            .map(|_| Message::builder(payload.clone()).build())
            .collect::<Result<Vec<_>, _>>()?;
        for receipt in publisher.publish_batch(&topic, messages).await {
            receipt?;
        }
        sent += n;
    }
    let subscriber = backend.subscribe(&subscription).await?;
    let stop = CancellationToken::new();
    let batches = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let (stats, running): (Arc<WorkerStats>, _) = match mode {
        Mode::PerMessage => {
            let (pool, insert) = (pool.clone(), insert_one(table));
            let handler = raw_handler(move |body, ctx: Context| {
                let (pool, insert) = (pool.clone(), insert.clone());
                async move {
                    sqlx::query(&insert)
                        .bind(ctx.id())
                        .bind(body.as_ref())
                        .execute(&pool)
                        .await?;
                    Ok(())
                }
            });
            let worker = Worker::builder(subscriber, handler).build();
            (worker.stats(), worker.spawn(stop.clone()))
        }
        Mode::Batch(n) => {
            let (pool, insert, counted) = (pool.clone(), insert_many(table), batches.clone());
            let handler = batch_handler(move |batch, _ctx: BatchContext| {
                let (pool, insert) = (pool.clone(), insert.clone());
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    let (ids, bodies): (Vec<String>, Vec<Vec<u8>>) = batch
                        .into_iter()
                        .map(|(body, ctx): (bytes::Bytes, Context)| {
                            (ctx.id().to_owned(), body.to_vec())
                        })
                        .unzip();
                    sqlx::query(&insert)
                        .bind(&ids)
                        .bind(&bodies)
                        .execute(&pool)
                        .await
                        .map_err(HandlerError::transient)?;
                    Ok(BatchOutcome::AllOk)
                }
            });
            let worker = Worker::builder(subscriber, handler)
                .batch(n, Duration::from_millis(50))
                .build();
            (worker.stats(), worker.spawn(stop.clone()))
        }
    };
    let deadline = started + Duration::from_secs(600);
    loop {
        let done = stats.snapshot();
        if done.acked >= args.messages {
            break;
        }
        anyhow::ensure!(
            done.dead_lettered == 0,
            "{} messages dead-lettered: the database refused them",
            done.dead_lettered
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "not drained after 10 minutes ({} of {})",
            done.acked,
            args.messages
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    running.await.context("the worker task")?;
    let _ = backend.delete_topic(&topic).await;
    let batches = batches.load(std::sync::atomic::Ordering::Relaxed).max(1);
    Ok((seconds, args.messages as f64 / batches as f64))
}

fn insert_one(table: &str) -> String {
    format!("INSERT INTO {table} (message_id, body) VALUES ($1, $2)")
}

fn insert_many(table: &str) -> String {
    format!("INSERT INTO {table} (message_id, body) SELECT * FROM UNNEST($1::text[], $2::bytea[])")
}
