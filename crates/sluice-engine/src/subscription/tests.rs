//! Tests of the subscription state machine: every verb, timers, strict ordering, the DLQ,
//! restarts (checkpoint + journal replay), encodings, compactness, and two property tests:
//! replay rebuilds the live durable state, and random operations agree with a plain model.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;

use super::state::Phase;
use super::*;

/// Start of time in the tests: far from 0, which encodes "none".
const T0: u64 = 1_700_000_000_000;
const LEASE: u64 = 30_000;
const AT_START: JournalPosition = JournalPosition {
    segment: 0,
    position: 0,
};

// ---------------------------------------------------------------------------------------
// Invariants

/// Panics if an invariant of the module docs does not hold (O(n): tests only).
fn check_invariants(state: &SubscriptionState) {
    let low = state.durable.low_watermark();
    assert!(
        state.cursor >= low,
        "cursor {} below low watermark {low}",
        state.cursor
    );
    for offset in low..state.cursor.min(low + 10_000) {
        let settled = state.durable.settled.contains(offset);
        let pending = state.entries.contains_key(&Ref::Topic(offset));
        assert!(
            settled != pending,
            "offset {offset} below the cursor must be settled or pending, not both or neither"
        );
    }
    let mut ready = BTreeSet::new();
    let mut timers = BTreeSet::new();
    let mut held: HashMap<u64, u32> = HashMap::new();
    let mut keyed = 0;
    for (&message, entry) in &state.entries {
        assert!(
            !state.durable.is_settled(message),
            "settled {message} has an entry"
        );
        if let Ref::Topic(offset) = message {
            assert!(
                offset < state.cursor,
                "{message} has an entry beyond the cursor"
            );
        }
        match entry.phase {
            Phase::Ready => {
                ready.insert(message);
            }
            Phase::Waiting { until } => {
                timers.insert((until, message));
            }
            Phase::Leased {
                deadline, holder, ..
            } => {
                timers.insert((deadline, message));
                *held.entry(holder).or_default() += 1;
            }
            Phase::Blocked => assert!(entry.key.is_some(), "only keyed messages are blocked"),
            Phase::DeadLettering { .. } => {}
        }
        if let Some(key) = &entry.key {
            keyed += 1;
            let queue = state.keys.get(key).expect("a keyed entry has a key queue");
            let position = queue.iter().position(|&other| other == message);
            assert!(position.is_some(), "{message} is in its key queue");
            assert_eq!(
                position != Some(0),
                entry.phase == Phase::Blocked,
                "exactly the non-front entries of a key are blocked ({message})"
            );
        }
    }
    assert_eq!(ready, state.ready, "ready queue = ready entries");
    assert_eq!(timers, state.timers, "timers = waiting and leased entries");
    assert_eq!(held, state.held, "held counts = leases per holder");
    let queued: usize = state.keys.values().map(|queue| queue.len()).sum();
    assert_eq!(queued, keyed, "key queues hold exactly the keyed entries");
    assert!(
        state.keys.values().all(|queue| !queue.is_empty()),
        "no empty key queue is kept"
    );
    for &offset in &state.unclassified {
        assert!(
            state.durable.redriven.contains(&offset),
            "unclassified DLQ offset {offset} is redriven"
        );
        assert!(
            !state.entries.contains_key(&Ref::Dlq(offset)),
            "unclassified DLQ offset {offset} has no entry yet"
        );
    }
}

// ---------------------------------------------------------------------------------------
// A fixture: a topic log of metas, a DLQ log, a clock and the journal.

fn plain() -> Meta {
    Meta::now()
}

fn keyed(key: &str) -> Meta {
    Meta {
        ordering_key: Some(key.to_owned()),
        ..Meta::now()
    }
}

fn delayed(deliver_at_ms: u64) -> Meta {
    Meta {
        deliver_at_ms,
        ..Meta::now()
    }
}

fn unmatched() -> Meta {
    Meta {
        matches: false,
        ..Meta::now()
    }
}

fn refs(leases: &[Lease]) -> Vec<Ref> {
    leases.iter().map(|lease| lease.message).collect()
}

#[derive(Debug, Clone)]
struct Fixture {
    state: SubscriptionState,
    now: u64,
    log: Vec<Meta>,
    dlq: Vec<Meta>,
    journal: Vec<JournalRecord>,
    /// The last checkpoint and the journal length it includes.
    checkpoint: Vec<u8>,
    restarts: u64,
}

impl Fixture {
    fn new() -> Self {
        let state = SubscriptionState::new(0);
        let checkpoint = state.checkpoint(AT_START);
        Self {
            state,
            now: T0,
            log: Vec::new(),
            dlq: Vec::new(),
            journal: Vec::new(),
            checkpoint,
            restarts: 0,
        }
    }

    fn publish(&mut self, meta: Meta) -> Ref {
        self.log.push(meta);
        Ref::Topic(self.log.len() as u64 - 1)
    }

    fn record(&mut self, record: JournalRecord) {
        assert_eq!(
            JournalRecord::decode(&record.encode()).as_ref(),
            Ok(&record),
            "every journal record round-trips"
        );
        self.journal.push(record);
    }

    fn poll_for(&mut self, holder: u64, max: usize) -> Vec<Lease> {
        let (log, dlq) = (&self.log, &self.dlq);
        let mut meta = |message: Ref| match message {
            Ref::Topic(offset) => log.get(offset as usize).cloned(),
            Ref::Dlq(offset) => dlq.get(offset as usize).cloned(),
        };
        let poll = self.state.poll(
            self.now,
            max,
            holder,
            LEASE,
            self.log.len() as u64,
            &mut meta,
        );
        for record in poll.journal {
            self.record(record);
        }
        check_invariants(&self.state);
        poll.leases
    }

    fn poll(&mut self, max: usize) -> Vec<Lease> {
        self.poll_for(0, max)
    }

    fn one(&mut self) -> Lease {
        let leases = self.poll(1);
        assert_eq!(leases.len(), 1, "one message is ready");
        leases.into_iter().next().unwrap()
    }

    fn ack(&mut self, lease: &Lease) -> Result<(), StateError> {
        let record = self.state.ack(lease.message, lease.token, self.now)?;
        self.record(record);
        check_invariants(&self.state);
        Ok(())
    }

    fn retry(&mut self, lease: &Lease, after_ms: u64) -> Result<(), StateError> {
        let record = self
            .state
            .retry(lease.message, lease.token, self.now, after_ms)?;
        self.record(record);
        check_invariants(&self.state);
        Ok(())
    }

    fn release(&mut self, lease: &Lease) -> Result<(), StateError> {
        let record = self.state.release(lease.message, lease.token, self.now)?;
        self.record(record);
        check_invariants(&self.state);
        Ok(())
    }

    /// Both steps of a dead-letter; the DLQ copy keeps the message's ordering key.
    fn dead_letter(&mut self, lease: &Lease) -> Result<(DeadLetter, u64), StateError> {
        let dead_letter = self
            .state
            .dead_letter(lease.message, lease.token, self.now)?;
        let dlq_offset = self.dlq.len() as u64;
        let key = match lease.message {
            Ref::Topic(offset) => self.log[offset as usize].ordering_key.clone(),
            Ref::Dlq(offset) => self.dlq[offset as usize].ordering_key.clone(),
        };
        self.dlq.push(Meta {
            ordering_key: key,
            ..Meta::now()
        });
        let record = self.state.dead_lettered(lease.message, dlq_offset)?;
        self.record(record);
        check_invariants(&self.state);
        Ok((dead_letter, dlq_offset))
    }

    fn redrive(&mut self, dlq_offset: u64) -> Result<(), StateError> {
        for record in self.state.redrive(dlq_offset)? {
            self.record(record);
        }
        Ok(())
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
    }

    fn take_checkpoint(&mut self) {
        self.checkpoint = self.state.checkpoint(JournalPosition {
            segment: 0,
            position: self.journal.len() as u64,
        });
    }

