//! The keyed store in the engine (`crate::kv`): its journal `DATA/kv/journal` and checkpoint
//! `DATA/kv/checkpoint`, written through the one group committer like a subscription's.
//!
//! Invariants:
//! - Every change is applied to the state under the store's lock and its record submitted to
//!   the committer under the same lock (the journal holds them in the order applied); the
//!   caller learns its outcome only once the record is committed (durable under
//!   `SyncMode::Always`).
//! - The store's lock is taken before the committer's and the directory's, never after; the
//!   committer's completions never take it.
//! - `DATA/kv` exists only once something was written: an engine that never stores a key
//!   leaves no trace of the store.
//! - Versions never come back, even when writes that were applied in memory (and seen by a
//!   load) are lost in a crash before they were durable: every open starts versions past
//!   the clock's microseconds, beyond any version given before (one write per microsecond
//!   would be needed to catch up with the clock).
//! - A write the journal cannot hold (larger than its largest record) is refused before
//!   anything changes.
//! - A checkpoint is written only after every record it includes is committed, then the
//!   journal before it is deleted; a checkpoint past the journal's end (an OS crash kept the
//!   checkpoint and lost the journal's tail) is written again at the end before anything is
//!   appended, as for subscriptions (`open.rs`).

use crate::commit::{Batch, LogHandle};
use crate::dir::DataDir;
use crate::error::{Error, Result};
use crate::kv::{check_entry, decode_checkpoint, KvEntry, KvRecord, KvState, CHUNK_BYTES};
use crate::log::SegmentedLog;
use crate::segment::SegmentKind;

use super::{Completion, Engine, EngineOptions};

/// The open keyed store.
pub(crate) struct Kv {
    state: KvState,
    journal: LogHandle,
    /// The journal sequence the next record will get.
    journal_next: u64,
    since_checkpoint: u64,
    checkpointing: bool,
}

/// Opens the keyed store of `dir` if it was ever written (`None` otherwise), recovering its
/// journal and restoring its state.
pub(crate) fn open_kv(dir: &DataDir, options: &EngineOptions, now: u64) -> Result<Option<Kv>> {
    if !dir
        .storage()
        .exists(&dir.kv_dir())
        .map_err(|e| Error::io(format!("stat {}", dir.kv_dir().display()), e))?
    {
        return Ok(None);
    }
    create_kv(dir, options, now).map(Some)
}

/// Opens (creating if needed) the keyed store of `dir`.
fn create_kv(dir: &DataDir, options: &EngineOptions, now: u64) -> Result<Kv> {
    let (journal, report) = SegmentedLog::open(
        dir.storage().clone(),
        dir.kv_journal_dir(),
        SegmentKind::Journal,
        options.log,
    )?;
    if !report.is_clean() {
        tracing::warn!(%report, "recovered the keyed store's journal");
    }
    // Every directory entry on the way to its segments must be durable before a write in them
    // is confirmed, even one left by a creation that failed half-way (whose syncs never ran)
    // in an earlier process: sync the three directories whenever the store is opened.
    for parent in [dir.path().to_path_buf(), dir.kv_dir(), dir.kv_journal_dir()] {
        dir.storage()
            .sync_dir(&parent)
            .map_err(|e| Error::io(format!("fsync directory {}", parent.display()), e))?;
    }
    let checkpoint_path = dir.kv_checkpoint_path();
    let mut rewrite = None;
    let (mut state, from) = match dir.read(&checkpoint_path)? {
        Some(bytes) => {
            let (state, at) = decode_checkpoint(&bytes).map_err(|err| {
                Error::corrupt(
                    &checkpoint_path,
                    0,
                    format!("the checkpoint does not decode: {err}"),
                )
            })?;
            if at < journal.first() {
                return Err(super::open::gone_before(&checkpoint_path, at, &journal));
            }
            if at > journal.end() {
                rewrite = Some(at);
            }
            (state, at)
        }
        None => (KvState::new(), journal.first()),
    };
    let mut replayed = 0u64;
    if from <= journal.end() {
        let mut iter = journal.iter_from(from);
        while let Some((seq, body)) = iter.next_body()? {
            let record = KvRecord::decode(body).map_err(|err| {
                Error::corrupt(
                    journal.dir(),
                    0,
                    format!("keyed-store journal record {seq} does not decode: {err}"),
                )
            })?;
            state.replay(&record);
            replayed += 1;
        }
    }
    state.skip_versions_to(now.saturating_mul(1000));
    let journal_next = journal.end();
    if let Some(at) = rewrite {
        dir.write_atomic(
            &checkpoint_path,
            &state.checkpoint(journal_next, now, CHUNK_BYTES),
        )?;
        tracing::warn!(
            "the keyed store's checkpoint continues at journal record {at} but the journal ends \
             at {journal_next} (its tail was lost); the checkpoint includes those records: \
             checkpointed again at {journal_next}"
        );
    }
    Ok(Kv {
        state,
        journal: LogHandle::new(journal),
        journal_next,
        since_checkpoint: replayed,
        checkpointing: false,
    })
}

fn invalid(reason: String) -> Error {
    Error::Invalid {
        what: "keyed-store entry",
        reason,
    }
}

impl Engine {
    fn kv_lock(&self) -> std::sync::MutexGuard<'_, Option<Kv>> {
        self.inner.kv.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live entry at `key`.
    pub fn kv_get(&self, key: &str) -> Result<Option<KvEntry>> {
        self.check_open()?;
        let now = self.now_ms();
        Ok(self
            .kv_lock()
            .as_ref()
            .and_then(|kv| kv.state.get(key, now).cloned()))
    }

