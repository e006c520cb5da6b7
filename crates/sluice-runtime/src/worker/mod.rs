//! The worker: pulls deliveries of one subscription and runs each through the pipeline
//! ([`process`]) on its own task.
//!
//! Backpressure is on pulling, never sleeps in handlers: the worker takes a concurrency
//! permit (and rate-limit tokens) *before* it asks the backend for a delivery, so a slow or
//! limited consumer leaves its backlog in the broker.
//!
//! Shutdown (the token is cancelled): stop pulling, let in-flight handlers finish within the
//! grace period, then cancel what is left and `release` those deliveries.

mod batch;
mod gate;
mod keyed;
mod order;
pub use batch::{
    DEFAULT_BATCH_CONCURRENCY, DEFAULT_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_MESSAGES,
    DEFAULT_BATCH_MAX_WAIT,
};
mod process;
pub use process::TimedOut;
mod control;
mod settle;
mod slots;
pub use control::CONTROL_EVERY;
pub use slots::SLOT_LEASE;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use sluice_core::idempotency::BoxFuture;
use sluice_core::limit::LimiterStore;
use sluice_core::{Delivery, Message, Subscriber};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::adaptive::{AdaptiveConcurrency, Controller};
use crate::backoff::Backoff;
use crate::batch::{BatchHandler, Batched};
use crate::breaker::{Breaker, CircuitBreaker};
use crate::handler::Handler;
use crate::idempotency::Idempotency;
use crate::key_limit::KeyLimit;
use crate::lease::LeaseExtension;
use crate::observe::{Observer, OutcomeKind, StatsSnapshot, WorkerStats};
use crate::rate_limit::{Limiter, RateLimit};

/// Default number of handlers running at once.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Default time in-flight handlers get to finish at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default long-poll wait of one `receive`.
pub const DEFAULT_POLL_WAIT: Duration = Duration::from_secs(1);
/// The long-poll wait while deliveries are parked by a key limit.
const PARKED_POLL_WAIT: Duration = Duration::from_millis(50);

/// Whether a job may run now (the job ledger's answer before the handler).
pub(crate) enum Admit {
    Run,
    /// Acked without running (cancelled, superseded, already succeeded), with why.
    Skip(String),
    /// Tried again after this long (a reschedule's record change is not there yet).
    Later(Duration),
}

/// What a job's status follows: asked before the handler runs, told every outcome before
/// its verb is applied. `jobs::Ledger` is the one implementation.
pub(crate) trait Lifecycle: Send + Sync + 'static {
    fn admit<'a>(
        &'a self,
        message: &'a Message,
        attempt: u32,
    ) -> BoxFuture<'a, sluice_core::Result<Admit>>;
    fn settled<'a>(
        &'a self,
        message: &'a Message,
        kind: &'a OutcomeKind,
        result: Option<serde_json::Value>,
    ) -> BoxFuture<'a, ()>;
}

/// What the pipeline needs, shared by every delivery task.
pub(crate) struct Pipeline<H> {
    pub(crate) handler: H,
    pub(crate) backoff: Backoff,
    pub(crate) idempotency: Option<Idempotency>,
    pub(crate) stats: Arc<WorkerStats>,
    pub(crate) observer: Option<Arc<dyn Observer>>,
    // std Mutex: locked only to draw a jitter value, never across an .await.
    pub(crate) rng: Mutex<SmallRng>,
    pub(crate) max_attempts: u32,
    pub(crate) lease: Duration,
    pub(crate) timeout: Option<Duration>,
    pub(crate) lease_extension: LeaseExtension,
    pub(crate) lifecycle: Option<Arc<dyn Lifecycle>>,
    pub(crate) breaker: Option<Arc<Breaker>>,
    pub(crate) adaptive: Option<Arc<Controller>>,
    /// Nothing is pulled before this (a handler without a key was told to wait).
    // std Mutex: never held across an .await.
    pub(crate) paused: Mutex<Option<tokio::time::Instant>>,
}

impl<H> Pipeline<H> {
    /// Nothing is pulled before `until`.
    pub(crate) fn pause_until(&self, until: tokio::time::Instant) {
        let mut paused = self.paused.lock().expect("pause");
        *paused = Some(paused.map_or(until, |at| at.max(until)));
    }

