//! Read-ahead: when a receive of at least 16 messages hands out a full batch (a backlog is
//! waiting), the next batch is leased at once and its journal flush runs while the consumer
//! works through this one, so the consumer that comes back finds it leased and journalled
//! instead of waiting for another flush.
//!
//! A consumer's receive, acks and next receive each wait for a flush (a delivery is
//! journalled before it is handed out, so that a crash counts its attempt); with one batch
//! read ahead, the next batch's flush runs beside the acks' instead of after them.
//!
//! What it may cost, and how that is bounded:
//! - Messages read ahead are held by this subscriber (within its prefetch, like every
//!   lease), so another subscriber cannot take them meanwhile, and the first message of an
//!   ordering key held here holds its key back. Only one batch is read ahead, and only after
//!   a receive of at least 16 came back full: when the backlog is shallow, or the consumer
//!   takes a few at a time, a receive leases exactly what it returns.
//! - The stats count them as ready, not in flight: no handler holds them yet
//!   ([`Buffered`]).
//! - A delivery waiting here and not taken goes back at half its lease (a release: its
//!   attempt is given back), and so does everything buffered when the subscriber closes or is
//!   dropped. A crash is the exception: it charges an attempt to a batch read ahead as to
//!   any batch handed out, since its delivery was journalled.
//!
//! The engine's completion (on its flusher thread) puts a batch read ahead in the buffer;
//! no task has to run for it to land. One timer task per subscriber releases what goes
//! stale; it holds neither the subscriber nor the engine while it waits.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use sluice_core::Error;
use sluice_engine::engine::{Leased, Settle, Verb};
use tokio::sync::Notify;

use crate::backend::Shared;
use crate::bridge::completion;
use crate::delivery::Source;

/// How many deliveries each subscription has read ahead and not handed out, over every
/// subscriber of one engine (the stats move them from in flight to ready).
#[derive(Debug, Default)]
pub(crate) struct Buffered {
    counts: Mutex<HashMap<Arc<str>, u64>>,
}

impl Buffered {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, u64>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, subscription: &Arc<str>, n: usize) {
        if n > 0 {
            *self.lock().entry(Arc::clone(subscription)).or_default() += n as u64;
        }
    }

    fn remove(&self, subscription: &str, n: usize) {
        let mut counts = self.lock();
        if let Some(count) = counts.get_mut(subscription) {
            *count = count.saturating_sub(n as u64);
            if *count == 0 {
                counts.remove(subscription);
            }
        }
    }

    /// Deliveries of `subscription` (its engine name) read ahead and not handed out.
    pub(crate) fn of(&self, subscription: &str) -> u64 {
        self.lock().get(subscription).copied().unwrap_or(0)
    }
}

/// A delivery read ahead, with when it goes stale (the engine's clock).
struct Ahead {
    leased: Leased,
    stale_ms: u64,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Ahead>,
    fetching: bool,
    /// The background receive failed: the next receive reports it.
    failed: Option<Error>,
    closed: bool,
    /// Closed by a drop: nobody waits to release what lands later.
    dropped: bool,
    timer: bool,
}

/// What [`ReadAhead::take`] found.
pub(crate) enum Taken {
    /// Deliveries read ahead, and whether to read the next batch ahead (as many as asked
    /// for were here, and none are left).
    Ready(Vec<Leased>, bool),
    /// The background receive failed.
    Failed(Error),
    /// Nothing yet; a background receive is under way (it ends within a flush: wait for
    /// [`ReadAhead::arrived`]).
    Fetching,
    /// Nothing, and nothing under way.
    Nothing,
}

/// One subscriber's read-ahead.
pub(crate) struct ReadAhead {
    state: Mutex<State>,
    arrived: Notify,
    shared: Weak<Shared>,
    from: Arc<Source>,
}

