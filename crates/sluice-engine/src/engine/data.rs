//! Publishing, receiving and the verbs. Each operation changes its state under a lock,
//! submits its records to the committer under the same lock, and completes once they are
//! committed. Publishes use the topic's write lock (dedup window, submission order of the
//! topic log); receives and verbs use the engine's state lock (subscription state, journal
//! order). Lock order: state, then the publish index, then a topic's writes, then the
//! committer.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::{read_record, read_ref, Completion, Engine, EnvelopeFn};
use crate::commit::Batch;
use crate::error::{Error, Result};
use crate::filter;
use crate::log::Readable;
use crate::record::{decode_meta, MessageRecord, LOST_ID_PREFIX, LOST_TYPE};
use crate::subscription::{Meta, Ref, StateError, Stats};

/// The outcome of one published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored at this offset of the topic.
    Stored {
        /// Its offset.
        offset: u64,
    },
    /// Its id was published within the topic's dedup window: dropped.
    Duplicate,
}

/// A message leased to a consumer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Leased {
    /// What the lease is on (pass it back to the verbs).
    pub r: Ref,
    /// The lease's token (pass it back to the verbs).
    pub token: u64,
    /// 1-based delivery count.
    pub attempt: u32,
    /// When the lease runs out (ms since the epoch, the engine's clock).
    pub deadline_ms: u64,
    /// The message.
    pub record: MessageRecord,
}

/// A subscription's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionStats {
    /// Deliverable now (an upper bound when a filter skips messages not yet looked at).
    pub ready: u64,
    /// Leased.
    pub in_flight: u64,
    /// Waiting for a delay or a retry.
    pub delayed: u64,
    /// In the DLQ.
    pub dead_lettered: u64,
    /// When the oldest unsettled message was published (ms since the epoch).
    pub oldest_published_ms: Option<u64>,
}

/// A std mutex's guard, through poisoning (the data stays consistent: every change under
/// these locks is completed before anything that can panic).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ids claimed by publishes not yet committed (with the publishes, and their outcome slots,
/// waiting for the outcome), and ids whose publish failed (freed by the next publish of the
/// id, which removes them from the dedup window under the topic's write lock).
pub(crate) type PendingIds =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Claim>>>;

/// A dedup claim not settled in the window yet.
pub(crate) enum Claim {
    /// The publish is under way; these wait for its outcome.
    Pending(Vec<(JoinHandle, usize)>),
    /// The publish failed; the id was claimed at `at` (ms).
    Failed {
        /// When it was claimed.
        at: u64,
    },
}

type JoinHandle = std::sync::Arc<Join>;

/// The outcomes of one publish call, gathered from its own batch and from the publishes of
/// the same ids it waits for; `done` runs once every part arrived (or at once with the
/// batch's error).
pub(crate) struct Join {
    inner: std::sync::Mutex<JoinState>,
}

struct JoinState {
    outcomes: Vec<Option<Result<Published>>>,
    /// Parts still to arrive; `None` until the publish knows how many there are.
    remaining: Option<usize>,
    done: Option<Completion<Vec<Result<Published>>>>,
}

impl Join {
    fn new(len: usize, done: Completion<Vec<Result<Published>>>) -> JoinHandle {
        std::sync::Arc::new(Join {
            inner: std::sync::Mutex::new(JoinState {
                outcomes: (0..len).map(|_| None).collect(),
                remaining: None,
                done: Some(done),
            }),
        })
    }

    fn set(&self, slot: usize, outcome: Result<Published>) {
        lock(&self.inner).outcomes[slot] = Some(outcome);
    }

    /// Sets how many parts will arrive. Call it before any of them can arrive (while the
    /// pending ids are locked); with none, [`Join::arrive`] is not called and
    /// [`Join::finish`] completes the call.
    fn expect(&self, parts: usize) {
        lock(&self.inner).remaining = Some(parts);
    }

    /// One part arrived.
    fn arrive(&self) {
        let mut state = lock(&self.inner);
        state.remaining = state.remaining.map(|n| n.saturating_sub(1));
        Self::finish_if_done(state);
    }

    /// Completes the call if nothing is left to arrive.
    fn finish(&self) {
        Self::finish_if_done(lock(&self.inner));
    }

    fn finish_if_done(mut state: std::sync::MutexGuard<'_, JoinState>) {
        if state.remaining != Some(0) {
            return;
        }
        let Some(done) = state.done.take() else {
            return;
        };
        let outcomes = std::mem::take(&mut state.outcomes)
            .into_iter()
            .map(|o| o.unwrap_or(Err(Error::Closed)))
            .collect();
        drop(state);
        done(Ok(outcomes));
    }

