//! The gate of a worker with a [`KeyLimit`]: one queue, bucket and in-flight count per key.
//!
//! State only, no I/O but the shared limiter's `take`: the delivery tasks ([`super::keyed`])
//! hold the deliveries, keep their leases and ask the gate when their turn comes. A key's
//! waiting deliveries are served in ticket order; the front one alone asks for a token, so
//! a key's order is kept and a shared bucket is asked once per delivery.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::limit::{Bucket, LimiterStore, Rate};
use sluice_core::Message;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::key_limit::KeyLimit;

/// The longest a waiting delivery sleeps before it looks again (a shared bucket refilled by
/// no one's give-back, a clock that jumped).
const MAX_NAP: Duration = Duration::from_secs(1);

/// A key's limits met: held while its delivery is handled.
pub(crate) struct Pass {
    gate: Arc<Gate>,
    key: String,
    started: Instant,
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.gate.finished(&self.key, self.started.elapsed());
    }
}

/// A place in a key's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

struct Key {
    bucket: Option<Bucket>,
    /// Tokens of a shared bucket taken for a ticket that was no longer next when they came.
    banked: u32,
    in_flight: u32,
    blocked_until: Option<Instant>,
    queue: VecDeque<u64>,
    /// Until when deferred deliveries of this key have slots reserved.
    horizon: Instant,
    /// Mean time a delivery of this key is handled (for deferrals without a rate).
    service: Duration,
    notify: Arc<Notify>,
}

impl Key {
    fn new() -> Self {
        Self {
            bucket: None,
            banked: 0,
            in_flight: 0,
            blocked_until: None,
            queue: VecDeque::new(),
            horizon: Instant::now(),
            service: Duration::from_millis(100),
            notify: Arc::new(Notify::new()),
        }
    }
}

pub(crate) struct Gate {
    limit: KeyLimit,
    subscription: String,
    store: Option<Arc<dyn LimiterStore>>,
    start: Instant,
    keys: Mutex<HashMap<String, Key>>,
    next_ticket: AtomicUsize,
    parked: AtomicUsize,
    swept_at_ms: AtomicU64,
}

impl Gate {
    /// The gate of `limit`; a global one takes tokens from `store`.
    ///
    /// # Panics
    /// A global limit without a store (see `Limiter::new`).
    pub(crate) fn new(
        limit: KeyLimit,
        store: Option<Arc<dyn LimiterStore>>,
        subscription: String,
    ) -> Arc<Self> {
        if let Some(name) = &limit.global {
            assert!(
                store.is_some(),
                "KeyLimit::global(\"{name}\") needs a limiter every worker sharing it reaches: this \
                 backend has none of its own (the embedded engine and sluice:// have); give one \
                 with WorkerBuilder::limiter (sluice-redis's RedisStore)"
            );
        }
        Arc::new(Self {
            store: if limit.global.is_some() { store } else { None },
            limit,
            subscription,
            start: Instant::now(),
            keys: Mutex::new(HashMap::new()),
            next_ticket: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            swept_at_ms: AtomicU64::new(0),
        })
    }

    /// The key of `message`, if it has one.
    pub(crate) fn key_of(&self, message: &Message) -> Option<String> {
        self.limit.key.key(message)
    }

    fn rate(&self) -> Option<Rate> {
        self.limit.per_second.map(|per_second| Rate {
            per_second,
            burst: self.limit.burst_or_default(),
        })
    }

    fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }

    /// Queues a delivery of `key`: a new ticket at the back (the pull loop takes them in the
    /// order the broker gave the deliveries), or `again` — the ticket of one that ran and was
    /// told to wait — back in its place by number, ahead of every later one.
    pub(crate) fn ticket(&self, key: &str, again: Option<Ticket>) -> Ticket {
        let mut keys = self.keys.lock().expect("gate");
        self.sweep(&mut keys);
        let state = keys.entry(key.to_owned()).or_insert_with(Key::new);
        match again {
            Some(ticket) => {
                let at = state.queue.partition_point(|t| *t < ticket.0);
                state.queue.insert(at, ticket.0);
                ticket
            }
            None => {
                let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed) as u64;
                state.queue.push_back(ticket);
                Ticket(ticket)
            }
        }
    }

    /// Waits for `ticket`'s turn: front of its key's queue, the key not blocked, under its
    /// number in flight, and a token taken.
    pub(crate) async fn wait(self: &Arc<Self>, key: &str, ticket: Ticket) -> Pass {
        loop {
            // Registered before looking: a wake between the look and the wait is not lost.
            let notify = {
                let keys = self.keys.lock().expect("gate");
                keys.get(key).expect("a queued key is kept").notify.clone()
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let nap = match self.try_turn(key, ticket).await {
                Ok(pass) => return pass,
                Err(nap) => nap,
            };
            tokio::select! {
                _ = notified => {}
                // At least a millisecond: a bucket a hair short of a token must not spin.
                _ = tokio::time::sleep(nap.clamp(Duration::from_millis(1), MAX_NAP)) => {}
            }
        }
    }

    /// Whether `ticket` is next of its key, the key not blocked and under its number in
    /// flight; else how long to wait.
    fn next_in_line(state: &mut Key, cap: Option<u32>, ticket: Ticket) -> Result<(), Duration> {
        if state.queue.front() != Some(&ticket.0) {
            // Woken when the one ahead of it goes.
            return Err(MAX_NAP);
        }
        if let Some(until) = state.blocked_until {
            let now = Instant::now();
            if until > now {
                return Err(until - now);
            }
            state.blocked_until = None;
        }
        if cap.is_some_and(|cap| state.in_flight >= cap) {
            return Err(MAX_NAP);
        }
        Ok(())
    }

    /// Lets `ticket` through, or says how long to wait.
    pub(crate) async fn try_turn(
        self: &Arc<Self>,
        key: &str,
        ticket: Ticket,
    ) -> Result<Pass, Duration> {
        let rate = self.rate();
        let cap = self.limit.in_flight;
        {
            let mut keys = self.keys.lock().expect("gate");
            let state = keys.get_mut(key).expect("a queued key is kept");
            Self::next_in_line(state, cap, ticket)?;
            if state.banked > 0 {
                state.banked -= 1;
                return Ok(self.admit(state, key, ticket));
            }
            match (rate, &self.store) {
                (None, _) => {}
                (Some(rate), None) => {
                    let now_ms = self.now_ms();
                    let bucket = state
                        .bucket
                        .get_or_insert_with(|| Bucket::full(rate, now_ms));
                    let grant = bucket.take(rate, now_ms, 0, 1);
                    if grant.granted == 0 {
                        return Err(grant.retry_after);
                    }
                }
                // Asked below, without the lock; only the front ticket asks.
                (Some(_), Some(_)) => {}
            }
            if self.store.is_none() || rate.is_none() {
                return Ok(self.admit(state, key, ticket));
            }
        }
        let (Some(rate), Some(store)) = (rate, &self.store) else {
            unreachable!("a shared bucket has a rate and a store")
        };
        let name = shared_name(self.limit.global.as_deref().unwrap_or(""), key);
        match store.take(&name, rate, 0, 1).await {
            Ok(grant) if grant.granted > 0 => {
                // Looked at again: while the store answered, one told to wait may have come
                // back ahead of it, or the key been blocked. The token is then kept for the
                // next in line.
                let mut keys = self.keys.lock().expect("gate");
                let state = keys.get_mut(key).expect("a queued key is kept");
                match Self::next_in_line(state, cap, ticket) {
                    Ok(()) => Ok(self.admit(state, key, ticket)),
                    Err(nap) => {
                        state.banked += 1;
                        state.notify.notify_waiters();
                        Err(nap)
                    }
                }
            }
            Ok(grant) => Err(grant.retry_after.max(Duration::from_millis(1))),
            Err(err) => {
                tracing::warn!(%key, %err, "the limiter failed; the key waits until it answers");
                Err(Duration::from_millis(200))
            }
        }
    }

    fn admit(self: &Arc<Self>, state: &mut Key, key: &str, ticket: Ticket) -> Pass {
        debug_assert_eq!(state.queue.front(), Some(&ticket.0));
        state.queue.retain(|t| *t != ticket.0);
        state.in_flight += 1;
        // The next in line may go too (a burst, a number in flight above one).
        state.notify.notify_waiters();
        Pass {
            gate: self.clone(),
            key: key.to_owned(),
            started: Instant::now(),
        }
    }

    /// Gives up `ticket` (deferred to the broker, or released at shutdown).
    pub(crate) fn leave(&self, key: &str, ticket: Ticket) {
        let mut keys = self.keys.lock().expect("gate");
        if let Some(state) = keys.get_mut(key) {
            state.queue.retain(|t| *t != ticket.0);
            state.notify.notify_waiters();
            if self.idle(state) {
                keys.remove(key);
            }
        }
    }

    fn finished(&self, key: &str, took: Duration) {
        let mut keys = self.keys.lock().expect("gate");
        if let Some(state) = keys.get_mut(key) {
            state.in_flight = state.in_flight.saturating_sub(1);
            state.service = (state.service * 7 + took) / 8;
            state.notify.notify_waiters();
            if self.idle(state) {
                keys.remove(key);
            }
        }
    }

    /// Nothing of `key` runs before `until` (the downstream said "too many requests").
    pub(crate) fn block(&self, key: &str, until: Instant) {
        let mut keys = self.keys.lock().expect("gate");
        let state = keys.entry(key.to_owned()).or_insert_with(Key::new);
        state.blocked_until = Some(state.blocked_until.map_or(until, |u| u.max(until)));
    }

    /// Whether a key's state says nothing a fresh one would not, so it can be forgotten: a
    /// key seen anew starts with a full bucket.
    fn idle(&self, state: &Key) -> bool {
        let now = Instant::now();
        let full = match (&state.bucket, self.rate()) {
            (Some(bucket), Some(rate)) => {
                let refilled = (self.now_ms() - bucket.at_ms).max(0.0) * rate.per_second / 1000.0;
                bucket.tokens + refilled >= f64::from(rate.burst)
            }
            _ => true,
        };
        state.in_flight == 0
            && state.banked == 0
            && state.queue.is_empty()
            && state.blocked_until.is_none_or(|until| until <= now)
            && state.horizon <= now
            && full
            && Arc::strong_count(&state.notify) == 1
    }

    /// Past 4096 keys, at most once a second, forgets the idle ones (many tenants, each
    /// seen once).
    fn sweep(&self, keys: &mut HashMap<String, Key>) {
        let now_ms = self.now_ms() as u64;
        if keys.len() > 4096 && now_ms >= self.swept_at_ms.load(Ordering::Relaxed) + 1000 {
            self.swept_at_ms.store(now_ms, Ordering::Relaxed);
            keys.retain(|_, state| !self.idle(state));
        }
    }

    /// Whether deliveries are parked (waiting for their turn, then for a handler slot).
    pub(crate) fn has_parked(&self) -> bool {
        self.parked.load(Ordering::Relaxed) > 0
    }

    /// Counts a delivery parked until the guard is dropped, if the worker holds fewer than
    /// it may (`anyway`: whatever it holds).
    pub(crate) fn park(self: &Arc<Self>, anyway: bool) -> Option<Parked> {
        let max = self.limit.max_parked;
        let was = self
            .parked
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (anyway || n < max).then_some(n + 1)
            })
            .ok()?;
        crate::metrics::parked(&self.subscription, was + 1);
        Some(Parked { gate: self.clone() })
    }

    /// Gives up `ticket` to defer its delivery to the broker: how long from now its key's
    /// limits will let it run, a slot reserved for it (the next deferral of the key comes
    /// after it).
    pub(crate) fn defer(&self, key: &str, ticket: Ticket) -> Duration {
        let now = Instant::now();
        let mut keys = self.keys.lock().expect("gate");
        let Some(state) = keys.get_mut(key) else {
            return Duration::from_secs(1);
        };
        state.queue.retain(|t| *t != ticket.0);
        state.notify.notify_waiters();
        let ahead = state.queue.len() as u32 + 1;
        let each = match self.limit.per_second {
            Some(rate) => Duration::from_secs_f64(1.0 / rate),
            None => state.service / self.limit.in_flight.unwrap_or(1).max(1),
        }
        .max(Duration::from_millis(1));
        let mut from = state.horizon.max(now + each * ahead);
        if let Some(until) = state.blocked_until {
            from = from.max(until);
        }
        state.horizon = from + each;
        from - now
    }
}

/// A parked delivery, counted until dropped.
pub(crate) struct Parked {
    gate: Arc<Gate>,
}

impl Drop for Parked {
    fn drop(&mut self) {
        let now = self.gate.parked.fetch_sub(1, Ordering::Relaxed) - 1;
        crate::metrics::parked(&self.gate.subscription, now);
    }
}

/// The shared bucket of `key` under the global limit `name`: `name:key`, or a digest of the
/// key when it is long (a limiter's names are at most 256 bytes).
fn shared_name(name: &str, key: &str) -> String {
    if key.len() <= 150 {
        return format!("{name}:{key}");
    }
    // FNV-1a twice, with two offsets: stable across processes and versions.
    let fnv = |offset: u64| {
        key.bytes().fold(offset, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    format!(
        "{name}:#{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x8422_2325_cbf2_9ce4)
    )
}
