//! Background jobs: `enqueue(job)` from a request handler, handled later by a worker.
//!
//! A job type is a serde type with a name and its defaults (max attempts, backoff, timeout,
//! concurrency, lease), declared once ([`Job`]). Jobs are built on the same pieces as events:
//! each job type is a topic and a subscription of the same name, a job is a JSON message of
//! `type` = the job name, and its worker is an ordinary [`Worker`] with the job's defaults
//! applied (and changeable on the returned builder).
//!
//! Recurring jobs (`schedule`, `unschedule`, `schedules`, `run_schedules`) are in
//! `schedules.rs`, with the design that makes one job per tick on any number of replicas; the
//! replicas describe them in the job store for those who do not run them (`registry.rs`).
//! Job status, cancel, reschedule and unique jobs keep their records in a
//! [`JobStore`]: the public types are in `status.rs`, the rules in
//! `ledger.rs`, the calls on enqueued jobs in `control.rs`.

mod control;
mod ledger;
mod registry;
mod schedules;
mod status;

pub use control::JobRecords;
pub use registry::{ScheduleRecord, LAST_RUNS};
pub use schedules::{
    ScheduleInfo, Upsert, CATCH_UP_HORIZON, LEAD, RECENT_TICKS, TICK_CLAIMS, TICK_MEMORY,
    TICK_PENDING,
};
pub use status::{Cancelled, JobState, JobStatus, Rescheduled, Unique, UniqueHold, JOB_RETENTION};

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_core::dedup::{Claims, DedupStore};
use sluice_core::jobs::{JobStore, MemoryJobStore};
use sluice_core::{
    Backend, Message, MessageBuilder, MessageId, PublishOutcome, PublishReceipt,
    SubscriptionConfig, SubscriptionName, TopicConfig, TopicName,
};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::batch::{json_batch_handler, BatchContext, BatchResult, Batched, JsonBatchHandler};
use crate::handler::{json_handler, Context, HandlerResult, JsonHandler};
use crate::producer::{ProduceError, Producer};
use crate::schedule::Schedule;
use crate::worker::{Worker, WorkerBuilder};
use ledger::Ledger;
use schedules::Schedules;

/// A background job type.
///
/// ```
/// use std::time::Duration;
/// use sluice_runtime::{Job, JobOptions};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct SendWelcomeEmail { user_id: u64 }
///
/// impl Job for SendWelcomeEmail {
///     const NAME: &'static str = "send-welcome-email";
///     fn options() -> JobOptions {
///         JobOptions::default().max_attempts(8).timeout(Duration::from_secs(30)).concurrency(4)
///     }
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// The job's name: its topic, its subscription and its message `type`
    /// (`[a-z0-9_-]`, at most 48 characters).
    const NAME: &'static str;

    /// The job type's defaults.
    fn options() -> JobOptions {
        JobOptions::default()
    }

    /// The key of a unique job (see [`JobOptions::unique`]): jobs with the same key are one
    /// while the first holds it. `None` (the default) makes the job's id the key.
    fn unique_key(&self) -> Option<String> {
        None
    }
}

/// Defaults of a job type. The subscription keeps `max_attempts` and `lease` (changing them
/// later is a configuration conflict, as for any subscription); the worker takes the rest.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JobOptions {
    /// Attempts before the job is dead-lettered (10).
    pub max_attempts: u32,
    /// Backoff between attempts (1 s doubling to 10 min, full jitter).
    pub backoff: Backoff,
    /// A run longer than this is a transient failure (none).
    pub timeout: Option<Duration>,
    /// Jobs of this type run at once per worker (8).
    pub concurrency: usize,
    /// Lease of one run, extended while it runs (30 s).
    pub lease: Duration,
    /// Makes the job type unique (none): see [`Unique`].
    pub unique: Option<Unique>,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            backoff: Backoff::exponential(Duration::from_secs(1), Duration::from_secs(600)),
            timeout: None,
            concurrency: 8,
            lease: Duration::from_secs(30),
            unique: None,
        }
    }
}

