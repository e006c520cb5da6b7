//! `sluice repair`: salvages what [`check`](super::check) finds (see the parent module).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{check_with, scan_segment, segment_bases, Severity};
use crate::dir::{write_atomic, DataDir};
use crate::engine::{Engine, EngineOptions};
use crate::error::{Error, IoContext, Result};
use crate::io::{create_dir_durable, read_all, FileStorage, Storage};
use crate::log::{index_path, segment_path};
use crate::record::MessageRecord;
use crate::segment::{encode_frame, SegmentHeader, SegmentKind, HEADER_LEN};
use crate::subscription::{JournalPosition, JournalRecord, SubscriptionState};

/// What [`repair`] did.
#[derive(Debug, Clone, Default)]
pub struct RepairReport {
    /// The data directory.
    pub dir: PathBuf,
    /// What was done, one line each.
    pub actions: Vec<String>,
    /// Files written to `DATA/quarantine/`.
    pub quarantined: Vec<PathBuf>,
    /// Placeholders written for lost topic and DLQ offsets.
    pub placeholders: u64,
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.actions.is_empty() {
            return write!(f, "{}: nothing to repair", self.dir.display());
        }
        writeln!(f, "repaired {}:", self.dir.display())?;
        for action in &self.actions {
            writeln!(f, "- {action}")?;
        }
        write!(
            f,
            "{} file(s) in {}, {} placeholder(s) for lost offsets; the directory opens again",
            self.quarantined.len(),
            self.dir.join(QUARANTINE).display(),
            self.placeholders
        )
    }
}

const QUARANTINE: &str = "quarantine";

/// A journal record's sequence and body.
pub(super) type SeqRecord = (u64, Vec<u8>);

pub(super) struct Repairer<'a> {
    pub(super) storage: &'a dyn Storage,
    data: &'a Path,
    pub(super) report: RepairReport,
    pub(super) now: u64,
}

