//! [`LimiterStore`] for [`RedisStore`]: global rate limits shared by workers in any process
//! (on RabbitMQ, SQS or Kafka, which keep no limiter of their own).
//!
//! Invariants:
//! - A limit is a hash `<prefix>:limit:<name>` (`tokens`, `at` in ms of Redis's own clock,
//!   `TIME`), changed by one Lua script per take: refill, give back, take, exactly the
//!   arithmetic of `sluice_core::limit::Bucket`, atomically, so concurrent workers never
//!   take the same token. Redis's clock is the one clock every worker shares.
//! - The key expires once a full bucket would have refilled (plus a second; at most about 30
//!   years): an idle limit starts full again, as a new one does. Needs Redis 5 or later
//!   (scripts that read `TIME` and then write are replicated by their effects).

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use sluice_core::idempotency::{boxed, BoxFuture};
use sluice_core::limit::{Grant, LimiterStore, Rate};
use sluice_core::Result;

use crate::keys;
use crate::store::RedisStore;

/// `KEYS`: the limit; `ARGV`: per second, burst, give back, want. Returns `{granted, retry
/// after in µs}`.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local back, want = tonumber(ARGV[3]), tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(h[1]), tonumber(h[2])
if not tokens or not at then tokens, at = burst, now end
local elapsed = math.max(now - at, 0)
tokens = math.min(tokens + elapsed * rate / 1000 + back, burst)
local granted = math.min(math.max(math.floor(tokens), 0), want)
tokens = tokens - granted
local retry = 0
if granted == 0 and want > 0 then
  retry = math.min(math.ceil((1 - tokens) / rate * 1000000), 1e15)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(math.max(now, at)))
redis.call('PEXPIRE', KEYS[1], math.min(math.ceil(burst / rate * 1000) + 1000, 1e15))
return {granted, retry}
",
    )
});

impl LimiterStore for RedisStore {
    fn take<'a>(
        &'a self,
        name: &'a str,
        rate: Rate,
        give_back: u32,
        want: u32,
    ) -> BoxFuture<'a, Result<Grant>> {
        boxed(async move {
            let key = keys::limit(&self.prefix, name);
            let (granted, retry_us): (u32, u64) = TAKE
                .key(&key)
                .arg(rate.per_second)
                .arg(rate.burst.max(1))
                .arg(give_back)
                .arg(want)
                .invoke_async(&mut self.connection())
                .await
                .map_err(|err| {
                    self.error(err, format_args!("taking tokens of the limit `{key}`"))
                })?;
            Ok(Grant {
                granted,
                retry_after: Duration::from_micros(retry_us),
            })
        })
    }
}
