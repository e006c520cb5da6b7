//! Opening topics and subscriptions: recovery of their logs, the restore of a subscription's
//! state from its checkpoint and journal, and the checks that the state fits its logs
//! (`docs/durability.md`).
//!
//! Invariants established at open:
//! - A checkpoint's journal position lies within the journal: before its first record is
//!   [`Error::Corrupt`] (records it needs are gone); past its end (an OS crash kept the
//!   checkpoint and lost the journal's tail) the checkpoint already includes everything, so
//!   it is written again at the journal's end before anything is appended.
//! - A journal record about a DLQ offset the DLQ log does not hold is ignored (the message is
//!   delivered again), and the state is checkpointed at once so it is never replayed later
//!   against a DLQ record that took that offset since.
//! - No state points past its log: a topic log that ends before an offset a subscription has
//!   settled or delivered, or a DLQ log that ends before the DLQ end a checkpoint knows, is
//!   filled with placeholders ([`MessageRecord::lost`]) up to there, reported, so new
//!   records never take offsets a subscription already counts as settled.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{checkpoint, EngineOptions, Sub, Topic, TopicWrites};
use crate::catalog::{SubscriptionEntry, TopicOptions};
use crate::commit::LogHandle;
use crate::dedup::DedupIndex;
use crate::dir::DataDir;
use crate::error::{Error, Result};
use crate::log::SegmentedLog;
use crate::record::MessageRecord;
use crate::segment::SegmentKind;
use crate::subscription::{JournalPosition, JournalRecord, SubscriptionState};

/// Placeholders open writes at most to fill a log's missing tail; a state that reaches
/// further than this past its log is refused as corrupt rather than filled.
const MAX_FILL: u64 = 10_000_000;

/// Generations of subscriptions: a subscription created again under the same name gets a
/// new one.
static GENERATION: AtomicU64 = AtomicU64::new(1);

pub(crate) fn open_topic(
    dir: &DataDir,
    options: &EngineOptions,
    name: &str,
    topic_options: TopicOptions,
    now: u64,
) -> Result<Topic> {
    let (log, report) = SegmentedLog::open(
        dir.storage().clone(),
        dir.topic_dir(name)?,
        SegmentKind::TopicLog,
        options.log,
    )?;
    if !report.is_clean() {
        tracing::warn!(topic = name, %report, "recovered the topic log");
    }
    let mut dedup = DedupIndex::new();
    if let Some(window) = topic_options.dedup_window_ms {
        // Only the segments whose newest message is inside the window hold ids to remember.
        let horizon = now.saturating_sub(window);
        let mut from = log.first();
        for segment in log.segments() {
            if segment.end == segment.base {
                continue;
            }
            let newest = match log.read(segment.end - 1)? {
                Some(body) => crate::record::decode_meta(&body)?.published_at_ms,
                None => 0,
            };
            if newest >= horizon {
                break;
            }
            from = segment.end;
        }
        let mut iter = log.iter_from(from);
        while let Some((_, body)) = iter.next_body()? {
            let meta = crate::record::decode_meta(body)?;
            if !meta.lost && now.saturating_sub(meta.published_at_ms) < window {
                dedup.insert(meta.id, meta.published_at_ms);
            }
        }
    }
    Ok(Topic {
        options: topic_options,
        log: LogHandle::new(log),
        writes: Arc::new(Mutex::new(TopicWrites {
            dedup,
            deleted: false,
            pending: Default::default(),
        })),
        subscriptions: BTreeSet::new(),
    })
}

/// A checkpoint at `at` whose journal starts later: the records between are gone.
pub(crate) fn gone_before(checkpoint: &std::path::Path, at: u64, journal: &SegmentedLog) -> Error {
    Error::corrupt(
        checkpoint,
        0,
        format!(
            "the checkpoint continues at journal record {at} but the journal starts at {}: the \
             records between are gone. Nothing was changed; see \"Damage on disk\" in \
             docs/durability.md",
            journal.first()
        ),
    )
}

/// Appends placeholders to `log` for the sequences `log.end()..to` and commits them.
fn fill(log: &mut SegmentedLog, to: u64, now: u64, reason: &str) -> Result<u64> {
    let from = log.written_end();
    if to <= from {
        return Ok(0);
    }
    if to - from > MAX_FILL {
        return Err(Error::corrupt(
            log.dir(),
            0,
            format!(
                "the state reaches offset {to} but the log ends at {from}: more than {MAX_FILL} \
                 records missing is not a lost tail. Nothing was changed; see \"Damage on \
                 disk\" in docs/durability.md"
            ),
        ));
    }
    let mut next = from;
    while next < to {
        let chunk = (to - next).min(10_000);
        let bodies = (next..next + chunk)
            .map(|offset| MessageRecord::lost(offset, now, reason).encode())
            .collect::<Result<Vec<_>>>()?;
        log.append(&bodies)?;
        next += chunk;
    }
    log.commit()?;
    Ok(to - from)
}