    /// The call's own batch failed: the whole call fails now.
    fn fail(&self, err: Error) {
        let done = lock(&self.inner).done.take();
        if let Some(done) = done {
            done(Err(err));
        }
    }
}

/// The same failure, for a second caller.
fn copy_error(err: &Error) -> Error {
    match err {
        Error::Poisoned { cause } => Error::Poisoned {
            cause: cause.clone(),
        },
        Error::Closed => Error::Closed,
        Error::TopicNotFound { name } => Error::topic_not_found(name),
        Error::SubscriptionNotFound { name } => Error::subscription_not_found(name),
        other => Error::io(
            "an operation committed with this one failed",
            std::io::Error::other(other.to_string()),
        ),
    }
}

/// What [`Engine::settle`] does to one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Settled (see [`Engine::ack`]).
    Ack,
    /// Delivered again no earlier than `after_ms` from now, attempt + 1 (see
    /// [`Engine::retry`]).
    Retry {
        /// The delay.
        after_ms: u64,
    },
    /// Delivered again at once, attempt unchanged (see [`Engine::release`]).
    Release,
}

/// One verb of [`Engine::settle`]: the lease, what to do, and who waits for the outcome.
pub struct Settle {
    /// What the lease is on.
    pub r: Ref,
    /// The lease's token.
    pub token: u64,
    /// What to do.
    pub verb: Verb,
    /// Gets the outcome.
    pub done: Completion<()>,
}

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settle")
            .field("r", &self.r)
            .field("token", &self.token)
            .field("verb", &self.verb)
            .finish_non_exhaustive()
    }
}

/// Bytes of message bodies one `receive` reads ahead of dispatch (the walk stops where they
/// end and goes on at the next receive).
pub const RECEIVE_READ_BUDGET: usize = 4 * 1024 * 1024;
/// Records one `receive` reads ahead at most per round, whatever their size.
const READ_AHEAD_MAX: usize = 4096;

/// Records to read ahead for a walk that may hand out `max` leases. The first round reads
/// `max`: without a filter or ordering keys every one of them is handed out, and what a
/// round reads beyond what it hands out is read again by the next receive (most of a
/// saturated consumer's CPU went to reading four times what it handed out). A round after
/// one that came up short reads more: the filter skipped some, or a key held some back.
fn read_ahead(max: usize, round: usize) -> usize {
    match round {
        0 => max.clamp(1, READ_AHEAD_MAX),
        _ => max.saturating_mul(4).clamp(64, READ_AHEAD_MAX),
    }
}

/// What a receive will read, found under the state lock.
struct ReadPlan {
    max: usize,
    generation: u64,
    log: crate::commit::LogHandle,
    dlq: crate::commit::LogHandle,
    /// The topic offsets the first walk will look at (settled runs left out).
    walk: Vec<u64>,
    redriven: Vec<u64>,
    pattern: Option<String>,
}

/// Offsets read under one lock of their log: the flusher waits for that lock to append.
const READ_UNDER_ONE_LOCK: usize = 64;

/// Records read ahead of dispatch: each one's [`Meta`], and the body of each one the filter
/// selects (to hand out without reading it twice). Kept in read order, which is ascending
/// per log: looked up by binary search.
#[derive(Default)]
struct ReadAhead {
    topic: Vec<(u64, Meta, Option<Bytes>)>,
    dlq: Vec<(u64, Meta, Option<Bytes>)>,
    /// Where the selected bodies are copied, one allocation shared by all of them (a
    /// delivery's payload is a slice of it: no copy when it is decoded).
    arena: BytesMut,
    /// The topic offset read up to (the walk stops there).
    end: u64,
}

impl ReadAhead {
    fn read(&mut self, plan: &ReadPlan, walk: &[u64], redriven: &[u64], name: &str) {
        let mut bytes = 0usize;
        // A redriven message that cannot be read now is looked up again at the next poll;
        // the ones after it are read now.
        let mut rest = redriven;
        while !rest.is_empty() && bytes < RECEIVE_READ_BUDGET {
            let chunk = &rest[..rest.len().min(READ_UNDER_ONE_LOCK)];
            let read = self.read_from(plan, true, chunk, &mut bytes, name);
            rest = &rest[(read + 1).min(chunk.len())..];
        }
        // The walk needs every offset up to where it stops: the read ends at the first
        // offset that cannot be read, or where the budget runs out.
        self.end = walk.first().copied().unwrap_or(0);
        for chunk in walk.chunks(READ_UNDER_ONE_LOCK) {
            if bytes >= RECEIVE_READ_BUDGET {
                break;
            }
            let read = self.read_from(plan, false, chunk, &mut bytes, name);
            if let Some(&last) = chunk[..read].last() {
                self.end = last + 1;
            }
            if read < chunk.len() {
                break;
            }
        }
    }

