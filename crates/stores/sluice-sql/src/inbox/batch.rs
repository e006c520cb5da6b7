//! The transactional inbox for batch handlers: one SQL transaction holds the inbox rows of
//! the whole batch and the handler's writes.
//!
//! The rows are inserted first, in one statement per 400 ids, in sorted order (two batches
//! sharing ids lock them in the same order, so they wait for each other and never
//! deadlock). Ids whose row already existed are duplicates: they are dropped from the batch
//! and acked without running. The handler gets the others with the transaction and hands it
//! back with its [`BatchOutcome`]; the rows of the messages it failed are removed, and the
//! transaction commits, then each message is settled. So the guarantees are the
//! single-message inbox's, per message:
//!
//! - an ack lost after the commit: the redelivery finds the row and is skipped;
//! - a crash (or an error, a panic, a timeout) before the commit rolls back every row with
//!   the writes: the whole batch runs again;
//! - a message the handler failed leaves no row, so it runs again; its own writes must not be
//!   in the transaction (skip them, or use a savepoint per message). A batch whose every
//!   message failed is rolled back.

use std::collections::HashSet;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;

use sluice_core::{Message, Result};
use sluice_runtime::{
    BatchContext, BatchHandler, BatchOutcome, BatchResult, Context, DecodeError, HandlerError,
    HandlerResult,
};
use sqlx::Transaction;

use super::Inbox;
use crate::dialect::SqlDatabase;
use crate::error::db_error;

