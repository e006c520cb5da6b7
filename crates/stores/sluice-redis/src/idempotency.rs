//! [`IdempotencyStore`] for [`RedisStore`]: claims and done markers, with the semantics of
//! `sluice_runtime::InMemoryStore` (see `sluice_core::idempotency`).
//!
//! Invariants:
//! - The key holds `claim:<token>` with the lease as its expiry, or `done` with the TTL as
//!   its expiry; an expired key is absent. Redis expires keys itself, so a claim left by a
//!   crashed consumer ends with its lease.
//! - Every read-then-write (claim, renew, release) is one Lua script, so it is atomic: of
//!   any number of concurrent claims of a free key exactly one is `Acquired`.
//! - Renew and release act only on the caller's own claim (its token): a stale token can
//!   neither extend nor drop a newer claim. Complete is unconditional: the effect happened.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use sluice_core::idempotency::{boxed, BoxFuture};
use sluice_core::{Claim, ClaimToken, Error, IdempotencyKey, IdempotencyStore, Result};

use crate::keys;
use crate::store::RedisStore;

/// The value of a done marker.
const DONE: &str = "done";

/// `KEYS[1]`: the key; `ARGV[1]`: `claim:<token>`; `ARGV[2]`: the lease in ms.
/// Returns `{'done', 0}`, `{'in_progress', pttl}`, `{'acquired', 0}` or, for a value this
/// store never writes (or a claim without expiry), `{'unexpected', 0}`.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {'acquired', 0}
end
if value == 'done' then
  return {'done', 0}
end
local ttl = redis.call('PTTL', KEYS[1])
if string.sub(value, 1, 6) == 'claim:' and ttl >= 0 then
  return {'in_progress', ttl}
end
return {'unexpected', 0}
",
    )
});

/// `KEYS[1]`: the key; `ARGV[1]`: `claim:<token>`; `ARGV[2]`: the lease in ms.
/// Returns 1 if the claim was the caller's and is extended, 0 otherwise.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
",
    )
});

/// `KEYS[1]`: the key; `ARGV[1]`: the value the caller's claim wrote (`claim:<token>`, or
/// `pending:<token>` for a dedup claim). Deletes the key if it still holds that claim.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// The value a claim writes.
fn claim_value(token: &ClaimToken) -> String {
    format!("claim:{}", token.0)
}

impl RedisStore {
    async fn claim_key(&self, key: &IdempotencyKey, lease: Duration) -> Result<Claim> {
        let redis_key = keys::idempotency(&self.prefix, key);
        let token = ClaimToken(uuid::Uuid::new_v4().simple().to_string());
        let (answer, pttl): (String, i64) = CLAIM
            .key(&redis_key)
            .arg(claim_value(&token))
            .arg(keys::millis(lease))
            .invoke_async(&mut self.connection())
            .await
            .map_err(|err| self.error(err, format_args!("claiming `{redis_key}`")))?;
        match answer.as_str() {
            "acquired" => Ok(Claim::Acquired(token)),
            "done" => Ok(Claim::Done),
            "in_progress" => Ok(Claim::InProgress {
                remaining: Duration::from_millis(pttl.unsigned_abs()),
            }),
            _ => Err(Error::backend(
                format!(
                    "Redis key `{redis_key}` holds neither a claim with an expiry nor a done \
                     marker: was it written by something else under the prefix `{}`?",
                    self.prefix
                ),
                false,
            )),
        }
    }

    async fn renew_key(
        &self,
        key: &IdempotencyKey,
        token: &ClaimToken,
        lease: Duration,
    ) -> Result<bool> {
        let redis_key = keys::idempotency(&self.prefix, key);
        let renewed: i64 = RENEW
            .key(&redis_key)
            .arg(claim_value(token))
            .arg(keys::millis(lease))
            .invoke_async(&mut self.connection())
            .await
            .map_err(|err| self.error(err, format_args!("renewing the claim `{redis_key}`")))?;
        Ok(renewed == 1)
    }

    async fn complete_key(&self, key: &IdempotencyKey, ttl: Duration) -> Result<()> {
        let redis_key = keys::idempotency(&self.prefix, key);
        redis::cmd("SET")
            .arg(&redis_key)
            .arg(DONE)
            .arg("PX")
            .arg(keys::millis(ttl))
            .query_async::<()>(&mut self.connection())
            .await
            .map_err(|err| self.error(err, format_args!("marking `{redis_key}` done")))
    }

    async fn release_key(&self, key: &IdempotencyKey, token: &ClaimToken) -> Result<()> {
        let redis_key = keys::idempotency(&self.prefix, key);
        RELEASE
            .key(&redis_key)
            .arg(claim_value(token))
            .invoke_async::<i64>(&mut self.connection())
            .await
            .map(drop)
            .map_err(|err| self.error(err, format_args!("releasing the claim `{redis_key}`")))
    }
}

impl IdempotencyStore for RedisStore {
    fn claim<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim>> {
        boxed(self.claim_key(key, lease))
    }

    fn renew<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        token: &'a ClaimToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        boxed(self.renew_key(key, token, lease))
    }

    fn complete<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        _token: &'a ClaimToken,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        // The effect happened, so the key is done even if the claim had expired meanwhile.
        boxed(self.complete_key(key, ttl))
    }

    fn release<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        token: &'a ClaimToken,
    ) -> BoxFuture<'a, Result<()>> {
        boxed(self.release_key(key, token))
    }
}
