//! A topic's dedup window: the ids published within the last `window_ms`.
//!
//! Durable by construction: it is rebuilt at open from the tail of the topic log (every
//! message whose `published_at` is within the window), so a confirmed publish is always
//! remembered. Invariants: `seen` and `order` hold the same (id, published_at) pairs, `order`
//! oldest first; an id is remembered from its first stored publish (a duplicate does not
//! extend the window); an id published exactly `window_ms` ago has expired.

use std::collections::{HashMap, VecDeque};

/// The ids within one topic's window.
#[derive(Debug, Default)]
pub struct DedupIndex {
    seen: HashMap<String, u64>,
    order: VecDeque<(u64, String)>,
}

impl DedupIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    fn expire(&mut self, now_ms: u64, window_ms: u64) {
        while let Some((at, _)) = self.order.front() {
            if now_ms.saturating_sub(*at) < window_ms {
                break;
            }
            if let Some((at, id)) = self.order.pop_front() {
                if self.seen.get(&id) == Some(&at) {
                    self.seen.remove(&id);
                }
            }
        }
    }

    /// Whether `id` was published within the window (as of `now_ms`).
    pub fn contains(&mut self, id: &str, now_ms: u64, window_ms: u64) -> bool {
        self.expire(now_ms, window_ms);
        self.seen.contains_key(id)
    }

    /// Remembers `id` as published at `at_ms` (no effect if it is already remembered).
    pub fn insert(&mut self, id: &str, at_ms: u64) {
        if self.seen.contains_key(id) {
            return;
        }
        self.seen.insert(id.to_owned(), at_ms);
        self.order.push_back((at_ms, id.to_owned()));
    }

    /// Forgets `id` if it was remembered at `at_ms` (a publish that failed drops its claim).
    pub fn remove(&mut self, id: &str, at_ms: u64) {
        if self.seen.get(id) == Some(&at_ms) {
            self.seen.remove(id);
            self.order.retain(|(at, i)| !(*at == at_ms && i == id));
        }
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::DedupIndex;

    #[test]
    fn an_id_is_a_duplicate_within_the_window_and_forgotten_after_it() {
        let mut d = DedupIndex::new();
        d.insert("a", 1_000);
        assert!(d.contains("a", 1_500, 1_000));
        assert!(d.contains("a", 1_999, 1_000));
        assert!(
            !d.contains("a", 2_000, 1_000),
            "an id exactly one window old has expired"
        );
        assert!(d.is_empty());
    }

    #[test]
    fn a_failed_publish_drops_its_claim_but_not_an_earlier_one() {
        let mut d = DedupIndex::new();
        d.insert("a", 10);
        d.remove("a", 20);
        assert!(
            d.contains("a", 30, 1_000),
            "a later failed publish does not drop the first"
        );
        d.remove("a", 10);
        assert!(!d.contains("a", 30, 1_000));
    }
}
