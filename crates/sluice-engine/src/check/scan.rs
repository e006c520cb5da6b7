//! Reading one segment file whole, without trusting anything in it: every frame is checked
//! (length, CRC, and for topic logs and DLQs that offsets are dense), and every stretch that
//! is not a valid frame is classified as damage (valid records follow it) or the tail (only
//! zeros or garbage follow it).

use std::path::{Path, PathBuf};

use crate::io::{read_all, Storage};
use crate::log::recover::next_valid_after;
use crate::record::peek_offset;
use crate::segment::{frame_body, SegmentHeader, SegmentKind, FRAME_HEADER_LEN, HEADER_LEN};

/// A stretch of a segment that is not valid records, with valid records after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Where it starts (a byte position in the file).
    pub from: u64,
    /// Where the next valid record starts.
    pub to: u64,
    /// Why the frame at `from` is not valid.
    pub reason: String,
    /// Sequences (offsets) of the records lost in it, for topic logs and DLQs.
    pub lost: Option<(u64, u64)>,
}

/// One segment, read whole.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    /// The file.
    pub path: PathBuf,
    /// The base its name gives.
    pub base: u64,
    /// A problem with the header, if any (the rest is then not scanned).
    pub bad_header: Option<String>,
    /// The valid frames: byte position, length of the frame, sequence.
    pub frames: Vec<(u64, u64, u64)>,
    /// Damaged stretches with valid records after them.
    pub damage: Vec<Damage>,
    /// Bytes after the last valid record that are not zero: `(from, to, reason)`.
    pub tail: Option<(u64, u64, String)>,
    /// Sequence after the last valid record.
    pub end: u64,
    /// Byte position after the last valid record.
    pub end_pos: u64,
    /// The file's length.
    pub len: u64,
}

fn frame_at(kind: SegmentKind, bytes: &[u8], at: usize, seq: u64) -> Result<usize, String> {
    let body = frame_body(bytes, at).map_err(|fault| fault.to_string())?;
    if kind.has_offsets() {
        match peek_offset(body) {
            Some(offset) if offset == seq => {}
            found => {
                return Err(format!(
                    "record holds offset {found:?} where {seq} was expected"
                ))
            }
        }
    }
    Ok(FRAME_HEADER_LEN as usize + body.len())
}

/// Scans the segment at `path` (named for `base`) of a log of `kind`.
pub fn scan_segment(
    storage: &dyn Storage,
    path: &Path,
    kind: SegmentKind,
    base: u64,
) -> std::io::Result<SegmentScan> {
    let file = storage.open(path, false)?;
    let bytes = read_all(file.as_ref())?;
    Ok(scan_bytes(&bytes, path, kind, base))
}

/// Scans the bytes of a segment file.
pub fn scan_bytes(bytes: &[u8], path: &Path, kind: SegmentKind, base: u64) -> SegmentScan {
    let mut scan = SegmentScan {
        path: path.to_path_buf(),
        base,
        bad_header: None,
        frames: Vec::new(),
        damage: Vec::new(),
        tail: None,
        end: base,
        end_pos: HEADER_LEN,
        len: bytes.len() as u64,
    };
    let header: Option<&[u8; HEADER_LEN as usize]> = bytes
        .get(..HEADER_LEN as usize)
        .and_then(|h| h.try_into().ok());
    match header.map(SegmentHeader::decode) {
        None => scan.bad_header = Some("the file is shorter than a segment header".into()),
        Some(Err(e)) => scan.bad_header = Some(format!("damaged segment header: {e}")),
        Some(Ok(h)) if h.kind != kind => {
            scan.bad_header = Some(format!("a {:?} segment in a {:?} log", h.kind, kind))
        }
        Some(Ok(h)) if h.base != base => {
            scan.bad_header = Some(format!(
                "header says base {} but the file is named {base}",
                h.base
            ))
        }
        Some(Ok(_)) => {}
    }
    if scan.bad_header.is_some() {
        return scan;
    }
    let mut at = HEADER_LEN as usize;
    let mut seq = base;
    loop {
        match frame_at(kind, bytes, at, seq) {
            Ok(len) => {
                scan.frames.push((at as u64, len as u64, seq));
                at += len;
                seq += 1;
            }
            Err(reason) => {
                let rest = &bytes[at.min(bytes.len())..];
                let Some(last) = rest.iter().rposition(|&b| b != 0) else {
                    break;
                };
                match next_valid_after(kind, bytes, at, seq) {
                    Some(next) => {
                        let next_seq = if kind.has_offsets() {
                            peek_offset(&bytes[next + FRAME_HEADER_LEN as usize..]).unwrap_or(seq)
                        } else {
                            seq
                        };
                        let lost =
                            (kind.has_offsets() && next_seq > seq).then(|| (seq, next_seq - 1));
                        scan.damage.push(Damage {
                            from: at as u64,
                            to: next as u64,
                            reason,
                            lost,
                        });
                        at = next;
                        seq = next_seq;
                    }
                    None => {
                        scan.tail = Some((at as u64, (at + last + 1) as u64, reason));
                        break;
                    }
                }
            }
        }
    }
    scan.end = seq;
    scan.end_pos = scan
        .frames
        .last()
        .map_or(HEADER_LEN, |(pos, len, _)| pos + len);
    scan
}
