//! The maintenance thread: runs retention ([`Engine::enforce_retention`]) every
//! [`EngineOptions::maintenance_interval`](super::EngineOptions::maintenance_interval).
//!
//! Invariants:
//! - Between passes it holds only a weak reference to the engine, so dropping every handle
//!   without [`Engine::close`] still ends it (at its next wake-up).
//! - A stop is seen at once: the thread waits on a condition variable with the interval as
//!   timeout, never in a bare sleep. [`Maintenance::stop`] (called by `close` before the
//!   checkpoints) waits for a pass in progress to end, so nothing is deleted after `close`
//!   returns.
//! - Dropping a [`Maintenance`] only signals: the last handle on the engine may be dropped on
//!   the maintenance thread itself, which cannot wait for itself.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Engine, Inner};
use crate::error::Error;

/// The stop flag and what wakes the thread when it is set.
#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    fn signal(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Waits up to `timeout`; returns whether the thread should stop.
    fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        while !*stopped {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            stopped = self
                .wake
                .wait_timeout(stopped, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// The running maintenance thread of an engine.
pub(crate) struct Maintenance {
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
}

impl Maintenance {
    /// Starts the thread: a pass every `every`, on the engine `inner` points to while it
    /// lives.
    pub(crate) fn start(inner: Weak<Inner>, every: Duration) -> Self {
        let stop = Arc::new(Stop::default());
        let signal = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-maintenance".into())
            .spawn(move || run(&inner, &signal, every))
            .expect("spawning the maintenance thread");
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the thread and waits for a pass in progress to end (unless called on the
    /// thread itself).
    pub(crate) fn stop(&mut self) {
        self.stop.signal();
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() == std::thread::current().id() {
                return;
            }
            if thread.join().is_err() {
                tracing::error!("the maintenance thread panicked");
            }
        }
    }
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        self.stop.signal();
    }
}

fn run(inner: &Weak<Inner>, stop: &Stop, every: Duration) {
    while !stop.wait(every) {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let engine = Engine { inner };
        match engine.enforce_retention() {
            Ok(_) => {}
            Err(Error::Closed) => return,
            Err(err) => tracing::warn!(%err, "retention pass failed; trying again at the next one"),
        }
    }
}
