//! The rules of job status, cancellation, rescheduling and unique locks, on a [`JobStore`]'s
//! compare-and-swap: every change reads a job's record, decides, and writes it back only if
//! nobody changed it meanwhile (else reads again). So a cancel and a worker starting the job
//! cannot both win: whichever swaps first decides, and the other sees it.
//!
//! Keys: `job/<id>` holds a [`JobStatus`]; `unique/<job>/<key>` a unique lock (the id of the
//! job holding it). A rescheduled job is published again as a new message (its id with
//! `.g<generation>`), carrying the job's id and generation in the reserved headers
//! `sluice-job-id` and `sluice-job-generation`; a worker runs a message only if its
//! generation is the record's.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sluice_core::idempotency::{boxed, BoxFuture};
use sluice_core::jobs::JobStore;
use sluice_core::{Error, Message, Result};

use super::schedules::Clock;
use super::status::{Cancelled, JobState, JobStatus, Unique, UniqueHold, JOB_RETENTION};
use crate::observe::OutcomeKind;
use crate::worker::{Admit, Lifecycle};

/// The reserved header naming a rescheduled copy's job.
pub(crate) const JOB_ID_HEADER: &str = "sluice-job-id";
/// The reserved header with a rescheduled copy's generation.
pub(crate) const JOB_GENERATION_HEADER: &str = "sluice-job-generation";
/// How long an enqueue whose publish was never confirmed keeps a unique lock (its enqueuer
/// died between writing the record and publishing).
const UNCONFIRMED_GRACE: Duration = Duration::from_secs(60);
/// How long a copy newer than its record waits for the reschedule that published it.
const RESCHEDULE_GRACE: Duration = Duration::from_secs(60);
/// Compare-and-swap rounds before giving up (retryably) on a record many writers contend.
const SWAP_TRIES: usize = 32;

pub(crate) fn record_key(id: &str) -> String {
    format!("job/{id}")
}

pub(crate) fn lock_key(job: &str, key: &str) -> String {
    format!("unique/{job}/{key}")
}

/// The job id and generation a message carries.
pub(crate) fn job_of(message: &Message) -> (String, u64) {
    let id = message
        .header(JOB_ID_HEADER)
        .map_or_else(|| message.id().as_str().to_owned(), str::to_owned);
    let generation = message
        .header(JOB_GENERATION_HEADER)
        .and_then(|g| g.parse().ok())
        .unwrap_or(0);
    (id, generation)
}

#[derive(Debug, Serialize, Deserialize)]
struct Lock {
    job_id: String,
}

fn contended(what: &str, id: &str) -> Error {
    Error::backend(
        format!("the job store kept changing {what} {id}; try again"),
        true,
    )
}

/// Job status on a [`JobStore`].
pub(crate) struct Ledger {
    pub(crate) store: Arc<dyn JobStore>,
    pub(crate) clock: Clock,
}

impl Ledger {
    fn now(&self) -> SystemTime {
        (self.clock)()
    }

    /// The record of `id` and its version.
    pub(crate) async fn read(&self, id: &str) -> Result<Option<(JobStatus, u64)>> {
        let Some(found) = self.store.load(&record_key(id)).await? else {
            return Ok(None);
        };
        let status = serde_json::from_slice(&found.value).map_err(|e| {
            Error::backend(
                format!("the job store's record of {id} is unreadable: {e}"),
                false,
            )
        })?;
        Ok(Some((status, found.version)))
    }

    /// Writes `status` if its record is still at `expected`; the new version.
    pub(crate) async fn write(
        &self,
        status: &JobStatus,
        expected: Option<u64>,
    ) -> Result<Option<u64>> {
        let value = serde_json::to_vec(status).expect("a job status encodes");
        let mut ttl = JOB_RETENTION;
        if let JobState::Scheduled { due_at } = status.state {
            ttl += due_at.duration_since(self.now()).unwrap_or_default();
        }
        self.store
            .swap(&record_key(&status.id), expected, &value, ttl)
            .await
    }

