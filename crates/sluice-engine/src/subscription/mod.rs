//! A subscription's durable state machine: which messages of its topic are settled, which are
//! in flight and with which attempt, what waits for a timer, what waits behind its ordering
//! key, and its dead-letter queue (DLQ). Pure logic: no I/O, no threads, time is injected as
//! milliseconds since the Unix epoch. See `docs/engine-format.md`, "Subscription state".
//!
//! # Durable and volatile parts
//!
//! The **durable** part is exactly what the [`JournalRecord`]s describe and what a
//! [checkpoint](SubscriptionState::checkpoint) holds:
//!
//! - `low_watermark`: every topic offset below it is settled (acked, dead-lettered, or skipped
//!   because the filter does not select it);
//! - the settled offsets above it, as ranges (adjacent ranges are merged; the range that
//!   starts at `low_watermark` is folded into it at once);
//! - per delivered, unsettled message: the attempt of its last delivery, whether it was
//!   released (its next delivery keeps the attempt) or not (the next one is `attempt + 1`),
//!   a retry's due time, and the time of its first failure;
//! - the DLQ: its end (one past the highest DLQ offset dead-lettered into it), the ranges of
//!   its offsets already redriven or purged, and the redriven messages not yet settled.
//!
//! Every change to the durable part goes through one function that applies a journal record,
//! live or at replay, so a state rebuilt from a checkpoint and the journal after it has the
//! same durable part as the live state that wrote them (a property test checks it).
//!
//! The **volatile** part is rebuilt by dispatch: the `cursor` (the next topic offset dispatch
//! has not looked at), the entries of the messages it has passed and not settled (ready,
//! leased until a deadline, waiting for a timer, blocked behind their ordering key, or being
//! dead-lettered), the ready queue, the timers, the ordering-key queues and the lease tokens.
//! After a restart the cursor starts again at `low_watermark` and walks forward, skipping
//! settled offsets: messages that were blocked or waiting for their `deliver_at` are found
//! again, and a message that was leased at the crash is ready again with its next delivery
//! at `attempt + 1` (its lease ended without a verb).
//!
//! # Memory
//!
//! Nothing is stored for offsets at or after the cursor, so a 10-million-message backlog
//! costs a few words. Memory grows with the messages the cursor has passed and not settled
//! (bounded by the [lookahead](SubscriptionState::set_lookahead): the cursor stops when that
//! many are pending), one settled range per gap between them, redriven messages and DLQ gaps.
//! The price of the bound: while the lookahead is full (a hot key holds many messages, or
//! many are delayed), messages beyond it wait even if they could go.
//!
//! # Filter
//!
//! The filter is fixed per subscription, so whether a message matches is recomputed, not
//! stored: the integrator answers it in [`Meta::matches`]. Runs of non-matching offsets the
//! cursor passes are journalled as [`JournalRecord::Skipped`] so the low watermark (which
//! retention relies on) is durable; losing such a record is harmless, the walk after a
//! restart decides the same again.
//!
//! # Redriven messages and ordering keys
//!
//! A redriven message is looked up at the next poll and queued at the back of its ordering
//! key's queue: it waits for the messages of its key dispatch already holds. After a restart
//! redriven messages are looked up before the cursor walks, so one may go ahead of pending
//! topic messages of its key: it was out of order already when it was dead-lettered. Only
//! topic messages are promised publish order; every message, redriven or not, keeps "one
//! message per key in flight".
//!
//! # Invariants (checked by `check_invariants` in the tests)
//!
//! - Every topic offset in `[low_watermark, cursor)` is settled or has an entry; no settled
//!   message has an entry.
//! - Every entry is in exactly one phase. The ready queue holds exactly the `Ready` entries
//!   (ordered by [`Ref`], so the oldest goes first, redeliveries included); `Waiting` and
//!   `Leased` entries have exactly one timer, at their `until` or `deadline`.
//! - Strict ordering: the queue of an ordering key lists its pending entries in the order
//!   dispatch met them, and only its front is anything but `Blocked`. The front stays while
//!   it is leased, waits for a retry, is released or is being dead-lettered; it leaves only
//!   when settled, which schedules the next one. So a key has at most one message in flight.
//! - `held_by(h)` counts the `Leased` entries of holder `h`.
//! - `attempt` counts deliveries: the first delivery is attempt 1; a retry and a lease expiry
//!   make the next one `attempt + 1`; a release keeps it; a redrive starts again at 1.
//! - Lease tokens are never reused by one state (see
//!   [`start_tokens_at`](SubscriptionState::start_tokens_at) for uniqueness across restarts).
//!   A verb whose token is not the message's current lease fails with
//!   [`StateError::LeaseLost`], including a verb after the lease's deadline but before the
//!   message is delivered again.
//!
//! # Protocol with the integrator
//!
//! Every call that changes state returns the journal records describing the change. The
//! in-memory state has already changed; the caller commits the records (group commit)
//! before it confirms anything to a client or hands leases out. A commit that fails poisons
//! the engine, and the state is rebuilt from disk at the next open, so the two never drift.

mod checkpoint;
mod dispatch;
mod durable;
mod journal;
mod ranges;
mod state;
#[cfg(test)]
mod tests;

use std::fmt;

pub(crate) use checkpoint::CHECKPOINT as CHECKPOINT_RECORD;
pub use durable::NO_DLQ;
pub use journal::{JournalRecord, RemovalReason};
pub use state::{SubscriptionState, DEFAULT_LOOKAHEAD};