    /// A crash and an open: the last checkpoint plus the journal after it.
    fn restart(&mut self) {
        let (mut state, position) =
            SubscriptionState::restore(&self.checkpoint).expect("the checkpoint restores");
        for record in &self.journal[position.position as usize..] {
            state.apply(record);
        }
        self.restarts += 1;
        state.start_tokens_at(self.restarts << 40);
        check_invariants(&state);
        self.state = state;
    }
}

// ---------------------------------------------------------------------------------------
// Dispatch and the verbs

#[test]
fn given_new_messages_when_polled_then_they_are_leased_oldest_first_with_attempt_one() {
    let mut f = Fixture::new();
    for _ in 0..3 {
        f.publish(plain());
    }
    let leases = f.poll(10);
    assert_eq!(
        refs(&leases),
        [Ref::Topic(0), Ref::Topic(1), Ref::Topic(2)],
        "oldest first"
    );
    assert!(
        leases.iter().all(|lease| lease.attempt == 1),
        "first delivery is attempt 1"
    );
    assert!(
        leases.iter().all(|lease| lease.deadline_ms == T0 + LEASE),
        "deadline = now + lease"
    );
    let tokens: BTreeSet<u64> = leases.iter().map(|lease| lease.token).collect();
    assert_eq!(tokens.len(), 3, "tokens are distinct");
    assert_eq!(
        f.journal,
        leases
            .iter()
            .map(|lease| JournalRecord::Delivered {
                message: lease.message,
                attempt: 1,
                first_failure_ms: 0
            })
            .collect::<Vec<_>>(),
        "one Delivered record per lease"
    );
    assert!(f.poll(10).is_empty(), "nothing more is ready");
}

#[test]
fn poll_respects_max_and_a_later_poll_continues_where_the_cursor_stopped() {
    let mut f = Fixture::new();
    for _ in 0..5 {
        f.publish(plain());
    }
    assert_eq!(refs(&f.poll(2)), [Ref::Topic(0), Ref::Topic(1)], "max 2");
    assert_eq!(f.state.cursor(), 2, "the cursor stops after the last lease");
    assert_eq!(
        refs(&f.poll(10)),
        [Ref::Topic(2), Ref::Topic(3), Ref::Topic(4)],
        "the rest"
    );
    assert!(f.poll(0).is_empty(), "max 0 leases nothing");
}

#[test]
fn an_acked_message_is_never_delivered_again_and_settled_offsets_advance_the_low_watermark() {
    let mut f = Fixture::new();
    for _ in 0..3 {
        f.publish(plain());
    }
    let leases = f.poll(3);
    f.ack(&leases[2]).unwrap();
    f.ack(&leases[0]).unwrap();
    assert_eq!(f.state.low_watermark(), 1, "offset 1 is still unsettled");
    assert_eq!(
        f.state.durable.settled.range_count(),
        1,
        "offset 2 is a range above the watermark"
    );
    f.ack(&leases[1]).unwrap();
    assert_eq!(
        f.state.low_watermark(),
        3,
        "the range is folded into the watermark"
    );
    assert_eq!(f.state.in_memory_entries(), 0, "nothing left in memory");
    f.advance(10 * LEASE);
    assert!(
        f.poll(10).is_empty(),
        "acked messages are never delivered again"
    );
}

#[test]
fn an_expired_lease_redelivers_the_message_with_the_next_attempt() {
    let mut f = Fixture::new();
    f.publish(plain());
    let first = f.one();
    f.advance(LEASE - 1);
    assert!(
        f.poll(1).is_empty(),
        "the lease still holds 1 ms before its deadline"
    );
    f.advance(1);
    let second = f.one();
    assert_eq!(second.message, first.message, "the same message");
    assert_eq!(second.attempt, 2, "lease expiry counts as a delivery");
    assert_ne!(second.token, first.token, "a new token");
    assert_eq!(
        f.journal.last(),
        Some(&JournalRecord::Delivered {
            message: Ref::Topic(0),
            attempt: 2,
            first_failure_ms: T0 + LEASE
        }),
        "the expiry is the first failure, journalled with the redelivery"
    );
}

#[test]
fn a_verb_after_the_lease_expired_fails_with_lease_lost_even_before_redelivery() {
    let mut f = Fixture::new();
    f.publish(plain());
    let lease = f.one();
    f.advance(LEASE);
    let lost = Err(StateError::LeaseLost {
        message: lease.message,
    });
    assert_eq!(f.ack(&lease), lost, "ack at the deadline");
    assert_eq!(f.retry(&lease, 0), lost, "retry at the deadline");
    assert_eq!(f.release(&lease), lost, "release at the deadline");
    assert_eq!(
        f.state
            .extend(lease.message, lease.token, f.now, LEASE)
            .map(|_| ()),
        lost,
        "extend at the deadline"
    );
    assert_eq!(
        f.dead_letter(&lease).map(|_| ()),
        lost,
        "dead_letter at the deadline"
    );
    assert_eq!(f.one().attempt, 2, "and the message is delivered again");
}

#[test]
fn stale_tokens_fail_with_lease_lost_after_redelivery_settlement_or_another_verb() {
    let mut f = Fixture::new();
    f.publish(plain());
    f.publish(plain());
    let old = f.one();
    f.advance(LEASE);
    let new = f.one();
    assert_eq!(new.message, old.message, "redelivered");
    assert!(
        matches!(f.ack(&old), Err(StateError::LeaseLost { .. })),
        "the old token is stale after redelivery"
    );
    f.retry(&new, 0).unwrap();
    assert!(
        matches!(f.ack(&new), Err(StateError::LeaseLost { .. })),
        "a verb after retry on the same lease fails"
    );
    let again = f.one();
    f.ack(&again).unwrap();
    assert!(
        matches!(f.ack(&again), Err(StateError::LeaseLost { .. })),
        "a second ack fails: ack is not idempotent"
    );
    let other = f.one();
    let forged = Lease {
        message: other.message,
        token: again.token,
        ..other.clone()
    };
    assert!(
        matches!(f.ack(&forged), Err(StateError::LeaseLost { .. })),
        "another lease's token does not fit"
    );
    f.ack(&other).unwrap();
}

#[test]
fn a_retried_message_is_not_delivered_before_it_is_due_and_comes_back_with_the_next_attempt() {
    let mut f = Fixture::new();
    f.publish(plain());
    let lease = f.one();
    f.retry(&lease, 5_000).unwrap();
    assert_eq!(
        f.journal.last(),
        Some(&JournalRecord::Retry {
            message: Ref::Topic(0),
            due_ms: T0 + 5_000,
            first_failure_ms: T0
        }),
        "the retry is journalled with its due time and first failure"
    );
    assert_eq!(
        f.state.next_wakeup_ms(),
        Some(T0 + 5_000),
        "wake up when due"
    );
    f.advance(4_999);
    assert!(f.poll(1).is_empty(), "not before it is due");
    f.advance(1);
    let again = f.one();
    assert_eq!(again.attempt, 2, "a retry counts as a delivery");
}

#[test]
fn a_released_message_is_ready_at_once_and_keeps_its_attempt() {
    let mut f = Fixture::new();
    f.publish(plain());
    let lease = f.one();
    f.release(&lease).unwrap();
    let again = f.one();
    assert_eq!(again.attempt, 1, "release is no failure");
    f.advance(LEASE);
    let third = f.one();
    assert_eq!(third.attempt, 2, "expiry is");
    f.release(&third).unwrap();
    assert_eq!(f.one().attempt, 2, "release keeps attempt 2");
}

#[test]
fn extend_moves_the_deadline_and_the_lease_outlives_its_first_deadline() {
    let mut f = Fixture::new();
    f.publish(plain());
    let lease = f.one();
    f.advance(10_000);
    let deadline = f
        .state
        .extend(lease.message, lease.token, f.now, 60_000)
        .unwrap();
    assert_eq!(deadline, T0 + 70_000, "deadline = now + lease");
    assert_eq!(f.state.next_wakeup_ms(), Some(deadline), "the timer moved");
    f.advance(LEASE);
    assert!(
        f.poll(1).is_empty(),
        "not redelivered after the first deadline"
    );
    f.ack(&lease).unwrap();
}

