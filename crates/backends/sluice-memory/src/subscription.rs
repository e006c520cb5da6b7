//! One subscription's state: every unsettled message with its phase, the ready queue, the
//! timers, the leases, the ordering keys and the dead-letter queue.
//!
//! A message arriving at a subscription gets a sequence number (`Seq`, arrival order) and
//! an [`Entry`] that lives until it is acked, dead-lettered or the subscription is deleted.
//!
//! Invariants:
//! - Every entry is in exactly one [`Phase`]. The `Ready` entries are exactly the members
//!   of `ready` (ordered by `Seq`, so the oldest arrival goes first, redeliveries included).
//!   `Waiting` and `Leased` entries have exactly one timer in `timers`, at their `until` or
//!   `deadline`. `Blocked` entries have none.
//! - Strict ordering: `keys[k]` lists the unsettled entries with ordering key `k` in
//!   arrival order, and only its front may be anything but `Blocked`. The front stays there
//!   while leased *and* while waiting for a retry, so one message per key is in flight and
//!   the retried one goes first again; it leaves on ack or dead-letter, which activates the
//!   next one.
//! - `held[s]` is the number of `Leased` entries whose holder is subscriber `s` (entries
//!   with a count of zero are removed), so prefetch is enforced per subscriber.
//! - `attempt` is the attempt of the current (or next) delivery: 1 at arrival and after a
//!   redrive, +1 on retry and on lease expiry, unchanged on release.
//! - Lease tokens are never reused within a subscription: a delivery whose token no longer
//!   matches its entry's lease (expired, redelivered, settled) is stale.
//! - Time only moves in [`Subscription::advance`], which every operation calls first: a
//!   lease whose deadline is now or earlier has expired.
//! - `bytes` is the sum of `Message::size()` over `entries`: with `entries.len()`, the
//!   subscription's backlog (what the topic's backlog bound counts).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sluice_core::{
    DeadLetterReason, DeadLetteredMessage, Envelope, Message, RedriveOptions, SubscriptionConfig,
    SubscriptionName, SubscriptionStats,
};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::topic::Stored;

/// Arrival number of a message in a subscription.
pub(crate) type Seq = u64;

/// Where an unsettled message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// In the ready queue.
    Ready,
    /// Waiting for its delivery time (a delay, or a retry's `after`).
    Waiting { until: Instant },
    /// Delivered to subscriber `holder` until `deadline`.
    Leased {
        token: u64,
        deadline: Instant,
        holder: u64,
    },
    /// Behind an earlier message of its ordering key.
    Blocked,
}

/// One unsettled message.
#[derive(Debug)]
struct Entry {
    stored: Arc<Stored>,
    attempt: u32,
    /// When the first retry or lease expiry happened, for the dead-letter envelope.
    first_failure_at: Option<SystemTime>,
    phase: Phase,
}

/// A message taken by a subscriber: what its delivery needs.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) seq: Seq,
    pub(crate) token: u64,
    pub(crate) attempt: u32,
    pub(crate) deadline: Instant,
    pub(crate) message: Message,
}

/// A verb on a leased message.
#[derive(Debug)]
pub(crate) enum Verb {
    Ack,
    Retry(Duration),
    Release,
    DeadLetter(DeadLetterReason),
    ExtendLease(Duration),
}

/// The delivery's lease is no longer the entry's: expired, redelivered or settled.
#[derive(Debug)]
pub(crate) struct LeaseLost;

/// One subscription (see the module docs for its invariants).
#[derive(Debug)]
pub(crate) struct Subscription {
    /// Incarnation: a subscription deleted and created again gets a new one.
    pub(crate) id: u64,
    pub(crate) name: SubscriptionName,
    pub(crate) config: SubscriptionConfig,
    /// Woken on every change a waiting `receive` may care about.
    pub(crate) notify: Arc<Notify>,
    entries: BTreeMap<Seq, Entry>,
    next_seq: Seq,
    next_token: u64,
    ready: BTreeSet<Seq>,
    timers: BTreeSet<(Instant, Seq)>,
    keys: HashMap<String, VecDeque<Seq>>,
    held: HashMap<u64, u32>,
    dead_letters: BTreeMap<u64, Message>,
    next_dead_letter: u64,
    /// Sum of the sizes of the unsettled messages (see the module docs).
    bytes: u64,
}

