//! Recurring and cancellable jobs: three replicas of a service each register the same
//! schedules (a per-second report and a nightly one at 03:00 Paris time) and run the
//! schedule producer; every tick still becomes one job, run once. A reminder is enqueued for
//! later and cancelled: it never runs, and its status says so.
//!
//! The replicas share one tick store and one job store (in memory here, since they share a
//! process; replicas in separate processes share `sluice-redis`'s or `sluice-sql`'s stores).
//! The job store holds job status and, written by the replicas, every schedule with its next
//! due tick and last runs: what `sluice jobs schedules` and the `sluice serve` dashboard show,
//! printed at the end. See `docs/jobs.md`.
//!
//! `cargo run -p sluice-examples --example recurring_jobs`

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice::dedup::{Claims, DedupStore};
use sluice::jobs::{JobStore, MemoryJobStore};
use sluice::prelude::*;
use sluice::runtime::schedule::Schedule;
use sluice::runtime::JobRecords;

/// The recurring job: a report of the last second.
#[derive(serde::Serialize, serde::Deserialize)]
struct Report {
    kind: String,
}

impl Job for Report {
    const NAME: &'static str = "report";
}

/// A one-off job for later, which the user may cancel.
#[derive(serde::Serialize, serde::Deserialize)]
struct Reminder {
    text: String,
}

impl Job for Reminder {
    const NAME: &'static str = "reminder";
}

/// How long the example runs.
const RUN: Duration = Duration::from_millis(4500);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let backend = sluice::connect("memory:").await?;
    let store: Arc<dyn DedupStore> = Arc::new(Claims::default());
    let job_store: Arc<dyn JobStore> = Arc::new(MemoryJobStore::new());
    let shutdown = CancellationToken::new();

    // Three replicas: each registers the schedule at start-up and produces its ticks.
    let every_second = Schedule::cron("* * * * * *")?; // 6 fields: seconds first
    let nightly = Schedule::cron("0 3 * * *")?.timezone("Europe/Paris")?;
    let mut replicas = Vec::new();
    for replica in 0..3 {
        let jobs = Jobs::new(backend.clone())
            .await?
            .tick_store(store.clone())
            .job_store(job_store.clone());
        let jobs = Arc::new(jobs);
        let report = Report {
            kind: "throughput".into(),
        };
        jobs.schedule("per-second-report", every_second.clone(), &report)
            .await?;
        let sales = Report {
            kind: "sales".into(),
        };
        jobs.schedule("nightly-report", nightly.clone(), &sales)
            .await?;
        if replica == 0 {
            for info in jobs.schedules() {
                let next = info.next_due.map(humantime::format_rfc3339_seconds);
                println!(
                    "schedule {}: next due {}",
                    info.id,
                    next.map_or("never".into(), |t| t.to_string())
                );
            }
        }
        let (jobs, stop) = (jobs.clone(), shutdown.clone());
        replicas.push(tokio::spawn(async move { jobs.run_schedules(stop).await }));
    }

    // One worker runs the jobs and counts the runs of each tick.
    let runs: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let jobs = Jobs::new(backend.clone())
        .await?
        .job_store(job_store.clone());

    // Two reminders for later; the user cancels one of them before it is due.
    let later = Duration::from_secs(2);
    let kept = jobs
        .enqueue_in(
            later,
            &Reminder {
                text: "stand up".into(),
            },
        )
        .await?;
    let dropped = jobs
        .enqueue_in(
            later,
            &Reminder {
                text: "call Bob".into(),
            },
        )
        .await?;
    let cancelled = jobs.cancel(dropped.id.as_str()).await?;
    println!(
        "cancel {}: still pending, so cancelled = {}",
        dropped.id,
        cancelled.was_pending()
    );
    let reminded: Arc<Mutex<Vec<String>>> = Arc::default();
    let r = reminded.clone();
    let reminders = jobs
        .worker(move |reminder: Reminder, _ctx: Context| {
            println!("reminder: {}", reminder.text);
            r.lock().expect("reminders").push(reminder.text);
            async { Ok(()) }
        })
        .await?
        .build()
        .spawn(shutdown.clone());
    let counted = runs.clone();
    let worker = jobs
        .worker(move |report: Report, ctx: Context| {
            let id = ctx.message().id().to_string();
            let late = SystemTime::now()
                .duration_since(tick_time(&id))
                .unwrap_or_default();
            println!(
                "{id}: {} report, {} ms after its tick",
                report.kind,
                late.as_millis()
            );
            *counted.lock().expect("runs").entry(id).or_default() += 1;
            async { Ok(()) }
        })
        .await?
        .build()
        .spawn(shutdown.clone());

    tokio::time::sleep(RUN).await;
    shutdown.cancel();
    for replica in replicas {
        replica.await?;
    }
    worker.await?;
    reminders.await?;

    for id in [&kept.id, &dropped.id] {
        if let Some(status) = jobs.status(id.as_str()).await? {
            println!("job {id}: {}", status.state.name());
        }
    }
    anyhow::ensure!(
        *reminded.lock().expect("reminders") == ["stand up"],
        "the cancelled reminder never runs"
    );
    // What an operator sees from outside the replicas (`sluice jobs schedules`).
    for schedule in JobRecords::new(job_store).schedules(10).await? {
        let runs: Vec<&str> = schedule.last_runs.iter().map(|r| r.state.name()).collect();
        println!(
            "schedule {} ({}): next due {}, last runs {runs:?}",
            schedule.id,
            schedule.schedule,
            schedule
                .next_due
                .map_or("never".into(), |t| humantime::format_rfc3339_seconds(t)
                    .to_string()),
        );
        if schedule.id == "per-second-report" {
            anyhow::ensure!(
                runs.contains(&"succeeded"),
                "the store shows the per-second report's runs"
            );
        }
    }
    let runs = runs.lock().expect("runs");
    let twice = runs.values().filter(|n| **n > 1).count();
    println!(
        "3 replicas, {} ticks run, {} run more than once",
        runs.len(),
        twice
    );
    anyhow::ensure!(runs.len() >= 3, "a tick every second for 4.5 s");
    anyhow::ensure!(twice == 0, "every tick runs once");
    Ok(())
}

/// The tick time in a tick job's id (`schedule-<id>-<ms since the epoch>`).
fn tick_time(id: &str) -> SystemTime {
    let ms = id
        .rsplit('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_millis(ms)
}