    /// Up to `limit` live entries whose key starts with `prefix`, the most recently written
    /// first, stopping before their keys and values pass `max_bytes` (one entry at least).
    pub fn kv_scan(
        &self,
        prefix: &str,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, KvEntry)>> {
        self.check_open()?;
        let now = self.now_ms();
        Ok(self
            .kv_lock()
            .as_ref()
            .map(|kv| kv.state.scan(prefix, limit, max_bytes, now))
            .unwrap_or_default())
    }

    /// Writes `value` at `key`, kept for `ttl_ms`, if the live entry's version is `expected`
    /// (`None`: only if there is none). `done` gets the new version once it is committed, or
    /// `None` at once when the version differs (nothing is written).
    pub fn kv_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
        ttl_ms: u64,
        done: Completion<Option<u64>>,
    ) {
        if let Err(err) = self
            .check_open()
            .and_then(|()| check_entry(key, Some(value)).map_err(invalid))
        {
            return done(Err(err));
        }
        let now = self.now_ms();
        let mut guard = self.kv_lock();
        if guard.is_none() {
            let created = {
                let dir = self.inner.dir.lock().unwrap_or_else(|e| e.into_inner());
                match dir.as_ref() {
                    // What an earlier attempt that failed half-way left holds nothing
                    // confirmed (the engine opened without a store): start afresh.
                    Some(dir) => dir
                        .remove_dir(&dir.kv_dir())
                        .and_then(|()| create_kv(dir, &self.inner.options, now)),
                    None => Err(Error::Closed),
                }
            };
            match created {
                Ok(kv) => *guard = Some(kv),
                Err(err) => {
                    drop(guard);
                    return done(Err(err));
                }
            }
        }
        let kv = guard.as_mut().expect("created above");
        let max = kv.journal.lock().max_body_len();
        if KvState::put_len(key, value) > max {
            drop(guard);
            return done(Err(invalid(format!(
                "a key and value of {} bytes: this engine's journal holds records of at most {max} \
                 bytes (its segment size)",
                KvState::put_len(key, value)
            ))));
        }
        let expires = now.saturating_add(ttl_ms);
        match kv.state.swap(key, expected, value, expires, now) {
            None => {
                drop(guard);
                done(Ok(None));
            }
            Some(record) => {
                let version = kv.state.last_version();
                self.kv_journal(
                    kv,
                    &record,
                    Box::new(move |r| done(r.map(|()| Some(version)))),
                );
            }
        }
    }

    /// Removes `key` if its live version is still `expected`; `done` gets whether it did,
    /// once the removal is committed.
    pub fn kv_remove(&self, key: &str, expected: u64, done: Completion<bool>) {
        if let Err(err) = self.check_open() {
            return done(Err(err));
        }
        let now = self.now_ms();
        let mut guard = self.kv_lock();
        let record = guard
            .as_mut()
            .and_then(|kv| kv.state.remove(key, expected, now).map(|r| (kv, r)));
        match record {
            None => {
                drop(guard);
                done(Ok(false));
            }
            Some((kv, record)) => {
                self.kv_journal(kv, &record, Box::new(move |r| done(r.map(|()| true))));
            }
        }
    }

    /// Submits `record` (call with the store's lock held) and starts a checkpoint when the
    /// journal has grown past the larger of the checkpoint interval and the live entries.
    fn kv_journal(&self, kv: &mut Kv, record: &KvRecord, done: Completion<()>) {
        kv.journal_next += 1;
        kv.since_checkpoint += 1;
        let batch = Batch::new()
            .append(&kv.journal, vec![record.encode()])
            .on_complete(move |result| done(result.map(|_| ())));
        self.submit(batch);
        let every = self
            .inner
            .options
            .checkpoint_every
            .max(kv.state.len() as u64);
        if kv.since_checkpoint >= every && !kv.checkpointing {
            kv.checkpointing = true;
            self.spawn_checkpoint(|engine| {
                if let Err(err) = engine.kv_checkpoint() {
                    tracing::warn!(%err, "keyed-store checkpoint failed; its journal keeps growing until the next one");
                }
            });
        }
    }

    /// Writes a checkpoint of the keyed store (forgetting expired entries) and trims its
    /// journal before it. Serialized with every other checkpoint of the engine.
    pub fn kv_checkpoint(&self) -> Result<()> {
        let _serial = self
            .inner
            .checkpoint_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = self.now_ms();
        let (body, position, journal) = {
            let mut guard = self.kv_lock();
            let Some(kv) = guard.as_mut() else {
                return Ok(());
            };
            kv.state.sweep(now);
            kv.since_checkpoint = 0;
            (
                kv.state.checkpoint(kv.journal_next, now, CHUNK_BYTES),
                kv.journal_next,
                kv.journal.clone(),
            )
        };
        let result = (|| {
            self.barrier()?;
            {
                let dir = self.inner.dir.lock().unwrap_or_else(|e| e.into_inner());
                let dir = dir.as_ref().ok_or(Error::Closed)?;
                dir.write_atomic(&dir.kv_checkpoint_path(), &body)?;
            }
            journal.lock().remove_segments_before(position)?;
            Ok(())
        })();
        if let Some(kv) = self.kv_lock().as_mut() {
            kv.checkpointing = false;
        }
        result
    }

    /// Whether the keyed store has records not in its checkpoint (`close` checkpoints it).
    pub(crate) fn kv_dirty(&self) -> bool {
        self.kv_lock()
            .as_ref()
            .is_some_and(|kv| kv.since_checkpoint > 0)
    }
}