impl Subscription {
    pub(crate) fn new(id: u64, name: SubscriptionName, config: SubscriptionConfig) -> Self {
        Self {
            id,
            name,
            config,
            notify: Arc::new(Notify::new()),
            entries: BTreeMap::new(),
            next_seq: 0,
            next_token: 0,
            ready: BTreeSet::new(),
            timers: BTreeSet::new(),
            keys: HashMap::new(),
            held: HashMap::new(),
            dead_letters: BTreeMap::new(),
            next_dead_letter: 0,
            bytes: 0,
        }
    }

    /// Whether the subscription's filter selects this message (no filter: every message).
    pub(crate) fn matches(&self, message: &Message) -> bool {
        self.config
            .filter
            .as_ref()
            .is_none_or(|filter| filter.matches(message.routing_key()))
    }

    /// A message arrives (published, replayed at creation, or redriven), with attempt 1.
    pub(crate) fn enqueue(&mut self, stored: Arc<Stored>, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let due = stored.due;
        let key = stored.message.ordering_key().map(str::to_owned);
        self.bytes += stored.message.size() as u64;
        self.entries.insert(
            seq,
            Entry {
                stored,
                attempt: 1,
                first_failure_at: None,
                phase: Phase::Blocked,
            },
        );
        let first_of_its_key = match key {
            Some(key) => {
                let queue = self.keys.entry(key).or_default();
                queue.push_back(seq);
                queue.len() == 1
            }
            None => true,
        };
        if first_of_its_key {
            self.schedule(seq, due, now);
        }
        self.notify.notify_waiters();
    }

    /// The backlog: unsettled messages (ready, leased, waiting or blocked behind their key)
    /// and the sum of their sizes. Dead letters are settled: they do not count.
    pub(crate) fn backlog(&self) -> (u64, u64) {
        (self.entries.len() as u64, self.bytes)
    }

    /// Fires every timer due at `now`: waiting messages become ready, expired leases are
    /// redelivered with `attempt + 1`.
    pub(crate) fn advance(&mut self, now: Instant, clock: &Clock) {
        while let Some(&(at, seq)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(entry) = self.entries.get_mut(&seq) else {
                debug_assert!(false, "a timer points at a missing entry");
                continue;
            };
            match entry.phase {
                Phase::Waiting { .. } => {}
                Phase::Leased { holder, .. } => {
                    entry.attempt += 1;
                    entry.first_failure_at.get_or_insert(clock.system_at(at));
                    release_hold(&mut self.held, holder);
                }
                Phase::Ready | Phase::Blocked => {
                    debug_assert!(false, "a timer points at an entry without one");
                    continue;
                }
            }
            entry.phase = Phase::Ready;
            self.ready.insert(seq);
        }
    }

