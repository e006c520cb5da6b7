//! [`SegmentedLog`]: one directory of preallocated segments holding records addressed by a
//! dense `u64` sequence (the offset for topic logs and DLQs, the journal sequence for
//! journals). See `docs/engine-format.md`, "Segments" and "Recovery".
//!
//! Invariants:
//! - Segments are contiguous: each one's base is the previous one's end; the last one is the
//!   *active* segment, the only one written to, and is never removed.
//! - `first() <= end() <= written_end()`. Records in `end()..written_end()` were written but
//!   not committed (not synced yet, or not confirmed): readers never see them.
//! - A segment is sealed only after its records are synced, and its index is written only
//!   then, so an index never claims records that a crash could lose.
//! - Every read checks the frame's CRC (and, for topic logs and DLQs, that the stored offset
//!   equals the sequence); a mismatch is [`Error::Corrupt`], never skipped.
//! - After a write to the log failed, the log refuses further appends ([`Error::Poisoned`]):
//!   what is on disk is unknown until it is reopened (recovered).
//!
//! Writing: [`SegmentedLog::append`] encodes every frame of a batch into one buffer and
//! issues one `write_at` per segment touched; [`SegmentedLog::take_unsynced`] hands the files
//! to sync to the caller, which can sync them without holding the log;
//! [`SegmentedLog::mark_committed`] then makes the records readable.

mod read;
pub(crate) mod recover;
#[cfg(test)]
mod tests;

use std::fmt;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, IoContext, Result};
use crate::io::{Storage, StorageFile};
use crate::record::{peek_offset, stamp_offset};
use crate::segment::{
    frame_len, IndexEntry, SegmentHeader, SegmentKind, SparseIndex, FRAME_HEADER_LEN, HEADER_LEN,
    MAX_BODY_LEN,
};

pub use read::{LogIter, Readable};
pub use recover::RecoveryReport;

/// Default size of a segment file (64 MiB).
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// Default distance between sparse index entries (4 KiB of records).
pub const DEFAULT_INDEX_INTERVAL: u32 = 4096;
/// Sealed segments of one log whose files stay open (least recently read first out): catching
/// up over thousands of segments never holds thousands of file descriptors.
pub const MAX_OPEN_SEALED: usize = 4;
/// A write buffer grown larger than this by a big batch is released afterwards.
const KEEP_WRITE_BUFFER: usize = 4 * 1024 * 1024;

/// How a log lays out its segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogOptions {
    /// Size each new segment is preallocated to (default 64 MiB, at most 4 GiB).
    pub segment_size: u64,
    /// Bytes of records between two sparse index entries (default 4 KiB).
    pub index_interval_bytes: u32,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_size: DEFAULT_SEGMENT_SIZE,
            index_interval_bytes: DEFAULT_INDEX_INTERVAL,
        }
    }
}

impl LogOptions {
    /// Sets the segment size.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Sets the index interval.
    pub fn index_interval_bytes(mut self, bytes: u32) -> Self {
        self.index_interval_bytes = bytes;
        self
    }

    fn validate(&self) -> Result<()> {
        let smallest = HEADER_LEN + FRAME_HEADER_LEN + 1;
        if !(smallest..=u64::from(u32::MAX)).contains(&self.segment_size) {
            return Err(Error::Invalid {
                what: "segment size",
                reason: format!(
                    "{} bytes; must be {smallest} to {} bytes",
                    self.segment_size,
                    u32::MAX
                ),
            });
        }
        if self.index_interval_bytes == 0 {
            return Err(Error::Invalid {
                what: "index interval",
                reason: "must be at least 1 byte".into(),
            });
        }
        Ok(())
    }
}

/// What [`SegmentedLog::segments`] reports about one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SegmentInfo {
    /// Sequence of its first record.
    pub base: u64,
    /// Sequence after its last committed record.
    pub end: u64,
    /// Bytes used: header and frames (the file itself is preallocated larger).
    pub bytes: u64,
    /// Whether it is sealed (not the active segment): only sealed segments can be removed.
    pub sealed: bool,
}