    /// Waits until the downstream's "wait" is over; `false` when `shutdown` came first.
    pub(crate) async fn wait_unpaused(
        &self,
        shutdown: &CancellationToken,
        subscription: &sluice_core::SubscriptionName,
    ) -> bool {
        while let Some(until) = self.paused() {
            tracing::debug!(%subscription, "the downstream is rate limiting; pulling waits");
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep_until(until) => {}
            }
        }
        true
    }

    /// Until when pulling waits, if it does.
    pub(crate) fn paused(&self) -> Option<tokio::time::Instant> {
        let mut paused = self.paused.lock().expect("pause");
        match *paused {
            Some(until) if until > tokio::time::Instant::now() => Some(until),
            _ => {
                *paused = None;
                None
            }
        }
    }
}

/// Waits for the worker's tasks for the grace period, then cancels `hard_stop` (running
/// handlers are abandoned and their deliveries released) and waits for the rest.
async fn drain(tasks: &mut JoinSet<()>, grace: Duration, hard_stop: &CancellationToken) {
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        hard_stop.cancel();
        while tasks.join_next().await.is_some() {}
    }
}

/// Builds a [`Worker`]. Start with [`Worker::builder`].
#[must_use]
pub struct WorkerBuilder<S, H> {
    subscriber: S,
    handler: H,
    /// `None`: the default of the handler's kind.
    concurrency: Option<usize>,
    batch: batch::BatchLimits,
    rate_limit: Option<RateLimit>,
    limiter: Option<Arc<dyn LimiterStore>>,
    breaker: Option<CircuitBreaker>,
    key_limit: Option<KeyLimit>,
    adaptive: Option<AdaptiveConcurrency>,
    global_concurrency: Option<(String, u32)>,
    backoff: Backoff,
    idempotency: Option<Idempotency>,
    observer: Option<Arc<dyn Observer>>,
    shutdown_grace: Duration,
    poll_wait: Duration,
    seed: Option<u64>,
    timeout: Option<Duration>,
    lease_extension: LeaseExtension,
    lifecycle: Option<Arc<dyn Lifecycle>>,
}

