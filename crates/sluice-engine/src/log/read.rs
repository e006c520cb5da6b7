//! Reading a [`SegmentedLog`]: a cursor (a frame scanner positioned in one segment) found
//! through the sparse index, reused by sequential reads.
//!
//! Invariants: only committed records (`first()..end()`) are returned; every body returned
//! passed its CRC check and, for topic logs and DLQs, carries its own sequence as offset.

use std::path::Path;

use super::{Segment, SegmentedLog};
use crate::error::{Error, IoContext, Result};
use crate::record::peek_offset;
use crate::segment::{FrameScanner, IndexEntry, ScanEnd, SparseIndex, HEADER_LEN};

/// Bytes read at a time when reading records.
const READ_CHUNK: usize = 64 * 1024;

/// A scanner positioned at record `next_seq` of the segment based at `base`.
#[derive(Debug)]
pub(super) struct Cursor {
    base: u64,
    next_seq: u64,
    scanner: FrameScanner,
}

impl SegmentedLog {
    fn segment_index(&self, seq: u64) -> usize {
        self.segments
            .partition_point(|s| s.base <= seq)
            .saturating_sub(1)
    }

    fn cursor_at(&self, segment: &Segment, entry: IndexEntry, buf: Vec<u8>) -> Result<Cursor> {
        let file = self.file_of(segment)?;
        Ok(Cursor {
            base: segment.base,
            next_seq: entry.seq,
            scanner: FrameScanner::with_buffer(
                file,
                u64::from(entry.position),
                segment.end_pos,
                READ_CHUNK,
                buf,
            ),
        })
    }

    /// A cursor at `seq` (`first() <= seq < written_end()`), reusing `old` when it is in the
    /// same segment, at or before `seq`, and no further back than the index would start.
    fn seek(&self, old: Option<Cursor>, seq: u64) -> Result<Cursor> {
        let segment = &self.segments[self.segment_index(seq)];
        let floor = floor_entry(segment, seq);
        match old {
            Some(c) if c.base == segment.base && (floor.seq..=seq).contains(&c.next_seq) => {
                self.skip_to(c, seq)
            }
            other => {
                let buf = other.map(|c| c.scanner.into_buffer()).unwrap_or_default();
                self.skip_to(self.cursor_at(segment, floor, buf)?, seq)
            }
        }
    }

    fn skip_to(&self, mut cursor: Cursor, seq: u64) -> Result<Cursor> {
        while cursor.next_seq < seq {
            self.next_record(&mut cursor)?;
        }
        Ok(cursor)
    }