#[test]
fn held_by_counts_the_leases_of_each_holder() {
    let mut f = Fixture::new();
    for _ in 0..5 {
        f.publish(plain());
    }
    let first = f.poll_for(1, 2);
    let second = f.poll_for(2, 3);
    assert_eq!(
        (f.state.held_by(1), f.state.held_by(2), f.state.held_by(3)),
        (2, 3, 0),
        "leases per holder"
    );
    f.ack(&first[0]).unwrap();
    f.release(&second[0]).unwrap();
    assert_eq!(
        (f.state.held_by(1), f.state.held_by(2)),
        (1, 2),
        "verbs end holds"
    );
    f.advance(LEASE);
    f.poll_for(3, 0);
    assert_eq!(
        (f.state.held_by(1), f.state.held_by(2)),
        (0, 0),
        "expiry ends holds"
    );
}

// ---------------------------------------------------------------------------------------
// Strict ordering and delays

#[test]
fn a_key_has_one_message_in_flight_and_the_next_goes_after_the_ack() {
    let mut f = Fixture::new();
    let a = f.publish(keyed("k"));
    let b = f.publish(keyed("k"));
    let c = f.publish(plain());
    let leases = f.poll(10);
    assert_eq!(refs(&leases), [a, c], "b waits behind a; c has no key");
    f.ack(&leases[0]).unwrap();
    assert_eq!(refs(&f.poll(10)), [b], "b goes after a is acked");
}

#[test]
fn a_key_is_held_while_its_message_waits_for_retry_and_the_retried_one_goes_first() {
    let mut f = Fixture::new();
    let a = f.publish(keyed("k"));
    let b = f.publish(keyed("k"));
    let lease = f.one();
    f.retry(&lease, 10_000).unwrap();
    f.advance(5_000);
    assert!(
        f.poll(10).is_empty(),
        "the key is held during the retry wait"
    );
    f.advance(5_000);
    let again = f.poll(10);
    assert_eq!(refs(&again), [a], "the retried message goes first");
    assert_eq!(again[0].attempt, 2, "with the next attempt");
    f.advance(LEASE);
    let third = f.poll(10);
    assert_eq!(refs(&third), [a], "an expired lease keeps the key too");
    f.dead_letter(&third[0]).unwrap();
    assert_eq!(refs(&f.poll(10)), [b], "dead-lettering releases the key");
}

#[test]
fn a_message_being_dead_lettered_holds_its_key_until_dead_lettered() {
    let mut f = Fixture::new();
    f.publish(keyed("k"));
    let b = f.publish(keyed("k"));
    let lease = f.one();
    f.state
        .dead_letter(lease.message, lease.token, f.now)
        .unwrap();
    assert!(
        f.poll(10).is_empty(),
        "the key is held between the two steps"
    );
    let record = f.state.dead_lettered(lease.message, 0).unwrap();
    f.record(record);
    assert_eq!(refs(&f.poll(10)), [b], "then the next goes");
}

#[test]
fn a_key_stays_held_across_a_restart_while_its_message_waits_for_retry() {
    let mut f = Fixture::new();
    let a = f.publish(keyed("k"));
    let b = f.publish(keyed("k"));
    let lease = f.one();
    f.retry(&lease, 10_000).unwrap();
    f.restart();
    assert!(
        f.poll(10).is_empty(),
        "after restart: a waits, b is blocked"
    );
    f.advance(10_000);
    let again = f.poll(10);
    assert_eq!(refs(&again), [a], "a first, at its due time");
    assert_eq!(again[0].attempt, 2, "with the next attempt");
    f.ack(&again[0]).unwrap();
    let next = f.poll(10);
    assert_eq!(refs(&next), [b], "then b");
    assert_eq!(next[0].attempt, 1, "b was never delivered");
}

#[test]
fn a_delayed_message_waits_for_its_deliver_at_without_holding_back_later_ones() {
    let mut f = Fixture::new();
    let a = f.publish(delayed(T0 + 10_000));
    let b = f.publish(plain());
    assert_eq!(refs(&f.poll(10)), [b], "b is not held behind a's delay");
    assert_eq!(
        f.state.next_wakeup_ms(),
        Some(T0 + 10_000),
        "wake up at a's time"
    );
    f.advance(9_999);
    assert!(f.poll(10).is_empty(), "a is not early");
    f.advance(1);
    let lease = f.one();
    assert_eq!(
        (lease.message, lease.attempt),
        (a, 1),
        "a at its time, attempt 1"
    );
}

#[test]
fn a_delayed_keyed_message_holds_its_key() {
    let mut f = Fixture::new();
    let a = f.publish(Meta {
        ordering_key: Some("k".into()),
        deliver_at_ms: T0 + 10_000,
        matches: true,
    });
    let b = f.publish(keyed("k"));
    assert!(f.poll(10).is_empty(), "b waits behind the delayed a");
    f.advance(10_000);
    let lease = f.one();
    assert_eq!(lease.message, a, "a first");
    f.ack(&lease).unwrap();
    assert_eq!(f.one().message, b, "then b");
}

#[test]
fn messages_the_filter_does_not_select_are_settled_silently_and_journalled_as_one_skipped_run() {
    let mut f = Fixture::new();
    let first = f.publish(plain());
    for _ in 0..3 {
        f.publish(unmatched());
    }
    let last = f.publish(plain());
    let leases = f.poll(10);
    assert_eq!(
        refs(&leases),
        [first, last],
        "non-matching messages are not delivered"
    );
    assert!(
        f.journal
            .contains(&JournalRecord::Skipped { from: 1, to: 4 }),
        "one Skipped record for the run: {:?}",
        f.journal
    );
    f.ack(&leases[0]).unwrap();
    assert_eq!(f.state.low_watermark(), 4, "the skipped run is settled");
    f.ack(&leases[1]).unwrap();
    assert_eq!(f.state.low_watermark(), 5, "all settled");
}

#[test]
fn an_unreadable_message_stops_dispatch_without_settling_anything() {
    let mut f = Fixture::new();
    f.publish(plain());
    f.publish(plain());
    let mut meta = |message: Ref| (message == Ref::Topic(0)).then(Meta::now);
    let poll = f.state.poll(f.now, 10, 0, LEASE, 2, &mut meta);
    assert_eq!(
        refs(&poll.leases),
        [Ref::Topic(0)],
        "offset 1 cannot be read now"
    );
    assert_eq!(
        f.state.cursor(),
        1,
        "the cursor waits at the unreadable offset"
    );
    assert!(
        !poll
            .journal
            .iter()
            .any(|record| matches!(record, JournalRecord::Skipped { .. })),
        "nothing is skipped"
    );
    for record in poll.journal {
        f.record(record);
    }
    assert_eq!(
        refs(&f.poll(10)),
        [Ref::Topic(1)],
        "readable again: delivered"
    );
}

#[test]
fn the_lookahead_bounds_the_entries_a_busy_key_makes_the_cursor_pass() {
    let mut f = Fixture::new();
    f.state.set_lookahead(10);
    for _ in 0..100 {
        f.publish(keyed("hot"));
    }
    let mut lease = f.one();
    assert!(f.poll(10).is_empty(), "the key is busy");
    assert!(
        f.state.entries.len() <= 10,
        "at most the lookahead is pending: {}",
        f.state.entries.len()
    );
    assert!(
        f.state.cursor() <= 10,
        "the cursor stopped at the lookahead"
    );
    for expected in 1..100 {
        f.ack(&lease).unwrap();
        lease = f.one();
        assert_eq!(
            lease.message,
            Ref::Topic(expected),
            "the key's order is kept"
        );
    }
    f.ack(&lease).unwrap();
    assert_eq!(f.state.low_watermark(), 100, "all settled");
}

// ---------------------------------------------------------------------------------------
// Restart

