//! The consuming engine under a subscriber and under a topic's delay mover: one consumer-group
//! member polled by a thread of its own, turning a partitioned log into per-message leases.
//!
//! The poll thread fetches records, decodes and filters them, and keeps them in memory until a
//! receiver takes them; each handed-out record is *leased* (it has a deadline) and stays
//! pending in the offset tracker ([`Offsets`]) until a verb completes it. What is committed is
//! the end of each partition's contiguous completed prefix, so a crash redelivers everything
//! not completed and never skips a record.
//!
//! - **Ordering keys**: a record waits while an earlier record of its key and partition is
//!   handed out; records of other keys (and keyless ones) go out concurrently.
//! - **Leases**: an expired lease hands the record out again from memory with `attempt + 1`
//!   (its key stays blocked, so the order holds). When the subscriber is closing, an expired
//!   record is moved to the retry tier instead (its attempt counted), so the next owner gets
//!   it as a redelivery.
//! - **Tiers**: records of retry and delay tiers are held until due; their partition is paused
//!   while its head waits, so nothing later of that partition piles up in memory.
//! - **Back-pressure**: when `buffer` records wait unleased, every partition is paused.
//! - **Rebalances**: revoked partitions stop handing out at once; the revocation waits a
//!   bounded time for leased records of them to be settled, then commits what is complete and
//!   forgets the rest (their verbs fail with `LeaseLost`; the new owner reads them again).
//!
//! Invariant: a record is pending in the tracker from the moment it is fetched until it is
//! acked, moved (retry, DLQ, delay mover) or filtered out; nothing completes it otherwise.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use sluice_core::{Error, Filter, Message, Result};

use crate::offsets::Offsets;

use crate::wire;

/// How often the poll thread commits completed positions.
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// How long one poll waits when nothing arrives (the granularity of lease expiry and of tier
/// due times).
const POLL: Duration = Duration::from_millis(20);
/// How often the poll thread does its housekeeping while records stream in.
const TICK_EVERY: Duration = Duration::from_millis(5);
/// The longest a revocation waits for leased records of the revoked partitions.
const REVOKE_WAIT: Duration = Duration::from_secs(5);

/// A partition: `(physical topic, partition)`.
pub(crate) type Tp = (Arc<str>, i32);

/// What the engine consumes and how.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// The bootstrap servers (engines are told apart by cluster and topic).
    pub(crate) brokers: String,
    /// Consumer group.
    pub(crate) group: String,
    /// Physical topics to subscribe to.
    pub(crate) topics: Vec<String>,
    /// Those of `topics` whose records wait until due (retry and delay tiers).
    pub(crate) tiers: HashSet<String>,
    /// Routing-key filter: other records are completed without delivery.
    pub(crate) filter: Option<Filter>,
    /// Lease of a handed-out record.
    pub(crate) lease: Duration,
    /// Most records leased at once.
    pub(crate) prefetch: usize,
    /// Most records waiting unleased before every partition is paused.
    pub(crate) buffer: usize,
    /// How long a closed member stays quiet (no rebalance under way) before it leaves the
    /// group: a heartbeat and a half, so a rebalance the broker just started reaches it first.
    pub(crate) leave_after: Duration,
}

/// A record handed out, or waiting to be.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) tp: Tp,
    pub(crate) offset: i64,
    pub(crate) message: Message,
    /// 1-based delivery count.
    pub(crate) attempt: u32,
}

impl Entry {
    fn key(&self) -> Option<(Tp, String)> {
        self.message
            .ordering_key()
            .map(|k| (self.tp.clone(), k.to_owned()))
    }

    fn due(&self) -> bool {
        self.message
            .deliver_at()
            .is_none_or(|at| at <= SystemTime::now())
    }
}

/// A leased record, as a receiver gets it.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) token: u64,
    pub(crate) entry: Entry,
    pub(crate) deadline: Instant,
}

