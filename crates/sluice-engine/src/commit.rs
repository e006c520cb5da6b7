//! Group commit (`docs/engine-format.md`, "Commit protocol"): one flusher thread takes
//! everything queued, appends it with one write per log, syncs each log touched, marks the
//! records committed, runs the `on_durable` hook, then completes every batch.
//!
//! Invariants:
//! - With [`SyncMode::Always`] a batch completes with success only after its records are
//!   synced; with [`SyncMode::Interval`] and [`SyncMode::Never`] after they are written.
//! - Batches are appended in submission order, so each log's records are in the order their
//!   batches were submitted.
//! - A failed write or sync fails every batch of that flush and **poisons** the committer:
//!   every later [`Committer::submit`] fails at once with [`Error::Poisoned`] (after a failed
//!   `fsync` the kernel may have dropped the dirty pages, so what is on disk is unknown until
//!   a restart recovers it). Reads of committed records keep working.
//! - The state lock is never held during I/O; a log's lock is held only for its append and
//!   while marking records committed, never during a sync, so readers wait at most one write.
//! - The hook and completions run on the flusher thread, in order; a panic in one is caught
//!   and logged, never kills the flusher.

mod flusher;
#[cfg(test)]
mod tests;

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::log::SegmentedLog;
use crate::record::peek_offset;
use crate::segment::SegmentKind;

/// When the flusher syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Sync every flush; a batch completes once its records are durable (the default).
    #[default]
    Always,
    /// Sync at most once per interval; a batch completes once written. A process crash loses
    /// nothing confirmed; an OS crash can lose the last interval's confirmed batches.
    Interval(Duration),
    /// Never sync explicitly (the OS writes back when it likes); a batch completes once
    /// written.
    Never,
}

impl std::str::FromStr for SyncMode {
    type Err = String;

    /// `always`, `never` or `interval:MS` (as in `embedded:PATH?sync=…`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(SyncMode::Always),
            "never" => Ok(SyncMode::Never),
            other => other
                .strip_prefix("interval:")
                .and_then(|ms| ms.parse().ok())
                .map(|ms| SyncMode::Interval(Duration::from_millis(ms)))
                .ok_or_else(|| {
                    format!("sync mode `{other}` is not one of always, never, interval:MS")
                }),
        }
    }
}

/// A log shared by the committer (which appends to it) and readers (which lock it briefly to
/// read committed records). Cloning gives another handle on the same log.
#[derive(Clone)]
pub struct LogHandle {
    shared: Arc<LogShared>,
}

struct LogShared {
    log: Mutex<SegmentedLog>,
    kind: SegmentKind,
    max_body_len: usize,
    /// Set (under `log`'s lock) when the log's topic or subscription is deleted: appends
    /// still queued fail with "not found" instead of writing into a removed directory.
    deleted: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shared.log.try_lock() {
            Ok(log) => fmt::Debug::fmt(&*log, f),
            Err(_) => f.write_str("LogHandle(<locked>)"),
        }
    }
}

