//! The flusher thread's loop: take the queue, write, sync, commit, hook, complete.
//!
//! Invariant: the state lock is held only to take the queue and to record outcomes, never
//! during I/O or while running the hook or completions.

use std::collections::HashMap;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::{Batch, Committed, DurableHook, LogHandle, Shared, State, SyncMode};
use crate::error::{Error, Result};
use crate::log::SyncSet;

/// Runs `f`, logging instead of unwinding if it panics (a panicking callback must not stop
/// the flusher, or every later batch would wait forever).
pub(super) fn guarded(what: &str, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::error!("{what} panicked on the flusher thread; carrying on");
    }
}

pub(super) struct Flusher {
    shared: Arc<Shared>,
    mode: SyncMode,
    on_durable: DurableHook,
    /// With `Interval`: files written but not synced yet.
    pending: Vec<SyncSet>,
    last_sync: Instant,
}

/// Where an append of a batch went: its log's group, and its bodies' place in the group.
struct Placement {
    group: usize,
    start: u64,
    count: u64,
}

impl Flusher {
    pub(super) fn new(shared: Arc<Shared>, mode: SyncMode, on_durable: DurableHook) -> Self {
        Self {
            shared,
            mode,
            on_durable,
            pending: Vec::new(),
            last_sync: Instant::now(),
        }
    }

    pub(super) fn run(mut self) {
        loop {
            let mut state = self.shared.lock();
            let batches = loop {
                if !state.queue.is_empty() {
                    break std::mem::take(&mut state.queue);
                }
                if state.closing {
                    drop(state);
                    self.sync_pending();
                    return;
                }
                state = match self.interval_sync_due() {
                    Some(wait) if wait.is_zero() => {
                        drop(state);
                        self.sync_pending();
                        self.shared.lock()
                    }
                    Some(wait) => self.wait(state, Some(wait)),
                    None => self.wait(state, None),
                };
            };
            drop(state);
            let count = batches.len() as u64;
            if catch_unwind(AssertUnwindSafe(|| self.flush(batches))).is_err() {
                // A bug, not an I/O error: what was written is unknown, so stop writing; the
                // batches' completions were dropped (their waiters see the channel close).
                let error = Error::Poisoned {
                    cause: "the flusher panicked".into(),
                };
                poison(&mut self.shared.lock(), &error);
                self.finish(count);
            }
            if self.interval_sync_due().is_some_and(|wait| wait.is_zero()) {
                self.sync_pending();
            }
        }
    }

    fn wait<'a>(
        &self,
        state: MutexGuard<'a, State>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, State> {
        let work = &self.shared.work;
        match timeout {
            Some(timeout) => work
                .wait_timeout(state, timeout)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0),
            None => work.wait(state).unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// With `Interval` and something unsynced: how long until the next sync is due.
    fn interval_sync_due(&self) -> Option<Duration> {
        match self.mode {
            SyncMode::Interval(every) if !self.pending.is_empty() => {
                Some((self.last_sync + every).saturating_duration_since(Instant::now()))
            }
            _ => None,
        }
    }

