//! The dead-letter queue tools: list, redrive (back to this subscription, attempt 1), purge.

use super::{read_record, Completion, Engine};
use crate::error::{Error, Result};
use crate::record::MessageRecord;

impl Engine {
    /// Up to `limit` messages of the DLQ, oldest first, without removing them.
    pub fn dlq_list(&self, name: &str, limit: usize) -> Result<Vec<MessageRecord>> {
        let (offsets, dlq) = {
            let state = self.lock();
            let sub = state
                .subs
                .get(name)
                .ok_or_else(|| Error::subscription_not_found(name))?;
            (
                sub.state.dlq_live().take(limit).collect::<Vec<u64>>(),
                sub.dlq.clone(),
            )
        };
        let mut out = Vec::with_capacity(offsets.len());
        for offset in offsets {
            if let Some(record) = read_record(&dlq, offset)? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Moves the first DLQ message with this id back to the subscription (attempt 1).
    /// `done` gets whether one was found.
    ///
    /// The DLQ's ids are indexed in memory at the first redrive by id (read without the
    /// state lock) and kept up to date after: redriving n messages one by one reads the DLQ
    /// once, not n times.
    pub fn dlq_redrive(&self, name: &str, id: &str, done: Completion<bool>) {
        if let Err(err) = self.check_open() {
            return done(Err(err));
        }
        // One index build at a time; redrives wait for it, never for its reads.
        let _build = self
            .inner
            .dlq_index_build
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Err(err) = self.build_dlq_index(name) {
            return done(Err(err));
        }
        let mut state = self.lock();
        let Some(sub) = state.subs.get_mut(name) else {
            drop(state);
            return done(Err(Error::subscription_not_found(name)));
        };
        let index = sub.dlq_index.get_or_insert_with(Default::default);
        let offsets = index.remove(id).unwrap_or_default();
        let mut live = offsets.into_iter().filter(|&o| sub.state.dlq_contains(o));
        let found = live.next();
        let rest: Vec<u64> = live.collect();
        if !rest.is_empty() {
            index.insert(id.to_owned(), rest);
        }
        let Some(offset) = found else {
            drop(state);
            return done(Ok(false));
        };
        match sub.state.redrive(offset) {
            Ok(records) => {
                self.journal(
                    name,
                    sub,
                    &records,
                    Box::new(move |result| done(result.map(|()| true))),
                );
            }
            Err(err) => {
                drop(state);
                done(Err(Error::State(err)));
            }
        }
    }

    /// Builds the subscription's id index of its DLQ if it has none: the live offsets are
    /// taken under the state lock (no I/O), their ids read without it; dead-letters made
    /// meanwhile go into the index as they happen.
    fn build_dlq_index(&self, name: &str) -> Result<()> {
        let (offsets, dlq, generation) = {
            let mut state = self.lock();
            let sub = state
                .subs
                .get_mut(name)
                .ok_or_else(|| Error::subscription_not_found(name))?;
            if sub.dlq_index.is_some() {
                return Ok(());
            }
            sub.dlq_index = Some(Default::default());
            (
                sub.state.dlq_live().collect::<Vec<u64>>(),
                sub.dlq.clone(),
                sub.generation,
            )
        };
        // Every dead-letter in the snapshot was submitted before it: once those are
        // committed, each of them can be read.
        if let Err(err) = self.barrier() {
            if let Some(sub) = self.lock().subs.get_mut(name) {
                sub.dlq_index = None;
            }
            return Err(err);
        }
        let mut ids: Vec<(String, u64)> = Vec::with_capacity(offsets.len());
        let mut failed = None;
        for offset in offsets {
            match read_record(&dlq, offset) {
                Ok(Some(record)) => ids.push((record.id, offset)),
                Ok(None) => {}
                Err(err) => {
                    failed = Some(err);
                    break;
                }
            }
        }
        let mut state = self.lock();
        let Some(sub) = state
            .subs
            .get_mut(name)
            .filter(|s| s.generation == generation)
        else {
            return Ok(());
        };
        if let Some(err) = failed {
            sub.dlq_index = None;
            return Err(err);
        }
        let index = sub.dlq_index.get_or_insert_with(Default::default);
        for (id, offset) in ids {
            let slot = index.entry(id).or_default();
            slot.push(offset);
            slot.sort_unstable();
            slot.dedup();
        }
        Ok(())
    }

    /// Deletes every message of the DLQ; `done` gets how many.
    pub fn dlq_purge(&self, name: &str, done: Completion<u64>) {
        if let Err(err) = self.check_open() {
            return done(Err(err));
        }
        let mut state = self.lock();
        let Some(sub) = state.subs.get_mut(name) else {
            drop(state);
            return done(Err(Error::subscription_not_found(name)));
        };
        let offsets: Vec<u64> = sub.state.dlq_live().collect();
        let mut records = Vec::with_capacity(offsets.len());
        for offset in &offsets {
            match sub.state.purge(*offset) {
                Ok(record) => records.push(record),
                Err(err) => {
                    drop(state);
                    return done(Err(Error::State(err)));
                }
            }
        }
        let count = offsets.len() as u64;
        // Everything live left the DLQ: dead-letters from now on start the index again.
        if sub.dlq_index.is_some() {
            sub.dlq_index = Some(Default::default());
        }
        self.journal(
            name,
            sub,
            &records,
            Box::new(move |result| done(result.map(|()| count))),
        );
    }
}
