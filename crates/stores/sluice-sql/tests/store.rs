//! The durable idempotency and dedup stores on the real PostgreSQL and on SQLite files:
//! the semantics of DESIGN §2, the same tests for both databases.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{postgres, unique, wait_until};
use sluice_core::{Claim, IdempotencyKey, IdempotencyStore, MessageId, SubscriptionName};
use sluice_sql::{SqlDatabase, SqlStore};

fn key(subscription: &str, id: &str) -> IdempotencyKey {
    IdempotencyKey {
        subscription: SubscriptionName::new(subscription).unwrap(),
        id: MessageId::new(id).unwrap(),
    }
}

const LEASE: Duration = Duration::from_millis(800);

async fn semantics<DB: SqlDatabase>(store: SqlStore<DB>) {
    let sub = unique("billing");

    // One claim at a time; the second learns the first's remaining time.
    let k = key(&sub, "a");
    let Claim::Acquired(first) = store.claim(&k, Duration::from_secs(30)).await.unwrap() else {
        panic!("first claim must be acquired")
    };
    match store.claim(&k, Duration::from_secs(30)).await.unwrap() {
        Claim::InProgress { remaining } => assert!(
            remaining > Duration::from_secs(25) && remaining <= Duration::from_secs(30),
            "remaining {remaining:?}"
        ),
        other => panic!("expected in progress, got {other:?}"),
    }

    // Done skips duplicates for the TTL, then the key is free again.
    store
        .complete(&k, &first, Duration::from_millis(600))
        .await
        .unwrap();
    assert_eq!(store.claim(&k, LEASE).await.unwrap(), Claim::Done);
    wait_until(
        Duration::from_secs(5),
        "the done marker to expire",
        || async { matches!(store.claim(&k, LEASE).await.unwrap(), Claim::Acquired(_)) },
    )
    .await;

    // A claim left by a crashed consumer expires with its lease.
    let crashed = key(&sub, "crashed");
    assert!(matches!(
        store.claim(&crashed, LEASE).await.unwrap(),
        Claim::Acquired(_)
    ));
    assert!(matches!(
        store.claim(&crashed, LEASE).await.unwrap(),
        Claim::InProgress { .. }
    ));
    wait_until(
        Duration::from_secs(5),
        "the crashed claim to expire",
        || async {
            matches!(
                store.claim(&crashed, LEASE).await.unwrap(),
                Claim::Acquired(_)
            )
        },
    )
    .await;

    // Renew extends a live claim; an expired one cannot be renewed, and its stale token
    // cannot release the claim that replaced it.
    let r = key(&sub, "renewed");
    let Claim::Acquired(old) = store.claim(&r, LEASE).await.unwrap() else {
        panic!()
    };
    assert!(store.renew(&r, &old, LEASE).await.unwrap());
    wait_until(
        Duration::from_secs(5),
        "the renewed claim to expire",
        || async {
            !store
                .renew(&r, &old, Duration::from_millis(1))
                .await
                .unwrap()
                && matches!(store.claim(&r, LEASE).await.unwrap(), Claim::Acquired(_))
        },
    )
    .await;
    store.release(&r, &old).await.unwrap();
    assert!(
        matches!(
            store.claim(&r, LEASE).await.unwrap(),
            Claim::InProgress { .. }
        ),
        "a stale release must not drop the new claim"
    );

    // Release frees the key at once.
    let f = key(&sub, "freed");
    let Claim::Acquired(t) = store.claim(&f, LEASE).await.unwrap() else {
        panic!()
    };
    store.release(&f, &t).await.unwrap();
    assert!(matches!(
        store.claim(&f, LEASE).await.unwrap(),
        Claim::Acquired(_)
    ));
}

async fn concurrent_claims<DB: SqlDatabase>(store: SqlStore<DB>) {
    let k = Arc::new(key(&unique("race"), "same-id"));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (store, k) = (store.clone(), k.clone());
            tokio::spawn(async move { store.claim(&k, Duration::from_secs(30)).await.unwrap() })
        })
        .collect();
    let mut acquired = 0;
    for task in tasks {
        match task.await.unwrap() {
            Claim::Acquired(_) => acquired += 1,
            Claim::InProgress { .. } => {}
            Claim::Done => panic!("nothing was completed"),
        }
    }
    assert_eq!(acquired, 1, "exactly one of 20 concurrent claims wins");
}

