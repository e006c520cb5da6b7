//! Background jobs on every backend (issue #19), through the runtime's `Jobs` over the
//! backend under test: one job per recurring tick across replicas with one killed mid-tick,
//! cancel before due, replace, and each unique mode. Job status lives in each `Jobs`' own
//! in-memory job store (one process); `sluice-sql` and `sluice-redis` test the shared stores.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sluice_core::dedup::Claims;
use sluice_core::{Backend, PublishOutcome, TopicName};
use sluice_runtime::jobs::{JobState, Rescheduled, Unique, TICK_CLAIMS, TICK_PENDING};
use sluice_runtime::schedule::{tick_id, Schedule};
use sluice_runtime::{
    CancellationToken, Context, Job, JobOptions, Jobs, Outcome as Handled, OutcomeKind,
};

use crate::fixture::{Fixture, Outcome};
use crate::harness::Harness;
use crate::wait::{eventually, Must};

/// A job carrying a text, one type per scenario (a job type is a topic of its name).
macro_rules! job_type {
    ($name:ident, $job:literal $(, $options:expr)?) => {
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        struct $name {
            text: String,
        }
        impl Job for $name {
            const NAME: &'static str = $job;
            $(fn options() -> JobOptions {
                $options
            })?
            fn unique_key(&self) -> Option<String> {
                Some(self.text.clone())
            }
        }
        impl $name {
            fn new(text: &str) -> Self {
                Self { text: text.into() }
            }
        }
    };
}

job_type!(Tick, "cf-jobs-tick");
job_type!(Note, "cf-jobs-cancel");
job_type!(Draft, "cf-jobs-replace");
job_type!(
    ForPeriod,
    "cf-jobs-unique-for",
    JobOptions::default().unique(Unique::For(Duration::from_secs(30)))
);
job_type!(
    UntilStarted,
    "cf-jobs-unique-started",
    JobOptions::default().unique(Unique::UntilStarted)
);
job_type!(
    UntilCompleted,
    "cf-jobs-unique-completed",
    JobOptions::default().unique(Unique::UntilCompleted)
);

/// What a job worker did: each run (message id, body) and each message skipped unrun.
struct Running<J> {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    runs: Arc<Mutex<Vec<(String, J)>>>,
    skipped: Arc<Mutex<Vec<String>>>,
}

impl<J: Clone + std::fmt::Debug> Running<J> {
    async fn start<B: Backend>(jobs: &Jobs<B>) -> Self
    where
        J: Job + Sync,
    {
        let runs: Arc<Mutex<Vec<(String, J)>>> = Arc::default();
        let skipped: Arc<Mutex<Vec<String>>> = Arc::default();
        let (r, s) = (runs.clone(), skipped.clone());
        let worker = jobs
            .worker(move |job: J, ctx: Context| {
                r.lock().unwrap().push((ctx.id().to_owned(), job));
                async { Ok(()) }
            })
            .await
            .must("building a job worker")
            .observer(move |outcome: &Handled| {
                if matches!(outcome.kind, OutcomeKind::Skipped { .. }) {
                    s.lock().unwrap().push(outcome.id.clone());
                }
            })
            .build();
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                worker.run(stop).await;
            }
        });
        Self {
            stop,
            task,
            runs,
            skipped,
        }
    }

    fn runs(&self) -> Vec<(String, J)> {
        self.runs.lock().unwrap().clone()
    }

    fn skipped(&self) -> Vec<String> {
        self.skipped.lock().unwrap().clone()
    }

    /// Waits (the delay plus the deadline) until some job ran and `skipped_id` arrived and
    /// was skipped, watches a little longer for anything else, then stops; every run.
    async fn until_run_and_skipped<H: Harness>(
        self,
        skipped_id: &str,
        delay: Duration,
        f: &Fixture<'_, H>,
        what: &str,
    ) -> Vec<(String, J)> {
        eventually(
            delay + f.timing.deadline,
            f.timing.poll_interval(),
            what,
            || {
                let (runs, skipped) = (self.runs(), self.skipped());
                let done = !runs.is_empty() && skipped.iter().any(|s| s == skipped_id);
                async move {
                    if done {
                        Ok(())
                    } else {
                        Err(format!("ran {runs:?}, skipped {skipped:?}"))
                    }
                }
            },
        )
        .await;
        tokio::time::sleep(f.timing.settle).await;
        self.stop().await
    }

    async fn stop(self) -> Vec<(String, J)> {
        self.stop.cancel();
        let runs = self.runs.clone();
        self.task.await.must("the job worker's task");
        let ran = runs.lock().unwrap().clone();
        ran
    }
}

async fn jobs_on<H: Harness>(h: &H) -> Jobs<H::Backend> {
    let backend = h.connect().await.must("connecting");
    Jobs::new(backend).await.must("creating Jobs")
}

/// Deletes a job type's topic (and with it its subscription).
async fn remove<J: Job, B: Backend>(jobs: &Jobs<B>) {
    let topic = TopicName::new(J::NAME).must("a job topic name");
    let _ = jobs.backend().delete_topic(&topic).await;
}

