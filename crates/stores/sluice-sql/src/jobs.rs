//! [`SqlStore`] as the [`JobStore`] of job status, cancellations and unique locks on
//! PostgreSQL or SQLite (table `sluice_jobs`, migration 2; expired rows go with
//! [`SqlStore::purge_expired`]).
//!
//! Each write draws a fresh version (a PostgreSQL sequence; an SQLite AUTOINCREMENT table,
//! which never hands out a number twice), then lands only if the row still has the version
//! the caller read (or, for a create, if no live row exists): one statement, so two writers
//! of one key cannot both win. Expiry compares with the database's clock.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::idempotency::{boxed, BoxFuture};
use sluice_core::jobs::{JobStore, Versioned};
use sluice_core::Result;
use sqlx::Pool;

use crate::dialect::SqlDatabase;
use crate::store::{millis, SqlStore};

type SqlFuture<'a, T> = crate::dialect::BoxFuture<'a, Result<T, sqlx::Error>>;

/// The statements of the job store, one implementation per database (`job_sql!`).
#[doc(hidden)]
pub trait JobSql: SqlDatabase {
    fn next_version(pool: &Pool<Self>) -> SqlFuture<'_, i64>;
    fn load<'a>(pool: &'a Pool<Self>, key: &'a str) -> SqlFuture<'a, Option<(String, i64)>>;
    fn create<'a>(
        pool: &'a Pool<Self>,
        key: &'a str,
        value: &'a str,
        version: i64,
        ttl_ms: i64,
    ) -> SqlFuture<'a, bool>;
    fn update<'a>(
        pool: &'a Pool<Self>,
        key: &'a str,
        expected: i64,
        value: &'a str,
        version: i64,
        ttl_ms: i64,
    ) -> SqlFuture<'a, bool>;
    fn remove<'a>(pool: &'a Pool<Self>, key: &'a str, expected: i64) -> SqlFuture<'a, bool>;
    fn scan<'a>(
        pool: &'a Pool<Self>,
        prefix: &'a str,
        limit: i64,
    ) -> SqlFuture<'a, Vec<(String, String, i64)>>;
}

/// The job statements for one database: `$now` is its clock in ms (as in `dialect.rs`),
/// `$next` the statement drawing a version, `$drop_drawn` the one forgetting the numbers
/// drawn before it (empty: nothing to forget).
macro_rules! job_sql {
    ($db:ty, $now:literal, $next:literal, $drop_drawn:literal) => {
        impl JobSql for $db {
            fn next_version(pool: &Pool<Self>) -> SqlFuture<'_, i64> {
                Box::pin(async move {
                    let version: i64 = sqlx::query_scalar($next).fetch_one(pool).await?;
                    if !$drop_drawn.is_empty() {
                        sqlx::query($drop_drawn).bind(version).execute(pool).await?;
                    }
                    Ok(version)
                })
            }

            fn load<'a>(pool: &'a Pool<Self>, key: &'a str) -> SqlFuture<'a, Option<(String, i64)>> {
                Box::pin(async move {
                    sqlx::query_as(concat!(
                        "SELECT value, version FROM sluice_jobs WHERE key = $1 AND expires_at > ",
                        $now
                    ))
                    .bind(key)
                    .fetch_optional(pool)
                    .await
                })
            }

            fn create<'a>(
                pool: &'a Pool<Self>,
                key: &'a str,
                value: &'a str,
                version: i64,
                ttl_ms: i64,
            ) -> SqlFuture<'a, bool> {
                Box::pin(async move {
                    let landed: Option<i64> = sqlx::query_scalar(concat!(
                        "INSERT INTO sluice_jobs (key, value, version, expires_at) VALUES ($1, $2, $3, ",
                        $now,
                        " + $4) ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                         version = excluded.version, expires_at = excluded.expires_at \
                         WHERE sluice_jobs.expires_at <= ",
                        $now,
                        " RETURNING version"
                    ))
                    .bind(key)
                    .bind(value)
                    .bind(version)
                    .bind(ttl_ms)
                    .fetch_optional(pool)
                    .await?;
                    Ok(landed.is_some())
                })
            }

            fn update<'a>(
                pool: &'a Pool<Self>,
                key: &'a str,
                expected: i64,
                value: &'a str,
                version: i64,
                ttl_ms: i64,
            ) -> SqlFuture<'a, bool> {
                Box::pin(async move {
                    let done = sqlx::query(concat!(
                        "UPDATE sluice_jobs SET value = $1, version = $2, expires_at = ",
                        $now,
                        " + $3 WHERE key = $4 AND version = $5 AND expires_at > ",
                        $now
                    ))
                    .bind(value)
                    .bind(version)
                    .bind(ttl_ms)
                    .bind(key)
                    .bind(expected)
                    .execute(pool)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            }

            fn remove<'a>(pool: &'a Pool<Self>, key: &'a str, expected: i64) -> SqlFuture<'a, bool> {
                Box::pin(async move {
                    let done = sqlx::query(concat!(
                        "DELETE FROM sluice_jobs WHERE key = $1 AND version = $2 AND expires_at > ",
                        $now
                    ))
                    .bind(key)
                    .bind(expected)
                    .execute(pool)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            }

            fn scan<'a>(
                pool: &'a Pool<Self>,
                prefix: &'a str,
                limit: i64,
            ) -> SqlFuture<'a, Vec<(String, String, i64)>> {
                Box::pin(async move {
                    sqlx::query_as(concat!(
                        "SELECT key, value, version FROM sluice_jobs \
                         WHERE substr(key, 1, length($1)) = $1 AND expires_at > ",
                        $now,
                        " ORDER BY version DESC LIMIT $2"
                    ))
                    .bind(prefix)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                })
            }
        }
    };
}

