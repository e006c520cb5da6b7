//! The SQL each database runs, behind one sealed trait: [`SqlDatabase`].
//!
//! Both dialects share their statements but for the clock expression and the relay's lock
//! (an advisory lock on PostgreSQL, a write to a lock row on SQLite); the `dialect!` macro
//! writes one implementation per database from the same text, so the two cannot drift.
//! Every time is milliseconds since the Unix epoch, read from the database's own clock.

use std::future::Future;
use std::pin::Pin;

use sluice_core::Claim;
use sluice_core::ClaimToken;
use sqlx::{Database, Pool, Transaction};

/// A boxed, `Send` future (the trait's methods return them so it stays object-free and
/// implementable per database).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One row of the outbox, as written and as read back by the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Its position: the relay publishes in this order.
    pub seq: i64,
    /// The topic it is published to.
    pub topic: String,
    /// The message id (kept, so consumers deduplicate a relay's repeats).
    pub message_id: String,
    /// The event type.
    pub message_type: Option<String>,
    /// The routing key.
    pub routing_key: Option<String>,
    /// The ordering key.
    pub ordering_key: Option<String>,
    /// The payload's content type.
    pub content_type: Option<String>,
    /// The headers, as a JSON object of strings.
    pub headers: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// When the message becomes deliverable (ms since the epoch), if delayed.
    pub deliver_at: Option<i64>,
    /// When it was written (ms since the epoch, database clock).
    pub created_at: i64,
}

/// Unsent outbox rows and the database's time, for the relay's lag.
#[derive(Debug, Clone, Copy)]
#[doc(hidden)]
pub struct LagRow {
    pub unsent: i64,
    pub parked: i64,
    pub oldest_created_at: Option<i64>,
    pub now: i64,
}

mod sealed {
    pub trait Sealed {}
}

/// A database Sluice's SQL runs on: [`sqlx::Postgres`] (feature `postgres`) and
/// [`sqlx::Sqlite`] (feature `sqlite`). Sealed: the statements are Sluice's.
///
/// The methods are the building blocks of [`SqlStore`](crate::SqlStore),
/// [`Inbox`](crate::Inbox) and [`Outbox`](crate::Outbox); call those instead.
pub trait SqlDatabase: Database + Sync + sealed::Sealed {
    /// Sluice's migrations: `(version, SQL)`, in order.
    const MIGRATIONS: &'static [(i64, &'static str)];

    #[doc(hidden)]
    fn apply_migrations(pool: &Pool<Self>) -> BoxFuture<'_, Result<Vec<i64>, sqlx::Error>>;
    #[doc(hidden)]
    fn idem_claim<'a>(
        pool: &'a Pool<Self>,
        subscription: &'a str,
        id: &'a str,
        token: &'a str,
        lease_ms: i64,
    ) -> BoxFuture<'a, Result<Claim, sqlx::Error>>;
    #[doc(hidden)]
    fn idem_renew<'a>(
        pool: &'a Pool<Self>,
        subscription: &'a str,
        id: &'a str,
        token: &'a ClaimToken,
        lease_ms: i64,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;
    #[doc(hidden)]
    fn idem_complete<'a>(
        pool: &'a Pool<Self>,
        subscription: &'a str,
        id: &'a str,
        ttl_ms: i64,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
    #[doc(hidden)]
    fn idem_release<'a>(
        pool: &'a Pool<Self>,
        subscription: &'a str,
        id: &'a str,
        token: &'a ClaimToken,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
    #[doc(hidden)]
    fn purge_expired(pool: &Pool<Self>) -> BoxFuture<'_, Result<u64, sqlx::Error>>;
    #[doc(hidden)]
    fn dedup_claim<'a>(
        pool: &'a Pool<Self>,
        topic: &'a str,
        id: &'a str,
        window_ms: i64,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;
    #[doc(hidden)]
    fn dedup_release<'a>(
        pool: &'a Pool<Self>,
        topic: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
    #[doc(hidden)]
    fn dedup_forget<'a>(
        pool: &'a Pool<Self>,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
    #[doc(hidden)]
    fn inbox_insert<'a>(
        tx: &'a mut Transaction<'static, Self>,
        subscription: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;
    #[doc(hidden)]
    fn inbox_contains<'a>(
        pool: &'a Pool<Self>,
        subscription: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;
    #[doc(hidden)]
    fn inbox_purge(
        pool: &Pool<Self>,
        older_than_ms: i64,
    ) -> BoxFuture<'_, Result<u64, sqlx::Error>>;
    #[doc(hidden)]
    fn outbox_insert<'a>(
        conn: &'a mut Self::Connection,
        row: &'a OutboxRow,
    ) -> BoxFuture<'a, Result<i64, sqlx::Error>>;
    #[doc(hidden)]
    fn outbox_lock<'a>(
        tx: &'a mut Transaction<'static, Self>,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;
    #[doc(hidden)]
    fn outbox_fetch<'a>(
        tx: &'a mut Transaction<'static, Self>,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<OutboxRow>, sqlx::Error>>;
    #[doc(hidden)]
    fn outbox_mark_sent<'a>(
        tx: &'a mut Transaction<'static, Self>,
        seqs: &'a [i64],
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;
    #[doc(hidden)]
    fn outbox_park<'a>(
        tx: &'a mut Transaction<'static, Self>,
        seq: i64,
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
    #[doc(hidden)]
    fn outbox_lag(pool: &Pool<Self>) -> BoxFuture<'_, Result<LagRow, sqlx::Error>>;
    #[doc(hidden)]
    fn outbox_purge_sent(
        pool: &Pool<Self>,
        older_than_ms: i64,
    ) -> BoxFuture<'_, Result<u64, sqlx::Error>>;
}

