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
    pub fn dlq_redrive(&self, name: &str, id: &str, done: Completion<bool>) {
        if let Err(err) = self.check_open() {
            return done(Err(err));
        }
        let mut state = self.lock();
        let Some(sub) = state.subs.get_mut(name) else {
            drop(state);
            return done(Err(Error::subscription_not_found(name)));
        };
        let found = sub.state.dlq_live().collect::<Vec<u64>>().into_iter().find(
            |offset| matches!(read_record(&sub.dlq, *offset), Ok(Some(record)) if record.id == id),
        );
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
        self.journal(
            name,
            sub,
            &records,
            Box::new(move |result| done(result.map(|()| count))),
        );
    }
}
