//! The transactional outbox on the real PostgreSQL (and SQLite), relayed to Sluice's
//! embedded engine: only committed events leave, in order, with their ids; a relay killed
//! mid-batch loses nothing, and the repeats it sends are absorbed by the consumer's inbox.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{effects, embedded, postgres_isolated, unique, wait_until};
use sluice_core::{
    Backend, Delivery, Message, PublishReceipt, Publisher, Result, Subscriber, TopicName,
};
use sluice_runtime::{CancellationToken, Context, Worker};
use sluice_sql::{Inbox, Outbox, Relay};
use tokio::sync::Notify;

/// A publisher that dies after `budget` messages: the ones before go out for real, then it
/// hangs (the relay's process is killed while waiting for a confirm).
struct Dying<P> {
    inner: P,
    budget: AtomicUsize,
    dead: Arc<Notify>,
}

impl<P: Publisher> Publisher for Dying<P> {
    async fn publish(&self, topic: &TopicName, message: Message) -> Result<PublishReceipt> {
        self.publish_batch(topic, vec![message])
            .await
            .pop()
            .expect("one result")
    }

    async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<Message>,
    ) -> Vec<Result<PublishReceipt>> {
        let mut out = Vec::new();
        for message in messages {
            if self.budget.load(Ordering::SeqCst) == 0 {
                self.dead.notify_one();
                std::future::pending::<()>().await;
            }
            self.budget.fetch_sub(1, Ordering::SeqCst);
            out.push(self.inner.publish(topic, message).await);
        }
        out
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

async fn order_placed(pool: &sqlx::PgPool, topic: &TopicName, test: &str, n: usize, commit: bool) {
    let mut tx = pool.begin().await.unwrap();
    // The business write and the event share the transaction.
    sqlx::query("INSERT INTO sluice_test_effects VALUES ($1, $2, 0)")
        .bind(format!("{test}-orders"))
        .bind(format!("order-{n}"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let message = Message::builder(format!("{n}"))
        .id(format!("{test}-order-{n}-placed"))
        .message_type("OrderPlaced")
        .header("tenant", "acme")
        .build()
        .unwrap();
    Outbox::enqueue(&mut tx, topic, &message).await.unwrap();
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
}

#[tokio::test]
async fn committed_events_are_relayed_in_order_with_their_ids_and_rolled_back_ones_never() {
    let pool = postgres_isolated().await;
    let test = unique("outbox-order");
    let (_dir, backend, topic, subscription) = embedded(Duration::from_secs(10)).await;
    let outbox = Outbox::new(pool.clone());

    for n in 0..30 {
        order_placed(&pool, &topic, &test, n, n % 10 != 3).await;
    }
    let lag = outbox.lag().await.unwrap();
    assert_eq!(lag.unsent, 27, "{lag:?}");
    assert!(lag.oldest.is_some());

    let relay = Relay::new(outbox.clone(), backend.publisher().await.unwrap()).batch(8);
    while relay.relay_once().await.unwrap().settled() > 0 {}
    assert_eq!(outbox.lag().await.unwrap().unsent, 0, "all relayed");

    let subscriber = backend.subscribe(&subscription).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 27 {
        let batch = subscriber
            .receive(32, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!batch.is_empty(), "only {} of 27 arrived", got.len());
        for d in batch {
            let m = d.message().clone();
            d.ack().await.unwrap();
            if m.id().as_str().starts_with(&test) {
                assert_eq!(m.message_type(), Some("OrderPlaced"));
                assert_eq!(m.header("tenant"), Some("acme"));
                got.push(m.id().as_str().to_owned());
            }
        }
    }
    let expected: Vec<String> = (0..30)
        .filter(|n| n % 10 != 3)
        .map(|n| format!("{test}-order-{n}-placed"))
        .collect();
    assert_eq!(got, expected, "committed events only, in commit order");
}

#[tokio::test]
async fn a_relay_killed_mid_batch_loses_nothing_and_its_repeats_are_absorbed() {
    let pool = postgres_isolated().await;
    let test = unique("outbox-kill");
    let (_dir, backend, topic, subscription) = embedded(Duration::from_secs(10)).await;
    let outbox = Outbox::new(pool.clone());
    const N: usize = 120;
    for n in 0..N {
        order_placed(&pool, &topic, &test, n, true).await;
    }

    // The relay dies after 70 messages: batch 1 (50) is marked sent, 20 of batch 2 went out
    // without being marked.
    let dead = Arc::new(Notify::new());
    let dying = Dying {
        inner: backend.publisher().await.unwrap(),
        budget: AtomicUsize::new(70),
        dead: dead.clone(),
    };
    // A short lease: the relay that replaces it waits until the dead one's lease runs out.
    let relay = Relay::new(outbox.clone(), dying)
        .batch(50)
        .lease(Duration::from_secs(2));
    let stats = relay.stats();
    let killed = tokio::spawn(relay.run(CancellationToken::new()));
    tokio::time::timeout(Duration::from_secs(30), dead.notified())
        .await
        .expect("the relay reached its 70th message");
    killed.abort();
    let _ = killed.await;
    assert_eq!(
        stats.published(),
        50,
        "the first batch was marked sent, the second not"
    );
    assert_eq!(outbox.lag().await.unwrap().unsent, (N - 50) as u64);

    // A new relay picks up where the marks stop: the 20 go out again.
    let relay = Relay::new(outbox.clone(), backend.publisher().await.unwrap()).batch(50);
    let shutdown = CancellationToken::new();
    let relaying = tokio::spawn(relay.run(shutdown.clone()));

    // The consumer's inbox absorbs the repeats.
    let inbox = Inbox::new(pool.clone());
    let effects_of = format!("{test}-effects");
    let worker = Worker::builder(
        backend.subscribe(&subscription).await.unwrap(),
        inbox.raw_handler({
            let effects_of = effects_of.clone();
            move |_payload, mut tx, ctx: Context| {
                let effects_of = effects_of.clone();
                async move {
                    sqlx::query("INSERT INTO sluice_test_effects VALUES ($1, $2, 1)")
                        .bind(&effects_of)
                        .bind(ctx.id())
                        .execute(&mut *tx)
                        .await?;
                    Ok(tx)
                }
            }
        }),
    )
    .concurrency(4)
    .build();
    let running = worker.spawn(shutdown.clone());
    wait_until(Duration::from_secs(60), "every event's effect", || async {
        effects(&pool, &effects_of)
            .await
            .keys()
            .filter(|id| id.starts_with(&test))
            .count()
            == N
    })
    .await;
    wait_until(
        Duration::from_secs(30),
        "the 20 repeats absorbed",
        || async { inbox.duplicates_skipped() >= 20 },
    )
    .await;
    shutdown.cancel();
    running.await.unwrap();
    relaying.await.unwrap();
    let done = effects(&pool, &effects_of).await;
    assert_eq!(done.len(), N, "none lost");
    assert!(done.values().all(|&n| n == 1), "none twice: {done:?}");
}

#[tokio::test]
async fn the_outbox_works_on_sqlite_too() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sluice_sql::sqlite::open(dir.path().join("app.db"))
        .await
        .unwrap();
    let (_edir, backend, topic, subscription) = embedded(Duration::from_secs(10)).await;
    let outbox = Outbox::new(pool.clone());
    for n in 0..5 {
        let mut tx = pool.begin().await.unwrap();
        let message = Message::builder(format!("{n}"))
            .id(format!("e-{n}"))
            .build()
            .unwrap();
        Outbox::enqueue(&mut tx, &topic, &message).await.unwrap();
        tx.commit().await.unwrap();
    }
    // Two rows written by hand that can never be published: an invalid topic name, headers
    // that are not JSON. They are parked with the reason; the others go out.
    for (topic, headers) in [("no spaces allowed", "{}"), ("payments", "not json")] {
        sqlx::query(
            "INSERT INTO sluice_outbox (topic, message_id, headers, payload, created_at) \
             VALUES ($1, 'poison', $2, x'00', 0)",
        )
        .bind(topic)
        .bind(headers)
        .execute(&pool)
        .await
        .unwrap();
    }
    assert_eq!(outbox.lag().await.unwrap().unsent, 7);
    let relay = Relay::new(outbox.clone(), backend.publisher().await.unwrap())
        .lease(Duration::from_millis(500));
    let round = relay.relay_once().await.unwrap();
    assert_eq!((round.published, round.parked), (5, 2));
    // The lease keeps a second relay out until it runs out (or is given back).
    let second = Relay::new(outbox.clone(), backend.publisher().await.unwrap());
    assert!(second.relay_once().await.unwrap().held_elsewhere);
    common::wait_until(Duration::from_secs(10), "the lease to run out", || async {
        !second.relay_once().await.unwrap().held_elsewhere
    })
    .await;
    let lag = outbox.lag().await.unwrap();
    assert_eq!((lag.unsent, lag.parked, lag.oldest), (0, 2, None));
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT error FROM sluice_outbox WHERE parked_at IS NOT NULL ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(reasons[0].contains("no spaces allowed"), "{reasons:?}");
    assert!(reasons[1].contains("undecodable headers"), "{reasons:?}");
    let subscriber = backend.subscribe(&subscription).await.unwrap();
    let got = subscriber
        .receive(10, Duration::from_secs(5))
        .await
        .unwrap();
    let ids: Vec<_> = got
        .iter()
        .map(|d| d.message().id().as_str().to_owned())
        .collect();
    assert_eq!(ids, ["e-0", "e-1", "e-2", "e-3", "e-4"]);
    assert_eq!(outbox.purge_sent(Duration::ZERO).await.unwrap(), 5);
}