/// Where records go that the engine cannot hand out: a subscriber's retry tier and DLQ.
pub(crate) trait Sink: Send + Sync + 'static {
    /// Moves a record whose lease ran out while closing, or that was still leased when its
    /// partition was revoked, to the retry tier with its attempt counted; `true` once it is
    /// safely there and may be completed.
    fn move_expired(&self, entry: Entry) -> futures::future::BoxFuture<'static, bool>;

    /// Dead-letters a record that cannot be decoded (`raw` as fetched), with the reason;
    /// `true` once done.
    fn dead_letter_poison(
        &self,
        entry: Entry,
        raw: wire::Outgoing,
        reason: String,
    ) -> futures::future::BoxFuture<'static, bool>;
}

#[derive(Debug, Default)]
struct State {
    offsets: Offsets,
    owned: HashSet<Tp>,
    ready: VecDeque<Entry>,
    /// Records waiting behind a handed-out record of their key.
    waiting: HashMap<(Tp, String), VecDeque<Entry>>,
    /// Keys with a record handed out.
    busy: HashSet<(Tp, String)>,
    /// Tier records not due yet, per partition, in offset order.
    held: HashMap<Tp, VecDeque<Entry>>,
    leased: HashMap<u64, (Entry, Instant)>,
    /// Records being moved by a verb (retry, dead-letter): neither leased nor completed.
    moving: HashMap<u64, (Entry, Instant)>,
    paused: HashSet<Tp>,
    next_token: u64,
    closed: bool,
    /// Between a revocation and the assignment that ends the rebalance.
    rebalancing: bool,
    /// Since when the closed member has had nothing in flight and no rebalance under way.
    quiet_since: Option<Instant>,
    /// Whether a first assignment arrived (before it, the member is still joining).
    assigned_once: bool,
    /// When [`Core::close`] was called.
    closed_at: Option<Instant>,
    /// Moves of undecodable records to the DLQ: a failed one is not leased to a handler.
    poison: HashSet<u64>,
}

impl State {
    fn unleased(&self) -> usize {
        self.ready.len()
            + self.waiting.values().map(VecDeque::len).sum::<usize>()
            + self.held.values().map(VecDeque::len).sum::<usize>()
    }

    fn in_flight(&self) -> usize {
        self.leased.len() + self.moving.len()
    }

    /// Queues a due record: ready, or behind the handed-out record of its key.
    fn route(&mut self, entry: Entry) {
        if let Some(key) = entry.key() {
            if self.busy.contains(&key) {
                self.waiting.entry(key).or_default().push_back(entry);
                return;
            }
            self.busy.insert(key);
        }
        self.ready.push_back(entry);
    }

    /// The record is done here: complete its offset and let its key's next record go.
    fn complete(&mut self, entry: &Entry) {
        self.offsets.complete(&entry.tp.0, entry.tp.1, entry.offset);
        self.free_key(entry);
    }

    fn free_key(&mut self, entry: &Entry) {
        let Some(key) = entry.key() else { return };
        match self.waiting.get_mut(&key).and_then(VecDeque::pop_front) {
            Some(next) => {
                if self.waiting.get(&key).is_some_and(VecDeque::is_empty) {
                    self.waiting.remove(&key);
                }
                self.ready.push_back(next);
            }
            None => {
                self.busy.remove(&key);
            }
        }
    }
}

/// The engine: shared by the poll thread, the receivers and the deliveries.
pub(crate) struct Core {
    spec: Spec,
    state: Mutex<State>,
    /// Wakes receivers when records become ready.
    ready: tokio::sync::Notify,
    /// Wakes a revocation or a close waiting for leased records.
    settled: Condvar,
    expiry: Option<Arc<dyn Sink>>,
    runtime: tokio::runtime::Handle,
    /// Set once the poll thread has left the group and destroyed its consumer.
    exited: std::sync::atomic::AtomicBool,
}

