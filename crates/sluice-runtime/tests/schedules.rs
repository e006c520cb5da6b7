//! Recurring jobs: one job per tick with three replicas (clocks apart, one killed mid-tick),
//! the upsert by schedule id, and the missed-tick policies. Every clock is injected: the
//! schedules' clock is a number the test moves, set hours in the past so the jobs produced
//! for their tick are due at once.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_core::dedup::Claims;
use sluice_core::jobs::{JobStore, MemoryJobStore};
use sluice_core::{Backend, Delivery, Subscriber, SubscriptionName};
use sluice_memory::MemoryBackend;
use sluice_runtime::jobs::{JobState, LEAD, TICK_CLAIMS, TICK_PENDING};
use sluice_runtime::schedule::{tick_id, Missed, Schedule};
use sluice_runtime::{Context, Job, Jobs, Upsert};

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Report {
    kind: String,
}

impl Job for Report {
    const NAME: &'static str = "nightly-report";
}

const MINUTE: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(10);

/// A clock the test sets, in milliseconds since the epoch.
#[derive(Clone)]
struct Manual(Arc<AtomicU64>);

impl Manual {
    /// Two hours ago, on a whole minute.
    fn new() -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let base = (now - 2 * 3600) / 60 * 60;
        Self(Arc::new(AtomicU64::new(base * 1000)))
    }

    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.load(Ordering::SeqCst))
    }

    fn set(&self, at: SystemTime) {
        let ms = at.duration_since(UNIX_EPOCH).unwrap().as_millis();
        self.0.store(u64::try_from(ms).unwrap(), Ordering::SeqCst);
    }

    /// This clock read `skew` late (a replica whose clock is behind).
    fn behind(&self, skew: Duration) -> impl Fn() -> SystemTime + Send + Sync + 'static {
        let clock = self.clone();
        move || clock.now() - skew
    }
}

/// A replica: its own `Jobs` over the shared backend and tick store, reading `clock`.
async fn replica(
    backend: &MemoryBackend,
    store: &Arc<Claims>,
    clock: impl Fn() -> SystemTime + Send + Sync + 'static,
) -> Jobs<MemoryBackend> {
    Jobs::new(backend.clone())
        .await
        .unwrap()
        .tick_store(store.clone())
        .clock(clock)
}

/// Every job on the subscription, by id, acked (waits for `expected`, then a little more for
/// any extra copy).
async fn produced(backend: &MemoryBackend, expected: usize) -> Vec<String> {
    let subscriber = backend
        .subscribe(&SubscriptionName::new(Report::NAME).unwrap())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut ids = Vec::new();
    while ids.len() < expected && tokio::time::Instant::now() < deadline {
        for d in subscriber
            .receive(10, Duration::from_millis(200))
            .await
            .unwrap()
        {
            ids.push(d.message().id().to_string());
            d.ack().await.unwrap();
        }
    }
    for d in subscriber
        .receive(10, Duration::from_millis(300))
        .await
        .unwrap()
    {
        ids.push(d.message().id().to_string());
    }
    ids.sort();
    ids
}

