//! Recurring schedules: when the ticks of a recurring job fall, as a pure function of the
//! schedule's definition and a time (every clock is injected, so replicas agree and tests
//! need no waiting).
//!
//! A tick is identified by its schedule id and its time ([`tick_id`]): every replica that
//! computes the ticks of one definition gets the same times, so the same ids, and the job
//! topic's dedup window turns their publishes of one tick into one job (`docs/jobs.md`,
//! "Recurring jobs").
//!
//! - Cron patterns are parsed by `croner` (5 fields, or 6 with seconds first; `@hourly`,
//!   `@daily`, `@weekly`, `@monthly`, `@yearly`), evaluated in a time zone of the IANA
//!   database (`chrono-tz`; UTC by default).
//! - Daylight-saving changes (croner's rule, tested below): a fixed local time that does not
//!   exist on a spring-forward day runs at the first valid time after the gap; one that
//!   occurs twice on a fall-back day runs once, at its first occurrence. A pattern with a
//!   wildcard or a step in its time fields (`*/15 * * * *`) runs at every matching instant.
//! - `every(period)` ticks at the whole multiples of `period` since the Unix epoch, whatever
//!   the time zone and whenever a replica starts.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};

/// The most ticks one call lists (a catch-up policy or a listing never asks for more).
const MAX_TICKS: usize = 10_000;

/// What a scheduler does with the ticks that passed while no replica ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Missed {
    /// Produce none of them: go on with the next tick (the default).
    #[default]
    Skip,
    /// Produce the most recent ones, at most this many, at once.
    CatchUp {
        /// The most missed ticks produced.
        at_most: u32,
    },
}

/// A schedule that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The cron pattern does not parse.
    #[error("invalid cron pattern `{pattern}`: {reason}")]
    Cron {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The time zone is not in the IANA time-zone database.
    #[error("unknown time zone `{0}` (use an IANA name such as `Europe/Paris` or `UTC`)")]
    TimeZone(String),
    /// The period of `every` is shorter than a millisecond.
    #[error("the period of a schedule must be at least 1 ms, not {0:?}")]
    Period(Duration),
}

#[derive(Clone)]
enum Kind {
    Cron {
        pattern: String,
        cron: Box<croner::Cron>,
    },
    Every(Duration),
}

/// When a recurring job runs: a cron pattern in a time zone, or a fixed period.
///
/// ```
/// use std::time::Duration;
/// use sluice_runtime::schedule::{Missed, Schedule};
///
/// let nightly = Schedule::cron("0 3 * * *")?.timezone("Europe/Paris")?;
/// let often = Schedule::every(Duration::from_secs(30))?.missed(Missed::CatchUp { at_most: 1 });
/// assert_eq!(nightly.to_string(), "cron `0 3 * * *` in Europe/Paris, missed ticks skipped");
/// # Ok::<(), sluice_runtime::schedule::ScheduleError>(())
/// ```
#[derive(Clone)]
pub struct Schedule {
    kind: Kind,
    zone: Tz,
    missed: Missed,
}