impl Repairer<'_> {
    /// Copies `bytes` (from `file` at `from`) to the quarantine folder, durably, with a line
    /// in its REPORT.
    pub(super) fn quarantine(
        &mut self,
        file: &Path,
        from: u64,
        bytes: &[u8],
        why: &str,
    ) -> Result<()> {
        let folder = self.data.join(QUARANTINE);
        create_dir_durable(self.storage, &folder)
            .context(|| format!("create {}", folder.display()))?;
        let relative = file.strip_prefix(self.data).unwrap_or(file);
        let name = format!(
            "{}@{from}-{}.bin",
            relative.to_string_lossy().replace('/', "_"),
            self.now
        );
        let target = folder.join(name);
        write_atomic(self.storage, &target, bytes)?;
        let line = format!(
            "{}: {} bytes from byte {from} of {}: {why}\n",
            target
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            bytes.len(),
            relative.display()
        );
        let report = folder.join("REPORT.txt");
        let mut text = match self.storage.open(&report, false) {
            Ok(f) => read_all(f.as_ref()).context(|| format!("read {}", report.display()))?,
            Err(_) => Vec::new(),
        };
        text.extend_from_slice(line.as_bytes());
        write_atomic(self.storage, &report, &text)?;
        self.report.quarantined.push(target);
        Ok(())
    }

    fn placeholders(&mut self, from: u64, to: u64, why: &str, out: &mut Vec<u8>) -> Result<()> {
        for offset in from..to {
            encode_frame(&MessageRecord::lost(offset, self.now, why).encode()?, out);
            self.report.placeholders += 1;
        }
        Ok(())
    }

    /// Rewrites the segments of one log that hold damage (see the module docs).
    fn log(&mut self, dir: &Path, kind: SegmentKind) -> Result<()> {
        let bases = segment_bases(self.storage, dir);
        for (i, &base) in bases.iter().enumerate() {
            let last = i + 1 == bases.len();
            let next_base = bases.get(i + 1).copied();
            let path = segment_path(dir, base);
            let scan = scan_segment(self.storage, &path, kind, base)
                .context(|| format!("read {}", path.display()))?;
            let sealed_tail = !last && scan.tail.is_some();
            let short = next_base.is_some_and(|next| kind.has_offsets() && scan.end < next);
            if scan.bad_header.is_none() && scan.damage.is_empty() && !sealed_tail && !short {
                if let (true, Some((from, to, reason))) = (last, &scan.tail) {
                    // A torn tail: open would drop it; keep a copy first.
                    let file = self
                        .storage
                        .open(&path, false)
                        .context(|| format!("open {}", path.display()))?;
                    let bytes =
                        read_all(file.as_ref()).context(|| format!("read {}", path.display()))?;
                    self.quarantine(&path, *from, &bytes[*from as usize..*to as usize], reason)?;
                    file.write_at(&vec![0; (to - from) as usize], *from)
                        .context(|| format!("zero the tail of {}", path.display()))?;
                    file.sync_data()
                        .context(|| format!("fdatasync {}", path.display()))?;
                    self.report.actions.push(format!(
                        "{}: moved a torn tail of {} bytes to quarantine",
                        path.display(),
                        to - from
                    ));
                }
                continue;
            }
            let file = self
                .storage
                .open(&path, false)
                .context(|| format!("open {}", path.display()))?;
            let bytes = read_all(file.as_ref()).context(|| format!("read {}", path.display()))?;
            let mut out = Vec::with_capacity(bytes.len());
            out.extend_from_slice(&SegmentHeader { kind, base }.encode());
            if let Some(problem) = &scan.bad_header {
                self.quarantine(&path, 0, &bytes, problem)?;
                let why = format!("{}: {problem}", path.display());
                if let Some(next) = next_base.filter(|_| kind.has_offsets()) {
                    self.placeholders(base, next, &why, &mut out)?;
                }
                self.report.actions.push(format!(
                    "{}: damaged header; the whole file moved to quarantine",
                    path.display()
                ));
            } else {
                let mut damage = scan.damage.iter().peekable();
                for &(pos, len, seq) in &scan.frames {
                    while let Some(d) = damage.next_if(|d| d.to <= pos) {
                        let why = format!("{} at byte {} of {}", d.reason, d.from, path.display());
                        self.quarantine(
                            &path,
                            d.from,
                            &bytes[d.from as usize..d.to as usize],
                            &d.reason,
                        )?;
                        if let Some((a, b)) = d.lost {
                            self.placeholders(a, b + 1, &why, &mut out)?;
                        }
                        self.report.actions.push(format!(
                            "{}: moved {} damaged bytes from byte {} to quarantine{}",
                            path.display(),
                            d.to - d.from,
                            d.from,
                            d.lost
                                .map(|(a, b)| format!("; offsets {a} to {b} are lost"))
                                .unwrap_or_default()
                        ));
                    }
                    let _ = seq;
                    out.extend_from_slice(&bytes[pos as usize..(pos + len) as usize]);
                }
                if let Some((from, to, reason)) = &scan.tail {
                    self.quarantine(&path, *from, &bytes[*from as usize..*to as usize], reason)?;
                    self.report.actions.push(format!(
                        "{}: moved {} bytes after the last record to quarantine",
                        path.display(),
                        to - from
                    ));
                }
                if let Some(next) = next_base.filter(|&n| kind.has_offsets() && scan.end < n) {
                    let why = format!("the end of {} was lost", path.display());
                    self.placeholders(scan.end, next, &why, &mut out)?;
                    self.report.actions.push(format!(
                        "{}: offsets {} to {} are lost",
                        path.display(),
                        scan.end,
                        next - 1
                    ));
                }
            }
            let size = (bytes.len() as u64).max(out.len() as u64).max(HEADER_LEN);
            out.resize(size as usize, 0);
            write_atomic(self.storage, &path, &out)?;
            // Positions changed: the index is rebuilt by the next open.
            let idx = index_path(dir, base);
            if self.storage.exists(&idx).unwrap_or(false) {
                self.storage
                    .remove_file(&idx)
                    .context(|| format!("remove {}", idx.display()))?;
                self.storage
                    .sync_dir(dir)
                    .context(|| format!("fsync directory {}", dir.display()))?;
            }
        }
        Ok(())
    }
}