#[test]
fn a_message_leased_at_a_crash_is_delivered_again_after_restart_with_the_next_attempt() {
    let mut f = Fixture::new();
    f.publish(plain());
    let before = f.one();
    f.restart();
    assert_eq!(
        f.ack(&before),
        Err(StateError::LeaseLost {
            message: before.message
        }),
        "a lease does not survive a restart"
    );
    let after = f.one();
    assert_eq!(
        (after.message, after.attempt),
        (before.message, 2),
        "next attempt"
    );
    assert_eq!(
        f.journal.last(),
        Some(&JournalRecord::Delivered {
            message: after.message,
            attempt: 2,
            first_failure_ms: T0
        }),
        "a failure whose time was lost counts from the redelivery"
    );
}

#[test]
fn a_released_message_keeps_its_attempt_across_a_restart() {
    let mut f = Fixture::new();
    f.publish(plain());
    let lease = f.one();
    f.release(&lease).unwrap();
    f.take_checkpoint();
    f.restart();
    assert_eq!(f.one().attempt, 1, "released: same attempt after restart");
}

#[test]
fn messages_blocked_or_delayed_at_a_crash_are_found_again_by_the_cursor() {
    let mut f = Fixture::new();
    let a = f.publish(keyed("k"));
    let b = f.publish(keyed("k"));
    let c = f.publish(delayed(T0 + 10_000));
    let d = f.publish(plain());
    let leases = f.poll(10);
    assert_eq!(refs(&leases), [a, d], "b blocked, c delayed");
    f.ack(&leases[1]).unwrap();
    f.restart();
    assert_eq!(
        f.state.cursor(),
        0,
        "the cursor restarts at the low watermark"
    );
    let after = f.poll(10);
    assert_eq!(
        refs(&after),
        [a],
        "a again; b still blocked; c still delayed; d settled"
    );
    assert_eq!(after[0].attempt, 2, "a's lease was lost in the crash");
    f.advance(10_000);
    assert_eq!(refs(&f.poll(10)), [c], "c at its time");
    f.ack(&after[0]).unwrap();
    assert_eq!(refs(&f.poll(10)), [b], "b after a");
}

#[test]
fn a_checkpoint_restores_the_same_state_as_the_journal_it_replaces() {
    let mut f = Fixture::new();
    for key in ["a", "b", "a"] {
        f.publish(keyed(key));
    }
    f.publish(unmatched());
    f.publish(plain());
    let leases = f.poll(10);
    f.retry(&leases[0], 1_000).unwrap();
    f.ack(&leases[1]).unwrap();
    let mut from_journal = f.clone();
    from_journal.restart();
    f.take_checkpoint();
    f.restart();
    assert_eq!(
        f.state, from_journal.state,
        "checkpoint + nothing = initial checkpoint + whole journal"
    );
}

// ---------------------------------------------------------------------------------------
// The dead-letter queue

#[test]
fn dead_lettering_settles_the_message_and_lists_it_in_the_dlq_with_its_first_failure() {
    let mut f = Fixture::new();
    let a = f.publish(plain());
    let lease = f.one();
    f.advance(100);
    f.retry(&lease, 1_000).unwrap();
    f.advance(1_000);
    let again = f.one();
    f.advance(500);
    let (dead_letter, dlq_offset) = f.dead_letter(&again).unwrap();
    assert_eq!(
        dead_letter,
        DeadLetter {
            attempt: 2,
            first_failure_at_ms: T0 + 100
        },
        "attempt of the last delivery; first failure = the first retry"
    );
    assert_eq!(
        f.journal.last(),
        Some(&JournalRecord::DeadLettered {
            message: a,
            dlq_offset
        }),
        "journalled"
    );
    assert_eq!(f.state.dlq_live().collect::<Vec<_>>(), [0], "in the DLQ");
    assert_eq!(f.state.low_watermark(), 1, "settled");
    f.advance(10 * LEASE);
    assert!(f.poll(10).is_empty(), "not delivered again");
    assert_eq!(f.state.stats(f.now, 1).dead_lettered, 1, "counted");
}

#[test]
fn dead_lettering_a_first_delivery_reports_now_as_the_first_failure() {
    let mut f = Fixture::new();
    f.publish(plain());
    let lease = f.one();
    f.advance(7);
    let (dead_letter, _) = f.dead_letter(&lease).unwrap();
    assert_eq!(
        dead_letter,
        DeadLetter {
            attempt: 1,
            first_failure_at_ms: T0 + 7
        },
        "failed now"
    );
    assert_eq!(
        f.state.dead_lettered(lease.message, 1),
        Err(StateError::NotDeadLettering {
            message: lease.message
        }),
        "the second step once only"
    );
}

#[test]
fn the_first_failure_survives_a_restart() {
    let mut f = Fixture::new();
    f.publish(plain());
    let lease = f.one();
    f.advance(100);
    f.retry(&lease, 0).unwrap();
    f.restart();
    f.advance(1_000);
    let again = f.one();
    assert_eq!(again.attempt, 2, "retried before the restart");
    let (dead_letter, _) = f.dead_letter(&again).unwrap();
    assert_eq!(
        dead_letter.first_failure_at_ms,
        T0 + 100,
        "the retry's time, from the journal"
    );
}

#[test]
fn cancelling_a_dead_letter_makes_the_message_ready_with_the_next_attempt() {
    let mut f = Fixture::new();
    f.publish(plain());
    let lease = f.one();
    f.state
        .dead_letter(lease.message, lease.token, f.now)
        .unwrap();
    assert!(f.poll(10).is_empty(), "taken for the DLQ");
    f.state.cancel_dead_letter(lease.message).unwrap();
    assert_eq!(f.one().attempt, 2, "ready again, as after an expiry");
    assert!(
        matches!(
            f.state.cancel_dead_letter(lease.message),
            Err(StateError::NotDeadLettering { .. })
        ),
        "only while dead-lettering"
    );
}

#[test]
fn a_redriven_message_is_delivered_again_to_this_subscription_with_attempt_one() {
    let mut f = Fixture::new();
    f.publish(plain());
    let mut lease = f.one();
    for _ in 0..2 {
        f.retry(&lease, 0).unwrap();
        lease = f.one();
    }
    assert_eq!(lease.attempt, 3, "third delivery");
    let (_, dlq_offset) = f.dead_letter(&lease).unwrap();
    f.redrive(dlq_offset).unwrap();
    assert_eq!(
        &f.journal[f.journal.len() - 2..],
        [
            JournalRecord::DlqRemoved {
                dlq_offset,
                reason: RemovalReason::Redriven
            },
            JournalRecord::Redriven { dlq_offset }
        ],
        "both records"
    );
    assert_eq!(f.state.dlq_live().count(), 0, "no longer in the DLQ");
    let redriven = f.one();
    assert_eq!(
        (redriven.message, redriven.attempt),
        (Ref::Dlq(dlq_offset), 1),
        "attempt starts again at 1"
    );
    assert_eq!(
        f.state.stats(f.now, 1).oldest_unsettled,
        Some(Ref::Dlq(dlq_offset)),
        "the oldest unsettled message is the redriven one"
    );
    f.ack(&redriven).unwrap();
    assert!(f.state.durable.redriven.is_empty(), "settled");
    assert_eq!(
        f.redrive(dlq_offset),
        Err(StateError::NotInDlq { dlq_offset }),
        "a message is redriven once"
    );
    assert_eq!(f.state.in_memory_entries(), 0, "nothing left in memory");
}

