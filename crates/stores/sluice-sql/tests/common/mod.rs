//! Shared test setup: the real PostgreSQL of this machine (or `SLUICE_TEST_POSTGRES_URL`),
//! SQLite files in temporary directories, and an embedded Sluice backend.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::{Duration, Instant};

use sluice_core::{Backend, SubscriptionConfig, SubscriptionName, TopicConfig, TopicName};
use sluice_embedded::EmbeddedBackend;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// The PostgreSQL the tests use: `scripts/services-up` makes sure it runs.
pub fn postgres_url() -> String {
    std::env::var("SLUICE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A pool on the test database with Sluice's tables.
pub async fn postgres() -> PgPool {
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&postgres_url())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {} is needed (scripts/services-up starts it): {e}",
                postgres_url()
            )
        });
    sluice_sql::migrate(&pool).await.unwrap();
    // The tests' own business tables; the lock keeps parallel tests from racing on DDL.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(42)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS sluice_test_effects (\
             test TEXT NOT NULL, message_id TEXT NOT NULL, amount BIGINT NOT NULL);\
         CREATE INDEX IF NOT EXISTS sluice_test_effects_test ON sluice_test_effects (test);",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    pool
}

/// Effects written for `test`: `(message id, times)` for every id with more than `0`.
pub async fn effects(pool: &PgPool, test: &str) -> std::collections::BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT message_id, count(*) FROM sluice_test_effects WHERE test = $1 GROUP BY message_id",
    )
    .bind(test)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// A pool on a schema of its own (its own outbox, inbox and store tables), for tests
/// whose relay must see only its own rows.
pub async fn postgres_isolated() -> PgPool {
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let admin = postgres().await;
    // Schemas of earlier runs (their names start with a UUIDv7: its first 48 bits are the
    // creation time in ms) are dropped after an hour.
    let old: Vec<String> =
        sqlx::query_scalar(r"SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 't\_%'")
            .fetch_all(&admin)
            .await
            .unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for name in old {
        let made = name
            .get(2..14)
            .and_then(|h| u64::from_str_radix(h, 16).ok());
        if made.is_some_and(|ms| ms + 3_600_000 < now_ms) {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .execute(&admin)
                .await;
        }
    }
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let options: sqlx::postgres::PgConnectOptions = postgres_url().parse().unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options.options([("search_path", schema.as_str())]))
        .await
        .unwrap();
    sluice_sql::migrate(&pool).await.unwrap();
    sqlx::query(
        "CREATE TABLE sluice_test_effects (\
             test TEXT NOT NULL, message_id TEXT NOT NULL, amount BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool
}

/// A name unique to this test run, so tests sharing the database never see each other.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Waits until `check` holds, polling every 20 ms, failing after `within`.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An embedded backend in a temporary directory, with one topic (no dedup window: every
/// copy published is delivered) and one subscription whose lease is `lease`.
pub async fn embedded(
    lease: Duration,
) -> (
    tempfile::TempDir,
    EmbeddedBackend,
    TopicName,
    SubscriptionName,
) {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path().join("engine"))
        .await
        .unwrap();
    let topic = TopicName::new("payments").unwrap();
    let subscription = SubscriptionName::new(unique("ledger")).unwrap();
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    backend
        .ensure_subscription(
            &subscription,
            &SubscriptionConfig::new(topic.clone())
                .lease(lease)
                .max_attempts(50),
        )
        .await
        .unwrap();
    (dir, backend, topic, subscription)
}
