//! What became of a job: [`JobStatus`] and its [`JobState`], the answers of `cancel` and
//! `reschedule`, and the unique-job modes. The rules that move a job from one state to the
//! next are in `ledger.rs`.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// How long a job's status is kept after its last change (7 days; a job due later than that
/// is kept until 7 days after it is due).
pub const JOB_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobState {
    /// Enqueued to run at `due_at`, later than now.
    Scheduled {
        /// When it becomes due.
        #[serde(with = "ms")]
        due_at: SystemTime,
    },
    /// Due, waiting for a worker.
    Waiting,
    /// A worker runs it.
    Running {
        /// Since when (this attempt).
        #[serde(with = "ms")]
        since: SystemTime,
    },
    /// Failed; tried again at `next_attempt_at`.
    Retrying {
        /// When the next attempt is due.
        #[serde(with = "ms")]
        next_attempt_at: SystemTime,
        /// The last attempt's error.
        last_error: String,
    },
    /// Succeeded.
    Succeeded {
        /// When.
        #[serde(with = "ms")]
        at: SystemTime,
    },
    /// Dead-lettered: out of attempts, a permanent failure or undecodable.
    DeadLettered {
        /// When.
        #[serde(with = "ms")]
        at: SystemTime,
        /// Why (the reason in the dead-letter envelope).
        reason: String,
    },
    /// Cancelled before it started: it never runs.
    Cancelled {
        /// When.
        #[serde(with = "ms")]
        at: SystemTime,
    },
}

impl JobState {
    /// Every state's name, as [`name`](Self::name) gives them.
    pub const NAMES: [&'static str; 7] = [
        "scheduled",
        "waiting",
        "running",
        "retrying",
        "succeeded",
        "dead_lettered",
        "cancelled",
    ];

    /// The state's name, as in JSON (`scheduled`, `waiting`, `running`, …).
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Scheduled { .. } => "scheduled",
            JobState::Waiting => "waiting",
            JobState::Running { .. } => "running",
            JobState::Retrying { .. } => "retrying",
            JobState::Succeeded { .. } => "succeeded",
            JobState::DeadLettered { .. } => "dead_lettered",
            JobState::Cancelled { .. } => "cancelled",
        }
    }

    /// Not started yet (scheduled, waiting, or waiting for its next attempt): a job in one
    /// of these states can be cancelled or rescheduled.
    pub fn is_pending(&self) -> bool {
        matches!(
            self,
            JobState::Scheduled { .. } | JobState::Waiting | JobState::Retrying { .. }
        )
    }

    /// Finished for good: succeeded, dead-lettered or cancelled.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            JobState::Succeeded { .. } | JobState::DeadLettered { .. } | JobState::Cancelled { .. }
        )
    }
}

/// A job's status, as [`Jobs::status`](super::Jobs::status) reads it from the job store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobStatus {
    /// The job's id (its first message's id).
    pub id: String,
    /// The job type's name.
    pub job: String,
    /// Where it stands.
    #[serde(flatten)]
    pub state: JobState,
    /// Attempts started so far.
    #[serde(default)]
    pub attempt: u32,
    /// When it was enqueued.
    #[serde(with = "ms")]
    pub enqueued_at: SystemTime,
    /// When the status last changed.
    #[serde(with = "ms")]
    pub updated_at: SystemTime,
    /// What the handler left with [`Context::set_result`](crate::Context::set_result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// How many times it was rescheduled or replaced (each one a new message).
    #[serde(default)]
    pub generation: u64,
    /// The unique lock it holds (`unique/<job>/<key>`) and its mode, if it was enqueued as a
    /// unique job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique: Option<UniqueHold>,
    /// The job's body, kept to publish it again on a reschedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) payload: Option<serde_json::Value>,
    /// Whether the enqueue's publish was confirmed (a record left unconfirmed by an enqueuer
    /// that died does not hold a unique lock for long).
    #[serde(default = "yes")]
    pub(crate) published: bool,
}

