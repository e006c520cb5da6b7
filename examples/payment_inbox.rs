//! An idempotent payment consumer on PostgreSQL with the transactional inbox: the balance
//! update and the inbox row commit in one transaction, then the delivery is acked. A payment
//! published twice (the producer retried) is applied once; so would a redelivery after a lost
//! ack or a crash.
//!
//! `cargo run -p sluice-examples --example payment_inbox`
//! (PostgreSQL from `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`;
//! `scripts/services-up` starts one.)

use std::time::Duration;

use sluice::prelude::*;
use sluice::sql::sqlx::{self, postgres::PgPoolOptions};
use sluice::sql::Inbox;

#[derive(serde::Serialize, serde::Deserialize)]
struct PaymentReceived {
    account: String,
    cents: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await?;
    sluice::sql::migrate(&pool).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS example_accounts (account TEXT PRIMARY KEY, balance BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await?;
    // A run of its own: fresh account names, so reruns start from zero.
    let run = std::process::id();
    let account = format!("alice-{run}");

    let dir = tempfile::tempdir()?;
    let backend = sluice::connect(&format!("embedded:{}", dir.path().display())).await?;
    let payments = TopicName::new("payments")?;
    let ledger = SubscriptionName::new("ledger")?;
    backend
        .ensure_topic(&payments, &TopicConfig::default())
        .await?;
    backend
        .ensure_subscription(&ledger, &SubscriptionConfig::new(payments.clone()))
        .await?;

    // Three payments; the producer thinks the second failed and sends it again.
    let publisher = backend.publisher().await?;
    for (n, cents) in [(1, 1000), (2, 250), (2, 250), (3, 4000)] {
        let message = json_message(&PaymentReceived {
            account: account.clone(),
            cents,
        })?
        .id(format!("payment-{run}-{n}"))
        .build()?;
        publisher.publish(&payments, message).await?;
    }

    let inbox = Inbox::new(pool.clone()).ttl(Duration::from_secs(7 * 24 * 3600));
    let shutdown = CancellationToken::new();
    inbox.spawn_cleanup(Duration::from_secs(3600), shutdown.clone());
    let handler = inbox.json_handler(|payment: PaymentReceived, mut tx, _ctx: Context| async move {
        // Runs in the transaction that already holds the inbox row.
        sqlx::query(
            "INSERT INTO example_accounts (account, balance) VALUES ($1, $2) \
             ON CONFLICT (account) DO UPDATE SET balance = example_accounts.balance + excluded.balance",
        )
        .bind(&payment.account)
        .bind(payment.cents)
        .execute(&mut *tx)
        .await?;
        Ok(tx) // committed with the inbox row, then acked
    });
    let worker = Worker::builder(backend.subscribe(&ledger).await?, handler).build();
    let stats = worker.stats();
    let running = worker.spawn(shutdown.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stats.snapshot().acked < 4 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "payments not handled in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await?;

    let balance: i64 =
        sqlx::query_scalar("SELECT balance FROM example_accounts WHERE account = $1")
            .bind(&account)
            .fetch_one(&pool)
            .await?;
    println!(
        "{account}: balance {balance} cents after 4 deliveries of 3 payments; {} duplicate skipped by the inbox",
        inbox.duplicates_skipped()
    );
    anyhow::ensure!(balance == 5250, "each payment applied once");
    Ok(())
}