impl ReadAhead {
    pub(crate) fn new(shared: &Arc<Shared>, from: &Arc<Source>) -> Self {
        Self {
            state: Mutex::default(),
            arrived: Notify::new(),
            shared: Arc::downgrade(shared),
            from: Arc::clone(from),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notified when a background receive finishes (register before [`take`](Self::take)).
    pub(crate) fn arrived(&self) -> &Notify {
        &self.arrived
    }

    /// Up to `max` deliveries read ahead; those gone stale are released instead.
    pub(crate) fn take(&self, shared: &Shared, max: usize) -> Taken {
        let now_ms = shared.engine.now_ms();
        let mut state = self.lock();
        let mut stale = Vec::new();
        let mut taken = Vec::new();
        while taken.len() < max {
            let Some(ahead) = state.ready.pop_front() else {
                break;
            };
            if now_ms >= ahead.stale_ms {
                stale.push(ahead.leased);
            } else {
                taken.push(ahead.leased);
            }
        }
        // A full batch with nothing left behind it: the backlog goes on, read on.
        let refill = taken.len() == max && state.ready.is_empty();
        let taken = if !taken.is_empty() {
            Taken::Ready(taken, refill)
        } else if let Some(err) = state.failed.take() {
            Taken::Failed(err)
        } else if state.fetching {
            Taken::Fetching
        } else {
            Taken::Nothing
        };
        let out = match &taken {
            Taken::Ready(leased, _) => leased.len(),
            _ => 0,
        };
        shared
            .buffered
            .remove(&self.from.physical, out + stale.len());
        drop(state);
        drop(release(shared, &self.from, stale));
        taken
    }

    /// Leases up to `max` more for `holder` now; their journal flush completes in the
    /// background and puts them in the buffer. Nothing happens if a background receive is
    /// under way or the subscriber closed.
    pub(crate) fn start(self: &Arc<Self>, shared: &Arc<Shared>, holder: u64, max: usize) {
        {
            let mut state = self.lock();
            if state.fetching || state.closed {
                return;
            }
            state.fetching = true;
        }
        let mut landing = Landing {
            ahead: Arc::downgrade(self),
            shared: Arc::downgrade(shared),
            from: Arc::clone(&self.from),
            runtime: tokio::runtime::Handle::current(),
            landed: false,
        };
        let done = Box::new(move |result: sluice_engine::Result<Vec<Leased>>| {
            landing.land(result);
        });
        shared
            .engine
            .receive(&self.from.physical, holder, max, done);
    }

    /// A background receive finished (on the engine's thread).
    fn landed(
        self: &Arc<Self>,
        result: Result<Vec<Leased>, Error>,
        runtime: &tokio::runtime::Handle,
    ) {
        let Some(shared) = self.shared.upgrade() else {
            self.lock().fetching = false;
            self.arrived.notify_waiters();
            return;
        };
        let mut state = self.lock();
        state.fetching = false;
        match result {
            Ok(leased) if state.dropped => {
                drop(state);
                drop(release(&shared, &self.from, leased));
            }
            Ok(leased) => {
                let now_ms = shared.engine.now_ms();
                shared.buffered.add(&self.from.physical, leased.len());
                state.ready.extend(leased.into_iter().map(|leased| {
                    let half = leased.deadline_ms.saturating_sub(now_ms) / 2;
                    Ahead {
                        stale_ms: now_ms.saturating_add(half),
                        leased,
                    }
                }));
                let start_timer = !state.ready.is_empty() && !state.timer && !state.closed;
                state.timer |= start_timer;
                drop(state);
                if start_timer {
                    runtime.spawn(timer(Arc::downgrade(self)));
                }
            }
            Err(err) => state.failed = Some(err),
        }
        self.arrived.notify_waiters();
    }

    /// The engine dropped a background receive without completing it (it stopped): the
    /// next receive reports it, and nobody waits for it any more.
    fn abandoned(&self) {
        {
            let mut state = self.lock();
            state.fetching = false;
            state.failed = Some(Error::Closed(
                "the engine stopped before completing the operation",
            ));
        }
        self.arrived.notify_waiters();
    }

    /// Releases what has gone stale; when the next delivery goes stale, or `None` when
    /// nothing is buffered (the timer stops).
    fn release_stale(&self) -> Option<u64> {
        let shared = self.shared.upgrade()?;
        let now_ms = shared.engine.now_ms();
        let (stale, next) = {
            let mut state = self.lock();
            if state.closed {
                state.timer = false;
                return None;
            }
            let (stale, keep): (Vec<Ahead>, Vec<Ahead>) =
                state.ready.drain(..).partition(|a| now_ms >= a.stale_ms);
            state.ready = keep.into();
            let next = state.ready.iter().map(|a| a.stale_ms).min();
            if next.is_none() {
                state.timer = false;
            }
            (stale, next)
        };
        shared.buffered.remove(&self.from.physical, stale.len());
        let stale = stale.into_iter().map(|a| a.leased).collect();
        drop(release(&shared, &self.from, stale));
        next.map(|at| at.saturating_sub(now_ms))
    }

    /// No more reading ahead; waits for a background receive under way, then gives back
    /// everything read ahead and waits until that is journalled.
    pub(crate) async fn close(&self, shared: &Shared) {
        // Cancelled half-way, it closes without waiting instead.
        let mut unfinished = CloseGuard(Some(self));
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut state = self.lock();
                state.closed = true;
                if !state.fetching {
                    break;
                }
            }
            // Bounded by one flush: the engine completes every receive.
            arrived.await;
        }
        let ready = std::mem::take(&mut self.lock().ready);
        shared.buffered.remove(&self.from.physical, ready.len());
        release(
            shared,
            &self.from,
            ready.into_iter().map(|a| a.leased).collect(),
        )
        .await;
        unfinished.0 = None;
        self.arrived.notify_waiters();
    }