impl Repairer<'_> {
    /// Every readable record of the journal in `journal_dir` with its sequence, and the
    /// sequence of its first damage (`u64::MAX` if none); each segment is copied to the
    /// quarantine first.
    pub(super) fn take_journal(&mut self, journal_dir: &Path) -> Result<(Vec<SeqRecord>, u64)> {
        let mut records: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut first_damage = u64::MAX;
        for base in segment_bases(self.storage, journal_dir) {
            let path = segment_path(journal_dir, base);
            let file = self
                .storage
                .open(&path, false)
                .context(|| format!("open {}", path.display()))?;
            let bytes = read_all(file.as_ref()).context(|| format!("read {}", path.display()))?;
            let scan = super::scan_bytes(&bytes, &path, SegmentKind::Journal, base);
            if scan.bad_header.is_some() {
                first_damage = first_damage.min(base);
            }
            for d in &scan.damage {
                let seq = scan
                    .frames
                    .iter()
                    .filter(|(pos, _, _)| *pos < d.from)
                    .map(|(_, _, seq)| seq + 1)
                    .max()
                    .unwrap_or(base);
                first_damage = first_damage.min(seq);
            }
            for &(pos, len, seq) in &scan.frames {
                records.push((
                    seq,
                    bytes[(pos + 8) as usize..(pos + len) as usize].to_vec(),
                ));
            }
            self.quarantine(
                &path,
                0,
                &bytes,
                "journal segment replaced by a rebuilt checkpoint",
            )?;
        }
        Ok((records, first_damage))
    }

    /// Removes every file of `dir` (copied to the quarantine before) and syncs it.
    pub(super) fn clear_dir(&self, dir: &Path) -> Result<()> {
        for name in self.storage.list_dir(dir).unwrap_or_default() {
            let file = dir.join(&name);
            self.storage
                .remove_file(&file)
                .context(|| format!("remove {}", file.display()))?;
        }
        self.storage
            .sync_dir(dir)
            .context(|| format!("fsync directory {}", dir.display()))
    }

    /// Whether any segment of the journal in `dir` holds damage (a bad header, damaged frames
    /// with records after them, a sealed segment cut short).
    pub(super) fn journal_damaged(&self, dir: &Path) -> Result<bool> {
        let bases = segment_bases(self.storage, dir);
        for (i, &base) in bases.iter().enumerate() {
            let path = segment_path(dir, base);
            let scan = scan_segment(self.storage, &path, SegmentKind::Journal, base)
                .context(|| format!("read {}", path.display()))?;
            let last = i + 1 == bases.len();
            let short = bases.get(i + 1).is_some_and(|&next| scan.end != next);
            if scan.bad_header.is_some()
                || !scan.damage.is_empty()
                || short
                || (!last && scan.tail.is_some())
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A damaged journal cannot be rewritten in place (its records carry no sequence, so the
    /// checkpoint's position would point at the wrong record): the subscription's state is
    /// rebuilt from the checkpoint (if sound) and every readable journal record, written as a
    /// new checkpoint, and the journal starts again empty. Records lost in the damage may
    /// make messages be delivered again; none is lost.
    fn rebuild_state(
        &mut self,
        journal_dir: &Path,
        dlq_dir: &Path,
        checkpoint: Option<&Path>,
        checkpoint_path: &Path,
        start_offset: u64,
    ) -> Result<()> {
        let dlq_end = segment_bases(self.storage, dlq_dir)
            .last()
            .map(|&base| {
                scan_segment(
                    self.storage,
                    &segment_path(dlq_dir, base),
                    SegmentKind::Dlq,
                    base,
                )
                .map(|scan| scan.end)
            })
            .transpose()
            .context(|| format!("read {}", dlq_dir.display()))?
            .unwrap_or(0);
        let (mut state, position) = match checkpoint
            .map(|path| -> Result<Option<(SubscriptionState, u64)>> {
                let Ok(file) = self.storage.open(path, false) else {
                    return Ok(None);
                };
                let bytes =
                    read_all(file.as_ref()).context(|| format!("read {}", path.display()))?;
                let body = crate::engine::checkpoint_body(path, &bytes)?;
                let (state, position) = SubscriptionState::restore(body)
                    .map_err(|e| Error::corrupt(path, 0, e.to_string()))?;
                Ok(Some((state, position.position)))
            })
            .transpose()?
            .flatten()
        {
            Some(restored) => restored,
            None => (SubscriptionState::new(start_offset), 0),
        };
        // Records before the first damage keep their sequence: replay from the checkpoint's
        // position if the damage is after it, else every readable record (replaying one
        // the checkpoint includes is harmless; skipping one is not).
        let (records, first_damage) = self.take_journal(journal_dir)?;
        let from = if first_damage >= position {
            position
        } else {
            0
        };
        let mut replayed = 0;
        for (seq, body) in &records {
            if *seq < from && first_damage >= position {
                continue;
            }
            if let Ok(record) = JournalRecord::decode(body) {
                state.replay(&record, dlq_end);
                replayed += 1;
            }
        }
        let body = state.checkpoint(JournalPosition {
            segment: 0,
            position: 0,
        });
        write_atomic(
            self.storage,
            checkpoint_path,
            &crate::engine::checkpoint_frame(&body),
        )?;
        self.clear_dir(journal_dir)?;
        self.report.actions.push(format!(
            "{}: damaged; the state was rebuilt from {} and {replayed} readable journal record(s) into a new checkpoint, and the journal starts again (messages whose records were lost may be delivered again)",
            journal_dir.display(),
            if checkpoint.is_some() { "the checkpoint" } else { "the subscription's start" },
        ));
        Ok(())
    }
}

/// Salvages the data directory at `path` on the real filesystem; see the module docs. Fails
/// with [`Error::InUse`] while an engine has it open.
pub fn repair(path: impl AsRef<Path>) -> Result<RepairReport> {
    repair_with(
        Arc::new(FileStorage::new()),
        path.as_ref(),
        true,
        EngineOptions::default(),
    )
}

/// [`repair`] on any storage (tests); `options` open the engine at the end.
pub fn repair_with(
    storage: Arc<dyn Storage>,
    path: &Path,
    real_lock: bool,
    options: EngineOptions,
) -> Result<RepairReport> {
    let report = check_with(storage.clone(), path, real_lock)?;
    let now = options.clock.now_ms();
    let mut repairer = Repairer {
        storage: storage.as_ref(),
        data: path,
        report: RepairReport {
            dir: path.to_path_buf(),
            ..RepairReport::default()
        },
        now,
    };
    {
        // Held until the end of the salvage; the engine opened at the end takes it again.
        let dir = DataDir::open(storage.clone(), path, real_lock)?;
        let catalog = match dir.load_catalog()? {
            Some(bytes) => {
                crate::catalog::Catalog::from_bytes(&bytes).map_err(|reason| Error::Invalid {
                    what: "catalog",
                    reason: format!("{reason}; restore it from a copy: repair cannot rebuild it"),
                })?
            }
            None => crate::catalog::Catalog::new(),
        };
        for name in catalog.topics.keys() {
            repairer.log(&dir.topic_dir(name)?, SegmentKind::TopicLog)?;
        }
        for (name, entry) in &catalog.subscriptions {
            repairer.log(&dir.dlq_dir(name)?, SegmentKind::Dlq)?;
            let checkpoint = dir.checkpoint_path(name)?;
            let bad = report
                .findings
                .iter()
                .any(|f| f.file == checkpoint && f.severity == Severity::Damage);
            let journal_dir = dir.journal_dir(name)?;
            if repairer.journal_damaged(&journal_dir)? {
                if bad {
                    let bytes = storage
                        .open(&checkpoint, false)
                        .and_then(|f| read_all(f.as_ref()))
                        .context(|| format!("read {}", checkpoint.display()))?;
                    repairer.quarantine(&checkpoint, 0, &bytes, "damaged checkpoint")?;
                }
                repairer.rebuild_state(
                    &journal_dir,
                    &dir.dlq_dir(name)?,
                    (!bad).then_some(checkpoint.as_path()),
                    &checkpoint,
                    entry.start_offset,
                )?;
                continue;
            }
            if bad {
                let file = storage
                    .open(&checkpoint, false)
                    .context(|| format!("open {}", checkpoint.display()))?;
                let bytes =
                    read_all(file.as_ref()).context(|| format!("read {}", checkpoint.display()))?;
                drop(file);
                repairer.quarantine(&checkpoint, 0, &bytes, "damaged checkpoint")?;
                storage
                    .remove_file(&checkpoint)
                    .context(|| format!("remove {}", checkpoint.display()))?;
                let parent = checkpoint.parent().unwrap_or(path);
                storage
                    .sync_dir(parent)
                    .context(|| format!("fsync directory {}", parent.display()))?;
                repairer.report.actions.push(format!(
                    "{}: damaged; moved to quarantine, the state is rebuilt from the journal (messages \
                     settled before the journal's first record may be delivered again)",
                    checkpoint.display()
                ));
            }
        }
        repairer.keyed_store(&dir, &report)?;
    }
    // The engine's own open does the rest (torn tails, indexes, states past their logs), and
    // proves the directory opens.
    let options = if real_lock {
        options
    } else {
        options.storage(storage.clone())
    };
    let report = repairer.report;
    let engine = Engine::open(path, options)?;
    engine.close()?;
    Ok(report)
}