    /// Reads `offsets` of one log (the DLQ's if `dlq`, else the topic's) under one lock,
    /// until one cannot be read or the budget is spent; returns how many were read.
    fn read_from(
        &mut self,
        plan: &ReadPlan,
        dlq: bool,
        offsets: &[u64],
        bytes: &mut usize,
        name: &str,
    ) -> usize {
        let (log, found) = if dlq {
            (&plan.dlq, &mut self.dlq)
        } else {
            (&plan.log, &mut self.topic)
        };
        let arena = &mut self.arena;
        let mut read = 0;
        let result = log.lock().read_each(offsets, |offset, readable| {
            if *bytes >= RECEIVE_READ_BUDGET {
                return false;
            }
            let body = match readable {
                Readable::Body(body) => body,
                // Not committed yet (a DLQ record whose flush is under way): look again later.
                Readable::NotCommitted => return false,
                // Retention removed it (it was handled by every subscription): skip it.
                Readable::Removed => {
                    let meta = Meta {
                        matches: false,
                        ..Meta::default()
                    };
                    found.push((offset, meta, None));
                    read += 1;
                    return true;
                }
            };
            let Ok(decoded) = decode_meta(body) else {
                return false;
            };
            // A placeholder of a lost record is never delivered (`MessageRecord::lost`).
            let matches = !decoded.lost
                && (dlq
                    || plan
                        .pattern
                        .as_deref()
                        .is_none_or(|p| filter::matches(p, decoded.routing_key)));
            let meta = Meta {
                deliver_at_ms: decoded.deliver_at_ms,
                ordering_key: decoded.ordering_key.map(str::to_owned),
                matches,
            };
            let left = offsets.len() - read;
            let body = matches.then(|| {
                *bytes += body.len();
                if arena.capacity() < body.len() {
                    // Room for what is left of this pass, at most one chunk: a receive of
                    // one message does not take (and its payload does not pin) a chunk.
                    let room = body.len().saturating_mul(left);
                    arena.reserve(room.clamp(body.len(), ARENA_CHUNK.max(body.len())));
                }
                arena.extend_from_slice(body);
                arena.split().freeze()
            });
            found.push((offset, meta, body));
            read += 1;
            true
        });
        if let Err(err) = result {
            let offset = offsets.get(read).copied().unwrap_or_default();
            let r = if dlq {
                Ref::Dlq(offset)
            } else {
                Ref::Topic(offset)
            };
            tracing::error!(subscription = name, %r, %err, "cannot read a message; dispatch stops there");
        }
        read
    }

    /// The [`Meta`] read for `r`.
    fn meta(&self, r: Ref) -> Option<Meta> {
        let (list, offset) = match r {
            Ref::Topic(offset) => (&self.topic, offset),
            Ref::Dlq(offset) => (&self.dlq, offset),
        };
        let at = list.binary_search_by_key(&offset, |e| e.0).ok()?;
        Some(list[at].1.clone())
    }

    /// Takes the body read for `r`.
    fn take_body(&mut self, r: Ref) -> Option<Bytes> {
        let (list, offset) = match r {
            Ref::Topic(offset) => (&mut self.topic, offset),
            Ref::Dlq(offset) => (&mut self.dlq, offset),
        };
        let at = list.binary_search_by_key(&offset, |e| e.0).ok()?;
        list[at].2.take()
    }
}

/// Most bytes the read-ahead arena grows by at once. The bodies read in one pass share an
/// allocation, and a delivery's payload is a slice of it: a payload kept after its
/// delivery is settled keeps at most this much (or its own size) alive.
const ARENA_CHUNK: usize = 64 * 1024;

/// A receive's outcome: every journal batch of its rounds committed, and its records read.
struct ReceiveJoin {
    inner: std::sync::Mutex<ReceiveParts>,
}

struct ReceiveParts {
    /// Journal batches submitted and not completed yet.
    pending: usize,
    /// The first journal failure.
    error: Option<Error>,
    outcome: Option<Result<Vec<Leased>>>,
    done: Option<Completion<Vec<Leased>>>,
}