/// What [`SegmentedLog::remove_segments_before`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Segments removed.
    pub segments: u64,
    /// Records they held.
    pub records: u64,
    /// Bytes they used (header and frames).
    pub bytes: u64,
}

/// Files written since their last sync, taken from a log by
/// [`SegmentedLog::take_unsynced`] so they can be synced without holding the log.
#[derive(Debug, Default)]
pub struct SyncSet {
    files: Vec<(PathBuf, Arc<dyn StorageFile>)>,
}

impl SyncSet {
    /// Whether there is nothing to sync.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// `fdatasync`s every file. On an error the caller must treat the records as lost and
    /// stop writing (poison): the kernel may have dropped the dirty pages.
    pub fn sync(&self) -> Result<()> {
        for (path, file) in &self.files {
            file.sync_data()
                .context(|| format!("fdatasync {}", path.display()))?;
        }
        Ok(())
    }
}

/// Most fdatasyncs [`sync_together`] runs at once.
const PARALLEL_SYNCS: usize = 4;

type SyncFile = (PathBuf, Arc<dyn StorageFile>);

fn sync_each<'a>(files: impl IntoIterator<Item = &'a SyncFile>) -> Result<()> {
    files.into_iter().try_for_each(|(path, file)| {
        file.sync_data()
            .context(|| format!("fdatasync {}", path.display()))
    })
}

/// Syncs every file of `sets`, each file once however many sets name it, up to
/// [`PARALLEL_SYNCS`] at once (the logs of one flush are separate files on the same disk,
/// whose flushes the device takes together: the caller waits for the slowest sync, not for
/// their sum). Every sync is waited for; the first error is returned, and the caller must
/// poison as after [`SyncSet::sync`]. The other syncs run on the process's sync helpers
/// ([`helpers`]) when one is idle, else on this thread.
pub fn sync_together(sets: &[SyncSet]) -> Result<()> {
    let mut files: Vec<&SyncFile> = Vec::new();
    for file in sets.iter().flat_map(|set| &set.files) {
        if !files.iter().any(|known| known.0 == file.0) {
            files.push(file);
        }
    }
    if files.len() <= 1 {
        return sync_each(files);
    }
    let mut groups: Vec<Vec<SyncFile>> = (0..PARALLEL_SYNCS.min(files.len()))
        .map(|g| {
            files
                .iter()
                .skip(g)
                .step_by(PARALLEL_SYNCS)
                .map(|&f| f.clone())
                .collect()
        })
        .collect();
    let own = groups.remove(0);
    let expected = groups.len();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut here = Vec::new();
    for group in groups {
        let tx = tx.clone();
        let job: helpers::Job = Box::new(move || {
            let outcome =
                catch_unwind(AssertUnwindSafe(|| sync_each(&group))).unwrap_or_else(|_| {
                    Err(Error::Poisoned {
                        cause: "a sync helper panicked".into(),
                    })
                });
            let _ = tx.send(outcome);
        });
        // No helper idle: run it here, after handing out the others.
        if let Err(job) = helpers::run(job) {
            here.push(job);
        }
    }
    drop(tx);
    let mut result = sync_each(&own);
    here.into_iter().for_each(|job| job());
    // Every job sends its outcome once; a job dropped unrun (a helper gone) sends none.
    let mut received = 0;
    for outcome in rx.iter() {
        result = result.and(outcome);
        received += 1;
    }
    if received < expected {
        result = result.and(Err(Error::Poisoned {
            cause: "a sync helper stopped before syncing".into(),
        }));
    }
    result
}

/// The process's sync helpers: [`PARALLEL_SYNCS`]` - 1` long-lived threads, started on first
/// use and shared by every engine (a thread per flush cost more than the sync it ran: its
/// start, stack and allocator state each time). A job goes only to an idle helper; when none
/// is idle, the caller syncs that group itself.
mod helpers {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::sync::{Arc, Mutex, OnceLock};

    pub(super) type Job = Box<dyn FnOnce() + Send>;

