//! [`RemoteJobStore`]: the job store contract over `sluice://`, each call one request to the
//! server's own job store (in the connection's namespace): `Jobs` over `sluice://` keeps job
//! status, cancellations and schedules durably in the server's data directory by default.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::idempotency::{boxed, BoxFuture};
use sluice_core::{JobStore, Result, Versioned};
use sluice_protocol::{Request, Response};

use crate::link::{unexpected, Link};

/// The server's job store (see the module docs).
#[derive(Clone)]
pub struct RemoteJobStore {
    link: Arc<Link>,
}

impl std::fmt::Debug for RemoteJobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJobStore")
            .field("addr", &self.link.addr())
            .finish()
    }
}

impl RemoteJobStore {
    pub(crate) fn new(link: Arc<Link>) -> Self {
        Self { link }
    }
}

impl JobStore for RemoteJobStore {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>>> {
        boxed(async move {
            let request = Request::JobLoad {
                key: key.to_owned(),
            };
            match self.link.call(request).await? {
                Response::JobEntry(entry) => Ok(entry.map(|e| Versioned {
                    value: e.value,
                    version: e.version,
                })),
                other => Err(unexpected(other)),
            }
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
            let request = Request::JobSwap {
                key: key.to_owned(),
                expected,
                value: value.to_vec(),
                ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            };
            match self.link.call(request).await? {
                Response::Swapped(version) => Ok(version),
                other => Err(unexpected(other)),
            }
        })
    }

    fn remove<'a>(&'a self, key: &'a str, expected: u64) -> BoxFuture<'a, Result<bool>> {
        boxed(async move {
            let request = Request::JobRemove {
                key: key.to_owned(),
                expected,
            };
            match self.link.call(request).await? {
                Response::Removed(removed) => Ok(removed),
                other => Err(unexpected(other)),
            }
        })
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, Versioned)>>> {
        boxed(async move {
            let request = Request::JobScan {
                prefix: prefix.to_owned(),
                limit: u64::try_from(limit).unwrap_or(u64::MAX),
            };
            match self.link.call(request).await? {
                Response::JobEntries(entries) => Ok(entries
                    .into_iter()
                    .map(|e| {
                        (
                            e.key,
                            Versioned {
                                value: e.value,
                                version: e.version,
                            },
                        )
                    })
                    .collect()),
                other => Err(unexpected(other)),
            }
        })
    }
}
