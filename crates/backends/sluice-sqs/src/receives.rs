//! Which receive of a message is the newest one in this process.
//!
//! SQS hands out a new receipt handle with every receive, and what it does with an older one
//! varies: real SQS documents that a stale handle may still delete the message, moto always
//! lets it. The client-side deadline catches most stale verbs, but it is counted from the
//! answer's arrival, a little after SQS started the visibility timeout; a copy received again
//! in that gap would be settled by the old delivery's verb. So every delivery registers its
//! receive here, and a later receive of the same SQS message marks the earlier delivery
//! superseded: its verbs fail with `LeaseLost` whatever its deadline says.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The newest receive of each SQS message held by a delivery of one subscription.
#[derive(Debug, Default)]
pub(crate) struct Receives {
    // A std Mutex: held for one map operation, never across an .await.
    newest: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

impl Receives {
    /// Registers a receive of the SQS message `message_id`, superseding any earlier one.
    pub(crate) fn register(self: &Arc<Self>, message_id: String) -> Receive {
        let superseded = Arc::new(AtomicBool::new(false));
        let earlier = self
            .newest
            .lock()
            .expect("receives")
            .insert(message_id.clone(), Arc::clone(&superseded));
        if let Some(earlier) = earlier {
            earlier.store(true, Ordering::SeqCst);
        }
        Receive {
            receives: Arc::clone(self),
            message_id,
            superseded,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.newest.lock().expect("receives").len()
    }
}

/// One delivery's receive; unregistered when the delivery is dropped.
pub(crate) struct Receive {
    receives: Arc<Receives>,
    message_id: String,
    superseded: Arc<AtomicBool>,
}

impl Receive {
    /// The same message was received again since: this receive's handle is stale.
    pub(crate) fn superseded(&self) -> bool {
        self.superseded.load(Ordering::SeqCst)
    }
}

impl Drop for Receive {
    fn drop(&mut self) {
        let mut newest = self.receives.newest.lock().expect("receives");
        if newest
            .get(&self.message_id)
            .is_some_and(|flag| Arc::ptr_eq(flag, &self.superseded))
        {
            newest.remove(&self.message_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_receive_supersedes_the_earlier_one_only() {
        let receives = Arc::new(Receives::default());
        let first = receives.register("m-1".into());
        let other = receives.register("m-2".into());
        assert!(!first.superseded());
        let second = receives.register("m-1".into());
        assert!(first.superseded(), "the earlier receive of m-1 is stale");
        assert!(!second.superseded(), "the newest receive is not");
        assert!(!other.superseded(), "another message is untouched");
    }

    #[test]
    fn dropping_a_stale_receive_keeps_the_newest_registered() {
        let receives = Arc::new(Receives::default());
        let first = receives.register("m-1".into());
        let second = receives.register("m-1".into());
        drop(first);
        assert_eq!(receives.len(), 1, "the newest stays registered");
        let third = receives.register("m-1".into());
        assert!(second.superseded(), "still superseded by a third receive");
        drop(second);
        drop(third);
        assert_eq!(
            receives.len(),
            0,
            "nothing is kept once every delivery is gone"
        );
    }
}