#[cfg(feature = "postgres")]
job_sql!(
    sqlx::Postgres,
    "(extract(epoch from clock_timestamp()) * 1000)::bigint",
    "SELECT nextval('sluice_jobs_version')",
    ""
);

#[cfg(feature = "sqlite")]
job_sql!(
    sqlx::Sqlite,
    "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    "INSERT INTO sluice_jobs_version DEFAULT VALUES RETURNING id",
    // Numbers drawn are not needed once drawn: AUTOINCREMENT remembers the highest.
    "DELETE FROM sluice_jobs_version WHERE id < $1"
);

impl<DB: JobSql> SqlStore<DB> {
    /// The store as a shared [`JobStore`] (job status, cancellations and unique locks,
    /// table `sluice_jobs`), for `Jobs::job_store`.
    pub fn into_job_store(self) -> Arc<dyn JobStore> {
        Arc::new(self)
    }
}

fn version(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

fn text(value: &[u8]) -> Result<&str> {
    std::str::from_utf8(value).map_err(|_| {
        sluice_core::Error::backend("a job store document must be UTF-8 (JSON)", false)
    })
}

impl<DB: JobSql> JobStore for SqlStore<DB> {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>>> {
        boxed(async move {
            let row = DB::load(self.pool(), key)
                .await
                .map_err(self.failed(format!("reading job record {key}")))?;
            Ok(row.map(|(value, v)| Versioned {
                value: value.into_bytes(),
                version: version(v),
            }))
        })
    }

    fn swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        boxed(async move {
            let value = text(value)?;
            let what = format!("writing job record {key}");
            let next = DB::next_version(self.pool())
                .await
                .map_err(self.failed(what.clone()))?;
            let ttl = millis(ttl).max(1);
            let landed = match expected {
                None => DB::create(self.pool(), key, value, next, ttl).await,
                Some(expected) => {
                    let expected = i64::try_from(expected).unwrap_or(-1);
                    DB::update(self.pool(), key, expected, value, next, ttl).await
                }
            }
            .map_err(self.failed(what.clone()))?;
            Ok(landed.then_some(version(next)))
        })
    }

    fn remove<'a>(&'a self, key: &'a str, expected: u64) -> BoxFuture<'a, Result<bool>> {
        boxed(async move {
            let expected = i64::try_from(expected).unwrap_or(-1);
            DB::remove(self.pool(), key, expected)
                .await
                .map_err(self.failed(format!("removing job record {key}")))
        })
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, Versioned)>>> {
        boxed(async move {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = DB::scan(self.pool(), prefix, limit)
                .await
                .map_err(self.failed(format!("listing job records under {prefix}")))?;
            Ok(rows
                .into_iter()
                .map(|(key, value, v)| {
                    (
                        key,
                        Versioned {
                            value: value.into_bytes(),
                            version: version(v),
                        },
                    )
                })
                .collect())
        })
    }
}
