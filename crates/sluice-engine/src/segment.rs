//! Segment files: the 32-byte header, record framing, the frame scanner and the sparse index
//! file (`docs/engine-format.md`, "Segments").
//!
//! Invariants:
//! - A segment is a header followed by frames from byte [`HEADER_LEN`]; the bytes after the
//!   last frame are zero (the preallocated tail), so a frame length of 0 ends the records.
//! - A frame is `u32 len`, `u32 crc32c(body)`, `body`, with `1 <= len <= MAX_BODY_LEN`; the
//!   scanner yields a body only after its length and CRC were checked, and stops for good at
//!   the first frame that is not valid, saying why ([`ScanEnd`]).
//! - The index file is trusted only if its CRC matches; a position in it is the start of a
//!   frame in its segment.

use std::io;
use std::sync::Arc;

use crate::io::{read_exact_at, StorageFile};

/// Length of the segment header; the first frame starts here.
pub const HEADER_LEN: u64 = 32;
/// The segment magic.
pub const MAGIC: [u8; 8] = *b"SLCSEG01";
/// The format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Length of a frame's `len` and CRC fields.
pub const FRAME_HEADER_LEN: u64 = 8;
/// Largest record body (16 MiB).
pub const MAX_BODY_LEN: usize = 16 * 1024 * 1024;

/// What a segment holds (header field `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    /// A topic log: message records, sequence = topic offset.
    TopicLog,
    /// A subscription's state journal: journal records, sequence = journal sequence.
    Journal,
    /// A dead-letter log: message records, sequence = DLQ offset.
    Dlq,
}

impl SegmentKind {
    /// The header code: 1 topic log, 2 journal, 3 DLQ.
    pub fn code(self) -> u32 {
        match self {
            Self::TopicLog => 1,
            Self::Journal => 2,
            Self::Dlq => 3,
        }
    }

    /// The kind with this header code.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Self::TopicLog),
            2 => Some(Self::Journal),
            3 => Some(Self::Dlq),
            _ => None,
        }
    }

    /// Whether records are message records whose stored offset must equal their sequence.
    pub fn has_offsets(self) -> bool {
        matches!(self, Self::TopicLog | Self::Dlq)
    }
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// What the segment holds.
    pub kind: SegmentKind,
    /// Sequence of its first record.
    pub base: u64,
}

/// Why 32 bytes are not a valid segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// All zero: the header was never written (a segment whose creation did not finish).
    Blank,
    /// Wrong magic or CRC: a torn header write or a stray file.
    Damaged(&'static str),
    /// A valid header of another format version.
    Version(u32),
    /// A valid header with an unknown kind.
    Kind(u32),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Blank => f.write_str("the segment header was never written"),
            Self::Damaged(why) => write!(f, "segment header damaged: {why}"),
            Self::Version(v) => write!(f, "segment header of format {v}"),
            Self::Kind(k) => write!(f, "segment header of unknown kind {k}"),
        }
    }
}

impl SegmentHeader {
    /// The 32 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut h = [0u8; HEADER_LEN as usize];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.kind.code().to_le_bytes());
        h[16..24].copy_from_slice(&self.base.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..24]);
        h[24..28].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and checks a header.
    pub fn decode(h: &[u8; HEADER_LEN as usize]) -> Result<Self, HeaderError> {
        if h.iter().all(|&b| b == 0) {
            return Err(HeaderError::Blank);
        }
        if h[0..6] != MAGIC[0..6] {
            return Err(HeaderError::Damaged("wrong magic"));
        }
        if crc32c::crc32c(&h[0..24]) != le_u32(&h[24..28]) {
            return Err(HeaderError::Damaged("CRC mismatch"));
        }
        let version = le_u32(&h[8..12]);
        if version != FORMAT_VERSION || h[0..8] != MAGIC {
            return Err(HeaderError::Version(version));
        }
        let code = le_u32(&h[12..16]);
        let kind = SegmentKind::from_code(code).ok_or(HeaderError::Kind(code))?;
        Ok(Self {
            kind,
            base: le_u64(&h[16..24]),
        })
    }
}

