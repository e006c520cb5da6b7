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
//! - A global concurrency bound is a hash `<prefix>:slots:<name>` (holder → slots) and a
//!   sorted set `<prefix>:slots:<name>:until` (holder → end of its lease, ms of `TIME`),
//!   changed by one script per call with the rules of `sluice_core::limit::SlotHolders`:
//!   expired holders forgotten, the caller's count kept at most `hold`, renewal and take, atomically. Both keys
//!   expire with the longest lease.
//! - Flow-control flags are one hash `<prefix>:flags`: flag → `<expiry>|<value>` (expiry in
//!   ms of `TIME`, 0 for none), written and read by scripts that drop expired flags.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use sluice_core::idempotency::{boxed, BoxFuture};
use sluice_core::limit::{Grant, LimiterStore, Rate, SlotsRequest};
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

/// `KEYS`: the holders hash, the leases sorted set; `ARGV`: holder, max, hold, want, ttl
/// in ms. Returns the slots taken.
static SLOTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local holder = ARGV[1]
local max, hold = tonumber(ARGV[2]), tonumber(ARGV[3])
local want, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, h in ipairs(expired) do redis.call('HDEL', KEYS[1], h) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local all = 0
local had = 0
local held = redis.call('HGETALL', KEYS[1])
for i = 1, #held, 2 do
  local n = tonumber(held[i + 1])
  if held[i] == holder then had = n else all = all + n end
end
local mine = math.min(had, hold)
local free = math.max(max - all - mine, 0)
local taken = math.min(free, want)
local now_held = mine + taken
if now_held == 0 then
  redis.call('HDEL', KEYS[1], holder)
  redis.call('ZREM', KEYS[2], holder)
else
  redis.call('HSET', KEYS[1], holder, now_held)
  redis.call('ZADD', KEYS[2], now + ttl, holder)
  local last = tonumber(redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2])
  redis.call('PEXPIREAT', KEYS[1], last)
  redis.call('PEXPIREAT', KEYS[2], last)
end
return taken
",
    )
});

/// `KEYS`: the flags hash; `ARGV`: flag, value (empty with `remove` = 1), ttl in ms (0:
/// none), remove.
static SET_FLAG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[4] == '1' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
local expires = 0
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  local t = redis.call('TIME')
  expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl
end
redis.call('HSET', KEYS[1], ARGV[1], expires .. '|' .. ARGV[2])
return 0
",
    )
});

/// `KEYS`: the flags hash; `ARGV`: prefix. Returns `{flag, value, …}` of the live flags
/// under the prefix, dropping the expired ones.
static FLAGS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local flag, stored = all[i], all[i + 1]
  local bar = string.find(stored, '|', 1, true)
  local expires = tonumber(string.sub(stored, 1, bar - 1))
  if expires ~= 0 and expires <= now then
    redis.call('HDEL', KEYS[1], flag)
  elseif string.sub(flag, 1, #ARGV[1]) == ARGV[1] then
    table.insert(out, flag)
    table.insert(out, string.sub(stored, bar + 1))
  end
end
return out
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

    fn slots<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        request: SlotsRequest,
    ) -> BoxFuture<'a, Result<u32>> {
        boxed(async move {
            let key = keys::slots(&self.prefix, name);
            let ttl_ms = u64::try_from(request.ttl.as_millis())
                .unwrap_or(u64::MAX)
                .clamp(1, 1 << 50);
            let taken: u32 = SLOTS
                .key(&key)
                .key(format!("{key}:until"))
                .arg(holder)
                .arg(request.max.max(1))
                .arg(request.hold)
                .arg(request.want)
                .arg(ttl_ms)
                .invoke_async(&mut self.connection())
                .await
                .map_err(|err| {
                    self.error(err, format_args!("taking slots of the bound `{key}`"))
                })?;
            Ok(taken)
        })
    }

    fn set_flag<'a>(
        &'a self,
        key: &'a str,
        value: Option<&'a str>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>> {
        boxed(async move {
            let hash = keys::flags(&self.prefix);
            let ttl_ms = ttl.map_or(0, |ttl| {
                u64::try_from(ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .clamp(1, 1 << 50)
            });
            SET_FLAG
                .key(&hash)
                .arg(key)
                .arg(value.unwrap_or(""))
                .arg(ttl_ms)
                .arg(if value.is_none() { "1" } else { "0" })
                .invoke_async::<i64>(&mut self.connection())
                .await
                .map_err(|err| self.error(err, format_args!("setting the flag `{key}`")))?;
            Ok(())
        })
    }

    fn flags<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<(String, String)>>> {
        boxed(async move {
            let hash = keys::flags(&self.prefix);
            let flat: Vec<String> = FLAGS
                .key(&hash)
                .arg(prefix)
                .invoke_async(&mut self.connection())
                .await
                .map_err(|err| self.error(err, format_args!("reading the flags `{prefix}*`")))?;
            let mut found: Vec<(String, String)> = flat
                .chunks_exact(2)
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect();
            found.sort();
            Ok(found)
        })
    }
}