#[test]
fn a_redriven_message_waits_behind_its_key_and_survives_a_restart() {
    let mut f = Fixture::new();
    f.publish(keyed("k"));
    let lease = f.one();
    let (_, dlq_offset) = f.dead_letter(&lease).unwrap();
    let b = f.publish(keyed("k"));
    let held = f.one();
    assert_eq!(held.message, b, "b holds the key");
    f.redrive(dlq_offset).unwrap();
    assert!(f.poll(10).is_empty(), "the redriven message waits behind b");
    f.ack(&held).unwrap();
    let redriven = f.one();
    assert_eq!(redriven.message, Ref::Dlq(dlq_offset), "then it goes");
    f.restart();
    let after = f.one();
    assert_eq!(
        (after.message, after.attempt),
        (Ref::Dlq(dlq_offset), 2),
        "pending across a restart, its lease lost"
    );
    f.ack(&after).unwrap();
    assert_eq!(
        f.state.dlq_retain_from(),
        1,
        "the DLQ log below 1 is no longer needed"
    );
}

#[test]
fn purge_removes_a_message_from_the_dlq_once() {
    let mut f = Fixture::new();
    for _ in 0..3 {
        f.publish(plain());
    }
    for lease in f.poll(3) {
        f.dead_letter(&lease).unwrap();
    }
    assert_eq!(
        f.state.dlq_live().collect::<Vec<_>>(),
        [0, 1, 2],
        "three in the DLQ"
    );
    let record = f.state.purge(1).unwrap();
    assert_eq!(
        record,
        JournalRecord::DlqRemoved {
            dlq_offset: 1,
            reason: RemovalReason::Purged
        },
        "journalled"
    );
    f.record(record);
    assert_eq!(f.state.dlq_live().collect::<Vec<_>>(), [0, 2], "1 purged");
    assert_eq!(f.state.dlq_len(), 2, "two left");
    assert_eq!(
        f.state.purge(1),
        Err(StateError::NotInDlq { dlq_offset: 1 }),
        "purged once"
    );
    assert_eq!(
        f.state.redrive(7),
        Err(StateError::NotInDlq { dlq_offset: 7 }),
        "never dead-lettered"
    );
    f.restart();
    assert_eq!(
        f.state.dlq_live().collect::<Vec<_>>(),
        [0, 2],
        "the DLQ survives a restart"
    );
}

// ---------------------------------------------------------------------------------------
// Counters

#[test]
fn stats_count_ready_in_flight_delayed_and_dead_lettered_messages() {
    let mut f = Fixture::new();
    f.publish(plain()); // 0: leased
    f.publish(plain()); // 1: retry-waiting
    f.publish(plain()); // 2: dead-lettered
    f.publish(delayed(T0 + 60_000)); // 3: delayed
    f.publish(keyed("k")); // 4: leased
    f.publish(keyed("k")); // 5: blocked: ready
    let leases = f.poll(10);
    assert_eq!(leases.len(), 4, "0, 1, 2 and 4");
    f.retry(&leases[1], 10_000).unwrap();
    f.dead_letter(&leases[2]).unwrap();
    for _ in 0..4 {
        f.publish(plain()); // 6..10: beyond the cursor
    }
    let stats = f.state.stats(f.now, 10);
    assert_eq!(
        stats,
        Stats {
            ready: 1 + 4,
            in_flight: 2,
            delayed: 2,
            dead_lettered: 1,
            oldest_unsettled: Some(Ref::Topic(0)),
        },
        "counters"
    );
    assert_eq!(
        f.state.next_wakeup_ms(),
        Some(T0 + 10_000),
        "the earliest timer is the retry"
    );
    f.advance(LEASE);
    let stats = f.state.stats(f.now, 10);
    assert_eq!(
        (stats.ready, stats.in_flight, stats.delayed),
        (1 + 4 + 3, 0, 1),
        "expired leases and the due retry are ready"
    );
}

// ---------------------------------------------------------------------------------------
// Compactness

/// A log of `len` messages, all deliverable at once, that costs no memory.
fn endless(message: Ref) -> Option<Meta> {
    let _ = message;
    Some(Meta::now())
}

#[test]
fn a_ten_million_message_backlog_with_ten_thousand_acked_costs_a_handful_of_entries() {
    const BACKLOG: u64 = 10_000_000;
    let mut state = SubscriptionState::new(0);
    let poll = state.poll(T0, 10_000, 0, LEASE, BACKLOG, &mut endless);
    assert_eq!(poll.leases.len(), 10_000, "10 000 delivered");
    // Acked in reverse order: the worst case for the ranges until the last ack.
    for lease in poll.leases.iter().rev() {
        state.ack(lease.message, lease.token, T0 + 1).unwrap();
        assert!(
            state.durable.settled.range_count() <= 1,
            "consecutive acks merge into one range"
        );
    }
    assert_eq!(
        state.low_watermark(),
        10_000,
        "all 10 000 below the watermark"
    );
    assert!(
        state.in_memory_entries() <= 2,
        "a 10-million backlog costs a handful of entries, not {}",
        state.in_memory_entries()
    );
    let stats = state.stats(T0 + 1, BACKLOG);
    assert_eq!(
        stats.ready,
        BACKLOG - 10_000,
        "the backlog is counted, not stored"
    );
    let checkpoint = state.checkpoint(AT_START);
    assert!(
        checkpoint.len() < 128,
        "a checkpoint of {} bytes",
        checkpoint.len()
    );
    let (mut restored, _) = SubscriptionState::restore(&checkpoint).unwrap();
    let next = restored.poll(T0 + 2, 1, 0, LEASE, BACKLOG, &mut endless);
    assert_eq!(
        refs(&next.leases),
        [Ref::Topic(10_000)],
        "after a restart the cursor continues at the watermark"
    );
}

#[test]
fn a_filter_that_skips_millions_of_messages_keeps_the_state_compact() {
    const BACKLOG: u64 = 10_000_000;
    let mut state = SubscriptionState::new(0);
    let mut only_the_last = |message: Ref| {
        Some(Meta {
            matches: message == Ref::Topic(BACKLOG - 1),
            ..Meta::now()
        })
    };
    let poll = state.poll(T0, 10, 0, LEASE, BACKLOG, &mut only_the_last);
    assert_eq!(
        refs(&poll.leases),
        [Ref::Topic(BACKLOG - 1)],
        "the one matching message"
    );
    assert_eq!(
        poll.journal[0],
        JournalRecord::Skipped {
            from: 0,
            to: BACKLOG - 1
        },
        "one record for the whole run"
    );
    assert_eq!(state.low_watermark(), BACKLOG - 1, "the run is settled");
    assert!(
        state.in_memory_entries() <= 4,
        "one lease (entry, timer, holder, journal knowledge): {} entries",
        state.in_memory_entries()
    );
}

// ---------------------------------------------------------------------------------------
// Encodings

fn any_ref() -> impl Strategy<Value = Ref> {
    prop_oneof![
        any::<u64>().prop_map(Ref::Topic),
        any::<u64>().prop_map(Ref::Dlq)
    ]
}

fn any_record() -> impl Strategy<Value = JournalRecord> {
    prop_oneof![
        (any_ref(), 1..=u32::MAX, any::<u64>()).prop_map(|(message, attempt, first_failure_ms)| {
            JournalRecord::Delivered {
                message,
                attempt,
                first_failure_ms,
            }
        }),
        any_ref().prop_map(|message| JournalRecord::Acked { message }),
        (any_ref(), any::<u64>(), any::<u64>()).prop_map(|(message, due_ms, first_failure_ms)| {
            JournalRecord::Retry {
                message,
                due_ms,
                first_failure_ms,
            }
        }),
        any_ref().prop_map(|message| JournalRecord::Released { message }),
        (any_ref(), any::<u64>()).prop_map(|(message, dlq_offset)| JournalRecord::DeadLettered {
            message,
            dlq_offset
        }),
        (any::<u64>(), any::<bool>()).prop_map(|(dlq_offset, purged)| JournalRecord::DlqRemoved {
            dlq_offset,
            reason: if purged {
                RemovalReason::Purged
            } else {
                RemovalReason::Redriven
            }
        }),
        any::<u64>().prop_map(|dlq_offset| JournalRecord::Redriven { dlq_offset }),
        (0..u64::MAX, 1..u64::MAX).prop_map(|(from, len)| JournalRecord::Skipped {
            from,
            to: from.saturating_add(len).max(from + 1)
        }),
    ]
}