/// Every engine of this process, so deleting a topic can first stop the members consuming it.
static ENGINES: Mutex<Vec<std::sync::Weak<Core>>> = Mutex::new(Vec::new());

/// Stops, and waits (up to 10 s) for, every engine of this process consuming one of `topics`.
///
/// Deleting a topic under a running member is harmless on Kafka, but Tansu then answers its
/// fetches with leader-change tags naming no topic, on which librdkafka 2.12 crashes; and a
/// member of a deleted topic has nothing left to do anyway. Their leased deliveries are
/// lost (verbs fail with `LeaseLost`) and receiving fails with `Closed`.
pub(crate) async fn stop_consumers_of(brokers: &str, topics: &[String]) {
    let cores: Vec<Arc<Core>> = {
        let mut engines = ENGINES.lock().unwrap_or_else(|e| e.into_inner());
        engines.retain(|weak| weak.strong_count() > 0);
        engines
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|core| {
                core.spec.brokers == brokers && core.spec.topics.iter().any(|t| topics.contains(t))
            })
            .collect()
    };
    for core in &cores {
        core.abort();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cores
        .iter()
        .any(|c| !c.exited.load(std::sync::atomic::Ordering::Acquire))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("group", &self.spec.group)
            .finish()
    }
}

/// The consumer context: rebalances reach the engine through it.
struct Context {
    core: Arc<Core>,
}

impl ClientContext for Context {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        let group = &self.core.spec.group;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(%group, fac, "librdkafka: {message}")
            }
            L::Warning => tracing::warn!(%group, fac, "librdkafka: {message}"),
            L::Notice | L::Info => tracing::info!(%group, fac, "librdkafka: {message}"),
            L::Debug => tracing::debug!(%group, fac, "librdkafka: {message}"),
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.core.lock().rebalancing = true;
            self.core.revoke(consumer, tpl);
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(err) = result {
            // The positions are due again, so the next commit (or the revocation's) sends them.
            tracing::debug!(group = %self.core.spec.group, error = %err, "a commit failed");
            let mut state = self.core.lock();
            for element in offsets.elements() {
                state.offsets.uncommit(element.topic(), element.partition());
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // librdkafka keeps an application's pause across a rebalance: a partition paused
            // before it would stay paused for good. Resume all; `tick` pauses again what
            // must wait.
            if tpl.count() > 0 {
                let _ = consumer.resume(tpl);
            }
            let mut state = self.core.lock();
            state.rebalancing = false;
            state.assigned_once = true;
            for element in tpl.elements() {
                let tp = (Arc::from(element.topic()), element.partition());
                state.paused.remove(&tp);
                state.owned.insert(tp);
            }
            tracing::debug!(group = %self.core.spec.group, partitions = tpl.count(), "assigned");
        }
    }
}