impl ReceiveJoin {
    fn new(done: Completion<Vec<Leased>>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            inner: std::sync::Mutex::new(ReceiveParts {
                pending: 0,
                error: None,
                outcome: None,
                done: Some(done),
            }),
        })
    }

    /// A journal batch is about to be submitted.
    fn expect_journal(&self) {
        lock(&self.inner).pending += 1;
    }

    fn journalled(&self, result: Result<()>) {
        let mut parts = lock(&self.inner);
        parts.pending = parts.pending.saturating_sub(1);
        if let Err(err) = result {
            parts.error.get_or_insert(err);
        }
        Self::finish(parts);
    }

    /// The receive's own outcome (its records, or why it failed).
    fn finish_with(&self, outcome: Result<Vec<Leased>>) {
        let mut parts = lock(&self.inner);
        parts.outcome = Some(outcome);
        Self::finish(parts);
    }

    fn finish(mut parts: std::sync::MutexGuard<'_, ReceiveParts>) {
        if parts.pending > 0 || parts.outcome.is_none() {
            return;
        }
        let (Some(outcome), Some(done)) = (parts.outcome.take(), parts.done.take()) else {
            return;
        };
        let outcome = match parts.error.take() {
            Some(err) => Err(err),
            None => outcome,
        };
        drop(parts);
        done(outcome);
    }
}

fn state_error(err: StateError) -> Error {
    match err {
        StateError::LeaseLost { message } => Error::LeaseLost {
            id: message.to_string(),
        },
        other => Error::State(other),
    }
}

impl Engine {
    /// Publishes `records` to `topic` (their offset and `published_at` are set by the
    /// engine). `done` gets one outcome per record, in order, once the batch is committed; a
    /// record whose id was published within the topic's dedup window is `Duplicate` and not
    /// stored. A failed write fails the whole call (and poisons the engine).
    pub fn publish(
        &self,
        topic: &str,
        records: Vec<MessageRecord>,
        done: Completion<Vec<Result<Published>>>,
    ) {
        // Backlog bounds (`backlog.rs`): refused before anything of the publish is done.
        if let Err(err) = self.check_open().and_then(|()| self.admit(topic, &records)) {
            return done(Err(err));
        }
        let now = self.now_ms();
        // The topic is found in the publish index, not under the state lock; the dedup window
        // and the submission happen under the topic's write lock, encoding under none: a
        // publish never waits for a dispatch or a verb holding the state lock.
        let (log, writes, window) = {
            let index = self
                .inner
                .publish_index
                .read()
                .unwrap_or_else(|e| e.into_inner());
            let Some(t) = index.get(topic) else {
                drop(index);
                return done(Err(Error::topic_not_found(topic)));
            };
            (t.log.clone(), t.writes.clone(), t.dedup_window_ms)
        };
        let encoded: Vec<(String, Result<Vec<u8>>)> = records
            .into_iter()
            .map(|mut record| {
                record.published_at_ms = now;
                let body = if record.is_lost() || record.id.starts_with(LOST_ID_PREFIX) {
                    Err(Error::Invalid {
                        what: "message",
                        reason: format!(
                            "the id prefix `{LOST_ID_PREFIX}` and the type `{LOST_TYPE}` are reserved for placeholders of lost records"
                        ),
                    })
                } else {
                    record.encode()
                };
                (record.id, body)
            })
            .collect();
        let mut t = lock(&writes);
        if t.deleted {
            drop(t);
            return done(Err(Error::topic_not_found(topic)));
        }
        let join = Join::new(encoded.len(), done);
        let mut bodies = Vec::with_capacity(encoded.len());
        // Slot in the outcomes of each body submitted, and the ids this publish claims.
        let mut stored_slots = Vec::with_capacity(encoded.len());
        let mut claims = Vec::new();
        let mut waits = 0;
        {
            let pending_ids = t.pending.clone();
            let mut pending = lock(&pending_ids);
            for (slot, (id, body)) in encoded.into_iter().enumerate() {
                if let Some(window) = window {
                    match pending.get_mut(&id) {
                        // Claimed by a publish not yet committed: its outcome decides.
                        Some(Claim::Pending(waiters)) => {
                            waiters.push((join.clone(), slot));
                            waits += 1;
                            continue;
                        }
                        // Claimed by a publish that failed: the id is free again.
                        Some(Claim::Failed { at }) => {
                            let at = *at;
                            pending.remove(&id);
                            t.dedup.remove(&id, at);
                        }
                        None => {}
                    }
                    if t.dedup.contains(&id, now, window) {
                        join.set(slot, Ok(Published::Duplicate));
                        continue;
                    }
                }
                match body {
                    Ok(body) => {
                        if window.is_some() {
                            pending.insert(id.clone(), Claim::Pending(Vec::new()));
                            claims.push(id);
                        }
                        bodies.push(body);
                        stored_slots.push(slot);
                    }
                    Err(err) => join.set(slot, Err(err)),
                }
            }
            join.expect(waits + usize::from(!bodies.is_empty()));
        }
        if bodies.is_empty() {
            drop(t);
            return join.finish();
        }
        for id in &claims {
            t.dedup.insert(id, now);
        }
        let pending = t.pending.clone();
        let batch = Batch::new().append(&log, bodies).on_complete(
            move |result: Result<Vec<Range<u64>>>| {
                // The waiters on this publish's ids learn its outcome; a failed claim stays
                // as `Failed` until the next publish of the id frees it (under the topic's
                // write lock, which a completion must not take).
                let waiters: Vec<(JoinHandle, usize)> = {
                    let mut pending = lock(&pending);
                    let mut waiters = Vec::new();
                    for id in &claims {
                        let claim = match &result {
                            Ok(_) => pending.remove(id),
                            Err(_) => pending.insert(id.clone(), Claim::Failed { at: now }),
                        };
                        if let Some(Claim::Pending(w)) = claim {
                            waiters.extend(w);
                        }
                    }
                    waiters
                };
                match result {
                    Ok(ranges) => {
                        let mut offsets = ranges.into_iter().next().unwrap_or(0..0);
                        for slot in stored_slots {
                            let offset = offsets.next().unwrap_or(0);
                            join.set(slot, Ok(Published::Stored { offset }));
                        }
                        join.arrive();
                        for (waiter, slot) in waiters {
                            waiter.set(slot, Ok(Published::Duplicate));
                            waiter.arrive();
                        }
                    }
                    Err(err) => {
                        // The publishes that waited for this one fail the same way (retrying
                        // them publishes: the claim is freed).
                        for (waiter, slot) in waiters {
                            waiter.set(slot, Err(copy_error(&err)));
                            waiter.arrive();
                        }
                        join.fail(err);
                    }
                }
            },
        );
        self.submit(batch);
    }

