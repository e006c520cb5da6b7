//! Recurring jobs: the schedules a [`Jobs`](super::Jobs) produces ticks for, and the one pass
//! that produces every tick due.
//!
//! **One job per tick, on any number of replicas.** Every replica registers the same
//! schedules at start-up and runs the producer. A tick's job has the id
//! [`tick_id`](crate::schedule::tick_id) (schedule id + tick time, the same on every replica),
//! and is produced [`LEAD`] before it is due, as a delayed publish for its time. Before
//! publishing, a replica claims the tick id in the tick store (a [`DedupStore`]: in memory by
//! default, so one process; `sluice-redis`'s or `sluice-sql`'s store across processes):
//! - claimed: it publishes, then confirms the claim for [`TICK_MEMORY`]; a failed publish
//!   releases the claim, and the next pass (on any replica) tries again;
//! - already confirmed: another replica produced the tick, nothing to do;
//! - pending elsewhere: another replica is publishing it; this one looks again on its next
//!   pass. A replica killed between its claim and its publish leaves the claim pending for
//!   [`TICK_PENDING`]; then another replica claims and publishes it.
//!
//! A replica killed after its publish and before its confirm lets another replica publish the
//! tick again once the claim lapses: the copy has the same id, so the job topic's dedup window
//! (where it has one) or the worker's idempotency by message id keeps it to one run.
//!
//! Missed ticks (no replica ran at their time) follow the schedule's [`Missed`] policy when a
//! schedule is registered: skipped, or the most recent `at_most` of the last
//! [`CATCH_UP_HORIZON`] produced at once; the tick store remembers produced ticks for
//! [`TICK_MEMORY`], so a catch-up never repeats a tick another replica produced.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sluice_core::dedup::{DedupClaim, DedupStore};
use sluice_core::{Message, Publisher, TopicName};

use crate::producer::{ProduceError, Producer};
use crate::schedule::{tick_id, Missed, Schedule};

/// How long before its time a tick's job is published (as a delayed publish for its time):
/// the room replicas with clocks a few seconds apart, or a slow publish, have to agree.
pub const LEAD: Duration = Duration::from_secs(30);
/// How long a replica's claim of a tick stays pending while it publishes.
pub const TICK_PENDING: Duration = Duration::from_secs(15);
/// How long the tick store remembers a produced tick.
pub const TICK_MEMORY: Duration = Duration::from_secs(8 * 24 * 3600);
/// How far back a catch-up looks for missed ticks.
pub const CATCH_UP_HORIZON: Duration = Duration::from_secs(7 * 24 * 3600);
/// How many finished ticks a schedule remembers (those produced ahead, and the last due).
pub const RECENT_TICKS: usize = 256;
/// The "topic" under which tick ids are claimed in the tick store.
pub const TICK_CLAIMS: &str = "_sluice.schedules";

/// A tick id of schedule `id`, to check that its ids are valid message ids.
pub(crate) fn probe_id(id: &str) -> String {
    tick_id(id, SystemTime::UNIX_EPOCH)
}

/// What [`Jobs::schedule`](super::Jobs::schedule) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// A new schedule.
    Created,
    /// The same definition and job as before: nothing changed.
    Unchanged,
    /// Another definition or job under this id: it replaced the old one.
    Replaced,
}

/// A registered schedule, as [`Jobs::schedules`](super::Jobs::schedules) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// The schedule id.
    pub id: String,
    /// The job type it produces.
    pub job: &'static str,
    /// When it ticks.
    pub schedule: Schedule,
    /// The next tick not produced yet.
    pub next_due: Option<SystemTime>,
    /// The latest ticks this replica finished (published, or found produced by another
    /// replica), newest first, at most [`RECENT_TICKS`]. Ticks are produced up to [`LEAD`]
    /// ahead, so the newest may not be due yet.
    pub recent_ticks: Vec<SystemTime>,
}

/// One registered schedule.
struct Entry {
    schedule: Schedule,
    job: &'static str,
    topic: TopicName,
    payload: Vec<u8>,
    /// Missed ticks still to produce, oldest first.
    catch_up: VecDeque<SystemTime>,
    /// The next tick to produce.
    next: Option<SystemTime>,
    /// The latest ticks finished, newest first.
    recent: VecDeque<SystemTime>,
}

impl Entry {
    /// The earliest tick this entry still has to produce.
    fn first(&self) -> Option<SystemTime> {
        self.catch_up.front().copied().or(self.next)
    }
}

/// The clock schedules read (injected in tests).
pub(crate) type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The schedules of a `Jobs` and where their ticks are claimed.
pub(crate) struct Schedules {
    entries: Mutex<BTreeMap<String, Entry>>,
    pub(crate) store: Arc<dyn DedupStore>,
    pub(crate) clock: Clock,
    /// Wakes the producer loop when a schedule changes.
    pub(crate) changed: tokio::sync::Notify,
}

/// What one pass did with one tick.
enum Produced {
    /// Published, or found produced by another replica: the tick is done.
    Done,
    /// Another replica holds the claim: look again on the next pass.
    Later,
}