async fn dedup<DB: SqlDatabase>(store: SqlStore<DB>) {
    use sluice_core::{DedupClaim, DedupStore};
    let claim = |topic: String, id: &'static str, pending: Duration| {
        let store = store.clone();
        async move {
            DedupStore::claim(&store, &topic, id, pending)
                .await
                .unwrap()
        }
    };
    let topic = unique("orders");
    let window = Duration::from_millis(700);
    let pending = Duration::from_secs(60);

    // Pending while the publish is under way: a second publish can neither go nor be
    // dropped; confirmed, it is a duplicate for the window, then free.
    let DedupClaim::Claimed(token) = claim(topic.clone(), "a", pending).await else {
        panic!("first claim")
    };
    assert!(matches!(
        claim(topic.clone(), "a", pending).await,
        DedupClaim::InProgress { remaining } if remaining > Duration::from_secs(50)
    ));
    store.confirm(&topic, "a", &token, window).await.unwrap();
    assert_eq!(
        claim(topic.clone(), "a", pending).await,
        DedupClaim::Duplicate
    );
    assert!(
        matches!(
            claim(unique("other"), "a", pending).await,
            DedupClaim::Claimed(_)
        ),
        "per topic"
    );
    wait_until(Duration::from_secs(5), "the window to end", || async {
        matches!(
            claim(topic.clone(), "a", pending).await,
            DedupClaim::Claimed(_)
        )
    })
    .await;

    // A failed publish releases its claim; a stale token cannot release a newer claim.
    let DedupClaim::Claimed(failed) = claim(topic.clone(), "b", pending).await else {
        panic!()
    };
    DedupStore::release(&store, &topic, "b", &failed)
        .await
        .unwrap();
    let DedupClaim::Claimed(_newer) = claim(topic.clone(), "b", pending).await else {
        panic!("free again after a failed publish")
    };
    DedupStore::release(&store, &topic, "b", &failed)
        .await
        .unwrap();
    assert!(matches!(
        claim(topic.clone(), "b", pending).await,
        DedupClaim::InProgress { .. }
    ));

    // A publisher that died: its pending claim runs out, never counts as published.
    let DedupClaim::Claimed(_) = claim(topic.clone(), "c", Duration::from_millis(300)).await else {
        panic!()
    };
    wait_until(
        Duration::from_secs(5),
        "the pending claim to run out",
        || async {
            matches!(
                claim(topic.clone(), "c", pending).await,
                DedupClaim::Claimed(_)
            )
        },
    )
    .await;

    store.forget_topic(&topic).await.unwrap();
    assert!(
        matches!(
            claim(topic.clone(), "b", pending).await,
            DedupClaim::Claimed(_)
        ),
        "a deleted topic's window is empty"
    );
    assert!(store.purge_expired().await.is_ok());
}

#[tokio::test]
async fn postgres_store_has_the_idempotency_semantics() {
    semantics(SqlStore::new(postgres().await)).await;
}

#[tokio::test]
async fn postgres_concurrent_claims_of_one_id_acquire_once() {
    concurrent_claims(SqlStore::new(postgres().await)).await;
}

#[tokio::test]
async fn postgres_dedup_window_claims() {
    dedup(SqlStore::new(postgres().await)).await;
}

#[tokio::test]
async fn postgres_migrations_apply_once() {
    let pool = postgres().await;
    assert_eq!(sluice_sql::migrate(&pool).await.unwrap(), Vec::<i64>::new());
}

#[tokio::test]
async fn sqlite_store_has_the_idempotency_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sluice_sql::sqlite::open(dir.path().join("sluice.db"))
        .await
        .unwrap();
    semantics(SqlStore::new(pool.clone())).await;
    concurrent_claims(SqlStore::new(pool.clone())).await;
    dedup(SqlStore::new(pool.clone())).await;
    assert_eq!(sluice_sql::migrate(&pool).await.unwrap(), Vec::<i64>::new());
}

#[tokio::test]
async fn sqlite_store_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.db");
    let k = key("billing", "kept");
    {
        let store = SqlStore::new(sluice_sql::sqlite::open(&path).await.unwrap());
        let Claim::Acquired(t) = store.claim(&k, LEASE).await.unwrap() else {
            panic!()
        };
        store
            .complete(&k, &t, Duration::from_secs(3600))
            .await
            .unwrap();
        store.pool().close().await;
    }
    let store = SqlStore::new(sluice_sql::sqlite::open(&path).await.unwrap());
    assert_eq!(store.claim(&k, LEASE).await.unwrap(), Claim::Done);
}

#[tokio::test]
async fn a_missing_database_is_a_clear_retryable_error() {
    // Unreachable: retryable, and the message says which database and what Sluice did.
    let gone = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy("postgres://postgres@127.0.0.1:1/test")
        .unwrap();
    let err = SqlStore::new(gone)
        .claim(&key("billing", "x"), LEASE)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string()
            .contains("PostgreSQL while claiming billing/x"),
        "{err}"
    );
    // Tables missing: the error says to migrate.
    let dir = tempfile::tempdir().unwrap();
    let bare = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bare.db").display()
    ))
    .await
    .unwrap();
    let err = SqlStore::new(bare)
        .claim(&key("billing", "x"), LEASE)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sluice_sql::migrate"), "{err}");
}
