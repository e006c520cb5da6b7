//! The limiter contract: rate limits shared by every worker that names them, in any process.
//!
//! A limit is a token bucket known by name: tokens refill at `per_second` up to `burst`, and
//! a worker takes tokens *before it pulls*, so the backlog stays in the broker. A
//! [`LimiterStore`] keeps the buckets where every worker sharing a limit reaches them: the
//! embedded engine in its process ([`MemoryLimiter`]), `sluice serve` for its clients (the
//! server hands out tokens), Redis (`sluice-redis`, one atomic script per take) for workers
//! on RabbitMQ, SQS or Kafka.
//!
//! The rules live here once: refill, the cap at `burst`, tokens given back never past it,
//! and the wait before the next token ([`Bucket`]); a store keeps a bucket per name.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::idempotency::{boxed, BoxFuture};

/// A limit: `per_second` sustained, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens per second (finite, above zero).
    pub per_second: f64,
    /// Bucket size (at least 1).
    pub burst: u32,
}

/// What a take got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Tokens granted, `0..=want`.
    pub granted: u32,
    /// When nothing was granted: how long until a token is there.
    pub retry_after: Duration,
}

/// A call on a global concurrency bound's slots ([`LimiterStore::slots`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotsRequest {
    /// The most slots held at once by every holder together (at least 1).
    pub max: u32,
    /// The most of its slots this holder keeps (the number it has in use): any above are
    /// given back first. An absolute count, so a call repeated after a lost answer does not
    /// give back twice, and one whose answer was lost is corrected by the next.
    pub hold: u32,
    /// Most slots to take.
    pub want: u32,
    /// How long this holder's slots stay held without another call (its lease).
    pub ttl: Duration,
}

/// Where the buckets of shared limits live.
pub trait LimiterStore: Send + Sync + 'static {
    /// Returns `give_back` unused tokens of the limit `name` (never past its burst), then
    /// takes up to `want` (`0`: only give back). A limit seen for the first time starts full.
    fn take<'a>(
        &'a self,
        name: &'a str,
        rate: Rate,
        give_back: u32,
        want: u32,
    ) -> BoxFuture<'a, Result<Grant>>;

    /// Global concurrency: keeps at most `hold` of the slots `holder` holds of the bound
    /// `name` (gives back any above), held for `ttl` more, then takes up to `want` while fewer than
    /// `max` are held by every holder together. Returns how many it took. A holder that stops
    /// calling (a crashed process) loses its slots once its `ttl` has passed. Stores without
    /// slots refuse with [`Error::Unsupported`](crate::Error::Unsupported).
    fn slots<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        request: SlotsRequest,
    ) -> BoxFuture<'a, Result<u32>> {
        let _ = (name, holder, request);
        boxed(async {
            Err(crate::Error::Unsupported(
                "this limiter keeps no global concurrency slots".into(),
            ))
        })
    }

    /// Flow-control flags every worker reaches: sets `key` to `value` (`None`: removes it),
    /// forgotten after `ttl` when one is given. An operator's pause of a subscription
    /// (`pause:<subscription>`) and the workers' circuit states (`circuit:<subscription>:
    /// <worker>`) are flags. Stores without flags refuse with
    /// [`Error::Unsupported`](crate::Error::Unsupported).
    fn set_flag<'a>(
        &'a self,
        key: &'a str,
        value: Option<&'a str>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>> {
        let _ = (key, value, ttl);
        boxed(async {
            Err(crate::Error::Unsupported(
                "this limiter keeps no flags".into(),
            ))
        })
    }

    /// The flags whose key starts with `prefix` (not expired), in key order.
    fn flags<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<(String, String)>>> {
        let _ = prefix;
        boxed(async {
            Err(crate::Error::Unsupported(
                "this limiter keeps no flags".into(),
            ))
        })
    }
}

/// The flag of an operator's pause of `subscription`.
pub fn pause_flag(subscription: &str) -> String {
    format!("pause:{subscription}")
}

/// The prefix of the circuit-state flags of `subscription`'s workers.
pub fn circuit_flags(subscription: &str) -> String {
    format!("circuit:{subscription}:")
}

