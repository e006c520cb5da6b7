//! Opening a [`SegmentedLog`]: recovery (`docs/engine-format.md`, "Recovery").
//!
//! Invariants established by [`SegmentedLog::open`]:
//! - Sealed segments are trusted up to their index footer; a missing or damaged index is
//!   rebuilt by scanning, and a bad frame found then is [`Error::Corrupt`] (never skipped).
//! - The active segment is scanned from its header. At the first invalid frame (bad length
//!   or CRC, or an offset that is not dense) or an early end of records, open first looks for
//!   valid records after it (for topic logs and DLQs: carrying that offset or a later one).
//!   If there are any, the log is damaged in the middle, not torn at its end: open fails with
//!   [`Error::Corrupt`] and changes nothing (docs/durability.md says how to salvage). Otherwise everything
//!   from there to the last non-zero byte of the file is zeroed and synced, and reported. So
//!   after open the bytes after the last record are zero, as the format requires, and a
//!   stale frame beyond a lost write can never be taken for a record later.
//! - A last segment whose header was never (completely) written and that holds no records is
//!   a segment creation cut short: it is deleted.
//! - Recovery reads at most the active segment, whatever the log's size.

use std::collections::BTreeSet;
use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{
    create_segment, index_path, segment_path, write_whole_file, LogOptions, Segment, SegmentedLog,
    SyncSet,
};
use crate::error::{Error, IoContext, Result};
use crate::io::{create_dir_durable, read_all, read_exact_at, Storage, StorageFile};
use crate::record::peek_offset;
use crate::segment::{
    frame_body, FrameScanner, HeaderError, ScanEnd, SegmentHeader, SegmentKind, SparseIndex,
    FORMAT_VERSION, FRAME_HEADER_LEN, HEADER_LEN, MAX_BODY_LEN,
};

/// Bytes read at a time by recovery.
const RECOVERY_CHUNK: usize = 1024 * 1024;

/// What opening a log found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Invalid frames dropped from the active segment (0 or 1: everything after the first
    /// invalid frame is counted in bytes).
    pub dropped_frames: u64,
    /// Bytes zeroed after the last valid record.
    pub dropped_bytes: u64,
    /// Sequence of the last record kept, when something was dropped after it (`None`: the
    /// log has no record before the drop).
    pub after_offset: Option<u64>,
    /// The segment and byte position the drop started at, and why.
    pub truncated_at: Option<(PathBuf, u64, String)>,
    /// Index files rebuilt by scanning their segment.
    pub rebuilt_indexes: Vec<PathBuf>,
    /// Files removed: an unfinished segment, or an index without its segment.
    pub removed_files: Vec<PathBuf>,
}

impl RecoveryReport {
    /// Whether nothing was dropped (rebuilt indexes and removed leftovers lose no record).
    pub fn is_clean(&self) -> bool {
        self.dropped_bytes == 0
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return f.write_str("nothing dropped");
        }
        let frames = self.dropped_frames;
        write!(
            f,
            "dropped {frames} invalid frame{} and {} bytes ",
            if frames == 1 { "" } else { "s" },
            self.dropped_bytes
        )?;
        match self.after_offset {
            Some(seq) => write!(f, "after offset {seq}"),
            None => f.write_str("at the start of the log"),
        }
    }
}

/// The `.seg` and `.idx` files of a log directory, by base.
pub(crate) fn list(storage: &dyn Storage, dir: &Path) -> Result<(BTreeSet<u64>, BTreeSet<u64>)> {
    let names = storage
        .list_dir(dir)
        .context(|| format!("list {}", dir.display()))?;
    let (mut segments, mut indexes) = (BTreeSet::new(), BTreeSet::new());
    for name in names {
        let Some((stem, ext)) = name.split_once('.') else {
            continue;
        };
        let Ok(base) = stem.parse::<u64>() else {
            continue;
        };
        if stem.len() != 20 {
            continue;
        }
        match ext {
            "seg" => segments.insert(base),
            "idx" => indexes.insert(base),
            _ => false,
        };
    }
    Ok((segments, indexes))
}

fn remove(storage: &dyn Storage, path: &Path, report: &mut RecoveryReport) -> Result<()> {
    match storage.remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(Error::io(format!("remove {}", path.display()), e))
        }
        _ => {
            report.removed_files.push(path.to_path_buf());
            Ok(())
        }
    }
}

