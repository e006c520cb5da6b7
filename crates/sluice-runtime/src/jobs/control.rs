//! Asking about and changing jobs already enqueued: [`JobRecords`] (status, list, cancel on
//! a job store alone) and `Jobs`' `status`, `list`, `cancel`, `reschedule` and `replace`.
//! The rules are in `ledger.rs`.

use std::sync::Arc;
use std::time::SystemTime;

use sluice_core::jobs::JobStore;
use sluice_core::{Backend, Message, TopicName};

use super::ledger::{self, Ledger};
use super::status::{Cancelled, JobStatus, Rescheduled};
use super::{Job, Jobs};
use crate::producer::ProduceError;

/// Job status and cancellation on a job store alone, with no backend: what `sluice jobs`
/// and the dashboard use. [`Jobs::records`] gives the one a `Jobs` uses.
#[derive(Clone)]
pub struct JobRecords {
    ledger: Arc<Ledger>,
}

impl std::fmt::Debug for JobRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRecords").finish_non_exhaustive()
    }
}

impl JobRecords {
    /// The job records of `store`.
    pub fn new(store: Arc<dyn JobStore>) -> Self {
        Self {
            ledger: Arc::new(Ledger {
                store,
                clock: Arc::new(SystemTime::now),
            }),
        }
    }

    /// As [`Jobs::status`].
    ///
    /// # Errors
    /// The job store failed.
    pub async fn status(&self, id: &str) -> sluice_core::Result<Option<JobStatus>> {
        self.ledger.status(id).await
    }

    /// As [`Jobs::list`].
    ///
    /// # Errors
    /// The job store failed.
    pub async fn list(
        &self,
        job: Option<&str>,
        limit: usize,
    ) -> sluice_core::Result<Vec<JobStatus>> {
        self.ledger.list(job, None, limit).await
    }

    /// As [`list`](Self::list), of the jobs in state `state` only (one of
    /// [`JobState::NAMES`](super::JobState::NAMES); another name matches no job).
    ///
    /// # Errors
    /// The job store failed.
    pub async fn list_in_state(
        &self,
        job: Option<&str>,
        state: &str,
        limit: usize,
    ) -> sluice_core::Result<Vec<JobStatus>> {
        self.ledger.list(job, Some(state), limit).await
    }

    /// The schedules the replicas running them describe in this store (`limit` at most), by
    /// id, each with its next due tick and its last [`LAST_RUNS`](super::LAST_RUNS) runs
    /// (newest first).
    ///
    /// # Errors
    /// The job store failed.
    pub async fn schedules(&self, limit: usize) -> sluice_core::Result<Vec<super::ScheduleRecord>> {
        self.ledger.schedules(limit).await
    }

    /// As [`Jobs::cancel`].
    ///
    /// # Errors
    /// The job store failed.
    pub async fn cancel(&self, id: &str) -> sluice_core::Result<Cancelled> {
        self.ledger.cancel(id).await
    }
}

impl<B: Backend> Jobs<B> {
    /// The job records this `Jobs` keeps (status, list, cancel without a backend).
    pub fn records(&self) -> JobRecords {
        JobRecords {
            ledger: self.ledger.clone(),
        }
    }

    /// What became of job `id`: scheduled, waiting, running, retrying, succeeded,
    /// dead-lettered or cancelled, from the job store (`None` if it knows no such job, or
    /// forgot it after [`JOB_RETENTION`](super::JOB_RETENTION)).
    ///
    /// # Errors
    /// The job store failed.
    pub async fn status(&self, id: &str) -> sluice_core::Result<Option<JobStatus>> {
        self.ledger.status(id).await
    }

    /// The most recently changed jobs (of type `job`, or of every type), newest first.
    ///
    /// # Errors
    /// The job store failed.
    pub async fn list(
        &self,
        job: Option<&str>,
        limit: usize,
    ) -> sluice_core::Result<Vec<JobStatus>> {
        self.ledger.list(job, None, limit).await
    }

    /// Cancels job `id` if it has not started (scheduled, waiting, or waiting for a retry):
    /// it never runs — its message is acked without running when it arrives. Says whether it
    /// was still pending; a running or finished job is left alone.
    ///
    /// # Errors
    /// The job store failed.
    pub async fn cancel(&self, id: &str) -> sluice_core::Result<Cancelled> {
        self.ledger.cancel(id).await
    }

    /// Moves pending job `id` to run at `at` instead: a copy is published for `at` and the
    /// job's earlier message is skipped when it arrives.
    ///
    /// # Errors
    /// The job store or the publish failed (nothing changed), or the job was recorded
    /// without its body (enqueued elsewhere without this store).
    pub async fn reschedule(&self, id: &str, at: SystemTime) -> Result<Rescheduled, ProduceError> {
        self.republish(id, at, None).await
    }

    /// Replaces pending job `id` with `job`, to run at `at` (now if `None`): the same job id,
    /// a new body.
    ///
    /// # Errors
    /// As [`reschedule`](Self::reschedule), or `job` cannot be encoded.
    pub async fn replace<J: Job>(
        &self,
        id: &str,
        job: &J,
        at: Option<SystemTime>,
    ) -> Result<Rescheduled, ProduceError> {
        let body = serde_json::to_value(job).map_err(|source| ProduceError::Encode {
            type_name: std::any::type_name::<J>(),
            source,
        })?;
        let at = at.unwrap_or_else(|| (self.ledger.clock)());
        self.republish(id, at, Some(body)).await
    }

    async fn republish(
        &self,
        id: &str,
        at: SystemTime,
        body: Option<serde_json::Value>,
    ) -> Result<Rescheduled, ProduceError> {
        let Some((status, _)) = self.ledger.read(id).await? else {
            return Ok(Rescheduled::NotFound);
        };
        if !status.state.is_pending() {
            return Ok(Rescheduled::NotPending(status));
        }
        let Some(payload) = body.clone().or_else(|| status.payload.clone()) else {
            return Err(sluice_core::Error::backend(
                format!("job {id} was recorded without its body (enqueued without this job store); enqueue it again instead"),
                false,
            )
            .into());
        };
        let generation = status.generation + 1;
        let mut message =
            Message::json_builder(serde_json::to_vec(&payload).expect("a JSON value encodes"))
                .id(format!("{id}.g{generation}"))
                .message_type(status.job.clone())
                .deliver_at(at)
                .build()?;
        message.set_reserved_header(ledger::JOB_ID_HEADER, id);
        message.set_reserved_header(ledger::JOB_GENERATION_HEADER, generation.to_string());
        let topic = TopicName::new(&status.job).map_err(sluice_core::Error::from)?;
        sluice_core::Publisher::publish(&self.producer, &topic, message).await?;
        Ok(
            match self.ledger.rescheduled(id, generation, at, body).await? {
                Ok(status) => Rescheduled::Rescheduled(status),
                Err(Some(status)) => Rescheduled::NotPending(status),
                Err(None) => Rescheduled::NotFound,
            },
        )
    }
}
