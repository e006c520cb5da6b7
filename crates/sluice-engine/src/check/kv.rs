//! `check` and `repair` of the keyed store (`DATA/kv`): its journal's frames, its checkpoint
//! against the journal, every record after the checkpoint decoding. Repair rebuilds the
//! state from the checkpoint (if sound) and every readable record — replay is idempotent
//! (`crate::kv`), so replaying records the checkpoint includes is harmless — and starts its
//! versions past the clock's microseconds, above any version given before the damage.

use super::repair::Repairer;
use super::{check_log, check_position, journal_records, CheckReport, Severity};
use crate::dir::{write_atomic, DataDir};
use crate::error::{Error, Result};
use crate::kv::{decode_checkpoint, KvRecord, KvState, CHUNK_BYTES};
use crate::segment::SegmentKind;

/// Checks the keyed store of `dir`, if it was ever written.
pub(super) fn check(dir: &DataDir, report: &mut CheckReport) -> Result<()> {
    let storage = dir.storage().as_ref();
    if !storage.exists(&dir.kv_dir()).unwrap_or(false) {
        return Ok(());
    }
    let journal_dir = dir.kv_journal_dir();
    let journal = check_log(storage, &journal_dir, SegmentKind::Journal, report);
    let checkpoint_path = dir.kv_checkpoint_path();
    let mut from = journal.first;
    if let Some(bytes) = dir.read(&checkpoint_path)? {
        let restored = decode_checkpoint(&bytes)
            .map_err(|e| Error::corrupt(&checkpoint_path, 0, e.to_string()));
        match restored {
            Ok((_, position)) => {
                from = position;
                check_position(report, &checkpoint_path, from, &journal);
            }
            Err(err) => report.push(Severity::Damage, &checkpoint_path, None, err.to_string()),
        }
    }
    for (seq, body) in journal_records(storage, &journal) {
        if seq >= from {
            if let Err(e) = KvRecord::decode(&body) {
                report.push(
                    Severity::Damage,
                    &journal_dir,
                    None,
                    format!("keyed-store journal record {seq} does not decode: {e}"),
                );
            }
        }
    }
    Ok(())
}

impl Repairer<'_> {
    /// Rebuilds the keyed store of `dir` if `report` (its check) found damage in it.
    pub(super) fn keyed_store(&mut self, dir: &DataDir, report: &CheckReport) -> Result<()> {
        let kv_dir = dir.kv_dir();
        let damaged = report
            .findings
            .iter()
            .any(|f| f.severity == Severity::Damage && f.file.starts_with(&kv_dir));
        if !damaged {
            return Ok(());
        }
        let checkpoint_path = dir.kv_checkpoint_path();
        let mut state = KvState::new();
        let mut from_checkpoint = false;
        if let Some(bytes) = dir.read(&checkpoint_path)? {
            let restored = decode_checkpoint(&bytes).ok();
            match restored {
                Some((restored, _)) => {
                    state = restored;
                    from_checkpoint = true;
                }
                None => self.quarantine(&checkpoint_path, 0, &bytes, "damaged checkpoint")?,
            }
        }
        let journal_dir = dir.kv_journal_dir();
        let (records, _) = self.take_journal(&journal_dir)?;
        let mut replayed = 0;
        for (_, body) in &records {
            if let Ok(record) = KvRecord::decode(body) {
                state.replay(&record);
                replayed += 1;
            }
        }
        state.skip_versions_to(self.now.saturating_mul(1000));
        write_atomic(
            self.storage,
            &checkpoint_path,
            &state.checkpoint(0, self.now, CHUNK_BYTES),
        )?;
        self.clear_dir(&journal_dir)?;
        self.report.actions.push(format!(
            "{}: damaged; the keyed store (job status, cancellations, schedules) was rebuilt from {} and {replayed} readable journal record(s) into a new checkpoint, and its journal starts again (entries whose records were lost are gone)",
            kv_dir.display(),
            if from_checkpoint { "its checkpoint" } else { "nothing (its checkpoint was damaged)" },
        ));
        Ok(())
    }
}
