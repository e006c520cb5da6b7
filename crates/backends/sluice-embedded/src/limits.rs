//! The embedded engine's limiter: global rate limits' buckets in the engine's process, shared
//! by every worker on the engine (and, through `sluice serve`, by every client of it). Every
//! limit's name is prefixed with its namespace and a colon (`<namespace>:`, just `:` without
//! one), so no namespace reaches another's limits, the default one included.

use std::sync::Arc;

use sluice_core::idempotency::BoxFuture;
use sluice_core::limit::{Grant, LimiterStore, MemoryLimiter, Rate, SlotsRequest};

/// The engine's buckets under one namespace.
#[derive(Debug, Clone)]
pub struct EngineLimiter {
    buckets: Arc<MemoryLimiter>,
    /// `<namespace>:`, or `:`.
    prefix: Arc<str>,
}

impl EngineLimiter {
    pub(crate) fn new(buckets: Arc<MemoryLimiter>, prefix: Arc<str>) -> Self {
        Self { buckets, prefix }
    }
}

impl LimiterStore for EngineLimiter {
    fn take<'a>(
        &'a self,
        name: &'a str,
        rate: Rate,
        give_back: u32,
        want: u32,
    ) -> BoxFuture<'a, sluice_core::Result<Grant>> {
        let name = format!("{}{name}", self.prefix);
        let buckets = self.buckets.clone();
        Box::pin(async move { buckets.take(&name, rate, give_back, want).await })
    }

    fn slots<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        request: SlotsRequest,
    ) -> BoxFuture<'a, sluice_core::Result<u32>> {
        let name = format!("{}{name}", self.prefix);
        let buckets = self.buckets.clone();
        Box::pin(async move { buckets.slots(&name, holder, request).await })
    }

    fn set_flag<'a>(
        &'a self,
        key: &'a str,
        value: Option<&'a str>,
        ttl: Option<std::time::Duration>,
    ) -> BoxFuture<'a, sluice_core::Result<()>> {
        let key = format!("{}{key}", self.prefix);
        Box::pin(async move { self.buckets.set_flag(&key, value, ttl).await })
    }

    fn flags<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, sluice_core::Result<Vec<(String, String)>>> {
        let full = format!("{}{prefix}", self.prefix);
        Box::pin(async move {
            let found = self.buckets.flags(&full).await?;
            Ok(found
                .into_iter()
                .map(|(key, value)| (key[self.prefix.len()..].to_owned(), value))
                .collect())
        })
    }
}