/// The end (exclusive) of the last non-zero byte in `from..to`, if any.
fn last_non_zero(
    file: &dyn StorageFile,
    from: u64,
    to: u64,
    buf: &mut Vec<u8>,
) -> Result<Option<u64>> {
    let mut last = None;
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(RECOVERY_CHUNK as u64) as usize;
        buf.resize(n, 0);
        read_exact_at(file, buf, pos).map_err(|e| Error::io("read segment tail", e))?;
        if let Some(i) = buf.iter().rposition(|&b| b != 0) {
            last = Some(pos + i as u64 + 1);
        }
        pos += n as u64;
    }
    Ok(last)
}

/// Whether a segment that failed its header check holds nothing after the header.
fn holds_nothing(file: &dyn StorageFile, path: &Path) -> Result<bool> {
    let len = file.len().context(|| format!("stat {}", path.display()))?;
    let from = HEADER_LEN.min(len);
    let tail = last_non_zero(file, from, len, &mut Vec::new())?;
    Ok(tail.is_none())
}

struct Opener<'a> {
    storage: &'a dyn Storage,
    dir: &'a Path,
    kind: SegmentKind,
    options: LogOptions,
    report: RecoveryReport,
}

impl Opener<'_> {
    /// Reads and checks the header of the segment `base`; `Ok(None)` if it was never
    /// completely written.
    fn header(&self, file: &dyn StorageFile, path: &Path, base: u64) -> Result<Option<()>> {
        let len = file.len().context(|| format!("stat {}", path.display()))?;
        let mut bytes = [0u8; HEADER_LEN as usize];
        if len >= HEADER_LEN {
            read_exact_at(file, &mut bytes, 0).context(|| format!("read {}", path.display()))?;
        }
        match SegmentHeader::decode(&bytes) {
            Ok(h) if h.kind != self.kind => Err(Error::corrupt(
                path,
                12,
                format!("a {:?} segment in a {:?} log", h.kind, self.kind),
            )),
            Ok(h) if h.base != base => Err(Error::corrupt(
                path,
                16,
                format!("header says base {} but the file is named {base}", h.base),
            )),
            Ok(_) => Ok(Some(())),
            Err(HeaderError::Version(found)) => Err(Error::Format {
                found: found.to_string(),
                expected: FORMAT_VERSION,
            }),
            Err(HeaderError::Kind(code)) => Err(Error::corrupt(
                path,
                12,
                format!("unknown segment kind {code}"),
            )),
            Err(HeaderError::Blank | HeaderError::Damaged(_)) => Ok(None),
        }
    }

    /// Scans a whole segment; a bad frame is corruption. Returns the segment in memory.
    fn scan_sealed(&self, file: Arc<dyn StorageFile>, path: PathBuf, base: u64) -> Result<Segment> {
        let capacity = file.len().context(|| format!("stat {}", path.display()))?;
        let mut scanner = FrameScanner::new(file, HEADER_LEN, capacity, RECOVERY_CHUNK);
        let mut segment = Segment::new(base, path, capacity, None);
        loop {
            let frame = scanner
                .next_or_end()
                .context(|| format!("read {}", segment.path.display()))?;
            match frame {
                Ok(frame) => {
                    if let Some(reason) = self.offset_problem(frame.body, segment.end) {
                        return Err(Error::corrupt(&segment.path, frame.position, reason));
                    }
                    let seq = segment.end;
                    segment.note_record(seq, frame.position, self.options.index_interval_bytes);
                    segment.end += 1;
                    segment.end_pos = frame.next_position();
                }
                Err(ScanEnd::Clean { .. }) => return Ok(segment),
                Err(ScanEnd::Invalid { position, reason }) => {
                    return Err(Error::corrupt(
                        &segment.path,
                        position,
                        format!("{reason} in a sealed segment"),
                    ))
                }
            }
        }
    }

    fn offset_problem(&self, body: &[u8], expected: u64) -> Option<String> {
        if !self.kind.has_offsets() {
            return None;
        }
        match peek_offset(body) {
            Some(offset) if offset == expected => None,
            found => Some(format!(
                "record holds offset {found:?} where {expected} was expected"
            )),
        }
    }

    /// A sealed segment, from its index or, if that is missing or damaged, by scanning (the
    /// index is then rewritten).
    fn sealed(&mut self, file: Arc<dyn StorageFile>, path: PathBuf, base: u64) -> Result<Segment> {
        let capacity = file.len().context(|| format!("stat {}", path.display()))?;
        let idx = index_path(self.dir, base);
        let index = match self.storage.open(&idx, false) {
            Ok(f) => read_all(f.as_ref())
                .ok()
                .and_then(|bytes| SparseIndex::decode(&bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(format!("open {}", idx.display()), e)),
        };
        let plausible = |ix: &SparseIndex| {
            let first_ok = match ix.entries.first() {
                Some(e) => e.seq == base && u64::from(e.position) == HEADER_LEN,
                None => ix.end_seq == base && u64::from(ix.end_position) == HEADER_LEN,
            };
            first_ok && ix.end_seq >= base && u64::from(ix.end_position) <= capacity
        };
        if let Some(ix) = index.filter(plausible) {
            let mut segment = Segment::new(base, path, capacity, None);
            segment.end = ix.end_seq;
            segment.end_pos = u64::from(ix.end_position);
            segment.index = ix.entries;
            return Ok(segment);
        }
        let segment = self.scan_sealed(file, path, base)?;
        write_whole_file(self.storage, &idx, &segment.sparse_index().encode())?;
        tracing::warn!(index = %idx.display(), "rebuilt a missing or damaged segment index");
        self.report.rebuilt_indexes.push(idx);
        Ok(segment)
    }

    /// The active segment: scanned, its tail after the last valid record zeroed.
    fn active(&mut self, file: Arc<dyn StorageFile>, path: PathBuf, base: u64) -> Result<Segment> {
        let at = |what: &str| format!("{what} {}", path.display());
        let mut capacity = file.len().context(|| at("stat"))?;
        if capacity < self.options.segment_size {
            // Preallocation did not finish before a crash: finish it.
            file.set_len(self.options.segment_size)
                .context(|| at("preallocate"))?;
            file.sync_all().context(|| at("fsync"))?;
            capacity = self.options.segment_size;
        }
        let mut scanner = FrameScanner::new(file.clone(), HEADER_LEN, capacity, RECOVERY_CHUNK);
        let mut segment = Segment::new(base, path.clone(), capacity, Some(file.clone()));
        let invalid = loop {
            match scanner.next_or_end().context(|| at("read"))? {
                Ok(frame) => {
                    if let Some(reason) = self.offset_problem(frame.body, segment.end) {
                        break Some(reason);
                    }
                    let seq = segment.end;
                    segment.note_record(seq, frame.position, self.options.index_interval_bytes);
                    segment.end += 1;
                    segment.end_pos = frame.next_position();
                }
                Err(ScanEnd::Clean { .. }) => break None,
                Err(ScanEnd::Invalid { reason, .. }) => break Some(reason),
            }
        };
        let mut buf = scanner.into_buffer();
        let from = segment.end_pos;
        if let Some(dirty_end) = last_non_zero(file.as_ref(), from, capacity, &mut buf)? {
            // Decide before changing anything: valid records after the bad frame mean the
            // log is damaged in the middle, not torn at its end.
            if let Some(later) = self.later_records(file.as_ref(), from, dirty_end, segment.end)? {
                let what = invalid
                    .clone()
                    .unwrap_or_else(|| "an end of records (zeros)".into());
                return Err(Error::corrupt(
                    &path,
                    from,
                    format!(
                        "{what} followed by valid records from byte {} ({}); truncating here would \
                         lose {}. Nothing was changed: stop, copy the data directory aside, and \
                         see \"Damage on disk\" in docs/durability.md for how to salvage it",
                        later.position,
                        later.describe(),
                        later.lost(self.kind, segment.end),
                    ),
                ));
            }
            let zeros = vec![0u8; RECOVERY_CHUNK];
            let mut pos = from;
            while pos < dirty_end {
                let n = (dirty_end - pos).min(RECOVERY_CHUNK as u64) as usize;
                file.write_at(&zeros[..n], pos)
                    .context(|| at("zero the tail of"))?;
                pos += n as u64;
            }
            file.sync_data().context(|| at("fdatasync"))?;
            let reason = invalid.unwrap_or_else(|| "bytes after the end of the records".into());
            self.report.dropped_frames += 1;
            self.report.dropped_bytes += dirty_end - from;
            self.report.after_offset = segment.end.checked_sub(1);
            self.report.truncated_at = Some((path, from, reason));
        }
        Ok(segment)
    }
}