    /// Leases up to `max` messages of subscription `name` to `holder` (within the
    /// subscription's prefetch per holder). `done` gets them once their delivery is
    /// journalled; an empty list means nothing is deliverable now (see
    /// [`next_wakeup_ms`](Self::next_wakeup_ms)).
    ///
    /// The messages dispatch will look at are read before the state lock is taken, at most
    /// [`RECEIVE_READ_BUDGET`] bytes of them (so one receive never holds lookahead × payload
    /// bytes), and the bodies of redeliveries after it is released: no disk read happens
    /// under the engine-wide state lock.
    pub fn receive(&self, name: &str, holder: u64, max: usize, done: Completion<Vec<Leased>>) {
        if let Err(err) = self.check_open() {
            return done(Err(err));
        }
        // 1. What dispatch will look at, under the state lock (no I/O).
        let plan = {
            let state = self.lock();
            let Some(sub) = state.subs.get(name) else {
                drop(state);
                return done(Err(Error::subscription_not_found(name)));
            };
            let Some(topic) = state.topics.get(&sub.entry.options.topic) else {
                let err = Error::topic_not_found(&sub.entry.options.topic);
                drop(state);
                return done(Err(err));
            };
            let prefetch = sub.entry.options.prefetch.max(1);
            let room = prefetch.saturating_sub(sub.state.held_by(holder)) as usize;
            let max = max.min(room);
            let log_end = topic.log.lock().end();
            ReadPlan {
                max,
                generation: sub.generation,
                log: topic.log.clone(),
                dlq: sub.dlq.clone(),
                walk: sub.state.walk_plan(read_ahead(max, 0), log_end),
                redriven: sub.state.unclassified().take(READ_AHEAD_MAX).collect(),
                pattern: sub.entry.options.filter.clone(),
            }
        };
        if plan.max == 0 {
            return done(Ok(Vec::new()));
        }
        let join = ReceiveJoin::new(done);
        let mut leased = Vec::new();
        let mut walk = plan.walk.clone();
        let mut redriven = plan.redriven.clone();
        let mut gone = false;
        loop {
            // 2. Read what dispatch will look at, without the state lock.
            let mut ahead = ReadAhead::default();
            ahead.read(&plan, &walk, &redriven, name);
            redriven.clear();
            // 3. Dispatch and journal under the state lock, from what was read.
            let now = self.now_ms();
            let mut state = self.lock();
            let super::State { topics, subs, .. } = &mut *state;
            let current = subs
                .get_mut(name)
                .filter(|s| s.generation == plan.generation);
            let same_topic = current
                .as_ref()
                .and_then(|sub| topics.get(&sub.entry.options.topic))
                .is_some_and(|t| t.log.same_log(&plan.log));
            let (Some(sub), true) = (current, same_topic) else {
                // Deleted or re-created meanwhile: nothing more of the plan applies.
                gone = !subs.contains_key(name);
                break;
            };
            let lease_ms = sub.entry.options.lease_ms;
            let want = plan.max - leased.len();
            let log_end = plan.log.lock().end();
            let mut meta = |r: Ref| ahead.meta(r);
            let poll = sub.state.poll(
                now,
                want,
                holder,
                lease_ms,
                ahead.end.min(log_end),
                &mut meta,
            );
            let walked_to = sub.state.cursor();
            let handed = poll.leases.len();
            // Another round only when the walk stopped where the read-ahead ended, short of
            // the log's end: a sparse filter must not make a receive come back empty while
            // matching messages wait further on.
            let more = handed < want
                && walk.first().is_some_and(|&first| ahead.end > first)
                && walked_to >= ahead.end
                && ahead.end < log_end;
            walk = if more {
                sub.state.walk_plan(read_ahead(want - handed, 1), log_end)
            } else {
                Vec::new()
            };
            join.expect_journal();
            let journal_join = join.clone();
            self.journal(
                name,
                sub,
                &poll.journal,
                Box::new(move |result| journal_join.journalled(result)),
            );
            drop(state);
            // 4. The leased messages' records: read ahead, or (redeliveries) read now.
            self.lease_records(name, &plan, &mut ahead, poll.leases, &mut leased);
            if walk.is_empty() {
                break;
            }
        }
        if gone && leased.is_empty() {
            return join.finish_with(Err(Error::subscription_not_found(name)));
        }
        join.finish_with(Ok(leased));
    }

