//! Per-partition offset tracking for per-message verbs on a partitioned log.
//!
//! Records of one partition are handed out (and completed) out of order, but Kafka commits one
//! position per partition: "everything before this offset is done". The position committed
//! is therefore the end of the contiguous completed prefix — the lowest offset still pending,
//! or, when none is, the offset after the last one fetched. Records the consumer never hands
//! out (filtered out, say) are simply never pending.
//!
//! Invariants:
//! - The committable position never passes a pending offset: a crash redelivers every record
//!   not completed (at least once), and never skips one.
//! - The position only moves forward; a commit is due only when it moved.
//! - A partition is tracked from the first record fetched after its assignment (the group's
//!   committed position), so a partition that delivered nothing commits nothing.

use std::collections::{BTreeSet, HashMap};

/// One partition's offsets.
#[derive(Debug, Clone)]
pub(crate) struct PartitionOffsets {
    /// Offsets fetched and handed out, not yet completed.
    pending: BTreeSet<i64>,
    /// One past the highest offset fetched.
    fetched_end: i64,
    /// The position last committed (or the one the partition was assigned at).
    committed: i64,
}

impl PartitionOffsets {
    /// A partition assigned at `position` (the next offset to read).
    pub(crate) fn new(position: i64) -> Self {
        Self {
            pending: BTreeSet::new(),
            fetched_end: position,
            committed: position,
        }
    }

    /// A record was fetched; `deliver` says whether it is handed out (and so pending) or
    /// passed over (filtered out: done at once).
    pub(crate) fn fetched(&mut self, offset: i64, deliver: bool) {
        if deliver {
            self.pending.insert(offset);
        }
        self.fetched_end = self.fetched_end.max(offset + 1);
    }

    /// A handed-out record is done (acked, dead-lettered, or moved to a retry topic).
    pub(crate) fn complete(&mut self, offset: i64) {
        self.pending.remove(&offset);
    }

    /// Records handed out and not completed.
    pub(crate) fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The end of the contiguous completed prefix: what a commit would record.
    pub(crate) fn position(&self) -> i64 {
        self.pending.first().copied().unwrap_or(self.fetched_end)
    }

    /// The position to commit if it moved since the last commit; records it as committed.
    pub(crate) fn commit_due(&mut self) -> Option<i64> {
        let position = self.position();
        (position > self.committed).then(|| {
            self.committed = position;
            position
        })
    }
}

/// Every assigned partition's offsets, keyed by `(topic, partition)`.
#[derive(Debug, Default)]
pub(crate) struct Offsets {
    partitions: HashMap<(String, i32), PartitionOffsets>,
}

impl Offsets {
    /// A record at `offset` was fetched: starts tracking its partition there if it is not
    /// tracked yet (the first record after an assignment is the committed position).
    pub(crate) fn track(&mut self, topic: &str, partition: i32, offset: i64) {
        self.partitions
            .entry((topic.to_owned(), partition))
            .or_insert_with(|| PartitionOffsets::new(offset));
    }

    /// A partition was revoked: its final position to commit (if it moved), and how many of
    /// its records were still pending (they will be delivered again to the new owner).
    pub(crate) fn revoke(&mut self, topic: &str, partition: i32) -> (Option<i64>, usize) {
        match self.partitions.remove(&(topic.to_owned(), partition)) {
            Some(mut p) => {
                let pending = p.in_flight();
                (p.commit_due(), pending)
            }
            None => (None, 0),
        }
    }

    /// A record was fetched (see [`PartitionOffsets::fetched`]); ignored if not tracked.
    pub(crate) fn fetched(&mut self, topic: &str, partition: i32, offset: i64, deliver: bool) {
        if let Some(p) = self.partitions.get_mut(&(topic.to_owned(), partition)) {
            p.fetched(offset, deliver);
        }
    }

    /// A record is done; `false` if its partition is no longer tracked here.
    pub(crate) fn complete(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
        match self.partitions.get_mut(&(topic.to_owned(), partition)) {
            Some(p) => {
                p.complete(offset);
                true
            }
            None => false,
        }
    }

    /// Every position to commit: `(topic, partition, position)` of the partitions that moved.
    pub(crate) fn commits_due(&mut self) -> Vec<(String, i32, i64)> {
        let mut due: Vec<_> = self
            .partitions
            .iter_mut()
            .filter_map(|((t, p), o)| o.commit_due().map(|pos| (t.clone(), *p, pos)))
            .collect();
        due.sort();
        due
    }

    /// A commit failed: the partition's position is due again.
    pub(crate) fn uncommit(&mut self, topic: &str, partition: i32) {
        if let Some(p) = self.partitions.get_mut(&(topic.to_owned(), partition)) {
            p.committed = -1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_position_is_the_end_of_the_completed_prefix() {
        let mut p = PartitionOffsets::new(10);
        assert_eq!(p.commit_due(), None, "nothing moved");
        for offset in 10..15 {
            p.fetched(offset, true);
        }
        p.complete(11);
        p.complete(12);
        assert_eq!(p.position(), 10, "10 is still pending");
        assert_eq!(p.commit_due(), None);
        p.complete(10);
        assert_eq!(p.commit_due(), Some(13));
        assert_eq!(p.commit_due(), None, "committed once");
        p.complete(14);
        p.complete(13);
        assert_eq!(p.commit_due(), Some(15));
    }

    #[test]
    fn records_passed_over_do_not_hold_the_position() {
        let mut p = PartitionOffsets::new(0);
        p.fetched(0, false);
        p.fetched(1, true);
        p.fetched(2, false);
        assert_eq!(p.position(), 1);
        p.complete(1);
        assert_eq!(p.position(), 3, "the filtered record 2 is done at once");
        // Gaps in offsets (compaction, transaction markers) are fine.
        p.fetched(7, true);
        assert_eq!(p.position(), 7);
    }

    #[test]
    fn tracking_starts_at_the_first_record_and_revocation_reports_pending_ones() {
        let mut offsets = Offsets::default();
        offsets.fetched("t", 0, 4, true);
        assert!(!offsets.complete("t", 0, 4), "not tracked before track()");
        offsets.track("t", 0, 5);
        offsets.fetched("t", 0, 5, true);
        offsets.track("t", 0, 6);
        offsets.fetched("t", 0, 6, true);
        assert!(offsets.complete("t", 0, 5));
        assert_eq!(offsets.commits_due(), [("t".to_owned(), 0, 6)]);
        offsets.uncommit("t", 0);
        assert_eq!(
            offsets.commits_due(),
            [("t".to_owned(), 0, 6)],
            "due again after a failed commit"
        );
        assert_eq!(offsets.revoke("t", 0), (None, 1), "6 is still pending");
        assert!(
            !offsets.complete("t", 0, 6),
            "a revoked partition's completion is dropped"
        );
    }

    proptest! {
        /// Whatever order records complete in, the position never passes a pending record,
        /// never goes back, and ends past the last record.
        #[test]
        fn completions_in_any_order_never_skip_a_record(order in Just((0..40i64).collect::<Vec<_>>()).prop_shuffle()) {
            let mut p = PartitionOffsets::new(0);
            for offset in 0..40 {
                p.fetched(offset, true);
            }
            let mut done = BTreeSet::new();
            let mut last = 0;
            for offset in order {
                p.complete(offset);
                done.insert(offset);
                let position = p.position();
                prop_assert!(position >= last);
                prop_assert!((0..position).all(|o| done.contains(&o)), "passed a pending record");
                last = position;
            }
            prop_assert_eq!(p.position(), 40);
        }
    }
}