impl JobOptions {
    /// Sets max attempts.
    #[must_use]
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }
    /// Sets the backoff.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
    /// Sets the timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// Sets the concurrency.
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }
    /// Sets the lease.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
    /// Makes the job type unique: an enqueue whose unique key (the job's
    /// [`unique_key`](Job::unique_key), else its id) is held by another job is a no-op that
    /// returns that job's id, as a [`PublishOutcome::Duplicate`].
    #[must_use]
    pub fn unique(mut self, unique: Unique) -> Self {
        self.unique = Some(unique);
        self
    }
}

/// How often a replica writes its schedules' records even when nothing moved (so a record
/// another replica removed, or one lost with its store, comes back).
const REGISTRY_REFRESH: Duration = Duration::from_secs(3600);

/// Enqueues jobs and builds their workers, over any backend.
pub struct Jobs<B: Backend> {
    backend: B,
    producer: Producer<B::Publisher>,
    // std Mutex: never held across an .await.
    ensured: Mutex<HashSet<&'static str>>,
    schedules: Arc<Schedules>,
    ledger: Arc<Ledger>,
    /// The next due tick of each schedule as this replica last wrote it to the job store, and
    /// when. Held across the writes, so an `unschedule` never races a write of its record.
    recorded: tokio::sync::Mutex<HashMap<String, (Option<SystemTime>, std::time::Instant)>>,
}

impl<B: Backend> std::fmt::Debug for Jobs<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("backend", &self.backend.capabilities().backend)
            .finish_non_exhaustive()
    }
}

fn names<J: Job>() -> sluice_core::Result<(TopicName, SubscriptionName)> {
    Ok((TopicName::new(J::NAME)?, SubscriptionName::new(J::NAME)?))
}

