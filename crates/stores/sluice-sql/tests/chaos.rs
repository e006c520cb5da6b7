//! The chaos test: 10 000 payments, every one delivered twice (published twice under the
//! same id), consumers killed at random while they work — and the final state of the real
//! PostgreSQL equals a clean run's exactly: no effect twice, none lost.
//!
//! The consumers write through the transactional inbox: one message per transaction, or (the
//! second test) a batch handler's whole batch in one transaction, killed mid-batch. A killed
//! consumer's in-flight deliveries come back when their lease runs out; whatever it committed
//! is skipped then. `SLUICE_CHAOS_SEED` replays a run (the seed is printed).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{embedded, postgres_isolated, wait_until};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_core::{Backend, Message, Publisher};
use sluice_runtime::{
    BatchContext, BatchOutcome, CancellationToken, Context, HandlerError, Worker,
};
use sluice_sql::Inbox;
use sqlx::{PgPool, Postgres, Transaction};

const MESSAGES: usize = 10_000;
const ACCOUNTS: usize = 50;
const CONSUMERS: usize = 3;

/// A payment: `account` gets `cents` (the payload is `account:cents`).
fn payment(n: usize) -> (String, i64) {
    (format!("acct-{}", n % ACCOUNTS), (n as i64 % 97) + 1)
}

/// A payment's payload: `account:cents`.
fn parse(payload: &[u8]) -> Result<(&str, i64), HandlerError> {
    let text = std::str::from_utf8(payload).map_err(HandlerError::permanent)?;
    let (account, cents) = text
        .split_once(':')
        .ok_or_else(|| HandlerError::permanent("bad payload"))?;
    Ok((account, cents.parse().map_err(HandlerError::permanent)?))
}