impl LogHandle {
    /// Shares `log`.
    pub fn new(log: SegmentedLog) -> Self {
        let (kind, max_body_len) = (log.kind(), log.max_body_len());
        Self {
            shared: Arc::new(LogShared {
                log: Mutex::new(log),
                kind,
                max_body_len,
                deleted: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Locks the log (to read it, or for retention). Keep the lock short: the flusher waits
    /// for it to append.
    pub fn lock(&self) -> MutexGuard<'_, SegmentedLog> {
        self.shared.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the log holds.
    pub fn kind(&self) -> SegmentKind {
        self.shared.kind
    }

    /// Marks the log deleted (its directory is about to be removed): waits for an append in
    /// progress, then every later append to it fails its batch with "not found" and nothing
    /// more is written to it. Never poisons the committer.
    pub fn mark_deleted(&self) {
        let _log = self.lock();
        self.shared
            .deleted
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether [`LogHandle::mark_deleted`] was called.
    pub fn is_deleted(&self) -> bool {
        self.shared
            .deleted
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The error of an append to a deleted log: its topic or subscription is not found.
    pub(crate) fn deleted_error(&self) -> Error {
        let log = self.lock();
        let dir = log.dir();
        let name_of = |p: Option<&std::path::Path>| {
            p.and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        match self.shared.kind {
            SegmentKind::TopicLog => Error::TopicNotFound {
                name: name_of(Some(dir)),
            },
            SegmentKind::Journal | SegmentKind::Dlq => Error::SubscriptionNotFound {
                name: name_of(dir.parent()),
            },
        }
    }

    /// Whether both handles are on the same log.
    pub fn same_log(&self, other: &LogHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    fn key(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }

    /// Checks what [`SegmentedLog::append`] would refuse, so a bad body fails its own batch
    /// at submit instead of the whole flush.
    fn check(&self, body: &[u8]) -> Result<()> {
        if body.is_empty() || body.len() > self.shared.max_body_len {
            return Err(Error::RecordSize {
                len: body.len(),
                max: self.shared.max_body_len,
            });
        }
        if self.shared.kind.has_offsets() && peek_offset(body).is_none() {
            return Err(Error::Invalid {
                what: "record",
                reason: "a topic log or DLQ holds only message records (type 1)".into(),
            });
        }
        Ok(())
    }
}

/// Called with the outcome of a batch: one range of sequences per append, in the order the
/// appends were added.
pub type Completion = Box<dyn FnOnce(Result<Vec<Range<u64>>>) + Send>;

/// What one flush made durable in one log, for the `on_durable` hook.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The log.
    pub log: LogHandle,
    /// The records of this flush, now committed (readable).
    pub range: Range<u64>,
}

/// Appends to commit together, with a completion.
#[derive(Default)]
pub struct Batch {
    appends: Vec<(LogHandle, Vec<Vec<u8>>)>,
    completion: Option<Completion>,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("appends", &self.appends.len())
            .field("completion", &self.completion.is_some())
            .finish()
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an append of `bodies` to `log` (builder style).
    pub fn append(mut self, log: &LogHandle, bodies: Vec<Vec<u8>>) -> Self {
        self.push(log, bodies);
        self
    }

    /// Adds an append of `bodies` to `log`.
    pub fn push(&mut self, log: &LogHandle, bodies: Vec<Vec<u8>>) {
        self.appends.push((log.clone(), bodies));
    }

    /// Sets the completion, called once with the outcome. It runs on the flusher thread (or
    /// on the submitting thread if the batch fails at submit): it must be quick and must not
    /// wait for another batch.
    pub fn on_complete(
        mut self,
        completion: impl FnOnce(Result<Vec<Range<u64>>>) + Send + 'static,
    ) -> Self {
        self.completion = Some(Box::new(completion));
        self
    }

    /// Completes the batch with `error` without writing it (its committer is gone).
    pub fn fail(self, error: Error) {
        self.complete(Err(error));
    }

    fn complete(self, outcome: Result<Vec<Range<u64>>>) {
        if let Some(completion) = self.completion {
            flusher::guarded("a completion", || completion(outcome));
        }
    }
}

/// Identifies a submitted batch, to [`Committer::wait`] for it. Batches complete in
/// submission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// Counters of a committer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommitStats {
    /// Batches submitted.
    pub submits: u64,
    /// Flushes (each takes every batch queued).
    pub flushes: u64,
    /// Log syncs (one per log touched per flush with `Always`).
    pub syncs: u64,
    /// Records appended.
    pub records: u64,
}

/// The `on_durable` hook: runs after each successful flush, before the completions.
pub type DurableHook = Box<dyn Fn(&[Committed]) + Send>;

struct Shared {
    state: Mutex<State>,
    /// Wakes the flusher: work queued, or closing.
    work: Condvar,
    /// Wakes [`Committer::wait`]ers: batches completed.
    progress: Condvar,
}

#[derive(Default)]
struct State {
    queue: Vec<Batch>,
    /// Ticket of the last batch submitted (tickets start at 1; 0 = already complete).
    last_ticket: u64,
    /// Every batch with a ticket up to this one is complete.
    completed_through: u64,
    poisoned: Option<String>,
    closing: bool,
    stats: CommitStats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The group committer: owns the flusher thread. Dropping it completes everything queued,
/// then stops the thread.
pub struct Committer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Committer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Committer")
            .field("queued", &state.queue.len())
            .field("poisoned", &state.poisoned)
            .field("stats", &state.stats)
            .finish()
    }
}

impl Committer {
    /// Starts the flusher thread. `on_durable` runs after every successful flush (the
    /// integrator's: apply state, wake consumers), before that flush's completions.
    pub fn start(mode: SyncMode, on_durable: impl Fn(&[Committed]) + Send + 'static) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            progress: Condvar::new(),
        });
        let flusher = flusher::Flusher::new(shared.clone(), mode, Box::new(on_durable));
        let thread = std::thread::Builder::new()
            .name("sluice-flusher".into())
            .spawn(move || flusher.run())
            .expect("spawning the flusher thread");
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// Queues `batch`. Its completion runs once the batch is committed (see [`SyncMode`]) or
    /// has failed. Fails at once, on this thread, if the committer is poisoned or closing,
    /// or if a body would be refused by its log (empty, too large, not a message record in
    /// a topic log or DLQ): such a batch is not written at all.
    pub fn submit(&self, batch: Batch) -> Ticket {
        let refused = batch
            .appends
            .iter()
            .flat_map(|(log, bodies)| bodies.iter().map(move |b| log.check(b)))
            .find_map(Result::err);
        let mut state = self.shared.lock();
        state.stats.submits += 1;
        let refused = refused
            .or_else(|| {
                let cause = state.poisoned.clone()?;
                Some(Error::Poisoned { cause })
            })
            .or_else(|| state.closing.then_some(Error::Closed));
        if let Some(error) = refused {
            drop(state);
            batch.complete(Err(error));
            return Ticket(0);
        }
        state.last_ticket += 1;
        let ticket = Ticket(state.last_ticket);
        state.queue.push(batch);
        drop(state);
        self.shared.work.notify_one();
        ticket
    }

    /// Blocks until the batch of `ticket` (and every one before it) is complete. Must not be
    /// called from a completion or the hook (they run on the flusher thread).
    pub fn wait(&self, ticket: Ticket) {
        let mut state = self.shared.lock();
        while state.completed_through < ticket.0 {
            state = self
                .shared
                .progress
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Submits one batch of `appends` and waits for its outcome.
    pub fn commit(&self, appends: Vec<(LogHandle, Vec<Vec<u8>>)>) -> Result<Vec<Range<u64>>> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let batch = Batch {
            appends,
            completion: None,
        }
        .on_complete(move |outcome| {
            let _ = sender.send(outcome);
        });
        self.submit(batch);
        receiver.recv().unwrap_or(Err(Error::Closed))
    }

    /// The cause, if a write or sync failed and the committer refuses further writes.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.lock().poisoned.clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> CommitStats {
        self.shared.lock().stats
    }

    /// Completes everything queued (with `Interval`, syncs what was written) and stops the
    /// flusher. Later submits fail with [`Error::Closed`]. Dropping the committer does this.
    ///
    /// Fails with [`Error::Poisoned`] if a write or sync failed, the final sync of
    /// `SyncMode::Interval` included: then confirmed writes may not be durable.
    pub fn close(&mut self) -> Result<()> {
        self.shared.lock().closing = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the flusher thread panicked");
            }
        }
        match self.poisoned() {
            Some(cause) => Err(Error::Poisoned { cause }),
            None => Ok(()),
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// Compile-time check: handles and the committer cross threads.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LogHandle>();
    assert_send_sync::<Committer>();
};
