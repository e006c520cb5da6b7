//! An order service with the transactional outbox: the order row and its `OrderPlaced`
//! event are written in one PostgreSQL transaction, so an order is never saved without its
//! event nor an event sent for an order that was rolled back. The relay, running inside the
//! application here (or as `sluice outbox relay`), publishes the events in order.
//!
//! `cargo run -p sluice-examples --example order_outbox`
//! (PostgreSQL from `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`.)

use std::time::Duration;

use sluice::prelude::*;
use sluice::sql::sqlx::{self, postgres::PgPoolOptions, PgPool};
use sluice::sql::{Outbox, Relay};

#[derive(serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
    total_cents: i64,
}

/// Saves an order and its event together; an order without items is refused and leaves
/// nothing behind.
async fn place_order(
    pool: &PgPool,
    topic: &TopicName,
    order_id: &str,
    total_cents: i64,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO example_orders (id, total_cents) VALUES ($1, $2)")
        .bind(order_id)
        .bind(total_cents)
        .execute(&mut *tx)
        .await?;
    let event = json_message(&OrderPlaced {
        order_id: order_id.into(),
        total_cents,
    })?
    .id(format!("{order_id}-placed"))
    .message_type("OrderPlaced")
    .build()?;
    Outbox::enqueue(&mut tx, topic, &event).await?;
    if total_cents <= 0 {
        tx.rollback().await?; // the order and its event disappear together
        anyhow::bail!("order {order_id} has no items");
    }
    tx.commit().await?;
    Ok(())
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
        "CREATE TABLE IF NOT EXISTS example_orders (id TEXT PRIMARY KEY, total_cents BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await?;

    let dir = tempfile::tempdir()?;
    let backend = sluice::connect(&format!("embedded:{}", dir.path().display())).await?;
    let orders = TopicName::new("orders")?;
    let shipping = SubscriptionName::new("shipping")?;
    backend
        .ensure_topic(&orders, &TopicConfig::default())
        .await?;
    backend
        .ensure_subscription(&shipping, &SubscriptionConfig::new(orders.clone()))
        .await?;

    let run = std::process::id();
    let mut placed = Vec::new();
    for (n, total) in [(1, 2500), (2, 0), (3, 990), (4, 12000)] {
        let id = format!("order-{run}-{n}");
        match place_order(&pool, &orders, &id, total).await {
            Ok(()) => placed.push(format!("{id}-placed")),
            Err(err) => println!("refused: {err}"),
        }
    }

    // The relay inside the application.
    let shutdown = CancellationToken::new();
    let relay = Relay::new(Outbox::new(pool.clone()), backend.publisher().await?)
        .poll_interval(Duration::from_millis(50));
    let relaying = tokio::spawn(relay.run(shutdown.clone()));

    // Shipping receives the committed orders' events, in order.
    let subscriber = backend.subscribe(&shipping).await?;
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while received.len() < placed.len() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "events not relayed in 30 s"
        );
        for delivery in subscriber.receive(10, Duration::from_millis(500)).await? {
            let event: OrderPlaced = sluice::runtime::decode_json(delivery.message())?;
            println!(
                "shipping got {} ({} cents)",
                event.order_id, event.total_cents
            );
            received.push(delivery.message().id().as_str().to_owned());
            delivery.ack().await.map_err(|e| e.error)?;
        }
    }
    let lag = Outbox::new(pool.clone()).lag().await?;
    shutdown.cancel();
    relaying.await?;
    println!("outbox lag: {} unsent", lag.unsent);
    anyhow::ensure!(received == placed, "committed events only, in order");
    Ok(())
}
