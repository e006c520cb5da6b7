//! Dispatch: timers, the ready queue, the cursor walk and the ordering-key queues.
//!
//! A poll, in order: (1) fires every timer due by `now` (expired leases and waits end: those
//! messages are ready); (2) looks up redriven DLQ messages not looked up yet; (3) leases
//! ready messages, oldest first; (4) walks the cursor over new offsets, classifying each:
//! settled already → skipped; filter does not select it → settled silently; key held by an
//! earlier pending message → blocked in the key's queue; `deliver_at` (or a retry from before
//! a restart) in the future → waiting; else → leased now. The walk stops when `max` leases
//! are out, at `log_end`, at an offset the integrator cannot read now, or when the lookahead
//! is full.

use super::state::{release_hold, Entry, Phase, SubscriptionState};
use super::{JournalRecord, Lease, Meta, Poll, Ref};

impl SubscriptionState {
    /// Leases up to `max` messages to `holder` for `lease_ms` at `now_ms`, oldest first. In
    /// order:
    ///
    /// 1. every lease whose deadline is `now_ms` or earlier ends (its next delivery has
    ///    `attempt + 1`) and every retry or delay that is due ends: those messages are ready;
    /// 2. redriven DLQ messages not looked up yet are looked up and queued;
    /// 3. ready messages are leased, oldest first (redeliveries included);
    /// 4. the cursor walks over new offsets below `log_end`, skipping settled ones, and
    ///    classifies each: not selected by the filter → settled silently; its ordering key
    ///    held by an earlier pending message → blocked in the key's queue; due later (its
    ///    `deliver_at`, or a retry journalled before a restart) → waiting; else → leased now.
    ///    The walk stops when `max` leases are out, at `log_end`, at a message `meta` cannot
    ///    read, or when the [lookahead](Self::set_lookahead) is full.
    ///
    /// `meta` reads a message's [`Meta`] from its log; `None` means it cannot be read now:
    /// dispatch stops there and tries again at the next poll, and nothing is settled because
    /// of it.
    ///
    /// Commit [`Poll::journal`] before handing the leases out, so a delivery is never
    /// visible before its attempt is durable. Prefetch per holder is the caller's: it passes
    /// `max` (see [`held_by`](Self::held_by)).
    pub fn poll(
        &mut self,
        now_ms: u64,
        max: usize,
        holder: u64,
        lease_ms: u64,
        log_end: u64,
        meta: &mut dyn FnMut(Ref) -> Option<Meta>,
    ) -> Poll {
        self.advance(now_ms);
        let mut poll = Poll::default();
        self.classify_redriven(meta, &mut poll.journal);
        self.hand_out(max, holder, lease_ms, &mut poll);
        self.walk(max, holder, lease_ms, log_end, meta, &mut poll);
        poll
    }

    /// Fires every timer due at `now_ms`: waits end, expired leases end (their next delivery
    /// has `attempt + 1`, and the expiry is their first failure if they had none).
    pub(super) fn advance(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        while let Some(&(at, message)) = self.timers.first() {
            if at > now_ms {
                break;
            }
            self.timers.pop_first();
            let Some(entry) = self.entries.get_mut(&message) else {
                debug_assert!(false, "a timer points at a missing entry");
                continue;
            };
            match entry.phase {
                Phase::Waiting { .. } => {}
                Phase::Leased { holder, .. } => {
                    if entry.first_failure_ms == 0 {
                        entry.first_failure_ms = at;
                    }
                    release_hold(&mut self.held, holder);
                }
                Phase::Ready | Phase::Blocked | Phase::DeadLettering { .. } => {
                    debug_assert!(false, "a timer points at an entry without one");
                    continue;
                }
            }
            entry.phase = Phase::Ready;
            self.ready.insert(message);
        }
    }

    /// Looks up the redriven messages not looked up yet and queues them.
    fn classify_redriven(
        &mut self,
        meta: &mut dyn FnMut(Ref) -> Option<Meta>,
        journal: &mut Vec<JournalRecord>,
    ) {
        let pending: Vec<u64> = self.unclassified.iter().copied().collect();
        for dlq_offset in pending {
            let message = Ref::Dlq(dlq_offset);
            if self.entries.contains_key(&message) || self.durable.is_settled(message) {
                self.unclassified.remove(&dlq_offset);
                continue;
            }
            let Some(found) = meta(message) else {
                continue;
            };
            self.unclassified.remove(&dlq_offset);
            if found.matches {
                self.place(message, found);
            } else {
                let record = JournalRecord::Acked { message };
                self.apply(&record);
                journal.push(record);
            }
        }
    }

    /// Leases ready messages, oldest first, until `max` leases are out.
    fn hand_out(&mut self, max: usize, holder: u64, lease_ms: u64, poll: &mut Poll) {
        while poll.leases.len() < max {
            let Some(message) = self.ready.pop_first() else {
                break;
            };
            self.lease(message, holder, lease_ms, poll);
        }
    }