pub(crate) fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

pub(crate) fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Bytes a frame of a `body_len`-byte body takes.
pub fn frame_len(body_len: usize) -> u64 {
    FRAME_HEADER_LEN + body_len as u64
}

/// Appends the frame of `body` (length, CRC32C, body) to `out`. The caller checks
/// `1 <= body.len() <= MAX_BODY_LEN`.
pub fn encode_frame(body: &[u8], out: &mut Vec<u8>) {
    debug_assert!(
        !body.is_empty() && body.len() <= MAX_BODY_LEN,
        "frame body length out of range"
    );
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// Why the bytes at a position are not a whole, valid frame ([`frame_body`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameFault {
    /// Fewer bytes than a frame header.
    Truncated,
    /// A `len` of 0: the end of the records (zeros).
    End,
    /// A `len` out of range, or running past the bytes.
    Length(usize),
    /// The body does not match its CRC.
    Crc,
}

impl std::fmt::Display for FrameFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameFault::Truncated => f.write_str("the file ends inside a frame header"),
            FrameFault::End => f.write_str("an end of records (zeros)"),
            FrameFault::Length(len) => write!(f, "frame length {len} out of range"),
            FrameFault::Crc => f.write_str("CRC mismatch"),
        }
    }
}

/// The body of the frame at `at` of `bytes` (a segment read into memory), if the frame is
/// whole and its CRC matches.
pub(crate) fn frame_body(bytes: &[u8], at: usize) -> Result<&[u8], FrameFault> {
    let header = FRAME_HEADER_LEN as usize;
    if at + header > bytes.len() {
        return Err(FrameFault::Truncated);
    }
    let len = le_u32(&bytes[at..]) as usize;
    if len == 0 {
        return Err(FrameFault::End);
    }
    if len > MAX_BODY_LEN || at + header + len > bytes.len() {
        return Err(FrameFault::Length(len));
    }
    let body = &bytes[at + header..at + header + len];
    if crc32c::crc32c(body) != le_u32(&bytes[at + 4..]) {
        return Err(FrameFault::Crc);
    }
    Ok(body)
}

/// Why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// An end marker (`len` 0) or the end of the scanned range: the records end here.
    Clean {
        /// Where the next frame would start.
        position: u64,
    },
    /// The frame at `position` is not valid.
    Invalid {
        /// Start of the invalid frame.
        position: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// A frame the scanner checked.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Byte position of the frame (its `len` field) in the file.
    pub position: u64,
    /// The body, CRC checked.
    pub body: &'a [u8],
}

impl Frame<'_> {
    /// Position of the frame that follows.
    pub fn next_position(&self) -> u64 {
        self.position + frame_len(self.body.len())
    }
}

/// Walks the frames of a segment through a read buffer: one read per `chunk` bytes, not per
/// record. Stops for good at the first end marker or invalid frame.
#[derive(Debug)]
pub struct FrameScanner {
    file: Arc<dyn StorageFile>,
    pos: u64,
    limit: u64,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    buf_pos: u64,
    chunk: usize,
    end: Option<ScanEnd>,
}

impl FrameScanner {
    /// Scans `file` from `start` (a frame boundary) up to byte `limit` (the file's length or a
    /// known end of records), reading `chunk` bytes at a time.
    pub fn new(file: Arc<dyn StorageFile>, start: u64, limit: u64, chunk: usize) -> Self {
        Self::with_buffer(file, start, limit, chunk, Vec::new())
    }

    /// Like [`FrameScanner::new`], reusing `buf`'s allocation.
    pub fn with_buffer(
        file: Arc<dyn StorageFile>,
        start: u64,
        limit: u64,
        chunk: usize,
        mut buf: Vec<u8>,
    ) -> Self {
        buf.clear();
        Self {
            file,
            pos: start,
            limit,
            buf,
            buf_pos: start,
            chunk: chunk.max(FRAME_HEADER_LEN as usize),
            end: None,
        }
    }

