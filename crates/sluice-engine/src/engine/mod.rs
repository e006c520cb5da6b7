//! The engine: topics, subscriptions and their logs behind one state lock, writes through
//! one group committer. This is where the pieces meet; the format and the commit protocol
//! are in `docs/engine-format.md`.
//!
//! Invariants:
//! - Every change of a subscription's state is applied in memory under the state lock and
//!   its journal records are submitted to the committer *under the same lock*, so the journal
//!   holds them in the order they were applied; the caller's completion runs only once they
//!   are committed (durable with `SyncMode::Always`).
//! - Completions and the durable hook never take the state lock (a refused batch completes
//!   synchronously on the submitting thread, which holds it); failed dedup claims go through
//!   their own small lock instead.
//! - Reads of a log take its lock briefly, never while the flusher would need it for long.
//! - A topic's offsets are assigned by its log at append; a publish learns them from its
//!   completion.
//! - Retention deletes only what every subscription has durably handled (`retention.rs`);
//!   a publish past a topic's backlog bound is refused before anything of it is done
//!   (`backlog.rs`); neither ever blocks a thread.
//!
//! Threads: the committer's flusher, checkpoint threads (one per checkpoint), and the
//! maintenance thread (`maintenance.rs`, retention every
//! [`EngineOptions::maintenance_interval`]), which `close` stops first.

mod backlog;
mod checkpoint;
mod data;
mod dlq;
mod kv;
mod maintenance;
mod open;
mod retention;
mod topology;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use crate::catalog::{Catalog, SubscriptionEntry, TopicOptions};
use crate::clock::{Clock, SystemClock};
use crate::commit::{Batch, Committer, LogHandle, SyncMode};
use crate::dedup::DedupIndex;
use crate::dir::DataDir;
use crate::error::{Error, Result};
use crate::io::{FileStorage, Storage};
use crate::log::LogOptions;
use crate::record::MessageRecord;
use crate::subscription::{JournalRecord, Ref, SubscriptionState};

pub(crate) use checkpoint::{frame as checkpoint_frame, unframe as checkpoint_body};
pub(crate) use open::{open_subscription, open_topic};

pub use backlog::Backlog;
pub use data::{Leased, Published, Settle, Verb, RECEIVE_READ_BUDGET};
pub use retention::RetentionReport;

/// A callback completing an asynchronous operation, run on the flusher thread: keep it short
/// and never block in it.
pub type Completion<T> = Box<dyn FnOnce(Result<T>) + Send + 'static>;

/// Builds the dead-letter record from the attempts made and the first failure time (ms).
pub type EnvelopeFn = Box<dyn FnOnce(u32, Option<u64>) -> MessageRecord + Send + 'static>;

/// Journal records after which a subscription is checkpointed (and its journal trimmed).
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 100_000;

/// How often the maintenance thread runs retention by default.
pub const DEFAULT_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);

/// Options of an engine.
#[derive(Clone)]
#[non_exhaustive]
pub struct EngineOptions {
    /// Durability of writes (default: sync before confirming).
    pub sync: SyncMode,
    /// Segment layout of every log.
    pub log: LogOptions,
    /// Where the bytes go; `None` is the real filesystem (and the directory is locked).
    pub storage: Option<Arc<dyn Storage>>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Journal records between two checkpoints of a subscription.
    pub checkpoint_every: u64,
    /// How often the maintenance thread runs retention ([`Engine::enforce_retention`]);
    /// `None` starts no thread (retention runs only when called).
    pub maintenance_interval: Option<Duration>,
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("sync", &self.sync)
            .field("log", &self.log)
            .field("checkpoint_every", &self.checkpoint_every)
            .field("maintenance_interval", &self.maintenance_interval)
            .finish_non_exhaustive()
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            sync: SyncMode::Always,
            log: LogOptions::default(),
            storage: None,
            clock: Arc::new(SystemClock),
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            maintenance_interval: Some(DEFAULT_MAINTENANCE_INTERVAL),
        }
    }
}