impl Schedules {
    pub(crate) fn new(store: Arc<dyn DedupStore>, clock: Clock) -> Self {
        Self {
            entries: Mutex::new(BTreeMap::new()),
            store,
            clock,
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers (or replaces) a schedule.
    pub(crate) fn upsert(
        &self,
        id: &str,
        schedule: Schedule,
        job: &'static str,
        topic: TopicName,
        payload: Vec<u8>,
    ) -> Upsert {
        let now = (self.clock)();
        let mut entries = self.lock();
        if let Some(old) = entries.get(id) {
            if old.schedule == schedule && old.job == job && old.payload == payload {
                return Upsert::Unchanged;
            }
        }
        // A tick at `now` or later is still to come, one before is missed: every replica
        // registering around a tick agrees on which it produces.
        let just_before = now.checked_sub(Duration::from_millis(1)).unwrap_or(now);
        let catch_up = match schedule.missed_policy() {
            Missed::Skip => VecDeque::new(),
            Missed::CatchUp { .. } => {
                let from = now.checked_sub(CATCH_UP_HORIZON);
                schedule.missed_ticks(from, just_before).into()
            }
        };
        let entry = Entry {
            next: schedule.next_after(just_before),
            recent: VecDeque::new(),
            schedule,
            job,
            topic,
            payload,
            catch_up,
        };
        let upsert = match entries.insert(id.to_owned(), entry) {
            Some(_) => Upsert::Replaced,
            None => Upsert::Created,
        };
        drop(entries);
        self.changed.notify_waiters();
        upsert
    }

    /// Removes a schedule; whether it was there. Ticks already produced stay.
    pub(crate) fn remove(&self, id: &str) -> bool {
        let removed = self.lock().remove(id).is_some();
        self.changed.notify_waiters();
        removed
    }

    /// Every schedule with its next due tick.
    pub(crate) fn list(&self) -> Vec<ScheduleInfo> {
        self.lock()
            .iter()
            .map(|(id, entry)| ScheduleInfo {
                id: id.clone(),
                job: entry.job,
                schedule: entry.schedule.clone(),
                next_due: entry.first(),
                recent_ticks: entry.recent.iter().copied().collect(),
            })
            .collect()
    }

    /// When the next pass has something to do: the earliest tick less [`LEAD`].
    pub(crate) fn next_pass(&self) -> Option<SystemTime> {
        self.lock()
            .values()
            .filter_map(Entry::first)
            .min()
            .map(|tick| tick.checked_sub(LEAD).unwrap_or(tick))
    }

    /// One pass: produces every tick due by now plus [`LEAD`], in order per schedule.
    /// Returns how many ticks this pass finished (published here or found produced), and
    /// whether some tick waits on another replica's claim (look again soon).
    pub(crate) async fn produce_due<P: Publisher>(
        &self,
        producer: &Producer<P>,
    ) -> Result<(usize, bool), ProduceError> {
        let mut done = 0;
        let mut waiting = false;
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            loop {
                let now = (self.clock)();
                let due = {
                    let entries = self.lock();
                    let Some(entry) = entries.get(&id) else { break };
                    match entry.first() {
                        Some(tick) if tick.checked_sub(LEAD).unwrap_or(tick) <= now => {
                            Some((tick, entry.topic.clone(), entry.job, entry.payload.clone()))
                        }
                        _ => None,
                    }
                };
                let Some((tick, topic, job, payload)) = due else {
                    break;
                };
                match self
                    .produce(producer, &id, tick, now, &topic, job, payload)
                    .await?
                {
                    Produced::Done => {
                        done += 1;
                        let mut entries = self.lock();
                        if let Some(entry) = entries.get_mut(&id) {
                            entry.recent.push_front(tick);
                            entry.recent.truncate(RECENT_TICKS);
                            if entry.catch_up.front() == Some(&tick) {
                                entry.catch_up.pop_front();
                            } else if entry.next == Some(tick) {
                                entry.next = entry.schedule.next_after(tick);
                            }
                        }
                    }
                    Produced::Later => {
                        waiting = true;
                        break;
                    }
                }
            }
        }
        Ok((done, waiting))
    }

    /// Claims a tick, publishes its job, confirms the claim.
    #[allow(clippy::too_many_arguments)]
    async fn produce<P: Publisher>(
        &self,
        producer: &Producer<P>,
        id: &str,
        tick: SystemTime,
        now: SystemTime,
        topic: &TopicName,
        job: &'static str,
        payload: Vec<u8>,
    ) -> Result<Produced, ProduceError> {
        let tick_id = tick_id(id, tick);
        let token = match self
            .store
            .claim(TICK_CLAIMS, &tick_id, TICK_PENDING)
            .await?
        {
            DedupClaim::Claimed(token) => token,
            DedupClaim::Duplicate => return Ok(Produced::Done),
            DedupClaim::InProgress { .. } => return Ok(Produced::Later),
        };
        let mut builder = Message::json_builder(payload)
            .id(tick_id.clone())
            .message_type(job);
        if tick > now {
            builder = builder.deliver_at(tick);
        }
        let published: Result<_, ProduceError> = match builder.build() {
            Ok(message) => Publisher::publish(producer, topic, message)
                .await
                .map_err(ProduceError::from),
            Err(err) => Err(sluice_core::Error::from(err).into()),
        };
        match published {
            Ok(_) => {
                if let Err(err) = self
                    .store
                    .confirm(TICK_CLAIMS, &tick_id, &token, TICK_MEMORY)
                    .await
                {
                    // The job is published; a lapsed claim may let another replica publish
                    // it again, with the same id (see the module's doc).
                    tracing::warn!(schedule = id, tick = tick_id, error = %err, "could not record a produced tick");
                }
                tracing::debug!(schedule = id, tick = tick_id, "tick produced");
                Ok(Produced::Done)
            }
            Err(err) => {
                let _ = self.store.release(TICK_CLAIMS, &tick_id, &token).await;
                Err(err)
            }
        }
    }
}
