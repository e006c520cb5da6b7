//! Sensor readings written to a database a batch at a time: a batch handler gets up to 200
//! readings in one call and inserts them with one statement, in one transaction that also
//! records each reading's id in the transactional inbox. A reading published twice is written
//! once; a reading the database refuses (a negative value here) is dead-lettered with its
//! reason while the rest of its batch is written.
//!
//! `cargo run -p sluice-examples --example batch_insert` (SQLite in a temporary directory;
//! the same code runs on PostgreSQL with `Inbox<Postgres>`).

use std::time::Duration;

use sluice::prelude::*;
use sluice::sql::sqlx::{self, QueryBuilder, Sqlite};
use sluice::sql::Inbox;

#[derive(serde::Serialize, serde::Deserialize)]
struct Reading {
    sensor: String,
    value: f64,
}

const READINGS: usize = 1_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pool = sluice::sql::sqlite::open(dir.path().join("readings.db")).await?;
    sqlx::query(
        "CREATE TABLE readings (id TEXT PRIMARY KEY, sensor TEXT NOT NULL, value REAL NOT NULL)",
    )
    .execute(&pool)
    .await?;

    let backend =
        sluice::connect(&format!("embedded:{}", dir.path().join("engine").display())).await?;
    let topic = TopicName::new("readings")?;
    let subscription = SubscriptionName::new("warehouse")?;
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await?;
    // A subscriber holds at most its prefetch: room for two batches of 200.
    let config = SubscriptionConfig::new(topic.clone())
        .prefetch(400)
        .max_attempts(3);
    backend.ensure_subscription(&subscription, &config).await?;

    // 1,000 readings, reading 7 published twice (a producer's retry), reading 500 invalid.
    let publisher = backend.publisher().await?;
    let mut batch = Vec::new();
    for n in (0..READINGS).chain([7]) {
        let value = if n == 500 { -1.0 } else { n as f64 / 10.0 };
        let reading = Reading {
            sensor: format!("s{}", n % 8),
            value,
        };
        batch.push(json_message(&reading)?.id(format!("reading-{n}")).build()?);
    }
    for receipt in publisher.publish_batch(&topic, batch).await {
        receipt?;
    }

    let inbox = Inbox::new(pool.clone());
    let handler = inbox.json_batch_handler(
        |batch: Vec<(Reading, Context)>,
         mut tx: sqlx::Transaction<'static, Sqlite>,
         _ctx: BatchContext| async move {
            // Each reading's own outcome: the invalid one is refused, the others written.
            let outcome = BatchOutcome::each(batch.len(), |i| match batch[i].0.value {
                v if v < 0.0 => Err(HandlerError::permanent("negative reading")),
                _ => Ok(()),
            });
            let valid: Vec<_> = batch.iter().filter(|(r, _)| r.value >= 0.0).collect();
            if !valid.is_empty() {
                // One INSERT … VALUES (…), (…), … for the whole batch.
                let mut insert =
                    QueryBuilder::<Sqlite>::new("INSERT INTO readings (id, sensor, value) ");
                insert.push_values(valid, |mut row, (reading, ctx)| {
                    row.push_bind(ctx.id().to_owned())
                        .push_bind(reading.sensor.clone())
                        .push_bind(reading.value);
                });
                insert.build().execute(&mut *tx).await?;
            }
            Ok((tx, outcome)) // committed with the batch's inbox rows, then each reading settled
        },
    );
    let worker = Worker::builder(backend.subscribe(&subscription).await?, handler)
        .batch(200, Duration::from_millis(100))
        .build();
    let stats = worker.stats();
    let shutdown = CancellationToken::new();
    let running = worker.spawn(shutdown.clone());

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stats.snapshot().acked + stats.snapshot().dead_lettered < READINGS as u64 + 1 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not done: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    let report = running.await?;

    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM readings")
        .fetch_one(&pool)
        .await?;
    let dead = backend.dlq_list(&subscription, 10).await?;
    println!(
        "{written} readings written in batches, {} duplicate skipped by the inbox, {} dead-lettered ({})",
        inbox.duplicates_skipped(),
        dead.len(),
        dead.first()
            .and_then(|d| d.envelope.as_ref())
            .and_then(|e| e.last_error.clone())
            .unwrap_or_default()
    );
    println!("worker: {report:?}");
    anyhow::ensure!(written == READINGS as i64 - 1, "every valid reading once");
    anyhow::ensure!(dead.len() == 1, "the invalid reading dead-lettered");
    Ok(())
}