impl EngineOptions {
    /// Sets the sync mode.
    #[must_use]
    pub fn sync(mut self, sync: SyncMode) -> Self {
        self.sync = sync;
        self
    }
    /// Uses `storage` instead of the filesystem (tests: memory, fault injection).
    #[must_use]
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }
    /// Uses `clock`.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
    /// Sets the segment layout.
    #[must_use]
    pub fn log(mut self, log: LogOptions) -> Self {
        self.log = log;
        self
    }
    /// Sets the checkpoint interval (journal records).
    #[must_use]
    pub fn checkpoint_every(mut self, records: u64) -> Self {
        self.checkpoint_every = records.max(1);
        self
    }
    /// Sets how often retention runs in the background (`None`: never; call
    /// [`Engine::enforce_retention`] yourself, as deterministic tests do).
    #[must_use]
    pub fn maintenance_interval(mut self, every: Option<Duration>) -> Self {
        self.maintenance_interval = every.filter(|d| !d.is_zero());
        self
    }
}

/// What an engine knows about one topic.
pub(crate) struct Topic {
    pub(crate) options: TopicOptions,
    pub(crate) log: LogHandle,
    /// The publish side, under its own lock so publishes never wait for the state lock
    /// while a dispatch or a verb holds it (`data.rs`).
    pub(crate) writes: Arc<Mutex<TopicWrites>>,
    pub(crate) subscriptions: BTreeSet<String>,
}

/// What a publish needs of a topic, found without the state lock.
#[derive(Clone)]
pub(crate) struct PublishHandle {
    pub(crate) log: LogHandle,
    pub(crate) writes: Arc<Mutex<TopicWrites>>,
    pub(crate) dedup_window_ms: Option<u64>,
}

impl Topic {
    pub(crate) fn publish_handle(&self) -> PublishHandle {
        PublishHandle {
            log: self.log.clone(),
            writes: self.writes.clone(),
            dedup_window_ms: self.options.dedup_window_ms,
        }
    }
}

/// What publishing to a topic changes, under the topic's write lock: ids in the dedup
/// window, and whether the topic was deleted meanwhile (a publish that looked it up before
/// then must not write to its log).
pub(crate) struct TopicWrites {
    pub(crate) dedup: DedupIndex,
    pub(crate) deleted: bool,
    /// Ids claimed by a publish that is not committed yet, with the publishes of the same id
    /// waiting for its outcome (`data.rs`). Its own lock, taken after `writes` or alone (by
    /// completions, which must never take `writes`).
    pub(crate) pending: data::PendingIds,
}

/// What an engine knows about one subscription.
pub(crate) struct Sub {
    pub(crate) entry: SubscriptionEntry,
    pub(crate) state: SubscriptionState,
    pub(crate) journal: LogHandle,
    pub(crate) dlq: LogHandle,
    /// The DLQ offset the next dead-lettered message will get (appends are submitted in
    /// order under the state lock).
    pub(crate) dlq_next: u64,
    /// The journal sequence the next record will get.
    pub(crate) journal_next: u64,
    /// Journal records since the last checkpoint.
    pub(crate) since_checkpoint: u64,
    /// A checkpoint is being written.
    pub(crate) checkpointing: bool,
    /// Tells this subscription from an earlier one of the same name (delete + re-create).
    pub(crate) generation: u64,
    /// Messages dead-lettered without a DLQ (dropped) since the engine opened.
    pub(crate) dropped_without_dlq: u64,
    /// DLQ offsets by message id, built at the first redrive by id (`dlq.rs`); `None`
    /// until then.
    pub(crate) dlq_index: Option<HashMap<String, Vec<u64>>>,
}

pub(crate) struct State {
    pub(crate) catalog: Catalog,
    pub(crate) topics: HashMap<String, Topic>,
    pub(crate) subs: HashMap<String, Sub>,
}

type Listener = Arc<dyn Fn() + Send + Sync>;

pub(crate) struct Inner {
    pub(crate) options: EngineOptions,
    pub(crate) dir: Mutex<Option<DataDir>>,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) committer: Mutex<Option<Committer>>,
    pub(crate) state: Mutex<State>,
    /// Every topic's publish side by name, kept in step with `state.topics` by the topology
    /// calls (under the state lock): publishes look topics up here, never waiting for the
    /// state lock a dispatch may hold for a while.
    pub(crate) publish_index: RwLock<HashMap<String, PublishHandle>>,
    listener: Arc<RwLock<Option<Listener>>>,
    /// One DLQ id index built at a time (`dlq.rs`).
    pub(crate) dlq_index_build: Mutex<()>,
    /// Serializes checkpoints (and deletes of subscriptions against them): `checkpoint.rs`.
    pub(crate) checkpoint_lock: Mutex<()>,
    /// Checkpoint threads started by `journal`, joined by `close`.
    pub(crate) checkpoints: Mutex<Vec<std::thread::JoinHandle<()>>>,
    pub(crate) closed: AtomicBool,
    /// Whether some topic has a backlog bound (lets publishes to others skip the check).
    pub(crate) any_backlog_bound: AtomicBool,
    /// The maintenance thread, while it runs.
    maintenance: Mutex<Option<maintenance::Maintenance>>,
    /// The keyed store (`kv.rs`), `None` until something is written to it.
    pub(crate) kv: Mutex<Option<kv::Kv>>,
}

