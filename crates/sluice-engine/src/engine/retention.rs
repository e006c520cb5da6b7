//! Retention: deleting the whole sealed segments of topic logs that every subscription has
//! handled and that the topic's retention no longer keeps, and the sealed segments of
//! dead-letter logs that no longer hold a dead-lettered message. See
//! `docs/engine-format.md`, "Retention and backlog bounds".
//!
//! Invariants:
//! - Unhandled messages are never deleted: a topic segment goes only if every record in it is
//!   below every subscription's `low_watermark` **as made durable**. The watermarks are read
//!   under the state lock, then a barrier waits until every journal record submitted before
//!   is committed, and only then are files deleted; so a crash can never bring back a
//!   subscription state that still needs a deleted message. (With `SyncMode::Interval` or
//!   `Never`, committed means written: the window those modes accept for every confirmed
//!   write.)
//! - Only a prefix of the sealed segments goes, oldest first (the log stays contiguous); the
//!   active segment always stays. A handled segment goes when its newest message was
//!   published at least `retention_age_ms` ago, or while the log uses more than
//!   `retention_bytes` (headers and frames, see [`SegmentedLog::total_bytes`]). A topic with
//!   neither set keeps everything; a topic without subscriptions is governed by retention
//!   alone.
//! - A dead-letter log loses the sealed segments wholly below
//!   [`SubscriptionState::dlq_retain_from`](crate::subscription::SubscriptionState::dlq_retain_from):
//!   messages that left the DLQ (redriven and settled, or purged), whatever the topic's
//!   retention.
//! - A poisoned or closed engine deletes nothing.
//! - A subscription created with `Earliest` while a pass runs may start at a segment that the
//!   pass then deletes (it was handled by every subscription and past retention): those
//!   offsets read as deleted, which dispatch treats as not selected.
//!
//! Who calls it: the maintenance thread (`maintenance.rs`) every
//! [`EngineOptions::maintenance_interval`](super::EngineOptions::maintenance_interval), and
//! anyone through [`Engine::enforce_retention`].

use std::collections::BTreeMap;

use super::Engine;
use crate::catalog::TopicOptions;
use crate::commit::LogHandle;
use crate::error::{Error, Result};
use crate::log::{Removed, SegmentInfo, SegmentedLog};
use crate::record::decode_meta;

/// What one pass of [`Engine::enforce_retention`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionReport {
    /// Per topic that lost segments: what its log lost.
    pub topics: BTreeMap<String, Removed>,
    /// Per subscription whose dead-letter log lost segments: what it lost.
    pub dead_letter_logs: BTreeMap<String, Removed>,
}

impl RetentionReport {
    /// Whether nothing was removed.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty() && self.dead_letter_logs.is_empty()
    }
}

/// A topic's log as seen under the state lock.
struct TopicPlan {
    name: String,
    options: TopicOptions,
    log: LogHandle,
    /// The lowest `low_watermark` of its subscriptions; `None` without subscriptions.
    handled_before: Option<u64>,
}