    struct Pool {
        jobs: Mutex<Sender<Job>>,
        /// Helpers waiting for a job: a job is only handed over when one is, so no sync
        /// ever queues behind another (another engine's, on another disk perhaps).
        idle: Arc<AtomicUsize>,
    }

    static POOL: OnceLock<Option<Pool>> = OnceLock::new();

    /// Hands `job` to an idle helper, or gives it back (none idle, or none could start).
    pub(super) fn run(job: Job) -> Result<(), Job> {
        let Some(pool) = POOL.get_or_init(start) else {
            return Err(job);
        };
        let claimed = pool
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if claimed.is_err() {
            return Err(job);
        }
        let sender = pool.jobs.lock().unwrap_or_else(|e| e.into_inner());
        sender.send(job).map_err(|returned| {
            pool.idle.fetch_add(1, Ordering::AcqRel);
            returned.0
        })
    }

    fn start() -> Option<Pool> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let idle = Arc::new(AtomicUsize::new(0));
        for _ in 1..super::PARALLEL_SYNCS {
            let (rx, idle) = (Arc::clone(&rx), Arc::clone(&idle));
            // Counted idle before it runs: a job handed over meanwhile waits in the channel
            // for it.
            idle.fetch_add(1, Ordering::AcqRel);
            let spawned = std::thread::Builder::new()
                .name("sluice-sync".into())
                .spawn({
                    let idle = Arc::clone(&idle);
                    move || serve(&rx, &idle)
                });
            if spawned.is_err() {
                idle.fetch_sub(1, Ordering::AcqRel);
            }
        }
        (idle.load(Ordering::Acquire) > 0).then(|| Pool {
            jobs: Mutex::new(tx),
            idle,
        })
    }

    fn serve(rx: &Mutex<Receiver<Job>>, idle: &AtomicUsize) {
        loop {
            let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                Ok(job) => job,
                Err(_) => return,
            };
            job();
            idle.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// One segment file, in memory.
#[derive(Debug)]
struct Segment {
    base: u64,
    /// Sequence after the last record written.
    end: u64,
    /// Byte position after the last frame written.
    end_pos: u64,
    /// The file's (preallocated) length.
    capacity: u64,
    index: Vec<IndexEntry>,
    path: PathBuf,
    /// Opened on first use for sealed segments (a long log would otherwise hold many files).
    file: Mutex<Option<Arc<dyn StorageFile>>>,
}

impl Segment {
    fn new(base: u64, path: PathBuf, capacity: u64, file: Option<Arc<dyn StorageFile>>) -> Self {
        Self {
            base,
            end: base,
            end_pos: HEADER_LEN,
            capacity,
            index: Vec::new(),
            path,
            file: Mutex::new(file),
        }
    }

    fn file(&self, storage: &dyn Storage) -> Result<Arc<dyn StorageFile>> {
        let mut slot = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = &*slot {
            return Ok(file.clone());
        }
        let file = storage
            .open(&self.path, false)
            .context(|| format!("open {}", self.path.display()))?;
        *slot = Some(file.clone());
        Ok(file)
    }

    /// Adds an index entry for the record `seq` at `position` if it is `interval` bytes past
    /// the previous entry (the first record always gets one).
    fn note_record(&mut self, seq: u64, position: u64, interval: u32) {
        let due = self
            .index
            .last()
            .is_none_or(|e| position >= u64::from(e.position) + u64::from(interval));
        if due {
            self.index.push(IndexEntry {
                seq,
                position: position as u32,
            });
        }
    }

    fn sparse_index(&self) -> SparseIndex {
        SparseIndex {
            entries: self.index.clone(),
            end_seq: self.end,
            end_position: self.end_pos as u32,
        }
    }
}

/// The path of the segment with this base.
pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

/// The path of the sparse index of the segment with this base.
pub fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.idx"))
}