    /// Syncs what `Interval` left unsynced; a failure poisons (the batches were already
    /// confirmed, as that mode promises).
    fn sync_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let result = sync_all(&pending);
        self.last_sync = Instant::now();
        let mut state = self.shared.lock();
        state.stats.syncs += pending.len() as u64;
        if let Err(e) = result {
            poison(&mut state, &e);
        }
    }

    fn flush(&mut self, batches: Vec<Batch>) {
        let poisoned = self.shared.lock().poisoned.clone();
        if let Some(cause) = poisoned {
            return self.fail(batches, &cause);
        }
        // Group the appends by log, in submission order.
        let mut groups: Vec<(LogHandle, Vec<&[u8]>)> = Vec::new();
        let mut by_log: HashMap<usize, usize> = HashMap::new();
        let mut placements: Vec<Vec<Placement>> = Vec::with_capacity(batches.len());
        for batch in &batches {
            let mut places = Vec::with_capacity(batch.appends.len());
            for (log, bodies) in &batch.appends {
                let group = *by_log.entry(log.key()).or_insert_with(|| {
                    groups.push((log.clone(), Vec::new()));
                    groups.len() - 1
                });
                let list = &mut groups[group].1;
                places.push(Placement {
                    group,
                    start: list.len() as u64,
                    count: bodies.len() as u64,
                });
                list.extend(bodies.iter().map(Vec::as_slice));
            }
            placements.push(places);
        }
        let ranges = match self.write_and_sync(&groups) {
            Ok(ranges) => ranges,
            Err(e) => {
                let cause = e.to_string();
                poison(&mut self.shared.lock(), &e);
                return self.fail(batches, &cause);
            }
        };
        let committed: Vec<Committed> = groups
            .iter()
            .zip(&ranges)
            .filter_map(|((log, _), range)| {
                let range = range.clone()?;
                log.lock().mark_committed(range.end);
                Some(Committed {
                    log: log.clone(),
                    range,
                })
            })
            .collect();
        let records = ranges
            .iter()
            .flatten()
            .map(|r| r.end - r.start)
            .sum::<u64>();
        self.shared.lock().stats.records += records;
        guarded("the on_durable hook", || (self.on_durable)(&committed));
        let deleted: Vec<Option<LogHandle>> = groups
            .iter()
            .zip(&ranges)
            .map(|((log, _), range)| range.is_none().then(|| log.clone()))
            .collect();
        drop(groups);
        let count = batches.len() as u64;
        for (batch, places) in batches.into_iter().zip(placements) {
            // An append to a log deleted meanwhile fails its batch, not the engine.
            let outcome = places
                .iter()
                .map(|p| match &ranges[p.group] {
                    Some(range) => {
                        let start = range.start + p.start;
                        Ok(start..start + p.count)
                    }
                    None => Err(deleted[p.group]
                        .as_ref()
                        .map_or(Error::Closed, LogHandle::deleted_error)),
                })
                .collect();
            batch.complete(outcome);
        }
        self.finish(count);
    }

    /// One append per log (one write per segment), then the syncs the mode asks for.
    /// `None` for a log deleted since its appends were queued: nothing is written to it.
    fn write_and_sync(
        &mut self,
        groups: &[(LogHandle, Vec<&[u8]>)],
    ) -> Result<Vec<Option<Range<u64>>>> {
        let mut ranges = Vec::with_capacity(groups.len());
        let mut written = Vec::with_capacity(groups.len());
        for (handle, bodies) in groups {
            let mut log = handle.lock();
            if handle.is_deleted() {
                ranges.push(None);
                continue;
            }
            ranges.push(Some(log.append(bodies)?));
            let unsynced = log.take_unsynced();
            if !unsynced.is_empty() {
                written.push(unsynced);
            }
        }
        match self.mode {
            SyncMode::Always => {
                // Outside every lock: readers of these logs are not held up by the syncs.
                let result = sync_all(&written);
                self.shared.lock().stats.syncs += written.len() as u64;
                result?;
            }
            SyncMode::Interval(_) => self.pending.extend(written),
            SyncMode::Never => {}
        }
        Ok(ranges)
    }

    fn fail(&self, batches: Vec<Batch>, cause: &str) {
        let count = batches.len() as u64;
        for batch in batches {
            batch.complete(Err(Error::Poisoned {
                cause: cause.to_string(),
            }));
        }
        self.finish(count);
    }

    /// Records `count` more batches complete and wakes the waiters.
    fn finish(&self, count: u64) {
        let mut state = self.shared.lock();
        state.completed_through += count;
        state.stats.flushes += 1;
        drop(state);
        self.shared.progress.notify_all();
    }
}

fn sync_all(sets: &[SyncSet]) -> Result<()> {
    crate::log::sync_together(sets)
}

fn poison(state: &mut State, error: &Error) {
    if state.poisoned.is_none() {
        tracing::error!(%error, "a write failed; the engine refuses further writes");
        state.poisoned = Some(error.to_string());
    }
}