    /// Position of the next frame.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Why the scan stopped, once it has.
    pub fn end(&self) -> Option<&ScanEnd> {
        self.end.as_ref()
    }

    /// The end of the scanned range.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Moves the end of the scanned range (records were appended since the scanner was made).
    /// A scan that ended cleanly at the old limit resumes. The bytes before the old limit
    /// must not have changed.
    pub fn set_limit(&mut self, limit: u64) {
        if limit > self.limit && self.end == Some(ScanEnd::Clean { position: self.pos }) {
            self.end = None;
        }
        self.limit = limit;
        let keep = limit
            .saturating_sub(self.buf_pos)
            .min(self.buf.len() as u64);
        self.buf.truncate(keep as usize);
    }

    /// Takes the read buffer (for reuse elsewhere), leaving this scanner an empty one.
    pub fn take_buffer(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.buf);
        self.buf_pos = self.pos;
        buf
    }

    /// Gives the read buffer back, for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// Makes `buf` cover `pos..pos + n` (which lies within `limit`); returns the offset of
    /// `pos` in `buf`.
    fn fill(&mut self, pos: u64, n: usize) -> io::Result<usize> {
        let have = self.buf_pos..self.buf_pos + self.buf.len() as u64;
        if have.start <= pos && pos + n as u64 <= have.end {
            return Ok((pos - self.buf_pos) as usize);
        }
        // Never read past `limit`: bytes beyond it may still change (appends), so the buffer
        // must not cache them.
        let want = (n.max(self.chunk) as u64).min(self.limit - pos) as usize;
        self.buf.resize(want, 0);
        read_exact_at(self.file.as_ref(), &mut self.buf, pos)?;
        self.buf_pos = pos;
        Ok(0)
    }

    fn stop(&mut self, end: ScanEnd) -> io::Result<Result<Frame<'_>, ScanEnd>> {
        self.end = Some(end.clone());
        Ok(Err(end))
    }

    /// The next valid frame, or `None` once the scan has ended (see [`FrameScanner::end`]).
    pub fn next_frame(&mut self) -> io::Result<Option<Frame<'_>>> {
        Ok(self.next_or_end()?.ok())
    }

    /// The next valid frame, or why the scan has ended.
    pub fn next_or_end(&mut self) -> io::Result<Result<Frame<'_>, ScanEnd>> {
        if let Some(end) = &self.end {
            return Ok(Err(end.clone()));
        }
        let pos = self.pos;
        if pos + FRAME_HEADER_LEN > self.limit {
            return self.stop(ScanEnd::Clean { position: pos });
        }
        let at = self.fill(pos, FRAME_HEADER_LEN as usize)?;
        let len = le_u32(&self.buf[at..]) as usize;
        let crc = le_u32(&self.buf[at + 4..]);
        if len == 0 {
            return self.stop(ScanEnd::Clean { position: pos });
        }
        let invalid = |reason: String| ScanEnd::Invalid {
            position: pos,
            reason,
        };
        if len > MAX_BODY_LEN {
            return self.stop(invalid(format!("frame length {len} out of range")));
        }
        let total = frame_len(len);
        if pos + total > self.limit {
            return self.stop(invalid(format!(
                "frame of {total} bytes runs past the end of the records at byte {}",
                self.limit
            )));
        }
        let at = self.fill(pos, total as usize)? + FRAME_HEADER_LEN as usize;
        if crc32c::crc32c(&self.buf[at..at + len]) != crc {
            return self.stop(invalid("CRC mismatch".into()));
        }
        self.pos = pos + total;
        Ok(Ok(Frame {
            position: pos,
            body: &self.buf[at..at + len],
        }))
    }
}