async fn state_of<B: Backend>(jobs: &Jobs<B>, id: &str) -> Option<JobState> {
    jobs.status(id)
        .await
        .must("reading a job's status")
        .map(|s| s.state)
}

/// Three replicas register one schedule (every second) and run its producer; one of them is
/// killed between claiming a tick and publishing it (its claim lapses), another is killed
/// outright. Every tick checked runs exactly once: not zero times, not twice.
pub async fn jobs_one_job_per_tick_across_replicas_one_killed_mid_tick<H: Harness>(
    h: &H,
) -> Outcome {
    let f = Fixture::new(
        h,
        "jobs_one_job_per_tick_across_replicas_one_killed_mid_tick",
    )
    .await;
    if let Some(skip) = f.gate() {
        return skip;
    }
    let store = Arc::new(Claims::default());
    let period = Duration::from_secs(1);
    let schedule = Schedule::every(period).must("an every-second schedule");

    // The worker first: its subscription exists before any tick is produced. Then the three
    // replicas' connections, before the checked ticks are chosen: a tick already past when
    // the replicas register is a missed tick (skipped by the default policy), and joining a
    // broker can take seconds.
    let jobs = jobs_on(h).await;
    let worker = Running::<Tick>::start(&jobs).await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Arc::new(jobs_on(h).await.tick_store(store.clone())));
    }
    let first = schedule
        .next_after(SystemTime::now() + Duration::from_secs(2))
        .expect("an every-second schedule ticks");
    let ticks: Vec<SystemTime> = (0..3).map(|k| first + period * k).collect();
    let ids: Vec<String> = ticks.iter().map(|t| tick_id("ticks", *t)).collect();
    // The replica killed mid-tick: it claimed the first tick and died before publishing;
    // its claim lapses 300 ms from now, and another replica must produce the tick.
    let claimed_at = std::time::Instant::now() - TICK_PENDING + Duration::from_millis(300);
    store.claim_at(TICK_CLAIMS, &ids[0], TICK_PENDING, claimed_at);

    let replicas: Vec<_> = {
        let mut running = Vec::new();
        for jobs in replicas {
            jobs.schedule("ticks", schedule.clone(), &Tick::new("tick"))
                .await
                .must("registering the schedule");
            let stop = CancellationToken::new();
            let task = tokio::spawn({
                let (jobs, stop) = (jobs.clone(), stop.clone());
                async move { jobs.run_schedules(stop).await }
            });
            running.push((stop, task));
        }
        running
    };
    // Another replica is killed outright.
    replicas[0].1.abort();

    let until_last = ticks[2]
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    // Three producers joining at once may make a broker rebalance its groups (Kafka's delay
    // movers): allow its recovery time on top.
    eventually(
        until_last + f.timing.deadline + f.timing.recovery,
        f.timing.poll_interval(),
        "every checked tick to run",
        || {
            let ran: Vec<String> = worker.runs().into_iter().map(|(id, _)| id).collect();
            let missing: Vec<String> = ids.iter().filter(|id| !ran.contains(id)).cloned().collect();
            async move {
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("not run yet: {missing:?}"))
                }
            }
        },
    )
    .await;
    // Watch for second copies.
    tokio::time::sleep(f.timing.settle.max(Duration::from_secs(1))).await;
    for (stop, task) in replicas {
        stop.cancel();
        let _ = task.await;
    }
    let ran = worker.stop().await;
    for id in &ids {
        let times = ran.iter().filter(|(r, _)| r == id).count();
        assert_eq!(times, 1, "tick {id} ran {times} times, not once");
    }
    remove::<Tick, _>(&jobs).await;
    f.finish().await
}

/// A job cancelled before it is due never runs (its message arrives and is skipped) and its
/// status says cancelled; the job beside it runs.
pub async fn jobs_cancelled_before_due_never_run<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "jobs_cancelled_before_due_never_run").await;
    if let Some(skip) = f.gate() {
        return skip;
    }
    let jobs = jobs_on(h).await;
    let delay = f.timing.delay.max(Duration::from_secs(1));
    let kept = jobs
        .enqueue_in(delay, &Note::new("kept"))
        .await
        .must("enqueueing a job")
        .id;
    let dropped = jobs
        .enqueue_in(delay, &Note::new("dropped"))
        .await
        .must("enqueueing a job")
        .id;
    let cancelled = jobs.cancel(dropped.as_str()).await.must("cancelling");
    assert!(
        cancelled.was_pending(),
        "a scheduled job is pending: {cancelled:?}"
    );

    let worker = Running::<Note>::start(&jobs).await;
    let what = "the kept job to run and the cancelled one to be skipped";
    let ran = worker
        .until_run_and_skipped(dropped.as_str(), delay, &f, what)
        .await;
    assert_eq!(
        ran,
        vec![(kept.to_string(), Note::new("kept"))],
        "only the job not cancelled ran"
    );
    let state = state_of(&jobs, dropped.as_str()).await;
    assert!(
        matches!(state, Some(JobState::Cancelled { .. })),
        "the cancelled job's status: {state:?}"
    );
    remove::<Note, _>(&jobs).await;
    f.finish().await
}

