//! [`DedupStore`] for [`RedisStore`]: the claims of emulated dedup windows, with the
//! semantics of `sluice_core::dedup::Claims`, shared by every publisher using the store.
//!
//! Invariants:
//! - The key holds `pending:<token>` with the pending time as its expiry while the publish
//!   is under way, or `done` with the window as its expiry once it is confirmed; an expired
//!   key is absent. Redis expires keys itself, so a claim left by a publisher that died (or
//!   whose answer was lost) ends with its pending time, and never counts as published.
//! - Claim and release read then write, in one Lua script each, so they are atomic: of
//!   concurrent claims of a free id exactly one is `Claimed`.
//! - Release deletes only the caller's own pending claim (its token): a stale token cannot
//!   drop a newer claim, nor a confirmed one. Confirm is unconditional (`SET done PX
//!   window`): the message was published, even if the pending claim expired meanwhile.
//! - Forgetting a topic walks its keys with `SCAN MATCH` (never `KEYS`, which blocks Redis)
//!   and unlinks each page; keys claimed while the walk runs may survive it, as claims
//!   taken while a topic is being deleted may survive in `Claims`.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use sluice_core::dedup::{DedupClaim, DedupStore};
use sluice_core::idempotency::{boxed, BoxFuture};
use sluice_core::{ClaimToken, Error, Result};

use crate::idempotency::RELEASE;
use crate::keys;
use crate::store::RedisStore;

/// Keys asked for per `SCAN` call while forgetting a topic.
const SCAN_COUNT: usize = 1000;

/// The value of a confirmed claim.
const DONE: &str = "done";

/// `KEYS[1]`: the key; `ARGV[1]`: `pending:<token>`; `ARGV[2]`: the pending time in ms.
/// Returns `{'duplicate', 0}`, `{'in_progress', pttl}`, `{'claimed', 0}` or, for a value
/// this store never writes (or a pending claim without expiry), `{'unexpected', 0}`.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {'claimed', 0}
end
if value == 'done' then
  return {'duplicate', 0}
end
local ttl = redis.call('PTTL', KEYS[1])
if string.sub(value, 1, 8) == 'pending:' and ttl >= 0 then
  return {'in_progress', ttl}
end
return {'unexpected', 0}
",
    )
});

/// The value a pending claim writes.
fn pending_value(token: &ClaimToken) -> String {
    format!("pending:{}", token.0)
}

impl RedisStore {
    async fn claim_id(&self, topic: &str, id: &str, pending: Duration) -> Result<DedupClaim> {
        let key = keys::dedup(&self.prefix, topic, id);
        let token = ClaimToken(uuid::Uuid::new_v4().simple().to_string());
        let (answer, pttl): (String, i64) = CLAIM
            .key(&key)
            .arg(pending_value(&token))
            .arg(keys::millis(pending))
            .invoke_async(&mut self.connection())
            .await
            .map_err(|err| self.error(err, format_args!("claiming the dedup key `{key}`")))?;
        match answer.as_str() {
            "claimed" => Ok(DedupClaim::Claimed(token)),
            "duplicate" => Ok(DedupClaim::Duplicate),
            "in_progress" => Ok(DedupClaim::InProgress {
                remaining: Duration::from_millis(pttl.unsigned_abs()),
            }),
            _ => Err(Error::backend(
                format!(
                    "Redis key `{key}` holds neither a pending claim with an expiry nor a \
                     confirmed one: was it written by something else under the prefix `{}`?",
                    self.prefix
                ),
                false,
            )),
        }
    }

    async fn confirm_id(&self, topic: &str, id: &str, window: Duration) -> Result<()> {
        let key = keys::dedup(&self.prefix, topic, id);
        redis::cmd("SET")
            .arg(&key)
            .arg(DONE)
            .arg("PX")
            .arg(keys::millis(window))
            .query_async::<()>(&mut self.connection())
            .await
            .map_err(|err| self.error(err, format_args!("confirming the dedup key `{key}`")))
    }

    async fn release_id(&self, topic: &str, id: &str, token: &ClaimToken) -> Result<()> {
        let key = keys::dedup(&self.prefix, topic, id);
        RELEASE
            .key(&key)
            .arg(pending_value(token))
            .invoke_async::<i64>(&mut self.connection())
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
        pending: Duration,
    ) -> BoxFuture<'a, Result<DedupClaim>> {
        boxed(self.claim_id(topic, id, pending))
    }

    fn confirm<'a>(
        &'a self,
        topic: &'a str,
        id: &'a str,
        _token: &'a ClaimToken,
        window: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        // The message was published, so the id is done even if the claim expired meanwhile.
        boxed(self.confirm_id(topic, id, window))
    }

    fn release<'a>(
        &'a self,
        topic: &'a str,
        id: &'a str,
        token: &'a ClaimToken,
    ) -> BoxFuture<'a, Result<()>> {
        boxed(self.release_id(topic, id, token))
    }

    fn forget_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<()>> {
        boxed(self.forget(topic))
    }
}