use crate::codec::CodecError;

/// A message a subscription can deliver: a topic message by offset, or a message redriven from
/// the subscription's dead-letter queue by DLQ offset.
///
/// Ordered topic refs first, by offset, then DLQ refs by DLQ offset: the ready queue hands
/// out the smallest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ref {
    /// The message at this offset of the topic log.
    Topic(u64),
    /// The message at this offset of the subscription's DLQ log, redriven.
    Dlq(u64),
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ref::Topic(offset) => write!(f, "topic offset {offset}"),
            Ref::Dlq(offset) => write!(f, "DLQ offset {offset}"),
        }
    }
}

/// What dispatch needs to know about a message, read from its log by the integrator.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// Not deliverable before this time (ms since the Unix epoch); `0` = at once.
    pub deliver_at_ms: u64,
    /// Messages with the same key are delivered one at a time, in order (level `strict`).
    pub ordering_key: Option<String>,
    /// Whether this subscription receives the message: its filter selects the routing key.
    /// `false` settles the message silently (journalled as [`JournalRecord::Skipped`] for a
    /// topic message, [`JournalRecord::Acked`] for a DLQ one). The integrator also answers
    /// `false` for a message that no longer exists (deleted by retention). For a redriven
    /// DLQ message it normally answers `true`: the operator asked for it.
    pub matches: bool,
}

impl Meta {
    /// A message deliverable at once, without ordering key, selected by the filter.
    pub fn now() -> Self {
        Self {
            deliver_at_ms: 0,
            ordering_key: None,
            matches: true,
        }
    }
}

/// One message handed out by [`SubscriptionState::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The message.
    pub message: Ref,
    /// 1-based delivery count of this message to this subscription.
    pub attempt: u32,
    /// Identifies this lease in the verbs; never reused by one state.
    pub token: u64,
    /// The lease expires at this time (ms): from then on, verbs fail with
    /// [`StateError::LeaseLost`] and the message is delivered again with `attempt + 1`.
    pub deadline_ms: u64,
}

/// The result of [`SubscriptionState::poll`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Poll {
    /// Leased messages, oldest first. Hand them out only after `journal` is committed.
    pub leases: Vec<Lease>,
    /// Records to commit: one [`JournalRecord::Delivered`] per lease, and
    /// [`JournalRecord::Skipped`] / [`JournalRecord::Acked`] for messages settled silently.
    pub journal: Vec<JournalRecord>,
}

/// What [`SubscriptionState::dead_letter`] tells the integrator for the DLQ envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The attempt of the delivery that was dead-lettered.
    pub attempt: u32,
    /// When the message first failed (first retry or lease expiry); the time of the
    /// dead-letter itself when it never failed before. After a restart, a lease lost in the
    /// crash counts as failing when the message was next delivered.
    pub first_failure_at_ms: u64,
}

/// Counters of a subscription, from [`SubscriptionState::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Messages deliverable now or held only by their ordering key. Includes every offset in
    /// `[cursor, log_end)` not known to be settled: an **upper bound**, since messages the
    /// filter does not select or that are delayed are known only once the cursor passes them.
    pub ready: u64,
    /// Messages leased (or being dead-lettered).
    pub in_flight: u64,
    /// Messages the cursor has passed that wait for their `deliver_at` or a retry.
    pub delayed: u64,
    /// Messages in the DLQ (dead-lettered and neither redriven nor purged).
    pub dead_lettered: u64,
    /// The oldest message not settled: `Topic(low_watermark)` if it is below `log_end`, else
    /// the oldest redriven message still pending.
    pub oldest_unsettled: Option<Ref>,
}

/// Where in the journal a checkpoint's state ends: replay starts right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct JournalPosition {
    /// Sequence number of the journal segment.
    pub segment: u64,
    /// Byte position in that segment just after the last record the state includes.
    pub position: u64,
}

/// Errors of the subscription state machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The token is not the message's current lease: the lease expired (whether or not the
    /// message was delivered again), the message was settled, or it never had this lease.
    #[error(
        "the lease on {message} is lost: it expired, or the message was redelivered or settled"
    )]
    LeaseLost {
        /// The message the verb named.
        message: Ref,
    },
    /// [`SubscriptionState::dead_lettered`] or [`SubscriptionState::cancel_dead_letter`] for
    /// a message that [`SubscriptionState::dead_letter`] did not take.
    #[error("{message} is not being dead-lettered (call dead_letter first)")]
    NotDeadLettering {
        /// The message the call named.
        message: Ref,
    },
    /// A DLQ verb for an offset that is not in the DLQ.
    #[error(
        "DLQ offset {dlq_offset} is not in the dead-letter queue (never dead-lettered, or already redriven or purged)"
    )]
    NotInDlq {
        /// The offset the verb named.
        dlq_offset: u64,
    },
    /// A checkpoint or journal record that does not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A checkpoint that decodes but breaks an invariant of the state.
    #[error("inconsistent subscription checkpoint: {0}")]
    Corrupt(&'static str),
}

impl StateError {
    /// Whether trying the same call again may succeed: never, for these errors (a lost lease
    /// stays lost; a corrupt checkpoint stays corrupt).
    pub fn is_retryable(&self) -> bool {
        false
    }
}