impl Core {
    /// Starts a group member consuming `spec.topics` with `config` (bootstrap servers and
    /// client settings; the group and commit settings are added here).
    pub(crate) fn start(
        spec: Spec,
        mut config: rdkafka::ClientConfig,
        expiry: Option<Arc<dyn Sink>>,
    ) -> Result<Arc<Core>> {
        let core = Arc::new(Core {
            state: Mutex::new(State::default()),
            spec,
            ready: tokio::sync::Notify::new(),
            settled: Condvar::new(),
            expiry,
            runtime: tokio::runtime::Handle::current(),
            exited: std::sync::atomic::AtomicBool::new(false),
        });
        ENGINES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&core));
        config
            .set("group.id", &core.spec.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        let consumer: BaseConsumer<Context> = config
            .create_with_context(Context {
                core: Arc::clone(&core),
            })
            .map_err(|e| crate::error::to_error(e, "creating a consumer"))?;
        let topics: Vec<&str> = core.spec.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| crate::error::to_error(e, "subscribing"))?;
        let thread_core = Arc::clone(&core);
        std::thread::Builder::new()
            .name(format!("sluice-kafka {}", core.spec.group))
            .spawn(move || {
                let core = Arc::clone(&thread_core);
                let run = std::panic::AssertUnwindSafe(|| thread_core.run(consumer));
                if std::panic::catch_unwind(run).is_err() {
                    // Never a silent subscriber: receives now fail with `Closed`, and the
                    // group member is gone (its partitions move on after the session timeout).
                    tracing::error!(group = %core.spec.group, "the consumer thread panicked; the subscriber is closed");
                    core.close();
                    core.exited.store(true, std::sync::atomic::Ordering::Release);
                }
            })
            .map_err(|e| Error::backend(format!("starting a consumer thread: {e}"), false))?;
        Ok(core)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The poll loop: runs until the engine is closed and nothing it handed out is in flight
    /// then commits and leaves the group.
    fn run(self: Arc<Self>, consumer: BaseConsumer<Context>) {
        let mut last_commit = Instant::now();
        let mut last_tick = Instant::now();
        loop {
            if self.may_leave() {
                break;
            }
            let idle = match consumer.poll(POLL) {
                Some(Ok(record)) => {
                    self.intake(&record);
                    false
                }
                Some(Err(err)) => {
                    tracing::debug!(group = %self.spec.group, error = %err, "consumer error");
                    false
                }
                None => true,
            };
            // Housekeeping scans every lease and partition: not after every record while
            // records stream in, only when idle or every few milliseconds.
            if idle || last_tick.elapsed() >= TICK_EVERY {
                self.tick(&consumer);
                last_tick = Instant::now();
            }
            if last_commit.elapsed() >= COMMIT_EVERY {
                self.commit(&consumer, CommitMode::Async);
                last_commit = Instant::now();
            }
        }
        self.commit(&consumer, CommitMode::Sync);
        consumer.unsubscribe();
        // Dropping the consumer closes it: it leaves the group, so its partitions move on at
        // once instead of after the session timeout.
        drop(consumer);
        self.exited
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::debug!(group = %self.spec.group, "consumer stopped");
    }

    /// Whether a closed member may leave the group now: nothing in flight, and quiet for
    /// `leave_after`. Leaving in the middle of a rebalance is avoided: Tansu then never
    /// completes the rebalance for the members that stay.
    fn may_leave(&self) -> bool {
        let mut state = self.lock();
        let Some(closed_at) = state.closed_at else {
            return false;
        };
        // However things stand, a closed member does not linger past every lease plus the
        // rebalance timeout (a revocation never followed by an assignment, a stuck move).
        let cap = self.spec.lease + self.spec.leave_after * 8;
        if closed_at.elapsed() >= cap {
            return true;
        }
        let joining = state.rebalancing || !state.assigned_once;
        if state.in_flight() > 0 || joining {
            state.quiet_since = None;
            return false;
        }
        let since = *state.quiet_since.get_or_insert_with(Instant::now);
        since.elapsed() >= self.spec.leave_after
    }

    /// Takes in a fetched record.
    fn intake(self: &Arc<Self>, record: &BorrowedMessage<'_>) {
        let tp: Tp = (Arc::from(record.topic()), record.partition());
        let offset = record.offset();
        let decoded = {
            let headers = record.headers();
            let pairs = headers
                .iter()
                .flat_map(|h| h.iter())
                .map(|h| (h.key, h.value));
            let origin = wire::Origin {
                topic: record.topic(),
                partition: record.partition(),
                offset: record.offset(),
                key: record.key(),
            };
            wire::decode_fetched(pairs, record.payload().unwrap_or_default(), origin)
        };
        let mut state = self.lock();
        if !state.owned.contains(&tp) || state.closed {
            return;
        }
        state.offsets.track(&tp.0, tp.1, offset);
        let incoming = match decoded {
            Ok(incoming) => incoming,
            Err(reason) => {
                // A poison record: straight to the DLQ with its reason, never to a handler
                // (and never a crash loop); completed once the DLQ has it.
                let Some(sink) = self.expiry.clone() else {
                    // Nowhere to put it: it stays pending, so the position stops before it.
                    tracing::error!(group = %self.spec.group, topic = %tp.0, offset, %reason, "an undecodable record is held");
                    state.offsets.fetched(&tp.0, tp.1, offset, true);
                    return;
                };
                state.offsets.fetched(&tp.0, tp.1, offset, true);
                let entry = Entry {
                    tp,
                    offset,
                    message: poison(record),
                    attempt: 1,
                };
                let raw = wire::Outgoing::from_record(record);
                state.next_token += 1;
                let token = state.next_token;
                state
                    .moving
                    .insert(token, (entry.clone(), after(self.spec.lease)));
                state.poison.insert(token);
                drop(state);
                let guard = MoveGuard::new(Arc::clone(self), token);
                self.runtime.spawn(async move {
                    let moved = sink.dead_letter_poison(entry, raw, reason).await;
                    guard.finish(moved);
                });
                return;
            }
        };
        let wanted = self
            .spec
            .filter
            .as_ref()
            .is_none_or(|f| f.matches(incoming.message.routing_key()));
        state.offsets.fetched(&tp.0, tp.1, offset, wanted);
        if !wanted {
            return;
        }
        let entry = Entry {
            tp: tp.clone(),
            offset,
            attempt: incoming.attempt_base.saturating_add(1),
            message: incoming.message,
        };
        if self.spec.tiers.contains(&*tp.0) {
            let held = state.held.entry(tp).or_default();
            if !held.is_empty() || !entry.due() {
                held.push_back(entry);
                return;
            }
        }
        state.route(entry);
        drop(state);
        self.ready.notify_waiters();
    }

    /// Housekeeping between polls: expired leases, due tier records, pause and resume.
    fn tick(self: &Arc<Self>, consumer: &BaseConsumer<Context>) {
        let now = Instant::now();
        let mut state = self.lock();
        let expired: Vec<u64> = state
            .leased
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(token, _)| *token)
            .collect();
        let mut woke = false;
        let mut moves = Vec::new();
        for token in expired {
            let Some((mut entry, deadline)) = state.leased.remove(&token) else {
                continue;
            };
            entry.attempt = entry.attempt.saturating_add(1);
            if !state.closed && state.owned.contains(&entry.tp) {
                state.ready.push_front(entry);
                woke = true;
            } else if state.closed && self.expiry.is_some() {
                // Closing: the record goes to the retry tier with its attempt counted.
                state.moving.insert(token, (entry.clone(), deadline));
                moves.push((token, entry));
            } else {
                // Nothing to move it to: it stays pending and the next owner reads it again.
                state.free_key(&entry);
            }
        }
        let mut due = Vec::new();
        for held in state.held.values_mut() {
            while held.front().is_some_and(Entry::due) {
                due.extend(held.pop_front());
            }
        }
        state.held.retain(|_, held| !held.is_empty());
        for entry in due {
            state.route(entry);
            woke = true;
        }
        // Pause: partitions whose head waits for its due time, or all when the buffer is full.
        let full = state.unleased() >= self.spec.buffer || state.closed;
        let want: HashSet<Tp> = state
            .owned
            .iter()
            .filter(|tp| full || state.held.contains_key(*tp))
            .cloned()
            .collect();
        let pause: Vec<Tp> = want.difference(&state.paused).cloned().collect();
        let resume: Vec<Tp> = state
            .paused
            .difference(&want)
            .filter(|tp| state.owned.contains(*tp))
            .cloned()
            .collect();
        state.paused = want;
        drop(state);
        if let Some(expiry) = &self.expiry {
            for (token, entry) in moves {
                let (guard, expiry) = (MoveGuard::new(Arc::clone(self), token), Arc::clone(expiry));
                self.runtime.spawn(async move {
                    let moved = expiry.move_expired(entry).await;
                    guard.finish(moved);
                });
            }
        }
        if !pause.is_empty() {
            let _ = consumer.pause(&tpl(&pause, None));
        }
        if !resume.is_empty() {
            let _ = consumer.resume(&tpl(&resume, None));
        }
        if woke {
            self.ready.notify_waiters();
        }
    }

    /// Commits every position that moved.
    fn commit(&self, consumer: &BaseConsumer<Context>, mode: CommitMode) {
        let due = self.lock().offsets.commits_due();
        if due.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (topic, partition, position) in &due {
            let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*position));
        }
        if let Err(err) = consumer.commit(&list, mode) {
            tracing::warn!(group = %self.spec.group, error = %err, "commit failed; retried with the next one");
            let mut state = self.lock();
            for (topic, partition, _) in due {
                state.offsets.uncommit(&topic, partition);
            }
        }
    }

    /// Revocation (inside a poll): stop handing out, wait a bounded time for leased records of
    /// the revoked partitions, commit what is complete, forget the rest.
    fn revoke(&self, consumer: &BaseConsumer<Context>, list: &TopicPartitionList) {
        let revoked: HashSet<Tp> = list
            .elements()
            .iter()
            .map(|e| (Arc::from(e.topic()), e.partition()))
            .collect();
        let mut state = self.lock();
        for tp in &revoked {
            state.owned.remove(tp);
            state.held.remove(tp);
            state.paused.remove(tp);
        }
        state.ready.retain(|e| !revoked.contains(&e.tp));
        state.waiting.retain(|(tp, _), _| !revoked.contains(tp));
        let in_flight = |s: &State| {
            s.leased
                .values()
                .chain(s.moving.values())
                .filter(|(e, _)| revoked.contains(&e.tp))
                .map(|(_, deadline)| *deadline)
                .max()
        };
        let limit = Instant::now() + REVOKE_WAIT;
        while let Some(latest) = in_flight(&state) {
            let until = latest.min(limit);
            let now = Instant::now();
            if until <= now {
                break;
            }
            state = self
                .settled
                .wait_timeout(state, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let lost: Vec<Entry> = {
            let tokens: Vec<u64> = state
                .leased
                .iter()
                .filter(|(_, (e, _))| revoked.contains(&e.tp))
                .map(|(t, _)| *t)
                .collect();
            tokens
                .iter()
                .filter_map(|t| state.leased.remove(t))
                .map(|(entry, _)| entry)
                .collect()
        };
        // Still leased: the partition goes to another member, which would read them again
        // as first deliveries. Where the engine can, they move to the retry tier instead, with
        // the delivery counted (their holder's verbs now fail with `LeaseLost`).
        if let Some(expiry) = self.expiry.clone().filter(|_| !lost.is_empty()) {
            drop(state);
            // All copies at once, within the revocation's bound: what is not confirmed in
            // time stays pending (the new owner reads it again).
            let copies = lost.iter().cloned().map(|mut entry| {
                entry.attempt = entry.attempt.saturating_add(1);
                let expiry = Arc::clone(&expiry);
                async move { expiry.move_expired(entry.clone()).await.then_some(entry) }
            });
            // The timer is made inside the runtime (this is the poll thread, outside it).
            let copies = futures::future::join_all(copies);
            let moved: Vec<Entry> = self
                .runtime
                .block_on(async { tokio::time::timeout(REVOKE_WAIT, copies).await })
                .unwrap_or_default()
                .into_iter()
                .flatten()
                .collect();
            state = self.lock();
            for entry in &moved {
                state
                    .offsets
                    .complete(&entry.tp.0, entry.tp.1, entry.offset);
            }
        }
        // Moves still under way for these partitions: their outcome no longer touches the
        // offsets or keys (the partition may come back, tracked afresh).
        state.moving.retain(|_, (e, _)| !revoked.contains(&e.tp));
        state.busy.retain(|(tp, _)| !revoked.contains(tp));
        let mut list = TopicPartitionList::new();
        let mut forgotten = 0;
        for tp in &revoked {
            let (position, pending) = state.offsets.revoke(&tp.0, tp.1);
            forgotten += pending;
            if let Some(position) = position {
                let _ = list.add_partition_offset(&tp.0, tp.1, Offset::Offset(position));
            }
        }
        drop(state);
        if list.count() > 0 {
            if let Err(err) = consumer.commit(&list, CommitMode::Sync) {
                tracing::warn!(group = %self.spec.group, error = %err, "commit at revocation failed");
            }
        }
        tracing::debug!(
            group = %self.spec.group,
            partitions = revoked.len(),
            lost = lost.len(),
            forgotten,
            "revoked"
        );
    }

    /// Takes up to `max` ready records, waiting up to `wait` for the first.
    pub(crate) async fn take(&self, max: usize, wait: Duration) -> Result<Vec<Lease>> {
        let end = tokio::time::Instant::now()
            .checked_add(wait)
            .unwrap_or_else(|| tokio::time::Instant::now() + FAR);
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closed {
                    return Err(Error::Closed("subscriber"));
                }
                let room = self.spec.prefetch.saturating_sub(state.in_flight());
                let n = max.min(room).min(state.ready.len());
                if n > 0 {
                    let deadline = after(self.spec.lease);
                    let mut out = Vec::with_capacity(n);
                    for entry in state.ready.drain(..n).collect::<Vec<_>>() {
                        state.next_token += 1;
                        let token = state.next_token;
                        state.leased.insert(token, (entry.clone(), deadline));
                        out.push(Lease {
                            token,
                            entry,
                            deadline,
                        });
                    }
                    return Ok(out);
                }
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    fn lease_lost(entry_id: &str) -> Error {
        Error::LeaseLost {
            id: entry_id.to_owned(),
        }
    }

    /// Acks: the record is done.
    pub(crate) fn ack(&self, token: u64, id: &str) -> Result<()> {
        let mut state = self.lock();
        let (entry, _) = state
            .leased
            .remove(&token)
            .ok_or_else(|| Self::lease_lost(id))?;
        state.complete(&entry);
        drop(state);
        self.settled.notify_all();
        self.ready.notify_waiters();
        Ok(())
    }

    /// Releases: handed out again first, attempt unchanged.
    pub(crate) fn release(&self, token: u64, id: &str) -> Result<()> {
        let mut state = self.lock();
        let (entry, _) = state
            .leased
            .remove(&token)
            .ok_or_else(|| Self::lease_lost(id))?;
        if state.owned.contains(&entry.tp) && !state.closed {
            state.ready.push_front(entry);
        } else {
            // Not ours any more (or closing): the next owner reads it again.
            state.free_key(&entry);
        }
        drop(state);
        self.settled.notify_all();
        self.ready.notify_waiters();
        Ok(())
    }

    /// Extends the lease to `lease` from now.
    pub(crate) fn extend(&self, token: u64, id: &str, lease: Duration) -> Result<Instant> {
        let mut state = self.lock();
        let (_, deadline) = state
            .leased
            .get_mut(&token)
            .filter(|(_, deadline)| *deadline > Instant::now())
            .ok_or_else(|| Self::lease_lost(id))?;
        *deadline = after(lease);
        Ok(*deadline)
    }

    /// Starts moving a leased record (retry, dead-letter): it stays pending, its key blocked.
    pub(crate) fn begin_move(&self, token: u64, id: &str) -> Result<()> {
        let mut state = self.lock();
        let leased = state
            .leased
            .remove(&token)
            .ok_or_else(|| Self::lease_lost(id))?;
        state.moving.insert(token, leased);
        Ok(())
    }

    /// Ends a move: done (complete the record) or failed (leased again as before).
    pub(crate) fn finish_move(&self, token: u64, moved: bool) {
        let mut state = self.lock();
        let poison = state.poison.remove(&token);
        if let Some((entry, deadline)) = state.moving.remove(&token) {
            if moved {
                state.complete(&entry);
            } else if state.closed || poison || !state.owned.contains(&entry.tp) {
                // Not leased again: it stays pending, and the next owner reads it again.
                state.free_key(&entry);
            } else {
                state.leased.insert(token, (entry, deadline));
            }
        }
        drop(state);
        self.settled.notify_all();
        self.ready.notify_waiters();
    }

    /// Whether [`close`](Self::close) (or a topic deletion) stopped it.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Stops at once: nothing more is handed out and every lease is dropped (its verbs fail
    /// with `LeaseLost`), so the poll thread leaves the group right away.
    fn abort(&self) {
        self.close();
        let mut state = self.lock();
        state.leased.clear();
        state.moving.clear();
        drop(state);
        self.settled.notify_all();
    }

    /// Closes (see [`close`](Self::close)) and, when no delivery is held, waits until the poll
    /// thread has committed what was settled and left the group, so a process that exits next
    /// neither loses an ack nor leaves a dead member behind (its partitions would wait out the
    /// session timeout). With deliveries still held it returns at once: they stay valid after
    /// `close` (the contract), and the member commits and leaves once they are settled or
    /// expired. Bounded by the lease and the leave delay.
    pub(crate) async fn close_and_wait(&self) {
        self.close();
        let cap = self.spec.lease + self.spec.leave_after * 8 + Duration::from_secs(5);
        let deadline = tokio::time::Instant::now() + cap;
        while !self.exited.load(std::sync::atomic::Ordering::Acquire)
            && self.lock().leased.is_empty()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops handing out; records not handed out are left to the next owner, leased ones stay
    /// valid until settled or expired, then the member commits and leaves the group.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.closed = true;
        state.closed_at = Some(Instant::now());
        let state = &mut *state;
        let unleased: Vec<Entry> = state
            .ready
            .drain(..)
            .chain(state.waiting.drain().flat_map(|(_, q)| q))
            .chain(state.held.drain().flat_map(|(_, q)| q))
            .collect();
        for entry in &unleased {
            state.free_key(entry);
        }
        self.ready.notify_waiters();
        self.settled.notify_all();
    }
}

/// Far enough in the future to mean "never" (durations a caller passes may not fit).
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Now plus `d`, saturating at [`FAR`].
pub(crate) fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).unwrap_or_else(|| now + FAR)
}

