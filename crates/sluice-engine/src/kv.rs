//! The keyed store: a small versioned map of documents with a time to live, where the
//! runtime keeps job status, cancellations, unique locks and the schedule registry (the
//! `JobStore` contract of `sluice-core`). Its journal records are types 40 and 41, its
//! checkpoint a file of frames: a header (type 42) and chunks of entries (type 43), so it
//! has no size limit (`docs/engine-format.md`, "Keyed store").
//!
//! Invariants:
//! - Versions are one counter for the whole store, never reused, also across restarts and
//!   removals: a writer holding version `v` of a key can never be fooled by a later entry.
//! - Replay is idempotent: a put applies only if its version is newer than every version the
//!   state has seen, a remove only if the entry still has the version it removed. Replaying a
//!   record the checkpoint already includes changes nothing, so a repair may replay every
//!   readable record.
//! - [`KvRecord::decode`] and [`decode_checkpoint`] accept exactly what the encoders produce
//!   and never panic on other input, nor allocate more than the input's size warrants.

use std::collections::{BTreeMap, HashMap};

use crate::codec::{CodecError, Decoder, Encoder};
use crate::segment::{encode_frame, frame_body, FrameFault, FRAME_HEADER_LEN};

const PUT: u8 = 40;
const REMOVE: u8 = 41;
/// Record type of a keyed-store checkpoint's header frame.
pub const KV_CHECKPOINT: u8 = 42;
/// Record type of a keyed-store checkpoint's chunk of entries.
pub const KV_CHUNK: u8 = 43;
/// A checkpoint chunk is closed once its body passes this many bytes (an entry is at most
/// about 1 MiB, so a chunk stays far below the 16 MiB frame limit).
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE_LEN: usize = 1024 * 1024;

/// A live entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The document.
    pub value: Vec<u8>,
    /// Its version.
    pub version: u64,
    /// Absent for every call from this time on (ms since the epoch).
    pub expires_ms: u64,
}

/// One change of the keyed store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvRecord {
    /// Type 40: `key` holds `value` at `version` until `expires_ms`.
    Put {
        /// The key.
        key: String,
        /// The new version.
        version: u64,
        /// When it expires (ms since the epoch).
        expires_ms: u64,
        /// The document.
        value: Vec<u8>,
    },
    /// Type 41: the entry of `key` at `version` is removed.
    Remove {
        /// The key.
        key: String,
        /// The version removed.
        version: u64,
    },
}

impl KvRecord {
    /// The record body.
    pub fn encode(&self) -> Vec<u8> {
        let mut e;
        match self {
            KvRecord::Put {
                key,
                version,
                expires_ms,
                value,
            } => {
                e = Encoder::with_capacity(24 + key.len() + value.len());
                e.u8(PUT)
                    .str(key)
                    .u64(*version)
                    .u64(*expires_ms)
                    .bytes(value);
            }
            KvRecord::Remove { key, version } => {
                e = Encoder::with_capacity(12 + key.len());
                e.u8(REMOVE).str(key).u64(*version);
            }
        }
        e.finish()
    }

    /// Reads a body written by [`encode`](Self::encode).
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut d = Decoder::new(body);
        let record = match d.u8()? {
            PUT => KvRecord::Put {
                key: d.str()?.to_owned(),
                version: nonzero(d.u64()?)?,
                expires_ms: d.u64()?,
                value: d.bytes()?.to_vec(),
            },
            REMOVE => KvRecord::Remove {
                key: d.str()?.to_owned(),
                version: nonzero(d.u64()?)?,
            },
            _ => return Err(CodecError("not a keyed-store record type")),
        };
        d.finish()?;
        Ok(record)
    }
}

fn nonzero(version: u64) -> Result<u64, CodecError> {
    if version == 0 {
        return Err(CodecError("version 0: versions start at 1"));
    }
    Ok(version)
}

