//! [`SqlStore`] as the [`LimiterStore`] of global rate limits and global concurrency bounds
//! on PostgreSQL or SQLite (tables `sluice_limits`, `sluice_slots`, `sluice_slot_bounds`,
//! migration 3), for workers on RabbitMQ, SQS or Kafka that share a database rather than a
//! Redis.
//!
//! Invariants:
//! - A call is one transaction whose first statement writes the row it is about (the limit's,
//!   or the bound's lock row): PostgreSQL locks that row, SQLite takes its write lock, so
//!   calls on one limit take turns and never take the same token or slot.
//! - The arithmetic is `sluice_core::limit`'s ([`Bucket`], [`grant_slots`]), on the
//!   database's clock, the one every worker shares.
//! - Slots of a holder past its lease are deleted by the next call on the bound.

use sluice_core::idempotency::{boxed, BoxFuture};
use sluice_core::limit::{grant_slots, Bucket, Grant, LimiterStore, Rate, SlotsRequest};
use sluice_core::Result;
use sqlx::{Pool, Transaction};

use crate::dialect::SqlDatabase;
use crate::store::SqlStore;

type SqlFuture<'a, T> = crate::dialect::BoxFuture<'a, Result<T, sqlx::Error>>;

/// The statements of the limiter, one implementation per database (`limit_sql!`).
#[doc(hidden)]
pub trait LimitSql: SqlDatabase {
    fn take<'a>(
        pool: &'a Pool<Self>,
        name: &'a str,
        rate: Rate,
        give_back: u32,
        want: u32,
    ) -> SqlFuture<'a, Grant>;
    fn slots<'a>(
        pool: &'a Pool<Self>,
        name: &'a str,
        holder: &'a str,
        request: SlotsRequest,
    ) -> SqlFuture<'a, u32>;
}

/// The limiter's statements for one database: `$now` is its clock in ms (as in
/// `dialect.rs`).
macro_rules! limit_sql {
    ($db:ty, $now:literal) => {
        impl LimitSql for $db {
            fn take<'a>(
                pool: &'a Pool<Self>,
                name: &'a str,
                rate: Rate,
                give_back: u32,
                want: u32,
            ) -> SqlFuture<'a, Grant> {
                Box::pin(async move {
                    let mut tx: Transaction<'static, $db> = pool.begin().await?;
                    let burst = f64::from(rate.burst.max(1));
                    // A new limit starts full; the write locks the row either way.
                    sqlx::query(concat!(
                        "INSERT INTO sluice_limits (name, tokens, at_ms) VALUES ($1, $2, ",
                        $now,
                        ") ON CONFLICT (name) DO UPDATE SET at_ms = sluice_limits.at_ms"
                    ))
                    .bind(name)
                    .bind(burst)
                    .execute(&mut *tx)
                    .await?;
                    let (tokens, at_ms, now_ms): (f64, f64, i64) = sqlx::query_as(concat!(
                        "SELECT tokens, at_ms, ",
                        $now,
                        " FROM sluice_limits WHERE name = $1"
                    ))
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await?;
                    let mut bucket = Bucket { tokens, at_ms };
                    let grant = bucket.take(rate, now_ms as f64, give_back, want);
                    sqlx::query("UPDATE sluice_limits SET tokens = $2, at_ms = $3 WHERE name = $1")
                        .bind(name)
                        .bind(bucket.tokens)
                        .bind(bucket.at_ms)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(grant)
                })
            }

            fn slots<'a>(
                pool: &'a Pool<Self>,
                name: &'a str,
                holder: &'a str,
                request: SlotsRequest,
            ) -> SqlFuture<'a, u32> {
                Box::pin(async move {
                    let mut tx: Transaction<'static, $db> = pool.begin().await?;
                    sqlx::query(
                        "INSERT INTO sluice_slot_bounds (name) VALUES ($1) \
                         ON CONFLICT (name) DO UPDATE SET name = excluded.name",
                    )
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(concat!(
                        "DELETE FROM sluice_slots WHERE name = $1 AND until_ms <= ",
                        $now
                    ))
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                    let rows: Vec<(String, i64)> =
                        sqlx::query_as("SELECT holder, held FROM sluice_slots WHERE name = $1")
                            .bind(name)
                            .fetch_all(&mut *tx)
                            .await?;
                    let mut others = 0u64;
                    let mut had = 0u32;
                    for (h, held) in rows {
                        let held = u64::try_from(held).unwrap_or(0);
                        if h == holder {
                            had = u32::try_from(held).unwrap_or(u32::MAX);
                        } else {
                            others += held;
                        }
                    }
                    let (taken, now_held) = grant_slots(others, had, request);
                    if now_held == 0 {
                        sqlx::query("DELETE FROM sluice_slots WHERE name = $1 AND holder = $2")
                            .bind(name)
                            .bind(holder)
                            .execute(&mut *tx)
                            .await?;
                    } else {
                        let ttl_ms = i64::try_from(request.ttl.as_millis())
                            .unwrap_or(i64::MAX)
                            .clamp(1, 1 << 50);
                        sqlx::query(concat!(
                            "INSERT INTO sluice_slots (name, holder, held, until_ms) \
                             VALUES ($1, $2, $3, ",
                            $now,
                            " + $4) ON CONFLICT (name, holder) DO UPDATE SET \
                             held = excluded.held, until_ms = excluded.until_ms"
                        ))
                        .bind(name)
                        .bind(holder)
                        .bind(i64::from(now_held))
                        .bind(ttl_ms)
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(taken)
                })
            }
        }
    };
}

#[cfg(feature = "postgres")]
limit_sql!(
    sqlx::Postgres,
    "(extract(epoch from clock_timestamp()) * 1000)::bigint"
);
#[cfg(feature = "sqlite")]
limit_sql!(
    sqlx::Sqlite,
    "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
);

impl<DB: LimitSql> LimiterStore for SqlStore<DB> {
    fn take<'a>(
        &'a self,
        name: &'a str,
        rate: Rate,
        give_back: u32,
        want: u32,
    ) -> BoxFuture<'a, Result<Grant>> {
        boxed(async move {
            DB::take(self.pool(), name, rate, give_back, want)
                .await
                .map_err(self.failed(format!("taking tokens of the limit {name}")))
        })
    }

    fn slots<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        request: SlotsRequest,
    ) -> BoxFuture<'a, Result<u32>> {
        boxed(async move {
            DB::slots(self.pool(), name, holder, request)
                .await
                .map_err(self.failed(format!("taking slots of the bound {name}")))
        })
    }
}
