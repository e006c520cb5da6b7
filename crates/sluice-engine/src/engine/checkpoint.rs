//! Checkpoints of a subscription's durable state (`docs/engine-format.md`, "Checkpoint"):
//! written as one framed record (length, CRC32C, body) and replaced atomically; the journal
//! before its position is then deleted.
//!
//! Invariants:
//! - Checkpoints are serialized engine-wide by `Inner::checkpoint_lock`, which
//!   `delete_subscription` takes too: a checkpoint taken before a delete and re-create of the
//!   same name can never be written into the new subscription (it also checks the
//!   subscription's generation before writing).
//! - A checkpoint is written only after every journal record it includes is committed.
//! - A checkpoint file that fails its CRC is [`Error::Corrupt`], never a silently older state.

use std::path::Path;

use super::Engine;
use crate::error::{Error, Result};
use crate::segment::{encode_frame, le_u32, FRAME_HEADER_LEN};
use crate::subscription::JournalPosition;

/// The checkpoint file's bytes for a checkpoint body: one frame.
pub(crate) fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + FRAME_HEADER_LEN as usize);
    encode_frame(body, &mut out);
    out
}

/// The checkpoint body in a checkpoint file's bytes. A file of format 1 as the first builds
/// wrote it (the bare body, no frame) is still read: its body is checked by decoding.
pub(crate) fn unframe<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8]> {
    let header = FRAME_HEADER_LEN as usize;
    if bytes.len() >= header {
        let len = le_u32(bytes) as usize;
        if len + header == bytes.len() {
            let body = &bytes[header..];
            if crc32c::crc32c(body) == le_u32(&bytes[4..]) {
                return Ok(body);
            }
            return Err(Error::corrupt(
                path,
                4,
                "the checkpoint's CRC does not match: it was damaged at rest. Nothing was changed; \
                 see \"Damage on disk\" in docs/durability.md",
            ));
        }
    }
    if bytes.first() == Some(&crate::subscription::CHECKPOINT_RECORD) {
        tracing::warn!(checkpoint = %path.display(), "reading a checkpoint without a frame (written by an older build); the next checkpoint is framed");
        return Ok(bytes);
    }
    Err(Error::corrupt(
        path,
        0,
        format!(
            "not a checkpoint: its frame says {} bytes but the file holds {}",
            bytes.get(..4).map_or(0, le_u32),
            bytes.len()
        ),
    ))
}

impl Engine {
    /// Writes a checkpoint of subscription `name` and trims its journal before it. Calls are
    /// serialized (one checkpoint at a time in the engine); a subscription deleted (and
    /// perhaps created again) meanwhile is left alone.
    pub fn checkpoint(&self, name: &str) -> Result<()> {
        let _serial = self
            .inner
            .checkpoint_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (body, position, journal, generation) = {
            let mut state = self.lock();
            let Some(sub) = state.subs.get_mut(name) else {
                return Ok(());
            };
            let position = JournalPosition {
                segment: 0,
                position: sub.journal_next,
            };
            sub.since_checkpoint = 0;
            (
                sub.state.checkpoint(position),
                position,
                sub.journal.clone(),
                sub.generation,
            )
        };
        let result = (|| {
            // Every record the checkpoint includes must be durable before the journal is cut.
            self.barrier()?;
            let still_there = self
                .lock()
                .subs
                .get(name)
                .is_some_and(|sub| sub.generation == generation);
            if !still_there {
                return Ok(());
            }
            {
                let dir = self.inner.dir.lock().unwrap_or_else(|e| e.into_inner());
                let dir = dir.as_ref().ok_or(Error::Closed)?;
                dir.write_atomic(&dir.checkpoint_path(name)?, &frame(&body))?;
            }
            journal.lock().remove_segments_before(position.position)?;
            Ok(())
        })();
        if let Some(sub) = self.lock().subs.get_mut(name) {
            if sub.generation == generation {
                sub.checkpointing = false;
            }
        }
        result
    }
}