/// Checks a key and a value against the store's limits; the reason if they break one.
pub fn check_entry(key: &str, value: Option<&[u8]>) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!(
            "a key of {} bytes: keys are 1 to {MAX_KEY_LEN} bytes",
            key.len()
        ));
    }
    if let Some(value) = value.filter(|v| v.len() > MAX_VALUE_LEN) {
        return Err(format!(
            "a value of {} bytes: values are at most {MAX_VALUE_LEN} bytes",
            value.len()
        ));
    }
    Ok(())
}

/// The keyed store's state: every entry (expired ones until swept), the newest version.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KvState {
    entries: HashMap<String, KvEntry>,
    /// Keys by the version they hold: newest-first scans.
    by_version: BTreeMap<u64, String>,
    last_version: u64,
}

impl KvState {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries held (expired ones included until [`sweep`](Self::sweep)).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The newest version given out.
    pub fn last_version(&self) -> u64 {
        self.last_version
    }

    /// Makes the next version at least `floor + 1` (a repair that may have lost records
    /// naming newer versions than it can see passes the clock's milliseconds).
    pub fn skip_versions_to(&mut self, floor: u64) {
        self.last_version = self.last_version.max(floor);
    }

    /// The live entry at `key`.
    pub fn get(&self, key: &str, now_ms: u64) -> Option<&KvEntry> {
        self.entries.get(key).filter(|e| e.expires_ms > now_ms)
    }

    /// Writes `value` at `key` if its live version is `expected` (`None`: no live entry);
    /// the record to journal, or `None` when the version differs (nothing changed).
    pub fn swap(
        &mut self,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
        expires_ms: u64,
        now_ms: u64,
    ) -> Option<KvRecord> {
        if self.get(key, now_ms).map(|e| e.version) != expected {
            return None;
        }
        let record = KvRecord::Put {
            key: key.to_owned(),
            version: self.last_version + 1,
            expires_ms,
            value: value.to_vec(),
        };
        self.replay(&record);
        Some(record)
    }

    /// Removes `key` if its live version is `expected`; the record to journal, or `None`.
    pub fn remove(&mut self, key: &str, expected: u64, now_ms: u64) -> Option<KvRecord> {
        if self.get(key, now_ms).map(|e| e.version) != Some(expected) {
            return None;
        }
        let record = KvRecord::Remove {
            key: key.to_owned(),
            version: expected,
        };
        self.replay(&record);
        Some(record)
    }

    /// Up to `limit` live entries whose key starts with `prefix`, newest first, stopping
    /// before the keys and values copied pass `max_bytes` (at least one entry is returned
    /// when one matches).
    pub fn scan(
        &self,
        prefix: &str,
        limit: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> Vec<(String, KvEntry)> {
        let mut bytes = 0usize;
        let mut out = Vec::new();
        for key in self.by_version.values().rev() {
            if out.len() >= limit {
                break;
            }
            if !key.starts_with(prefix) {
                continue;
            }
            let Some(entry) = self.get(key, now_ms) else {
                continue;
            };
            bytes = bytes.saturating_add(key.len() + entry.value.len());
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push((key.clone(), entry.clone()));
        }
        out
    }

    /// The encoded size of a put of `value` at `key` (to check it against the journal's
    /// largest record before anything changes).
    pub fn put_len(key: &str, value: &[u8]) -> usize {
        1 + 2 + key.len() + 8 + 8 + 4 + value.len()
    }

    /// Applies a journal record; whether it changed anything (see the module docs).
    pub fn replay(&mut self, record: &KvRecord) -> bool {
        match record {
            KvRecord::Put {
                key,
                version,
                expires_ms,
                value,
            } => {
                if *version <= self.last_version {
                    return false;
                }
                self.last_version = *version;
                let entry = KvEntry {
                    value: value.clone(),
                    version: *version,
                    expires_ms: *expires_ms,
                };
                if let Some(old) = self.entries.insert(key.clone(), entry) {
                    self.by_version.remove(&old.version);
                }
                self.by_version.insert(*version, key.clone());
                true
            }
            KvRecord::Remove { key, version } => {
                if self.entries.get(key).map(|e| e.version) != Some(*version) {
                    return false;
                }
                self.entries.remove(key);
                self.by_version.remove(version);
                true
            }
        }
    }

    /// Forgets the entries expired at `now_ms` (they are absent for every call already);
    /// how many.
    pub fn sweep(&mut self, now_ms: u64) -> usize {
        let expired: Vec<(String, u64)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires_ms <= now_ms)
            .map(|(k, e)| (k.clone(), e.version))
            .collect();
        for (key, version) in &expired {
            self.entries.remove(key);
            self.by_version.remove(version);
        }
        expired.len()
    }

