//! Topics and subscriptions: create (or report the existing options), describe, list,
//! delete. Every change rewrites the catalog atomically before it is visible.

use std::collections::BTreeSet;

use super::{open_subscription, open_topic, Engine};
use crate::catalog::{Start, SubscriptionEntry, SubscriptionOptions, TopicOptions};
use crate::dir::check_name;
use crate::error::{Error, Result};
use crate::record::decode_meta;

/// The offset of the first message published at or after `at_ms` (the log's end if none):
/// a binary search over the segments by their newest message, then a walk through one
/// segment, one record read at a time (the log's lock is never held for the whole walk).
fn first_published_at_or_after(log: &crate::commit::LogHandle, at_ms: u64) -> Result<u64> {
    let published = |seq: u64| -> Result<Option<u64>> {
        let body = log.lock().read(seq)?;
        body.map(|b| decode_meta(&b).map(|m| m.published_at_ms))
            .transpose()
    };
    let segments = log.lock().segments();
    let (mut lo, mut hi) = (0, segments.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        let segment = &segments[mid];
        let newest = match segment.end.checked_sub(1).filter(|&s| s >= segment.base) {
            Some(last) => published(last)?.unwrap_or(0),
            None => u64::MAX, // empty (the active segment): nothing older in it
        };
        if newest >= at_ms {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let end = log.lock().end();
    let Some(segment) = segments.get(lo) else {
        return Ok(end);
    };
    let mut seq = segment.base;
    while seq < end {
        if published(seq)?.is_some_and(|p| p >= at_ms) {
            return Ok(seq);
        }
        seq += 1;
    }
    Ok(end)
}

impl Engine {
    fn store_catalog(&self, catalog: &crate::catalog::Catalog) -> Result<()> {
        let dir = self.inner.dir.lock().unwrap_or_else(|e| e.into_inner());
        dir.as_ref()
            .ok_or(Error::Closed)?
            .store_catalog(&catalog.to_bytes())
    }

    /// Creates topic `name`; if it exists, returns its options (the caller decides whether
    /// they conflict with the ones asked for).
    pub fn create_topic(&self, name: &str, options: TopicOptions) -> Result<Option<TopicOptions>> {
        self.check_open()?;
        check_name("topic name", name)?;
        let mut state = self.lock();
        if let Some(topic) = state.topics.get(name) {
            return Ok(Some(topic.options.clone()));
        }
        let topic = {
            let dir = self.inner.dir.lock().unwrap_or_else(|e| e.into_inner());
            let dir = dir.as_ref().ok_or(Error::Closed)?;
            // A leftover directory of a deleted topic of this name (its removal was cut
            // short) is not reused: old messages and old dedup ids must not come back.
            let old = dir.topic_dir(name)?;
            if self.inner.storage.exists(&old).unwrap_or(false) {
                dir.remove_dir(&old)?;
            }
            open_topic(
                dir,
                &self.inner.options,
                name,
                options.clone(),
                self.now_ms(),
            )?
        };
        let mut catalog = state.catalog.clone();
        self.note_backlog_bound(&options);
        catalog.topics.insert(name.to_owned(), options);
        self.store_catalog(&catalog)?;
        state.catalog = catalog;
        self.inner
            .publish_index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), topic.publish_handle());
        state.topics.insert(name.to_owned(), topic);
        Ok(None)
    }

    /// A topic's options and subscriptions.
    pub fn topic(&self, name: &str) -> Result<(TopicOptions, Vec<String>)> {
        let state = self.lock();
        let topic = state
            .topics
            .get(name)
            .ok_or_else(|| Error::topic_not_found(name))?;
        Ok((
            topic.options.clone(),
            topic.subscriptions.iter().cloned().collect(),
        ))
    }

    /// Every topic with its options and subscriptions, by name.
    pub fn topics(&self) -> Vec<(String, TopicOptions, Vec<String>)> {
        let state = self.lock();
        let mut topics: Vec<_> = state
            .topics
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    t.options.clone(),
                    t.subscriptions.iter().cloned().collect(),
                )
            })
            .collect();
        topics.sort_by(|a, b| a.0.cmp(&b.0));
        topics
    }

    /// Deletes a topic, its subscriptions and all their data.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_open()?;
        let subs: Vec<String> = {
            let state = self.lock();
            let topic = state
                .topics
                .get(name)
                .ok_or_else(|| Error::topic_not_found(name))?;
            topic.subscriptions.iter().cloned().collect()
        };
        for sub in subs {
            match self.delete_subscription(&sub) {
                Ok(()) | Err(Error::SubscriptionNotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        let mut state = self.lock();
        if !state.topics.contains_key(name) {
            return Err(Error::topic_not_found(name));
        }
        // The catalog first: if it cannot be written, nothing changed (in memory either).
        let mut catalog = state.catalog.clone();
        catalog.topics.remove(name);
        self.store_catalog(&catalog)?;
        state.catalog = catalog;
        let Some(removed) = state.topics.remove(name) else {
            return Err(Error::topic_not_found(name));
        };
        self.inner
            .publish_index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        // A publish that found the topic before now fails instead of writing to its log,
        // and one already queued fails its own batch (not the engine) when it is flushed.
        removed
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .deleted = true;
        removed.log.mark_deleted();
        // The directory goes while the state lock is held: a create of the same name waits,
        // so it can never have its fresh directory removed by this delete.
        let dir = self.inner.dir.lock().unwrap_or_else(|e| e.into_inner());
        let dir = dir.as_ref().ok_or(Error::Closed)?;
        let removed_dir = dir.remove_dir(&dir.topic_dir(name)?);
        drop(state);
        removed_dir
    }

    /// Creates subscription `name`; if it exists, returns its options (the caller decides
    /// whether they conflict). Its topic must exist. The start position is resolved now:
    /// `Latest` = the end of the log, `Earliest` = the first message retained, `At(ms)` = the
    /// first message published at or after `ms`.
    pub fn create_subscription(
        &self,
        name: &str,
        options: SubscriptionOptions,
    ) -> Result<Option<SubscriptionOptions>> {
        self.check_open()?;
        check_name("subscription name", name)?;
        // A start at a time is found without the state lock (it reads the log).
        let at_time = match options.start {
            Start::At(at_ms) => {
                let log = {
                    let state = self.lock();
                    if let Some(sub) = state.subs.get(name) {
                        return Ok(Some(sub.entry.options.clone()));
                    }
                    state
                        .topics
                        .get(&options.topic)
                        .ok_or_else(|| Error::TopicNotFound {
                            name: options.topic.clone(),
                        })?
                        .log
                        .clone()
                };
                Some((first_published_at_or_after(&log, at_ms)?, log, at_ms))
            }
            _ => None,
        };
        let mut state = self.lock();
        if let Some(sub) = state.subs.get(name) {
            return Ok(Some(sub.entry.options.clone()));
        }
        let topic = state
            .topics
            .get(&options.topic)
            .ok_or_else(|| Error::TopicNotFound {
                name: options.topic.clone(),
            })?;
        let start_offset = match (options.start, at_time) {
            // The topic was deleted and created again meanwhile: search its new log (rare).
            (_, Some((_, searched, at_ms))) if !searched.same_log(&topic.log) => {
                first_published_at_or_after(&topic.log, at_ms)?
            }
            (_, Some((found, _, _))) => found.max(topic.log.lock().first()),
            (Start::Earliest, _) => topic.log.lock().first(),
            _ => topic.log.lock().end(),
        };
        let entry = SubscriptionEntry {
            options,
            start_offset,
        };
        let sub = {
            let dir = self.inner.dir.lock().unwrap_or_else(|e| e.into_inner());
            let dir = dir.as_ref().ok_or(Error::Closed)?;
            // A leftover directory of an earlier subscription of this name is not reused.
            let old = dir.subscription_dir(name)?;
            if self.inner.storage.exists(&old).unwrap_or(false) {
                dir.remove_dir(&old)?;
            }
            open_subscription(dir, &self.inner.options, name, entry.clone(), self.now_ms())?
        };
        let mut catalog = state.catalog.clone();
        catalog.subscriptions.insert(name.to_owned(), entry.clone());
        self.store_catalog(&catalog)?;
        state.catalog = catalog;
        if let Some(topic) = state.topics.get_mut(&entry.options.topic) {
            topic.subscriptions.insert(name.to_owned());
        }
        state.subs.insert(name.to_owned(), sub);
        Ok(None)
    }

    /// A subscription's options.
    pub fn subscription(&self, name: &str) -> Result<SubscriptionOptions> {
        let state = self.lock();
        state
            .subs
            .get(name)
            .map(|s| s.entry.options.clone())
            .ok_or_else(|| Error::subscription_not_found(name))
    }

    /// Every subscription name.
    pub fn subscriptions(&self) -> BTreeSet<String> {
        self.lock().subs.keys().cloned().collect()
    }

    /// Changes a subscription's prefetch (a consumer-side setting).
    pub fn set_prefetch(&self, name: &str, prefetch: u32) -> Result<()> {
        self.check_open()?;
        let mut state = self.lock();
        let mut catalog = state.catalog.clone();
        let entry = catalog
            .subscriptions
            .get_mut(name)
            .ok_or_else(|| Error::subscription_not_found(name))?;
        entry.options.prefetch = prefetch.max(1);
        let entry = entry.clone();
        self.store_catalog(&catalog)?;
        state.catalog = catalog;
        if let Some(sub) = state.subs.get_mut(name) {
            sub.entry = entry;
        }
        Ok(())
    }

    /// Deletes a subscription and its state, journal and DLQ.
    pub fn delete_subscription(&self, name: &str) -> Result<()> {
        self.check_open()?;
        // A checkpoint in progress finishes first; one started later finds it gone.
        let _serial = self
            .inner
            .checkpoint_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut state = self.lock();
        if !state.subs.contains_key(name) {
            return Err(Error::subscription_not_found(name));
        }
        // The catalog first: if it cannot be written, nothing changed (in memory either).
        let mut catalog = state.catalog.clone();
        catalog.subscriptions.remove(name);
        self.store_catalog(&catalog)?;
        state.catalog = catalog;
        let sub = state
            .subs
            .remove(name)
            .ok_or_else(|| Error::subscription_not_found(name))?;
        if let Some(topic) = state.topics.get_mut(&sub.entry.options.topic) {
            topic.subscriptions.remove(name);
        }
        sub.journal.mark_deleted();
        sub.dlq.mark_deleted();
        // The directory goes while the state lock is held: a create of the same name waits,
        // so it can never have its fresh directory removed by this delete.
        let removed_dir = {
            let dir = self.inner.dir.lock().unwrap_or_else(|e| e.into_inner());
            let dir = dir.as_ref().ok_or(Error::Closed)?;
            dir.remove_dir(&dir.subscription_dir(name)?)
        };
        drop(state);
        self.wake();
        removed_dir
    }
}
