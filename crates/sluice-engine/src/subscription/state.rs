//! [`SubscriptionState`]: construction, checkpoint and replay, the verbs on a lease, the DLQ
//! and the counters. Dispatch (`poll`, timers, the cursor walk) lives in `dispatch.rs`. The
//! invariants are listed in the parent module's docs.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::durable::Durable;
use super::{
    checkpoint, DeadLetter, JournalPosition, JournalRecord, Ref, RemovalReason, StateError, Stats,
};

/// The cursor stops walking when this many messages it passed are pending, by default.
pub const DEFAULT_LOOKAHEAD: usize = 65_536;

/// Where a pending message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// In the ready queue.
    Ready,
    /// Waiting for its `deliver_at` or a retry's due time.
    Waiting { until: u64 },
    /// Delivered to `holder` until `deadline`.
    Leased {
        token: u64,
        deadline: u64,
        holder: u64,
        attempt: u32,
    },
    /// Behind an earlier message of its ordering key.
    Blocked,
    /// Taken by `dead_letter`, waiting for `dead_lettered` (it still holds its key).
    DeadLettering { attempt: u32 },
}

/// A message the cursor passed (or a redriven one) that is not settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) key: Option<String>,
    pub(super) deliver_at_ms: u64,
    /// The attempt its next delivery will have.
    pub(super) next_attempt: u32,
    /// When it first failed, 0 = not yet.
    pub(super) first_failure_ms: u64,
    /// Not deliverable before this (a retry, possibly from before a restart), 0 = none.
    pub(super) retry_due_ms: u64,
    pub(super) phase: Phase,
}

impl Entry {
    /// Not deliverable before this time.
    pub(super) fn due_ms(&self) -> u64 {
        self.deliver_at_ms.max(self.retry_due_ms)
    }
}

/// A subscription's state machine: see the [module docs](super) for its durable and volatile
/// parts and its invariants.
///
/// Two states compare equal when both parts are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionState {
    pub(super) durable: Durable,
    /// The next topic offset dispatch has not looked at; never below `low_watermark`.
    pub(super) cursor: u64,
    /// The latest time given to any call.
    pub(super) now_ms: u64,
    pub(super) entries: BTreeMap<Ref, Entry>,
    pub(super) ready: BTreeSet<Ref>,
    /// `(until or deadline, message)` of every `Waiting` and `Leased` entry.
    pub(super) timers: BTreeSet<(u64, Ref)>,
    pub(super) keys: HashMap<String, VecDeque<Ref>>,
    /// Redriven DLQ offsets not yet looked up (their ordering key and delay are unknown).
    pub(super) unclassified: BTreeSet<u64>,
    /// Leases per holder.
    pub(super) held: HashMap<u64, u32>,
    pub(super) next_token: u64,
    pub(super) lookahead: usize,
}

impl SubscriptionState {
    /// A new subscription that reads its topic from `start_offset` (every offset below it
    /// counts as settled).
    pub fn new(start_offset: u64) -> Self {
        Self::from_durable(Durable::new(start_offset))
    }

    fn from_durable(durable: Durable) -> Self {
        Self {
            cursor: durable.low_watermark(),
            unclassified: durable.redriven.clone(),
            durable,
            now_ms: 0,
            entries: BTreeMap::new(),
            ready: BTreeSet::new(),
            timers: BTreeSet::new(),
            keys: HashMap::new(),
            held: HashMap::new(),
            next_token: 0,
            lookahead: DEFAULT_LOOKAHEAD,
        }
    }

    /// Rebuilds the state a [`checkpoint`](Self::checkpoint) body describes, and returns the
    /// journal position to replay from. Only the durable part is restored: the cursor starts
    /// at `low_watermark`, nothing is leased, and a message delivered and not settled will be
    /// delivered again with its next attempt (see the [module docs](super)). Fails if the
    /// body does not decode or breaks an invariant; never panics.
    pub fn restore(body: &[u8]) -> Result<(Self, JournalPosition), StateError> {
        let (durable, position) = checkpoint::decode(body)?;
        Ok((Self::from_durable(durable), position))
    }

    /// The checkpoint body (record type 32): the whole durable part and `position`, the
    /// journal position just after the last record this state includes. Canonical: states
    /// with equal durable parts give equal bytes.
    pub fn checkpoint(&self, position: JournalPosition) -> Vec<u8> {
        checkpoint::encode(&self.durable, position)
    }