    /// Builds the [`Leased`] of each lease: from the bodies read ahead, or read now.
    fn lease_records(
        &self,
        name: &str,
        plan: &ReadPlan,
        ahead: &mut ReadAhead,
        leases: Vec<crate::subscription::Lease>,
        out: &mut Vec<Leased>,
    ) {
        for lease in leases {
            let record = match ahead.take_body(lease.message) {
                Some(body) => MessageRecord::decode_shared(&body).map(Some),
                None => read_ref(&plan.log, &plan.dlq, lease.message),
            };
            match record {
                Ok(Some(record)) => out.push(Leased {
                    r: lease.message,
                    token: lease.token,
                    attempt: lease.attempt,
                    deadline_ms: lease.deadline_ms,
                    record,
                }),
                Ok(None) | Err(_) => {
                    tracing::error!(subscription = name, r = %lease.message, "a leased message cannot be read; it is delivered again when its lease runs out");
                }
            }
        }
    }

    /// Settles many leases of subscription `name` at once: one state-lock round trip and one
    /// journal append for all of them. Each verb's `done` gets its own outcome: a refused
    /// verb (`LeaseLost`) at once, the others once their journal records are committed.
    pub fn settle(&self, name: &str, verbs: Vec<Settle>) {
        if let Err(err) = self.check_open() {
            return verbs
                .into_iter()
                .for_each(|v| (v.done)(Err(copy_error(&err))));
        }
        let now = self.now_ms();
        let mut state = self.lock();
        let Some(sub) = state.subs.get_mut(name) else {
            drop(state);
            return verbs
                .into_iter()
                .for_each(|v| (v.done)(Err(Error::subscription_not_found(name))));
        };
        let mut records = Vec::with_capacity(verbs.len());
        let mut waiting = Vec::with_capacity(verbs.len());
        let mut refused = Vec::new();
        for Settle {
            r,
            token,
            verb,
            done,
        } in verbs
        {
            let s = &mut sub.state;
            let applied = match verb {
                Verb::Ack => s.ack(r, token, now),
                Verb::Retry { after_ms } => s.retry(r, token, now, after_ms),
                Verb::Release => s.release(r, token, now),
            };
            match applied {
                Ok(record) => {
                    records.push(record);
                    waiting.push(done);
                }
                Err(err) => refused.push((done, state_error(err))),
            }
        }
        // No wake here: the journal records' flush wakes receivers (the durable hook).
        let done: Completion<()> = Box::new(move |result: Result<()>| match result {
            Ok(()) => waiting.into_iter().for_each(|done| done(Ok(()))),
            // The first waiter gets the error itself, the others a copy.
            Err(err) => {
                let mut waiting = waiting.into_iter();
                let first = waiting.next();
                waiting.for_each(|done| done(Err(copy_error(&err))));
                if let Some(first) = first {
                    first(Err(err));
                }
            }
        });
        self.journal(name, sub, &records, done);
        drop(state);
        for (done, err) in refused {
            done(Err(err));
        }
    }

