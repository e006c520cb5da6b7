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

/// The newest receive of each SQS message held by a delivery of this backend handle (SQS
/// message ids are unique across queues: a fanned-out copy has its own), with its receive
/// count.
#[derive(Debug, Default)]
pub(crate) struct Receives {
    // A std Mutex: held for one map operation, never across an .await.
    newest: Mutex<HashMap<String, (u64, Arc<AtomicBool>)>>,
}

impl Receives {
    /// Registers the `count`th receive of the SQS message `message_id` (its
    /// `ApproximateReceiveCount`): it supersedes an earlier receive, and is born superseded
    /// if a later one was registered first (pollers answer in any order).
    pub(crate) fn register(self: &Arc<Self>, message_id: String, count: u64) -> Receive {
        let superseded = Arc::new(AtomicBool::new(false));
        {
            let mut newest = self.newest.lock().expect("receives");
            match newest.get(&message_id) {
                Some((known, _)) if *known > count => superseded.store(true, Ordering::SeqCst),
                _ => {
                    let entry = (count, Arc::clone(&superseded));
                    if let Some((_, earlier)) = newest.insert(message_id.clone(), entry) {
                        earlier.store(true, Ordering::SeqCst);
                    }
                }
            }
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
            .is_some_and(|(_, flag)| Arc::ptr_eq(flag, &self.superseded))
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
        let first = receives.register("m-1".into(), 1);
        let other = receives.register("m-2".into(), 1);
        assert!(!first.superseded());
        let second = receives.register("m-1".into(), 2);
        assert!(first.superseded(), "the earlier receive of m-1 is stale");
        assert!(!second.superseded(), "the newest receive is not");
        assert!(!other.superseded(), "another message is untouched");
    }

    #[test]
    fn a_receive_registered_after_a_later_one_is_born_stale() {
        let receives = Arc::new(Receives::default());
        let later = receives.register("m-1".into(), 3);
        let earlier = receives.register("m-1".into(), 2);
        assert!(
            earlier.superseded(),
            "the second receive answered last: stale"
        );
        assert!(!later.superseded(), "the third receive stays current");
        drop(earlier);
        assert_eq!(receives.len(), 1, "and stays registered");
    }

    #[test]
    fn dropping_a_stale_receive_keeps_the_newest_registered() {
        let receives = Arc::new(Receives::default());
        let first = receives.register("m-1".into(), 3);
        let second = receives.register("m-1".into(), 4);
        drop(first);
        assert_eq!(receives.len(), 1, "the newest stays registered");
        let third = receives.register("m-1".into(), 5);
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
