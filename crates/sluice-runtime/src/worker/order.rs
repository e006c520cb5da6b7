//! Ordering keys across batches running at once: a batch holding a key starts its handler
//! only after every earlier batch holding that key has settled, so a key's messages are
//! never handled by two batches at once, nor out of the order they were pulled in.
//!
//! On a backend that keeps one message of a key in flight (ordering level `strict`) a key is
//! never in two batches; on the others (`until_retry`, `none`: see docs/capabilities.md) this
//! is what keeps a key's messages that one worker pulled in order when its batches overlap.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// The last batch to take each key.
#[derive(Default)]
pub(crate) struct KeyOrder {
    // std Mutex: never held across an .await.
    last: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next: AtomicU64,
}

/// A batch's place behind the earlier batches sharing its keys; gives the keys up when
/// dropped.
pub(crate) struct Turn {
    order: Arc<KeyOrder>,
    id: u64,
    keys: Vec<String>,
    behind: Vec<CancellationToken>,
    done: CancellationToken,
}

impl KeyOrder {
    /// Takes a place behind every earlier batch holding one of `keys`. Called in the order
    /// batches are pulled.
    pub(crate) fn enter<'a>(self: &Arc<Self>, keys: impl IntoIterator<Item = &'a str>) -> Turn {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let done = CancellationToken::new();
        let keys: Vec<String> = keys
            .into_iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut behind = Vec::new();
        let mut last = self.last.lock().expect("key order");
        for key in &keys {
            if let Some((_, earlier)) = last.insert(key.clone(), (id, done.clone())) {
                if !earlier.is_cancelled() {
                    behind.push(earlier);
                }
            }
        }
        Turn {
            order: self.clone(),
            id,
            keys,
            behind,
            done,
        }
    }
}

impl Turn {
    /// Waits until every earlier batch sharing a key has settled.
    pub(crate) async fn ready(&self) {
        for earlier in &self.behind {
            earlier.cancelled().await;
        }
    }

    /// Whether it waits for an earlier batch.
    #[cfg(test)]
    fn waits(&self) -> bool {
        self.behind.iter().any(|t| !t.is_cancelled())
    }
}

impl Drop for Turn {
    /// Gives the keys up — but never before the earlier batches sharing them settled: a batch
    /// that ended without its turn (every message settled before the handler, a panic) must
    /// not let a later batch overtake an earlier one still running.
    fn drop(&mut self) {
        let behind = std::mem::take(&mut self.behind);
        let release = Release {
            order: self.order.clone(),
            id: self.id,
            keys: std::mem::take(&mut self.keys),
            done: self.done.clone(),
        };
        let waiting: Vec<CancellationToken> =
            behind.into_iter().filter(|t| !t.is_cancelled()).collect();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !waiting.is_empty() => {
                runtime.spawn(async move {
                    for earlier in &waiting {
                        earlier.cancelled().await;
                    }
                    release.run();
                });
            }
            _ => release.run(),
        }
    }
}

/// What a batch gives up when it is done.
struct Release {
    order: Arc<KeyOrder>,
    id: u64,
    keys: Vec<String>,
    done: CancellationToken,
}

impl Release {
    fn run(self) {
        self.done.cancel();
        let mut last = self.order.last.lock().expect("key order");
        for key in &self.keys {
            if last.get(key).is_some_and(|(id, _)| *id == self.id) {
                last.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_waits_only_for_earlier_batches_sharing_a_key() {
        let order = Arc::new(KeyOrder::default());
        let first = order.enter(["a", "b"]);
        let second = order.enter(["b", "c"]);
        let third = order.enter(["d"]);
        assert!(!first.waits());
        assert!(second.waits(), "shares b with the first");
        assert!(!third.waits());
        drop(first);
        assert!(!second.waits(), "the first settled");
        let fourth = order.enter(["c"]);
        assert!(fourth.waits(), "behind the second, which holds c");
        drop(second);
        drop(fourth);
        drop(third);
        assert!(order.last.lock().unwrap().is_empty(), "keys given up");
    }

    #[tokio::test]
    async fn a_batch_dropped_before_its_turn_holds_its_successors_until_its_predecessor_settles() {
        let order = Arc::new(KeyOrder::default());
        let first = order.enter(["a"]);
        let second = order.enter(["a"]);
        // The second batch ended without running (every message settled before the
        // handler): a third must still wait for the first.
        drop(second);
        let third = order.enter(["a"]);
        assert!(
            third.waits(),
            "behind the second, which waits for the first"
        );
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), third.ready())
            .await
            .expect("free once the first settled");
    }

    #[test]
    fn a_key_twice_in_one_batch_does_not_make_it_wait_for_itself() {
        let order = Arc::new(KeyOrder::default());
        let turn = order.enter(["a", "a"]);
        assert!(!turn.waits());
    }
}