#[test]
fn the_state_can_move_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SubscriptionState>();
    assert_send_sync::<StateError>();
}

#[test]
fn a_delivered_record_with_attempt_zero_does_not_decode() {
    let mut body = JournalRecord::Delivered {
        message: Ref::Topic(0),
        attempt: 1,
        first_failure_ms: 0,
    }
    .encode();
    body[10] = 0;
    assert!(
        JournalRecord::decode(&body).is_err(),
        "attempts start at 1: {body:?}"
    );
}

#[test]
fn journal_record_type_bytes_are_those_of_the_format_document() {
    let message = Ref::Topic(1);
    let types: Vec<u8> = [
        JournalRecord::Delivered {
            message,
            attempt: 1,
            first_failure_ms: 0,
        },
        JournalRecord::Acked { message },
        JournalRecord::Retry {
            message,
            due_ms: 0,
            first_failure_ms: 0,
        },
        JournalRecord::Released { message },
        JournalRecord::DeadLettered {
            message,
            dlq_offset: 0,
        },
        JournalRecord::DlqRemoved {
            dlq_offset: 0,
            reason: RemovalReason::Purged,
        },
        JournalRecord::Redriven { dlq_offset: 0 },
        JournalRecord::Skipped { from: 0, to: 1 },
    ]
    .iter()
    .map(|record| record.encode()[0])
    .collect();
    assert_eq!(
        types,
        (16..=23).collect::<Vec<u8>>(),
        "types 16 to 23 in order"
    );
    assert_eq!(
        JournalRecord::Acked {
            message: Ref::Dlq(0x0102)
        }
        .encode(),
        [17, 2, 2, 1, 0, 0, 0, 0, 0, 0],
        "ref = u8 source (2 = DLQ) + u64 little-endian"
    );
    assert!(
        SubscriptionState::new(0).checkpoint(AT_START)[0] == 32,
        "a checkpoint is type 32"
    );
}

proptest! {
    #[test]
    fn journal_records_round_trip(record in any_record()) {
        prop_assert_eq!(JournalRecord::decode(&record.encode()), Ok(record));
    }

    #[test]
    fn decoding_arbitrary_bytes_as_a_record_or_checkpoint_never_panics(
        body in proptest::collection::vec(any::<u8>(), 0..96),
        kind in 16u8..=32,
    ) {
        let mut body = body;
        if let Some(first) = body.first_mut() {
            *first = kind;
        }
        let _ = JournalRecord::decode(&body);
        let _ = SubscriptionState::restore(&body);
    }

    #[test]
    fn a_corrupted_checkpoint_is_an_error_or_a_valid_state_never_a_panic(
        ops in proptest::collection::vec(op(), 1..40),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
        cut in any::<prop::sample::Index>(),
    ) {
        let mut h = Harness::new();
        for op in &ops {
            h.run(op);
        }
        let body = h.fixture.state.checkpoint(AT_START);
        let mut flipped = body.clone();
        let at = flip.index(flipped.len());
        flipped[at] ^= 1 << bit;
        if let Ok((state, _)) = SubscriptionState::restore(&flipped) {
            check_invariants(&state);
        }
        let cut = cut.index(body.len());
        prop_assert!(SubscriptionState::restore(&body[..cut]).is_err(), "a truncated checkpoint is an error");
        let (restored, _) = SubscriptionState::restore(&body).unwrap();
        prop_assert_eq!(restored.checkpoint(AT_START), body, "a checkpoint round-trips");
    }
}

// ---------------------------------------------------------------------------------------
// Property tests: random operations against a plain model, and replay equivalence.

/// One random step.
#[derive(Debug, Clone)]
enum Op {
    /// `count` messages; key 3 = no key; `delay_ms` 0 = at once.
    Publish {
        count: u8,
        key: u8,
        delay_ms: u16,
        matches: bool,
    },
    Poll {
        holder: u8,
        max: u8,
        lease_ms: u16,
    },
    /// Verbs pick one of the recent leases (some of them stale) by index.
    Ack(u8),
    Retry(u8, u16),
    Release(u8),
    DeadLetter(u8),
    Extend(u8, u16),
    Advance(u16),
    Redrive(u8),
    Purge(u8),
    Checkpoint,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..4, 0u8..4, prop_oneof![Just(0u16), 1u16..3_000], proptest::bool::weighted(0.85))
            .prop_map(|(count, key, delay_ms, matches)| Op::Publish { count, key, delay_ms, matches }),
        5 => (0u8..2, 1u8..5, 100u16..3_000)
            .prop_map(|(holder, max, lease_ms)| Op::Poll { holder, max, lease_ms }),
        3 => any::<u8>().prop_map(Op::Ack),
        2 => (any::<u8>(), 0u16..2_000).prop_map(|(i, after)| Op::Retry(i, after)),
        1 => any::<u8>().prop_map(Op::Release),
        1 => any::<u8>().prop_map(Op::DeadLetter),
        1 => (any::<u8>(), 0u16..3_000).prop_map(|(i, lease)| Op::Extend(i, lease)),
        3 => (0u16..4_000).prop_map(Op::Advance),
        1 => any::<u8>().prop_map(Op::Redrive),
        1 => any::<u8>().prop_map(Op::Purge),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Restart),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelPhase {
    /// Not leased, not waiting for a retry (maybe waiting for its `deliver_at` or its key).
    Pending,
    Leased {
        token: u64,
        attempt: u32,
        deadline: u64,
        holder: u64,
    },
    RetryWaiting {
        due: u64,
    },
    Settled,
}

#[derive(Debug, Clone)]
struct ModelMessage {
    key: Option<String>,
    deliver_at: u64,
    next_attempt: u32,
    phase: ModelPhase,
}

/// What the subscription should do, kept with plain maps: every message it must receive,
/// with its phase and next attempt, and the DLQ.
#[derive(Debug, Clone, Default)]
struct Model {
    messages: BTreeMap<Ref, ModelMessage>,
    dlq: BTreeSet<u64>,
}

impl Model {
    /// Leases and retry waits that ended by `now`.
    fn expire(&mut self, now: u64) {
        for message in self.messages.values_mut() {
            match message.phase {
                ModelPhase::Leased { deadline, .. } if deadline <= now => {
                    message.phase = ModelPhase::Pending;
                }
                ModelPhase::RetryWaiting { due } if due <= now => {
                    message.phase = ModelPhase::Pending;
                }
                _ => {}
            }
        }
    }

    /// A crash: every lease is lost (its next attempt is already `attempt + 1`).
    fn restart(&mut self) {
        for message in self.messages.values_mut() {
            if let ModelPhase::Leased { .. } = message.phase {
                message.phase = ModelPhase::Pending;
            }
        }
    }

    /// Whether `r` may be delivered now: pending, due, and its key free (no message of its
    /// key in flight or waiting for a retry, no earlier topic message of its key unsettled).
    fn deliverable(&self, r: Ref, now: u64) -> bool {
        let message = &self.messages[&r];
        if message.phase != ModelPhase::Pending || message.deliver_at > now {
            return false;
        }
        let Some(key) = &message.key else {
            return true;
        };
        self.messages.iter().all(|(&other, theirs)| {
            other == r
                || theirs.key.as_ref() != Some(key)
                || match theirs.phase {
                    ModelPhase::Settled => true,
                    ModelPhase::Leased { .. } | ModelPhase::RetryWaiting { .. } => false,
                    ModelPhase::Pending => other > r,
                }
        })
    }

    fn leased_with(&self, r: Ref, token: u64) -> Option<(u32, u64)> {
        match self.messages.get(&r)?.phase {
            ModelPhase::Leased {
                token: current,
                attempt,
                holder,
                ..
            } if current == token => Some((attempt, holder)),
            _ => None,
        }
    }

    fn leased_count(&self, holder: Option<u64>) -> u64 {
        self.messages
            .values()
            .filter(|message| match message.phase {
                ModelPhase::Leased { holder: h, .. } => holder.is_none_or(|holder| holder == h),
                _ => false,
            })
            .count() as u64
    }
}