/// Settings of every worker, with a handler of one message or of a batch.
impl<S, H> WorkerBuilder<S, H> {
    /// Tracks job status (set by `Jobs::worker` and `Jobs::batch_worker`).
    pub(crate) fn lifecycle(mut self, lifecycle: Arc<dyn Lifecycle>) -> Self {
        self.lifecycle = Some(lifecycle);
        self
    }
    /// How many handlers run at once: 16 by default (with
    /// [`adaptive_concurrency`](Self::adaptive_concurrency), how many at first); with a batch
    /// handler, how many batches, 2 by default (one fills while the other runs).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = Some(concurrency.max(1));
        self
    }
    /// Limits how many deliveries per second are pulled (none by default): this worker's own
    /// limit, or one shared by every worker naming it ([`RateLimit::global`]).
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }
    /// Where global rate limits keep their buckets, when the backend has no limiter of its
    /// own (RabbitMQ, SQS, Kafka): a store every worker sharing the limits reaches
    /// (`sluice-redis`'s `RedisStore`). The embedded engine and `sluice://` need none.
    pub fn limiter(mut self, store: Arc<dyn LimiterStore>) -> Self {
        self.limiter = Some(store);
        self
    }
    /// The backoff between attempts (1 s doubling to 5 min, full jitter, by default).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
    /// Skips duplicates with an idempotency store (off by default).
    pub fn idempotency(mut self, idempotency: Idempotency) -> Self {
        self.idempotency = Some(idempotency);
        self
    }
    /// Receives every delivery outcome.
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }
    /// How long in-flight handlers get to finish at shutdown (30 s by default).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }
    /// Long-poll wait of one `receive` (1 s by default).
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.poll_wait = wait;
        self
    }
    /// Fails a handler (a batch handler: the whole batch) that runs longer than `timeout` (a
    /// transient failure: retried with backoff). None by default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// How leases are extended while a handler runs (by default: whenever half the lease is
    /// left, up to 30 minutes in total, then the handler is abandoned and the delivery
    /// released). A batch handler's messages are all extended while it runs.
    pub fn lease_extension(mut self, extension: LeaseExtension) -> Self {
        self.lease_extension = extension;
        self
    }
    /// Seeds the jitter generator, for reproducible runs.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The handler, and the settings without it.
    fn split(self) -> (H, WorkerBuilder<S, ()>) {
        let settings = WorkerBuilder {
            subscriber: self.subscriber,
            handler: (),
            concurrency: self.concurrency,
            batch: self.batch,
            rate_limit: self.rate_limit,
            limiter: self.limiter,
            breaker: self.breaker,
            key_limit: self.key_limit,
            adaptive: self.adaptive,
            global_concurrency: self.global_concurrency,
            backoff: self.backoff,
            idempotency: self.idempotency,
            observer: self.observer,
            shutdown_grace: self.shutdown_grace,
            poll_wait: self.poll_wait,
            seed: self.seed,
            timeout: self.timeout,
            lease_extension: self.lease_extension,
            lifecycle: self.lifecycle,
        };
        (self.handler, settings)
    }

    /// The pipeline shared by the handler's tasks (taking the idempotency stage, observer
    /// and job lifecycle out of the settings).
    fn pipeline<T>(
        &mut self,
        handler: T,
        stats: Arc<WorkerStats>,
        breaker: Option<Arc<Breaker>>,
        adaptive: Option<Arc<Controller>>,
    ) -> Pipeline<T>
    where
        S: Subscriber,
    {
        let rng = match self.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_entropy(),
        };
        Pipeline {
            handler,
            backoff: self.backoff,
            idempotency: self.idempotency.take(),
            stats,
            observer: self.observer.take(),
            rng: Mutex::new(rng),
            max_attempts: self.subscriber.config().max_attempts,
            lease: self.subscriber.config().lease,
            timeout: self.timeout,
            lease_extension: self.lease_extension,
            lifecycle: self.lifecycle.take(),
            breaker,
            adaptive,
            paused: Mutex::new(None),
        }
    }

    /// What follows the operator's pause flag, when the worker has a limiter store.
    fn control(
        store: Option<&Arc<dyn LimiterStore>>,
        subscription: &str,
        breaker: Option<Arc<Breaker>>,
    ) -> Option<Arc<control::Control>> {
        store.cloned().map(|store| {
            Arc::new(control::Control {
                store,
                subscription: subscription.to_owned(),
                worker: format!("worker-{}", sluice_core::MessageId::generate()),
                breaker,
                paused: std::sync::atomic::AtomicBool::new(false),
            })
        })
    }
}

impl<S: Subscriber, B: BatchHandler> WorkerBuilder<S, Batched<B>> {
    /// How batches form: a batch closes when it holds `max_messages` (32 by default), or
    /// `max_wait` after its first message arrived (100 ms by default), or
    /// [`max_batch_bytes`](Self::max_batch_bytes) of payload, whichever comes first, and
    /// never later than half the lease left of any of its messages: it never waits for its
    /// leases to run out. A subscriber holds at most its `prefetch` unsettled (64 by default): with larger
    /// batches, raise it to `max_messages` × [`concurrency`](Self::concurrency), or batches
    /// stay smaller.
    ///
    /// - **Settling**: each message is settled on its own from the handler's
    ///   [`BatchOutcome`](crate::BatchOutcome), with its own attempt count, backoff and max
    ///   attempts; a poison message is dead-lettered and the others acked. A batch that fails
    ///   as a whole (an error, a panic, a [`timeout`](Self::timeout)) fails each message
    ///   with that error. Duplicates (with [`idempotency`](Self::idempotency)) and messages
    ///   that do not decode never reach the handler.
    /// - **Ordering keys**: a batch holds a key's messages in delivery order, and starts only
    ///   once every earlier batch holding one of its keys has settled. When a message of a key
    ///   is retried, the key's later messages in the batch are retried with it, no sooner
    ///   than it, never acked before it (one on its last attempt is acked: its handler
    ///   succeeded). On a backend whose ordering level is `strict` (`memory:`, `embedded:`,
    ///   `sluice://`; see docs/capabilities.md) a key has one message in flight, so at most
    ///   one per batch.
    /// - **Rate limited**: [`HandlerError::rate_limited`](crate::HandlerError::rate_limited)
    ///   for the whole batch stops pulling for its delay; for one message, or the batch, it is
    ///   a retry after the delay that spends an attempt (there is no per-key parking).
    /// - **Shutdown**: the open batch is closed and handled, and running batches get the
    ///   grace period; past it they are abandoned and their messages released.
    pub fn batch(mut self, max_messages: usize, max_wait: Duration) -> Self {
        self.batch.max_messages = max_messages.max(1);
        self.batch.max_wait = max_wait;
        self
    }