    /// The checkpoint file: the live entries at `now_ms` (in key order) and the journal
    /// position the state includes everything before, as frames of at most about
    /// `chunk_bytes` ([`CHUNK_BYTES`] in use).
    pub fn checkpoint(&self, position: u64, now_ms: u64, chunk_bytes: usize) -> Vec<u8> {
        let live: BTreeMap<&String, &KvEntry> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires_ms > now_ms)
            .collect();
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let mut chunk = Encoder::new();
        let mut in_chunk = 0u64;
        let close = |chunk: &mut Encoder, in_chunk: &mut u64, chunks: &mut Vec<Vec<u8>>| {
            let mut body = Encoder::with_capacity(chunk.len() + 9);
            body.u8(KV_CHUNK).u64(*in_chunk);
            let mut body = body.finish();
            body.extend_from_slice(&std::mem::take(chunk).finish());
            chunks.push(body);
            *in_chunk = 0;
        };
        for (key, entry) in &live {
            chunk
                .str(key)
                .u64(entry.version)
                .u64(entry.expires_ms)
                .bytes(&entry.value);
            in_chunk += 1;
            if chunk.len() >= chunk_bytes {
                close(&mut chunk, &mut in_chunk, &mut chunks);
            }
        }
        if in_chunk > 0 {
            close(&mut chunk, &mut in_chunk, &mut chunks);
        }
        let mut header = Encoder::with_capacity(33);
        header
            .u8(KV_CHECKPOINT)
            .u64(position)
            .u64(self.last_version)
            .u64(live.len() as u64)
            .u64(chunks.len() as u64);
        let size: usize = chunks.iter().map(|c| c.len() + 8).sum();
        let mut out = Vec::with_capacity(size + 48);
        encode_frame(&header.finish(), &mut out);
        for chunk in &chunks {
            encode_frame(chunk, &mut out);
        }
        out
    }
}

/// The frames of a checkpoint file: bodies whose CRC matches, in order; an error naming the
/// byte of the first that does not.
fn frames(bytes: &[u8]) -> Result<Vec<&[u8]>, CodecError> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < bytes.len() {
        let body = frame_body(bytes, at).map_err(|fault| match fault {
            FrameFault::Truncated => CodecError("a checkpoint frame cut short"),
            FrameFault::End | FrameFault::Length(_) => {
                CodecError("a checkpoint frame longer than the file")
            }
            FrameFault::Crc => {
                CodecError("a checkpoint frame's CRC does not match: damaged at rest")
            }
        })?;
        out.push(body);
        at += FRAME_HEADER_LEN as usize + body.len();
    }
    Ok(out)
}

