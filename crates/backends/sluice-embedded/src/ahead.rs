//! Read-ahead: when a receive of at least 16 messages hands out a full batch (a backlog is
//! waiting), the next batch is leased in the background while the consumer works through this one, so the consumer
//! that comes back finds it leased and journalled instead of waiting for another flush.
//!
//! A consumer's receive, acks and next receive each wait for a flush (a delivery is
//! journalled before it is handed out, so that a crash counts its attempt); with one batch
//! read ahead, the next batch's flush runs beside the acks' instead of after them.
//!
//! What it may cost, and how that is bounded:
//! - Messages read ahead are held by this subscriber (within its prefetch, like every
//!   lease), so another subscriber cannot take them meanwhile. Only one batch is read ahead,
//!   and only after a receive of at least 16 came back full: when the backlog is shallow, or
//!   the consumer takes a few at a time, a receive leases exactly what it returns.
//! - A delivery waiting here does not spend an attempt: at half its lease it is released
//!   (its attempt given back, as a release does), and so is everything buffered when the
//!   subscriber closes or is dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sluice_core::Error;
use sluice_engine::engine::{Leased, Settle, Verb};
use tokio::sync::Notify;

use crate::backend::Shared;
use crate::bridge::completion;
use crate::delivery::Source;

/// A delivery read ahead, with when it was leased (the engine's clock).
struct Ahead {
    leased: Leased,
    leased_ms: u64,
}

impl Ahead {
    /// Half its lease is gone: it is released rather than handed out this late.
    fn stale(&self, now_ms: u64) -> bool {
        let half = self.leased.deadline_ms.saturating_sub(self.leased_ms) / 2;
        now_ms >= self.leased_ms.saturating_add(half)
    }
}

#[derive(Default)]
struct State {
    ready: VecDeque<Ahead>,
    fetching: bool,
    /// The background receive failed: the next receive reports it.
    failed: Option<Error>,
    closed: bool,
}

/// What [`ReadAhead::take`] found.
pub(crate) enum Taken {
    /// Deliveries read ahead, and whether to read the next batch ahead (as many as asked
    /// for were here, and none are left).
    Ready(Vec<Leased>, bool),
    /// The background receive failed.
    Failed(Error),
    /// Nothing yet; a background receive is under way (wait for [`ReadAhead::arrived`]).
    Fetching,
    /// Nothing, and nothing under way.
    Nothing,
}

/// One subscriber's read-ahead.
#[derive(Default)]
pub(crate) struct ReadAhead {
    state: Mutex<State>,
    arrived: Notify,
}

impl ReadAhead {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notified when a background receive finishes (register before [`take`](Self::take)).
    pub(crate) fn arrived(&self) -> &Notify {
        &self.arrived
    }

    /// Up to `max` deliveries read ahead; those past half their lease are released instead.
    pub(crate) fn take(&self, shared: &Shared, from: &Source, max: usize) -> Taken {
        let now_ms = shared.engine.now_ms();
        let mut state = self.lock();
        let mut stale = Vec::new();
        let mut taken = Vec::new();
        while taken.len() < max {
            let Some(ahead) = state.ready.pop_front() else {
                break;
            };
            if ahead.stale(now_ms) {
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
        drop(state);
        release(shared, from, stale);
        taken
    }

    /// Leases up to `max` more for `holder` in the background, unless a background receive
    /// is under way or the subscriber closed.
    pub(crate) fn start(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        from: &Arc<Source>,
        holder: u64,
        max: usize,
    ) {
        {
            let mut state = self.lock();
            if state.fetching || state.closed {
                return;
            }
            state.fetching = true;
        }
        let (done, leased) = completion();
        shared.engine.receive(&from.physical, holder, max, done);
        let (this, shared, from) = (Arc::clone(self), Arc::clone(shared), Arc::clone(from));
        tokio::spawn(async move {
            let result = leased.await;
            let leased_ms = shared.engine.now_ms();
            let half_lease = {
                let mut state = this.lock();
                state.fetching = false;
                match result {
                    Ok(leased) if state.closed => {
                        drop(state);
                        release(&shared, &from, leased);
                        None
                    }
                    Ok(leased) => {
                        let half = leased
                            .iter()
                            .map(|l| l.deadline_ms.saturating_sub(leased_ms) / 2)
                            .min();
                        state
                            .ready
                            .extend(leased.into_iter().map(|leased| Ahead { leased, leased_ms }));
                        half
                    }
                    Err(err) => {
                        state.failed = Some(err);
                        None
                    }
                }
            };
            this.arrived.notify_waiters();
            // Whatever of this batch is still here at half its lease goes back.
            if let Some(half) = half_lease {
                tokio::time::sleep(Duration::from_millis(half)).await;
                this.release_stale(&shared, &from);
            }
        });
    }

    fn release_stale(&self, shared: &Shared, from: &Source) {
        let now_ms = shared.engine.now_ms();
        let stale = {
            let mut state = self.lock();
            let (stale, keep): (Vec<Ahead>, Vec<Ahead>) =
                state.ready.drain(..).partition(|a| a.stale(now_ms));
            state.ready = keep.into();
            stale
        };
        release(shared, from, stale.into_iter().map(|a| a.leased).collect());
    }

    /// No more reading ahead; everything read ahead goes back (a background receive still
    /// under way gives its deliveries back when it finishes).
    pub(crate) fn close(&self, shared: &Shared, from: &Source) {
        let ready = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.ready)
        };
        release(shared, from, ready.into_iter().map(|a| a.leased).collect());
        self.arrived.notify_waiters();
    }
}

/// Gives leases back to the subscription, their attempts with them. Nobody waits for the
/// outcome: a release that fails (the engine closing) leaves the lease to run out.
fn release(shared: &Shared, from: &Source, leased: Vec<Leased>) {
    if leased.is_empty() {
        return;
    }
    let verbs = leased
        .into_iter()
        .map(|l| Settle {
            r: l.r,
            token: l.token,
            verb: Verb::Release,
            done: Box::new(|_| {}),
        })
        .collect();
    shared.engine.settle(&from.physical, verbs);
}