    /// Closes a batch once it holds this many bytes of payload (4 MiB by default). The
    /// messages one `receive` returns stay together, so a batch may pass it by those (the
    /// first receive asks for `max_messages`; later ones for what fits at the average size so
    /// far).
    pub fn max_batch_bytes(mut self, max_bytes: usize) -> Self {
        self.batch.max_bytes = max_bytes.max(1);
        self
    }

    /// Builds the worker.
    pub fn build(mut self) -> Worker<S, Batched<B>> {
        let concurrency = self.concurrency.unwrap_or(batch::DEFAULT_BATCH_CONCURRENCY);
        let store = self.limiter.clone().or_else(|| self.subscriber.limiter());
        let rate_limit = self
            .rate_limit
            .take()
            .map(|limit| Limiter::new(limit, store.clone()));
        let subscription = self.subscriber.subscription().to_string();
        let prefetch = self.subscriber.config().prefetch as usize;
        let wanted = self.batch.max_messages.saturating_mul(concurrency);
        if prefetch < wanted {
            tracing::warn!(
                %subscription, prefetch, max_messages = self.batch.max_messages, concurrency,
                "the subscription's prefetch is smaller than max_messages × concurrency: \
                 batches stay smaller than max_messages; raise the prefetch to {wanted}"
            );
        }
        let stats = Arc::new(WorkerStats::default());
        stats.set_concurrency_limit(concurrency);
        let control = Self::control(store.as_ref(), &subscription, None);
        let (handler, mut rest) = self.split();
        let pipeline = rest.pipeline(handler, stats, None, None);
        Worker {
            pipeline: Arc::new(pipeline),
            gate: None,
            subscriber: rest.subscriber,
            concurrency,
            rate_limit,
            global_slots: None,
            control,
            shutdown_grace: rest.shutdown_grace,
            poll_wait: rest.poll_wait,
            batch: rest.batch,
        }
    }
}

