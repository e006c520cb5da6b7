//! `sluice jobs list|status|cancel|schedules --store URL`: background jobs' status from the job store
//! the application's `Jobs` share: the embedded engine's own (`embedded:PATH`, the default of
//! `Jobs` on the embedded backend), `sluice serve`'s (`sluice://HOST:PORT`, the default over
//! `sluice://`), or the one given with `Jobs::job_store`: PostgreSQL (`postgres://…`), an
//! SQLite file (`sqlite:PATH`) or Redis (`redis://…`, with the application's key prefix).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use sluice::runtime::jobs::{JobRecords, JobState, JobStatus, ScheduleRecord};
use sluice::JobStore;

/// Arguments of `sluice jobs`.
#[derive(Debug, clap::Args)]
pub(crate) struct JobsArgs {
    #[command(subcommand)]
    command: JobsCommand,
    /// The job store: `embedded:PATH` or `sluice://HOST:PORT` (the backend's own, the default of
    /// `Jobs` there), `postgres://USER@HOST:PORT/DB`, `sqlite:PATH` or `redis://HOST:PORT`.
    #[arg(long, env = "SLUICE_JOB_STORE", global = true)]
    store: Option<String>,
    /// The key prefix of a Redis job store (the application's `RedisStore::with_prefix`).
    #[arg(long, default_value = "sluice", global = true)]
    redis_prefix: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum JobsCommand {
    /// The most recently changed jobs, newest first.
    List {
        /// Only jobs of this type (the job's name).
        #[arg(long = "job")]
        job: Option<String>,
        /// Only jobs in this state (`scheduled`, `waiting`, `running`, `retrying`,
        /// `succeeded`, `dead_lettered`, `cancelled`).
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One job's status.
    Status {
        /// The job's id.
        id: String,
    },
    /// Cancels jobs that have not started: they never run. Exits 1 if one was not pending.
    Cancel {
        /// The jobs' ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// The recurring schedules the replicas running them describe in the store, with their
    /// next due tick and their last runs.
    Schedules {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// Runs `sluice jobs`.
pub(crate) async fn run(args: JobsArgs) -> anyhow::Result<()> {
    let Some(url) = args.store.clone() else {
        anyhow::bail!(
            "sluice jobs reads the job store your application's Jobs share: give it with \
             --store (or SLUICE_JOB_STORE): embedded:PATH, sluice://HOST:PORT, postgres://…, \
             sqlite:PATH or redis://…"
        );
    };
    let records = JobRecords::new(open(&url, &args.redis_prefix).await?);
    match args.command {
        JobsCommand::Schedules { limit } => {
            let schedules = records
                .schedules(limit)
                .await
                .with_context(|| format!("listing the schedules of {url}"))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&schedules)?);
            } else if schedules.is_empty() {
                println!(
                    "{url} has no schedules: none registered by a Jobs using this store \
                     (Jobs::job_store), or every one unscheduled"
                );
            } else {
                let rows: Vec<Vec<String>> = schedules.iter().map(schedule_row).collect();
                super::table::print(&["ID", "JOB", "SCHEDULE", "NEXT DUE", "LAST RUN"], &rows);
            }
            Ok(())
        }
        JobsCommand::List { job, state, limit } => {
            let jobs = match &state {
                Some(state) => {
                    anyhow::ensure!(
                        JobState::NAMES.contains(&state.as_str()),
                        "--state must be one of {}, not `{state}`",
                        JobState::NAMES.join(", ")
                    );
                    records.list_in_state(job.as_deref(), state, limit).await
                }
                None => records.list(job.as_deref(), limit).await,
            }
            .with_context(|| format!("listing the jobs of {url}"))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                let rows: Vec<Vec<String>> = jobs.iter().map(row).collect();
                super::table::print(
                    &["ID", "JOB", "STATE", "ATTEMPT", "CHANGED", "DETAIL"],
                    &rows,
                );
            }
            Ok(())
        }
        JobsCommand::Status { id } => {
            let status = records
                .status(&id)
                .await
                .with_context(|| format!("reading job {id} from {url}"))?
                .with_context(|| {
                    format!("{url} knows no job `{id}` (never enqueued with this store, or forgotten after 7 days)")
                })?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }
        JobsCommand::Cancel { ids } => {
            let mut not_pending = Vec::new();
            let mut outcomes = Vec::new();
            for id in &ids {
                let outcome = records
                    .cancel(id)
                    .await
                    .with_context(|| format!("cancelling job {id} in {url}"))?;
                let (word, state) = match outcome.status() {
                    Some(s) if outcome.was_pending() => ("cancelled", s.state.name()),
                    Some(s) => ("not pending", s.state.name()),
                    None => ("not found", "unknown"),
                };
                if !outcome.was_pending() {
                    not_pending.push(id.clone());
                }
                if args.json {
                    outcomes.push(serde_json::json!({
                        "id": id, "cancelled": outcome.was_pending(), "state": state,
                    }));
                } else if outcome.was_pending() {
                    println!("{id}: cancelled; it will not run");
                } else {
                    println!("{id}: {word} ({state}); nothing changed");
                }
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&outcomes)?);
            }
            if !not_pending.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// Opens the job store at `url` (`embedded:PATH`, `sluice://…`, `postgres://…`, `sqlite:PATH`,
/// `redis://…`), migrated.
pub(crate) async fn open(url: &str, redis_prefix: &str) -> anyhow::Result<Arc<dyn JobStore>> {
    if url.starts_with("embedded:") || url.starts_with("sluice://") {
        let backend = sluice::connect(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        sluice::Backend::job_store(&backend)
            .with_context(|| format!("{url} has no job store of its own"))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = sluice::sql::sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        sluice::sql::migrate(&pool)
            .await
            .with_context(|| format!("migrating {url}"))?;
        Ok(sluice::sql::SqlStore::new(pool).into_job_store())
    } else if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.trim_start_matches("//");
        let pool = sluice::sql::sqlite::open(path)
            .await
            .with_context(|| format!("opening {url}"))?;
        Ok(sluice::sql::SqlStore::new(pool).into_job_store())
    } else if url.starts_with("redis://") || url.starts_with("rediss://") {
        let store = sluice::redis::RedisStore::connect(url)
            .await
            .with_context(|| "connecting to Redis".to_owned())?
            .with_prefix(redis_prefix);
        Ok(Arc::new(store))
    } else {
        anyhow::bail!(
            "--store must be embedded:PATH, sluice://HOST:PORT, postgres://…, sqlite:PATH or \
             redis://…, not `{url}`"
        )
    }
}

fn ago(at: SystemTime) -> String {
    match SystemTime::now().duration_since(at) {
        Ok(d) => format!(
            "{} ago",
            humantime::format_duration(Duration::from_secs(d.as_secs()))
        ),
        Err(e) => format!(
            "in {}",
            humantime::format_duration(Duration::from_secs(e.duration().as_secs()))
        ),
    }
}

fn detail(state: &JobState) -> String {
    match state {
        JobState::Scheduled { due_at } => format!("due {}", ago(*due_at)),
        JobState::Running { since } => format!("since {}", ago(*since)),
        JobState::Retrying {
            next_attempt_at,
            last_error,
        } => format!("next attempt {}: {last_error}", ago(*next_attempt_at)),
        JobState::DeadLettered { reason, .. } => reason.clone(),
        _ => String::new(),
    }
}

fn row(job: &JobStatus) -> Vec<String> {
    vec![
        job.id.clone(),
        job.job.clone(),
        job.state.name().to_owned(),
        job.attempt.to_string(),
        ago(job.updated_at),
        detail(&job.state),
    ]
}

fn schedule_row(schedule: &ScheduleRecord) -> Vec<String> {
    let next = schedule.next_due.map_or_else(|| "never".to_owned(), ago);
    let last = schedule.last_runs.first().map_or_else(
        || "none yet".to_owned(),
        |run| format!("{} {} ({})", run.state.name(), ago(run.updated_at), run.id),
    );
    vec![
        schedule.id.clone(),
        schedule.job.clone(),
        schedule.schedule.clone(),
        next,
        last,
    ]
}

fn print_status(job: &JobStatus) {
    println!("id:        {}", job.id);
    println!("job:       {}", job.job);
    println!("state:     {}", job.state.name());
    let detail = detail(&job.state);
    if !detail.is_empty() {
        println!("           {detail}");
    }
    println!("attempt:   {}", job.attempt);
    println!("enqueued:  {}", ago(job.enqueued_at));
    println!("changed:   {}", ago(job.updated_at));
    if job.generation > 0 {
        println!("rescheduled: {} time(s)", job.generation);
    }
    if let Some(result) = &job.result {
        println!("result:    {result}");
    }
}