    /// Applies a committed journal record: for replay after [`restore`](Self::restore) (or
    /// [`new`](Self::new)), in journal order, before dispatch starts.
    ///
    /// Applying a record this state produced itself changes nothing, and a record about a
    /// message already settled is ignored, so replaying a record twice in a row is harmless.
    /// Replay must still start right after the checkpoint's position: an old record applied
    /// after newer ones about the same message (a `Released` after the next `Delivered`) is
    /// not detected.
    pub fn apply(&mut self, record: &JournalRecord) {
        self.durable.apply(record);
        match *record {
            JournalRecord::Acked { message } | JournalRecord::DeadLettered { message, .. } => {
                self.forget(message);
            }
            JournalRecord::Skipped { from, to } => {
                let gone: Vec<Ref> = self
                    .entries
                    .range(Ref::Topic(from)..Ref::Topic(to))
                    .map(|(&message, _)| message)
                    .collect();
                for message in gone {
                    self.forget(message);
                }
            }
            JournalRecord::Delivered { message, .. }
            | JournalRecord::Retry { message, .. }
            | JournalRecord::Released { message } => self.rediscover(message),
            JournalRecord::Redriven { dlq_offset } => self.rediscover(Ref::Dlq(dlq_offset)),
            JournalRecord::DlqRemoved { .. } => {}
        }
        self.cursor = self.cursor.max(self.durable.low_watermark());
    }

    /// After a record about `message` from elsewhere: makes sure dispatch will find it. A
    /// message with an entry keeps it (its record was produced here).
    fn rediscover(&mut self, message: Ref) {
        if self.entries.contains_key(&message) || self.durable.is_settled(message) {
            return;
        }
        match message {
            Ref::Topic(offset) => self.cursor = self.cursor.min(offset),
            Ref::Dlq(offset) => {
                self.unclassified.insert(offset);
            }
        }
    }

    /// Replays a committed journal record at open, knowing where the DLQ log ends: a record
    /// about a DLQ offset the DLQ log does not hold (its append was lost in a crash that kept
    /// the journal record, or the DLQ log was damaged) is ignored, so a message whose
    /// dead-letter record was lost is delivered again instead of being settled. Returns
    /// whether the record was applied. Otherwise as [`apply`](Self::apply).
    pub fn replay(&mut self, record: &JournalRecord, dlq_log_end: u64) -> bool {
        let beyond = |offset: u64| (dlq_log_end..super::durable::NO_DLQ_FLOOR).contains(&offset);
        let ignored = match *record {
            JournalRecord::DeadLettered { dlq_offset, .. } => beyond(dlq_offset),
            JournalRecord::DlqRemoved { dlq_offset, .. }
            | JournalRecord::Redriven { dlq_offset } => beyond(dlq_offset),
            _ => record
                .message()
                .is_some_and(|m| matches!(m, Ref::Dlq(o) if beyond(o))),
        };
        if !ignored {
            self.apply(record);
        }
        !ignored
    }

    /// One past the highest topic offset the durable state says anything about: a topic log
    /// that ends before it lost records this subscription already saw (see
    /// `docs/durability.md`).
    pub fn topic_reach(&self) -> u64 {
        self.durable.topic_reach()
    }

    /// Makes the DLQ state fit a DLQ log that ends at `dlq_log_end` after a restore: an end
    /// left by an older build's "no DLQ" marker is brought back to the log's end. Returns the
    /// DLQ end the state still needs (more than `dlq_log_end` when a checkpoint knows DLQ
    /// records the log lost).
    pub fn fit_dlq(&mut self, dlq_log_end: u64) -> u64 {
        if self.durable.dlq_end >= super::durable::NO_DLQ_FLOOR {
            self.durable.dlq_end = dlq_log_end;
        }
        self.durable.dlq_end
    }

    /// Drops a settled message from the volatile part.
    fn forget(&mut self, message: Ref) {
        self.unlink(message);
        if let Ref::Dlq(offset) = message {
            self.unclassified.remove(&offset);
        }
    }

    /// Hands out lease tokens from `first` on (or from the next unused one, if larger). A
    /// state counts tokens from 0; an integrator whose clients may hold a delivery across a
    /// restart (`sluice serve`) calls this after [`restore`](Self::restore) with a value
    /// beyond any token issued before (for example the restart time in ms shifted left by 20
    /// bits), so a verb from before the restart fails with [`StateError::LeaseLost`].
    pub fn start_tokens_at(&mut self, first: u64) {
        self.next_token = self.next_token.max(first);
    }