/// The arithmetic of a slots call: the holder had `had`, the others hold `others`; returns
/// the slots taken and the holder's slots after the call (at most `hold` kept first).
pub fn grant_slots(others: u64, had: u32, request: SlotsRequest) -> (u32, u32) {
    let mine = had.min(request.hold);
    let free = u64::from(request.max.max(1)).saturating_sub(others + u64::from(mine));
    let taken = u32::try_from(free.min(u64::from(request.want))).unwrap_or(u32::MAX);
    (taken, mine + taken)
}

/// One bound's holders: slots held, and until when (ms of the store's clock).
#[derive(Debug, Default)]
pub struct SlotHolders {
    holders: HashMap<String, (u32, f64)>,
}

impl SlotHolders {
    /// Forgets expired holders, applies `request` for `holder` at `now_ms`, returns the slots
    /// taken (the rules every store applies; the Redis script mirrors them).
    pub fn apply(&mut self, holder: &str, request: SlotsRequest, now_ms: f64) -> u32 {
        self.holders.retain(|_, (_, until)| *until > now_ms);
        let until = now_ms + request.ttl.as_secs_f64() * 1000.0;
        let had = self.holders.get(holder).map_or(0, |(n, _)| *n);
        let others: u64 = self
            .holders
            .iter()
            .filter(|(h, _)| h.as_str() != holder)
            .map(|(_, (n, _))| u64::from(*n))
            .sum();
        let (taken, now_held) = grant_slots(others, had, request);
        if now_held == 0 {
            self.holders.remove(holder);
        } else {
            self.holders.insert(holder.to_owned(), (now_held, until));
        }
        taken
    }

    /// Whether no holder holds a slot.
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }
}

/// One token bucket: the arithmetic every store applies (the Redis script mirrors it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Tokens now (fractional).
    pub tokens: f64,
    /// When `tokens` was computed, in ms of the store's clock.
    pub at_ms: f64,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    pub fn full(rate: Rate, now_ms: f64) -> Self {
        Self {
            tokens: f64::from(rate.burst.max(1)),
            at_ms: now_ms,
        }
    }

    /// Refills to `now_ms`, returns `give_back`, takes up to `want`.
    pub fn take(&mut self, rate: Rate, now_ms: f64, give_back: u32, want: u32) -> Grant {
        let burst = f64::from(rate.burst.max(1));
        let elapsed = (now_ms - self.at_ms).max(0.0);
        self.tokens =
            (self.tokens + elapsed * rate.per_second / 1000.0 + f64::from(give_back)).min(burst);
        self.at_ms = now_ms.max(self.at_ms);
        let granted = (self.tokens.floor().max(0.0) as u32).min(want);
        self.tokens -= f64::from(granted);
        let retry_after = if granted == 0 && want > 0 {
            let missing = (1.0 - self.tokens).max(0.0);
            Duration::from_secs_f64(missing / rate.per_second.max(1e-9))
        } else {
            Duration::ZERO
        };
        Grant {
            granted,
            retry_after,
        }
    }
}

/// A clock in milliseconds from an arbitrary start.
pub type MillisClock = Box<dyn Fn() -> f64 + Send + Sync>;

/// Limits a [`MemoryLimiter`] holds before it forgets the ones full again.
const SWEEP_ABOVE: usize = 4096;

/// A bucket, and when it will be full again if nobody takes from it (ms).
struct Held {
    bucket: Bucket,
    full_at_ms: f64,
}

/// Buckets in this process's memory: shared by the workers of one process (the embedded
/// engine's limiter; the one `sluice serve` hands out tokens from).
pub struct MemoryLimiter {
    clock: MillisClock,
    // std Mutex: never held across an .await. The time of the last sweep beside the map.
    buckets: Mutex<(HashMap<String, Held>, f64)>,
    // std Mutex: never held across an .await.
    slots: Mutex<HashMap<String, SlotHolders>>,
    // std Mutex: never held across an .await. Value, and when it expires (ms).
    flags: Mutex<std::collections::BTreeMap<String, (String, Option<f64>)>>,
}