impl<S: Subscriber, H: Handler> WorkerBuilder<S, H> {
    /// Finds how many handlers the downstream takes at once from the latency it observes,
    /// between `min` and `max`, starting at [`concurrency`](Self::concurrency): see
    /// [`AdaptiveConcurrency`]. Off by default.
    pub fn adaptive_concurrency(mut self, adaptive: AdaptiveConcurrency) -> Self {
        self.adaptive = Some(adaptive);
        self
    }
    /// Stops pulling while the handler keeps failing (a downstream is down) instead of
    /// spending every message's attempts: see [`CircuitBreaker`]. Off by default.
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }
    /// At most `max` deliveries of every worker naming the bound `name`, in any process,
    /// handled at once: "10 PDF renderings at a time", whatever the number of replicas. A
    /// worker takes a slot from the limiter (the backend's own, or the one given with
    /// [`limiter`](Self::limiter)) before it pulls each delivery and gives it back once the
    /// delivery is settled. Slots are leases of [`SLOT_LEASE`] (30 s), renewed while the worker
    /// runs: those of a worker that crashed are free again within one.
    ///
    /// # Panics
    /// At [`build`](Self::build), when neither the backend nor [`limiter`](Self::limiter)
    /// gives a limiter, or `name` is not 1 to 200 bytes.
    pub fn global_concurrency(mut self, name: impl Into<String>, max: u32) -> Self {
        self.global_concurrency = Some((name.into(), max.max(1)));
        self
    }
    /// Limits each key (a tenant, an ordering key) to its own rate and number in flight, so
    /// one key's backlog never holds up the others: see [`KeyLimit`]. None by default.
    pub fn key_limit(mut self, limit: KeyLimit) -> Self {
        self.key_limit = Some(limit);
        self
    }
    /// Builds the worker.
    pub fn build(mut self) -> Worker<S, H> {
        let concurrency = self.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        let store = self.limiter.clone().or_else(|| self.subscriber.limiter());
        let rate_limit = self
            .rate_limit
            .take()
            .map(|limit| Limiter::new(limit, store.clone()));
        let global_slots = self.global_concurrency.take().map(|(name, max)| {
            assert!(
                !name.is_empty() && name.len() <= 200,
                "a global concurrency bound's name is 1 to 200 bytes, got {} bytes",
                name.len()
            );
            let store = store.clone().unwrap_or_else(|| {
                panic!(
                    "global_concurrency(\"{name}\") needs a limiter every worker sharing it \
                     reaches: this backend has none of its own (the embedded engine and \
                     sluice:// have); give one with WorkerBuilder::limiter (sluice-redis's \
                     RedisStore)"
                )
            });
            Arc::new(slots::GlobalSlots::new(store, name, max))
        });
        let stats = Arc::new(WorkerStats::default());
        let subscription = self.subscriber.subscription().to_string();
        let breaker = self
            .breaker
            .take()
            .map(|config| Arc::new(Breaker::new(config, subscription.clone())));
        let control = Self::control(store.as_ref(), &subscription, breaker.clone());
        stats.set_concurrency_limit(concurrency);
        let prefetch = (self.subscriber.config().prefetch as usize).max(1);
        // An adaptive limit never goes past the prefetch: no more are ever handed out.
        let adaptive_config = self.adaptive.map(|mut config| {
            config.min = config.min.clamp(1, prefetch);
            config.max = config.max.clamp(config.min, prefetch);
            config
        });
        let adaptive = adaptive_config.map(|config| {
            Arc::new(Controller::new(
                config,
                concurrency,
                subscription.clone(),
                stats.clone(),
            ))
        });
        // The most handler slots: the adaptive limit's maximum, or the concurrency.
        let slots = adaptive_config.map_or(concurrency, |config| config.max);
        // Parked deliveries count towards the prefetch: past it the worker could not pull
        // the other keys' messages it parks them for.
        let room = prefetch.saturating_sub(slots);
        let gate = self.key_limit.take().map(|mut limit| {
            if room == 0 && limit.max_parked > 0 {
                tracing::warn!(
                    %subscription, prefetch, handler_slots = slots,
                    "a key limit with no room to park (prefetch ≤ handler slots): every delivery \
                     of a key at its limit is deferred to the broker; raise the prefetch"
                );
            }
            limit.max_parked = limit.max_parked.min(room);
            gate::Gate::new(limit, store, subscription.clone())
        });
        let (handler, mut rest) = self.split();
        let pipeline = rest.pipeline(handler, stats, breaker, adaptive);
        Worker {
            pipeline: Arc::new(pipeline),
            gate,
            subscriber: rest.subscriber,
            concurrency: slots,
            rate_limit,
            global_slots,
            control,
            shutdown_grace: rest.shutdown_grace,
            poll_wait: rest.poll_wait,
            batch: rest.batch,
        }
    }
}

/// Runs a handler over one subscription until shut down.
pub struct Worker<S, H> {
    subscriber: S,
    pipeline: Arc<Pipeline<H>>,
    concurrency: usize,
    rate_limit: Option<Limiter>,
    global_slots: Option<Arc<slots::GlobalSlots>>,
    control: Option<Arc<control::Control>>,
    gate: Option<Arc<gate::Gate>>,
    shutdown_grace: Duration,
    poll_wait: Duration,
    batch: batch::BatchLimits,
}

impl<S, H> Worker<S, H> {
    /// A builder for a worker of `subscriber` running `handler`: a [`Handler`] of one
    /// message ([`json_handler`](crate::json_handler), [`raw_handler`](crate::raw_handler),
    /// a [`Router`](crate::Router)), or a batch handler
    /// ([`json_batch_handler`](crate::json_batch_handler),
    /// [`batch_handler`](crate::batch_handler), [`Batched::new`]) whose batches are set with
    /// [`WorkerBuilder::batch`].
    pub fn builder(subscriber: S, handler: H) -> WorkerBuilder<S, H> {
        WorkerBuilder {
            subscriber,
            handler,
            concurrency: None,
            batch: batch::BatchLimits::default(),
            rate_limit: None,
            limiter: None,
            breaker: None,
            key_limit: None,
            adaptive: None,
            global_concurrency: None,
            backoff: Backoff::default(),
            idempotency: None,
            observer: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            poll_wait: DEFAULT_POLL_WAIT,
            seed: None,
            timeout: None,
            lease_extension: LeaseExtension::default(),
            lifecycle: None,
        }
    }
}