/// Creates a segment: header, preallocation, `sync_all`, then the directory entry synced.
fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    kind: SegmentKind,
    base: u64,
    size: u64,
) -> Result<Segment> {
    let path = segment_path(dir, base);
    let at = |what: &str| format!("{what} {}", path.display());
    let file = storage.open(&path, true).context(|| at("create"))?;
    // A leftover of an unfinished creation may hold bytes: start from zeros.
    file.set_len(0).context(|| at("truncate"))?;
    let header = SegmentHeader { kind, base }.encode();
    file.write_at(&header, 0)
        .context(|| at("write header of"))?;
    file.set_len(size).context(|| at("preallocate"))?;
    file.sync_all().context(|| at("fsync"))?;
    storage
        .sync_dir(dir)
        .context(|| format!("fsync directory {}", dir.display()))?;
    Ok(Segment::new(base, path, size, Some(file)))
}

/// Replaces the contents of `path` (no rename: used for index files, which are checked by
/// CRC and rebuilt when damaged).
fn write_whole_file(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> Result<()> {
    let at = |what: &str| format!("{what} {}", path.display());
    let file = storage.open(path, true).context(|| at("create"))?;
    file.set_len(0).context(|| at("truncate"))?;
    file.write_at(bytes, 0).context(|| at("write"))?;
    file.sync_all().context(|| at("fsync"))
}

/// A segmented, append-only log of records. See the module documentation.
pub struct SegmentedLog {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    kind: SegmentKind,
    options: LogOptions,
    /// Never empty; the last one is the active segment.
    segments: Vec<Segment>,
    committed_end: u64,
    unsynced: SyncSet,
    write_buf: Vec<u8>,
    /// Set when a write failed: the log refuses appends from then on.
    failed: Option<String>,
    /// The position after the last [`SegmentedLog::read`], so sequential reads are O(1).
    cursor: Mutex<Option<read::Cursor>>,
    /// Bases of the sealed segments whose file is open, least recently used first (at most
    /// [`MAX_OPEN_SEALED`]).
    open_sealed: Mutex<std::collections::VecDeque<u64>>,
}

impl fmt::Debug for SegmentedLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentedLog")
            .field("dir", &self.dir)
            .field("kind", &self.kind)
            .field("first", &self.first())
            .field("end", &self.committed_end)
            .field("written_end", &self.written_end())
            .field("segments", &self.segments.len())
            .field("failed", &self.failed)
            .finish()
    }
}

impl SegmentedLog {
    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the log holds.
    pub fn kind(&self) -> SegmentKind {
        self.kind
    }

    /// Sequence of the first record still stored (records before it were removed by
    /// retention).
    pub fn first(&self) -> u64 {
        self.segments[0].base
    }

    /// Sequence after the last committed record: records `first()..end()` are readable.
    pub fn end(&self) -> u64 {
        self.committed_end
    }

    /// Sequence after the last record written (committed or not).
    pub fn written_end(&self) -> u64 {
        self.active().end
    }

    /// Largest body this log accepts: 16 MiB, or less if a segment is smaller.
    pub fn max_body_len(&self) -> usize {
        let room = self.options.segment_size - HEADER_LEN - FRAME_HEADER_LEN;
        MAX_BODY_LEN.min(usize::try_from(room).unwrap_or(usize::MAX))
    }

    /// The open file of `segment` (opened on first use). Sealed segments' files are kept
    /// open for at most [`MAX_OPEN_SEALED`] of them, the least recently used closed first (a
    /// reader holding one keeps it open until it is done).
    fn file_of(&self, segment: &Segment) -> Result<Arc<dyn StorageFile>> {
        let file = segment.file(self.storage.as_ref())?;
        if !std::ptr::eq(segment, self.active()) {
            self.note_open_sealed(segment.base);
        }
        Ok(file)
    }

    fn note_open_sealed(&self, base: u64) {
        let mut lru = self.open_sealed.lock().unwrap_or_else(|e| e.into_inner());
        if lru.back() == Some(&base) {
            return;
        }
        lru.retain(|b| *b != base);
        lru.push_back(base);
        while lru.len() > MAX_OPEN_SEALED {
            let Some(evict) = lru.pop_front() else { break };
            let at = self.segments.partition_point(|s| s.base < evict);
            if let Some(s) = self.segments.get(at).filter(|s| s.base == evict) {
                if !std::ptr::eq(s, self.active()) {
                    *s.file.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
            }
        }
    }

    /// How many segment files the log holds open (the active one and the sealed ones read
    /// lately).
    pub fn open_files(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| s.file.lock().unwrap_or_else(|e| e.into_inner()).is_some())
            .count()
    }

