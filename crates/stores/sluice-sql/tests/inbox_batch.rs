//! The transactional inbox's batch form, fed by the embedded engine, on the real PostgreSQL
//! and on SQLite: every id takes effect once although each is published twice, a message the
//! handler fails on its own is not recorded (it runs again and takes effect then), and a
//! batch that fails as a whole leaves nothing behind.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{embedded, postgres, unique, wait_until};
use sluice_core::{Backend, Message, Publisher};
use sluice_runtime::{
    BatchContext, BatchOutcome, CancellationToken, Context, HandlerError, Worker,
};
use sluice_sql::Inbox;

const IDS: usize = 30;

async fn publish_each_twice(backend: &impl Backend, topic: &sluice_core::TopicName) {
    let publisher = backend.publisher().await.unwrap();
    for copy in 0..2 {
        let batch = (0..IDS)
            .map(|n| {
                Message::builder(format!("{n}"))
                    .id(format!("p-{n}"))
                    .header("copy", copy.to_string())
                    .build()
                    .unwrap()
            })
            .collect();
        for receipt in publisher.publish_batch(topic, batch).await {
            receipt.unwrap();
        }
    }
    publisher.close().await.unwrap();
}

/// The scenario, for one database: `$pool` with a `batch_effects (test, message_id)` table.
/// The handler fails `p-7`'s first attempt on its own (writing nothing for it) and fails the
/// first batch holding `p-13` as a whole after writing its effects.
macro_rules! scenario {
    ($pool:expr) => {{
        let pool = $pool;
        let test = unique("batch-inbox");
        let (_dir, backend, topic, subscription) = embedded(Duration::from_secs(10)).await;
        publish_each_twice(&backend, &topic).await;
        let inbox = Inbox::new(pool.clone());
        let failed_13 = Arc::new(Mutex::new(false));
        let sizes: Arc<Mutex<Vec<usize>>> = Arc::default();
        let (t, f13, z) = (test.clone(), failed_13.clone(), sizes.clone());
        let handler = inbox.raw_batch_handler(move |batch, mut tx, ctx: BatchContext| {
            let (test, failed_13, sizes) = (t.clone(), f13.clone(), z.clone());
            async move {
                sizes.lock().unwrap().push(ctx.len());
                let mut results = Vec::new();
                let mut fail_all = false;
                for (_payload, c) in &batch {
                    let c: &Context = c;
                    if c.id() == "p-7" && c.attempt() == 1 {
                        results.push(Err(HandlerError::transient("p-7 fails once")));
                        continue;
                    }
                    sqlx::query("INSERT INTO batch_effects (test, message_id) VALUES ($1, $2)")
                        .bind(&test)
                        .bind(c.id())
                        .execute(&mut *tx)
                        .await?;
                    results.push(Ok(()));
                    if c.id() == "p-13" {
                        let mut failed = failed_13.lock().unwrap();
                        fail_all = !*failed;
                        *failed = true;
                    }
                }
                if fail_all {
                    return Err(HandlerError::transient("the batch holding p-13 fails once"));
                }
                Ok((tx, BatchOutcome::PerMessage(results)))
            }
        });
        let worker = Worker::builder(backend.subscribe(&subscription).await.unwrap(), handler)
            .batch(16, Duration::from_millis(50))
            .backoff(sluice_runtime::Backoff::exponential(
                Duration::from_millis(100),
                Duration::from_millis(200),
            ))
            .build();
        let stats = worker.stats();
        let shutdown = CancellationToken::new();
        let running = worker.spawn(shutdown.clone());
        wait_until(Duration::from_secs(60), "every copy settled", || async {
            let s = backend.stats(&subscription).await.unwrap();
            stats.snapshot().acked >= 2 * IDS as u64
                && s.ready == Some(0)
                && s.in_flight == Some(0)
                && s.delayed == Some(0)
        })
        .await;
        shutdown.cancel();
        let report = running.await.unwrap();
        let effects: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "SELECT message_id, count(*) FROM batch_effects WHERE test = $1 GROUP BY message_id",
        )
        .bind(&test)
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
        let expected: BTreeMap<String, i64> = (0..IDS).map(|n| (format!("p-{n}"), 1)).collect();
        assert_eq!(effects, expected, "every id once; worker: {report:?}");
        assert!(
            *failed_13.lock().unwrap(),
            "the batch holding p-13 failed once"
        );
        assert!(
            inbox.duplicates_skipped() >= 1,
            "second copies were skipped by the inbox"
        );
        assert_eq!(report.dead_lettered, 0, "{report:?}");
        let sizes = sizes.lock().unwrap().clone();
        assert!(
            sizes.iter().any(|&n| n > 1),
            "handled in batches: {sizes:?}"
        );
    }};
}

#[tokio::test]
async fn the_batch_inbox_takes_each_id_once_on_postgres() {
    let pool = postgres().await;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS batch_effects (test TEXT NOT NULL, message_id TEXT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    scenario!(pool);
}

#[tokio::test]
async fn the_batch_inbox_takes_each_id_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sluice_sql::sqlite::open(dir.path().join("app.db"))
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE batch_effects (test TEXT NOT NULL, message_id TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    scenario!(pool);
}