/// Adds `cents` to `account`'s balance.
async fn credit(
    tx: &mut Transaction<'static, Postgres>,
    account: &str,
    cents: i64,
) -> Result<(), HandlerError> {
    sqlx::query(
        "INSERT INTO chaos_accounts (account, balance) VALUES ($1, $2) \
         ON CONFLICT (account) DO UPDATE SET balance = chaos_accounts.balance + excluded.balance",
    )
    .bind(account)
    .bind(cents)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The handler's effects, the same in the clean run and under chaos: a balance update and
/// a ledger line.
async fn apply(
    tx: &mut Transaction<'static, Postgres>,
    id: &str,
    payload: &[u8],
) -> Result<(), HandlerError> {
    let (account, cents) = parse(payload)?;
    credit(tx, account, cents).await?;
    sqlx::query("INSERT INTO chaos_ledger (message_id, account, cents) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(account)
        .bind(cents)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A batch's effects in one transaction: the balances summed per account and written in
/// account order (two batches never wait for each other's rows in opposite orders), then
/// every ledger line in one statement.
async fn apply_batch(
    tx: &mut Transaction<'static, Postgres>,
    batch: &[(bytes::Bytes, Context)],
) -> Result<(), HandlerError> {
    let mut sums: BTreeMap<&str, i64> = BTreeMap::new();
    let (mut ids, mut accounts, mut amounts) = (Vec::new(), Vec::new(), Vec::new());
    for (payload, ctx) in batch {
        let (account, cents) = parse(payload)?;
        *sums.entry(account).or_default() += cents;
        ids.push(ctx.id().to_owned());
        accounts.push(account.to_owned());
        amounts.push(cents);
    }
    for (account, cents) in sums {
        credit(tx, account, cents).await?;
    }
    sqlx::query(
        "INSERT INTO chaos_ledger (message_id, account, cents) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[])",
    )
    .bind(&ids)
    .bind(&accounts)
    .bind(&amounts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn tables(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE chaos_accounts (account TEXT PRIMARY KEY, balance BIGINT NOT NULL);\
         CREATE TABLE chaos_ledger (message_id TEXT NOT NULL, account TEXT NOT NULL, cents BIGINT NOT NULL);",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// The state compared: balances, and how many ledger lines each message left.
async fn state(pool: &PgPool) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let balances =
        sqlx::query_as::<_, (String, i64)>("SELECT account, balance FROM chaos_accounts")
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let lines = sqlx::query_as::<_, (String, i64)>(
        "SELECT message_id, count(*) FROM chaos_ledger GROUP BY message_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    (balances, lines)
}

async fn ledger_ids(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT message_id) FROM chaos_ledger")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// How the consumers handle messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One message per handler call and transaction.
    Single,
    /// A batch handler: up to 64 messages per call, one transaction per batch.
    Batch,
}

/// Starts a consumer writing through the inbox.
async fn consumer(
    backend: &sluice_embedded::EmbeddedBackend,
    subscription: &sluice_core::SubscriptionName,
    inbox: &Inbox<Postgres>,
    mode: Mode,
) -> tokio::task::JoinHandle<sluice_runtime::StatsSnapshot> {
    let subscriber = backend.subscribe(subscription).await.unwrap();
    match mode {
        Mode::Single => {
            let handler = inbox.raw_handler(|payload, mut tx, ctx: Context| async move {
                apply(&mut tx, ctx.id(), &payload).await?;
                Ok(tx)
            });
            Worker::builder(subscriber, handler)
                .concurrency(8)
                .build()
                .spawn(CancellationToken::new())
        }
        Mode::Batch => {
            let handler = inbox.raw_batch_handler(|batch, mut tx, _ctx: BatchContext| async move {
                apply_batch(&mut tx, &batch).await?;
                Ok((tx, BatchOutcome::AllOk))
            });
            Worker::builder(subscriber, handler)
                .batch(64, Duration::from_millis(20))
                .concurrency(2)
                .build()
                .spawn(CancellationToken::new())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_delivered_twice_with_consumers_killed_equal_a_clean_run() {
    chaos(Mode::Single).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_batch_handlers_killed_mid_batch_equals_a_clean_run() {
    chaos(Mode::Batch).await;
}

async fn chaos(mode: Mode) {
    let seed = std::env::var("SLUICE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("chaos seed {seed} (SLUICE_CHAOS_SEED={seed} replays it)");
    let mut rng = SmallRng::seed_from_u64(seed);
    let messages: Vec<(String, Vec<u8>)> = (0..MESSAGES)
        .map(|n| {
            let (account, cents) = payment(n);
            (
                format!("payment-{n}"),
                format!("{account}:{cents}").into_bytes(),
            )
        })
        .collect();

    // The clean run: each message once, in order, on a database of its own.
    let clean = postgres_isolated().await;
    tables(&clean).await;
    for (id, payload) in &messages {
        let mut tx = clean.begin().await.unwrap();
        apply(&mut tx, id, payload).await.unwrap();
        tx.commit().await.unwrap();
    }
    let expected = state(&clean).await;

    // Chaos: every message published twice (no dedup window), three consumers, killed at
    // random and replaced, leases of 2 s.
    let pool = postgres_isolated().await;
    tables(&pool).await;
    let (_dir, backend, topic, subscription) = embedded(Duration::from_secs(2)).await;
    let publisher = backend.publisher().await.unwrap();
    for copy in 0..2 {
        for chunk in messages.chunks(500) {
            let batch = chunk
                .iter()
                .map(|(id, payload)| {
                    Message::builder(payload.clone())
                        .id(id.as_str())
                        .header("copy", copy.to_string())
                        .build()
                        .unwrap()
                })
                .collect();
            for receipt in publisher.publish_batch(&topic, batch).await {
                receipt.unwrap();
            }
        }
    }

    let inbox = Inbox::new(pool.clone());
    let started = Instant::now();
    let mut consumers = Vec::new();
    for _ in 0..CONSUMERS {
        consumers.push(consumer(&backend, &subscription, &inbox, mode).await);
    }
    let mut kills = 0;
    while ledger_ids(&pool).await < MESSAGES as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not done after 10 minutes: {} of {MESSAGES} (seed {seed})",
            ledger_ids(&pool).await
        );
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..900))).await;
        // Kill one consumer mid-work: its deliveries are neither acked nor released.
        let victim = rng.gen_range(0..consumers.len());
        consumers[victim].abort();
        kills += 1;
        consumers[victim] = consumer(&backend, &subscription, &inbox, mode).await;
    }
    // Every copy settled: nothing can still arrive and write.
    wait_until(
        Duration::from_secs(120),
        "the subscription drained",
        || async {
            let stats = backend.stats(&subscription).await.unwrap();
            stats.ready == Some(0) && stats.in_flight == Some(0) && stats.delayed == Some(0)
        },
    )
    .await;
    let elapsed = started.elapsed();
    for c in &consumers {
        c.abort();
    }
    let actual = state(&pool).await;

    let doubles: Vec<_> = actual.1.iter().filter(|(_, &n)| n > 1).collect();
    let lost = MESSAGES - actual.1.len();
    println!(
        "chaos ({mode:?}): {MESSAGES} messages × 2 copies, {kills} consumers killed, {} duplicates \
         skipped by the inbox, {} double effects, {lost} lost effects, {:.1} s (seed {seed})",
        inbox.duplicates_skipped(),
        doubles.len(),
        elapsed.as_secs_f64()
    );
    assert!(
        doubles.is_empty(),
        "double effects (seed {seed}): {doubles:?}"
    );
    assert_eq!(lost, 0, "lost effects (seed {seed})");
    assert!(kills >= 1, "at least one consumer was killed");
    assert!(
        inbox.duplicates_skipped() >= MESSAGES as u64,
        "every second copy was skipped by the inbox"
    );
    assert_eq!(
        actual, expected,
        "the final state equals the clean run (seed {seed})"
    );
}