/// Ends a move when dropped unfinished (its future cancelled, or its runtime gone), so a record
/// never stays in `moving` with its key held.
pub(crate) struct MoveGuard {
    core: Arc<Core>,
    token: u64,
    done: bool,
}

impl MoveGuard {
    pub(crate) fn new(core: Arc<Core>, token: u64) -> Self {
        Self {
            core,
            token,
            done: false,
        }
    }

    /// The move finished: `moved` says whether the copy is safely elsewhere.
    pub(crate) fn finish(mut self, moved: bool) {
        self.done = true;
        self.core.finish_move(self.token, moved);
    }
}

impl Drop for MoveGuard {
    fn drop(&mut self) {
        if !self.done {
            self.core.finish_move(self.token, false);
        }
    }
}

/// A list of partitions, each at `offset` when given.
fn tpl(tps: &[Tp], offset: Option<i64>) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (topic, partition) in tps {
        match offset {
            Some(offset) => {
                let _ = list.add_partition_offset(topic, *partition, Offset::Offset(offset));
            }
            None => {
                list.add_partition(topic, *partition);
            }
        }
    }
    list
}

/// The message kept of an undecodable record: its value as the payload, a new id.
fn poison(record: &BorrowedMessage<'_>) -> Message {
    Message::builder(record.payload().unwrap_or_default().to_vec())
        .build()
        .unwrap_or_else(|_| Message::builder(Vec::<u8>::new()).build().expect("empty"))
}
