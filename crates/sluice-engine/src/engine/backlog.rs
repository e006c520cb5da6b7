//! Backlog bounds: a topic's [`BacklogBound`] caps what waits between its slowest
//! subscription and the end of its log. See `docs/engine-format.md`, "Retention and backlog
//! bounds".
//!
//! Invariants:
//! - The check ([`Engine::admit`]) runs first in `publish`, before anything of the publish is
//!   done (no dedup claim, no append): a refused publish can be tried again as it is.
//! - The engine never blocks a thread on a bound. `Overflow::Reject` and `Overflow::Block`
//!   both fail with [`Error::BacklogFull`]; with `Block` the error carries the timeout
//!   (`block_timeout_ms`), and the caller (an async adapter) waits for room, woken by the
//!   engine's listener after every committed write (acks included), and publishes again.
//!   A publish larger than the bound by itself fails without a timeout: waiting cannot help.
//! - Backlog in messages: records written (committed or not) minus the slowest subscription's
//!   `low_watermark`. In bytes: the frames from that watermark on, from the sparse index
//!   ([`SegmentedLog::bytes_from`](crate::log::SegmentedLog::bytes_from)), exact up to one
//!   index interval too many. Both are a few words read under the log lock: no I/O.
//! - Publishes admitted at the same moment do not count against each other (the records of a
//!   batch count once the flusher wrote them), so concurrent publishers can overshoot the
//!   bound by one batch each. Duplicates (dropped by the dedup window) count as incoming.
//! - A topic without subscriptions has no backlog (nothing waits to be handled): retention
//!   alone bounds its log.
//! - Engines without any bounded topic skip the check with one atomic load (no lock).

use std::sync::atomic::Ordering;

use super::{Engine, State, Topic};
use crate::catalog::{BacklogBound, Overflow, TopicOptions};
use crate::error::{BacklogUnit, Error, Result};
use crate::record::MessageRecord;
use crate::segment::frame_len;

/// What waits in a topic: from its slowest subscription's low watermark to the end of its log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backlog {
    /// Messages.
    pub messages: u64,
    /// Bytes of frames (up to one index interval too many; see [`Engine::backlog`]).
    pub bytes: u64,
    /// The subscription furthest behind; `None` without subscriptions (no backlog then).
    pub slowest: Option<String>,
}

impl Engine {
    /// A topic's backlog: messages and bytes written after its slowest subscription's low
    /// watermark (bytes counted from the sparse index, so up to one index interval too many).
    pub fn backlog(&self, topic: &str) -> Result<Backlog> {
        let state = self.lock();
        let t = state
            .topics
            .get(topic)
            .ok_or_else(|| Error::topic_not_found(topic))?;
        let Some((slowest, low)) = slowest(&state, t) else {
            return Ok(Backlog::default());
        };
        let log = t.log.lock();
        Ok(Backlog {
            messages: log.written_end().saturating_sub(low),
            bytes: log.bytes_from(low),
            slowest: Some(slowest.to_owned()),
        })
    }

    /// Notes a topic's options for the check's fast path (at open and topic creation).
    pub(crate) fn note_backlog_bound(&self, options: &TopicOptions) {
        if options.backlog.is_some() {
            self.inner.any_backlog_bound.store(true, Ordering::Release);
        }
    }

    /// Refuses `records` with [`Error::BacklogFull`] if accepting them would take `topic`'s
    /// backlog past its bound. An unknown topic passes (the publish reports it).
    pub(crate) fn admit(&self, topic: &str, records: &[MessageRecord]) -> Result<()> {
        if records.is_empty() || !self.inner.any_backlog_bound.load(Ordering::Acquire) {
            return Ok(());
        }
        let state = self.lock();
        let Some(t) = state.topics.get(topic) else {
            return Ok(());
        };
        let Some(bound) = t.options.backlog else {
            return Ok(());
        };
        let Some((slowest, low)) = slowest(&state, t) else {
            return Ok(());
        };
        let log = t.log.lock();
        let full = |unit, backlog: u64, incoming: u64, max: u64| {
            if backlog.saturating_add(incoming) <= max {
                return Ok(());
            }
            Err(Error::BacklogFull {
                topic: topic.to_owned(),
                backlog,
                bound: max,
                unit,
                slowest: slowest.to_owned(),
                block_timeout_ms: block_timeout(&bound, incoming <= max),
            })
        };
        if let Some(max) = bound.max_messages {
            let backlog = log.written_end().saturating_sub(low);
            full(BacklogUnit::Messages, backlog, records.len() as u64, max)?;
        }
        if let Some(max) = bound.max_bytes {
            let incoming = records.iter().map(|r| frame_len(r.encoded_len())).sum();
            full(BacklogUnit::Bytes, log.bytes_from(low), incoming, max)?;
        }
        Ok(())
    }
}

/// The subscription of `topic` with the lowest low watermark (the first by name on a tie),
/// and that watermark; `None` without subscriptions.
fn slowest<'a>(state: &'a State, topic: &'a Topic) -> Option<(&'a str, u64)> {
    topic
        .subscriptions
        .iter()
        .map(|name| {
            let low = state.subs.get(name).map_or(0, |s| s.state.low_watermark());
            (name.as_str(), low)
        })
        .min_by_key(|&(_, low)| low)
}

/// How long a refused publisher may wait for room: the `Block` timeout, unless waiting
/// cannot help (the publish alone is larger than the bound).
fn block_timeout(bound: &BacklogBound, fits_alone: bool) -> Option<u64> {
    match bound.overflow {
        Overflow::Block { timeout_ms } if fits_alone => Some(timeout_ms),
        Overflow::Block { .. } | Overflow::Reject => None,
    }
}
