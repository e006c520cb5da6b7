//! The SQL each database runs, behind one sealed trait: [`SqlDatabase`].
//!
//! Both dialects share their statements but for the clock expression; the `dialect!` macro
//! writes one implementation per database from the same text, so the two cannot drift.
//! Every time is milliseconds since the Unix epoch, read from the database's own clock.
//!
//! The idempotency store and the dedup window keep the same kind of row — a claim with a
//! token, or a done/confirmed marker without one, until `expires_at` — in two tables
//! ([`Table`]); one set of statements serves both.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

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

/// Which claim table a statement works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[doc(hidden)]
pub enum Table {
    /// `sluice_idempotency`, keyed by subscription and message id.
    Idempotency,
    /// `sluice_dedup`, keyed by topic and message id.
    Dedup,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[doc(hidden)]
pub enum ClaimState {
    /// Taken, with this token.
    Won(String),
    /// A done (confirmed) marker is live.
    Done,
    /// Someone else's claim is live for this long.
    Held(Duration),
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
    fn claim<'a>(
        pool: &'a Pool<Self>,
        table: Table,
        scope: &'a str,
        id: &'a str,
        token: &'a str,
        ms: i64,
    ) -> BoxFuture<'a, Result<ClaimState, sqlx::Error>>;
    #[doc(hidden)]
    fn renew<'a>(
        pool: &'a Pool<Self>,
        table: Table,
        scope: &'a str,
        id: &'a str,
        token: &'a str,
        ms: i64,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;
    #[doc(hidden)]
    fn complete<'a>(
        pool: &'a Pool<Self>,
        table: Table,
        scope: &'a str,
        id: &'a str,
        ms: i64,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
    #[doc(hidden)]
    fn release<'a>(
        pool: &'a Pool<Self>,
        table: Table,
        scope: &'a str,
        id: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
    #[doc(hidden)]
    fn forget_scope<'a>(
        pool: &'a Pool<Self>,
        table: Table,
        scope: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
    #[doc(hidden)]
    fn purge_expired(pool: &Pool<Self>) -> BoxFuture<'_, Result<u64, sqlx::Error>>;
    #[doc(hidden)]
    fn inbox_insert<'a>(
        tx: &'a mut Transaction<'static, Self>,
        subscription: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;
    /// Inserts the inbox rows of `ids` (sorted, distinct); returns those inserted now.
    #[doc(hidden)]
    fn inbox_insert_many<'a>(
        tx: &'a mut Transaction<'static, Self>,
        subscription: &'a str,
        ids: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<String>, sqlx::Error>>;
    /// Removes the inbox rows of `ids` (messages that failed in a batch that commits).
    #[doc(hidden)]
    fn inbox_remove<'a>(
        tx: &'a mut Transaction<'static, Self>,
        subscription: &'a str,
        ids: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
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
    fn relay_lease<'a>(
        pool: &'a Pool<Self>,
        owner: &'a str,
        lease_ms: i64,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;
    #[doc(hidden)]
    fn relay_unlease<'a>(
        pool: &'a Pool<Self>,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
    #[doc(hidden)]
    fn outbox_fetch(
        pool: &Pool<Self>,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<OutboxRow>, sqlx::Error>>;
    #[doc(hidden)]
    fn outbox_settle<'a>(
        pool: &'a Pool<Self>,
        sent: &'a [i64],
        parked: &'a [(i64, String)],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
    #[doc(hidden)]
    fn outbox_lag(pool: &Pool<Self>) -> BoxFuture<'_, Result<LagRow, sqlx::Error>>;
    #[doc(hidden)]
    fn outbox_purge_sent(
        pool: &Pool<Self>,
        older_than_ms: i64,
    ) -> BoxFuture<'_, Result<u64, sqlx::Error>>;
}

/// The statements of one claim table (`$t`, keyed by `$k` and `message_id`), with the
/// database's clock `$now`.
macro_rules! claim_sql {
    (claim, $t:literal, $k:literal, $now:literal) => {
        concat!(
            "INSERT INTO ",
            $t,
            " (",
            $k,
            ", message_id, token, expires_at) VALUES ($1, $2, $3, ",
            $now,
            " + $4) ON CONFLICT (",
            $k,
            ", message_id) DO UPDATE \
             SET token = excluded.token, expires_at = excluded.expires_at WHERE ",
            $t,
            ".expires_at <= ",
            $now,
            " RETURNING token"
        )
    };
    (held, $t:literal, $k:literal, $now:literal) => {
        concat!(
            "SELECT token, expires_at - ",
            $now,
            " FROM ",
            $t,
            " WHERE ",
            $k,
            " = $1 AND message_id = $2"
        )
    };
    (renew, $t:literal, $k:literal, $now:literal) => {
        concat!(
            "UPDATE ",
            $t,
            " SET expires_at = ",
            $now,
            " + $4 WHERE ",
            $k,
            " = $1 AND message_id = $2 AND token = $3 AND expires_at > ",
            $now
        )
    };
    (complete, $t:literal, $k:literal, $now:literal) => {
        concat!(
            "INSERT INTO ",
            $t,
            " (",
            $k,
            ", message_id, token, expires_at) VALUES ($1, $2, NULL, ",
            $now,
            " + $3) ON CONFLICT (",
            $k,
            ", message_id) DO UPDATE \
             SET token = NULL, expires_at = excluded.expires_at"
        )
    };
    (release, $t:literal, $k:literal, $now:literal) => {
        concat!(
            "DELETE FROM ",
            $t,
            " WHERE ",
            $k,
            " = $1 AND message_id = $2 AND token = $3"
        )
    };
    (forget, $t:literal, $k:literal, $now:literal) => {
        concat!("DELETE FROM ", $t, " WHERE ", $k, " = $1")
    };
}

/// Picks the statement `$which` for `$table`.
macro_rules! for_table {
    ($which:ident, $table:expr, $now:literal) => {
        match $table {
            Table::Idempotency => claim_sql!($which, "sluice_idempotency", "subscription", $now),
            Table::Dedup => claim_sql!($which, "sluice_dedup", "topic", $now),
        }
    };
}

/// Writes `SqlDatabase` for one database. `$now` is its clock in ms since the epoch.
macro_rules! dialect {
    ($module:ident, $db:ty, $name:literal, $now:literal, $migrations:expr) => {
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

        /// Marks exactly the rows published (a range would also mark a row whose
        /// transaction took a `seq` inside it and committed late) and parks the others, in
        /// chunks that stay under both databases' limits on bound values.
        async fn settle_in(
            tx: &mut Transaction<'static, $db>,
            sent: &[i64],
            parked: &[(i64, String)],
        ) -> Result<(), sqlx::Error> {
            for chunk in sent.chunks(1000) {
                let mut query = sqlx::QueryBuilder::<$db>::new(concat!(
                    "UPDATE sluice_outbox SET sent_at = ",
                    $now,
                    " WHERE seq IN ("
                ));
                let mut list = query.separated(", ");
                for seq in chunk {
                    list.push_bind(*seq);
                }
                query.push(")");
                query.build().execute(&mut **tx).await?;
            }
            for (seq, error) in parked {
                sqlx::query(concat!(
                    "UPDATE sluice_outbox SET parked_at = ",
                    $now,
                    ", error = $2 WHERE seq = $1"
                ))
                .bind(seq)
                .bind(error)
                .execute(&mut **tx)
                .await?;
            }
            Ok(())
        }

        impl SqlDatabase for $db {
            const MIGRATIONS: &'static [(i64, &'static str)] = $migrations;

            fn apply_migrations(
                pool: &Pool<Self>,
            ) -> BoxFuture<'_, Result<Vec<i64>, sqlx::Error>> {
                Box::pin(async move {
                    // SQLite: take the write lock at once (a deferred transaction that reads
                    // first would fail, not wait, when a writer got in between).
                    let mut tx = if $name == "SQLite" {
                        pool.begin_with("BEGIN IMMEDIATE").await?
                    } else {
                        pool.begin().await?
                    };
                    let applied = migrate_in(&mut tx).await?;
                    tx.commit().await?;
                    Ok(applied)
                })
            }