    /// Leases one message taken from the ready queue.
    fn lease(&mut self, message: Ref, holder: u64, lease_ms: u64, poll: &mut Poll) {
        let now_ms = self.now_ms;
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        let deadline = now_ms.saturating_add(lease_ms);
        let Some(entry) = self.entries.get_mut(&message) else {
            debug_assert!(false, "a ready message without an entry");
            return;
        };
        let attempt = entry.next_attempt;
        if attempt > 1 && entry.first_failure_ms == 0 {
            // It failed before a restart and the time was lost with the process.
            entry.first_failure_ms = now_ms;
        }
        entry.phase = Phase::Leased {
            token,
            deadline,
            holder,
            attempt,
        };
        entry.next_attempt = attempt.saturating_add(1);
        entry.retry_due_ms = 0;
        let record = JournalRecord::Delivered {
            message,
            attempt,
            first_failure_ms: entry.first_failure_ms,
        };
        self.timers.insert((deadline, message));
        *self.held.entry(holder).or_default() += 1;
        self.durable.apply(&record);
        poll.journal.push(record);
        poll.leases.push(Lease {
            message,
            attempt,
            token,
            deadline_ms: deadline,
        });
    }

    /// Moves the cursor over new offsets (see the module docs).
    fn walk(
        &mut self,
        max: usize,
        holder: u64,
        lease_ms: u64,
        log_end: u64,
        meta: &mut dyn FnMut(Ref) -> Option<Meta>,
        poll: &mut Poll,
    ) {
        // A run of offsets settled silently, journalled as one `Skipped` record.
        let mut skipped: Option<(u64, u64)> = None;
        self.cursor = self.cursor.max(self.durable.low_watermark());
        while poll.leases.len() < max
            && self.cursor < log_end
            && self.entries.len() < self.lookahead
        {
            let offset = self.cursor;
            if let Some(end) = self.durable.settled.run_end(offset) {
                if let Some(run) = skipped.as_mut().filter(|run| run.1 == offset) {
                    run.1 = end;
                }
                self.cursor = end;
                continue;
            }
            let message = Ref::Topic(offset);
            if self.entries.contains_key(&message) {
                self.cursor = offset + 1;
                continue;
            }
            let Some(found) = meta(message) else {
                break;
            };
            self.cursor = offset + 1;
            if !found.matches {
                match skipped.as_mut().filter(|run| run.1 == offset) {
                    Some(run) => run.1 = offset + 1,
                    None => {
                        self.flush_skipped(skipped.take(), poll);
                        skipped = Some((offset, offset + 1));
                    }
                }
                continue;
            }
            self.flush_skipped(skipped.take(), poll);
            self.place(message, found);
            self.hand_out(max, holder, lease_ms, poll);
        }
        self.flush_skipped(skipped, poll);
    }

    fn flush_skipped(&mut self, run: Option<(u64, u64)>, poll: &mut Poll) {
        if let Some((from, to)) = run {
            let record = JournalRecord::Skipped { from, to };
            self.apply(&record);
            poll.journal.push(record);
        }
    }

    /// Creates the entry of a message dispatch meets, with what the journal knows of it, and
    /// queues it: behind its key if the key is held, else ready or waiting.
    pub(super) fn place(&mut self, message: Ref, meta: Meta) {
        let (next_attempt, first_failure_ms, retry_due_ms) = self
            .durable
            .delivered
            .get(&message)
            .map_or((1, 0, 0), |known| {
                (
                    known.next_attempt(),
                    known.first_failure_ms,
                    known.retry_due_ms,
                )
            });
        let first_of_its_key = match &meta.ordering_key {
            Some(key) => match self.keys.get_mut(key) {
                Some(queue) => {
                    queue.push_back(message);
                    false
                }
                None => {
                    self.keys.insert(key.clone(), [message].into());
                    true
                }
            },
            None => true,
        };
        self.entries.insert(
            message,
            Entry {
                key: meta.ordering_key,
                deliver_at_ms: meta.deliver_at_ms,
                next_attempt,
                first_failure_ms,
                retry_due_ms,
                phase: Phase::Blocked,
            },
        );
        if first_of_its_key {
            self.schedule(message);
        }
    }

    /// Puts an entry that is in no queue (and has no timer) into the ready queue, or waiting
    /// until it is due.
    pub(super) fn schedule(&mut self, message: Ref) {
        let now_ms = self.now_ms;
        let Some(entry) = self.entries.get_mut(&message) else {
            debug_assert!(false, "schedule of a missing entry");
            return;
        };
        let due = entry.due_ms();
        if due > now_ms {
            entry.phase = Phase::Waiting { until: due };
            self.timers.insert((due, message));
        } else {
            entry.phase = Phase::Ready;
            self.ready.insert(message);
        }
    }

    /// Removes a message's entry from every structure; if it was the front of its ordering
    /// key, the next message of the key is scheduled.
    pub(super) fn unlink(&mut self, message: Ref) -> Option<Entry> {
        let entry = self.entries.remove(&message)?;
        match entry.phase {
            Phase::Ready => {
                self.ready.remove(&message);
            }
            Phase::Waiting { until } => {
                self.timers.remove(&(until, message));
            }
            Phase::Leased {
                deadline, holder, ..
            } => {
                self.timers.remove(&(deadline, message));
                release_hold(&mut self.held, holder);
            }
            Phase::Blocked | Phase::DeadLettering { .. } => {}
        }
        if let Some(key) = &entry.key {
            let mut next = None;
            if let Some(queue) = self.keys.get_mut(key) {
                if queue.front() == Some(&message) {
                    queue.pop_front();
                    next = queue.front().copied();
                } else {
                    queue.retain(|&other| other != message);
                }
                if queue.is_empty() {
                    self.keys.remove(key);
                }
            }
            if let Some(next) = next {
                self.schedule(next);
            }
        }
        Some(entry)
    }
}