/// A job replaced before it is due runs once, with its new body, at its new time; the
/// message of its first body arrives and is skipped.
pub async fn jobs_replaced_run_once_with_the_new_body<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "jobs_replaced_run_once_with_the_new_body").await;
    if let Some(skip) = f.gate() {
        return skip;
    }
    let jobs = jobs_on(h).await;
    let delay = f.timing.delay.max(Duration::from_secs(1));
    let id = jobs
        .enqueue_in(delay * 2, &Draft::new("first"))
        .await
        .must("enqueueing a job")
        .id;
    let replaced = jobs
        .replace(
            id.as_str(),
            &Draft::new("second"),
            Some(SystemTime::now() + delay),
        )
        .await
        .must("replacing the job");
    assert!(
        matches!(replaced, Rescheduled::Rescheduled(_)),
        "a scheduled job can be replaced: {replaced:?}"
    );

    let worker = Running::<Draft>::start(&jobs).await;
    let what = "the new body to run and the first message to be skipped";
    let ran = worker
        .until_run_and_skipped(id.as_str(), delay * 2, &f, what)
        .await;
    let bodies: Vec<Draft> = ran.into_iter().map(|(_, job)| job).collect();
    assert_eq!(bodies, vec![Draft::new("second")], "one run, the new body");
    let state = state_of(&jobs, id.as_str()).await;
    assert!(
        matches!(state, Some(JobState::Succeeded { .. })),
        "the replaced job's status: {state:?}"
    );
    remove::<Draft, _>(&jobs).await;
    f.finish().await
}

/// Unique jobs: a second enqueue of a held key is a duplicate returning the first job's id;
/// `For` holds for its period, `UntilStarted` until the job starts, `UntilCompleted` until
/// it succeeds.
pub async fn jobs_unique_modes_hold_and_release<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "jobs_unique_modes_hold_and_release").await;
    if let Some(skip) = f.gate() {
        return skip;
    }
    let jobs = jobs_on(h).await;

    // For a period: the second enqueue is the first job.
    let first = jobs
        .enqueue(&ForPeriod::new("acme"))
        .await
        .must("enqueueing");
    let second = jobs
        .enqueue(&ForPeriod::new("acme"))
        .await
        .must("enqueueing");
    assert_eq!(first.outcome, PublishOutcome::Published);
    assert_eq!(
        (second.id.clone(), second.outcome),
        (first.id.clone(), PublishOutcome::Duplicate),
        "Unique::For: the second enqueue returns the first job"
    );
    let other = jobs
        .enqueue(&ForPeriod::new("globex"))
        .await
        .must("enqueueing");
    assert_eq!(other.outcome, PublishOutcome::Published, "another key");

    // Until started and until completed: held while the job waits, released by its run.
    let started = jobs
        .enqueue(&UntilStarted::new("acme"))
        .await
        .must("enqueueing");
    let completed = jobs
        .enqueue(&UntilCompleted::new("acme"))
        .await
        .must("enqueueing");
    let again = jobs
        .enqueue(&UntilStarted::new("acme"))
        .await
        .must("enqueueing");
    assert_eq!(
        again.id, started.id,
        "Unique::UntilStarted holds while waiting"
    );
    let again = jobs
        .enqueue(&UntilCompleted::new("acme"))
        .await
        .must("enqueueing");
    assert_eq!(
        again.id, completed.id,
        "Unique::UntilCompleted holds while waiting"
    );
    let w1 = Running::<UntilStarted>::start(&jobs).await;
    let w2 = Running::<UntilCompleted>::start(&jobs).await;
    for (id, what) in [(&started.id, "started"), (&completed.id, "completed")] {
        eventually(
            f.timing.deadline,
            f.timing.poll_interval(),
            "the unique jobs to succeed",
            || {
                let jobs = &jobs;
                async move {
                    match state_of(jobs, id.as_str()).await {
                        Some(JobState::Succeeded { .. }) => Ok(()),
                        other => Err(format!("{what}: {other:?}")),
                    }
                }
            },
        )
        .await;
    }
    let next = jobs
        .enqueue(&UntilStarted::new("acme"))
        .await
        .must("enqueueing");
    assert_eq!(
        next.outcome,
        PublishOutcome::Published,
        "released at the start"
    );
    let next = jobs
        .enqueue(&UntilCompleted::new("acme"))
        .await
        .must("enqueueing");
    assert_eq!(
        next.outcome,
        PublishOutcome::Published,
        "released on success"
    );
    w1.stop().await;
    w2.stop().await;
    remove::<ForPeriod, _>(&jobs).await;
    remove::<UntilStarted, _>(&jobs).await;
    remove::<UntilCompleted, _>(&jobs).await;
    f.finish().await
}