    /// Sets the lookahead: the cursor stops walking while this many messages it passed are
    /// pending (leased, waiting, blocked behind their key). It bounds memory when a key is
    /// busy or many messages are delayed, at the price of not looking further (at least 1;
    /// the default is [`DEFAULT_LOOKAHEAD`]). Not durable: configuration.
    pub fn set_lookahead(&mut self, lookahead: usize) {
        self.lookahead = lookahead.max(1);
    }

    /// Every topic offset below it is settled (durable).
    pub fn low_watermark(&self) -> u64 {
        self.durable.low_watermark()
    }

    /// The next topic offset dispatch has not looked at (not durable).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The topic offsets the next poll's cursor walk will ask `meta` about, at most `limit`
    /// of them below `log_end`: from the cursor on, skipping settled runs; none while the
    /// lookahead is full. An integrator reads them before the poll (without holding what
    /// guards this state).
    pub fn walk_plan(&self, limit: usize, log_end: u64) -> Vec<u64> {
        let mut out = Vec::new();
        if self.entries.len() >= self.lookahead {
            return out;
        }
        let mut offset = self.cursor.max(self.durable.low_watermark());
        while out.len() < limit && offset < log_end {
            if let Some(end) = self.durable.settled.run_end(offset) {
                offset = end;
                continue;
            }
            out.push(offset);
            offset += 1;
        }
        out
    }

