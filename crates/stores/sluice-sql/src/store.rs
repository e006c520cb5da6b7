//! [`SqlStore`]: the durable idempotency store and dedup-window store on PostgreSQL or
//! SQLite, with the semantics of DESIGN §2 (the same as `InMemoryStore` and `Claims`); its
//! job store is in `jobs.rs`.
//!
//! A claim is a row with a token and an expiry; a done marker is the same row with no token.
//! Every comparison uses the database's clock, so consumers on several hosts agree on when
//! a claim expired. Expired rows are treated as absent and removed by
//! [`purge_expired`](SqlStore::purge_expired) (run it from [`SqlStore::spawn_cleanup`]).

use std::sync::Arc;
use std::time::Duration;

use sluice_core::idempotency::{boxed, BoxFuture};
use sluice_core::{
    Claim, ClaimToken, DedupClaim, DedupStore, IdempotencyKey, IdempotencyStore, Result,
};
use sqlx::Pool;
use tokio_util::sync::CancellationToken;

use crate::dialect::{ClaimState, SqlDatabase, Table};
use crate::error::db_error;

/// Durable idempotency and dedup claims in a SQL database, shared by every consumer and
/// publisher pointed at it. Cheap to clone (a pool handle).
///
/// Needs Sluice's tables: call [`migrate`](crate::migrate) once at start-up.
pub struct SqlStore<DB: SqlDatabase> {
    pool: Pool<DB>,
}

impl<DB: SqlDatabase> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
        }
    }
}

impl<DB: SqlDatabase> std::fmt::Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("database", &<DB as sqlx::Database>::NAME)
            .finish_non_exhaustive()
    }
}

/// Runs `purge` every `every` until `shutdown`, logging what it removed (as `what`
/// cleanup) or why it failed: the cleanup tasks of the store and the inbox.
pub(crate) fn spawn_purging<F, Fut>(
    every: Duration,
    shutdown: CancellationToken,
    what: &'static str,
    mut purge: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<u64>> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match purge().await {
                Ok(n) if n > 0 => tracing::debug!(removed = n, "{what} cleanup"),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "{what} cleanup failed"),
            }
        }
    })
}

/// Milliseconds of a duration, saturating (a TTL of `Duration::MAX` is "for ever").
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

impl<DB: SqlDatabase> SqlStore<DB> {
    /// A store on `pool`.
    pub fn new(pool: Pool<DB>) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// Removes expired claims, done markers, dedup claims and job records; returns how many.
    pub async fn purge_expired(&self) -> Result<u64> {
        DB::purge_expired(&self.pool).await.map_err(|e| {
            db_error(
                <DB as sqlx::Database>::NAME,
                "removing expired idempotency rows",
                e,
            )
        })
    }

    /// Runs [`purge_expired`](Self::purge_expired) every `every` until `shutdown`.
    pub fn spawn_cleanup(
        &self,
        every: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        spawn_purging(every, shutdown, "idempotency", move || {
            let store = store.clone();
            async move { store.purge_expired().await }
        })
    }

    /// The store as a shared [`DedupStore`], for a backend's options.
    pub fn into_dedup_store(self) -> Arc<dyn DedupStore> {
        Arc::new(self)
    }
}

impl<DB: SqlDatabase> SqlStore<DB> {
    pub(crate) fn failed(
        &self,
        operation: String,
    ) -> impl FnOnce(sqlx::Error) -> sluice_core::Error {
        move |e| db_error(<DB as sqlx::Database>::NAME, &operation, e)
    }
}

impl<DB: SqlDatabase> IdempotencyStore for SqlStore<DB> {
    fn claim<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim>> {
        boxed(async move {
            let token = uuid::Uuid::now_v7().to_string();
            let (sub, id) = (key.subscription.as_str(), key.id.as_str());
            let state = DB::claim(
                &self.pool,
                Table::Idempotency,
                sub,
                id,
                &token,
                millis(lease).max(1),
            )
            .await
            .map_err(self.failed(format!("claiming {key}")))?;
            Ok(match state {
                ClaimState::Won(token) => Claim::Acquired(ClaimToken(token)),
                ClaimState::Done => Claim::Done,
                ClaimState::Held(remaining) => Claim::InProgress { remaining },
            })
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        token: &'a ClaimToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        boxed(async move {
            let (sub, id) = (key.subscription.as_str(), key.id.as_str());
            DB::renew(
                &self.pool,
                Table::Idempotency,
                sub,
                id,
                &token.0,
                millis(lease).max(1),
            )
            .await
            .map_err(self.failed(format!("renewing the claim of {key}")))
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        _token: &'a ClaimToken,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        boxed(async move {
            let (sub, id) = (key.subscription.as_str(), key.id.as_str());
            DB::complete(&self.pool, Table::Idempotency, sub, id, millis(ttl))
                .await
                .map_err(self.failed(format!("marking {key} done")))
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        token: &'a ClaimToken,
    ) -> BoxFuture<'a, Result<()>> {
        boxed(async move {
            let (sub, id) = (key.subscription.as_str(), key.id.as_str());
            DB::release(&self.pool, Table::Idempotency, sub, id, &token.0)
                .await
                .map_err(self.failed(format!("releasing the claim of {key}")))
        })
    }
}

impl<DB: SqlDatabase> DedupStore for SqlStore<DB> {
    fn claim<'a>(
        &'a self,
        topic: &'a str,
        id: &'a str,
        pending: Duration,
    ) -> BoxFuture<'a, Result<DedupClaim>> {
        boxed(async move {
            let token = uuid::Uuid::now_v7().to_string();
            let state = DB::claim(
                &self.pool,
                Table::Dedup,
                topic,
                id,
                &token,
                millis(pending).max(1),
            )
            .await
            .map_err(self.failed(format!("claiming {topic}/{id} (dedup)")))?;
            Ok(match state {
                ClaimState::Won(token) => DedupClaim::Claimed(ClaimToken(token)),
                ClaimState::Done => DedupClaim::Duplicate,
                ClaimState::Held(remaining) => DedupClaim::InProgress { remaining },
            })
        })
    }

    fn confirm<'a>(
        &'a self,
        topic: &'a str,
        id: &'a str,
        _token: &'a ClaimToken,
        window: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        boxed(async move {
            DB::complete(&self.pool, Table::Dedup, topic, id, millis(window).max(1))
                .await
                .map_err(self.failed(format!("confirming {topic}/{id} (dedup)")))
        })
    }

    fn release<'a>(
        &'a self,
        topic: &'a str,
        id: &'a str,
        token: &'a ClaimToken,
    ) -> BoxFuture<'a, Result<()>> {
        boxed(async move {
            DB::release(&self.pool, Table::Dedup, topic, id, &token.0)
                .await
                .map_err(self.failed(format!("releasing {topic}/{id} (dedup)")))
        })
    }

    fn forget_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<()>> {
        boxed(async move {
            DB::forget_scope(&self.pool, Table::Dedup, topic)
                .await
                .map_err(self.failed(format!("forgetting topic {topic} (dedup)")))
        })
    }
}