/// Valid records found after an invalid frame or an early end of records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LaterRecords {
    /// Byte position of the first of them.
    pub position: u64,
    /// How many follow one another from there.
    pub count: u64,
    /// Offsets of the first and last of them (topic logs and DLQs).
    pub offsets: Option<(u64, u64)>,
}

impl LaterRecords {
    fn describe(&self) -> String {
        match self.offsets {
            Some((first, last)) => format!("{} records, offsets {first} to {last}", self.count),
            None => format!("{} records", self.count),
        }
    }

    /// What truncating at the bad frame (whose record would have sequence `expected`) loses.
    fn lost(&self, kind: SegmentKind, expected: u64) -> String {
        match (kind.has_offsets(), self.offsets) {
            (true, Some((_, last))) => format!("offsets {expected} to {last}"),
            _ => format!("{} or more journal records", self.count),
        }
    }
}

/// Whether `body` looks like a record this log's kind holds (the cheap test before a CRC).
fn plausible_body(kind: SegmentKind, body: &[u8], expected: u64) -> bool {
    match kind {
        SegmentKind::TopicLog | SegmentKind::Dlq => {
            peek_offset(body).is_some_and(|offset| offset >= expected)
        }
        // Journal record types: a subscription's 16 to 23, the keyed store's 40 and 41 (the
        // CRC decides).
        SegmentKind::Journal => body
            .first()
            .is_some_and(|t| (16..=23).contains(t) || (40..=41).contains(t)),
    }
}