/// One entry of a sparse index: the frame of record `seq` starts at byte `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// The record's sequence.
    pub seq: u64,
    /// Its frame's position in the segment.
    pub position: u32,
}

/// The sparse index of a sealed segment (`<base>.idx`): entries, then a footer with the
/// segment's end (sequence and byte position) and a CRC32C of everything before it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SparseIndex {
    /// Entries in increasing sequence and position.
    pub entries: Vec<IndexEntry>,
    /// Sequence after the segment's last record.
    pub end_seq: u64,
    /// Position after the segment's last frame.
    pub end_position: u32,
}

const INDEX_ENTRY_LEN: usize = 12;
const INDEX_FOOTER_LEN: usize = 20;

impl SparseIndex {
    /// The index file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * INDEX_ENTRY_LEN + INDEX_FOOTER_LEN);
        for e in &self.entries {
            out.extend_from_slice(&e.seq.to_le_bytes());
            out.extend_from_slice(&e.position.to_le_bytes());
        }
        out.extend_from_slice(&self.end_seq.to_le_bytes());
        out.extend_from_slice(&self.end_position.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes an index file; `None` if it is damaged (wrong length, CRC, or entries out of
    /// order), in which case the caller rebuilds it by scanning the segment.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let body_len = bytes.len().checked_sub(4)?;
        let footer = bytes.len().checked_sub(INDEX_FOOTER_LEN)?;
        if crc32c::crc32c(&bytes[..body_len]) != le_u32(&bytes[body_len..]) {
            return None;
        }
        let count = le_u32(&bytes[footer + 12..]) as usize;
        if count.checked_mul(INDEX_ENTRY_LEN)? != footer {
            return None;
        }
        let entries: Vec<IndexEntry> = bytes[..footer]
            .chunks_exact(INDEX_ENTRY_LEN)
            .map(|c| IndexEntry {
                seq: le_u64(c),
                position: le_u32(&c[8..]),
            })
            .collect();
        let index = Self {
            entries,
            end_seq: le_u64(&bytes[footer..]),
            end_position: le_u32(&bytes[footer + 8..]),
        };
        let ordered = index
            .entries
            .windows(2)
            .all(|w| w[0].seq < w[1].seq && w[0].position < w[1].position)
            && index
                .entries
                .last()
                .is_none_or(|e| e.seq < index.end_seq && e.position < index.end_position);
        ordered.then_some(index)
    }

    /// The entry to start a search for `seq` from: the last one at or before it.
    pub fn floor(entries: &[IndexEntry], seq: u64) -> Option<IndexEntry> {
        let i = entries.partition_point(|e| e.seq <= seq);
        i.checked_sub(1).map(|i| entries[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{MemStorage, Storage};
    use std::path::Path;

    #[test]
    fn a_header_round_trips_and_any_flipped_byte_is_caught() {
        let header = SegmentHeader {
            kind: SegmentKind::Journal,
            base: 1 << 40,
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        for i in 0..28 {
            let mut flipped = bytes;
            flipped[i] ^= 0x10;
            assert!(
                SegmentHeader::decode(&flipped).is_err(),
                "a flip in byte {i} must not decode"
            );
        }
    }

    #[test]
    fn a_zero_header_is_blank_and_another_version_is_reported_as_such() {
        assert_eq!(
            SegmentHeader::decode(&[0; 32]),
            Err(HeaderError::Blank),
            "an unwritten header"
        );
        let mut h = SegmentHeader {
            kind: SegmentKind::TopicLog,
            base: 0,
        }
        .encode();
        h[8] = 2;
        let crc = crc32c::crc32c(&h[0..24]);
        h[24..28].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&h), Err(HeaderError::Version(2)));
    }

    fn file_with(bytes: &[u8]) -> Arc<dyn StorageFile> {
        let storage = MemStorage::new();
        let f = storage.open(Path::new("/f"), true).unwrap();
        f.write_at(bytes, 0).unwrap();
        f
    }

    fn scan_all(file: Arc<dyn StorageFile>, chunk: usize) -> (Vec<(u64, Vec<u8>)>, ScanEnd) {
        let limit = file.len().unwrap();
        let mut scanner = FrameScanner::new(file, 0, limit, chunk);
        let mut frames = Vec::new();
        while let Some(f) = scanner.next_frame().unwrap() {
            frames.push((f.position, f.body.to_vec()));
        }
        (frames, scanner.end().cloned().unwrap())
    }

    #[test]
    fn the_scanner_returns_every_frame_then_stops_at_the_end_marker() {
        let mut bytes = Vec::new();
        for body in [&b"a"[..], &[7u8; 100], b"xyz"] {
            encode_frame(body, &mut bytes);
        }
        let records_end = bytes.len() as u64;
        bytes.resize(bytes.len() + 64, 0);
        for chunk in [8, 13, 4096] {
            let (frames, end) = scan_all(file_with(&bytes), chunk);
            let positions: Vec<u64> = frames.iter().map(|f| f.0).collect();
            assert_eq!(positions, vec![0, 9, 117], "chunk {chunk}");
            assert_eq!(frames[1].1, vec![7u8; 100], "chunk {chunk}");
            assert_eq!(
                end,
                ScanEnd::Clean {
                    position: records_end
                }
            );
        }
    }

    #[test]
    fn the_scanner_stops_at_a_crc_mismatch_an_overlong_frame_or_a_frame_past_the_end() {
        let mut bytes = Vec::new();
        encode_frame(b"good", &mut bytes);
        encode_frame(b"flipped", &mut bytes);
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let (frames, end) = scan_all(file_with(&flipped), 64);
        assert_eq!(frames.len(), 1, "only the good frame");
        assert!(
            matches!(end, ScanEnd::Invalid { position: 12, ref reason } if reason.contains("CRC")),
            "{end:?}"
        );

        let mut overlong = bytes[..12].to_vec();
        overlong.extend_from_slice(&(MAX_BODY_LEN as u32 + 1).to_le_bytes());
        overlong.extend_from_slice(&[0; 12]);
        let (_, end) = scan_all(file_with(&overlong), 64);
        assert!(
            matches!(end, ScanEnd::Invalid { position: 12, .. }),
            "{end:?}"
        );

        let truncated = &bytes[..bytes.len() - 1];
        let (_, end) = scan_all(file_with(truncated), 64);
        assert!(
            matches!(end, ScanEnd::Invalid { position: 12, ref reason } if reason.contains("past the end")),
            "{end:?}"
        );
    }

    proptest::proptest! {
        #[test]
        fn scanning_arbitrary_bytes_never_panics_and_yields_only_crc_checked_frames(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            chunk in 1usize..64,
        ) {
            let (frames, _) = scan_all(file_with(&bytes), chunk);
            for (position, body) in frames {
                let p = position as usize;
                proptest::prop_assert_eq!(le_u32(&bytes[p + 4..]), crc32c::crc32c(&body));
            }
        }
    }

    #[test]
    fn an_index_round_trips_and_a_damaged_one_is_refused() {
        let index = SparseIndex {
            entries: vec![
                IndexEntry {
                    seq: 10,
                    position: 32,
                },
                IndexEntry {
                    seq: 50,
                    position: 4200,
                },
            ],
            end_seq: 90,
            end_position: 8000,
        };
        let bytes = index.encode();
        assert_eq!(SparseIndex::decode(&bytes), Some(index.clone()));
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 4;
            assert_eq!(SparseIndex::decode(&damaged), None, "flip in byte {i}");
        }
        assert_eq!(SparseIndex::decode(&bytes[1..]), None, "truncated");
        assert_eq!(
            SparseIndex::floor(&index.entries, 49).map(|e| e.seq),
            Some(10)
        );
        assert_eq!(SparseIndex::floor(&index.entries, 9), None);
    }
}