#[tokio::test]
async fn three_replicas_produce_one_job_per_tick_with_one_killed_mid_tick() {
    let backend = MemoryBackend::new();
    let store = Arc::new(Claims::default());
    let clock = Manual::new();
    let base = clock.now();
    let mut replicas = Vec::new();
    for skew in [0, 0, 3] {
        let jobs = Jobs::new(backend.clone())
            .await
            .unwrap()
            .tick_store(store.clone())
            .clock(clock.behind(Duration::from_secs(skew)));
        let upsert = jobs
            .schedule(
                "report",
                Schedule::every(MINUTE).unwrap(),
                &Report {
                    kind: "daily".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(upsert, Upsert::Created);
        // Every start-up registers it again: nothing changes.
        let again = jobs
            .schedule(
                "report",
                Schedule::every(MINUTE).unwrap(),
                &Report {
                    kind: "daily".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(again, Upsert::Unchanged);
        replicas.push(jobs);
    }
    // The registration time is itself a tick (a tick at "now" is still to come).
    let ticks: Vec<SystemTime> = (0..=4).map(|k| base + MINUTE * k).collect();

    // Replica 0 claims a tick and is killed before publishing it: its claim lapses
    // (here 300 ms from now) and another replica produces the tick.
    let claimed_at = Instant::now() - TICK_PENDING + Duration::from_millis(300);
    store.claim_at(
        TICK_CLAIMS,
        &tick_id("report", ticks[0]),
        TICK_PENDING,
        claimed_at,
    );
    drop(replicas.remove(0));

    for tick in &ticks {
        // Due for both survivors (one reads its clock 3 s late).
        clock.set(*tick - LEAD + Duration::from_secs(5));
        let deadline = Instant::now() + DEADLINE;
        loop {
            for jobs in &replicas {
                jobs.produce_due().await.unwrap();
            }
            let past = replicas
                .iter()
                .all(|jobs| jobs.schedules()[0].next_due > Some(*tick));
            if past {
                break;
            }
            assert!(Instant::now() < deadline, "tick {tick:?} never produced");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let expected: Vec<String> = ticks.iter().map(|t| tick_id("report", *t)).collect();
    assert_eq!(
        produced(&backend, ticks.len()).await,
        expected,
        "one job per tick"
    );
}

#[tokio::test]
async fn missed_ticks_are_skipped_or_the_latest_caught_up() {
    let backend = MemoryBackend::new();
    let store = Arc::new(Claims::default());
    let clock = Manual::new();
    let base = clock.now();
    let job = Report {
        kind: "hourly".into(),
    };
    // Every replica was down from base until base + 5 min 10 s: ticks 1 to 5 were missed.
    clock.set(base + Duration::from_secs(5 * 60 + 10));
    let skipping = replica(&backend, &store, clock.behind(Duration::ZERO)).await;
    skipping
        .schedule("skip", Schedule::every(MINUTE).unwrap(), &job)
        .await
        .unwrap();
    assert_eq!(
        skipping.produce_due().await.unwrap(),
        0,
        "skip: nothing missed is produced"
    );
    assert_eq!(skipping.schedules()[0].next_due, Some(base + MINUTE * 6));

    let catching_up = replica(&backend, &store, clock.behind(Duration::ZERO)).await;
    let policy = Schedule::every(MINUTE)
        .unwrap()
        .missed(Missed::CatchUp { at_most: 2 });
    catching_up
        .schedule("catch", policy.clone(), &job)
        .await
        .unwrap();
    assert_eq!(catching_up.produce_due().await.unwrap(), 2);
    // A second replica catching up finds them produced.
    let other = replica(&backend, &store, clock.behind(Duration::ZERO)).await;
    other.schedule("catch", policy, &job).await.unwrap();
    other.produce_due().await.unwrap();
    let expected = vec![
        tick_id("catch", base + MINUTE * 4),
        tick_id("catch", base + MINUTE * 5),
    ];
    assert_eq!(
        produced(&backend, 2).await,
        expected,
        "the two latest, once"
    );
}

#[tokio::test]
async fn a_changed_definition_replaces_the_schedule_and_unschedule_removes_it() {
    let jobs = Jobs::new(MemoryBackend::new()).await.unwrap();
    let job = Report {
        kind: "daily".into(),
    };
    let nightly = Schedule::cron("0 3 * * *")
        .unwrap()
        .timezone("Europe/Paris")
        .unwrap();
    assert_eq!(
        jobs.schedule("n", nightly.clone(), &job).await.unwrap(),
        Upsert::Created
    );
    assert_eq!(
        jobs.schedule("n", nightly, &job).await.unwrap(),
        Upsert::Unchanged
    );
    let earlier = Schedule::cron("0 2 * * *")
        .unwrap()
        .timezone("Europe/Paris")
        .unwrap();
    assert_eq!(
        jobs.schedule("n", earlier.clone(), &job).await.unwrap(),
        Upsert::Replaced
    );
    let listed = jobs.schedules();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].schedule, earlier);
    assert!(listed[0].next_due.is_some_and(|t| t > SystemTime::now()));
    assert!(jobs.unschedule("n").await);
    assert!(!jobs.unschedule("n").await);
    assert!(jobs.schedules().is_empty());
}

/// The job store describes every replica's schedules to those who run none (`sluice jobs
/// schedules`, the dashboard): next due tick, last runs (of that schedule only), and no
/// record once unscheduled.
#[tokio::test]
async fn the_job_store_lists_the_schedules_with_their_next_due_tick_and_last_runs() {
    let backend = MemoryBackend::new();
    let claims = Arc::new(Claims::default());
    let store: Arc<dyn JobStore> = Arc::new(MemoryJobStore::new());
    let clock = Manual::new();
    let base = clock.now();
    let base_ms = base.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let job = Report {
        kind: "daily".into(),
    };
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let jobs = replica(&backend, &claims, {
            let clock = clock.clone();
            move || clock.now()
        })
        .await
        .job_store(store.clone());
        jobs.schedule("report", Schedule::every(MINUTE).unwrap(), &job)
            .await
            .unwrap();
        replicas.push(jobs);
    }
    // A schedule whose ticks share the first one's id prefix.
    replicas[0]
        .schedule("report-2", Schedule::every(MINUTE * 60).unwrap(), &job)
        .await
        .unwrap();
    // The registry as an onlooker reads it (with the replicas' clock, for the next due tick).
    let records = replicas[0].records();
    let listed = records.schedules(10).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["report", "report-2"]);
    assert_eq!(listed[0].job, Report::NAME);
    assert_eq!(
        listed[0].schedule,
        Schedule::every(MINUTE).unwrap().to_string()
    );
    assert_eq!(
        listed[0].next_due,
        Some(base),
        "the registration time is a tick"
    );
    assert!(listed[0].last_runs.is_empty());

    // Both replicas pass; the tick is produced once and the next one is due.
    clock.set(base - LEAD + Duration::from_secs(1));
    for jobs in &replicas {
        jobs.produce_due().await.unwrap();
    }
    let listed = records.schedules(10).await.unwrap();
    assert_eq!(
        listed[0].next_due,
        Some(base),
        "produced ahead, the tick is still the next one due"
    );
    assert_eq!(listed[0].ticks, [base_ms]);
    assert!(listed[0].last_runs.is_empty(), "not due, not run");
    assert!(listed[1].next_due.is_some_and(|due| due >= base));

    // A worker runs the tick: its run is report's, not report-2's.
    let worker = replicas[0]
        .worker(|_: Report, _: Context| async { Ok(()) })
        .await
        .unwrap()
        .build();
    let running = common::Running::start(worker);
    let tick = tick_id("report", base);
    // Past the tick: its run is shown, and the next tick is due.
    clock.set(base + Duration::from_secs(1));
    let deadline = Instant::now() + DEADLINE;
    let runs = loop {
        let listed = records.schedules(10).await.unwrap();
        let done = listed[0]
            .last_runs
            .first()
            .is_some_and(|run| matches!(run.state, JobState::Succeeded { .. }));
        if done {
            break listed;
        }
        assert!(
            Instant::now() < deadline,
            "the tick's run never recorded: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    running.stop().await;
    assert_eq!(runs[0].next_due, Some(base + MINUTE));
    let report_runs: Vec<&str> = runs[0].last_runs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(report_runs, [tick.as_str()]);
    assert!(
        runs[1]
            .last_runs
            .iter()
            .all(|r| r.id.starts_with("schedule-report-2-")),
        "report-2's runs are its own: {:?}",
        runs[1].last_runs
    );

    assert!(replicas[0].unschedule("report-2").await);
    let ids: Vec<String> = records
        .schedules(10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["report"]);
}
