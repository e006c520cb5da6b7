//! [`EngineJobStore`]: the job store contract over the engine's keyed store (`DATA/kv`), so
//! job status, cancellations, unique locks and the schedule registry are durable in the data
//! directory with nothing else to run. Every key is prefixed with its namespace and a colon
//! (`<namespace>:`, just `:` without one), so namespaces sharing one engine (`sluice serve`)
//! never see each other's jobs, the default namespace included.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::idempotency::{boxed, BoxFuture};
use sluice_core::{Error, JobStore, Versioned};
use sluice_engine::engine::Engine;

use crate::bridge::completion;
use crate::convert::error;

/// The engine's keyed store as a [`JobStore`] (see the module docs).
#[derive(Clone)]
pub struct EngineJobStore {
    engine: Engine,
    /// `<namespace>:`, or `:`.
    prefix: Arc<str>,
}

impl std::fmt::Debug for EngineJobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineJobStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EngineJobStore {
    pub(crate) fn new(engine: Engine, prefix: Arc<str>) -> Self {
        Self { engine, prefix }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// A TTL in whole ms (saturating: a TTL past the year 292 million is forever).
fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

impl JobStore for EngineJobStore {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, sluice_core::Result<Option<Versioned>>> {
        boxed(async move {
            let entry = self.engine.kv_get(&self.key(key)).map_err(error)?;
            Ok(entry.map(|e| Versioned {
                value: e.value,
                version: e.version,
            }))
        })
    }

    fn swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, sluice_core::Result<Option<u64>>> {
        boxed(async move {
            let (done, swapped) = completion();
            self.engine
                .kv_swap(&self.key(key), expected, value, ttl_ms(ttl), done);
            swapped.await
        })
    }

    fn remove<'a>(
        &'a self,
        key: &'a str,
        expected: u64,
    ) -> BoxFuture<'a, sluice_core::Result<bool>> {
        boxed(async move {
            let (done, removed) = completion();
            self.engine.kv_remove(&self.key(key), expected, done);
            removed.await
        })
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, sluice_core::Result<Vec<(String, Versioned)>>> {
        boxed(async move { self.scan_within(prefix, limit, usize::MAX) })
    }
}

impl EngineJobStore {
    /// [`JobStore::scan`], stopping before the keys and values found pass `max_bytes` (one
    /// entry at least): what `sluice serve` answers a client's scan with.
    pub fn scan_within(
        &self,
        prefix: &str,
        limit: usize,
        max_bytes: usize,
    ) -> sluice_core::Result<Vec<(String, Versioned)>> {
        {
            let found = self
                .engine
                .kv_scan(&self.key(prefix), limit, max_bytes)
                .map_err(error)?;
            found
                .into_iter()
                .map(|(key, e)| {
                    let key = key.strip_prefix(&*self.prefix).ok_or_else(|| {
                        Error::backend(format!("a key outside the namespace: {key}"), false)
                    })?;
                    Ok((
                        key.to_owned(),
                        Versioned {
                            value: e.value,
                            version: e.version,
                        },
                    ))
                })
                .collect()
        }
    }
}
