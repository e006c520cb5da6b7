//! Offline checks and salvage of a data directory (`sluice check`, `sluice repair`; see
//! `docs/durability.md`, "Damage on disk").
//!
//! [`check`] reads everything without changing anything: every frame's CRC, dense offsets,
//! sealed segments against their indexes, checkpoints against their journals, subscription
//! states against their logs, the catalog against the directories. [`repair`] salvages what
//! [`check`] found: damaged byte ranges go to `DATA/quarantine/` with a report, every readable
//! record after them is kept (lost topic and DLQ offsets get placeholders so offsets stay
//! dense), damaged checkpoints are set aside (the state is rebuilt from the journal), and the
//! directory opens again. Both take the directory's lock: never while an engine has it open.
//!
//! Invariants: [`check`] writes nothing (beyond taking the lock); [`repair`] never deletes a
//! byte it did not first copy to `quarantine/` (and sync), and replaces each file atomically.

mod kv;
mod repair;
mod scan;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::dir::DataDir;
use crate::error::{Error, Result};
use crate::io::{read_all, FileStorage, Storage};
use crate::log::{index_path, segment_path};
use crate::segment::{SegmentKind, SparseIndex};
use crate::subscription::{JournalRecord, SubscriptionState};

pub use repair::{repair, repair_with, RepairReport};
pub use scan::{scan_bytes, scan_segment, Damage, SegmentScan};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Severity {
    /// Open handles it by itself and loses nothing confirmed (a torn tail, a missing index, a
    /// leftover file).
    Recoverable,
    /// Records are damaged or lost, or open refuses: `sluice repair` salvages.
    Damage,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How serious.
    pub severity: Severity,
    /// The file (or directory).
    pub file: PathBuf,
    /// The byte, where there is one.
    pub position: Option<u64>,
    /// What is wrong, and what open or repair does about it.
    pub problem: String,
}

/// What [`check`] found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// The data directory.
    pub dir: PathBuf,
    /// Logs read (topic logs, journals, DLQs).
    pub logs: u64,
    /// Segment files read.
    pub segments: u64,
    /// Valid records read.
    pub records: u64,
    /// Problems, in the order found.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// Whether nothing at all was found.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// Whether something needs `sluice repair` (damage, lost records, or open would refuse).
    pub fn is_damaged(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Damage)
    }

    fn push(&mut self, severity: Severity, file: &Path, position: Option<u64>, problem: String) {
        self.findings.push(Finding {
            severity,
            file: file.to_path_buf(),
            position,
            problem,
        });
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checked {}: {} logs, {} segments, {} records",
            self.dir.display(),
            self.logs,
            self.segments,
            self.records
        )?;
        for finding in &self.findings {
            let severity = match finding.severity {
                Severity::Recoverable => "recoverable",
                Severity::Damage => "DAMAGE",
            };
            let at = finding
                .position
                .map(|p| format!(" at byte {p}"))
                .unwrap_or_default();
            writeln!(
                f,
                "{severity}: {}{at}: {}",
                finding.file.display(),
                finding.problem
            )?;
        }
        if self.is_clean() {
            write!(f, "no problem found")
        } else if self.is_damaged() {
            write!(
                f,
                "damage found: copy the directory aside, then run `sluice repair --data {}`",
                self.dir.display()
            )
        } else {
            write!(f, "nothing lost: the next open fixes what is listed")
        }
    }
}

/// One log, checked: where it ends.
pub(crate) struct LogCheck {
    pub(crate) first: u64,
    pub(crate) end: u64,
    pub(crate) scans: Vec<SegmentScan>,
}

/// The `.seg` bases of a log directory, in order.
pub(crate) fn segment_bases(storage: &dyn Storage, dir: &Path) -> Vec<u64> {
    crate::log::recover::list(storage, dir)
        .map(|(segments, _)| segments.into_iter().collect())
        .unwrap_or_default()
}