    /// The record at the cursor, which must be in `first()..written_end()`; moves to the
    /// next segment when the cursor's is exhausted.
    fn next_record<'c>(&self, cursor: &'c mut Cursor) -> Result<(u64, &'c [u8])> {
        let segment = &self.segments[self.segment_index(cursor.next_seq)];
        if segment.base != cursor.base {
            // The cursor's segment is exhausted: continue in the next one, same buffer.
            let buf = cursor.scanner.take_buffer();
            let floor = floor_entry(segment, cursor.next_seq);
            let fresh = self.cursor_at(segment, floor, buf)?;
            *cursor = self.skip_to(fresh, cursor.next_seq)?;
        }
        cursor.scanner.set_limit(segment.end_pos);
        let seq = cursor.next_seq;
        let path = &segment.path;
        let frame = cursor
            .scanner
            .next_or_end()
            .context(|| format!("read {}", path.display()))?;
        match frame {
            Ok(frame) => {
                if self.kind.has_offsets() && peek_offset(frame.body) != Some(seq) {
                    return Err(offset_mismatch(path, frame.position, seq, frame.body));
                }
                cursor.next_seq += 1;
                Ok((seq, frame.body))
            }
            Err(end) => Err(missing_record(path, seq, end)),
        }
    }

    /// The body of record `seq`, or `None` if it is not (or no longer, or not yet) readable.
    /// Sequential calls continue where the previous one stopped (no index search, usually no
    /// read from the file).
    pub fn read(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        if seq < self.first() || seq >= self.committed_end {
            return Ok(None);
        }
        let mut slot = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let mut cursor = self.seek(slot.take(), seq)?;
        let body = self.next_record(&mut cursor)?.1.to_vec();
        *slot = Some(cursor);
        Ok(Some(body))
    }

    /// Reads the records at `offsets` (ascending; sequential ones continue one scan) in one
    /// pass: `f` gets each offset and what is there, and returns `false` to stop. Saves the
    /// per-record seek and copy of [`SegmentedLog::read`] for a batch of reads (a receive's
    /// read-ahead). Fails at the first record that cannot be read; what `f` got before stays.
    pub fn read_each(
        &self,
        offsets: &[u64],
        mut f: impl FnMut(u64, Readable<'_>) -> bool,
    ) -> Result<()> {
        let mut slot = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let mut cursor = slot.take();
        for &seq in offsets {
            let go_on = if seq < self.first() {
                f(seq, Readable::Removed)
            } else if seq >= self.committed_end {
                f(seq, Readable::NotCommitted)
            } else {
                let mut at = self.seek(cursor.take(), seq)?;
                let go_on = f(seq, Readable::Body(self.next_record(&mut at)?.1));
                cursor = Some(at);
                go_on
            };
            if !go_on {
                break;
            }
        }
        *slot = cursor;
        Ok(())
    }

    /// Bytes of the records from `seq` to the end written (frames only, no segment
    /// headers), counted from the sparse index entry at or before `seq`: exact up to one
    /// index interval (4 KiB by default) too many. No I/O: for backlog bounds, on every
    /// publish.
    pub fn bytes_from(&self, seq: u64) -> u64 {
        let seq = seq.max(self.first());
        if seq >= self.written_end() {
            return 0;
        }
        let at = self.segment_index(seq);
        let segment = &self.segments[at];
        let start = u64::from(floor_entry(segment, seq).position);
        let later: u64 = self.segments[at + 1..]
            .iter()
            .map(|s| s.end_pos - HEADER_LEN)
            .sum();
        segment.end_pos.saturating_sub(start) + later
    }

    /// The committed records from `seq` on (from `first()` if `seq` is before it), in order,
    /// up to the end committed when the iterator was made. Reads in large chunks.
    pub fn iter_from(&self, seq: u64) -> LogIter<'_> {
        LogIter {
            log: self,
            next: seq.max(self.first()),
            end: self.committed_end,
            cursor: None,
            failed: false,
        }
    }
}

/// What [`SegmentedLog::read_each`] found at one offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readable<'a> {
    /// The record's body (checked against its CRC).
    Body(&'a [u8]),
    /// Before the log's first record: removed by retention.
    Removed,
    /// Not committed yet.
    NotCommitted,
}

/// Where to start scanning for `seq` in `segment`: the last index entry at or before it.
fn floor_entry(segment: &Segment, seq: u64) -> IndexEntry {
    SparseIndex::floor(&segment.index, seq).unwrap_or(IndexEntry {
        seq: segment.base,
        position: HEADER_LEN as u32,
    })
}

fn offset_mismatch(path: &Path, position: u64, seq: u64, body: &[u8]) -> Error {
    Error::corrupt(
        path,
        position,
        format!(
            "record {seq} holds offset {:?}; the records are not dense",
            peek_offset(body)
        ),
    )
}

fn missing_record(path: &Path, seq: u64, end: ScanEnd) -> Error {
    match end {
        ScanEnd::Invalid { position, reason } => {
            Error::corrupt(path, position, format!("record {seq}: {reason}"))
        }
        ScanEnd::Clean { position } => Error::corrupt(
            path,
            position,
            format!("record {seq} is missing: the records end before the index says"),
        ),
    }
}

/// The committed records of a log from a sequence on; see [`SegmentedLog::iter_from`].
///
/// As an [`Iterator`] it yields owned bodies; [`LogIter::next_body`] lends them without a
/// copy. After an error it yields nothing more.
#[derive(Debug)]
pub struct LogIter<'a> {
    log: &'a SegmentedLog,
    next: u64,
    end: u64,
    cursor: Option<Cursor>,
    failed: bool,
}

impl LogIter<'_> {
    /// The next record, borrowed from the iterator's read buffer.
    pub fn next_body(&mut self) -> Result<Option<(u64, &[u8])>> {
        if self.failed || self.next >= self.end {
            return Ok(None);
        }
        let result = match self.cursor.take() {
            Some(cursor) => Ok(cursor),
            None => self.log.seek(None, self.next),
        };
        let cursor = match result {
            Ok(cursor) => self.cursor.insert(cursor),
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        match self.log.next_record(cursor) {
            Ok(record) => {
                self.next += 1;
                Ok(Some(record))
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }
}

impl Iterator for LogIter<'_> {
    type Item = Result<(u64, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_body()
            .map(|record| record.map(|(seq, body)| (seq, body.to_vec())))
            .transpose()
    }
}