impl<S: Subscriber, B: BatchHandler> Worker<S, Batched<B>> {
    /// The worker's live counters (per message, as with a single handler).
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.pipeline.stats.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains (see [`WorkerBuilder::batch`]) and
    /// returns the final counters.
    pub async fn run(self, shutdown: CancellationToken) -> StatsSnapshot {
        batch::run(self, shutdown).await
    }

    /// Spawns [`run`](Self::run) on the tokio runtime.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<StatsSnapshot> {
        tokio::spawn(self.run(shutdown))
    }
}

impl<S: Subscriber, H: Handler> Worker<S, H> {
    /// The worker's live counters.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.pipeline.stats.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains (see the module docs) and returns the
    /// final counters.
    pub async fn run(self, shutdown: CancellationToken) -> StatsSnapshot {
        let semaphore = Arc::new(Semaphore::new(self.concurrency));
        let hard_stop = CancellationToken::new();
        // Reads the operator's pause flag (once before the first pull) and writes the
        // circuit state while it runs.
        let control_task = control::start(self.control.clone()).await;
        // Renews this worker's global concurrency slots while it runs.
        let heartbeat = self
            .global_slots
            .clone()
            .map(|slots| slots::AbortOnDrop(tokio::spawn(async move { slots.heartbeat().await })));
        let shared = Arc::new(keyed::Shared {
            pipeline: self.pipeline.clone(),
            gate: self.gate.clone(),
            slots: semaphore.clone(),
            stop: shutdown.clone(),
            hard_stop: hard_stop.clone(),
        });
        let mut tasks = JoinSet::new();
        let mut failures: u32 = 0;
        let mut slot_wait = Duration::from_millis(10);
        let subscription = self.subscriber.subscription().clone();
        tracing::debug!(%subscription, concurrency = self.concurrency, "worker started");

        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            // Paused by an operator (`sluice pause`): nothing is pulled until resumed.
            if self.control.as_ref().is_some_and(|c| c.paused()) {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
            // Backpressure: a permit before pulling.
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = semaphore.clone().acquire_owned() => permit.expect("semaphore never closed"),
            };
            let mut permits = vec![first];
            while let Ok(permit) = semaphore.clone().try_acquire_owned() {
                permits.push(permit);
            }
            // A handler without a key was told to wait: so is pulling (checked with the
            // permits in hand, which the handler's own gave back).
            if !self.pipeline.wait_unpaused(&shutdown, &subscription).await {
                break;
            }
            // Adaptive concurrency: no more than its limit pulled and not yet settled.
            if let Some(adaptive) = &self.pipeline.adaptive {
                let finished = adaptive.finished.notified();
                tokio::pin!(finished);
                finished.as_mut().enable();
                let room = adaptive.room();
                if room == 0 {
                    drop(permits);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = finished => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    continue;
                }
                permits.truncate(room);
            }
            if let Some(breaker) = &self.pipeline.breaker {
                let admitted = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    admitted = breaker.admit(permits.len() as u32) => admitted,
                };
                permits.truncate(admitted as usize);
            }
            if let Some(bucket) = &self.rate_limit {
                let admitted = permits.len() as u32;
                let granted = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    granted = bucket.acquire(admitted) => granted,
                };
                permits.truncate(granted as usize);
                if let Some(breaker) = &self.pipeline.breaker {
                    breaker.unused(admitted.saturating_sub(granted));
                }
            }
            if let Some(slots) = &self.global_slots {
                // One call: never wait for the limiter holding handler slots (waiting
                // deliveries need them to run and give their global slots back).
                // Deliveries waiting for a slot to run go first: none taken for new ones.
                let wanted = permits.len() as u32;
                let taken = if slots.has_waiting() {
                    0
                } else {
                    slots.try_acquire(wanted).await
                };
                permits.truncate(taken as usize);
                let unused = wanted.saturating_sub(taken);
                if let Some(bucket) = &self.rate_limit {
                    bucket.give_back(unused);
                }
                if let Some(breaker) = &self.pipeline.breaker {
                    breaker.unused(unused);
                }
                if taken == 0 {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(slot_wait) => {}
                    }
                    slot_wait = (slot_wait * 2).min(slots::MAX_WAIT);
                    continue;
                }
                slot_wait = Duration::from_millis(10);
            }
            let want = permits.len();

            // Never drop a receive half-way: if shutdown comes while it waits, finish it and
            // release whatever it returns.
            // Parked deliveries wait for handler slots this loop holds while it polls: a short
            // poll gives them back soon when nothing comes.
            let poll_wait = match &self.gate {
                Some(gate) if gate.has_parked() => self.poll_wait.min(PARKED_POLL_WAIT),
                _ => self.poll_wait,
            };
            let receive = self.subscriber.receive(want, poll_wait);
            tokio::pin!(receive);
            let (received, stopping) = tokio::select! {
                r = &mut receive => (r, false),
                _ = shutdown.cancelled() => (receive.await, true),
            };
            let deliveries = match received {
                Ok(deliveries) => deliveries,
                Err(sluice_core::Error::Closed(_)) => {
                    if let Some(slots) = &self.global_slots {
                        slots.release(want as u32).await;
                    }
                    break;
                }
                Err(err) => {
                    failures += 1;
                    let pause = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                    tracing::warn!(%subscription, %err, ?pause, "receive failed; trying again");
                    if let Some(bucket) = &self.rate_limit {
                        bucket.give_back(want as u32);
                    }
                    if let Some(breaker) = &self.pipeline.breaker {
                        breaker.unused(want as u32);
                    }
                    if let Some(slots) = &self.global_slots {
                        slots.release(want as u32).await;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            };
            failures = 0;
            if let Some(bucket) = &self.rate_limit {
                bucket.give_back(want.saturating_sub(deliveries.len()) as u32);
            }
            if let Some(breaker) = &self.pipeline.breaker {
                breaker.unused(want.saturating_sub(deliveries.len()) as u32);
            }
            if let Some(slots) = &self.global_slots {
                // Fewer deliveries than slots; at shutdown, those released unhandled too.
                let unused = if stopping {
                    want
                } else {
                    want - deliveries.len().min(want)
                };
                slots.release(unused as u32).await;
            }
            let mut claims = match &self.pipeline.adaptive {
                Some(adaptive) if !stopping => adaptive.claim(deliveries.len()),
                _ => Vec::new(),
            };
            for delivery in deliveries {
                if stopping {
                    settle::release_unhandled(&self.pipeline, delivery).await;
                    continue;
                }
                let permit = permits
                    .pop()
                    .expect("a backend returned more deliveries than asked");
                let claim = claims.pop();
                // Its place in its key's queue, taken here in the broker's order.
                let place = self.gate.as_ref().and_then(|gate| {
                    let key = gate.key_of(delivery.message())?;
                    let ticket = gate.ticket(&key, None);
                    Some(keyed::Place { key, ticket })
                });
                let shared = shared.clone();
                let global = self.global_slots.clone().map(slots::Slot::taken);
                tasks.spawn(keyed::run(shared, delivery, permit, place, claim, global));
            }
        }

        // Drain: in-flight handlers get the grace period, then are cancelled and released.
        let in_flight = tasks.len();
        if in_flight > 0 {
            tracing::info!(%subscription, in_flight, grace = ?self.shutdown_grace, "worker draining");
        }
        drain(&mut tasks, self.shutdown_grace, &hard_stop).await;
        drop(heartbeat);
        drop(control_task);
        if let Some(control) = &self.control {
            control.forget().await;
        }
        if let Some(slots) = &self.global_slots {
            // Whatever is left (a call whose answer was lost): the worker holds none now.
            slots.release_all().await;
        }
        if let Err(err) = self.subscriber.close().await {
            tracing::warn!(%subscription, %err, "closing the subscriber failed");
        }
        tracing::debug!(%subscription, "worker stopped");
        self.pipeline.stats.snapshot()
    }

    /// Spawns [`run`](Self::run) on the tokio runtime.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<StatsSnapshot>
    where
        S::Delivery: Delivery,
    {
        tokio::spawn(self.run(shutdown))
    }
}