impl Engine {
    /// Runs retention once over every topic and dead-letter log (see the module
    /// documentation of `engine::retention` for what goes). The maintenance thread calls it
    /// every [`EngineOptions::maintenance_interval`](super::EngineOptions::maintenance_interval).
    ///
    /// A failure on one log does not stop the others; the first one is returned (after the
    /// others were tried, and what they removed was logged). Fails with [`Error::Poisoned`]
    /// or [`Error::Closed`] without deleting anything.
    pub fn enforce_retention(&self) -> Result<RetentionReport> {
        self.check_open()?;
        if let Some(cause) = self.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        let now = self.now_ms();
        let (topics, dead_letter_logs) = {
            let state = self.lock();
            let topics: Vec<TopicPlan> = state
                .topics
                .iter()
                .filter(|(_, t)| {
                    t.options.retention_age_ms.is_some() || t.options.retention_bytes.is_some()
                })
                .map(|(name, t)| TopicPlan {
                    name: name.clone(),
                    options: t.options.clone(),
                    log: t.log.clone(),
                    handled_before: t
                        .subscriptions
                        .iter()
                        // A subscription the topic lists but the engine lacks holds all back.
                        .map(|s| state.subs.get(s).map_or(0, |s| s.state.low_watermark()))
                        .min(),
                })
                .collect();
            let dead_letter_logs: Vec<(String, LogHandle, u64)> = state
                .subs
                .iter()
                // Only a log with a sealed segment has anything to remove.
                .filter(|(_, s)| s.dlq.lock().segments().len() > 1)
                .map(|(name, s)| (name.clone(), s.dlq.clone(), s.state.dlq_retain_from()))
                .collect();
            (topics, dead_letter_logs)
        };
        if topics.is_empty() && dead_letter_logs.is_empty() {
            // Nothing that could be removed: no barrier (an idle engine stays idle).
            return Ok(RetentionReport::default());
        }
        // The watermarks just read may rest on journal records not committed yet: wait for
        // them (they were submitted under the state lock, before we read), so nothing is
        // deleted that a crash could make unhandled again.
        self.barrier()?;

        let mut report = RetentionReport::default();
        let mut first_error = None;
        for plan in topics {
            let outcome = {
                let mut log = plan.log.lock();
                cut(&log, &plan.options, plan.handled_before, now)
                    .and_then(|upto| log.remove_segments_before(upto))
            };
            match outcome {
                Ok(removed) if removed.segments > 0 => {
                    tracing::info!(
                        topic = %plan.name,
                        segments = removed.segments,
                        messages = removed.records,
                        bytes = removed.bytes,
                        "retention removed handled messages"
                    );
                    report.topics.insert(plan.name, removed);
                }
                Ok(_) => {}
                // Deleted while we worked: its files went with it.
                Err(_) if !self.lock().topics.contains_key(&plan.name) => {}
                Err(err) => {
                    tracing::warn!(topic = %plan.name, %err, "retention failed on the topic log");
                    first_error.get_or_insert(err);
                }
            }
        }
        for (name, dlq, retain_from) in dead_letter_logs {
            let outcome = dlq.lock().remove_segments_before(retain_from);
            match outcome {
                Ok(removed) if removed.segments > 0 => {
                    tracing::info!(
                        subscription = %name,
                        segments = removed.segments,
                        messages = removed.records,
                        "retention removed messages that left the dead-letter queue"
                    );
                    report.dead_letter_logs.insert(name, removed);
                }
                Ok(_) => {}
                Err(_) if !self.lock().subs.contains_key(&name) => {}
                Err(err) => {
                    tracing::warn!(subscription = %name, %err, "retention failed on the dead-letter log");
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(report), Err)
    }
}

/// The sequence before which `log`'s sealed segments may go: the end of the longest prefix
/// of sealed segments that are handled (below `handled_before`) and past retention.
fn cut(
    log: &SegmentedLog,
    options: &TopicOptions,
    handled_before: Option<u64>,
    now_ms: u64,
) -> Result<u64> {
    let mut used = log.total_bytes();
    let mut upto = log.first();
    for segment in log.segments() {
        let handled = handled_before.is_none_or(|low| segment.end <= low);
        if !segment.sealed || !handled {
            break;
        }
        let too_big = options.retention_bytes.is_some_and(|max| used > max);
        let too_old = !too_big
            && match options.retention_age_ms {
                Some(age) => newest_published_ms(log, &segment)?
                    .is_none_or(|at| now_ms.saturating_sub(at) >= age),
                None => false,
            };
        if !(too_big || too_old) {
            break;
        }
        used -= segment.bytes;
        upto = segment.end;
    }
    Ok(upto)
}

/// When the newest message of a segment was published (`None`: the segment is empty). One
/// index lookup and a short scan.
fn newest_published_ms(log: &SegmentedLog, segment: &SegmentInfo) -> Result<Option<u64>> {
    if segment.end == segment.base {
        return Ok(None);
    }
    match log.read(segment.end - 1)? {
        Some(body) => Ok(Some(decode_meta(&body)?.published_at_ms)),
        None => Ok(None),
    }
}