fn check_log(
    storage: &dyn Storage,
    dir: &Path,
    kind: SegmentKind,
    report: &mut CheckReport,
) -> LogCheck {
    report.logs += 1;
    let bases = segment_bases(storage, dir);
    let mut scans: Vec<SegmentScan> = Vec::new();
    for (i, &base) in bases.iter().enumerate() {
        let last = i + 1 == bases.len();
        let path = segment_path(dir, base);
        let scan = match scan_segment(storage, &path, kind, base) {
            Ok(scan) => scan,
            Err(e) => {
                report.push(
                    Severity::Damage,
                    &path,
                    None,
                    format!("cannot be read: {e}"),
                );
                continue;
            }
        };
        report.segments += 1;
        report.records += scan.frames.len() as u64;
        if let Some(problem) = &scan.bad_header {
            let severity = if last && scan.len <= crate::segment::HEADER_LEN {
                Severity::Recoverable
            } else {
                Severity::Damage
            };
            report.push(severity, &path, Some(0), problem.clone());
            scans.push(scan);
            continue;
        }
        if let Some(prev) = scans.last().filter(|p| p.bad_header.is_none()) {
            if prev.end != base {
                report.push(
                    Severity::Damage,
                    &path,
                    Some(0),
                    format!(
                        "starts at {base} but the previous segment ends at {}",
                        prev.end
                    ),
                );
            }
        }
        for damage in &scan.damage {
            let lost = match damage.lost {
                Some((a, b)) => format!("offsets {a} to {b} lost"),
                None => "records lost".into(),
            };
            report.push(
                Severity::Damage,
                &path,
                Some(damage.from),
                format!(
                    "{} with valid records from byte {}: {lost}; open refuses",
                    damage.reason, damage.to
                ),
            );
        }
        if let Some((from, to, reason)) = &scan.tail {
            if last {
                report.push(
                    Severity::Recoverable,
                    &path,
                    Some(*from),
                    format!(
                        "{reason}: a torn tail of {} bytes after the last record (sequence {}); \
                         open drops it (under sync=always it was never confirmed)",
                        to - from,
                        scan.end
                    ),
                );
            } else {
                report.push(
                    Severity::Damage,
                    &path,
                    Some(*from),
                    format!("{reason} in a sealed segment; the records after it are lost"),
                );
            }
        }
        if !last {
            let idx = index_path(dir, base);
            let index = storage
                .open(&idx, false)
                .ok()
                .and_then(|f| read_all(f.as_ref()).ok())
                .and_then(|bytes| SparseIndex::decode(&bytes));
            match index {
                None => report.push(
                    Severity::Recoverable,
                    &idx,
                    None,
                    "missing or damaged index: open rebuilds it by scanning".into(),
                ),
                Some(ix) if ix.end_seq != scan.end || u64::from(ix.end_position) != scan.end_pos => {
                    report.push(
                        Severity::Damage,
                        &idx,
                        None,
                        format!(
                            "the index says the segment ends at {} (byte {}) but its records end at {} (byte {})",
                            ix.end_seq, ix.end_position, scan.end, scan.end_pos
                        ),
                    )
                }
                Some(_) => {}
            }
        }
        scans.push(scan);
    }
    LogCheck {
        first: bases.first().copied().unwrap_or(0),
        end: scans.last().map_or(0, |s| s.end),
        scans,
    }
}

/// Where a checkpoint continues (`from`) against its checked journal: before the journal's
/// first record is damage, past its end recoverable.
pub(crate) fn check_position(
    report: &mut CheckReport,
    checkpoint: &Path,
    from: u64,
    journal: &LogCheck,
) {
    if from < journal.first {
        report.push(
            Severity::Damage,
            checkpoint,
            None,
            format!(
                "continues at journal record {from} but the journal starts at {}",
                journal.first
            ),
        );
    } else if from > journal.end {
        report.push(
            Severity::Recoverable,
            checkpoint,
            None,
            format!(
                "continues at journal record {from} past the journal's end {} (its tail was lost); open checkpoints again",
                journal.end
            ),
        );
    }
}

/// The journal records of a checked journal, in order (damaged stretches skipped).
pub(crate) fn journal_records(storage: &dyn Storage, log: &LogCheck) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for scan in &log.scans {
        let Ok(file) = storage.open(&scan.path, false) else {
            continue;
        };
        let Ok(bytes) = read_all(file.as_ref()) else {
            continue;
        };
        for &(pos, len, seq) in &scan.frames {
            let body = &bytes[(pos + 8) as usize..(pos + len) as usize];
            out.push((seq, body.to_vec()));
        }
    }
    out
}

/// Checks the data directory at `path` on the real filesystem; see the module docs. Fails
/// with [`Error::InUse`] while an engine has it open.
pub fn check(path: impl AsRef<Path>) -> Result<CheckReport> {
    check_with(Arc::new(FileStorage::new()), path.as_ref(), true)
}