/// The embedded engine. Cheap to clone: clones share one open data directory.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens (creating if needed) the data directory at `path`: locks it, checks its format,
    /// loads the catalog, recovers every log (reporting anything dropped in the log) and
    /// restores every subscription from its checkpoint and journal.
    pub fn open(path: impl AsRef<Path>, options: EngineOptions) -> Result<Engine> {
        let (storage, real_lock): (Arc<dyn Storage>, bool) = match &options.storage {
            Some(storage) => (storage.clone(), false),
            None => (Arc::new(FileStorage::new()), true),
        };
        let dir = DataDir::open(storage.clone(), path.as_ref(), real_lock)?;
        let catalog = match dir.load_catalog()? {
            Some(bytes) => Catalog::from_bytes(&bytes).map_err(|reason| Error::Invalid {
                what: "catalog",
                reason,
            })?,
            None => Catalog::new(),
        };
        let now = options.clock.now_ms();
        let mut topics = HashMap::new();
        for (name, topic_options) in &catalog.topics {
            topics.insert(
                name.clone(),
                open_topic(&dir, &options, name, topic_options.clone(), now)?,
            );
        }
        let mut subs = HashMap::new();
        for (name, entry) in &catalog.subscriptions {
            let sub = open_subscription(&dir, &options, name, entry.clone(), now)?;
            if let Some(topic) = topics.get_mut(&entry.options.topic) {
                topic.subscriptions.insert(name.clone());
            }
            subs.insert(name.clone(), sub);
        }
        open::fit_topics(&topics, &subs, now)?;
        let kv = kv::open_kv(&dir, &options, now)?;
        let publish_index = topics
            .iter()
            .map(|(name, topic): (&String, &Topic)| (name.clone(), topic.publish_handle()))
            .collect();
        let listener: Arc<RwLock<Option<Listener>>> = Arc::default();
        let hook_listener = listener.clone();
        let committer = Committer::start(options.sync, move |_committed| {
            let listener = hook_listener
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(listener) = listener {
                listener();
            }
        });
        let any_backlog_bound = catalog.topics.values().any(|t| t.backlog.is_some());
        let maintenance_interval = options.maintenance_interval;
        let engine = Engine {
            inner: Arc::new(Inner {
                options,
                dir: Mutex::new(Some(dir)),
                storage,
                committer: Mutex::new(Some(committer)),
                state: Mutex::new(State {
                    catalog,
                    topics,
                    subs,
                }),
                publish_index: RwLock::new(publish_index),
                listener,
                checkpoint_lock: Mutex::new(()),
                dlq_index_build: Mutex::new(()),
                checkpoints: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
                any_backlog_bound: AtomicBool::new(any_backlog_bound),
                maintenance: Mutex::new(None),
                kv: Mutex::new(kv),
            }),
        };
        if let Some(every) = maintenance_interval {
            let thread = maintenance::Maintenance::start(Arc::downgrade(&engine.inner), every);
            *engine
                .inner
                .maintenance
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(thread);
        }
        Ok(engine)
    }

    /// Sets the function called after every committed write and every state change that may
    /// make a delivery possible (a consumer waiting in `receive` should look again).
    pub fn set_listener(&self, listener: Arc<dyn Fn() + Send + Sync>) {
        *self
            .inner
            .listener
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(listener);
    }

    pub(crate) fn wake(&self) {
        let listener = self
            .inner
            .listener
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(listener) = listener {
            listener();
        }
    }

    /// The engine's clock, now.
    pub fn now_ms(&self) -> u64 {
        self.inner.options.clock.now_ms()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Submits a batch (call it with the state lock held when the order of journal records
    /// matters: the completion must not take the state lock).
    pub(crate) fn submit(&self, batch: Batch) {
        let committer = self
            .inner
            .committer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match committer.as_ref() {
            Some(committer) => {
                committer.submit(batch);
            }
            None => batch_closed(batch),
        }
    }

    /// Submits journal records of `sub` with a completion; counts them toward the next
    /// checkpoint. Call with the state lock held.
    pub(crate) fn journal(
        &self,
        name: &str,
        sub: &mut Sub,
        records: &[JournalRecord],
        done: Completion<()>,
    ) {
        if records.is_empty() {
            done(Ok(()));
            return;
        }
        let bodies: Vec<Vec<u8>> = records.iter().map(JournalRecord::encode).collect();
        sub.journal_next += bodies.len() as u64;
        sub.since_checkpoint += bodies.len() as u64;
        let batch = Batch::new()
            .append(&sub.journal, bodies)
            .on_complete(move |result| done(result.map(|_| ())));
        self.submit(batch);
        if sub.since_checkpoint >= self.inner.options.checkpoint_every && !sub.checkpointing {
            sub.checkpointing = true;
            let name = name.to_owned();
            self.spawn_checkpoint(move |engine| {
                if let Err(err) = engine.checkpoint(&name) {
                    tracing::warn!(subscription = %name, %err, "checkpoint failed; the journal keeps growing until the next one");
                }
            });
        }
    }

    /// Runs a checkpoint on a thread of its own, which `close` joins: no checkpoint may be
    /// written after the engine closed.
    pub(crate) fn spawn_checkpoint(&self, checkpoint: impl FnOnce(&Engine) + Send + 'static) {
        let engine = self.clone();
        let handle = std::thread::spawn(move || checkpoint(&engine));
        let mut threads = self
            .inner
            .checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        threads.retain(|t| !t.is_finished());
        threads.push(handle);
    }

    /// Waits until everything submitted so far is complete (batches complete in submission
    /// order). Fails with [`Error::Poisoned`] or [`Error::Closed`] when the committer refuses
    /// writes. The committer's mutex is not held while waiting, so publishers and verbs (which
    /// submit under the state lock) are not held up for a flush.
    pub(crate) fn barrier(&self) -> Result<()> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.submit(Batch::new().on_complete(move |outcome| {
            let _ = sender.send(outcome.map(|_| ()));
        }));
        receiver.recv().unwrap_or_else(|_| {
            // The flusher drops a completion only when it panicked, which poisons it.
            Err(self
                .poisoned()
                .map_or(Error::Closed, |cause| Error::Poisoned { cause }))
        })
    }

    /// Stops the maintenance thread (waiting for a retention pass in progress),
    /// checkpoints every subscription, stops the flusher (completing what is queued) and
    /// releases the data directory. Later calls on any clone fail with [`Error::Closed`].
    pub fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let maintenance = self
            .inner
            .maintenance
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut maintenance) = maintenance {
            maintenance.stop();
        }
        let threads = std::mem::take(
            &mut *self
                .inner
                .checkpoints
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a checkpoint thread panicked");
            }
        }
        let names: Vec<String> = self.lock().subs.keys().cloned().collect();
        let mut first_error = None;
        for name in names {
            if let Err(err) = self.checkpoint(&name) {
                first_error.get_or_insert(err);
            }
        }
        if self.kv_dirty() {
            if let Err(err) = self.kv_checkpoint() {
                first_error.get_or_insert(err);
            }
        }
        let committer = self
            .inner
            .committer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut committer) = committer {
            if let Err(err) = committer.close() {
                first_error.get_or_insert(err);
            }
        }
        self.inner
            .dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.wake();
        first_error.map_or(Ok(()), Err)
    }

    /// Whether a write failed and the engine refuses further writes.
    pub fn poisoned(&self) -> Option<String> {
        self.inner
            .committer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(Committer::poisoned)
    }
}

fn batch_closed(batch: Batch) {
    // The committer is gone: complete the batch with `Closed` by submitting it to a
    // committer that refuses everything is not possible, so drop it through its completion.
    batch.fail(Error::Closed);
}

/// Reads a message record from `log` at `seq`.
pub(crate) fn read_record(log: &LogHandle, seq: u64) -> Result<Option<MessageRecord>> {
    let body = log.lock().read(seq)?;
    body.map(|b| MessageRecord::decode(&b)).transpose()
}

/// Reads the message a ref points at.
pub(crate) fn read_ref(
    topic_log: &LogHandle,
    dlq: &LogHandle,
    r: Ref,
) -> Result<Option<MessageRecord>> {
    match r {
        Ref::Topic(offset) => read_record(topic_log, offset),
        Ref::Dlq(offset) => read_record(dlq, offset),
    }
}