    fn verb(&self, name: &str, r: Ref, token: u64, verb: Verb, done: Completion<()>) {
        self.settle(
            name,
            vec![Settle {
                r,
                token,
                verb,
                done,
            }],
        );
    }

    /// Acks: the message is settled for this subscription.
    pub fn ack(&self, name: &str, r: Ref, token: u64, done: Completion<()>) {
        self.verb(name, r, token, Verb::Ack, done);
    }

    /// Retries: delivered again no earlier than `after_ms` from now, with attempt + 1.
    pub fn retry(&self, name: &str, r: Ref, token: u64, after_ms: u64, done: Completion<()>) {
        self.verb(name, r, token, Verb::Retry { after_ms }, done);
    }

    /// Releases: delivered again at once, attempt unchanged.
    pub fn release(&self, name: &str, r: Ref, token: u64, done: Completion<()>) {
        self.verb(name, r, token, Verb::Release, done);
    }

    /// Extends a lease to `lease_ms` from now; returns the new deadline. Not journalled
    /// (leases do not survive a restart).
    pub fn extend(&self, name: &str, r: Ref, token: u64, lease_ms: u64) -> Result<u64> {
        self.check_open()?;
        let now = self.now_ms();
        let mut state = self.lock();
        let sub = state
            .subs
            .get_mut(name)
            .ok_or_else(|| Error::subscription_not_found(name))?;
        sub.state
            .extend(r, token, now, lease_ms)
            .map_err(state_error)
    }

