//! The job store contract: where job status, cancellations and unique-job locks live.
//!
//! The store is a small versioned map of JSON documents with a time to live; every rule of
//! job status (which transitions are allowed, when a cancel wins against a start, when a
//! unique lock is stale) lives once, in the runtime, on top of compare-and-swap. A store
//! implements four calls: [`load`](JobStore::load), [`swap`](JobStore::swap) (write only
//! if the version is still the one read), [`remove`](JobStore::remove) and
//! [`scan`](JobStore::scan). [`MemoryJobStore`] keeps it in this process; `sluice-sql`
//! (PostgreSQL, SQLite) and `sluice-redis` keep it where every process sees it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::idempotency::{boxed, BoxFuture};

/// A stored document and its version (changes on every write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The document (JSON).
    pub value: Vec<u8>,
    /// Its version: a [`swap`](JobStore::swap) expecting it succeeds only while nobody else
    /// wrote the key.
    pub version: u64,
}

/// A versioned map with a time to live per entry, shared by everyone who must agree on a
/// job's status. Expired entries are absent for every call.
pub trait JobStore: Send + Sync + 'static {
    /// The live entry at `key`, if any.
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>>>;

    /// Writes `value` at `key`, kept for `ttl`, if the entry's version is still `expected`
    /// (`None`: only if there is no live entry). Returns the new version, or `None` when the
    /// entry changed since it was read (nothing is written).
    fn swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<u64>>>;

    /// Removes `key` if its version is still `expected`; whether it did.
    fn remove<'a>(&'a self, key: &'a str, expected: u64) -> BoxFuture<'a, Result<bool>>;

    /// Up to `limit` live entries whose key starts with `prefix`, the most recently written
    /// first.
    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, Versioned)>>>;
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    version: u64,
    expires: Instant,
    written: u64,
}

/// A [`JobStore`] in this process's memory: job status is seen by the `Jobs` of this
/// process only and is lost with it. Share `sluice-sql`'s or `sluice-redis`'s store between
/// processes.
#[derive(Debug, Default)]
pub struct MemoryJobStore {
    // std Mutex: never held across an .await.
    entries: Mutex<(HashMap<String, Entry>, u64)>,
}

impl MemoryJobStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn far(ttl: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

impl JobStore for MemoryJobStore {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>>> {
        boxed(async move {
            let entries = self.entries.lock().expect("job store");
            Ok(entries
                .0
                .get(key)
                .filter(|e| e.expires > Instant::now())
                .map(|e| Versioned {
                    value: e.value.clone(),
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
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        boxed(async move {
            let mut guard = self.entries.lock().expect("job store");
            let (entries, counter) = &mut *guard;
            let now = Instant::now();
            let current = entries
                .get(key)
                .filter(|e| e.expires > now)
                .map(|e| e.version);
            if current != expected {
                return Ok(None);
            }
            *counter += 1;
            let version = *counter;
            entries.insert(
                key.to_owned(),
                Entry {
                    value: value.to_vec(),
                    version,
                    expires: far(ttl),
                    written: version,
                },
            );
            // Past 1024 entries, every 512th write sweeps out the expired ones.
            if entries.len() > 1024 && version % 512 == 0 {
                entries.retain(|_, e| e.expires > now);
            }
            Ok(Some(version))
        })
    }

    fn remove<'a>(&'a self, key: &'a str, expected: u64) -> BoxFuture<'a, Result<bool>> {
        boxed(async move {
            let mut guard = self.entries.lock().expect("job store");
            let live = guard
                .0
                .get(key)
                .is_some_and(|e| e.version == expected && e.expires > Instant::now());
            if live {
                guard.0.remove(key);
            }
            Ok(live)
        })
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, Versioned)>>> {
        boxed(async move {
            let guard = self.entries.lock().expect("job store");
            let now = Instant::now();
            let mut found: Vec<(u64, String, Versioned)> = guard
                .0
                .iter()
                .filter(|(k, e)| k.starts_with(prefix) && e.expires > now)
                .map(|(k, e)| {
                    let v = Versioned {
                        value: e.value.clone(),
                        version: e.version,
                    };
                    (e.written, k.clone(), v)
                })
                .collect();
            found.sort_by_key(|entry| std::cmp::Reverse(entry.0));
            Ok(found
                .into_iter()
                .take(limit)
                .map(|(_, k, v)| (k, v))
                .collect())
        })
    }
}
