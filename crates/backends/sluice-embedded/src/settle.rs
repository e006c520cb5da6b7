//! Verbs issued at about the same time are settled together: each verb is queued and its
//! task yields once, so the verbs its task and the others issue meanwhile join the queue;
//! the first to come back hands them all to the engine in one call per subscription (one
//! state-lock round trip and one journal append for all of them, instead of one each). Each
//! verb still gets its own outcome, once its journal record is durable.
//!
//! Acks, retries and releases go this way; a dead-letter (which appends to the DLQ) and a
//! lease extension (not journalled) go straight to the engine.

use std::sync::{Arc, Mutex};

use sluice_engine::engine::{Engine, Settle};

/// Verbs waiting to be handed to the engine, with the (physical) subscription of each.
#[derive(Default)]
pub(crate) struct Settler {
    queue: Mutex<Vec<(Arc<str>, Settle)>>,
}

impl std::fmt::Debug for Settler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settler").finish_non_exhaustive()
    }
}

impl Settler {
    /// Queues `settle` for `subscription`, yields once, then hands whatever is queued to the
    /// engine (usually its own verb is gone by then, handed over with another's, and there
    /// is nothing to do). A verb never waits for another task's future to be polled again;
    /// a future dropped after its first poll hands the queue over as it goes.
    pub(crate) async fn submit(&self, engine: &Engine, subscription: &Arc<str>, settle: Settle) {
        self.lock().push((Arc::clone(subscription), settle));
        let flush = Flush {
            settler: self,
            engine,
        };
        tokio::task::yield_now().await;
        drop(flush);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Arc<str>, Settle)>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands everything queued to the engine, one call per subscription, in queue order.
    fn flush(&self, engine: &Engine) {
        let queued = std::mem::take(&mut *self.lock());
        if queued.is_empty() {
            return;
        }
        let mut groups: Vec<(Arc<str>, Vec<Settle>)> = Vec::new();
        for (subscription, settle) in queued {
            match groups.iter_mut().find(|(name, _)| *name == subscription) {
                Some((_, verbs)) => verbs.push(settle),
                None => groups.push((subscription, vec![settle])),
            }
        }
        for (subscription, verbs) in groups {
            engine.settle(&subscription, verbs);
        }
    }
}

/// Hands the queue to the engine when dropped: after the yield, or with the future.
struct Flush<'a> {
    settler: &'a Settler,
    engine: &'a Engine,
}

impl Drop for Flush<'_> {
    fn drop(&mut self) {
        self.settler.flush(self.engine);
    }
}