            fn claim<'a>(
                pool: &'a Pool<Self>,
                table: Table,
                scope: &'a str,
                id: &'a str,
                token: &'a str,
                ms: i64,
            ) -> BoxFuture<'a, Result<ClaimState, sqlx::Error>> {
                Box::pin(async move {
                    // The upsert takes an absent or expired key; otherwise the row tells
                    // done from held. A row that expires between the two statements is taken
                    // on the next round.
                    loop {
                        let won: Option<String> =
                            sqlx::query_scalar(for_table!(claim, table, $now))
                                .bind(scope)
                                .bind(id)
                                .bind(token)
                                .bind(ms)
                                .fetch_optional(pool)
                                .await?
                                .flatten();
                        if let Some(token) = won {
                            return Ok(ClaimState::Won(token));
                        }
                        let held: Option<(Option<String>, i64)> =
                            sqlx::query_as(for_table!(held, table, $now))
                                .bind(scope)
                                .bind(id)
                                .fetch_optional(pool)
                                .await?;
                        match held {
                            Some((None, left)) if left > 0 => return Ok(ClaimState::Done),
                            Some((Some(_), left)) if left > 0 => {
                                return Ok(ClaimState::Held(Duration::from_millis(left as u64)))
                            }
                            _ => continue,
                        }
                    }
                })
            }

            fn renew<'a>(
                pool: &'a Pool<Self>,
                table: Table,
                scope: &'a str,
                id: &'a str,
                token: &'a str,
                ms: i64,
            ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
                Box::pin(async move {
                    let done = sqlx::query(for_table!(renew, table, $now))
                        .bind(scope)
                        .bind(id)
                        .bind(token)
                        .bind(ms)
                        .execute(pool)
                        .await?;
                    Ok(done.rows_affected() == 1)
                })
            }

            fn complete<'a>(
                pool: &'a Pool<Self>,
                table: Table,
                scope: &'a str,
                id: &'a str,
                ms: i64,
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    // Unconditional: the effect happened (the message was published), even
                    // if the claim expired meanwhile.
                    sqlx::query(for_table!(complete, table, $now))
                        .bind(scope)
                        .bind(id)
                        .bind(ms)
                        .execute(pool)
                        .await?;
                    Ok(())
                })
            }

            fn release<'a>(
                pool: &'a Pool<Self>,
                table: Table,
                scope: &'a str,
                id: &'a str,
                token: &'a str,
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    sqlx::query(for_table!(release, table, $now))
                        .bind(scope)
                        .bind(id)
                        .bind(token)
                        .execute(pool)
                        .await?;
                    Ok(())
                })
            }

            fn forget_scope<'a>(
                pool: &'a Pool<Self>,
                table: Table,
                scope: &'a str,
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    sqlx::query(for_table!(forget, table, $now))
                        .bind(scope)
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
                    let c = sqlx::query(concat!(
                        "DELETE FROM sluice_jobs WHERE expires_at <= ",
                        $now
                    ))
                    .execute(pool)
                    .await?;
                    Ok(a.rows_affected() + b.rows_affected() + c.rows_affected())
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

            fn inbox_insert_many<'a>(
                tx: &'a mut Transaction<'static, Self>,
                subscription: &'a str,
                ids: &'a [&'a str],
            ) -> BoxFuture<'a, Result<Vec<String>, sqlx::Error>> {
                Box::pin(async move {
                    // One statement per 400 rows (under both databases' limits on bound
                    // values), in sorted order: two batches sharing ids lock their rows in the
                    // same order and never deadlock.
                    let mut inserted = Vec::with_capacity(ids.len());
                    for chunk in ids.chunks(400) {
                        let mut query = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO sluice_inbox (subscription, message_id, handled_at) ",
                        );
                        query.push_values(chunk, |mut row, id| {
                            row.push_bind(subscription)
                                .push_bind(*id)
                                .push(concat!($now));
                        });
                        query.push(
                            " ON CONFLICT (subscription, message_id) DO NOTHING RETURNING message_id",
                        );
                        let now: Vec<String> = query
                            .build_query_scalar()
                            .fetch_all(&mut **tx)
                            .await?;
                        inserted.extend(now);
                    }
                    Ok(inserted)
                })
            }

            fn inbox_remove<'a>(
                tx: &'a mut Transaction<'static, Self>,
                subscription: &'a str,
                ids: &'a [&'a str],
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    for chunk in ids.chunks(400) {
                        let mut query = sqlx::QueryBuilder::<$db>::new(
                            "DELETE FROM sluice_inbox WHERE subscription = ",
                        );
                        query.push_bind(subscription).push(" AND message_id IN (");
                        let mut list = query.separated(", ");
                        for id in chunk {
                            list.push_bind(*id);
                        }
                        query.push(")");
                        query.build().execute(&mut **tx).await?;
                    }
                    Ok(())
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

            fn relay_lease<'a>(
                pool: &'a Pool<Self>,
                owner: &'a str,
                lease_ms: i64,
            ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
                Box::pin(async move {
                    // Taken when free, expired, or already ours (then renewed).
                    let held: Option<String> = sqlx::query_scalar(concat!(
                        "INSERT INTO sluice_outbox_relay (id, owner, expires_at) VALUES (1, $1, ",
                        $now,
                        " + $2) ON CONFLICT (id) DO UPDATE \
                         SET owner = excluded.owner, expires_at = excluded.expires_at \
                         WHERE sluice_outbox_relay.owner = excluded.owner \
                         OR sluice_outbox_relay.expires_at <= ",
                        $now,
                        " RETURNING owner"
                    ))
                    .bind(owner)
                    .bind(lease_ms)
                    .fetch_optional(pool)
                    .await?;
                    Ok(held.is_some())
                })
            }

            fn relay_unlease<'a>(
                pool: &'a Pool<Self>,
                owner: &'a str,
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    sqlx::query("DELETE FROM sluice_outbox_relay WHERE id = 1 AND owner = $1")
                        .bind(owner)
                        .execute(pool)
                        .await?;
                    Ok(())
                })
            }

            fn outbox_fetch(
                pool: &Pool<Self>,
                limit: i64,
            ) -> BoxFuture<'_, Result<Vec<OutboxRow>, sqlx::Error>> {
                Box::pin(async move {
                    use sqlx::Row;
                    let rows = sqlx::query(
                        "SELECT seq, topic, message_id, message_type, routing_key, \
                         ordering_key, content_type, headers, payload, deliver_at, created_at \
                         FROM sluice_outbox WHERE sent_at IS NULL AND parked_at IS NULL \
                         ORDER BY seq LIMIT $1",
                    )
                    .bind(limit)
                    .fetch_all(pool)
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

            fn outbox_settle<'a>(
                pool: &'a Pool<Self>,
                sent: &'a [i64],
                parked: &'a [(i64, String)],
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    let mut tx = pool.begin().await?;
                    settle_in(&mut tx, sent, parked).await?;
                    tx.commit().await
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
    &[
        (1, include_str!("../migrations/postgres/0001_sluice.sql")),
        (2, include_str!("../migrations/postgres/0002_jobs.sql")),
        (3, include_str!("../migrations/postgres/0003_limits.sql")),
    ]
);

#[cfg(feature = "sqlite")]
dialect!(
    sqlite,
    sqlx::Sqlite,
    "SQLite",
    "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    &[
        (1, include_str!("../migrations/sqlite/0001_sluice.sql")),
        (2, include_str!("../migrations/sqlite/0002_jobs.sql")),
        (3, include_str!("../migrations/sqlite/0003_limits.sql")),
    ]
);