/// A fixture, the model, and the leases handed out (the verbs pick among them).
#[derive(Debug, Clone)]
struct Harness {
    fixture: Fixture,
    model: Model,
    issued: Vec<Lease>,
}

impl Harness {
    fn new() -> Self {
        Self {
            fixture: Fixture::new(),
            model: Model::default(),
            issued: Vec::new(),
        }
    }

    /// One of the 8 most recent leases: mostly live, sometimes stale.
    fn pick(&self, index: u8) -> Option<Lease> {
        let recent = self.issued.len().min(8);
        (recent > 0).then(|| self.issued[self.issued.len() - 1 - index as usize % recent].clone())
    }

    /// Runs one step, checks it against the model, and returns what it did (for lockstep
    /// comparisons).
    fn run(&mut self, op: &Op) -> String {
        let journal_before = self.fixture.journal.len();
        let restarting = matches!(op, Op::Restart);
        let outcome = self.step(op);
        if !restarting {
            // Applying a state's own records to it changes nothing.
            let mut copy = self.fixture.state.clone();
            for record in &self.fixture.journal[journal_before..] {
                copy.apply(record);
            }
            assert_eq!(
                copy, self.fixture.state,
                "re-applying the records of {op:?}"
            );
        }
        self.check();
        outcome
    }

    fn step(&mut self, op: &Op) -> String {
        self.model.expire(self.fixture.now);
        match *op {
            Op::Publish {
                count,
                key,
                delay_ms,
                matches,
            } => {
                for _ in 0..count {
                    let meta = Meta {
                        ordering_key: (key < 3).then(|| format!("k{key}")),
                        deliver_at_ms: if delay_ms == 0 {
                            0
                        } else {
                            self.fixture.now + u64::from(delay_ms)
                        },
                        matches,
                    };
                    let r = self.fixture.publish(meta.clone());
                    if matches {
                        self.model.messages.insert(
                            r,
                            ModelMessage {
                                key: meta.ordering_key,
                                deliver_at: meta.deliver_at_ms,
                                next_attempt: 1,
                                phase: ModelPhase::Pending,
                            },
                        );
                    }
                }
                format!("published {count}")
            }
            Op::Poll {
                holder,
                max,
                lease_ms,
            } => {
                let leases = self.poll(u64::from(holder), usize::from(max), u64::from(lease_ms));
                format!("{leases:?}")
            }
            Op::Ack(index) => self.verb(index, |f, lease| f.ack(lease), |_, _| ModelPhase::Settled),
            Op::Retry(index, after) => {
                let due = self.fixture.now + u64::from(after);
                self.verb(
                    index,
                    |f, lease| f.retry(lease, u64::from(after)),
                    |_, _| ModelPhase::RetryWaiting { due },
                )
            }
            Op::Release(index) => {
                let Some(lease) = self.pick(index) else {
                    return "no lease".into();
                };
                let result = self.verb(
                    index,
                    |f, lease| f.release(lease),
                    |_, _| ModelPhase::Pending,
                );
                if let Some(message) = self.model.messages.get_mut(&lease.message) {
                    if result.starts_with("ok") {
                        message.next_attempt = lease.attempt;
                    }
                }
                result
            }
            Op::DeadLetter(index) => {
                let Some(lease) = self.pick(index) else {
                    return "no lease".into();
                };
                let expected = self.model.leased_with(lease.message, lease.token);
                let dlq_offset = self.fixture.dlq.len() as u64;
                let result =
                    self.fixture
                        .state
                        .dead_letter(lease.message, lease.token, self.fixture.now);
                match (expected, result) {
                    (Some((attempt, _)), Ok(dead_letter)) => {
                        assert_eq!(dead_letter.attempt, attempt, "dead-letter attempt");
                        assert!(dead_letter.first_failure_at_ms > 0, "a first failure");
                        // The DLQ copy has no ordering key: see `Model::deliverable`.
                        self.fixture.dlq.push(Meta::now());
                        let record = self
                            .fixture
                            .state
                            .dead_lettered(lease.message, dlq_offset)
                            .unwrap();
                        self.fixture.record(record);
                        self.model.messages.get_mut(&lease.message).unwrap().phase =
                            ModelPhase::Settled;
                        self.model.dlq.insert(dlq_offset);
                        format!("dead-lettered {:?} at {dlq_offset}", lease.message)
                    }
                    (None, Err(StateError::LeaseLost { message })) => {
                        assert_eq!(message, lease.message, "the error names the message");
                        "lease lost".into()
                    }
                    (expected, result) => {
                        panic!("dead_letter of {lease:?}: model {expected:?}, state {result:?}")
                    }
                }
            }
            Op::Extend(index, lease_ms) => {
                let Some(lease) = self.pick(index) else {
                    return "no lease".into();
                };
                let expected = self.model.leased_with(lease.message, lease.token);
                let result = self.fixture.state.extend(
                    lease.message,
                    lease.token,
                    self.fixture.now,
                    u64::from(lease_ms),
                );
                match (expected, result) {
                    (Some((attempt, holder)), Ok(deadline)) => {
                        assert_eq!(
                            deadline,
                            self.fixture.now + u64::from(lease_ms),
                            "new deadline"
                        );
                        self.model.messages.get_mut(&lease.message).unwrap().phase =
                            ModelPhase::Leased {
                                token: lease.token,
                                attempt,
                                deadline,
                                holder,
                            };
                        format!("extended to {deadline}")
                    }
                    (None, Err(StateError::LeaseLost { .. })) => "lease lost".into(),
                    (expected, result) => {
                        panic!("extend of {lease:?}: model {expected:?}, state {result:?}")
                    }
                }
            }
            Op::Advance(ms) => {
                self.fixture.advance(u64::from(ms));
                format!("now {}", self.fixture.now)
            }
            Op::Redrive(index) => {
                let Some(&dlq_offset) = self
                    .model
                    .dlq
                    .iter()
                    .nth(usize::from(index) % self.model.dlq.len().max(1))
                else {
                    let never = self.fixture.dlq.len() as u64 + u64::from(index);
                    assert_eq!(
                        self.fixture.redrive(never),
                        Err(StateError::NotInDlq { dlq_offset: never }),
                        "redrive of an offset not in the DLQ"
                    );
                    return "nothing to redrive".into();
                };
                self.fixture.redrive(dlq_offset).unwrap();
                self.model.dlq.remove(&dlq_offset);
                self.model.messages.insert(
                    Ref::Dlq(dlq_offset),
                    ModelMessage {
                        key: None,
                        deliver_at: 0,
                        next_attempt: 1,
                        phase: ModelPhase::Pending,
                    },
                );
                format!("redrove {dlq_offset}")
            }
            Op::Purge(index) => {
                let Some(&dlq_offset) = self
                    .model
                    .dlq
                    .iter()
                    .nth(usize::from(index) % self.model.dlq.len().max(1))
                else {
                    return "nothing to purge".into();
                };
                let record = self.fixture.state.purge(dlq_offset).unwrap();
                self.fixture.record(record);
                self.model.dlq.remove(&dlq_offset);
                assert_eq!(
                    self.fixture.state.purge(dlq_offset),
                    Err(StateError::NotInDlq { dlq_offset }),
                    "purged once"
                );
                format!("purged {dlq_offset}")
            }
            Op::Checkpoint => {
                self.fixture.take_checkpoint();
                "checkpoint".into()
            }
            Op::Restart => {
                self.fixture.restart();
                self.model.restart();
                "restarted".into()
            }
        }
    }