/// Writes `SqlDatabase` for one database. `$now` is its clock in ms since the epoch;
/// `$lock` the relay's lock statement, answering one boolean column.
macro_rules! dialect {
    ($module:ident, $db:ty, $name:literal, $now:literal, $lock:literal, $migrations:expr) => {
        mod $module {
        use super::*;

        impl sealed::Sealed for $db {}

        /// Applies the migrations not yet applied, in the caller's transaction.
        async fn migrate_in(tx: &mut Transaction<'static, $db>) -> Result<Vec<i64>, sqlx::Error> {
            if $name == "PostgreSQL" {
                // Two processes migrating at once wait for each other.
                sqlx::query("SELECT pg_advisory_xact_lock(7306010563952132162)")
                    .execute(&mut **tx)
                    .await?;
            }
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS sluice_schema_migrations (\
                 version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .execute(&mut **tx)
            .await?;
            let done: Vec<i64> = sqlx::query_scalar("SELECT version FROM sluice_schema_migrations")
                .fetch_all(&mut **tx)
                .await?;
            let mut applied = Vec::new();
            for &(version, sql) in <$db as SqlDatabase>::MIGRATIONS {
                if done.contains(&version) {
                    continue;
                }
                // Several statements: sent as one simple query (no arguments).
                sqlx::Executor::execute(&mut **tx, sql).await?;
                sqlx::query(concat!(
                    "INSERT INTO sluice_schema_migrations (version, applied_at) VALUES ($1, ",
                    $now,
                    ") ON CONFLICT (version) DO NOTHING"
                ))
                .bind(version)
                .execute(&mut **tx)
                .await?;
                applied.push(version);
            }
            Ok(applied)
        }

        impl SqlDatabase for $db {
            const MIGRATIONS: &'static [(i64, &'static str)] = $migrations;

            fn apply_migrations(
                pool: &Pool<Self>,
            ) -> BoxFuture<'_, Result<Vec<i64>, sqlx::Error>> {
                Box::pin(async move {
                    let mut tx = pool.begin().await?;
                    let applied = migrate_in(&mut tx).await?;
                    tx.commit().await?;
                    Ok(applied)
                })
            }

            fn idem_claim<'a>(
                pool: &'a Pool<Self>,
                subscription: &'a str,
                id: &'a str,
                token: &'a str,
                lease_ms: i64,
            ) -> BoxFuture<'a, Result<Claim, sqlx::Error>> {
                Box::pin(async move {
                    // The upsert takes an absent or expired key; otherwise the row tells
                    // done from in progress. A row that expires between the two statements
                    // is taken on the next round.
                    loop {
                        let won: Option<String> = sqlx::query_scalar(concat!(
                            "INSERT INTO sluice_idempotency \
                             (subscription, message_id, token, expires_at) \
                             VALUES ($1, $2, $3, ",
                            $now,
                            " + $4) ON CONFLICT (subscription, message_id) DO UPDATE \
                             SET token = excluded.token, expires_at = excluded.expires_at \
                             WHERE sluice_idempotency.expires_at <= ",
                            $now,
                            " RETURNING token"
                        ))
                        .bind(subscription)
                        .bind(id)
                        .bind(token)
                        .bind(lease_ms)
                        .fetch_optional(pool)
                        .await?
                        .flatten();
                        if let Some(token) = won {
                            return Ok(Claim::Acquired(ClaimToken(token)));
                        }
                        let held: Option<(Option<String>, i64)> = sqlx::query_as(concat!(
                            "SELECT token, expires_at - ",
                            $now,
                            " FROM sluice_idempotency \
                             WHERE subscription = $1 AND message_id = $2"
                        ))
                        .bind(subscription)
                        .bind(id)
                        .fetch_optional(pool)
                        .await?;
                        match held {
                            Some((None, left)) if left > 0 => return Ok(Claim::Done),
                            Some((Some(_), left)) if left > 0 => {
                                return Ok(Claim::InProgress {
                                    remaining: std::time::Duration::from_millis(left as u64),
                                })
                            }
                            _ => continue,
                        }
                    }
                })
            }

            fn idem_renew<'a>(
                pool: &'a Pool<Self>,
                subscription: &'a str,
                id: &'a str,
                token: &'a ClaimToken,
                lease_ms: i64,
            ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
                Box::pin(async move {
                    let done = sqlx::query(concat!(
                        "UPDATE sluice_idempotency SET expires_at = ",
                        $now,
                        " + $4 WHERE subscription = $1 AND message_id = $2 AND token = $3 \
                         AND expires_at > ",
                        $now
                    ))
                    .bind(subscription)
                    .bind(id)
                    .bind(&token.0)
                    .bind(lease_ms)
                    .execute(pool)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            }

            fn idem_complete<'a>(
                pool: &'a Pool<Self>,
                subscription: &'a str,
                id: &'a str,
                ttl_ms: i64,
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    // Unconditional: the effect happened, even if the claim expired meanwhile.
                    sqlx::query(concat!(
                        "INSERT INTO sluice_idempotency \
                         (subscription, message_id, token, expires_at) VALUES ($1, $2, NULL, ",
                        $now,
                        " + $3) ON CONFLICT (subscription, message_id) DO UPDATE \
                         SET token = NULL, expires_at = excluded.expires_at"
                    ))
                    .bind(subscription)
                    .bind(id)
                    .bind(ttl_ms)
                    .execute(pool)
                    .await?;
                    Ok(())
                })
            }

            fn idem_release<'a>(
                pool: &'a Pool<Self>,
                subscription: &'a str,
                id: &'a str,
                token: &'a ClaimToken,
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    sqlx::query(
                        "DELETE FROM sluice_idempotency \
                         WHERE subscription = $1 AND message_id = $2 AND token = $3",
                    )
                    .bind(subscription)
                    .bind(id)
                    .bind(&token.0)
                    .execute(pool)
                    .await?;
                    Ok(())
                })
            }

            fn purge_expired(pool: &Pool<Self>) -> BoxFuture<'_, Result<u64, sqlx::Error>> {
                Box::pin(async move {
                    let a = sqlx::query(concat!(
                        "DELETE FROM sluice_idempotency WHERE expires_at <= ",
                        $now
                    ))
                    .execute(pool)
                    .await?;
                    let b = sqlx::query(concat!(
                        "DELETE FROM sluice_dedup WHERE expires_at <= ",
                        $now
                    ))
                    .execute(pool)
                    .await?;
                    Ok(a.rows_affected() + b.rows_affected())
                })
            }

            fn dedup_claim<'a>(
                pool: &'a Pool<Self>,
                topic: &'a str,
                id: &'a str,
                window_ms: i64,
            ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
                Box::pin(async move {
                    let won: Option<String> = sqlx::query_scalar(concat!(
                        "INSERT INTO sluice_dedup (topic, message_id, expires_at) \
                         VALUES ($1, $2, ",
                        $now,
                        " + $3) ON CONFLICT (topic, message_id) DO UPDATE \
                         SET expires_at = excluded.expires_at \
                         WHERE sluice_dedup.expires_at <= ",
                        $now,
                        " RETURNING message_id"
                    ))
                    .bind(topic)
                    .bind(id)
                    .bind(window_ms)
                    .fetch_optional(pool)
                    .await?;
                    Ok(won.is_some())
                })
            }

            fn dedup_release<'a>(
                pool: &'a Pool<Self>,
                topic: &'a str,
                id: &'a str,
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    sqlx::query("DELETE FROM sluice_dedup WHERE topic = $1 AND message_id = $2")
                        .bind(topic)
                        .bind(id)
                        .execute(pool)
                        .await?;
                    Ok(())
                })
            }

            fn dedup_forget<'a>(
                pool: &'a Pool<Self>,
                topic: &'a str,
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    sqlx::query("DELETE FROM sluice_dedup WHERE topic = $1")
                        .bind(topic)
                        .execute(pool)
                        .await?;
                    Ok(())
                })
            }

            fn inbox_insert<'a>(
                tx: &'a mut Transaction<'static, Self>,
                subscription: &'a str,
                id: &'a str,
            ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
                Box::pin(async move {
                    // A concurrent copy's uncommitted row makes this wait for its
                    // transaction: then it conflicts (done) or inserts (the other rolled back).
                    let done = sqlx::query(concat!(
                        "INSERT INTO sluice_inbox (subscription, message_id, handled_at) \
                         VALUES ($1, $2, ",
                        $now,
                        ") ON CONFLICT (subscription, message_id) DO NOTHING"
                    ))
                    .bind(subscription)
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            }

            fn inbox_contains<'a>(
                pool: &'a Pool<Self>,
                subscription: &'a str,
                id: &'a str,
            ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
                Box::pin(async move {
                    let found: Option<i64> = sqlx::query_scalar(
                        "SELECT handled_at FROM sluice_inbox \
                         WHERE subscription = $1 AND message_id = $2",
                    )
                    .bind(subscription)
                    .bind(id)
                    .fetch_optional(pool)
                    .await?;
                    Ok(found.is_some())
                })
            }

            fn inbox_purge(
                pool: &Pool<Self>,
                older_than_ms: i64,
            ) -> BoxFuture<'_, Result<u64, sqlx::Error>> {
                Box::pin(async move {
                    let done = sqlx::query(concat!(
                        "DELETE FROM sluice_inbox WHERE handled_at < ",
                        $now,
                        " - $1"
                    ))
                    .bind(older_than_ms)
                    .execute(pool)
                    .await?;
                    Ok(done.rows_affected())
                })
            }

            fn outbox_insert<'a>(
                conn: &'a mut Self::Connection,
                row: &'a OutboxRow,
            ) -> BoxFuture<'a, Result<i64, sqlx::Error>> {
                Box::pin(async move {
                    sqlx::query_scalar(concat!(
                        "INSERT INTO sluice_outbox (topic, message_id, message_type, \
                         routing_key, ordering_key, content_type, headers, payload, \
                         deliver_at, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, ",
                        $now,
                        ") RETURNING seq"
                    ))
                    .bind(&row.topic)
                    .bind(&row.message_id)
                    .bind(&row.message_type)
                    .bind(&row.routing_key)
                    .bind(&row.ordering_key)
                    .bind(&row.content_type)
                    .bind(&row.headers)
                    .bind(&row.payload)
                    .bind(row.deliver_at)
                    .fetch_one(conn)
                    .await
                })
            }

            fn outbox_lock<'a>(
                tx: &'a mut Transaction<'static, Self>,
            ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
                Box::pin(async move {
                    let held: bool = sqlx::query_scalar($lock).fetch_one(&mut **tx).await?;
                    Ok(held)
                })
            }

            fn outbox_fetch<'a>(
                tx: &'a mut Transaction<'static, Self>,
                limit: i64,
            ) -> BoxFuture<'a, Result<Vec<OutboxRow>, sqlx::Error>> {
                Box::pin(async move {
                    use sqlx::Row;
                    let rows = sqlx::query(
                        "SELECT seq, topic, message_id, message_type, routing_key, \
                         ordering_key, content_type, headers, payload, deliver_at, created_at \
                         FROM sluice_outbox WHERE sent_at IS NULL AND parked_at IS NULL \
                         ORDER BY seq LIMIT $1",
                    )
                    .bind(limit)
                    .fetch_all(&mut **tx)
                    .await?;
                    rows.into_iter()
                        .map(|r| {
                            Ok(OutboxRow {
                                seq: r.try_get(0)?,
                                topic: r.try_get(1)?,
                                message_id: r.try_get(2)?,
                                message_type: r.try_get(3)?,
                                routing_key: r.try_get(4)?,
                                ordering_key: r.try_get(5)?,
                                content_type: r.try_get(6)?,
                                headers: r.try_get(7)?,
                                payload: r.try_get(8)?,
                                deliver_at: r.try_get(9)?,
                                created_at: r.try_get(10)?,
                            })
                        })
                        .collect()
                })
            }

            fn outbox_mark_sent<'a>(
                tx: &'a mut Transaction<'static, Self>,
                seqs: &'a [i64],
            ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
                Box::pin(async move {
                    if seqs.is_empty() {
                        return Ok(0);
                    }
                    // Exactly the rows published: a row with a seq inside the batch's range
                    // may commit later (sequences are handed out before commit).
                    let mut query = sqlx::QueryBuilder::<$db>::new(concat!(
                        "UPDATE sluice_outbox SET sent_at = ",
                        $now,
                        " WHERE seq IN ("
                    ));
                    let mut list = query.separated(", ");
                    for seq in seqs {
                        list.push_bind(*seq);
                    }
                    query.push(")");
                    let done = query.build().execute(&mut **tx).await?;
                    Ok(done.rows_affected())
                })
            }

            fn outbox_park<'a>(
                tx: &'a mut Transaction<'static, Self>,
                seq: i64,
                error: &'a str,
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    sqlx::query(concat!(
                        "UPDATE sluice_outbox SET parked_at = ",
                        $now,
                        ", error = $2 WHERE seq = $1"
                    ))
                    .bind(seq)
                    .bind(error)
                    .execute(&mut **tx)
                    .await?;
                    Ok(())
                })
            }

            fn outbox_lag(pool: &Pool<Self>) -> BoxFuture<'_, Result<LagRow, sqlx::Error>> {
                Box::pin(async move {
                    let (unsent, parked, oldest_created_at, now): (i64, i64, Option<i64>, i64) =
                        sqlx::query_as(concat!(
                            "SELECT \
                             coalesce(sum(CASE WHEN parked_at IS NULL THEN 1 ELSE 0 END), 0), \
                             coalesce(sum(CASE WHEN parked_at IS NULL THEN 0 ELSE 1 END), 0), \
                             min(CASE WHEN parked_at IS NULL THEN created_at END), ",
                            $now,
                            " FROM sluice_outbox WHERE sent_at IS NULL"
                        ))
                        .fetch_one(pool)
                        .await?;
                    Ok(LagRow {
                        unsent,
                        parked,
                        oldest_created_at,
                        now,
                    })
                })
            }

            fn outbox_purge_sent(
                pool: &Pool<Self>,
                older_than_ms: i64,
            ) -> BoxFuture<'_, Result<u64, sqlx::Error>> {
                Box::pin(async move {
                    let done = sqlx::query(concat!(
                        "DELETE FROM sluice_outbox WHERE sent_at IS NOT NULL AND sent_at < ",
                        $now,
                        " - $1"
                    ))
                    .bind(older_than_ms)
                    .execute(pool)
                    .await?;
                    Ok(done.rows_affected())
                })
            }
        }
        }
    };
}

#[cfg(feature = "postgres")]
dialect!(
    postgres,
    sqlx::Postgres,
    "PostgreSQL",
    "(extract(epoch from clock_timestamp()) * 1000)::bigint",
    // One relay at a time per outbox table (schema); the others find it taken and wait
    // for their turn.
    "SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '.sluice_outbox'))",
    &[(1, include_str!("../migrations/postgres/0001_sluice.sql"))]
);

#[cfg(feature = "sqlite")]
dialect!(
    sqlite,
    sqlx::Sqlite,
    "SQLite",
    "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    // The write takes SQLite's write lock; a second relay waits for it (busy timeout).
    "INSERT INTO sluice_outbox_relay (id, beat_at) VALUES (1, 0) \
     ON CONFLICT (id) DO UPDATE SET beat_at = sluice_outbox_relay.beat_at + 1 RETURNING 1 = 1",
    &[(1, include_str!("../migrations/sqlite/0001_sluice.sql"))]
);