/// Searches `bytes` (which start at file position `base`) from index `from` for a valid
/// frame of `kind`; returns its index and length.
pub(crate) fn find_frame(
    kind: SegmentKind,
    bytes: &[u8],
    from: usize,
    expected: u64,
) -> Option<(usize, usize)> {
    (from..bytes.len()).find_map(|at| {
        // The cheap test first: a CRC only where the body could be a record of this log.
        let len = bytes.get(at..at + 4).map(crate::segment::le_u32)? as usize;
        let start = at + FRAME_HEADER_LEN as usize;
        let plausible = len != 0
            && len <= MAX_BODY_LEN
            && bytes
                .get(start..start + len)
                .is_some_and(|body| plausible_body(kind, body, expected));
        (plausible && frame_body(bytes, at).is_ok()).then(|| (at, FRAME_HEADER_LEN as usize + len))
    })
}

/// Where the first valid record after the bad frame at index `at` of `bytes` starts, if one
/// does (`expected` is the sequence the bad frame should have had).
///
/// A frame whose length field is sane is taken at its word: the search starts where it
/// ends, so frames inside its own payload (a forwarded record, a crafted payload) are never
/// taken for later records, and a torn last frame whose tail never reached the disk is the
/// end of the log. A flipped bit in the length field itself is caught too: a record with the
/// next sequence inside the claimed extent, at a place where the stored CRC matches the
/// bytes before it, shows the true length. A frame whose length is not sane (zeros, out of
/// range) says nothing: the search starts at the next byte.
pub(crate) fn next_valid_after(
    kind: SegmentKind,
    bytes: &[u8],
    at: usize,
    expected: u64,
) -> Option<usize> {
    let header = FRAME_HEADER_LEN as usize;
    if at + header > bytes.len() {
        return None;
    }
    let len = crate::segment::le_u32(&bytes[at..]) as usize;
    if len == 0 || len > MAX_BODY_LEN {
        return find_frame(kind, bytes, at + 1, expected).map(|(pos, _)| pos);
    }
    let claimed_end = at + header + len;
    if claimed_end < bytes.len() {
        if let Some((pos, _)) = find_frame(kind, bytes, claimed_end, expected) {
            return Some(pos);
        }
    }
    // A damaged length field: the next record starts inside the claimed extent, where the
    // stored CRC covers exactly the bytes before it.
    let crc = crate::segment::le_u32(&bytes[at + 4..]);
    let limit = claimed_end.min(bytes.len());
    let mut from = at + header + 1;
    while let Some((pos, _)) = find_frame(kind, bytes, from, expected).filter(|(p, _)| *p < limit) {
        let next_is_dense =
            !kind.has_offsets() || peek_offset(&bytes[pos + header..]) == Some(expected + 1);
        if next_is_dense && crc32c::crc32c(&bytes[at + header..pos]) == crc {
            return Some(pos);
        }
        from = pos + 1;
    }
    None
}

/// The valid records that follow one another from index `at` of `bytes`.
pub(crate) fn run_of_frames(
    kind: SegmentKind,
    bytes: &[u8],
    mut at: usize,
) -> (u64, Option<(u64, u64)>, usize) {
    let (mut count, mut first, mut last) = (0u64, None, None);
    while let Ok(body) = frame_body(bytes, at) {
        if kind.has_offsets() {
            let Some(offset) = peek_offset(body) else {
                break;
            };
            if last.is_some_and(|l: u64| offset != l + 1) {
                break;
            }
            first.get_or_insert(offset);
            last = Some(offset);
        }
        count += 1;
        at += FRAME_HEADER_LEN as usize + body.len();
    }
    (count, first.zip(last), at)
}

