//! A topic: its configuration, its log and its dedup window.
//!
//! Invariants:
//! - `log` holds the last [`REPLAY_RETENTION`] messages published to the topic (not dropped
//!   as duplicates), in publish order, for subscriptions created later with a start position
//!   `earliest` or `at`; `published_at` is set on each and never decreases along the log, so
//!   `At(time)` is a binary search. Subscriptions keep their own references: trimming the
//!   log never loses a message a subscription still has to deliver.
//! - `subscriptions` names exactly the subscriptions of this topic in the backend's state.
//! - `Dedup::seen` maps each id published within the window to its publish instant, and
//!   `Dedup::order` lists the same pairs oldest first (one pair per id: a duplicate does not
//!   refresh the window, which runs from the publish that was stored).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sluice_core::{Message, MessageId, StartPosition, SubscriptionName, TopicConfig};
use tokio::time::Instant;

/// How many of a topic's most recent messages are kept for replay by subscriptions created
/// later (`earliest`, `at`): bounds the memory of a long-running process.
pub const REPLAY_RETENTION: usize = 100_000;

/// A published message as the backend keeps it, shared by the log and every subscription.
#[derive(Debug)]
pub(crate) struct Stored {
    /// The message, `published_at` set.
    pub(crate) message: Message,
    /// When it becomes deliverable, if `deliver_at` was in the future at publish.
    pub(crate) due: Option<Instant>,
}

/// One topic.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) config: TopicConfig,
    pub(crate) subscriptions: BTreeSet<SubscriptionName>,
    log: VecDeque<Arc<Stored>>,
    dedup: Dedup,
}

impl Topic {
    pub(crate) fn new(config: TopicConfig) -> Self {
        Self {
            config,
            subscriptions: BTreeSet::new(),
            log: VecDeque::new(),
            dedup: Dedup::default(),
        }
    }

    /// Whether `id` was already published within the dedup window; records it if not.
    pub(crate) fn is_duplicate(&mut self, id: &MessageId, now: Instant) -> bool {
        match self.config.dedup_window {
            Some(window) => self.dedup.check_and_record(id, now, window),
            None => false,
        }
    }

    /// Appends a message to the log.
    pub(crate) fn append(&mut self, stored: Arc<Stored>) {
        if self.log.len() == REPLAY_RETENTION {
            self.log.pop_front();
        }
        self.log.push_back(stored);
    }

    /// The messages a new subscription starting at `start` replays, oldest first.
    pub(crate) fn replay(&self, start: StartPosition) -> impl Iterator<Item = &Arc<Stored>> {
        let from = match start {
            StartPosition::Latest => self.log.len(),
            StartPosition::Earliest => 0,
            StartPosition::At(at) => self.log.partition_point(|stored| {
                stored
                    .message
                    .published_at()
                    .unwrap_or(SystemTime::UNIX_EPOCH)
                    < at
            }),
        };
        self.log.range(from..)
    }
}

/// The ids published within a topic's dedup window.
#[derive(Debug, Default)]
struct Dedup {
    seen: HashMap<MessageId, Instant>,
    order: VecDeque<(Instant, MessageId)>,
}

impl Dedup {
    /// Forgets ids older than the window, then answers whether `id` is still remembered;
    /// remembers it from `now` if not. An id published exactly `window` ago has expired.
    fn check_and_record(&mut self, id: &MessageId, now: Instant, window: Duration) -> bool {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < window {
                break;
            }
            if let Some((at, old)) = self.order.pop_front() {
                if self.seen.get(&old) == Some(&at) {
                    self.seen.remove(&old);
                }
            }
        }
        if self.seen.contains_key(id) {
            return true;
        }
        self.seen.insert(id.clone(), now);
        self.order.push_back((now, id.clone()));
        false
    }
}