    /// A poll, each lease checked against the model: a message the subscription must get,
    /// deliverable now (due, key free), with the model's attempt; and if fewer than `max`
    /// come back, nothing deliverable is left behind.
    fn poll(&mut self, holder: u64, max: usize, lease_ms: u64) -> Vec<Lease> {
        let f = &mut self.fixture;
        let now = f.now;
        self.model.expire(now);
        let (log, dlq) = (&f.log, &f.dlq);
        let mut meta = |message: Ref| match message {
            Ref::Topic(offset) => log.get(offset as usize).cloned(),
            Ref::Dlq(offset) => dlq.get(offset as usize).cloned(),
        };
        let poll = f
            .state
            .poll(now, max, holder, lease_ms, log.len() as u64, &mut meta);
        assert!(poll.leases.len() <= max, "at most max leases");
        let delivered: Vec<JournalRecord> = poll
            .journal
            .iter()
            .filter(|record| matches!(record, JournalRecord::Delivered { .. }))
            .cloned()
            .collect();
        assert_eq!(
            delivered.len(),
            poll.leases.len(),
            "one Delivered record per lease"
        );
        for record in poll.journal {
            f.record(record);
        }
        for lease in &poll.leases {
            let Some(message) = self.model.messages.get(&lease.message) else {
                panic!("{lease:?}: a message this subscription must not receive");
            };
            assert!(
                self.model.deliverable(lease.message, now),
                "{lease:?} is not deliverable now ({message:?}); model: {:?}",
                self.model.messages
            );
            assert_eq!(lease.attempt, message.next_attempt, "attempt of {lease:?}");
            assert_eq!(lease.deadline_ms, now + lease_ms, "deadline of {lease:?}");
            let message = self.model.messages.get_mut(&lease.message).unwrap();
            message.phase = ModelPhase::Leased {
                token: lease.token,
                attempt: lease.attempt,
                deadline: lease.deadline_ms,
                holder,
            };
            message.next_attempt = lease.attempt + 1;
            self.issued.push(lease.clone());
        }
        if poll.leases.len() < max {
            let left: Vec<Ref> = self
                .model
                .messages
                .keys()
                .copied()
                .filter(|&r| self.model.deliverable(r, now))
                .collect();
            assert!(
                left.is_empty(),
                "deliverable messages left behind: {left:?}"
            );
        }
        poll.leases
    }

    /// A verb on a picked lease: succeeds exactly when the model says the lease is live.
    fn verb(
        &mut self,
        index: u8,
        call: impl FnOnce(&mut Fixture, &Lease) -> Result<(), StateError>,
        after: impl FnOnce(u32, u64) -> ModelPhase,
    ) -> String {
        let Some(lease) = self.pick(index) else {
            return "no lease".into();
        };
        let expected = self.model.leased_with(lease.message, lease.token);
        let result = call(&mut self.fixture, &lease);
        match (expected, result) {
            (Some((attempt, holder)), Ok(())) => {
                self.model.messages.get_mut(&lease.message).unwrap().phase = after(attempt, holder);
                format!("ok {:?}", lease.message)
            }
            (None, Err(StateError::LeaseLost { message })) => {
                assert_eq!(message, lease.message, "the error names the message");
                format!("Err lease lost {message:?}")
            }
            (expected, result) => panic!("verb on {lease:?}: model {expected:?}, state {result:?}"),
        }
    }

    /// After every step: invariants, DLQ and counters as the model says.
    fn check(&mut self) {
        let f = &mut self.fixture;
        check_invariants(&f.state);
        self.model.expire(f.now);
        assert_eq!(
            f.state.dlq_live().collect::<BTreeSet<_>>(),
            self.model.dlq,
            "DLQ contents"
        );
        let stats = f.state.stats(f.now, f.log.len() as u64);
        assert_eq!(stats.in_flight, self.model.leased_count(None), "in flight");
        assert_eq!(
            stats.dead_lettered,
            self.model.dlq.len() as u64,
            "dead-lettered"
        );
        for holder in 0..2 {
            assert_eq!(
                u64::from(f.state.held_by(holder)),
                self.model.leased_count(Some(holder)),
                "held by {holder}"
            );
        }
        let unsettled = self
            .model
            .messages
            .iter()
            .find(|(_, message)| message.phase != ModelPhase::Settled)
            .map(|(&r, _)| r);
        if let Some(oldest) = unsettled {
            assert!(
                stats.oldest_unsettled.is_some_and(|found| found <= oldest),
                "oldest unsettled {:?} is at or before the model's {oldest:?}",
                stats.oldest_unsettled
            );
        }
    }

    /// Time runs far ahead and a consumer acks everything: every message the subscription
    /// must receive is settled, none is lost, and the state is empty again.
    fn drain(&mut self) {
        self.fixture.advance(10_000_000);
        for _ in 0..10_000 {
            let leases = self.poll(0, 64, 1_000);
            if leases.is_empty() {
                break;
            }
            for lease in leases {
                self.fixture.ack(&lease).unwrap();
                self.model.messages.get_mut(&lease.message).unwrap().phase = ModelPhase::Settled;
            }
        }
        let lost: Vec<Ref> = self
            .model
            .messages
            .iter()
            .filter(|(_, message)| message.phase != ModelPhase::Settled)
            .map(|(&r, _)| r)
            .collect();
        assert!(lost.is_empty(), "messages never delivered: {lost:?}");
        let state = &self.fixture.state;
        assert_eq!(
            state.low_watermark(),
            self.fixture.log.len() as u64,
            "every topic offset is settled"
        );
        assert!(
            state.entries.is_empty() && state.durable.delivered.is_empty(),
            "nothing pending"
        );
        assert!(
            state.durable.redriven.is_empty(),
            "no redriven message pending"
        );
    }
}

// 256 cases each by default; `PROPTEST_CASES=20000` for a longer soak.
proptest! {
    /// No message lost, no settled message delivered again, attempts and per-key order as
    /// the model says, verbs succeed exactly on live leases, across restarts.
    #[test]
    fn random_operations_agree_with_a_plain_model(ops in proptest::collection::vec(op(), 1..150)) {
        let mut h = Harness::new();
        for op in &ops {
            h.run(op);
        }
        h.drain();
    }

    /// A checkpoint taken at a random point plus the journal after it rebuilds the live
    /// state's durable part byte for byte, and the rebuilt state dispatches exactly as one
    /// restored from the live state's own checkpoint.
    #[test]
    fn a_checkpoint_plus_journal_replay_rebuilds_the_live_durable_state(
        ops in proptest::collection::vec(op(), 1..100),
        checkpoint_at in any::<prop::sample::Index>(),
        tail in proptest::collection::vec(op(), 1..60),
    ) {
        let mut h = Harness::new();
        let at = checkpoint_at.index(ops.len() + 1);
        let mut snapshot = None;
        for (index, op) in ops.iter().enumerate() {
            if index == at {
                snapshot = Some(h.fixture.state.checkpoint(JournalPosition {
                    segment: 0,
                    position: h.fixture.journal.len() as u64,
                }));
            }
            h.run(op);
        }
        let snapshot = snapshot.unwrap_or_else(|| h.fixture.state.checkpoint(JournalPosition {
            segment: 0,
            position: h.fixture.journal.len() as u64,
        }));

        let (mut replayed, position) = SubscriptionState::restore(&snapshot).unwrap();
        for record in &h.fixture.journal[position.position as usize..] {
            replayed.apply(record);
        }
        let live = h.fixture.state.checkpoint(AT_START);
        prop_assert_eq!(replayed.checkpoint(AT_START), live.clone(), "durable parts differ");

        let (mut restored, _) = SubscriptionState::restore(&live).unwrap();
        let tokens = 1 << 50;
        replayed.start_tokens_at(tokens);
        restored.start_tokens_at(tokens);
        check_invariants(&replayed);
        prop_assert_eq!(&replayed, &restored, "replayed and restored states differ");

        let mut from_replay = h.clone();
        from_replay.fixture.state = replayed;
        from_replay.model.restart();
        let mut from_checkpoint = h;
        from_checkpoint.fixture.state = restored;
        from_checkpoint.model.restart();
        for op in &tail {
            prop_assert_eq!(from_replay.run(op), from_checkpoint.run(op), "after {:?}", op);
        }
        from_replay.drain();
    }
}
