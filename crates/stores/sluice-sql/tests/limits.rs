//! The SQL limiter: the `LimiterStore` contract (rate limits' buckets and global concurrency
//! slots) on the real PostgreSQL and on an SQLite file, and workers sharing a global
//! concurrency bound kept in PostgreSQL.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{postgres, wait_until};
use sluice_core::{Backend, LimiterStore, Message, Publisher, SubscriptionConfig, TopicConfig};
use sluice_embedded::EmbeddedBackend;
use sluice_runtime::{raw_handler, CancellationToken, Worker};
use sluice_sql::SqlStore;

#[tokio::test]
async fn the_postgres_limiter_keeps_the_limiter_contract() {
    sluice_testing::check_limiter(Arc::new(SqlStore::new(postgres().await))).await;
}

#[tokio::test]
async fn the_sqlite_limiter_keeps_the_limiter_contract() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sluice_sql::sqlite::open(dir.path().join("limits.db"))
        .await
        .unwrap();
    sluice_testing::check_limiter(Arc::new(SqlStore::new(pool))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_a_concurrency_bound_kept_in_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path()).await.unwrap();
    let topic = sluice_core::TopicName::new("renders").unwrap();
    let name = sluice_core::SubscriptionName::new("renderer").unwrap();
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    let config = SubscriptionConfig::new(topic.clone()).start(sluice_core::StartPosition::Earliest);
    backend.ensure_subscription(&name, &config).await.unwrap();
    let publisher = backend.publisher().await.unwrap();
    for i in 0..30 {
        publisher
            .publish(
                &topic,
                Message::builder("x").id(format!("m{i}")).build().unwrap(),
            )
            .await
            .unwrap();
    }
    let store: Arc<dyn LimiterStore> = Arc::new(SqlStore::new(postgres().await));
    let bound = format!("render-{}", uuid::Uuid::now_v7());
    let now = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let stop = CancellationToken::new();
    let mut handles = Vec::new();
    for _ in 0..3 {
        let (n, p, d) = (now.clone(), peak.clone(), done.clone());
        let worker = Worker::builder(
            backend.subscribe(&name).await.unwrap(),
            raw_handler(move |_p, _c| {
                let (n, p, d) = (n.clone(), p.clone(), d.clone());
                async move {
                    let running = n.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(running, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    n.fetch_sub(1, Ordering::SeqCst);
                    d.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .concurrency(4)
        .global_concurrency(bound.clone(), 2)
        .limiter(store.clone())
        .build();
        handles.push(worker.spawn(stop.clone()));
    }
    wait_until(Duration::from_secs(60), "30 handled", || {
        let done = done.clone();
        async move { done.load(Ordering::SeqCst) == 30 }
    })
    .await;
    stop.cancel();
    for handle in handles {
        handle.await.unwrap();
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "at most 2 at once across three workers of 4 handler slots, and 2 reached"
    );
}