pub(crate) fn open_subscription(
    dir: &DataDir,
    options: &EngineOptions,
    name: &str,
    entry: SubscriptionEntry,
    now: u64,
) -> Result<Sub> {
    let storage = dir.storage().clone();
    let (journal, report) = SegmentedLog::open(
        storage.clone(),
        dir.journal_dir(name)?,
        SegmentKind::Journal,
        options.log,
    )?;
    if !report.is_clean() {
        tracing::warn!(subscription = name, %report, "recovered the subscription journal");
    }
    let (mut dlq, report) =
        SegmentedLog::open(storage, dir.dlq_dir(name)?, SegmentKind::Dlq, options.log)?;
    if !report.is_clean() {
        tracing::warn!(subscription = name, %report, "recovered the dead-letter log");
    }
    let checkpoint_path = dir.checkpoint_path(name)?;
    let mut rewrite = None;
    let (mut state, from) = match dir.read(&checkpoint_path)? {
        Some(bytes) => {
            let body = checkpoint::unframe(&checkpoint_path, &bytes)?;
            let (state, position) = SubscriptionState::restore(body).map_err(|err| {
                Error::corrupt(
                    &checkpoint_path,
                    0,
                    format!("the checkpoint does not decode: {err}"),
                )
            })?;
            let at = position.position;
            if at < journal.first() {
                return Err(gone_before(&checkpoint_path, at, &journal));
            }
            if at > journal.end() {
                rewrite = Some(format!(
                    "the checkpoint continues at journal record {at} but the journal ends at {} \
                     (its tail was lost); the checkpoint includes those records",
                    journal.end()
                ));
            }
            (state, at)
        }
        None => (SubscriptionState::new(entry.start_offset), journal.first()),
    };
    let (mut replayed, mut ignored) = (0u64, 0u64);
    if from <= journal.end() {
        let dlq_end = dlq.end();
        let mut iter = journal.iter_from(from);
        while let Some((_, body)) = iter.next_body()? {
            let record = JournalRecord::decode(body)?;
            if state.replay(&record, dlq_end) {
                replayed += 1;
            } else {
                ignored += 1;
            }
        }
    }
    if ignored > 0 {
        let why = format!(
            "{ignored} journal record(s) name DLQ offsets the dead-letter log does not hold \
             (it ends at {}): their messages are delivered again",
            dlq.end()
        );
        tracing::warn!(subscription = name, "{why}");
        rewrite.get_or_insert(why);
    }
    let dlq_needed = state.fit_dlq(dlq.end());
    if dlq_needed > dlq.end() {
        let why = format!(
            "the checkpoint knows dead-lettered messages up to DLQ offset {} but the dead-letter \
             log ends at {}",
            dlq_needed - 1,
            dlq.end()
        );
        let filled = fill(&mut dlq, dlq_needed, now, &why)?;
        tracing::warn!(
            subscription = name,
            filled,
            "{why}: those DLQ records are lost; placeholders keep their offsets"
        );
    }
    // Tokens of the previous run must never match a new lease.
    state.start_tokens_at(now.saturating_mul(1000));
    let journal_next = journal.end();
    if let Some(why) = rewrite {
        // Replay starts after the journal's end from now on: what it holds is included.
        let position = JournalPosition {
            segment: 0,
            position: journal_next,
        };
        dir.write_atomic(
            &checkpoint_path,
            &checkpoint::frame(&state.checkpoint(position)),
        )?;
        tracing::warn!(
            subscription = name,
            "{why}; checkpointed the state at journal record {journal_next}"
        );
    }
    let dlq_next = dlq.end();
    Ok(Sub {
        entry,
        state,
        journal: LogHandle::new(journal),
        dlq: LogHandle::new(dlq),
        dlq_next,
        journal_next,
        since_checkpoint: replayed,
        checkpointing: false,
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        dropped_without_dlq: 0,
        dlq_index: None,
    })
}

/// Makes every topic log reach as far as its subscriptions' states (see the module docs).
pub(crate) fn fit_topics(
    topics: &HashMap<String, Topic>,
    subs: &HashMap<String, Sub>,
    now: u64,
) -> Result<()> {
    for (name, topic) in topics {
        let reach = topic
            .subscriptions
            .iter()
            .filter_map(|s| subs.get(s).map(|sub| (s, sub.state.topic_reach())))
            .max_by_key(|(_, reach)| *reach);
        let Some((furthest, reach)) = reach else {
            continue;
        };
        let mut log = topic.log.lock();
        if reach <= log.written_end() {
            continue;
        }
        let why = format!(
            "subscription `{furthest}` has handled offsets up to {} but the topic log ends at {}",
            reach - 1,
            log.written_end()
        );
        let filled = fill(&mut log, reach, now, &why)?;
        tracing::warn!(topic = %name, filled, "{why} (its tail was lost in a crash or damaged): those messages are lost; placeholders keep their offsets so new messages never take them");
    }
    Ok(())
}