/// What a batch handler on the inbox returns: the transaction, handed back to be committed,
/// and each message's outcome.
pub type InboxBatchResult<DB> =
    std::result::Result<(Transaction<'static, DB>, BatchOutcome), HandlerError>;

impl<DB: SqlDatabase> Inbox<DB> {
    /// Begins a transaction holding the inbox rows of a batch's `ids`. Returns it with the
    /// ids not handled before (the others are duplicates: nothing was written for them).
    pub async fn begin_batch(
        &self,
        subscription: &str,
        ids: &[&str],
    ) -> Result<(Transaction<'static, DB>, HashSet<String>)> {
        let name = <DB as sqlx::Database>::NAME;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| db_error(name, "beginning an inbox transaction", e))?;
        let mut sorted: Vec<&str> = ids.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let fresh = DB::inbox_insert_many(&mut tx, subscription, &sorted)
            .await
            .map_err(|e| db_error(name, "recording a batch in the inbox", e))?;
        Ok((tx, fresh.into_iter().collect()))
    }

    /// A [`BatchHandler`] on JSON payloads whose effects go through this inbox, in one
    /// transaction for the whole batch:
    /// `inbox.json_batch_handler(|batch: Vec<(Order, Context)>, mut tx, ctx| async move { …; Ok((tx, BatchOutcome::AllOk)) })`.
    /// Give it to `Worker::builder`. Duplicates never reach the closure; see the module docs
    /// for what a failed message must leave in the transaction.
    pub fn json_batch_handler<T, F, Fut>(
        &self,
        f: F,
    ) -> sluice_runtime::Batched<InboxBatchHandler<DB, T, F>>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
        F: Fn(Vec<(T, Context)>, Transaction<'static, DB>, BatchContext) -> Fut
            + Send
            + Sync
            + 'static,
        Fut: Future<Output = InboxBatchResult<DB>> + Send + 'static,
    {
        sluice_runtime::Batched::new(InboxBatchHandler {
            inbox: self.clone(),
            f,
            decode: sluice_runtime::decode_json::<T>,
            _input: PhantomData,
        })
    }

    /// [`json_batch_handler`](Self::json_batch_handler) on the raw payload bytes.
    pub fn raw_batch_handler<F, Fut>(
        &self,
        f: F,
    ) -> sluice_runtime::Batched<InboxBatchHandler<DB, bytes::Bytes, F>>
    where
        F: Fn(Vec<(bytes::Bytes, Context)>, Transaction<'static, DB>, BatchContext) -> Fut
            + Send
            + Sync
            + 'static,
        Fut: Future<Output = InboxBatchResult<DB>> + Send + 'static,
    {
        sluice_runtime::Batched::new(InboxBatchHandler {
            inbox: self.clone(),
            f,
            decode: |m| Ok(m.payload().clone()),
            _input: PhantomData,
        })
    }
}

/// A batch handler running its effects in one inbox transaction. See
/// [`Inbox::json_batch_handler`].
pub struct InboxBatchHandler<DB: SqlDatabase, T, F> {
    inbox: Inbox<DB>,
    f: F,
    decode: fn(&Message) -> std::result::Result<T, DecodeError>,
    _input: PhantomData<fn() -> T>,
}

impl<DB, T, F, Fut> BatchHandler for InboxBatchHandler<DB, T, F>
where
    DB: SqlDatabase,
    T: Send + 'static,
    F: Fn(Vec<(T, Context)>, Transaction<'static, DB>, BatchContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = InboxBatchResult<DB>> + Send + 'static,
{
    type Input = T;

    fn decode(&self, message: &Message) -> std::result::Result<T, DecodeError> {
        (self.decode)(message)
    }

    async fn handle(&self, batch: Vec<(T, Context)>, ctx: BatchContext) -> BatchResult {
        let name = <DB as sqlx::Database>::NAME;
        let subscription = ctx.subscription().as_str().to_owned();
        let size = batch.len();
        let ids: Vec<String> = batch.iter().map(|(_, c)| c.id().to_owned()).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let (tx, mut fresh) = self.inbox.begin_batch(&subscription, &refs).await?;
        // The first copy of each id not handled before runs; the others are duplicates (a
        // second copy in this batch ends as its first: acked only if that one is).
        let mut positions = Vec::with_capacity(size);
        let mut todo = Vec::with_capacity(size);
        let mut copy_of: Vec<Option<usize>> = vec![None; size];
        let mut ran_at: std::collections::HashMap<String, usize> = Default::default();
        for (i, (input, c)) in batch.into_iter().enumerate() {
            if fresh.remove(c.id()) {
                ran_at.insert(c.id().to_owned(), todo.len());
                positions.push(i);
                todo.push((input, c));
            } else {
                copy_of[i] = ran_at.get(c.id()).copied();
            }
        }
        let duplicates = size - todo.len();
        if duplicates > 0 {
            self.inbox
                .duplicates
                .fetch_add(duplicates as u64, Ordering::Relaxed);
            tracing::debug!(%subscription, duplicates, "inbox: already handled, skipped");
        }
        if todo.is_empty() {
            let _ = tx.rollback().await;
            return Ok(BatchOutcome::AllOk);
        }
        let ran = todo.len();
        let (mut tx, outcome) = (self.f)(todo, tx, ctx.with_len(ran)).await?;
        let results = outcome.into_results(ran);
        let failed: Vec<&str> = positions
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_err())
            .map(|(&i, _)| ids[i].as_str())
            .collect();
        if failed.len() == ran {
            // Nothing succeeded: none of it is kept.
            let _ = tx.rollback().await;
        } else {
            if !failed.is_empty() {
                DB::inbox_remove(&mut tx, &subscription, &failed)
                    .await
                    .map_err(|e| db_error(name, "removing failed messages from the inbox", e))?;
            }
            tx.commit()
                .await
                .map_err(|e| db_error(name, "committing an inbox transaction", e))?;
        }
        let mut all: Vec<HandlerResult> = copy_of
            .iter()
            .map(|first| match first.map(|at| &results[at]) {
                Some(Err(error)) => Err(error.copy()),
                _ => Ok(()),
            })
            .collect();
        for (i, result) in positions.into_iter().zip(results) {
            all[i] = result;
        }
        Ok(BatchOutcome::PerMessage(all))
    }
}
