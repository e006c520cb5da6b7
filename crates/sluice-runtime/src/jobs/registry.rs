//! The schedule registry: every schedule as the replicas running it last described it, kept
//! in the job store at `schedule/<id>`, so that processes that do not run the schedules
//! (`sluice jobs schedules`, the `sluice serve` dashboard) list them with their next due tick
//! and their last runs.
//!
//! A replica writes a schedule's record when it registers the schedule and whenever its next
//! due tick moves; replicas that agree write the same record, and a write that loses a race
//! to another replica's is dropped (the other one is as recent). The record lives
//! [`JOB_RETENTION`] past its next due tick: a schedule no replica runs any more drops out a
//! week after the tick it never produced. `unschedule` removes it.
//!
//! The last runs are not stored twice: they are the job records of the schedule's ticks
//! (`job/schedule-<id>-<tick ms>`), which the workers keep.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sluice_core::Result;

use super::ledger::{record_key, Ledger};
use super::schedules::ScheduleInfo;
use super::status::{ms, JobStatus, JOB_RETENTION};

/// Compare-and-swap rounds before leaving a schedule's record to the replica that keeps
/// changing it.
const SWAP_TRIES: usize = 4;
/// How many of a schedule's runs a listing shows.
pub const LAST_RUNS: usize = 5;

/// A schedule as its replicas registered it, read from a job store by
/// [`JobRecords::schedules`](super::JobRecords::schedules).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScheduleRecord {
    /// The schedule id.
    pub id: String,
    /// The job type it produces.
    pub job: String,
    /// When it ticks, in words (`cron `0 3 * * *` in Europe/Paris, missed ticks skipped`).
    pub schedule: String,
    /// The next tick not produced yet (`None`: the schedule has no more ticks).
    #[serde(default, with = "opt_ms", skip_serializing_if = "Option::is_none")]
    pub next_due: Option<SystemTime>,
    /// When a replica last wrote this record.
    #[serde(with = "ms")]
    pub updated_at: SystemTime,
    /// The most recent runs of its ticks, newest first (filled when read, not stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_runs: Vec<JobStatus>,
}

pub(crate) fn schedule_key(id: &str) -> String {
    format!("schedule/{id}")
}

impl ScheduleRecord {
    fn of(info: &ScheduleInfo, now: SystemTime) -> Self {
        Self {
            id: info.id.clone(),
            job: info.job.to_owned(),
            schedule: info.schedule.to_string(),
            next_due: info.next_due,
            updated_at: now,
            last_runs: Vec::new(),
        }
    }

    /// Whether `self` says what `other` says (the write time aside).
    fn same_as(&self, other: &Self) -> bool {
        self.job == other.job && self.schedule == other.schedule && self.next_due == other.next_due
    }
}

/// Whether job id `id` is a tick of schedule `schedule` (`schedule-<id>-<digits>`).
fn is_tick_of(id: &str, schedule: &str) -> bool {
    id.strip_prefix("schedule-")
        .and_then(|rest| rest.strip_prefix(schedule))
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
}

impl Ledger {
    /// Writes the record of a schedule this replica runs, unless the store already says the
    /// same (or another replica wins the race to say it).
    pub(crate) async fn record_schedule(&self, info: &ScheduleInfo) -> Result<()> {
        let now = (self.clock)();
        let record = ScheduleRecord::of(info, now);
        let value = serde_json::to_vec(&record).expect("a schedule record encodes");
        let until_due = record
            .next_due
            .and_then(|due| due.duration_since(now).ok())
            .unwrap_or(Duration::ZERO);
        let key = schedule_key(&info.id);
        for _ in 0..SWAP_TRIES {
            let current = self.store.load(&key).await?;
            let expected = match &current {
                Some(stored) => {
                    let old: Option<ScheduleRecord> = serde_json::from_slice(&stored.value).ok();
                    if old.is_some_and(|old| old.same_as(&record)) {
                        return Ok(());
                    }
                    Some(stored.version)
                }
                None => None,
            };
            let ttl = JOB_RETENTION + until_due;
            if self
                .store
                .swap(&key, expected, &value, ttl)
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Removes a schedule's record.
    pub(crate) async fn forget_schedule(&self, id: &str) -> Result<()> {
        let key = schedule_key(id);
        for _ in 0..SWAP_TRIES {
            let Some(stored) = self.store.load(&key).await? else {
                return Ok(());
            };
            if self.store.remove(&key, stored.version).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Every schedule recorded in the store (`limit` at most), by id, each with its last
    /// [`LAST_RUNS`] runs.
    pub(crate) async fn schedules(&self, limit: usize) -> Result<Vec<ScheduleRecord>> {
        let mut records: Vec<ScheduleRecord> = self
            .store
            .scan("schedule/", limit)
            .await?
            .into_iter()
            .filter_map(|(_, stored)| serde_json::from_slice(&stored.value).ok())
            .collect();
        records.sort_by(|a, b| a.id.cmp(&b.id));
        for record in &mut records {
            let prefix = record_key(&format!("schedule-{}-", record.id));
            // Other schedules' ticks can share the prefix (`a` and `a-b`): read more, keep
            // this one's.
            record.last_runs = self
                .store
                .scan(&prefix, LAST_RUNS * 4)
                .await?
                .into_iter()
                .filter_map(|(_, stored)| serde_json::from_slice::<JobStatus>(&stored.value).ok())
                .filter(|status| is_tick_of(&status.id, &record.id))
                .take(LAST_RUNS)
                .collect();
        }
        Ok(records)
    }
}

/// Optional times as milliseconds since the epoch.
mod opt_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)] // serde's `with` passes a reference
    pub(super) fn serialize<S: Serializer>(
        at: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => s.serialize_some(&super::ms::to_ms(*at)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_belongs_to_its_schedule_only() {
        assert!(is_tick_of("schedule-report-1800000000000", "report"));
        assert!(!is_tick_of("schedule-report-2-1800000000000", "report"));
        assert!(is_tick_of("schedule-report-2-1800000000000", "report-2"));
        assert!(!is_tick_of("schedule-report-", "report"));
        assert!(!is_tick_of("report-1800000000000", "report"));
    }
}