/// Decodes a checkpoint file written by [`KvState::checkpoint`]: the state and the journal
/// position to replay from. Checks every frame's CRC, the chunk and entry counts, keys in
/// order, versions distinct and not past the newest.
pub fn decode_checkpoint(bytes: &[u8]) -> Result<(KvState, u64), CodecError> {
    let frames = frames(bytes)?;
    let (first, chunks) = frames
        .split_first()
        .ok_or(CodecError("an empty checkpoint file"))?;
    let mut d = Decoder::new(first);
    if d.u8()? != KV_CHECKPOINT {
        return Err(CodecError("not a keyed-store checkpoint (type 42)"));
    }
    let position = d.u64()?;
    let last_version = d.u64()?;
    let count = d.u64()?;
    let chunk_count = d.u64()?;
    d.finish()?;
    if chunk_count != chunks.len() as u64 {
        return Err(CodecError(
            "the checkpoint's chunk count does not match its frames",
        ));
    }
    let mut state = KvState {
        last_version,
        ..KvState::default()
    };
    let mut previous: Option<String> = None;
    for chunk in chunks {
        let mut d = Decoder::new(chunk);
        if d.u8()? != KV_CHUNK {
            return Err(CodecError("not a keyed-store checkpoint chunk (type 43)"));
        }
        let in_chunk = d.u64()?;
        // Each entry takes at least 22 bytes: a count beyond that is damage, not an allocation.
        if in_chunk > (d.remaining() / 22) as u64 {
            return Err(CodecError("entry count larger than the chunk"));
        }
        for _ in 0..in_chunk {
            let key = d.str()?.to_owned();
            let version = nonzero(d.u64()?)?;
            let expires_ms = d.u64()?;
            let value = d.bytes()?.to_vec();
            if previous.as_ref().is_some_and(|p| *p >= key) {
                return Err(CodecError("checkpoint keys out of order"));
            }
            if version > last_version {
                return Err(CodecError("an entry newer than the newest version"));
            }
            if state.by_version.insert(version, key.clone()).is_some() {
                return Err(CodecError("two entries with one version"));
            }
            previous = Some(key.clone());
            state.entries.insert(
                key,
                KvEntry {
                    value,
                    version,
                    expires_ms,
                },
            );
        }
        d.finish()?;
    }
    if state.entries.len() as u64 != count {
        return Err(CodecError(
            "the checkpoint's entry count does not match its chunks",
        ));
    }
    Ok((state, position))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn swap_writes_only_over_the_version_read_and_versions_are_never_reused() {
        let mut s = KvState::new();
        let put = s
            .swap("job/a", None, b"1", 1_000, 0)
            .expect("absent: written");
        let KvRecord::Put { version: v1, .. } = put else {
            panic!("a put")
        };
        assert!(
            s.swap("job/a", None, b"2", 1_000, 0).is_none(),
            "present now"
        );
        assert!(s.swap("job/a", Some(v1 + 7), b"2", 1_000, 0).is_none());
        let Some(KvRecord::Put { version: v2, .. }) = s.swap("job/a", Some(v1), b"2", 1_000, 0)
        else {
            panic!("over the version read")
        };
        assert!(v2 > v1);
        assert!(s.remove("job/a", v1, 0).is_none(), "an old version");
        assert!(s.remove("job/a", v2, 0).is_some());
        let Some(KvRecord::Put { version: v3, .. }) = s.swap("job/a", None, b"3", 1_000, 0) else {
            panic!("absent again")
        };
        assert!(v3 > v2, "a removed key's version is never given again");
    }

    #[test]
    fn expired_entries_are_absent_and_can_be_written_over_as_absent() {
        let mut s = KvState::new();
        s.swap("k", None, b"v", 100, 0).unwrap();
        assert!(s.get("k", 99).is_some());
        assert!(s.get("k", 100).is_none(), "expired at its time");
        assert!(s.scan("", 10, usize::MAX, 100).is_empty());
        assert!(s.swap("k", None, b"w", 200, 100).is_some(), "absent");
        s.swap("gone", None, b"v", 50, 0).unwrap();
        assert_eq!(s.sweep(150), 1);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn scan_lists_the_newest_first_within_the_prefix_and_limit() {
        let mut s = KvState::new();
        for key in ["job/a", "schedule/x", "job/b", "job/c"] {
            s.swap(key, None, key.as_bytes(), 1_000, 0).unwrap();
        }
        let v = s.get("job/a", 0).unwrap().version;
        s.swap("job/a", Some(v), b"again", 1_000, 0).unwrap();
        let keys = |limit, max_bytes| -> Vec<String> {
            s.scan("job/", limit, max_bytes, 0)
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(keys(3, usize::MAX), ["job/a", "job/c", "job/b"]);
        assert_eq!(keys(1, usize::MAX), ["job/a"]);
        assert_eq!(keys(3, 22), ["job/a", "job/c"], "stops at the byte budget");
        assert_eq!(keys(3, 0), ["job/a"], "one entry at least");
    }

    #[test]
    fn a_checkpoint_restores_the_live_state_and_replay_over_it_is_idempotent() {
        let mut s = KvState::new();
        let journal = vec![
            s.swap("a", None, b"1", 1_000, 0).unwrap(),
            s.swap("b", None, b"2", 1_000, 0).unwrap(),
            s.swap("short", None, b"x", 10, 0).unwrap(),
            s.remove("a", 1, 0).unwrap(),
        ];
        let body = s.checkpoint(4, 20, CHUNK_BYTES);
        let (mut restored, position) = decode_checkpoint(&body).unwrap();
        // One entry a chunk: the same state.
        let (chunked, _) = decode_checkpoint(&s.checkpoint(4, 20, 1)).unwrap();
        assert_eq!(chunked, restored);
        assert_eq!(position, 4);
        assert!(
            restored.get("short", 0).is_none(),
            "expired entries are left out"
        );
        assert_eq!(restored.get("b", 20), s.get("b", 20));
        // Replaying every record over the checkpoint changes nothing.
        for record in &journal {
            restored.replay(&record.clone());
        }
        assert!(
            restored.get("a", 20).is_none(),
            "the removed key stays removed"
        );
        assert_eq!(restored.last_version(), s.last_version());
        let next = restored.swap("c", None, b"3", 1_000, 20).unwrap();
        assert!(matches!(next, KvRecord::Put { version: 4, .. }));
    }

    #[test]
    fn damaged_checkpoints_are_refused() {
        let mut s = KvState::new();
        s.swap("a", None, b"1", 1_000, 0).unwrap();
        s.swap("b", None, b"2", 1_000, 0).unwrap();
        let file = s.checkpoint(2, 0, 1);
        for at in [3, 20, file.len() - 2] {
            let mut flipped = file.clone();
            flipped[at] ^= 0x40;
            assert!(decode_checkpoint(&flipped).is_err(), "byte {at} flipped");
        }
        assert!(
            decode_checkpoint(&file[..file.len() - 1]).is_err(),
            "cut short"
        );
        // Two chunks of one entry each, 41 bytes framed: without the last.
        let second_chunk = file.len() - 41;
        assert!(
            decode_checkpoint(&file[..second_chunk]).is_err(),
            "a chunk missing"
        );
        // Frames whose CRCs match but whose contents lie.
        let forged = |header: &[u8], chunks: &[&[u8]]| {
            let mut out = Vec::new();
            encode_frame(header, &mut out);
            for chunk in chunks {
                encode_frame(chunk, &mut out);
            }
            decode_checkpoint(&out)
        };
        let mut header = Encoder::new();
        header.u8(KV_CHECKPOINT).u64(0).u64(1).u64(5).u64(0);
        assert!(
            forged(&header.finish(), &[]).is_err(),
            "5 entries, none given"
        );
        let mut chunk = Encoder::new();
        chunk.u8(KV_CHUNK).u64(u64::MAX);
        let mut header = Encoder::new();
        header.u8(KV_CHECKPOINT).u64(0).u64(1).u64(1).u64(1);
        assert!(
            forged(&header.finish(), &[&chunk.finish()]).is_err(),
            "a count past the chunk"
        );
    }

    #[test]
    fn records_round_trip() {
        for record in [
            KvRecord::Put {
                key: "job/é".into(),
                version: 9,
                expires_ms: 5,
                value: b"{}".to_vec(),
            },
            KvRecord::Remove {
                key: "k".into(),
                version: 3,
            },
        ] {
            assert_eq!(KvRecord::decode(&record.encode()).unwrap(), record);
        }
        assert!(KvRecord::decode(&[REMOVE, 1, 0, b'k', 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = KvRecord::decode(&body);
            let _ = decode_checkpoint(&body);
            let mut framed = Vec::new();
            let mut tagged = body.clone();
            tagged.insert(0, KV_CHECKPOINT);
            encode_frame(&tagged, &mut framed);
            let _ = decode_checkpoint(&framed);
        }
    }
}