    /// What a reader sees: a scheduled job whose time came is waiting.
    fn seen(&self, mut status: JobStatus) -> JobStatus {
        if let JobState::Scheduled { due_at } = status.state {
            if due_at <= self.now() {
                status.state = JobState::Waiting;
            }
        }
        status
    }

    pub(crate) async fn status(&self, id: &str) -> Result<Option<JobStatus>> {
        Ok(self.read(id).await?.map(|(s, _)| self.seen(s)))
    }

    pub(crate) async fn list(
        &self,
        job: Option<&str>,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobStatus>> {
        // Records of every type and state share the prefix: read more when filtering.
        let read = if job.is_some() || state.is_some() {
            limit.saturating_mul(20).max(1000)
        } else {
            limit
        };
        let mut out = Vec::new();
        for (key, found) in self.store.scan("job/", read).await? {
            match serde_json::from_slice::<JobStatus>(&found.value).map(|s| self.seen(s)) {
                // Filtered as shown (a scheduled job past due is waiting).
                Ok(status)
                    if job.is_none_or(|j| status.job == j)
                        && state.is_none_or(|s| status.state.name() == s) =>
                {
                    out.push(status);
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(%key, %err, "skipping an unreadable job record"),
            }
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    // ---- enqueue -------------------------------------------------------------------

    /// Takes the unique lock `key` for `job_id`: `None` when taken, else the id of the live
    /// job holding it.
    pub(crate) async fn lock(
        &self,
        key: &str,
        job_id: &str,
        mode: Unique,
    ) -> Result<Option<String>> {
        let ttl = match mode {
            Unique::For(period) => period,
            Unique::UntilStarted | Unique::UntilCompleted => JOB_RETENTION,
        };
        let ours = serde_json::to_vec(&Lock {
            job_id: job_id.to_owned(),
        })
        .expect("a lock encodes");
        for _ in 0..SWAP_TRIES {
            let current = self.store.load(key).await?;
            let expected = match &current {
                None => None,
                Some(found) => {
                    let holder = serde_json::from_slice::<Lock>(&found.value)
                        .map(|l| l.job_id)
                        .unwrap_or_default();
                    if holder == job_id {
                        return Ok(None);
                    }
                    if !self.stale(&holder, mode).await? {
                        return Ok(Some(holder));
                    }
                    Some(found.version)
                }
            };
            if self.store.swap(key, expected, &ours, ttl).await?.is_some() {
                return Ok(None);
            }
        }
        Err(contended("the unique lock", key))
    }

    /// Whether a lock held by `holder` outlived its reason: the holder's enqueue never
    /// published, or (for the modes released by the job) the holder is gone or released it.
    async fn stale(&self, holder: &str, mode: Unique) -> Result<bool> {
        let record = self.read(holder).await?.map(|(s, _)| s);
        let unconfirmed = |s: &JobStatus| {
            !s.published
                && self.now().duration_since(s.enqueued_at).unwrap_or_default() > UNCONFIRMED_GRACE
        };
        Ok(match (mode, record) {
            (_, Some(s)) if unconfirmed(&s) => true,
            (Unique::For(_), _) => false,
            (_, None) => true,
            (Unique::UntilStarted, Some(s)) => !s.state.is_pending(),
            (Unique::UntilCompleted, Some(s)) => s.state.is_final(),
        })
    }

    /// Releases `hold` if `job_id` still holds it.
    pub(crate) async fn unlock(&self, hold: &UniqueHold, job_id: &str) {
        if matches!(hold.mode, Unique::For(_)) {
            return;
        }
        let result = async {
            if let Some(found) = self.store.load(&hold.key).await? {
                let holder = serde_json::from_slice::<Lock>(&found.value).map(|l| l.job_id);
                if holder.is_ok_and(|h| h == job_id) {
                    self.store.remove(&hold.key, found.version).await?;
                }
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(key = %hold.key, %err, "could not release a unique lock; it goes stale with its job");
        }
    }

    /// Records a job about to be published. `None` when a live, unfinished record of the
    /// same id exists (a second enqueue of one id: the backend's dedup decides).
    pub(crate) async fn enqueuing(&self, status: &JobStatus) -> Result<Option<u64>> {
        for _ in 0..SWAP_TRIES {
            let expected = match self.read(&status.id).await? {
                Some((old, _)) if !old.state.is_final() => return Ok(None),
                Some((_, version)) => Some(version),
                None => None,
            };
            if let Some(version) = self.write(status, expected).await? {
                return Ok(Some(version));
            }
        }
        Err(contended("the job", &status.id))
    }

    /// The enqueue's publish was confirmed: `status` as written at `version` is marked
    /// published, unless a worker already moved it on (which says as much).
    pub(crate) async fn published(&self, status: &JobStatus, version: u64) {
        let mut status = status.clone();
        status.published = true;
        if let Err(err) = self.write(&status, Some(version)).await {
            tracing::debug!(id = %status.id, %err, "could not mark a job as published");
        }
    }

    /// The enqueue's publish failed: forgets the record (and its lock) it wrote.
    pub(crate) async fn unpublished(&self, status: &JobStatus, version: u64) {
        if let Some(hold) = &status.unique {
            self.unlock(hold, &status.id).await;
        }
        if let Err(err) = self.store.remove(&record_key(&status.id), version).await {
            tracing::debug!(id = %status.id, %err, "could not forget an unpublished job");
        }
    }

    // ---- cancel and reschedule -------------------------------------------------------

    pub(crate) async fn cancel(&self, id: &str) -> Result<Cancelled> {
        for _ in 0..SWAP_TRIES {
            let Some((mut status, version)) = self.read(id).await? else {
                return Ok(Cancelled::NotFound);
            };
            if !status.state.is_pending() {
                return Ok(Cancelled::NotPending(self.seen(status)));
            }
            let now = self.now();
            status.state = JobState::Cancelled { at: now };
            status.updated_at = now;
            if self.write(&status, Some(version)).await?.is_some() {
                if let Some(hold) = &status.unique {
                    self.unlock(hold, id).await;
                }
                return Ok(Cancelled::Cancelled(status));
            }
        }
        Err(contended("the job", id))
    }

    /// Moves a pending job to generation `generation`, due at `at` (with a new body if
    /// given), after its copy was published. `Err(status)` when it is no longer pending.
    pub(crate) async fn rescheduled(
        &self,
        id: &str,
        generation: u64,
        at: SystemTime,
        payload: Option<serde_json::Value>,
    ) -> Result<std::result::Result<JobStatus, Option<JobStatus>>> {
        for _ in 0..SWAP_TRIES {
            let Some((mut status, version)) = self.read(id).await? else {
                return Ok(Err(None));
            };
            if !status.state.is_pending() || status.generation >= generation {
                return Ok(Err(Some(self.seen(status))));
            }
            let now = self.now();
            status.generation = generation;
            status.state = JobState::Scheduled { due_at: at };
            status.updated_at = now;
            if payload.is_some() {
                status.payload = payload.clone();
            }
            if self.write(&status, Some(version)).await?.is_some() {
                return Ok(Ok(self.seen(status)));
            }
        }
        Err(contended("the job", id))
    }

    // ---- the worker's side -------------------------------------------------------------

    async fn admit_message(&self, message: &Message, attempt: u32) -> Result<Admit> {
        let (id, generation) = job_of(message);
        for _ in 0..SWAP_TRIES {
            let now = self.now();
            let (mut status, expected) = match self.read(&id).await? {
                Some((status, version)) => (status, Some(version)),
                // A job this store never saw (enqueued elsewhere): tracked from here on.
                None => (
                    JobStatus {
                        id: id.clone(),
                        job: message.message_type().unwrap_or_default().to_owned(),
                        state: JobState::Waiting,
                        attempt: 0,
                        enqueued_at: message.published_at().unwrap_or(now),
                        updated_at: now,
                        result: None,
                        generation,
                        unique: None,
                        payload: None,
                        published: true,
                    },
                    None,
                ),
            };
            if generation < status.generation {
                return Ok(Admit::Skip(format!(
                    "job {id} was rescheduled (generation {} replaces {generation})",
                    status.generation
                )));
            }
            if generation > status.generation {
                // A copy published by a reschedule whose record change has not landed yet,
                // or never will (the reschedule failed or found the job started).
                let young = message
                    .published_at()
                    .and_then(|at| now.duration_since(at).ok())
                    .is_some_and(|age| age < RESCHEDULE_GRACE);
                if status.state.is_pending() && young {
                    return Ok(Admit::Later(Duration::from_secs(1)));
                }
                return Ok(Admit::Skip(format!(
                    "job {id}: its reschedule to generation {generation} did not take effect"
                )));
            }
            match &status.state {
                JobState::Cancelled { .. } => {
                    return Ok(Admit::Skip(format!("job {id} was cancelled")));
                }
                JobState::Succeeded { .. } => {
                    return Ok(Admit::Skip(format!("job {id} already succeeded")));
                }
                _ => {}
            }
            status.state = JobState::Running { since: now };
            status.attempt = attempt.max(status.attempt);
            status.updated_at = now;
            status.published = true;
            if self.write(&status, expected).await?.is_some() {
                if let Some(hold) = &status.unique {
                    if hold.mode == Unique::UntilStarted {
                        self.unlock(hold, &id).await;
                    }
                }
                return Ok(Admit::Run);
            }
        }
        Err(contended("the job", &id))
    }

    async fn settle_message(
        &self,
        message: &Message,
        kind: &OutcomeKind,
        result: Option<serde_json::Value>,
    ) -> Result<()> {
        let (id, generation) = job_of(message);
        for _ in 0..SWAP_TRIES {
            let Some((mut status, version)) = self.read(&id).await? else {
                return Ok(());
            };
            if status.generation != generation {
                return Ok(());
            }
            let now = self.now();
            status.state = match kind {
                OutcomeKind::Acked => JobState::Succeeded { at: now },
                OutcomeKind::Retried { after, error } => JobState::Retrying {
                    next_attempt_at: now + *after,
                    last_error: error.clone(),
                },
                OutcomeKind::DeadLettered { reason } => JobState::DeadLettered {
                    at: now,
                    reason: reason.clone(),
                },
                OutcomeKind::Released if matches!(status.state, JobState::Running { .. }) => {
                    JobState::Waiting
                }
                _ => return Ok(()),
            };
            if status.state.is_final() && status.result.is_none() {
                status.result.clone_from(&result);
            }
            status.updated_at = now;
            if self.write(&status, Some(version)).await?.is_some() {
                if let (Some(hold), true) = (&status.unique, status.state.is_final()) {
                    self.unlock(hold, &id).await;
                }
                return Ok(());
            }
        }
        Err(contended("the job", &id))
    }
}

impl Lifecycle for Ledger {
    fn admit<'a>(&'a self, message: &'a Message, attempt: u32) -> BoxFuture<'a, Result<Admit>> {
        boxed(self.admit_message(message, attempt))
    }

    fn settled<'a>(
        &'a self,
        message: &'a Message,
        kind: &'a OutcomeKind,
        result: Option<serde_json::Value>,
    ) -> BoxFuture<'a, ()> {
        boxed(async move {
            if let Err(err) = self.settle_message(message, kind, result).await {
                let id = message.id();
                tracing::warn!(%id, %err, "could not record the job's outcome in the job store");
            }
        })
    }
}
