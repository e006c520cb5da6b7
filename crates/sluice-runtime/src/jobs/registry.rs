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
//! The record names the schedule's latest produced ticks; their runs are not stored twice:
//! they are the job records of those ticks (`job/schedule-<id>-<tick ms>`), which the
//! workers keep, read one by one (no scan of the store's jobs).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sluice_core::Result;

use super::ledger::Ledger;
use super::schedules::{ScheduleInfo, RECENT_TICKS};
use super::status::{ms, JobStatus, JOB_RETENTION};
use crate::schedule::tick_id;

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
    /// The next tick due: the earliest not due yet, whether already produced (ticks are
    /// produced up to 30 s ahead) or not (`None`: the schedule has no more ticks).
    #[serde(default, with = "ms::option", skip_serializing_if = "Option::is_none")]
    pub next_due: Option<SystemTime>,
    /// When a replica last wrote this record.
    #[serde(with = "ms")]
    pub updated_at: SystemTime,
    /// Ticks produced (ms since the epoch), newest first: those produced ahead of their time
    /// and the last [`LAST_RUNS`] due.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ticks: Vec<u64>,
    /// The most recent runs of its ticks, newest first (filled when read, not stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_runs: Vec<JobStatus>,
}

pub(crate) fn schedule_key(id: &str) -> String {
    format!("schedule/{id}")
}

impl ScheduleRecord {
    /// What `info` says, with the ticks `stored` (the record as found) knew of.
    fn of(info: &ScheduleInfo, stored: Option<&ScheduleRecord>, now: SystemTime) -> Self {
        let mut ticks: Vec<u64> = info.recent_ticks.iter().map(|t| ms::to_ms(*t)).collect();
        ticks.extend(
            stored
                .map(|s| s.ticks.iter().copied())
                .into_iter()
                .flatten(),
        );
        ticks.sort_unstable_by(|a, b| b.cmp(a));
        ticks.dedup();
        // Keep the ticks not due yet (the earliest of them, if many) and the last due ones.
        let now_ms = ms::to_ms(now);
        let due = ticks.partition_point(|t| *t > now_ms);
        let ahead = &ticks[due.saturating_sub(RECENT_TICKS)..due];
        let past = &ticks[due..ticks.len().min(due + LAST_RUNS)];
        let ticks = [ahead, past].concat();
        Self {
            id: info.id.clone(),
            job: info.job.to_owned(),
            schedule: info.schedule.to_string(),
            next_due: info.next_due,
            updated_at: now,
            ticks,
            last_runs: Vec::new(),
        }
    }

    /// Whether `self` says what `other` says (the write time aside).
    fn same_as(&self, other: &Self) -> bool {
        self.job == other.job
            && self.schedule == other.schedule
            && self.next_due == other.next_due
            && self.ticks == other.ticks
    }
}

impl Ledger {
    /// Writes the record of a schedule this replica runs, unless the store already says the
    /// same (or another replica wins the race to say it).
    pub(crate) async fn record_schedule(&self, info: &ScheduleInfo) -> Result<()> {
        let key = schedule_key(&info.id);
        for _ in 0..SWAP_TRIES {
            let now = (self.clock)();
            let current = self.store.load(&key).await?;
            let old: Option<ScheduleRecord> = current
                .as_ref()
                .and_then(|stored| serde_json::from_slice(&stored.value).ok());
            let record = ScheduleRecord::of(info, old.as_ref(), now);
            if old.is_some_and(|old| old.same_as(&record)) {
                return Ok(());
            }
            let value = serde_json::to_vec(&record).expect("a schedule record encodes");
            let until_due = record
                .next_due
                .and_then(|due| due.duration_since(now).ok())
                .unwrap_or(Duration::ZERO);
            let expected = current.map(|stored| stored.version);
            if self
                .store
                .swap(&key, expected, &value, JOB_RETENTION + until_due)
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
        let now_ms = ms::to_ms((self.clock)());
        for record in &mut records {
            // Stored: the next tick not produced yet; shown: the next one due.
            if let Some(ahead) = record.ticks.iter().filter(|t| **t > now_ms).min() {
                record.next_due = Some(UNIX_EPOCH + Duration::from_millis(*ahead));
            }
            let mut runs = Vec::new();
            let due = record
                .ticks
                .iter()
                .filter(|t| **t <= now_ms)
                .take(LAST_RUNS);
            for tick in due {
                let at = UNIX_EPOCH + Duration::from_millis(*tick);
                let id = tick_id(&record.id, at);
                match self.status(&id).await {
                    Ok(Some(status)) => runs.push(status),
                    Ok(None) => {}
                    Err(err) if err.is_retryable() => return Err(err),
                    Err(err) => {
                        tracing::warn!(job = id, error = %err, "skipping an unreadable job record")
                    }
                }
            }
            record.last_runs = runs;
        }
        Ok(records)
    }
}