impl std::fmt::Debug for MemoryLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLimiter").finish_non_exhaustive()
    }
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLimiter {
    /// No limit taken yet, on the system's monotonic clock.
    pub fn new() -> Self {
        let start = Instant::now();
        Self::with_clock(Box::new(move || start.elapsed().as_secs_f64() * 1000.0))
    }

    /// No limit taken yet, on `clock` (tests: tokio's paused clock).
    pub fn with_clock(clock: MillisClock) -> Self {
        Self {
            clock,
            buckets: Mutex::new((HashMap::new(), f64::MIN)),
            slots: Mutex::new(HashMap::new()),
            flags: Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    /// [`LimiterStore::take`] without the future, at `now_ms` of this limiter's clock.
    pub fn take_at(&self, name: &str, rate: Rate, give_back: u32, want: u32, now_ms: f64) -> Grant {
        let mut guard = self.buckets.lock().expect("limiter");
        let (buckets, swept_at) = &mut *guard;
        // Past 4096 limits, at most once a second, forget the ones full again: a limit seen
        // anew starts full, so forgetting them changes nothing.
        if buckets.len() > SWEEP_ABOVE && now_ms - *swept_at >= 1000.0 {
            buckets.retain(|_, held| held.full_at_ms > now_ms);
            *swept_at = now_ms;
        }
        let held = buckets.entry(name.to_owned()).or_insert_with(|| Held {
            bucket: Bucket::full(rate, now_ms),
            full_at_ms: now_ms,
        });
        let grant = held.bucket.take(rate, now_ms, give_back, want);
        let missing = f64::from(rate.burst.max(1)) - held.bucket.tokens;
        held.full_at_ms = now_ms + missing.max(0.0) * 1000.0 / rate.per_second.max(1e-9);
        grant
    }
}

impl MemoryLimiter {
    /// [`LimiterStore::slots`] without the future, at `now_ms` of this limiter's clock.
    pub fn slots_at(&self, name: &str, holder: &str, request: SlotsRequest, now_ms: f64) -> u32 {
        let mut bounds = self.slots.lock().expect("limiter");
        // Many bounds: forget those whose every holder's lease has run out.
        if bounds.len() > SWEEP_ABOVE {
            bounds.retain(|_, holders| {
                holders.holders.retain(|_, (_, until)| *until > now_ms);
                !holders.is_empty()
            });
        }
        let holders = bounds.entry(name.to_owned()).or_default();
        let taken = holders.apply(holder, request, now_ms);
        if holders.is_empty() {
            bounds.remove(name);
        }
        taken
    }
}

impl LimiterStore for MemoryLimiter {
    fn take<'a>(
        &'a self,
        name: &'a str,
        rate: Rate,
        give_back: u32,
        want: u32,
    ) -> BoxFuture<'a, Result<Grant>> {
        let now_ms = (self.clock)();
        let grant = self.take_at(name, rate, give_back, want, now_ms);
        boxed(async move { Ok(grant) })
    }

    fn slots<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        request: SlotsRequest,
    ) -> BoxFuture<'a, Result<u32>> {
        let now_ms = (self.clock)();
        let taken = self.slots_at(name, holder, request, now_ms);
        boxed(async move { Ok(taken) })
    }

    fn set_flag<'a>(
        &'a self,
        key: &'a str,
        value: Option<&'a str>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>> {
        let now_ms = (self.clock)();
        let mut flags = self.flags.lock().expect("limiter");
        flags.retain(|_, (_, until)| until.is_none_or(|u| u > now_ms));
        match value {
            Some(value) => {
                let until = ttl.map(|ttl| now_ms + ttl.as_secs_f64() * 1000.0);
                flags.insert(key.to_owned(), (value.to_owned(), until));
            }
            None => {
                flags.remove(key);
            }
        }
        boxed(async { Ok(()) })
    }

    fn flags<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<(String, String)>>> {
        let now_ms = (self.clock)();
        let flags = self.flags.lock().expect("limiter");
        let found = flags
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter(|(_, (_, until))| until.is_none_or(|u| u > now_ms))
            .map(|(key, (value, _))| (key.clone(), value.clone()))
            .collect();
        boxed(async move { Ok(found) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN: Rate = Rate {
        per_second: 10.0,
        burst: 10,
    };

    #[test]
    fn a_new_limit_grants_its_burst_then_its_rate() {
        let limiter = MemoryLimiter::new();
        assert_eq!(limiter.take_at("a", TEN, 0, 100, 0.0).granted, 10);
        let empty = limiter.take_at("a", TEN, 0, 5, 0.0);
        assert_eq!(empty.granted, 0);
        assert_eq!(empty.retry_after, Duration::from_millis(100));
        assert_eq!(
            limiter.take_at("a", TEN, 0, 5, 250.0).granted,
            2,
            "2.5 tokens"
        );
        assert_eq!(
            limiter.take_at("b", TEN, 0, 3, 250.0).granted,
            3,
            "another name, another bucket"
        );
    }

    #[test]
    fn tokens_given_back_never_pass_the_burst() {
        let limiter = MemoryLimiter::new();
        assert_eq!(limiter.take_at("a", TEN, 0, 4, 0.0).granted, 4);
        assert_eq!(limiter.take_at("a", TEN, 50, 0, 0.0).granted, 0);
        assert_eq!(limiter.take_at("a", TEN, 0, 100, 0.0).granted, 10);
    }

    #[test]
    fn past_4096_limits_the_ones_full_again_are_forgotten_and_no_other() {
        let limiter = MemoryLimiter::new();
        for i in 0..5000 {
            assert_eq!(
                limiter.take_at(&format!("n{i}"), TEN, 0, 10, 0.0).granted,
                10
            );
        }
        assert_eq!(limiter.take_at("half", TEN, 0, 10, 500.0).granted, 10);
        // At 1 s every drained bucket is full again: forgetting it changes nothing.
        assert_eq!(limiter.take_at("x", TEN, 0, 1, 1000.0).granted, 1);
        let held = limiter.buckets.lock().unwrap().0.len();
        assert_eq!(
            held, 2,
            "only `half` (full again at 1.5 s) and `x` are kept"
        );
        assert_eq!(
            limiter.take_at("half", TEN, 0, 100, 1000.0).granted,
            5,
            "drained at 0.5 s, 5 refilled by 1 s: not a full bucket again"
        );
    }

    fn slots(max: u32, hold: u32, want: u32) -> SlotsRequest {
        SlotsRequest {
            max,
            hold,
            want,
            ttl: Duration::from_secs(10),
        }
    }

    #[test]
    fn slots_are_bounded_across_holders_given_back_and_lost_with_a_silent_holder() {
        let limiter = MemoryLimiter::new();
        let at =
            |holder, hold, want, now| limiter.slots_at("pdf", holder, slots(3, hold, want), now);
        assert_eq!(at("w1", 0, 2, 0.0), 2);
        assert_eq!(at("w2", 0, 5, 0.0), 1, "3 in all");
        assert_eq!(at("w2", 1, 1, 1.0), 0);
        assert_eq!(at("w1", 1, 0, 2.0), 0, "w1 keeps 1: one back");
        assert_eq!(at("w2", 1, 5, 3.0), 1);
        assert_eq!(
            limiter.slots_at("other", "w2", slots(1, 0, 5), 3.0),
            1,
            "another bound"
        );
        // w2 renews at 9 s; w1 (1 slot, last call at 2 ms) says nothing and loses it 10 s on.
        assert_eq!(at("w2", 2, 0, 9_000.0), 0);
        assert_eq!(at("w3", 0, 5, 10_001.0), 0, "w1's lease still runs");
        assert_eq!(at("w3", 0, 5, 10_002.0), 1, "w1's slot");
        assert_eq!(
            at("w2", 50, 0, 10_002.0),
            0,
            "a hold above what it has takes nothing"
        );
        assert_eq!(at("w3", 1, 5, 10_002.0), 0, "w2 still has 2");
        assert_eq!(at("w2", 0, 0, 10_002.0), 0, "w2 gives both back");
        assert_eq!(at("w3", 1, 5, 10_002.0), 2);
        // The same call twice (its answer lost) gives back once.
        assert_eq!(at("w3", 2, 0, 10_003.0), 0);
        assert_eq!(at("w3", 2, 0, 10_003.0), 0);
        assert_eq!(at("w4", 0, 5, 10_003.0), 1, "w3 holds 2 of 3");
    }

    #[test]
    fn over_a_long_run_the_grants_follow_the_rate() {
        let limiter = MemoryLimiter::new();
        let mut granted = 0;
        let mut now = 0.0;
        while now <= 60_000.0 {
            granted += limiter.take_at("a", TEN, 0, 7, now).granted;
            now += 13.0;
        }
        assert!((600..=611).contains(&granted), "{granted} in 60 s at 10/s");
    }
}