impl Opener<'_> {
    /// Valid records of this log in `from..to` of `file` after the first byte (the bad frame
    /// at `from` is not one): for topic logs and DLQs, records carrying the offset `expected`
    /// or a later one; for journals, any valid journal record.
    fn later_records(
        &self,
        file: &dyn StorageFile,
        from: u64,
        to: u64,
        expected: u64,
    ) -> Result<Option<LaterRecords>> {
        let len = usize::try_from(to - from)
            .map_err(|e| Error::io("read segment tail", std::io::Error::other(e)))?;
        let mut bytes = vec![0u8; len];
        read_exact_at(file, &mut bytes, from).map_err(|e| Error::io("read segment tail", e))?;
        // The bytes from `to` on are zeros, and a record may end in zeros (a journal record's
        // high offset bytes): the last frames are checked with them.
        let capacity = file.len().map_err(|e| Error::io("stat segment", e))?;
        let room = capacity
            .saturating_sub(to)
            .min(FRAME_HEADER_LEN + MAX_BODY_LEN as u64);
        bytes.resize(len + room as usize, 0);
        let Some(at) = next_valid_after(self.kind, &bytes, 0, expected) else {
            return Ok(None);
        };
        let (count, offsets, _) = run_of_frames(self.kind, &bytes, at);
        Ok(Some(LaterRecords {
            position: from + at as u64,
            count,
            offsets,
        }))
    }
}

impl SegmentedLog {
    /// Opens (creating it if needed) the log in `dir`, recovering it: see the module
    /// documentation of `log::recover` and `docs/engine-format.md`, "Recovery". The report
    /// says what was dropped or repaired; log it.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: impl Into<PathBuf>,
        kind: SegmentKind,
        options: LogOptions,
    ) -> Result<(Self, RecoveryReport)> {
        options.validate()?;
        let dir = dir.into();
        create_dir_durable(storage.as_ref(), &dir)
            .context(|| format!("create {}", dir.display()))?;
        let mut opener = Opener {
            storage: storage.as_ref(),
            dir: &dir,
            kind,
            options,
            report: RecoveryReport::default(),
        };
        let (bases, indexes) = list(storage.as_ref(), &dir)?;
        for base in indexes.difference(&bases) {
            remove(
                storage.as_ref(),
                &index_path(&dir, *base),
                &mut opener.report,
            )?;
        }
        let mut segments: Vec<Segment> = Vec::new();
        let mut fresh_base = 0;
        for (i, &base) in bases.iter().enumerate() {
            let last = i + 1 == bases.len();
            let path = segment_path(&dir, base);
            let file = storage
                .open(&path, false)
                .context(|| format!("open {}", path.display()))?;
            if opener.header(file.as_ref(), &path, base)?.is_none() {
                if last && holds_nothing(file.as_ref(), &path)? {
                    // A segment creation cut short by a crash.
                    remove(storage.as_ref(), &path, &mut opener.report)?;
                    remove(
                        storage.as_ref(),
                        &index_path(&dir, base),
                        &mut opener.report,
                    )?;
                    fresh_base = base;
                    continue;
                }
                return Err(Error::corrupt(&path, 0, "damaged segment header"));
            }
            if let Some(prev) = segments.last() {
                if prev.end != base {
                    return Err(Error::corrupt(
                        &path,
                        0,
                        format!(
                            "the segment starts at {base} but the previous one ends at {}",
                            prev.end
                        ),
                    ));
                }
            }
            let segment = if last {
                opener.active(file, path, base)?
            } else {
                opener.sealed(file, path, base)?
            };
            segments.push(segment);
        }
        if !opener.report.removed_files.is_empty() {
            storage
                .sync_dir(&dir)
                .context(|| format!("fsync directory {}", dir.display()))?;
        }
        if segments.is_empty() {
            let size = options.segment_size;
            segments.push(create_segment(
                storage.as_ref(),
                &dir,
                kind,
                fresh_base,
                size,
            )?);
        }
        let report = opener.report;
        if !report.is_clean() {
            tracing::warn!(dir = %dir.display(), "recovered log: {report}");
        }
        let committed_end = segments.last().map_or(0, |s| s.end);
        let log = SegmentedLog {
            storage,
            dir,
            kind,
            options,
            segments,
            committed_end,
            unsynced: SyncSet::default(),
            write_buf: Vec::new(),
            failed: None,
            cursor: Mutex::new(None),
            open_sealed: Mutex::new(std::collections::VecDeque::new()),
        };
        Ok((log, report))
    }
}
