//! The transactional inbox: exactly-once *effects* on top of at-least-once delivery.
//!
//! A handler that writes to the database gets a transaction in which the inbox row
//! `(subscription, message id)` was inserted first. If the row already exists the message
//! was handled: the transaction is rolled back and the delivery acked, the handler's writes
//! skipped. Otherwise the handler's writes and the inbox row commit together, and only then
//! is the delivery acked. So:
//!
//! - an ack lost after the commit leads to a redelivery that finds the row and is skipped;
//! - a crash before the commit rolls the row back with the writes: the redelivery runs them;
//! - two copies handled at once serialize on the row's unique key: the second waits for the
//!   first's transaction, then finds the row (skipped) or, if the first rolled back, runs.
//!
//! Rows are removed after the idempotency TTL by [`Inbox::spawn_cleanup`]; keep the TTL
//! longer than the time a duplicate can arrive (the broker's redelivery horizon plus the
//! producers' retries).

mod batch;
pub use batch::{InboxBatchHandler, InboxBatchResult};

use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use sluice_core::{Message, Result};
use sluice_runtime::{decode_json, Context, DecodeError, Handler, HandlerError, HandlerResult};
use sqlx::{Pool, Transaction};
use tokio_util::sync::CancellationToken;

use crate::dialect::SqlDatabase;
use crate::error::db_error;
use crate::store::{millis, spawn_purging};

/// The transactional inbox on one database. Cheap to clone.
pub struct Inbox<DB: SqlDatabase> {
    pool: Pool<DB>,
    ttl: Duration,
    duplicates: Arc<AtomicU64>,
}

impl<DB: SqlDatabase> Clone for Inbox<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            ttl: self.ttl,
            duplicates: self.duplicates.clone(),
        }
    }
}

impl<DB: SqlDatabase> std::fmt::Debug for Inbox<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("database", &<DB as sqlx::Database>::NAME)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<DB: SqlDatabase> Inbox<DB> {
    /// An inbox on `pool`, rows kept for [`DEFAULT_IDEMPOTENCY_TTL`](sluice_runtime::DEFAULT_IDEMPOTENCY_TTL).
    /// Needs Sluice's tables: call [`migrate`](crate::migrate) once at start-up.
    pub fn new(pool: Pool<DB>) -> Self {
        Self {
            pool,
            ttl: sluice_runtime::DEFAULT_IDEMPOTENCY_TTL,
            duplicates: Arc::default(),
        }
    }

    /// Keeps inbox rows for `ttl` (the `idempotency_ttl`).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// Begins a transaction holding the inbox row of `(subscription, id)`: `None` if the
    /// message was already handled (nothing was written). Write the handler's effects in the
    /// transaction, commit it, then ack.
    pub async fn begin(
        &self,
        subscription: &str,
        id: &str,
    ) -> Result<Option<Transaction<'static, DB>>> {
        let mut tx = self.pool.begin().await.map_err(|e| {
            db_error(
                <DB as sqlx::Database>::NAME,
                "beginning an inbox transaction",
                e,
            )
        })?;
        if Self::record(&mut tx, subscription, id).await? {
            Ok(Some(tx))
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            // Dropping rolls back; say so explicitly to hand the connection back clean.
            let _ = tx.rollback().await;
            Ok(None)
        }
    }

    /// Inserts the inbox row in the caller's own transaction: `false` if the message was
    /// already handled (the caller skips its writes and rolls back).
    pub async fn record(
        tx: &mut Transaction<'static, DB>,
        subscription: &str,
        id: &str,
    ) -> Result<bool> {
        DB::inbox_insert(tx, subscription, id).await.map_err(|e| {
            db_error(
                <DB as sqlx::Database>::NAME,
                &format!("recording {subscription}/{id} in the inbox"),
                e,
            )
        })
    }

    /// Whether `(subscription, id)` was handled (and its row not yet expired).
    pub async fn contains(&self, subscription: &str, id: &str) -> Result<bool> {
        DB::inbox_contains(&self.pool, subscription, id)
            .await
            .map_err(|e| db_error(<DB as sqlx::Database>::NAME, "reading the inbox", e))
    }

    /// Deliveries found already handled since this inbox (or a clone) was made.
    pub fn duplicates_skipped(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Removes rows older than the TTL; returns how many.
    pub async fn purge_expired(&self) -> Result<u64> {
        DB::inbox_purge(&self.pool, millis(self.ttl))
            .await
            .map_err(|e| {
                db_error(
                    <DB as sqlx::Database>::NAME,
                    "removing expired inbox rows",
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
        let inbox = self.clone();
        spawn_purging(every, shutdown, "inbox", move || {
            let inbox = inbox.clone();
            async move { inbox.purge_expired().await }
        })
    }

    /// A [`Handler`] on a JSON payload whose effects go through this inbox:
    /// `inbox.json_handler(|order: Order, mut tx, ctx| async move { …; Ok(tx) })`. The
    /// closure gets the transaction holding the inbox row and hands it back; Sluice commits
    /// it, then the delivery is acked. An error (or a panic) drops the transaction: rolled
    /// back, retried.
    pub fn json_handler<T, F, Fut>(&self, f: F) -> InboxHandler<DB, T, F>
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(T, Transaction<'static, DB>, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Transaction<'static, DB>, HandlerError>>
            + Send
            + 'static,
    {
        InboxHandler {
            inbox: self.clone(),
            f,
            decode: decode_json::<T>,
            _input: PhantomData,
        }
    }

    /// [`json_handler`](Self::json_handler) on the raw payload bytes.
    pub fn raw_handler<F, Fut>(&self, f: F) -> InboxHandler<DB, Bytes, F>
    where
        F: Fn(Bytes, Transaction<'static, DB>, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Transaction<'static, DB>, HandlerError>>
            + Send
            + 'static,
    {
        InboxHandler {
            inbox: self.clone(),
            f,
            decode: |m| Ok(m.payload().clone()),
            _input: PhantomData,
        }
    }
}

/// A handler running its effects in an inbox transaction. See [`Inbox::json_handler`].
pub struct InboxHandler<DB: SqlDatabase, T, F> {
    inbox: Inbox<DB>,
    f: F,
    decode: fn(&Message) -> std::result::Result<T, DecodeError>,
    _input: PhantomData<fn() -> T>,
}

impl<DB, T, F, Fut> Handler for InboxHandler<DB, T, F>
where
    DB: SqlDatabase,
    T: Send + 'static,
    F: Fn(T, Transaction<'static, DB>, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<Transaction<'static, DB>, HandlerError>>
        + Send
        + 'static,
{
    type Input = T;

    fn decode(&self, message: &Message) -> std::result::Result<T, DecodeError> {
        (self.decode)(message)
    }

    async fn handle(&self, input: T, ctx: Context) -> HandlerResult {
        let subscription = ctx.subscription().as_str().to_owned();
        let id = ctx.id().to_owned();
        let Some(tx) = self.inbox.begin(&subscription, &id).await? else {
            tracing::debug!(%subscription, %id, "inbox: already handled, skipped");
            return Ok(());
        };
        let tx = (self.f)(input, tx, ctx).await?;
        tx.commit().await.map_err(|e| {
            db_error(
                <DB as sqlx::Database>::NAME,
                "committing an inbox transaction",
                e,
            )
        })?;
        Ok(())
    }
}