    fn active(&self) -> &Segment {
        self.segments.last().expect("a log always has a segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has a segment")
    }

    /// Appends records; returns their sequences. One `write_at` per segment touched; rolls to
    /// a new segment when the next frame does not fit. Does **not** sync: the records become
    /// readable after [`SegmentedLog::mark_committed`] (once synced, with
    /// [`SegmentedLog::take_unsynced`], for `sync = always`).
    ///
    /// For topic logs and DLQs every body must be a message record; the log stamps each one's
    /// offset field with its sequence, so callers encode them with any offset.
    ///
    /// A body that is empty, too large, or not a message record where one is required fails
    /// the call before anything is written. A failed write or roll poisons the log.
    pub fn append<B: AsRef<[u8]>>(&mut self, bodies: &[B]) -> Result<Range<u64>> {
        if let Some(cause) = &self.failed {
            return Err(Error::Poisoned {
                cause: cause.clone(),
            });
        }
        let max = self.max_body_len();
        for body in bodies {
            let body = body.as_ref();
            if body.is_empty() || body.len() > max {
                return Err(Error::RecordSize {
                    len: body.len(),
                    max,
                });
            }
            if self.kind.has_offsets() && peek_offset(body).is_none() {
                return Err(Error::Invalid {
                    what: "record",
                    reason: "a topic log or DLQ holds only message records (type 1)".into(),
                });
            }
        }
        let start = self.written_end();
        let mut buf = std::mem::take(&mut self.write_buf);
        let written = self.write_frames(bodies, &mut buf);
        buf.clear();
        if buf.capacity() > KEEP_WRITE_BUFFER {
            buf = Vec::new();
        }
        self.write_buf = buf;
        if let Err(e) = written {
            self.failed = Some(e.to_string());
            return Err(e);
        }
        Ok(start..self.written_end())
    }

    fn write_frames<B: AsRef<[u8]>>(&mut self, bodies: &[B], buf: &mut Vec<u8>) -> Result<()> {
        let interval = self.options.index_interval_bytes;
        let has_offsets = self.kind.has_offsets();
        buf.clear();
        let mut buf_start = self.active().end_pos;
        for body in bodies {
            let body = body.as_ref();
            let len = frame_len(body.len());
            if buf_start + buf.len() as u64 + len > self.active().capacity {
                self.write_active(buf, buf_start)?;
                buf.clear();
                self.roll()?;
                buf_start = self.active().end_pos;
            }
            let segment = self.active_mut();
            let (seq, position) = (segment.end, buf_start + buf.len() as u64);
            segment.note_record(seq, position, interval);
            let at = buf.len();
            buf.extend_from_slice(&[0; FRAME_HEADER_LEN as usize]);
            buf.extend_from_slice(body);
            let frame_body = &mut buf[at + FRAME_HEADER_LEN as usize..];
            if has_offsets {
                stamp_offset(frame_body, seq);
            }
            let crc = crc32c::crc32c(frame_body);
            buf[at..at + 4].copy_from_slice(&(body.len() as u32).to_le_bytes());
            buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
            segment.end += 1;
            segment.end_pos = position + len;
        }
        self.write_active(buf, buf_start)
    }

    /// One `write_at` of the buffered frames into the active segment.
    fn write_active(&mut self, buf: &[u8], pos: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let segment = self.active();
        let file = self.file_of(segment)?;
        file.write_at(buf, pos)
            .context(|| format!("write {}", segment.path.display()))?;
        if !self.unsynced.files.iter().any(|(p, _)| *p == segment.path) {
            let path = segment.path.clone();
            self.unsynced.files.push((path, file));
        }
        Ok(())
    }

