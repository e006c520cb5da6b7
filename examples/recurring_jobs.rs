//! Recurring jobs: three replicas of a service each register the same schedule and run the
//! schedule producer; every tick still becomes one job, run once.
//!
//! The replicas share one tick store (in memory here, since they share a process; replicas in
//! separate processes share `sluice-redis`'s or `sluice-sql`'s store). See `docs/jobs.md`.
//!
//! `cargo run -p sluice-examples --example recurring_jobs`

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice::dedup::{Claims, DedupStore};
use sluice::prelude::*;
use sluice::runtime::schedule::Schedule;

/// The recurring job: a report of the last second.
#[derive(serde::Serialize, serde::Deserialize)]
struct Report {
    kind: String,
}

impl Job for Report {
    const NAME: &'static str = "report";
}

/// How long the example runs.
const RUN: Duration = Duration::from_millis(4500);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let backend = sluice::connect("memory:").await?;
    let store: Arc<dyn DedupStore> = Arc::new(Claims::default());
    let shutdown = CancellationToken::new();

    // Three replicas: each registers the schedule at start-up and produces its ticks.
    let every_second = Schedule::cron("* * * * * *")?; // 6 fields: seconds first
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let jobs = Arc::new(Jobs::new(backend.clone()).await?.tick_store(store.clone()));
        let report = Report {
            kind: "throughput".into(),
        };
        jobs.schedule("per-second-report", every_second.clone(), &report)
            .await?;
        let (jobs, stop) = (jobs.clone(), shutdown.clone());
        replicas.push(tokio::spawn(async move { jobs.run_schedules(stop).await }));
    }

    // One worker runs the jobs and counts the runs of each tick.
    let runs: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let jobs = Jobs::new(backend.clone()).await?;
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