impl<B: Backend> Jobs<B> {
    /// Jobs over `backend` (with a publisher of its own).
    pub async fn new(backend: B) -> sluice_core::Result<Self> {
        let producer = Producer::new(backend.publisher().await?);
        let clock: schedules::Clock = Arc::new(SystemTime::now);
        let store = backend
            .job_store()
            .unwrap_or_else(|| Arc::new(MemoryJobStore::new()));
        Ok(Self {
            backend,
            producer,
            ensured: Mutex::new(HashSet::new()),
            schedules: Arc::new(Schedules::new(Arc::new(Claims::default()), clock.clone())),
            ledger: Arc::new(Ledger { store, clock }),
            recorded: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Where job status, cancellations and unique locks are kept: a store every process
    /// enqueueing or running these jobs shares (`sluice-sql`'s `SqlStore` on PostgreSQL or
    /// SQLite, `sluice-redis`'s `RedisStore`) makes `status`, `cancel` and unique jobs work
    /// across processes and restarts. The default is the backend's own store where it has
    /// one ([`Backend::job_store`]: the embedded engine's data directory, or the server's for
    /// `sluice://`), else memory, within this process only (RabbitMQ, SQS, Kafka).
    #[must_use]
    pub fn job_store(mut self, store: Arc<dyn JobStore>) -> Self {
        self.ledger = Arc::new(Ledger {
            store,
            clock: self.ledger.clock.clone(),
        });
        self
    }

    /// Where the replicas running the same schedules claim their ticks: a store every
    /// replica shares (`sluice-redis`'s or `sluice-sql`'s) makes one job per tick across
    /// processes; the default, in memory, within this process only. Set it before the first
    /// [`schedule`](Self::schedule).
    #[must_use]
    pub fn tick_store(mut self, store: Arc<dyn DedupStore>) -> Self {
        self.schedules = Arc::new(Schedules::new(store, self.schedules.clock.clone()));
        self
    }

    /// The clock schedules read (the system's by default; tests inject one). Set it before
    /// the first [`schedule`](Self::schedule).
    #[must_use]
    pub fn clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        let clock: schedules::Clock = Arc::new(clock);
        self.schedules = Arc::new(Schedules::new(self.schedules.store.clone(), clock.clone()));
        self.ledger = Arc::new(Ledger {
            store: self.ledger.store.clone(),
            clock,
        });
        self
    }

    /// Registers a recurring job: `job` is enqueued at every tick of `schedule`, as the job
    /// `schedule-<id>-<tick ms>`. An upsert by `id`: calling it again with the same
    /// definition and job (at every start-up of every replica) changes nothing; another one
    /// replaces it. Ticks are produced by [`run_schedules`](Self::run_schedules) (or
    /// [`produce_due`](Self::produce_due)); every replica may run it, each tick becomes one
    /// job (see `docs/jobs.md`, "Recurring jobs").
    ///
    /// # Errors
    /// Creating the job's topic, or encoding the job.
    pub async fn schedule<J: Job>(
        &self,
        id: &str,
        schedule: Schedule,
        job: &J,
    ) -> Result<Upsert, ProduceError> {
        let (topic, _) = self.ensure::<J>().await?;
        let payload = serde_json::to_vec(job).map_err(|source| ProduceError::Encode {
            type_name: std::any::type_name::<J>(),
            source,
        })?;
        // The tick id must be a valid message id: check it once, here.
        Message::builder(Vec::<u8>::new())
            .id(schedules::probe_id(id))
            .build()?;
        let upsert = self.schedules.upsert(id, schedule, J::NAME, topic, payload);
        self.recorded.lock().await.remove(id);
        self.record_schedules().await;
        Ok(upsert)
    }

    /// Removes a schedule, here and from the job store's registry; whether this `Jobs` had
    /// it. Jobs already produced for its ticks stay. Other replicas that registered it go on
    /// producing it (and describing it) until they unschedule it too.
    pub async fn unschedule(&self, id: &str) -> bool {
        let removed = self.schedules.remove(id);
        let mut recorded = self.recorded.lock().await;
        recorded.remove(id);
        if let Err(err) = self.ledger.forget_schedule(id).await {
            tracing::warn!(schedule = id, error = %err, "could not remove the schedule from the job store");
        }
        removed
    }

    /// Every schedule this `Jobs` runs, with its next due tick. The schedules of every
    /// replica, with their last runs, are in the job store: [`JobRecords::schedules`].
    pub fn schedules(&self) -> Vec<ScheduleInfo> {
        self.schedules.list()
    }

    /// One pass of the schedule producer: publishes every tick due within [`LEAD`] that no
    /// replica produced yet. Returns how many ticks it finished.
    ///
    /// # Errors
    /// The tick store or the backend failed; the tick is tried again on the next pass.
    pub async fn produce_due(&self) -> Result<usize, ProduceError> {
        let produced = self.schedules.produce_due(&self.producer).await;
        self.record_schedules().await;
        Ok(produced?.0)
    }

    /// Writes to the job store the schedules whose next due tick moved since this replica
    /// last wrote them (a failure is logged: the registry is for onlookers, the ticks do not
    /// depend on it).
    async fn record_schedules(&self) {
        let mut recorded = self.recorded.lock().await;
        // Under the lock, the schedules registered now: an `unschedule` waits for the lock,
        // or has already removed its schedule from this list.
        for info in self.schedules.list() {
            let fresh = recorded
                .get(&info.id)
                .is_some_and(|(due, at)| *due == info.next_due && at.elapsed() < REGISTRY_REFRESH);
            if fresh {
                continue;
            }
            match self.ledger.record_schedule(&info).await {
                Ok(()) => {
                    recorded.insert(info.id.clone(), (info.next_due, std::time::Instant::now()));
                }
                Err(err) => {
                    tracing::warn!(schedule = info.id, error = %err, "could not describe the schedule in the job store");
                }
            }
        }
    }

    /// Produces the ticks of every schedule until `shutdown`: passes at each tick's time less
    /// [`LEAD`], again within a second while another replica holds a tick's claim, again
    /// after a second when a pass fails (logged).
    pub async fn run_schedules(&self, shutdown: CancellationToken) {
        loop {
            let changed = self.schedules.changed.notified();
            let pass = self.schedules.produce_due(&self.producer).await;
            self.record_schedules().await;
            let again = match pass {
                Ok((_, false)) => None,
                Ok((_, true)) => Some(Duration::from_secs(1)),
                Err(err) => {
                    tracing::warn!(error = %err, "producing scheduled jobs failed; trying again");
                    Some(Duration::from_secs(1))
                }
            };
            let now = (self.schedules.clock)();
            let until_next = self
                .schedules
                .next_pass()
                .map(|at| at.duration_since(now).unwrap_or_default())
                .unwrap_or(Duration::from_secs(60));
            let wait = again.map_or(until_next, |again| again.min(until_next));
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = changed => {}
                () = tokio::time::sleep(wait.min(Duration::from_secs(60))) => {}
            }
        }
    }

    /// Creates the job type's topic and subscription if needed (done once per type; enqueue
    /// and worker call it).
    pub async fn ensure<J: Job>(&self) -> sluice_core::Result<(TopicName, SubscriptionName)> {
        let (topic, subscription) = names::<J>()?;
        if self.ensured.lock().expect("jobs").contains(J::NAME) {
            return Ok((topic, subscription));
        }
        let options = J::options();
        self.backend
            .ensure_topic(&topic, &TopicConfig::default())
            .await?;
        let config = SubscriptionConfig::new(topic.clone())
            .max_attempts(options.max_attempts)
            .lease(options.lease)
            .prefetch(u32::try_from(options.concurrency).unwrap_or(u32::MAX));
        self.backend
            .ensure_subscription(&subscription, &config)
            .await?;
        self.ensured.lock().expect("jobs").insert(J::NAME);
        Ok((topic, subscription))
    }

    /// Enqueues a job to run as soon as a worker is free.
    pub async fn enqueue<J: Job>(&self, job: &J) -> Result<PublishReceipt, ProduceError> {
        self.enqueue_with(job, |m| m).await
    }

    /// Enqueues a job to run after `delay`.
    pub async fn enqueue_in<J: Job>(
        &self,
        delay: Duration,
        job: &J,
    ) -> Result<PublishReceipt, ProduceError> {
        self.enqueue_with(job, |m| m.deliver_after(delay)).await
    }

    /// Enqueues a job to run at `at`.
    pub async fn enqueue_at<J: Job>(
        &self,
        at: SystemTime,
        job: &J,
    ) -> Result<PublishReceipt, ProduceError> {
        self.enqueue_with(job, |m| m.deliver_at(at)).await
    }

    /// Enqueues a job, letting `customize` set its id (a business key makes the job
    /// recognisable to an idempotent worker), ordering key, headers or delay.
    ///
    /// The job's status is recorded in the job store before the publish. A unique job type
    /// ([`JobOptions::unique`]) whose key another job holds is not published: the receipt
    /// is that job's id, as a [`PublishOutcome::Duplicate`].
    pub async fn enqueue_with<J: Job>(
        &self,
        job: &J,
        customize: impl FnOnce(MessageBuilder) -> MessageBuilder,
    ) -> Result<PublishReceipt, ProduceError> {
        let (topic, _) = self.ensure::<J>().await?;
        let payload = serde_json::to_vec(job).map_err(|source| ProduceError::Encode {
            type_name: std::any::type_name::<J>(),
            source,
        })?;
        // The record keeps the body as a value (parsed back: `to_value` would reorder the
        // payload's fields, which other languages' consumers read as sent).
        let body = serde_json::from_slice(&payload).ok();
        let message = customize(Message::json_builder(payload).message_type(J::NAME)).build()?;
        let id = message.id().as_str().to_owned();
        let unique = match J::options().unique {
            None => None,
            Some(mode) => {
                let key = ledger::lock_key(J::NAME, &job.unique_key().unwrap_or(id.clone()));
                if let Some(holder) = self.ledger.lock(&key, &id, mode).await? {
                    let holder = MessageId::new(holder)?;
                    return Ok(PublishReceipt::new(holder, PublishOutcome::Duplicate));
                }
                Some(UniqueHold { key, mode })
            }
        };
        let now = (self.ledger.clock)();
        let status = JobStatus {
            id,
            job: J::NAME.to_owned(),
            state: match message.deliver_at() {
                Some(due_at) if due_at > now => JobState::Scheduled { due_at },
                _ => JobState::Waiting,
            },
            attempt: 0,
            enqueued_at: now,
            updated_at: now,
            result: None,
            generation: 0,
            unique,
            payload: body,
            published: false,
        };
        let version = match self.ledger.enqueuing(&status).await {
            Ok(version) => version,
            Err(err) => {
                if let Some(hold) = &status.unique {
                    self.ledger.unlock(hold, &status.id).await;
                }
                return Err(err.into());
            }
        };
        match sluice_core::Publisher::publish(&self.producer, &topic, message).await {
            Ok(receipt) => {
                if let Some(version) = version {
                    self.ledger.published(&status, version).await;
                }
                Ok(receipt)
            }
            Err(err) => {
                match version {
                    Some(version) => self.ledger.unpublished(&status, version).await,
                    None => {
                        if let Some(hold) = &status.unique {
                            self.ledger.unlock(hold, &status.id).await;
                        }
                    }
                }
                Err(err.into())
            }
        }
    }

    /// A worker for job type `J` running `handler`, with the job's defaults (concurrency,
    /// backoff, timeout) applied; change any of them on the returned builder.
    pub async fn worker<J, F, Fut>(
        &self,
        handler: F,
    ) -> sluice_core::Result<WorkerBuilder<B::Subscriber, JsonHandler<J, F>>>
    where
        J: Job,
        F: Fn(J, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let (_, subscription) = self.ensure::<J>().await?;
        let options = J::options();
        let subscriber = self.backend.subscribe(&subscription).await?;
        let mut builder = Worker::builder(subscriber, json_handler(handler))
            .concurrency(options.concurrency)
            .backoff(options.backoff)
            .lifecycle(self.ledger.clone());
        if let Some(timeout) = options.timeout {
            builder = builder.timeout(timeout);
        }
        Ok(builder)
    }

    /// A worker for job type `J` running a batch handler: up to
    /// [`batch`](WorkerBuilder::batch)'s `max_messages` jobs per call (send a day's reminders
    /// with one bulk API call), each job settled and tracked on its own — its status goes to
    /// running, succeeded, retrying or dead-lettered as with [`worker`](Self::worker), with
    /// the result its [`Context::set_result`] left; cancelled, superseded and finished jobs
    /// are skipped before the handler. The job's backoff and timeout (the whole batch's) are
    /// applied; its concurrency is not (batches have their own: 2 by default).
    pub async fn batch_worker<J, F, Fut>(
        &self,
        handler: F,
    ) -> sluice_core::Result<WorkerBuilder<B::Subscriber, Batched<JsonBatchHandler<J, F>>>>
    where
        J: Job,
        F: Fn(Vec<(J, Context)>, BatchContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = BatchResult> + Send + 'static,
    {
        let (_, subscription) = self.ensure::<J>().await?;
        let options = J::options();
        let subscriber = self.backend.subscribe(&subscription).await?;
        let mut builder = Worker::builder(subscriber, json_batch_handler(handler))
            .backoff(options.backoff)
            .lifecycle(self.ledger.clone());
        if let Some(timeout) = options.timeout {
            builder = builder.timeout(timeout);
        }
        Ok(builder)
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }
}