    /// Seals the active segment and starts the next one: the old segment's records are
    /// synced, then its index written and synced, then the new segment created (header,
    /// preallocation, `sync_all`, directory sync).
    fn roll(&mut self) -> Result<()> {
        let storage = self.storage.clone();
        let old = self.active();
        let old_path = old.path.clone();
        self.file_of(old)?
            .sync_data()
            .context(|| format!("fdatasync {}", old_path.display()))?;
        let index = old.sparse_index();
        let (old_base, base) = (old.base, old.end);
        self.unsynced.files.retain(|(p, _)| *p != old_path);
        write_whole_file(
            storage.as_ref(),
            &index_path(&self.dir, old_base),
            &index.encode(),
        )?;
        let segment = create_segment(
            storage.as_ref(),
            &self.dir,
            self.kind,
            base,
            self.options.segment_size,
        )?;
        tracing::debug!(dir = %self.dir.display(), base, "rolled to a new segment");
        self.segments.push(segment);
        // The old active segment is sealed now: its open file counts toward the bound.
        self.note_open_sealed(old_base);
        Ok(())
    }

    /// Takes the files written since the last call, to sync them (possibly without holding
    /// the log). If syncing them fails the caller must stop writing to this log.
    pub fn take_unsynced(&mut self) -> SyncSet {
        std::mem::take(&mut self.unsynced)
    }

    /// Syncs the files written since the last sync. A failure poisons the log.
    pub fn sync(&mut self) -> Result<()> {
        let result = self.take_unsynced().sync();
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
        }
        result
    }

    /// Makes records before `end` readable (clamped to what was written). Call it once they
    /// are as durable as the sync mode promises.
    pub fn mark_committed(&mut self, end: u64) {
        let end = end.min(self.written_end());
        self.committed_end = self.committed_end.max(end);
    }

    /// Syncs what was written and commits it: [`SegmentedLog::sync`], then
    /// [`SegmentedLog::mark_committed`] up to [`SegmentedLog::written_end`]. For callers that
    /// write without the group committer.
    pub fn commit(&mut self) -> Result<()> {
        self.sync()?;
        self.mark_committed(self.written_end());
        Ok(())
    }

    /// One entry per segment, oldest first. For retention by age, a segment's newest
    /// publish time is one read away: [`crate::record::decode_meta`] of
    /// `read(info.end - 1)` (an index lookup and one short scan, no full read).
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let last = self.segments.len() - 1;
        self.segments
            .iter()
            .enumerate()
            .map(|(i, s)| SegmentInfo {
                base: s.base,
                end: s.end.min(self.committed_end),
                bytes: s.end_pos,
                sealed: i < last,
            })
            .collect()
    }

    /// Bytes used by all segments (headers and frames; the files are preallocated larger).
    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.end_pos).sum()
    }

    /// Retention: removes every sealed segment whose records all lie before `seq` (and are
    /// committed), oldest first, each removal made durable before the next so a crash leaves
    /// the log contiguous. The active segment is never removed.
    pub fn remove_segments_before(&mut self, seq: u64) -> Result<Removed> {
        let mut removed = Removed::default();
        let limit = seq.min(self.committed_end);
        while self.segments.len() > 1 && self.segments[0].end <= limit {
            // Unlinked first, forgotten after: a failed removal leaves the log as it was.
            let segment = &self.segments[0];
            self.storage
                .remove_file(&segment.path)
                .context(|| format!("remove {}", segment.path.display()))?;
            let segment = self.segments.remove(0);
            *self.cursor.lock().unwrap_or_else(|e| e.into_inner()) = None;
            let index = index_path(&self.dir, segment.base);
            match self.storage.remove_file(&index) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(format!("remove {}", index.display()), e))
                }
                _ => {}
            }
            self.storage
                .sync_dir(&self.dir)
                .context(|| format!("fsync directory {}", self.dir.display()))?;
            removed.segments += 1;
            removed.records += segment.end - segment.base;
            removed.bytes += segment.end_pos;
        }
        Ok(removed)
    }
}

/// Compile-time check: a log can be shared between threads behind a mutex.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SegmentedLog>();
    assert_send_sync::<SyncSet>();
};