impl Schedule {
    /// A cron schedule (5 fields, or 6 with seconds first, or an `@daily`-style nickname),
    /// in UTC until [`timezone`](Self::timezone) says otherwise.
    ///
    /// # Errors
    /// [`ScheduleError::Cron`] naming the pattern and what is wrong.
    pub fn cron(pattern: &str) -> Result<Self, ScheduleError> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|err| ScheduleError::Cron {
                pattern: pattern.to_owned(),
                reason: err.to_string(),
            })?;
        Ok(Self {
            kind: Kind::Cron {
                pattern: pattern.trim().to_owned(),
                cron: Box::new(cron),
            },
            zone: Tz::UTC,
            missed: Missed::Skip,
        })
    }

    /// A tick at every whole multiple of `period` since the Unix epoch.
    ///
    /// # Errors
    /// [`ScheduleError::Period`] for a period under a millisecond.
    pub fn every(period: Duration) -> Result<Self, ScheduleError> {
        if period < Duration::from_millis(1) {
            return Err(ScheduleError::Period(period));
        }
        Ok(Self {
            kind: Kind::Every(period),
            zone: Tz::UTC,
            missed: Missed::Skip,
        })
    }

    /// The time zone a cron pattern is read in (an IANA name; `every` ignores it).
    ///
    /// # Errors
    /// [`ScheduleError::TimeZone`] for a name the database does not have.
    pub fn timezone(mut self, name: &str) -> Result<Self, ScheduleError> {
        self.zone = Tz::from_str(name).map_err(|_| ScheduleError::TimeZone(name.to_owned()))?;
        Ok(self)
    }

    /// What to do with ticks missed while no scheduler ran ([`Missed::Skip`] by default).
    #[must_use]
    pub fn missed(mut self, policy: Missed) -> Self {
        self.missed = policy;
        self
    }

    /// The missed-tick policy.
    pub fn missed_policy(&self) -> Missed {
        self.missed
    }

    /// The first tick strictly after `after`; `None` when the pattern never matches again.
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        match &self.kind {
            Kind::Every(period) => {
                let period = period.as_millis();
                let since = after.duration_since(UNIX_EPOCH).ok()?.as_millis();
                let next = (since / period + 1).checked_mul(period)?;
                Some(UNIX_EPOCH + Duration::from_millis(u64::try_from(next).ok()?))
            }
            Kind::Cron { cron, .. } => {
                // Whole seconds (cron's resolution): every replica gets the same tick times
                // whatever fraction of a second its clock reads.
                let next = cron.find_next_occurrence(&self.whole_second(after)?, false);
                Some(SystemTime::from(next.ok()?.with_timezone(&Utc)))
            }
        }
    }

    /// The latest tick at or before `at`.
    fn at_or_before(&self, at: SystemTime) -> Option<SystemTime> {
        match &self.kind {
            Kind::Every(period) => {
                let period = period.as_millis();
                let since = at.duration_since(UNIX_EPOCH).ok()?.as_millis();
                let tick = u64::try_from(since / period * period).ok()?;
                Some(UNIX_EPOCH + Duration::from_millis(tick))
            }
            Kind::Cron { cron, .. } => {
                let tick = cron.find_previous_occurrence(&self.whole_second(at)?, true);
                Some(SystemTime::from(tick.ok()?.with_timezone(&Utc)))
            }
        }
    }

    /// `at` truncated to its second, in the schedule's time zone.
    fn whole_second(&self, at: SystemTime) -> Option<DateTime<Tz>> {
        let secs = i64::try_from(at.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()?;
        Some(DateTime::<Utc>::from_timestamp(secs, 0)?.with_timezone(&self.zone))
    }

    /// The ticks in `(after, until]`, in order, at most `max` (and at most 10 000).
    pub fn ticks_between(
        &self,
        after: SystemTime,
        until: SystemTime,
        max: usize,
    ) -> Vec<SystemTime> {
        let mut ticks = Vec::new();
        let mut at = after;
        while ticks.len() < max.min(MAX_TICKS) {
            match self.next_after(at) {
                Some(tick) if tick <= until => {
                    ticks.push(tick);
                    at = tick;
                }
                _ => break,
            }
        }
        ticks
    }

    /// The missed ticks a scheduler starting at `now` produces, by the policy: none with
    /// [`Missed::Skip`]; with [`Missed::CatchUp`] the most recent `at_most` ticks in
    /// `(last, now]`, where `last` is the latest tick known to have been produced (`None`:
    /// nothing is known, and only the latest tick at or before `now` is caught up). Found
    /// backwards from `now`, so a long outage of a frequent schedule costs `at_most` steps.
    pub fn missed_ticks(&self, last: Option<SystemTime>, now: SystemTime) -> Vec<SystemTime> {
        let Missed::CatchUp { at_most } = self.missed else {
            return Vec::new();
        };
        let limit = match last {
            Some(_) => usize::try_from(at_most)
                .unwrap_or(usize::MAX)
                .min(MAX_TICKS),
            None => usize::from(at_most > 0),
        };
        let mut ticks = Vec::with_capacity(limit);
        let mut at = now;
        while ticks.len() < limit {
            let Some(tick) = self.at_or_before(at) else {
                break;
            };
            if last.is_some_and(|last| tick <= last) {
                break;
            }
            ticks.push(tick);
            let Some(before) = tick.checked_sub(Duration::from_millis(1)) else {
                break;
            };
            at = before;
        }
        ticks.reverse();
        ticks
    }
}

