//! Consumers on the real PostgreSQL, fed by Sluice's embedded engine: racing copies of one
//! id take effect once (with the durable store and with the inbox), and a consumer killed
//! between its commit and its ack leads to a redelivery that is skipped.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{effects, embedded, postgres, unique, wait_until};
use sluice_core::{Backend, Message, Publisher};
use sluice_runtime::{raw_handler, CancellationToken, Context, Idempotency, Worker};
use sluice_sql::{Inbox, SqlStore};
use tokio::sync::Notify;

async fn publish_twice(backend: &impl Backend, topic: &sluice_core::TopicName, id: &str) {
    let publisher = backend.publisher().await.unwrap();
    for _ in 0..2 {
        let message = Message::builder(&b"1999"[..]).id(id).build().unwrap();
        publisher.publish(topic, message).await.unwrap();
    }
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn two_consumers_racing_on_one_id_take_effect_once_with_the_postgres_store() {
    let pool = postgres().await;
    let test = unique("store-race");
    let (_dir, backend, topic, subscription) = embedded(Duration::from_secs(10)).await;
    publish_twice(&backend, &topic, "payment-1").await;

    let shutdown = CancellationToken::new();
    let mut stats = Vec::new();
    let mut running = Vec::new();
    for _ in 0..2 {
        // Each consumer its own pool: two processes sharing only the database.
        let store = SqlStore::new(postgres().await);
        let (pool, test) = (pool.clone(), test.clone());
        let worker = Worker::builder(
            backend.subscribe(&subscription).await.unwrap(),
            raw_handler(move |_payload, ctx: Context| {
                let (pool, test) = (pool.clone(), test.clone());
                async move {
                    // Slow enough that both copies are in flight at once.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    sqlx::query("INSERT INTO sluice_test_effects VALUES ($1, $2, 1999)")
                        .bind(&test)
                        .bind(ctx.id())
                        .execute(&pool)
                        .await?;
                    Ok(())
                }
            }),
        )
        .idempotency(Idempotency::new(store))
        .build();
        stats.push(worker.stats());
        running.push(worker.spawn(shutdown.clone()));
    }
    wait_until(Duration::from_secs(30), "both copies settled", || {
        let stats = stats.clone();
        async move {
            let s: Vec<_> = stats.iter().map(|s| s.snapshot()).collect();
            s.iter().map(|s| s.acked).sum::<u64>() >= 1
                && s.iter().map(|s| s.duplicates_skipped).sum::<u64>() >= 1
        }
    })
    .await;
    let in_progress: u64 = stats
        .iter()
        .map(|s| s.snapshot().duplicates_in_progress)
        .sum();
    shutdown.cancel();
    for r in running {
        r.await.unwrap();
    }
    assert_eq!(effects(&pool, &test).await.get("payment-1"), Some(&1));
    assert!(
        in_progress >= 1,
        "the second copy arrived while the first was being handled"
    );
}

#[tokio::test]
async fn two_consumers_racing_on_one_id_take_effect_once_with_the_inbox() {
    let pool = postgres().await;
    let test = unique("inbox-race");
    let (_dir, backend, topic, subscription) = embedded(Duration::from_secs(10)).await;
    publish_twice(&backend, &topic, "payment-1").await;

    let inbox = Inbox::new(pool.clone());
    let shutdown = CancellationToken::new();
    let mut running = Vec::new();
    for _ in 0..2 {
        let test = test.clone();
        let handler = inbox.raw_handler(move |_payload, mut tx, ctx: Context| {
            let test = test.clone();
            async move {
                sqlx::query("INSERT INTO sluice_test_effects VALUES ($1, $2, 1999)")
                    .bind(&test)
                    .bind(ctx.id())
                    .execute(&mut *tx)
                    .await?;
                // The other copy's inbox insert waits on this transaction meanwhile.
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(tx)
            }
        });
        let worker =
            Worker::builder(backend.subscribe(&subscription).await.unwrap(), handler).build();
        running.push(worker.spawn(shutdown.clone()));
    }
    wait_until(
        Duration::from_secs(30),
        "the second copy skipped",
        || async { inbox.duplicates_skipped() >= 1 },
    )
    .await;
    shutdown.cancel();
    for r in running {
        r.await.unwrap();
    }
    assert_eq!(effects(&pool, &test).await.get("payment-1"), Some(&1));
    assert!(inbox
        .contains(subscription.as_str(), "payment-1")
        .await
        .unwrap());
}

#[tokio::test]
async fn a_consumer_killed_between_its_commit_and_its_ack_is_skipped_on_redelivery() {
    let pool = postgres().await;
    let test = unique("killed");
    let (_dir, backend, topic, subscription) = embedded(Duration::from_secs(1)).await;
    let publisher = backend.publisher().await.unwrap();
    publisher
        .publish(
            &topic,
            Message::builder(&b"1999"[..])
                .id("payment-7")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();

    // The first consumer commits its effect and the inbox row, then dies before acking.
    let inbox = Inbox::new(pool.clone());
    let committed = Arc::new(Notify::new());
    let doomed = {
        let (inbox, test, committed) = (inbox.clone(), test.clone(), committed.clone());
        Worker::builder(
            backend.subscribe(&subscription).await.unwrap(),
            raw_handler(move |_payload, ctx: Context| {
                let (inbox, test, committed) = (inbox.clone(), test.clone(), committed.clone());
                async move {
                    let mut tx = inbox
                        .begin(ctx.subscription().as_str(), ctx.id())
                        .await?
                        .expect("first delivery");
                    sqlx::query("INSERT INTO sluice_test_effects VALUES ($1, $2, 1999)")
                        .bind(&test)
                        .bind(ctx.id())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    committed.notify_one();
                    std::future::pending::<()>().await;
                    Ok(())
                }
            }),
        )
        .build()
        .spawn(CancellationToken::new())
    };
    tokio::time::timeout(Duration::from_secs(10), committed.notified())
        .await
        .expect("the first consumer committed");
    doomed.abort();
    assert!(doomed.await.unwrap_err().is_cancelled());

    // Its lease runs out; the next consumer gets the message again and skips it.
    let test2 = test.clone();
    let worker = Worker::builder(
        backend.subscribe(&subscription).await.unwrap(),
        inbox.raw_handler(move |_payload, mut tx, ctx: Context| {
            let test = test2.clone();
            async move {
                sqlx::query("INSERT INTO sluice_test_effects VALUES ($1, $2, 1999)")
                    .bind(&test)
                    .bind(ctx.id())
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }),
    )
    .build();
    let stats = worker.stats();
    let shutdown = CancellationToken::new();
    let running = worker.spawn(shutdown.clone());
    wait_until(Duration::from_secs(30), "the redelivery acked", || async {
        stats.snapshot().acked >= 1
    })
    .await;
    shutdown.cancel();
    let report = running.await.unwrap();
    assert_eq!(inbox.duplicates_skipped(), 1, "the redelivery was skipped");
    assert!(report.delivered >= 1);
    assert_eq!(effects(&pool, &test).await.get("payment-7"), Some(&1));
}

#[tokio::test]
async fn inbox_rows_expire_after_the_ttl_by_the_cleanup_task() {
    // A database of its own: the cleanup removes every row older than this inbox's 300 ms
    // TTL, whichever subscription it belongs to, and would take the rows of the tests
    // running beside it on the shared PostgreSQL.
    let dir = tempfile::tempdir().unwrap();
    let pool = sluice_sql::sqlite::open(dir.path().join("inbox.db"))
        .await
        .unwrap();
    let subscription = unique("cleanup");
    let inbox = Inbox::new(pool.clone()).ttl(Duration::from_millis(300));
    let tx = inbox.begin(&subscription, "old").await.unwrap().unwrap();
    tx.commit().await.unwrap();
    assert!(
        inbox.begin(&subscription, "old").await.unwrap().is_none(),
        "a duplicate"
    );
    let shutdown = CancellationToken::new();
    let cleanup = inbox.spawn_cleanup(Duration::from_millis(100), shutdown.clone());
    wait_until(Duration::from_secs(10), "the row to be removed", || async {
        !inbox.contains(&subscription, "old").await.unwrap()
    })
    .await;
    shutdown.cancel();
    cleanup.await.unwrap();
    // Past the TTL the id is new again (the TTL must outlast any duplicate).
    assert!(inbox.begin(&subscription, "old").await.unwrap().is_some());
}
