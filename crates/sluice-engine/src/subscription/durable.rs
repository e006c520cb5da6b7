//! The durable part of a subscription's state: exactly what journal records describe and a
//! checkpoint holds (see the parent module's docs).
//!
//! Invariants:
//! - [`Durable::apply`] is the only way it changes (besides decoding a checkpoint), whether
//!   the record was just produced by a live operation or is replayed: so replay rebuilds it.
//! - `delivered` holds only unsettled messages: topic offsets not in `settled`, DLQ offsets in
//!   `redriven`.
//! - Applying a record a second time right after the first changes nothing, and records about
//!   settled messages are ignored (a stale `Delivered` cannot bring a message back).

use std::collections::{BTreeMap, BTreeSet};

use super::ranges::Ranges;
use super::{JournalRecord, Ref};

/// The DLQ offset a `dead-lettered` record carries when the subscription has no DLQ: the
/// message is settled (dropped, with a reason in the log) and no DLQ offset is taken. Offsets
/// at or above [`NO_DLQ_FLOOR`] mean the same (older builds wrote `u64::MAX - n`).
pub const NO_DLQ: u64 = u64::MAX;
/// DLQ offsets from here on are "no DLQ" markers, never real offsets.
pub(crate) const NO_DLQ_FLOOR: u64 = u64::MAX / 2;

/// What the journal knows about one delivered, unsettled message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Attempt of its last delivery (1-based).
    pub(crate) attempt: u32,
    /// Given back without penalty: the next delivery keeps `attempt`.
    pub(crate) released: bool,
    /// Not deliverable before this time (a retry's due time), 0 = none.
    pub(crate) retry_due_ms: u64,
    /// When it first failed, 0 = not yet (or not journalled yet).
    pub(crate) first_failure_ms: u64,
}

impl Delivery {
    /// The attempt its next delivery has: a lease that ended without a verb (the process
    /// stopped, or it expired) counts as a failed delivery.
    pub(crate) fn next_attempt(&self) -> u32 {
        if self.released {
            self.attempt
        } else {
            self.attempt.saturating_add(1)
        }
    }
}

/// The durable state (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Durable {
    /// Settled topic offsets; its `low` is the subscription's `low_watermark`.
    pub(crate) settled: Ranges,
    /// Delivered, unsettled messages.
    pub(crate) delivered: BTreeMap<Ref, Delivery>,
    /// DLQ offsets that left the DLQ (redriven or purged).
    pub(crate) dlq_removed: Ranges,
    /// One past the highest DLQ offset dead-lettered into the DLQ.
    pub(crate) dlq_end: u64,
    /// Redriven DLQ offsets whose message is not settled yet.
    pub(crate) redriven: BTreeSet<u64>,
}

impl Durable {
    /// A subscription that starts reading its topic at `start_offset`.
    pub(crate) fn new(start_offset: u64) -> Self {
        Self {
            settled: Ranges::new(start_offset),
            delivered: BTreeMap::new(),
            dlq_removed: Ranges::new(0),
            dlq_end: 0,
            redriven: BTreeSet::new(),
        }
    }

    /// Every topic offset below it is settled.
    pub(crate) fn low_watermark(&self) -> u64 {
        self.settled.low()
    }

    /// Whether the message needs no more delivery.
    pub(crate) fn is_settled(&self, message: Ref) -> bool {
        match message {
            Ref::Topic(offset) => self.settled.contains(offset),
            Ref::Dlq(offset) => !self.redriven.contains(&offset),
        }
    }

    /// Whether a DLQ offset is in the DLQ.
    pub(crate) fn dlq_contains(&self, dlq_offset: u64) -> bool {
        dlq_offset < self.dlq_end && !self.dlq_removed.contains(dlq_offset)
    }

    /// Applies one record (see the module docs for what "idempotent" covers).
    pub(crate) fn apply(&mut self, record: &JournalRecord) {
        match *record {
            JournalRecord::Delivered {
                message,
                attempt,
                first_failure_ms,
            } => {
                if self.is_settled(message) {
                    return;
                }
                let stale = self
                    .delivered
                    .get(&message)
                    .is_some_and(|known| known.attempt > attempt);
                if !stale {
                    self.delivered.insert(
                        message,
                        Delivery {
                            attempt,
                            released: false,
                            retry_due_ms: 0,
                            first_failure_ms,
                        },
                    );
                }
            }
            JournalRecord::Acked { message } => self.settle(message),
            JournalRecord::Retry {
                message,
                due_ms,
                first_failure_ms,
            } => {
                if let Some(delivery) = self.delivered.get_mut(&message) {
                    delivery.released = false;
                    delivery.retry_due_ms = due_ms;
                    delivery.first_failure_ms = first_failure_ms;
                }
            }
            JournalRecord::Released { message } => {
                if let Some(delivery) = self.delivered.get_mut(&message) {
                    delivery.released = true;
                    delivery.retry_due_ms = 0;
                }
            }
            JournalRecord::DeadLettered {
                message,
                dlq_offset,
            } => {
                self.settle(message);
                if dlq_offset < NO_DLQ_FLOOR {
                    self.dlq_end = self.dlq_end.max(dlq_offset + 1);
                }
            }
            JournalRecord::DlqRemoved { dlq_offset, .. } => {
                if dlq_offset >= NO_DLQ_FLOOR {
                    return;
                }
                self.dlq_removed
                    .insert(dlq_offset, dlq_offset.saturating_add(1));
                self.dlq_end = self.dlq_end.max(dlq_offset.saturating_add(1));
            }
            JournalRecord::Redriven { dlq_offset } => {
                self.redriven.insert(dlq_offset);
            }
            JournalRecord::Skipped { from, to } => self.settle_topic(from, to),
        }
    }

    fn settle(&mut self, message: Ref) {
        match message {
            Ref::Topic(offset) => self.settle_topic(offset, offset.saturating_add(1)),
            Ref::Dlq(offset) => {
                self.redriven.remove(&offset);
                self.delivered.remove(&message);
            }
        }
    }

    fn settle_topic(&mut self, from: u64, to: u64) {
        self.settled.insert(from, to);
        let gone: Vec<Ref> = self
            .delivered
            .range(Ref::Topic(from)..Ref::Topic(to))
            .map(|(&message, _)| message)
            .collect();
        for message in gone {
            self.delivered.remove(&message);
        }
    }

    /// One past the highest topic offset this state says anything about (settled or
    /// delivered): the topic log must reach at least here.
    pub(crate) fn topic_reach(&self) -> u64 {
        let settled = self
            .settled
            .ranges()
            .last()
            .map_or(self.low_watermark(), |(_, end)| end);
        let delivered = self
            .delivered
            .keys()
            .filter_map(|r| match r {
                Ref::Topic(offset) => Some(offset.saturating_add(1)),
                Ref::Dlq(_) => None,
            })
            .max()
            .unwrap_or(0);
        settled.max(delivered).max(self.low_watermark())
    }

    /// Number of map entries and ranges it holds (memory, for tests and stats).
    pub(crate) fn entries(&self) -> usize {
        self.settled.range_count()
            + self.delivered.len()
            + self.dlq_removed.range_count()
            + self.redriven.len()
    }
}
