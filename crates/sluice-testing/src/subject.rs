//! The [`Subject`] trait: what the checker checks.

use std::fmt;
use std::future::Future;

use sluice_core::{BoxError, Message};

use crate::Faults;

/// What the [`Checker`](crate::Checker) checks: a message handler together with the state
/// it writes (a database, a map, a file).
///
/// The checker owns the subject for the whole check (`&mut self`) and calls one method at a
/// time, never concurrently. Nothing needs to be `'static`: a subject may hold a connection
/// pool and open an `sqlx` transaction per [`handle`](Self::handle).
///
/// Implement the methods with `async fn`; their futures must be `Send`.
///
/// With `sqlx`, a handler is one transaction; `?` on a fault point drops it uncommitted
/// (a sketch: it needs a database):
///
/// ```ignore
/// async fn handle(&mut self, message: &Message, faults: &Faults) -> Result<(), BoxError> {
///     let mut tx = self.pool.begin().await?;
///     let inserted = sqlx::query("INSERT INTO inbox (id) VALUES (?) ON CONFLICT DO NOTHING")
///         .bind(message.id().as_str())
///         .execute(&mut *tx)
///         .await?
///         .rows_affected();
///     if inserted == 0 {
///         return Ok(()); // a duplicate
///     }
///     faults.point("after inbox insert")?;
///     let deposit: Deposit = serde_json::from_slice(message.payload())?;
///     sqlx::query("UPDATE accounts SET balance = balance + ? WHERE name = ?")
///         .bind(deposit.amount)
///         .bind(&deposit.account)
///         .execute(&mut *tx)
///         .await?;
///     faults.point("before commit")?;
///     tx.commit().await?;
///     Ok(())
/// }
/// ```
pub trait Subject: Send {
    /// A snapshot of the state the handler writes, compared between the chaos run and the
    /// clean run (`BTreeMap<account, balance>` read back from the database).
    ///
    /// It must be a deterministic function of the messages handled and their order: leave
    /// out timestamps and generated ids, or normalise them, else every comparison differs.
    type State: PartialEq + fmt::Debug + Send;

    /// Empties the state. Called before each of the checker's runs; afterwards
    /// [`state`](Self::state) must read the same every time.
    fn reset(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Handles one delivery of `message`, the way the consumer under test does: usually in
    /// one transaction that records the message id in an inbox and applies the effect.
    ///
    /// Call [`Faults::point`] wherever a crash could happen and propagate its error with
    /// `?`: the transaction must then be dropped without committing, as in a real crash.
    ///
    /// Return `Err` for a failure that is not a crash (a transient error, a refused
    /// message): the delivery is delivered again later, and its writes must have been rolled
    /// back too. A panic counts as such a failure, as it does in the runtime.
    fn handle(
        &mut self,
        message: &Message,
        faults: &Faults,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Reads the current state. Called after every delivery.
    ///
    /// Include everything whose change would be a bug. Including the inbox of handled ids
    /// makes a crash that leaks an inbox row show at the crash itself, rather than later
    /// as a message whose effect was lost.
    fn state(&mut self) -> impl Future<Output = Result<Self::State, BoxError>> + Send;
}

/// What [`Checker::check_batches`](crate::Checker::check_batches) checks: a batch handler
/// (a `BatchHandler` with the transactional inbox's batch form, typically) together with the
/// state it writes. The same contract as [`Subject`], a batch at a time.
///
/// The chaos run hands it batches of 1 to [`Checker::max_batch`](crate::Checker::max_batch)
/// messages drawn from the shuffled deliveries, so a batch may hold two copies of one
/// message, or a copy of one already handled; the counting and clean runs hand it batches of
/// one.
pub trait BatchSubject: Send {
    /// As [`Subject::State`].
    type State: PartialEq + fmt::Debug + Send;

    /// As [`Subject::reset`].
    fn reset(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Handles one batch, the way the batch consumer under test does: usually one
    /// transaction holding the batch's inbox rows and its writes.
    ///
    /// Return `Ok` with one result per message, in order: `Ok` for a message handled (it is
    /// acked), `Err` for one that failed (delivered again later; its writes must not stay).
    /// Return `Err` when the whole batch failed: every message is delivered again, and
    /// nothing of the batch may stay. A crash at a [`Faults::point`] (or a panic) fails the
    /// whole batch, as a crashed process would.
    fn handle_batch(
        &mut self,
        messages: &[Message],
        faults: &Faults,
    ) -> impl Future<Output = Result<Vec<Result<(), BoxError>>, BoxError>> + Send;

    /// As [`Subject::state`]; called after every batch.
    fn state(&mut self) -> impl Future<Output = Result<Self::State, BoxError>> + Send;
}
