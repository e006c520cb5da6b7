//! [`DedupStore`] for [`RedisStore`]: the claims of emulated dedup windows, with the
//! semantics of `sluice_core::dedup::Claims`, shared by every publisher using the store.
//!
//! Invariants:
//! - A claim is one key set with `SET NX PX window`: atomic, so of concurrent publishes of
//!   one id exactly one claims it, and Redis drops it when the window ends.
//! - Release deletes the key unconditionally, as `Claims` does: only the publish that took
//!   the claim releases it, after failing.
//! - Forgetting a topic walks its keys with `SCAN MATCH` (never `KEYS`, which blocks Redis)
//!   and unlinks each page; keys claimed while the walk runs may survive it, as claims
//!   taken while a topic is being deleted may survive in `Claims`.

use std::time::Duration;

use sluice_core::dedup::DedupStore;
use sluice_core::idempotency::{boxed, BoxFuture};
use sluice_core::Result;

use crate::keys;
use crate::store::RedisStore;

/// Keys asked for per `SCAN` call while forgetting a topic.
const SCAN_COUNT: usize = 1000;

impl RedisStore {
    async fn claim_id(&self, topic: &str, id: &str, window: Duration) -> Result<bool> {
        let key = keys::dedup(&self.prefix, topic, id);
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(keys::millis(window))
            .query_async(&mut self.connection())
            .await
            .map_err(|err| self.error(err, format_args!("claiming the dedup key `{key}`")))?;
        Ok(set.is_some())
    }

    async fn release_id(&self, topic: &str, id: &str) -> Result<()> {
        let key = keys::dedup(&self.prefix, topic, id);
        redis::cmd("DEL")
            .arg(&key)
            .query_async::<i64>(&mut self.connection())
            .await
            .map(drop)
            .map_err(|err| self.error(err, format_args!("releasing the dedup key `{key}`")))
    }

    async fn forget(&self, topic: &str) -> Result<()> {
        let pattern = keys::dedup_pattern(&self.prefix, topic);
        let mut connection = self.connection();
        let mut cursor: u64 = 0;
        loop {
            let (next, found): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut connection)
                .await
                .map_err(|err| self.error(err, format_args!("scanning for `{pattern}`")))?;
            if !found.is_empty() {
                redis::cmd("UNLINK")
                    .arg(&found)
                    .query_async::<i64>(&mut connection)
                    .await
                    .map_err(|err| {
                        self.error(err, format_args!("unlinking the keys of `{pattern}`"))
                    })?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

impl DedupStore for RedisStore {
    fn claim<'a>(
        &'a self,
        topic: &'a str,
        id: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        boxed(self.claim_id(topic, id, window))
    }

    fn release<'a>(&'a self, topic: &'a str, id: &'a str) -> BoxFuture<'a, Result<()>> {
        boxed(self.release_id(topic, id))
    }

    fn forget_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<()>> {
        boxed(self.forget(topic))
    }
}
