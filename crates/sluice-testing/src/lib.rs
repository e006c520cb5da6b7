//! Test tools for Sluice users: the **idempotency checker**.
//!
//! Every broker delivers some messages more than once, and a consumer can crash halfway
//! through a message. A handler is correct when neither changes the outcome. The
//! [`Checker`] tests exactly that: give it a [`Subject`] (your handler plus the state it
//! writes) and a list of messages; it delivers each message several times, in shuffled
//! order, crashes the handler at random [fault points](Faults::point) (the transaction is
//! rolled back), then compares the state after every delivery with a clean run that handled
//! each message once, and reports the first message whose effect differs.
//!
//! # Layout
//!
//! | module | what lives there |
//! |---|---|
//! | `subject.rs` | [`Subject`]: what your test implements ([`BatchSubject`] for a batch handler) |
//! | `faults.rs` | [`Faults`], the fault points a handler calls, and the [`Crash`] they return |
//! | `checker.rs` | [`Checker`]: the settings, and `check`, which makes the three runs |
//! | `chaos.rs` (private) | the chaos run: shuffled copies, crashes, redeliveries |
//! | `run.rs` (private) | one delivery (panics caught), and the clean runs |
//! | `verdict.rs` (private) | walking the chaos run against the clean run |
//! | `report.rs` | [`Report`], [`DeliveryRecord`], [`Outcome`] |
//! | `error.rs` | [`CheckError`], [`Finding`], [`FindingKind`] |
//! | `job_store.rs` | [`check_job_store`]: the `JobStore` contract, for a store's own tests |
//!
//! # Writing a subject
//!
//! - [`Subject::handle`] does what your consumer does for one delivery, typically in one
//!   database transaction: record the message id in an inbox (skip if present), apply the
//!   effect, commit.
//! - Inside the transaction, call `faults.point("after debit")?` wherever a crash could
//!   happen. When the checker crashes there, the point returns [`Crash`]; propagating it
//!   drops the transaction uncommitted, as a real crash would. No point is needed after the
//!   commit: a crash between commit and ack is what the duplicate deliveries test.
//! - [`Subject::state`] reads back what the handler wrote, deterministically (no
//!   timestamps, no generated ids).
//!
//! # What a finding says
//!
//! A [`Finding`] names the message and the delivery, and says which of these it is: a
//! duplicate that applied its effect again ([`FindingKind::DoubleEffect`]), a crash or
//! failure whose writes stayed ([`FindingKind::CrashLeftPartialEffect`],
//! [`FindingKind::FailureLeftPartialEffect`]), or a first success whose effect was lost or
//! wrong. It prints both states and the seed.
//!
//! # Replaying a failure
//!
//! Every random choice comes from one seed: [`Checker::seed`], else the environment
//! variable `SLUICE_CHECK_SEED`, else a random one. The seed is printed to stderr when a
//! check starts and is part of every report and error, so
//! `SLUICE_CHECK_SEED=1234 cargo test` replays a failure exactly.
//!
//! # Example
//!
//! A toy bank whose "database" commits by swapping in a changed copy of its tables, and
//! whose handler records the message id and credits the account in one transaction:
//!
//! ```
//! use std::collections::{BTreeMap, BTreeSet};
//!
//! use sluice_core::{BoxError, Message, MessageId};
//! use sluice_testing::{Checker, CheckError, Faults, FindingKind, Subject};
//!
//! #[derive(Clone, Default)]
//! struct Tables {
//!     balances: BTreeMap<String, i64>,
//!     inbox: BTreeSet<MessageId>,
//! }
//!
//! #[derive(Default)]
//! struct Bank {
//!     committed: Tables,
//!     /// The bug the checker should find: the handler does not record handled ids.
//!     forget_inbox: bool,
//! }
//!
//! impl Subject for Bank {
//!     type State = BTreeMap<String, i64>;
//!
//!     async fn reset(&mut self) -> Result<(), BoxError> {
//!         self.committed = Tables::default();
//!         Ok(())
//!     }
//!
//!     async fn handle(&mut self, message: &Message, faults: &Faults) -> Result<(), BoxError> {
//!         // "BEGIN": work on a copy; returning early drops it, like a rollback.
//!         let mut tx = self.committed.clone();
//!         if !self.forget_inbox && !tx.inbox.insert(message.id().clone()) {
//!             return Ok(()); // a duplicate: handled before
//!         }
//!         faults.point("after inbox insert")?;
//!         let payload = std::str::from_utf8(message.payload())?;
//!         let (account, amount) = payload.split_once(' ').ok_or("expected `account amount`")?;
//!         *tx.balances.entry(account.to_owned()).or_default() += amount.parse::<i64>()?;
//!         faults.point("before commit")?;
//!         self.committed = tx; // "COMMIT"
//!         Ok(())
//!     }
//!
//!     async fn state(&mut self) -> Result<Self::State, BoxError> {
//!         Ok(self.committed.balances.clone())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let messages = vec![
//!     Message::builder("alice 10").id("deposit-1").build()?,
//!     Message::builder("bob 5").id("deposit-2").build()?,
//!     Message::builder("alice -3").id("withdrawal-1").build()?,
//! ];
//!
//! // In a `#[tokio::test]`: `Checker::new().assert_idempotent(&mut bank, &messages).await;`
//! let report = Checker::new().seed(7).check(&mut Bank::default(), &messages).await?;
//! assert!(report.duplicates > 0);
//! println!("{report}");
//!
//! // Without the inbox, a duplicate credits again, and the checker names the message.
//! let mut buggy = Bank { forget_inbox: true, ..Bank::default() };
//! match Checker::new().seed(7).check(&mut buggy, &messages).await {
//!     Err(CheckError::Mismatch(finding)) => {
//!         assert_eq!(finding.kind, FindingKind::DoubleEffect);
//!         println!("{finding}");
//!     }
//!     other => panic!("expected a double effect, got {other:?}"),
//! }
//! # Ok(())
//! # }
//! ```

mod chaos;
mod checker;
mod error;
mod faults;
mod job_store;
mod limiter;
mod report;
mod run;
mod subject;
mod verdict;

pub use checker::{Checker, SEED_VAR};
pub use error::{CheckError, Finding, FindingKind};
pub use faults::{Crash, Faults};
pub use job_store::check_job_store;
pub use limiter::{check_flags, check_limiter};
pub use report::{DeliveryRecord, Outcome, Report};
pub use subject::{BatchSubject, Subject};

use sluice_core::Message;

/// Checks `subject` with a default [`Checker`] and panics with the finding, for use
/// directly in a test. See [`Checker::assert_idempotent`].
///
/// # Panics
///
/// When the check fails; the message names the message, the delivery, the seed and the
/// expected and actual states.
pub async fn assert_idempotent<S: Subject>(subject: &mut S, messages: &[Message]) -> Report {
    Checker::new().assert_idempotent(subject, messages).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<Checker>();
        assert_send_sync::<Faults>();
        assert_send_sync::<Crash>();
        assert_send_sync::<Report>();
        assert_send_sync::<Finding>();
        assert_send_sync::<CheckError>();
    }
}