    /// The next instant at which [`advance`](Self::advance) changes something.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        self.timers.first().map(|&(at, _)| at)
    }

    /// Leases up to `max` ready messages to subscriber `holder`, within its prefetch.
    pub(crate) fn take(
        &mut self,
        holder: u64,
        max: usize,
        now: Instant,
        clock: &Clock,
    ) -> Vec<Lease> {
        self.advance(now, clock);
        let held = self.held.get(&holder).copied().unwrap_or(0);
        let room = self.config.prefetch.max(1).saturating_sub(held) as usize;
        let count = max.min(room).min(self.ready.len());
        let mut leases = Vec::with_capacity(count);
        while leases.len() < count {
            let Some(seq) = self.ready.pop_first() else {
                break;
            };
            let Some(entry) = self.entries.get_mut(&seq) else {
                debug_assert!(false, "a ready seq points at a missing entry");
                continue;
            };
            let token = self.next_token;
            self.next_token += 1;
            let deadline = clock.after(now, self.config.lease);
            entry.phase = Phase::Leased {
                token,
                deadline,
                holder,
            };
            self.timers.insert((deadline, seq));
            leases.push(Lease {
                seq,
                token,
                attempt: entry.attempt,
                deadline,
                message: entry.stored.message.clone(),
            });
        }
        if !leases.is_empty() {
            *self.held.entry(holder).or_default() += leases.len() as u32;
        }
        leases
    }

    /// Applies a verb to the message leased with `token`. Returns the new deadline for
    /// `ExtendLease`.
    pub(crate) fn settle(
        &mut self,
        seq: Seq,
        token: u64,
        verb: Verb,
        now: Instant,
        clock: &Clock,
    ) -> Result<Option<Instant>, LeaseLost> {
        self.advance(now, clock);
        let (deadline, holder) = match self.entries.get(&seq).map(|entry| entry.phase) {
            Some(Phase::Leased {
                token: current,
                deadline,
                holder,
            }) if current == token => (deadline, holder),
            _ => return Err(LeaseLost),
        };
        self.timers.remove(&(deadline, seq));
        if let Verb::ExtendLease(lease) = verb {
            let deadline = clock.after(now, lease);
            self.timers.insert((deadline, seq));
            self.set_phase(
                seq,
                Phase::Leased {
                    token,
                    deadline,
                    holder,
                },
            );
            return Ok(Some(deadline));
        }
        release_hold(&mut self.held, holder);
        match verb {
            Verb::Ack => {
                self.finish(seq, now);
            }
            Verb::Retry(after) => {
                if let Some(entry) = self.entries.get_mut(&seq) {
                    entry.attempt += 1;
                    entry.first_failure_at.get_or_insert(clock.system_at(now));
                }
                self.schedule(seq, Some(clock.after(now, after)), now);
            }
            Verb::Release => self.schedule(seq, None, now),
            Verb::DeadLetter(reason) => {
                if let Some(entry) = self.finish(seq, now) {
                    self.bury(entry, reason, clock.system_at(now));
                }
            }
            Verb::ExtendLease(_) => unreachable!("handled above"),
        }
        self.notify.notify_waiters();
        Ok(None)
    }

    /// Counters. A message blocked behind its ordering key counts as ready (or delayed, if
    /// its own delivery time is still ahead), as brokers count a held message group.
    pub(crate) fn stats(&mut self, now: Instant, clock: &Clock) -> SubscriptionStats {
        self.advance(now, clock);
        let (mut ready, mut in_flight, mut delayed) = (0, 0, 0);
        for entry in self.entries.values() {
            match entry.phase {
                Phase::Ready => ready += 1,
                Phase::Leased { .. } => in_flight += 1,
                Phase::Waiting { .. } => delayed += 1,
                Phase::Blocked if entry.stored.due.is_some_and(|due| due > now) => delayed += 1,
                Phase::Blocked => ready += 1,
            }
        }
        let oldest = self
            .entries
            .values()
            .filter_map(|entry| entry.stored.message.published_at())
            .min();
        let now_system = clock.system_at(now);
        let mut stats = SubscriptionStats::default();
        stats.ready = Some(ready);
        stats.in_flight = Some(in_flight);
        stats.delayed = Some(delayed);
        stats.dead_lettered = Some(self.dead_letters.len() as u64);
        stats.oldest_age = Some(oldest.map_or(Duration::ZERO, |published| {
            now_system.duration_since(published).unwrap_or_default()
        }));
        stats
    }

    /// Up to `limit` dead-lettered messages, oldest first.
    pub(crate) fn dlq_list(&self, limit: usize) -> Vec<DeadLetteredMessage> {
        self.dead_letters
            .values()
            .take(limit)
            .cloned()
            .map(DeadLetteredMessage::new)
            .collect()
    }

    /// The dead letters a redrive with `options` selects, oldest first, as (position, id).
    pub(crate) fn dlq_select(&self, options: &RedriveOptions) -> Vec<(u64, String)> {
        self.dead_letters
            .iter()
            .filter(|(_, message)| options.selects(message))
            .take(options.limit.unwrap_or(usize::MAX))
            .map(|(&position, message)| (position, message.id().to_string()))
            .collect()
    }

    /// Moves one dead letter back: envelope stripped, attempt 1, ready at once. `false` if
    /// it is no longer there (purged or redriven meanwhile).
    pub(crate) fn redrive(&mut self, position: u64, now: Instant) -> bool {
        let Some(mut message) = self.dead_letters.remove(&position) else {
            return false;
        };
        Envelope::strip(&mut message);
        self.enqueue(Arc::new(Stored { message, due: None }), now);
        true
    }

    /// Empties the dead-letter queue; returns how many messages it held.
    pub(crate) fn dlq_purge(&mut self) -> u64 {
        let count = self.dead_letters.len() as u64;
        self.dead_letters.clear();
        count
    }

    /// Panics if an invariant of the module docs does not hold (tests only: O(n)).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut ready = BTreeSet::new();
        let mut timers = BTreeSet::new();
        let mut held: HashMap<u64, u32> = HashMap::new();
        for (&seq, entry) in &self.entries {
            match entry.phase {
                Phase::Ready => {
                    ready.insert(seq);
                }
                Phase::Waiting { until } => {
                    timers.insert((until, seq));
                }
                Phase::Leased {
                    deadline, holder, ..
                } => {
                    timers.insert((deadline, seq));
                    *held.entry(holder).or_default() += 1;
                }
                Phase::Blocked => assert!(
                    entry.stored.message.ordering_key().is_some(),
                    "only keyed messages are blocked"
                ),
            }
            if let Some(key) = entry.stored.message.ordering_key() {
                let queue = self.keys.get(key).expect("a keyed entry has a key queue");
                let position = queue.iter().position(|&s| s == seq);
                assert!(position.is_some(), "a keyed entry is in its key queue");
                assert_eq!(
                    position != Some(0),
                    entry.phase == Phase::Blocked,
                    "exactly the non-front entries of a key are blocked"
                );
            }
        }
        assert_eq!(ready, self.ready, "ready queue = ready entries");
        assert_eq!(timers, self.timers, "timers = waiting and leased entries");
        assert_eq!(held, self.held, "held counts = leases per holder");
        let keyed: usize = self.keys.values().map(VecDeque::len).sum();
        let expected = self
            .entries
            .values()
            .filter(|entry| entry.stored.message.ordering_key().is_some())
            .count();
        assert_eq!(keyed, expected, "key queues hold exactly the keyed entries");
        let bytes: u64 = self
            .entries
            .values()
            .map(|entry| entry.stored.message.size() as u64)
            .sum();
        assert_eq!(bytes, self.bytes, "bytes = sizes of the unsettled messages");
    }

    /// Puts an entry that is in no queue into the ready queue, or waiting until `due`.
    fn schedule(&mut self, seq: Seq, due: Option<Instant>, now: Instant) {
        let phase = match due.filter(|&due| due > now) {
            Some(until) => {
                self.timers.insert((until, seq));
                Phase::Waiting { until }
            }
            None => {
                self.ready.insert(seq);
                Phase::Ready
            }
        };
        self.set_phase(seq, phase);
    }

    fn set_phase(&mut self, seq: Seq, phase: Phase) {
        match self.entries.get_mut(&seq) {
            Some(entry) => entry.phase = phase,
            None => debug_assert!(false, "set_phase on a missing entry"),
        }
    }

    /// Removes a settled entry (acked or dead-lettered, already out of every queue) and
    /// lets the next message of its ordering key go.
    fn finish(&mut self, seq: Seq, now: Instant) -> Option<Entry> {
        let entry = self.entries.remove(&seq)?;
        self.bytes -= entry.stored.message.size() as u64;
        if let Some(key) = entry.stored.message.ordering_key() {
            let mut next = None;
            if let Some(queue) = self.keys.get_mut(key) {
                let front = queue.pop_front();
                debug_assert_eq!(front, Some(seq), "only a key's front is ever settled");
                next = queue.front().copied();
                if next.is_none() {
                    self.keys.remove(key);
                }
            }
            if let Some(next) = next {
                let due = self.entries.get(&next).and_then(|entry| entry.stored.due);
                self.schedule(next, due, now);
            }
        }
        Some(entry)
    }

    /// Moves a finished entry to the dead-letter queue with its envelope, or drops it with
    /// a warning when the subscription has no dead-letter queue.
    fn bury(&mut self, entry: Entry, reason: DeadLetterReason, now_system: SystemTime) {
        let mut message = entry.stored.message.clone();
        if !self.config.dead_letter_queue {
            tracing::warn!(
                subscription = %self.name,
                message_id = %message.id(),
                attempt = entry.attempt,
                reason = %reason.reason,
                last_error = reason.last_error.as_deref().unwrap_or(""),
                "dead-lettered message dropped: the subscription has no dead-letter queue"
            );
            return;
        }
        // A message dead-lettered on its first attempt failed now.
        let first_failure_at = entry.first_failure_at.or(Some(now_system));
        Envelope::new(
            self.config.topic.as_str(),
            self.name.as_str(),
            entry.attempt,
            reason,
            first_failure_at,
            now_system,
        )
        .write(&mut message);
        self.dead_letters.insert(self.next_dead_letter, message);
        self.next_dead_letter += 1;
    }
}

/// One lease of `holder` ended.
fn release_hold(held: &mut HashMap<u64, u32>, holder: u64) {
    if let Some(count) = held.get_mut(&holder) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            held.remove(&holder);
        }
    }
}