/// [`check`] on any storage (tests).
pub fn check_with(storage: Arc<dyn Storage>, path: &Path, real_lock: bool) -> Result<CheckReport> {
    if !storage.exists(path).unwrap_or(false) {
        return Err(Error::NotDataDir {
            dir: path.to_path_buf(),
            reason: "it does not exist".into(),
        });
    }
    let dir = DataDir::open(storage.clone(), path, real_lock)?;
    let mut report = CheckReport {
        dir: path.to_path_buf(),
        ..CheckReport::default()
    };
    let catalog_path = path.join(crate::dir::CATALOG_FILE);
    let catalog = match dir.load_catalog()? {
        None => Catalog::new(),
        Some(bytes) => match Catalog::from_bytes(&bytes) {
            Ok(catalog) => catalog,
            Err(reason) => {
                report.push(
                    Severity::Damage,
                    &catalog_path,
                    None,
                    format!("does not parse: {reason}"),
                );
                return Ok(report);
            }
        },
    };
    let storage = storage.as_ref();
    let mut topic_ends = std::collections::HashMap::new();
    for name in catalog.topics.keys() {
        let log = check_log(
            storage,
            &dir.topic_dir(name)?,
            SegmentKind::TopicLog,
            &mut report,
        );
        topic_ends.insert(name.clone(), log.end);
    }
    for (name, entry) in &catalog.subscriptions {
        let journal_dir = dir.journal_dir(name)?;
        let journal = check_log(storage, &journal_dir, SegmentKind::Journal, &mut report);
        let dlq = check_log(storage, &dir.dlq_dir(name)?, SegmentKind::Dlq, &mut report);
        let checkpoint_path = dir.checkpoint_path(name)?;
        let mut state = SubscriptionState::new(entry.start_offset);
        let mut from = journal.first;
        if let Some(bytes) = dir.read(&checkpoint_path)? {
            let restored =
                crate::engine::checkpoint_body(&checkpoint_path, &bytes).and_then(|body| {
                    SubscriptionState::restore(body)
                        .map_err(|e| Error::corrupt(&checkpoint_path, 0, e.to_string()))
                });
            match restored {
                Ok((restored, position)) => {
                    state = restored;
                    from = position.position;
                    check_position(&mut report, &checkpoint_path, from, &journal);
                }
                Err(err) => report.push(Severity::Damage, &checkpoint_path, None, err.to_string()),
            }
        }
        for (seq, body) in journal_records(storage, &journal) {
            if seq < from {
                continue;
            }
            match JournalRecord::decode(&body) {
                Ok(record) => {
                    if !state.replay(&record, dlq.end) {
                        report.push(
                            Severity::Recoverable,
                            &journal_dir,
                            None,
                            format!("journal record {seq} names a DLQ offset past the DLQ log's end {}: open delivers its message again", dlq.end),
                        );
                    }
                }
                Err(e) => report.push(
                    Severity::Damage,
                    &journal_dir,
                    None,
                    format!("journal record {seq} does not decode: {e}"),
                ),
            }
        }
        let topic_end = topic_ends.get(&entry.options.topic).copied().unwrap_or(0);
        let reach = state.topic_reach();
        if reach > topic_end {
            report.push(
                Severity::Damage,
                &dir.topic_dir(&entry.options.topic)?,
                None,
                format!(
                    "subscription `{name}` has handled offsets up to {} but the topic log ends at {topic_end}: those messages were lost; open keeps their offsets with placeholders",
                    reach - 1
                ),
            );
        }
        let dlq_needed = state.fit_dlq(dlq.end);
        if dlq_needed > dlq.end {
            report.push(
                Severity::Damage,
                &dir.dlq_dir(name)?,
                None,
                format!(
                    "the state knows DLQ offsets up to {} but the dead-letter log ends at {}: those dead letters were lost",
                    dlq_needed - 1,
                    dlq.end
                ),
            );
        }
    }
    kv::check(&dir, &mut report)?;
    // Directories the catalog does not know: leftovers of deletes cut short.
    for (parent, known) in [
        (
            "topics",
            catalog.topics.keys().cloned().collect::<BTreeSet<_>>(),
        ),
        (
            "subscriptions",
            catalog
                .subscriptions
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>(),
        ),
    ] {
        let parent = path.join(parent);
        for name in storage.list_dir(&parent).unwrap_or_default() {
            if !known.contains(&name) {
                report.push(
                    Severity::Recoverable,
                    &parent.join(&name),
                    None,
                    "not in the catalog (a delete cut short): removed when the name is created again".into(),
                );
            }
        }
    }
    Ok(report)
}
