//! [`JobStore`] for [`RedisStore`]: job status, cancellations and unique locks, shared by
//! every process using the store's prefix.
//!
//! Invariants:
//! - An entry is a hash (`val`, `ver`) with the entry's TTL as the key's expiry; Redis
//!   expires it by itself, so an expired entry is absent.
//! - Every write draws its version from one counter (`INCR <prefix>:jobs-version`), so a
//!   version is never handed out twice, even to a key removed and written again.
//! - Swap and remove compare the version and write in one Lua script each: of concurrent
//!   writers expecting one version (or creating one key), exactly one lands.
//! - A sorted set (`<prefix>:jobs-recent`, score = version) lists the keys newest first for
//!   `scan`; members whose entry expired are dropped from it as scans meet them.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use sluice_core::idempotency::{boxed, BoxFuture};
use sluice_core::jobs::{JobStore, Versioned};
use sluice_core::Result;

use crate::keys;
use crate::store::RedisStore;

/// `KEYS`: the entry, the version counter, the recent set; `ARGV`: the expected version
/// (empty: create), the value, the TTL in ms, the entry's name in the recent set. Returns
/// the new version, or 0 when the entry changed.
static SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = redis.call('HGET', KEYS[1], 'ver')
if ARGV[1] == '' then
  if current then return 0 end
elseif current ~= ARGV[1] then
  return 0
end
local version = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'val', ARGV[2], 'ver', version)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[3], version, ARGV[4])
return version
",
    )
});

/// `KEYS`: the entry, the recent set; `ARGV`: the expected version, the entry's name.
static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 'ver') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
",
    )
});

/// `KEYS`: the recent set; `ARGV`: the entry key prefix, the name prefix, the limit.
/// Returns `{name, value, version, …}`, newest first. Walks the set in pages; members whose
/// entry is gone are removed from it.
static SCAN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out, found, start = {}, 0, 0
local limit = tonumber(ARGV[3])
while found < limit do
  local page = redis.call('ZREVRANGE', KEYS[1], start, start + 499)
  if #page == 0 then break end
  for _, name in ipairs(page) do
    local entry = redis.call('HMGET', ARGV[1] .. name, 'val', 'ver')
    if not entry[2] then
      redis.call('ZREM', KEYS[1], name)
      start = start - 1
    elseif string.sub(name, 1, #ARGV[2]) == ARGV[2] and found < limit then
      out[#out + 1] = name
      out[#out + 1] = entry[1]
      out[#out + 1] = entry[2]
      found = found + 1
    end
  end
  start = start + #page
end
return out
",
    )
});

impl RedisStore {
    fn entry(&self, key: &str) -> String {
        format!("{}{key}", keys::jobs_entry_prefix(&self.prefix))
    }

    async fn load_entry(&self, key: &str) -> Result<Option<Versioned>> {
        let entry = self.entry(key);
        let (value, version): (Option<Vec<u8>>, Option<u64>) = redis::cmd("HMGET")
            .arg(&entry)
            .arg("val")
            .arg("ver")
            .query_async(&mut self.connection())
            .await
            .map_err(|err| self.error(err, format_args!("reading the job entry `{entry}`")))?;
        Ok(value
            .zip(version)
            .map(|(value, version)| Versioned { value, version }))
    }

    async fn swap_entry(
        &self,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
        ttl: Duration,
    ) -> Result<Option<u64>> {
        let entry = self.entry(key);
        let version: u64 = SWAP
            .key(&entry)
            .key(keys::jobs_version(&self.prefix))
            .key(keys::jobs_recent(&self.prefix))
            .arg(expected.map(|v| v.to_string()).unwrap_or_default())
            .arg(value)
            .arg(keys::millis(ttl))
            .arg(key)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|err| self.error(err, format_args!("writing the job entry `{entry}`")))?;
        Ok((version > 0).then_some(version))
    }

    async fn remove_entry(&self, key: &str, expected: u64) -> Result<bool> {
        let entry = self.entry(key);
        let removed: i64 = REMOVE
            .key(&entry)
            .key(keys::jobs_recent(&self.prefix))
            .arg(expected)
            .arg(key)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|err| self.error(err, format_args!("removing the job entry `{entry}`")))?;
        Ok(removed == 1)
    }

    async fn scan_entries(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Versioned)>> {
        let recent = keys::jobs_recent(&self.prefix);
        let flat: Vec<redis::Value> = SCAN
            .key(&recent)
            .arg(keys::jobs_entry_prefix(&self.prefix))
            .arg(prefix)
            .arg(limit)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|err| {
                self.error(err, format_args!("listing the job entries of `{recent}`"))
            })?;
        let bad = |err: redis::ParsingError| {
            self.error(
                err.into(),
                format_args!("reading the entries of `{recent}`"),
            )
        };
        let mut out = Vec::with_capacity(flat.len() / 3);
        let mut values = flat.into_iter();
        while let (Some(name), Some(value), Some(version)) =
            (values.next(), values.next(), values.next())
        {
            let name: String = redis::from_redis_value(name).map_err(bad)?;
            let value: Vec<u8> = redis::from_redis_value(value).map_err(bad)?;
            let version: u64 = redis::from_redis_value(version).map_err(bad)?;
            out.push((name, Versioned { value, version }));
        }
        Ok(out)
    }
}

impl JobStore for RedisStore {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>>> {
        boxed(self.load_entry(key))
    }

    fn swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        boxed(self.swap_entry(key, expected, value, ttl))
    }

    fn remove<'a>(&'a self, key: &'a str, expected: u64) -> BoxFuture<'a, Result<bool>> {
        boxed(self.remove_entry(key, expected))
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, Versioned)>>> {
        boxed(self.scan_entries(prefix, limit))
    }
}