fn yes() -> bool {
    true
}

/// A unique lock held by a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UniqueHold {
    /// The lock's key in the job store.
    pub key: String,
    /// When it is released.
    pub mode: Unique,
}

/// A unique job: a second enqueue with the same unique key while the first holds it is a
/// no-op that returns the first job's id (see `docs/jobs.md`, "Unique jobs"). The key is the
/// job's [`unique_key`](super::Job::unique_key) if it gives one, else the job's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unique {
    /// Held for this long after the first enqueue, whatever becomes of the job.
    For(#[serde(with = "ms_duration")] Duration),
    /// Held until the job starts (its first attempt), or is cancelled.
    UntilStarted,
    /// Held until the job succeeds, is dead-lettered or is cancelled.
    UntilCompleted,
}

/// What [`Jobs::cancel`](super::Jobs::cancel) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cancelled {
    /// The job was still pending and will never run.
    Cancelled(JobStatus),
    /// The job was no longer pending (running, finished or already cancelled): nothing
    /// changed.
    NotPending(JobStatus),
    /// The job store knows no job of this id (never enqueued through a `Jobs` sharing this
    /// store, or forgotten after [`JOB_RETENTION`]).
    NotFound,
}

impl Cancelled {
    /// Whether the job was still pending, so this call cancelled it.
    pub fn was_pending(&self) -> bool {
        matches!(self, Cancelled::Cancelled(_))
    }

    /// The job's status after the call (`None`: the store knows no such job).
    pub fn status(&self) -> Option<&JobStatus> {
        match self {
            Cancelled::Cancelled(status) | Cancelled::NotPending(status) => Some(status),
            Cancelled::NotFound => None,
        }
    }
}

/// What [`Jobs::reschedule`](super::Jobs::reschedule) and
/// [`Jobs::replace`](super::Jobs::replace) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rescheduled {
    /// The job now runs at its new time (with its new body for a replace).
    Rescheduled(JobStatus),
    /// The job was no longer pending: nothing changed (a copy published meanwhile is
    /// skipped when it arrives).
    NotPending(JobStatus),
    /// The job store knows no job of this id.
    NotFound,
}

/// Times as milliseconds since the Unix epoch.
pub(crate) mod ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn to_ms(at: SystemTime) -> u64 {
        at.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn serialize<S: Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(to_ms(*at))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(UNIX_EPOCH + Duration::from_millis(u64::deserialize(d)?))
    }

    /// Optional times, the same way (`null` for none).
    pub(crate) mod option {
        use std::time::{Duration, SystemTime, UNIX_EPOCH};

        use serde::{Deserialize, Deserializer, Serializer};

        #[allow(clippy::ref_option)] // serde's `with` passes a reference
        pub(crate) fn serialize<S: Serializer>(
            at: &Option<SystemTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => s.serialize_some(&super::to_ms(*at)),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            Ok(Option::<u64>::deserialize(d)?.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)))
        }
    }
}

/// Durations as milliseconds.
mod ms_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn a_status_reads_back_as_written_with_its_state_inline() {
        let at = UNIX_EPOCH + Duration::from_millis(1_800_000_000_123);
        let status = JobStatus {
            id: "j1".into(),
            job: "report".into(),
            state: JobState::Retrying {
                next_attempt_at: at,
                last_error: "timeout".into(),
            },
            attempt: 2,
            enqueued_at: at,
            updated_at: at,
            result: None,
            generation: 1,
            unique: Some(UniqueHold {
                key: "unique/report/k".into(),
                mode: Unique::For(Duration::from_secs(60)),
            }),
            payload: Some(serde_json::json!({"a": 1})),
            published: true,
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["state"], "retrying");
        assert_eq!(json["next_attempt_at"], 1_800_000_000_123_u64);
        assert_eq!(json["unique"]["mode"]["for"], 60_000);
        let back: JobStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
    }
}