    /// Dead-letters: the message goes to the subscription's DLQ as the record `envelope`
    /// builds (from the attempts made and the first failure time), or is dropped with a
    /// warning if the subscription has no DLQ.
    pub fn dead_letter(
        &self,
        name: &str,
        r: Ref,
        token: u64,
        envelope: EnvelopeFn,
        done: Completion<()>,
    ) {
        if let Err(err) = self.check_open() {
            return done(Err(err));
        }
        let now = self.now_ms();
        let mut state = self.lock();
        let result = self.dead_letter_locked(&mut state, name, r, token, now, envelope, done);
        drop(state);
        // On success the flush of its records wakes receivers (the durable hook).
        if let Err((err, done)) = result {
            done(Err(err));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dead_letter_locked(
        &self,
        state: &mut super::State,
        name: &str,
        r: Ref,
        token: u64,
        now: u64,
        envelope: EnvelopeFn,
        done: Completion<()>,
    ) -> std::result::Result<(), (Error, Completion<()>)> {
        let Some(sub) = state.subs.get_mut(name) else {
            return Err((Error::subscription_not_found(name), done));
        };
        let facts = match sub.state.dead_letter(r, token, now) {
            Ok(facts) => facts,
            Err(err) => return Err((state_error(err), done)),
        };
        let first_failure = (facts.first_failure_at_ms != 0).then_some(facts.first_failure_at_ms);
        let dead = envelope(facts.attempt, first_failure);
        if !sub.entry.options.dead_letter_queue {
            sub.dropped_without_dlq += 1;
            tracing::warn!(
                subscription = name,
                id = %dead.id,
                dropped = sub.dropped_without_dlq,
                reason = dead.headers.iter().find(|(k, _)| k.ends_with("error")).map_or("", |(_, v)| v.as_str()),
                "dead-lettered without a DLQ: the message is dropped"
            );
            // Settled as dead-lettered, with no DLQ offset taken.
            return match sub.state.dead_lettered(r, crate::subscription::NO_DLQ) {
                Ok(record) => {
                    self.journal(name, sub, &[record], done);
                    Ok(())
                }
                Err(err) => Err((state_error(err), done)),
            };
        }
        let body = match dead.encode() {
            Ok(body) => body,
            Err(err) => {
                let _ = sub.state.cancel_dead_letter(r);
                return Err((err, done));
            }
        };
        let dlq_offset = sub.dlq_next;
        let record = match sub.state.dead_lettered(r, dlq_offset) {
            Ok(record) => record,
            Err(err) => return Err((state_error(err), done)),
        };
        sub.dlq_next += 1;
        if let Some(index) = sub.dlq_index.as_mut() {
            index.entry(dead.id.clone()).or_default().push(dlq_offset);
        }
        sub.journal_next += 1;
        sub.since_checkpoint += 1;
        // The DLQ record and the journal record commit in one flush; a crash may keep the
        // journal record without the DLQ record: replay then ignores it and the message is
        // delivered again (`open.rs`, docs/durability.md).
        let batch = Batch::new()
            .append(&sub.dlq, vec![body])
            .append(&sub.journal, vec![record.encode()])
            .on_complete(move |result| done(result.map(|_| ())));
        self.submit(batch);
        Ok(())
    }

    /// When something of subscription `name` may next become deliverable without a new
    /// publish (a lease running out, a retry or delay coming due), ms since the epoch.
    pub fn next_wakeup_ms(&self, name: &str) -> Result<Option<u64>> {
        let state = self.lock();
        let sub = state
            .subs
            .get(name)
            .ok_or_else(|| Error::subscription_not_found(name))?;
        Ok(sub.state.next_wakeup_ms())
    }

    /// A subscription's counters.
    pub fn stats(&self, name: &str) -> Result<SubscriptionStats> {
        let now = self.now_ms();
        let mut state = self.lock();
        let super::State { topics, subs, .. } = &mut *state;
        let sub = subs
            .get_mut(name)
            .ok_or_else(|| Error::subscription_not_found(name))?;
        let log = topics
            .get(&sub.entry.options.topic)
            .map(|t| t.log.clone())
            .ok_or_else(|| Error::TopicNotFound {
                name: sub.entry.options.topic.clone(),
            })?;
        let log_end = log.lock().end();
        let s: Stats = sub.state.stats(now, log_end);
        let dlq = sub.dlq.clone();
        // The oldest message is read after the state lock is released.
        drop(state);
        let oldest_published_ms = match s.oldest_unsettled {
            Some(r) => read_ref(&log, &dlq, r)?.map(|m| m.published_at_ms),
            None => None,
        };
        Ok(SubscriptionStats {
            ready: s.ready,
            in_flight: s.in_flight,
            delayed: s.delayed,
            dead_lettered: s.dead_lettered,
            oldest_published_ms,
        })
    }

    /// The message at `offset` of a topic, if retained.
    pub fn read(&self, topic: &str, offset: u64) -> Result<Option<MessageRecord>> {
        let log = {
            let state = self.lock();
            state
                .topics
                .get(topic)
                .map(|t| t.log.clone())
                .ok_or_else(|| Error::topic_not_found(topic))?
        };
        read_record(&log, offset)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::commit::LogHandle;
    use crate::io::MemStorage;
    use crate::log::{LogOptions, SegmentedLog};
    use crate::segment::SegmentKind;

    #[test]
    fn given_large_messages_when_reading_ahead_then_at_most_the_budget_of_bodies_is_held() {
        let storage = Arc::new(MemStorage::new());
        let open = |dir: &str, kind| {
            SegmentedLog::open(storage.clone(), dir, kind, LogOptions::default())
                .unwrap()
                .0
        };
        let mut log = open("/d/topic", SegmentKind::TopicLog);
        let payload = vec![7u8; 512 * 1024];
        for i in 0..40 {
            let record = MessageRecord {
                id: format!("m{i}"),
                ordering_key: Some("one-key".into()),
                payload: payload.clone().into(),
                ..MessageRecord::default()
            };
            log.append(&[record.encode().unwrap()]).unwrap();
        }
        log.commit().unwrap();
        let log = LogHandle::new(log);
        let dlq = LogHandle::new(open("/d/dlq", SegmentKind::Dlq));
        let plan = ReadPlan {
            max: 1000,
            generation: 0,
            log: log.clone(),
            dlq,
            walk: (0..40).collect(),
            redriven: Vec::new(),
            pattern: None,
        };
        let mut ahead = ReadAhead::default();
        ahead.read(&plan, &plan.walk, &[], "s");
        let held: usize = ahead
            .topic
            .iter()
            .filter_map(|e| e.2.as_ref())
            .map(Bytes::len)
            .sum();
        assert!(
            held <= RECEIVE_READ_BUDGET + payload.len() + 1024,
            "{held} bytes of bodies held for a budget of {RECEIVE_READ_BUDGET}"
        );
        assert!(
            ahead.end < 40,
            "the read stops at the budget: {}",
            ahead.end
        );
        assert!(ahead.end >= 1, "and reads at least one");
    }
}