impl fmt::Display for Schedule {
    /// The definition in words: two schedules with the same text are the same schedule (a
    /// changed text is a changed definition).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Cron { pattern, .. } => write!(f, "cron `{pattern}` in {}", self.zone.name())?,
            Kind::Every(period) => write!(f, "every {} ms", period.as_millis())?,
        }
        match self.missed {
            Missed::Skip => write!(f, ", missed ticks skipped"),
            Missed::CatchUp { at_most } => {
                write!(f, ", at most {at_most} missed tick(s) caught up")
            }
        }
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({self})")
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Schedule {}

/// The id of the job a schedule produces for a tick: the same on every replica, so the dedup
/// window keeps one of their publishes (`schedule-<id>-<tick in ms since the epoch>`).
pub fn tick_id(schedule: &str, tick: SystemTime) -> String {
    let ms = tick
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("schedule-{schedule}-{ms}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A time from RFC 3339.
    fn at(text: &str) -> SystemTime {
        SystemTime::from(DateTime::parse_from_rfc3339(text).expect("an RFC 3339 time"))
    }

    fn utc(t: SystemTime) -> String {
        DateTime::<Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    #[test]
    fn a_cron_pattern_ticks_in_its_time_zone() {
        let nightly = Schedule::cron("0 3 * * *")
            .unwrap()
            .timezone("Europe/Paris")
            .unwrap();
        // 03:00 in Paris in winter is 02:00 UTC; in summer 01:00 UTC.
        let next = nightly.next_after(at("2026-12-06T12:00:00Z")).unwrap();
        assert_eq!(utc(next), "2026-12-07T02:00:00Z");
        let next = nightly.next_after(at("2027-07-01T12:00:00Z")).unwrap();
        assert_eq!(utc(next), "2027-07-02T01:00:00Z");
        // Strictly after: a tick is not its own next.
        assert_eq!(
            utc(nightly.next_after(next).unwrap()),
            "2027-07-03T01:00:00Z"
        );
    }

    #[test]
    fn seconds_are_optional_and_nicknames_work() {
        let every_ten = Schedule::cron("*/10 * * * * *").unwrap();
        let ticks =
            every_ten.ticks_between(at("2026-12-06T00:00:01Z"), at("2026-12-06T00:00:30Z"), 10);
        let ticks: Vec<String> = ticks.into_iter().map(utc).collect();
        assert_eq!(
            ticks,
            [
                "2026-12-06T00:00:10Z",
                "2026-12-06T00:00:20Z",
                "2026-12-06T00:00:30Z"
            ]
        );
        let daily = Schedule::cron("@daily").unwrap();
        assert_eq!(
            utc(daily.next_after(at("2026-12-06T10:00:00Z")).unwrap()),
            "2026-12-07T00:00:00Z"
        );
    }

    #[test]
    fn bad_patterns_and_zones_are_named() {
        let err = Schedule::cron("61 * * * *").unwrap_err();
        assert!(err.to_string().contains("`61 * * * *`"), "{err}");
        let err = Schedule::cron("0 3 * * *")
            .unwrap()
            .timezone("Europe/Atlantis")
            .unwrap_err();
        assert!(err.to_string().contains("Europe/Atlantis"), "{err}");
        assert!(Schedule::every(Duration::ZERO).is_err());
    }

    #[test]
    fn a_local_time_skipped_by_spring_forward_runs_right_after_the_gap() {
        // Paris, 2027-03-28: 02:00 local jumps to 03:00 (01:00 UTC). 02:30 does not exist.
        let schedule = Schedule::cron("30 2 * * *")
            .unwrap()
            .timezone("Europe/Paris")
            .unwrap();
        let ticks =
            schedule.ticks_between(at("2027-03-27T00:00:00Z"), at("2027-03-30T00:00:00Z"), 10);
        let ticks: Vec<String> = ticks.into_iter().map(utc).collect();
        assert_eq!(
            ticks,
            [
                "2027-03-27T01:30:00Z", // 02:30 CET
                "2027-03-28T01:00:00Z", // 03:00 CEST, the first valid time after the gap
                "2027-03-29T00:30:00Z", // 02:30 CEST
            ]
        );
    }

    #[test]
    fn a_local_time_repeated_by_fall_back_runs_once_at_its_first_occurrence() {
        // Paris, 2026-10-25: 03:00 local goes back to 02:00 (01:00 UTC). 02:30 happens twice.
        let schedule = Schedule::cron("30 2 * * *")
            .unwrap()
            .timezone("Europe/Paris")
            .unwrap();
        let ticks =
            schedule.ticks_between(at("2026-10-24T00:00:00Z"), at("2026-10-27T00:00:00Z"), 10);
        let ticks: Vec<String> = ticks.into_iter().map(utc).collect();
        assert_eq!(
            ticks,
            [
                "2026-10-24T00:30:00Z", // 02:30 CEST
                "2026-10-25T00:30:00Z", // the first 02:30 (CEST); the second (CET) is skipped
                "2026-10-26T01:30:00Z", // 02:30 CET
            ]
        );
    }

    #[test]
    fn every_ticks_at_multiples_of_its_period_whenever_a_replica_starts() {
        let schedule = Schedule::every(Duration::from_secs(60)).unwrap();
        for start in [
            "2026-12-06T10:00:00Z",
            "2026-12-06T10:00:59Z",
            "2026-12-06T10:00:00.5Z",
        ] {
            assert_eq!(
                utc(schedule.next_after(at(start)).unwrap()),
                "2026-12-06T10:01:00Z",
                "from {start}"
            );
        }
    }

    #[test]
    fn missed_ticks_follow_the_policy() {
        let last = at("2026-12-06T10:00:00Z");
        let now = at("2026-12-06T10:05:30Z");
        let minutely = Schedule::every(Duration::from_secs(60)).unwrap();
        assert!(
            minutely.missed_ticks(Some(last), now).is_empty(),
            "skip by default"
        );
        let caught = minutely
            .clone()
            .missed(Missed::CatchUp { at_most: 3 })
            .missed_ticks(Some(last), now);
        let caught: Vec<String> = caught.into_iter().map(utc).collect();
        assert_eq!(
            caught,
            [
                "2026-12-06T10:03:00Z",
                "2026-12-06T10:04:00Z",
                "2026-12-06T10:05:00Z"
            ],
            "the most recent three"
        );
        let nothing_known = minutely
            .missed(Missed::CatchUp { at_most: 3 })
            .missed_ticks(None, now);
        assert_eq!(
            nothing_known.len(),
            1,
            "only the latest when nothing is known"
        );
        let cron = Schedule::cron("0 * * * *")
            .unwrap()
            .missed(Missed::CatchUp { at_most: 2 });
        let caught: Vec<String> = cron
            .missed_ticks(Some(at("2026-12-06T06:30:00Z")), at("2026-12-06T10:05:00Z"))
            .into_iter()
            .map(utc)
            .collect();
        assert_eq!(caught, ["2026-12-06T09:00:00Z", "2026-12-06T10:00:00Z"]);
    }

    #[test]
    fn a_tick_has_one_id_on_every_replica_and_definitions_compare_by_text() {
        let tick = at("2026-12-07T02:00:00Z");
        assert_eq!(
            tick_id("nightly-report", tick),
            "schedule-nightly-report-1796608800000"
        );
        let a = Schedule::cron("0 3 * * *")
            .unwrap()
            .timezone("Europe/Paris")
            .unwrap();
        let b = Schedule::cron(" 0 3 * * * ")
            .unwrap()
            .timezone("Europe/Paris")
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, Schedule::cron("0 3 * * *").unwrap());
    }
}