    /// Closes without waiting (a subscriber dropped): what is buffered goes back now, and
    /// what a background receive under way brings goes back when it lands.
    pub(crate) fn close_now(&self) {
        let ready = {
            let mut state = self.lock();
            state.closed = true;
            state.dropped = true;
            std::mem::take(&mut state.ready)
        };
        if let Some(shared) = self.shared.upgrade() {
            shared.buffered.remove(&self.from.physical, ready.len());
            drop(release(
                &shared,
                &self.from,
                ready.into_iter().map(|a| a.leased).collect(),
            ));
        }
        self.arrived.notify_waiters();
    }
}

/// Releases what goes stale, re-armed for the next one; stops when nothing is buffered.
/// Holds the read-ahead only weakly while it waits.
async fn timer(ahead: Weak<ReadAhead>) {
    // Dropped before it finished (its runtime stopped): the next landing starts another.
    let mut running = TimerGuard(Some(ahead.clone()));
    loop {
        let wait = match ahead.upgrade() {
            Some(ahead) => ahead.release_stale(),
            None => None,
        };
        match wait {
            Some(ms) => tokio::time::sleep(Duration::from_millis(ms.max(1))).await,
            None => {
                running.0 = None;
                return;
            }
        }
    }
}

struct TimerGuard(Option<Weak<ReadAhead>>);

impl Drop for TimerGuard {
    fn drop(&mut self) {
        if let Some(ahead) = self.0.take().and_then(|weak| weak.upgrade()) {
            ahead.lock().timer = false;
        }
    }
}

struct CloseGuard<'a>(Option<&'a ReadAhead>);

impl Drop for CloseGuard<'_> {
    fn drop(&mut self) {
        if let Some(ahead) = self.0.take() {
            ahead.close_now();
        }
    }
}

/// A background receive's completion: lands its deliveries (or gives them back when the
/// subscriber is gone). Dropped unrun (the engine stopped), it ends the wait for it.
struct Landing {
    ahead: Weak<ReadAhead>,
    shared: Weak<Shared>,
    from: Arc<Source>,
    runtime: tokio::runtime::Handle,
    landed: bool,
}

impl Landing {
    fn land(&mut self, result: sluice_engine::Result<Vec<Leased>>) {
        self.landed = true;
        if let Some(ahead) = self.ahead.upgrade() {
            ahead.landed(result.map_err(crate::convert::error), &self.runtime);
        } else if let (Ok(leased), Some(shared)) = (result, self.shared.upgrade()) {
            // The subscriber is gone (and gave back what it had): these go back too.
            drop(release(&shared, &self.from, leased));
        }
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        if !self.landed {
            if let Some(ahead) = self.ahead.upgrade() {
                ahead.abandoned();
            }
        }
    }
}

/// Gives leases back to the subscription, their attempts with them. The future ends once
/// the releases are journalled; dropping it does not cancel them. A release that fails (the
/// engine closing) leaves its lease to run out.
fn release(
    shared: &Shared,
    from: &Source,
    leased: Vec<Leased>,
) -> impl std::future::Future<Output = ()> {
    let mut journalled = Vec::with_capacity(leased.len());
    let verbs: Vec<Settle> = leased
        .into_iter()
        .map(|l| {
            let (done, released) = completion::<()>();
            journalled.push(released);
            Settle {
                r: l.r,
                token: l.token,
                verb: Verb::Release,
                done,
            }
        })
        .collect();
    if !verbs.is_empty() {
        shared.engine.settle(&from.physical, verbs);
    }
    // One journal batch holds them all: waiting for each in turn waits for that one flush.
    async move {
        for released in journalled {
            let _ = released.await;
        }
    }
}