    /// Redriven DLQ offsets dispatch has not looked up yet (the next poll asks `meta` for
    /// them first).
    pub fn unclassified(&self) -> impl Iterator<Item = u64> + '_ {
        self.unclassified.iter().copied()
    }

    // ---- verbs on a lease ----

    /// The lease `token` on `message`, after expiring leases at `now_ms`.
    fn leased(
        &mut self,
        message: Ref,
        token: u64,
        now_ms: u64,
    ) -> Result<(u64, u64, u32), StateError> {
        self.advance(now_ms);
        match self.entries.get(&message).map(|entry| entry.phase) {
            Some(Phase::Leased {
                token: current,
                deadline,
                holder,
                attempt,
            }) if current == token => Ok((deadline, holder, attempt)),
            _ => Err(StateError::LeaseLost { message }),
        }
    }

    /// Removes a lease's timer and hold.
    fn end_lease(&mut self, message: Ref, deadline: u64, holder: u64) {
        self.timers.remove(&(deadline, message));
        release_hold(&mut self.held, holder);
    }

    /// The message is done: settled, never delivered again; the next message of its ordering
    /// key may go. Fails with [`StateError::LeaseLost`] unless `token` is its current lease
    /// and the lease has not expired at `now_ms`; an ack is therefore not idempotent (the
    /// second one fails), and an ack after a retry, release or dead-letter fails.
    pub fn ack(
        &mut self,
        message: Ref,
        token: u64,
        now_ms: u64,
    ) -> Result<JournalRecord, StateError> {
        self.leased(message, token, now_ms)?;
        let record = JournalRecord::Acked { message };
        self.apply(&record);
        Ok(record)
    }

    /// The delivery failed: the message is delivered again (attempt + 1) no earlier than
    /// `now_ms + after_ms`. It keeps its ordering key meanwhile (level `strict`). Fails like
    /// [`ack`](Self::ack).
    pub fn retry(
        &mut self,
        message: Ref,
        token: u64,
        now_ms: u64,
        after_ms: u64,
    ) -> Result<JournalRecord, StateError> {
        let (deadline, holder, _) = self.leased(message, token, now_ms)?;
        self.end_lease(message, deadline, holder);
        let due_ms = now_ms.saturating_add(after_ms);
        let entry = self.entry_mut(message);
        if entry.first_failure_ms == 0 {
            entry.first_failure_ms = now_ms;
        }
        entry.retry_due_ms = due_ms;
        let record = JournalRecord::Retry {
            message,
            due_ms,
            first_failure_ms: entry.first_failure_ms,
        };
        self.schedule(message);
        self.durable.apply(&record);
        Ok(record)
    }

    /// Gives the delivery back without penalty: the message is ready at once and its next
    /// delivery keeps this attempt. It keeps its ordering key. Fails like [`ack`](Self::ack).
    pub fn release(
        &mut self,
        message: Ref,
        token: u64,
        now_ms: u64,
    ) -> Result<JournalRecord, StateError> {
        let (deadline, holder, attempt) = self.leased(message, token, now_ms)?;
        self.end_lease(message, deadline, holder);
        self.entry_mut(message).next_attempt = attempt;
        self.schedule(message);
        let record = JournalRecord::Released { message };
        self.durable.apply(&record);
        Ok(record)
    }

    /// First step of a dead-letter: ends the lease and tells the integrator what the DLQ
    /// envelope needs. The message still holds its ordering key and is not settled until
    /// [`dead_lettered`](Self::dead_lettered) (after the integrator appended it to the DLQ
    /// log) or [`cancel_dead_letter`](Self::cancel_dead_letter). Nothing is journalled yet:
    /// a crash in between delivers it again. Fails like [`ack`](Self::ack).
    pub fn dead_letter(
        &mut self,
        message: Ref,
        token: u64,
        now_ms: u64,
    ) -> Result<DeadLetter, StateError> {
        let (deadline, holder, attempt) = self.leased(message, token, now_ms)?;
        self.end_lease(message, deadline, holder);
        let entry = self.entry_mut(message);
        if entry.first_failure_ms == 0 {
            entry.first_failure_ms = now_ms;
        }
        entry.phase = Phase::DeadLettering { attempt };
        Ok(DeadLetter {
            attempt,
            first_failure_at_ms: entry.first_failure_ms,
        })
    }

    /// Second step of a dead-letter: the message was appended to the DLQ log at `dlq_offset`.
    /// Settles it, lets the next message of its key go, and returns the record to commit.
    /// Fails with [`StateError::NotDeadLettering`] unless [`dead_letter`](Self::dead_letter)
    /// took it.
    pub fn dead_lettered(
        &mut self,
        message: Ref,
        dlq_offset: u64,
    ) -> Result<JournalRecord, StateError> {
        self.dead_lettering(message)?;
        let record = JournalRecord::DeadLettered {
            message,
            dlq_offset,
        };
        self.apply(&record);
        Ok(record)
    }

    /// Undoes [`dead_letter`](Self::dead_letter) when the DLQ append failed: the message is
    /// ready again, as after a lease expiry (next attempt + 1). Nothing to journal.
    pub fn cancel_dead_letter(&mut self, message: Ref) -> Result<(), StateError> {
        self.dead_lettering(message)?;
        self.schedule(message);
        Ok(())
    }

    fn dead_lettering(&self, message: Ref) -> Result<(), StateError> {
        match self.entries.get(&message).map(|entry| entry.phase) {
            Some(Phase::DeadLettering { .. }) => Ok(()),
            _ => Err(StateError::NotDeadLettering { message }),
        }
    }

    /// Extends (or shortens) the lease to `now_ms + lease_ms` and returns the new deadline.
    /// Not journalled: leases do not survive a restart. Fails like [`ack`](Self::ack).
    pub fn extend(
        &mut self,
        message: Ref,
        token: u64,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<u64, StateError> {
        let (deadline, holder, attempt) = self.leased(message, token, now_ms)?;
        self.timers.remove(&(deadline, message));
        let deadline = now_ms.saturating_add(lease_ms);
        self.timers.insert((deadline, message));
        self.entry_mut(message).phase = Phase::Leased {
            token,
            deadline,
            holder,
            attempt,
        };
        Ok(deadline)
    }

    /// Number of messages leased to `holder` (for the integrator's prefetch accounting).
    pub fn held_by(&self, holder: u64) -> u32 {
        self.held.get(&holder).copied().unwrap_or(0)
    }

    // ---- the dead-letter queue ----

    /// The DLQ offsets in the DLQ (dead-lettered, neither redriven nor purged), oldest first.
    pub fn dlq_live(&self) -> impl Iterator<Item = u64> + '_ {
        let end = self.durable.dlq_end;
        let mut from = self.durable.dlq_removed.low();
        self.durable
            .dlq_removed
            .ranges()
            .map(Some)
            .chain(std::iter::once(None))
            .flat_map(move |range| match range {
                Some((start, after)) => {
                    let gap = from..start;
                    from = after;
                    gap
                }
                None => from..end,
            })
    }

    /// Whether a DLQ offset is in the DLQ (dead-lettered, neither redriven nor purged).
    pub fn dlq_contains(&self, dlq_offset: u64) -> bool {
        self.durable.dlq_contains(dlq_offset)
    }

    /// Number of messages in the DLQ.
    pub fn dlq_len(&self) -> u64 {
        let removed = &self.durable.dlq_removed;
        self.durable
            .dlq_end
            .saturating_sub(removed.low())
            .saturating_sub(removed.len_above_low())
    }

    /// One past the highest DLQ offset the journal knows of.
    pub fn dlq_end(&self) -> u64 {
        self.durable.dlq_end
    }

    /// DLQ offsets below this are neither in the DLQ nor pending after a redrive: DLQ log
    /// retention may delete them.
    pub fn dlq_retain_from(&self) -> u64 {
        let first_live = self.durable.dlq_removed.low();
        self.durable
            .redriven
            .first()
            .map_or(first_live, |&first| first.min(first_live))
    }

    /// Moves a DLQ message back to this subscription (only): it leaves the DLQ and is
    /// pending as [`Ref::Dlq`], next delivered with attempt 1 (after the messages of its
    /// ordering key dispatch already holds). Fails with [`StateError::NotInDlq`] if the
    /// offset is not in the DLQ.
    pub fn redrive(&mut self, dlq_offset: u64) -> Result<Vec<JournalRecord>, StateError> {
        if !self.durable.dlq_contains(dlq_offset) {
            return Err(StateError::NotInDlq { dlq_offset });
        }
        let records = vec![
            JournalRecord::DlqRemoved {
                dlq_offset,
                reason: RemovalReason::Redriven,
            },
            JournalRecord::Redriven { dlq_offset },
        ];
        for record in &records {
            self.apply(record);
        }
        Ok(records)
    }

    /// Deletes a message from the DLQ. Fails with [`StateError::NotInDlq`] if the offset is
    /// not in the DLQ.
    pub fn purge(&mut self, dlq_offset: u64) -> Result<JournalRecord, StateError> {
        if !self.durable.dlq_contains(dlq_offset) {
            return Err(StateError::NotInDlq { dlq_offset });
        }
        let record = JournalRecord::DlqRemoved {
            dlq_offset,
            reason: RemovalReason::Purged,
        };
        self.apply(&record);
        Ok(record)
    }

    // ---- counters ----

    /// Counters at `now_ms` (leases that expired by then count as ready) for a topic whose
    /// log ends at `log_end`. Costs one step per pending entry. See [`Stats`] for what
    /// `ready` counts beyond the cursor.
    pub fn stats(&mut self, now_ms: u64, log_end: u64) -> Stats {
        self.advance(now_ms);
        let mut stats = Stats::default();
        for entry in self.entries.values() {
            match entry.phase {
                Phase::Ready => stats.ready += 1,
                Phase::Leased { .. } | Phase::DeadLettering { .. } => stats.in_flight += 1,
                Phase::Waiting { .. } => stats.delayed += 1,
                Phase::Blocked if entry.due_ms() > now_ms => stats.delayed += 1,
                Phase::Blocked => stats.ready += 1,
            }
        }
        stats.ready += self.unclassified.len() as u64;
        let low_watermark = self.durable.low_watermark();
        let from = self.cursor.max(low_watermark);
        if log_end > from {
            stats.ready += (log_end - from) - self.durable.settled.count_in(from, log_end);
        }
        stats.dead_lettered = self.dlq_len();
        stats.oldest_unsettled = if low_watermark < log_end {
            Some(Ref::Topic(low_watermark))
        } else {
            self.durable
                .redriven
                .first()
                .map(|&offset| Ref::Dlq(offset))
        };
        stats
    }

    /// The earliest time at which a lease expires or a timer fires: poll again then. New
    /// messages (a larger `log_end`) and redrives are the integrator's to notice.
    pub fn next_wakeup_ms(&self) -> Option<u64> {
        self.timers.first().map(|&(at, _)| at)
    }

    /// Number of map entries, set members, queue slots and ranges held in memory: what the
    /// state costs, whatever the size of the backlog.
    pub fn in_memory_entries(&self) -> usize {
        self.entries.len()
            + self.ready.len()
            + self.timers.len()
            + self.keys.len()
            + self.keys.values().map(VecDeque::len).sum::<usize>()
            + self.unclassified.len()
            + self.held.len()
            + self.durable.entries()
    }

    pub(super) fn entry_mut(&mut self, message: Ref) -> &mut Entry {
        self.entries
            .get_mut(&message)
            .expect("a leased message has an entry")
    }
}

/// One lease of `holder` ended.
pub(super) fn release_hold(held: &mut HashMap<u64, u32>, holder: u64) {
    if let Some(count) = held.get_mut(&holder) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            held.remove(&holder);
        }
    }
}
