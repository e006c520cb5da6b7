//! Job status, cancel, reschedule and replace, unique jobs (issue #19) on the reference
//! backend with the in-memory job store; `sluice-sql` and `sluice-redis` run the store
//! contract, and the conformance suite runs these paths on every backend.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::Running;
use sluice_core::PublishOutcome;
use sluice_memory::MemoryBackend;
use sluice_runtime::jobs::{Cancelled, JobState, JobStatus, Rescheduled, Unique};
use sluice_runtime::{Backoff, Context, HandlerError, Jitter, Job, JobOptions, Jobs};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Remind {
    user: u64,
    text: String,
}

impl Job for Remind {
    const NAME: &'static str = "remind";
    fn options() -> JobOptions {
        JobOptions::default().max_attempts(2).backoff(
            Backoff::exponential(Duration::from_secs(5), Duration::from_secs(5))
                .jitter(Jitter::None),
        )
    }
}

/// A clock that follows tokio's (paused) time, so status times agree with delays.
fn tokio_clock() -> impl Fn() -> SystemTime + Send + Sync + 'static {
    let base = SystemTime::now();
    let start = tokio::time::Instant::now();
    move || base + start.elapsed()
}

async fn jobs() -> Jobs<MemoryBackend> {
    Jobs::new(MemoryBackend::new())
        .await
        .unwrap()
        .clock(tokio_clock())
}

type Ran = Arc<Mutex<Vec<(Remind, u64)>>>;

/// Starts a worker recording each run (with its tokio second), failing when the text says
/// `fail`, leaving the text as its result.
async fn worker(jobs: &Jobs<MemoryBackend>) -> (Running, Ran) {
    let ran: Ran = Arc::default();
    let r = ran.clone();
    let start = tokio::time::Instant::now();
    let worker = jobs
        .worker(move |job: Remind, ctx: Context| {
            r.lock()
                .unwrap()
                .push((job.clone(), start.elapsed().as_secs()));
            async move {
                if job.text.contains("fail") {
                    return Err(HandlerError::transient("smtp down"));
                }
                ctx.set_result(serde_json::json!({ "sent": job.text }));
                Ok(())
            }
        })
        .await
        .unwrap()
        .build();
    (Running::start(worker), ran)
}

async fn status_until(
    jobs: &Jobs<MemoryBackend>,
    id: &str,
    what: &str,
    cond: impl Fn(&JobStatus) -> bool,
) -> JobStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = jobs.status(id).await.unwrap() {
            if cond(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} never became {what}: {status:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn remind(user: u64, text: &str) -> Remind {
    Remind {
        user,
        text: text.into(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_job_goes_from_scheduled_to_succeeded_with_its_result() {
    let jobs = jobs().await;
    let id = jobs
        .enqueue_in(Duration::from_secs(30), &remind(1, "hello"))
        .await
        .unwrap()
        .id;
    let status = jobs.status(id.as_str()).await.unwrap().unwrap();
    assert!(
        matches!(status.state, JobState::Scheduled { .. }),
        "{status:?}"
    );
    assert_eq!((status.job.as_str(), status.attempt), ("remind", 0));
    assert_eq!(
        jobs.list(Some("remind"), 10).await.unwrap()[0].id,
        id.as_str()
    );

    let (running, ran) = worker(&jobs).await;
    let done = status_until(&jobs, id.as_str(), "succeeded", |s| {
        matches!(s.state, JobState::Succeeded { .. })
    })
    .await;
    running.stop().await;
    assert_eq!(done.attempt, 1);
    assert_eq!(done.result, Some(serde_json::json!({ "sent": "hello" })));
    assert_eq!(ran.lock().unwrap().len(), 1);
    assert!((30..32).contains(&ran.lock().unwrap()[0].1));
    let json = serde_json::to_value(&done).unwrap();
    assert_eq!(json["state"], "succeeded", "{json}");
}

#[tokio::test(start_paused = true)]
async fn a_failing_job_is_retrying_with_its_error_then_dead_lettered() {
    let jobs = jobs().await;
    let id = jobs.enqueue(&remind(2, "fail")).await.unwrap().id;
    let (running, _ran) = worker(&jobs).await;
    let retrying = status_until(&jobs, id.as_str(), "retrying", |s| {
        matches!(s.state, JobState::Retrying { .. })
    })
    .await;
    let JobState::Retrying {
        next_attempt_at,
        last_error,
    } = &retrying.state
    else {
        unreachable!()
    };
    assert!(last_error.contains("smtp down"), "{last_error}");
    assert!(*next_attempt_at > retrying.updated_at);
    let dead = status_until(&jobs, id.as_str(), "dead-lettered", |s| {
        matches!(s.state, JobState::DeadLettered { .. })
    })
    .await;
    running.stop().await;
    assert_eq!(dead.attempt, 2);
    assert!(jobs.cancel(id.as_str()).await.unwrap() == Cancelled::NotPending(dead));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_job_never_runs_and_the_call_says_whether_it_was_pending() {
    let jobs = jobs().await;
    let keep = jobs
        .enqueue_in(Duration::from_secs(20), &remind(3, "keep"))
        .await
        .unwrap()
        .id;
    let drop = jobs
        .enqueue_in(Duration::from_secs(20), &remind(4, "drop"))
        .await
        .unwrap()
        .id;
    let cancelled = jobs.cancel(drop.as_str()).await.unwrap();
    assert!(cancelled.was_pending(), "{cancelled:?}");
    assert!(
        !jobs.cancel(drop.as_str()).await.unwrap().was_pending(),
        "cancelling twice: not pending the second time"
    );
    assert_eq!(
        jobs.cancel("no-such-job").await.unwrap(),
        Cancelled::NotFound
    );

    let (running, ran) = worker(&jobs).await;
    status_until(&jobs, keep.as_str(), "succeeded", |s| {
        matches!(s.state, JobState::Succeeded { .. })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    running.stop().await;
    let texts: Vec<String> = ran
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.0.text.clone())
        .collect();
    assert_eq!(texts, vec!["keep"], "the cancelled job never ran");
    let status = jobs.status(drop.as_str()).await.unwrap().unwrap();
    assert!(
        matches!(status.state, JobState::Cancelled { .. }),
        "{status:?}"
    );
    assert!(
        !jobs.cancel(keep.as_str()).await.unwrap().was_pending(),
        "a finished job cannot be cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancel_racing_the_start_of_each_job_has_exactly_one_winner() {
    let jobs = Arc::new(jobs().await);
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(jobs.enqueue(&remind(i, "race")).await.unwrap().id);
    }
    let (running, ran) = worker(&jobs).await;
    let mut cancels = tokio::task::JoinSet::new();
    for id in ids.clone() {
        let jobs = jobs.clone();
        cancels.spawn(async move { (id.clone(), jobs.cancel(id.as_str()).await.unwrap()) });
    }
    let mut cancelled = Vec::new();
    while let Some(done) = cancels.join_next().await {
        let (id, outcome) = done.unwrap();
        if outcome.was_pending() {
            cancelled.push(id);
        }
    }
    for id in &ids {
        status_until(&jobs, id.as_str(), "final", |s| s.state.is_final()).await;
    }
    running.stop().await;
    let ran: Vec<u64> = ran.lock().unwrap().iter().map(|r| r.0.user).collect();
    assert_eq!(
        ran.len() + cancelled.len(),
        40,
        "every job either ran or was cancelled, never both: ran {ran:?}, cancelled {cancelled:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rescheduled_job_runs_once_at_its_new_time_and_a_replaced_one_with_its_new_body() {
    let jobs = jobs().await;
    let moved = jobs
        .enqueue_in(Duration::from_secs(60), &remind(5, "moved"))
        .await
        .unwrap()
        .id;
    let replaced = jobs
        .enqueue_in(Duration::from_secs(60), &remind(6, "old text"))
        .await
        .unwrap()
        .id;
    let at = tokio_clock()() + Duration::from_secs(10);
    let outcome = jobs.reschedule(moved.as_str(), at).await.unwrap();
    let Rescheduled::Rescheduled(status) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(status.generation, 1);
    let outcome = jobs
        .replace(replaced.as_str(), &remind(6, "new text"), None)
        .await
        .unwrap();
    assert!(
        matches!(outcome, Rescheduled::Rescheduled(_)),
        "{outcome:?}"
    );

    let (running, ran) = worker(&jobs).await;
    tokio::time::sleep(Duration::from_secs(90)).await;
    running.stop().await;
    let ran = ran.lock().unwrap().clone();
    let at_of = |text: &str| -> Vec<u64> {
        ran.iter()
            .filter(|r| r.0.text == text)
            .map(|r| r.1)
            .collect()
    };
    assert_eq!(ran.len(), 2, "each job ran once: {ran:?}");
    assert!(
        matches!(at_of("moved")[..], [t] if (10..12).contains(&t)),
        "{ran:?}"
    );
    assert!(matches!(at_of("new text")[..], [t] if t < 2), "{ran:?}");
    let status = jobs.status(moved.as_str()).await.unwrap().unwrap();
    assert!(
        matches!(status.state, JobState::Succeeded { .. }),
        "{status:?}"
    );
    assert!(matches!(
        jobs.reschedule(moved.as_str(), at).await.unwrap(),
        Rescheduled::NotPending(_)
    ));
    assert_eq!(
        jobs.reschedule("no-such-job", at).await.unwrap(),
        Rescheduled::NotFound
    );
}

macro_rules! unique_job {
    ($name:ident, $job:literal, $mode:expr) => {
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        struct $name {
            account: String,
            fail: bool,
        }
        impl Job for $name {
            const NAME: &'static str = $job;
            fn options() -> JobOptions {
                JobOptions::default().max_attempts(1).unique($mode)
            }
            fn unique_key(&self) -> Option<String> {
                Some(self.account.clone())
            }
        }
    };
}

unique_job!(SyncFor, "sync-for", Unique::For(Duration::from_millis(400)));
unique_job!(SyncStarted, "sync-started", Unique::UntilStarted);
unique_job!(SyncCompleted, "sync-completed", Unique::UntilCompleted);

#[tokio::test]
async fn a_unique_job_for_a_period_returns_the_first_jobs_id_within_it() {
    let jobs = Jobs::new(MemoryBackend::new()).await.unwrap();
    let job = |account: &str| SyncFor {
        account: account.into(),
        fail: false,
    };
    let first = jobs.enqueue(&job("acme")).await.unwrap();
    assert_eq!(first.outcome, PublishOutcome::Published);
    let second = jobs.enqueue(&job("acme")).await.unwrap();
    assert_eq!(
        (second.id.as_str(), second.outcome),
        (first.id.as_str(), PublishOutcome::Duplicate)
    );
    let other = jobs.enqueue(&job("globex")).await.unwrap();
    assert_eq!(other.outcome, PublishOutcome::Published, "another key");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = jobs.enqueue(&job("acme")).await.unwrap();
    assert_eq!(later.outcome, PublishOutcome::Published, "after the period");
    assert_ne!(later.id, first.id);
}

#[tokio::test(start_paused = true)]
async fn a_job_unique_until_started_is_released_when_it_starts_or_is_cancelled() {
    let jobs = jobs().await;
    let job = SyncStarted {
        account: "acme".into(),
        fail: false,
    };
    let first = jobs
        .enqueue_in(Duration::from_secs(10), &job)
        .await
        .unwrap();
    let dup = jobs.enqueue(&job).await.unwrap();
    assert_eq!(
        (dup.id, dup.outcome),
        (first.id.clone(), PublishOutcome::Duplicate)
    );
    assert!(jobs.cancel(first.id.as_str()).await.unwrap().was_pending());
    let second = jobs
        .enqueue_in(Duration::from_secs(10), &job)
        .await
        .unwrap();
    assert_eq!(
        second.outcome,
        PublishOutcome::Published,
        "cancel released it"
    );

    let started = Arc::new(tokio::sync::Notify::new());
    let go = Arc::new(tokio::sync::Notify::new());
    let (s, g) = (started.clone(), go.clone());
    let worker = jobs
        .worker(move |_job: SyncStarted, _ctx: Context| {
            let (s, g) = (s.clone(), g.clone());
            async move {
                s.notify_one();
                g.notified().await;
                Ok(())
            }
        })
        .await
        .unwrap()
        .build();
    let running = Running::start(worker);
    started.notified().await;
    let third = jobs.enqueue(&job).await.unwrap();
    assert_eq!(
        third.outcome,
        PublishOutcome::Published,
        "released at the start"
    );
    go.notify_one();
    go.notify_one();
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_job_unique_until_completed_is_held_while_it_runs_and_released_when_it_finishes() {
    let jobs = jobs().await;
    let job = |fail| SyncCompleted {
        account: "acme".into(),
        fail,
    };
    let go = Arc::new(tokio::sync::Semaphore::new(0));
    let g = go.clone();
    let worker = jobs
        .worker(move |job: SyncCompleted, _ctx: Context| {
            let g = g.clone();
            async move {
                g.acquire().await.unwrap().forget();
                if job.fail {
                    return Err(HandlerError::permanent("bad account"));
                }
                Ok(())
            }
        })
        .await
        .unwrap()
        .build();
    let running = Running::start(worker);
    let first = jobs.enqueue(&job(true)).await.unwrap();
    status_until(&jobs, first.id.as_str(), "running", |s| {
        matches!(s.state, JobState::Running { .. })
    })
    .await;
    let dup = jobs.enqueue(&job(false)).await.unwrap();
    assert_eq!(
        (dup.id.clone(), dup.outcome),
        (first.id.clone(), PublishOutcome::Duplicate),
        "held while it runs"
    );
    go.add_permits(1);
    status_until(&jobs, first.id.as_str(), "dead-lettered", |s| {
        matches!(s.state, JobState::DeadLettered { .. })
    })
    .await;
    let second = jobs.enqueue(&job(false)).await.unwrap();
    assert_eq!(
        second.outcome,
        PublishOutcome::Published,
        "released when dead-lettered"
    );
    let dup = jobs.enqueue(&job(false)).await.unwrap();
    assert_eq!(dup.id, second.id);
    go.add_permits(1);
    status_until(&jobs, second.id.as_str(), "succeeded", |s| {
        matches!(s.state, JobState::Succeeded { .. })
    })
    .await;
    let third = jobs.enqueue(&job(false)).await.unwrap();
    assert_eq!(
        third.outcome,
        PublishOutcome::Published,
        "released on success"
    );
    go.add_permits(1);
    running.stop().await;
}

/// A listing filtered by state filters what it shows: a scheduled job past its time is
/// waiting (no worker ran it), in the listing and in the filter alike.
#[tokio::test(start_paused = true)]
async fn a_state_filter_sees_a_scheduled_job_past_due_as_waiting() {
    let jobs = jobs().await;
    let id = jobs
        .enqueue_in(Duration::from_secs(5), &remind(1, "later"))
        .await
        .unwrap()
        .id;
    let records = jobs.records();
    let ids = |list: Vec<JobStatus>| list.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        ids(records.list_in_state(None, "scheduled", 10).await.unwrap()),
        [id.to_string()]
    );
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(records
        .list_in_state(None, "scheduled", 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(records.list_in_state(None, "waiting", 10).await.unwrap()),
        [id.to_string()]
    );
    assert_eq!(
        records.list(None, 10).await.unwrap()[0].state,
        JobState::Waiting
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_worker_tracks_each_jobs_status_on_its_own() {
    let jobs = jobs().await;
    let ok = jobs.enqueue(&remind(10, "hello")).await.unwrap().id;
    let failing = jobs.enqueue(&remind(11, "fail")).await.unwrap().id;
    let cancelled = jobs.enqueue(&remind(12, "never")).await.unwrap().id;
    jobs.cancel(cancelled.as_str()).await.unwrap();
    let seen: Arc<Mutex<Vec<Vec<u64>>>> = Arc::default();
    let s = seen.clone();
    let worker = jobs
        .batch_worker(
            move |batch: Vec<(Remind, Context)>, _ctx: sluice_runtime::BatchContext| {
                s.lock()
                    .unwrap()
                    .push(batch.iter().map(|(job, _)| job.user).collect());
                let outcome = sluice_runtime::BatchOutcome::each(batch.len(), |i| {
                    let (job, ctx) = &batch[i];
                    if job.text.contains("fail") {
                        return Err(HandlerError::permanent("no such user"));
                    }
                    ctx.set_result(serde_json::json!({ "sent": job.text }));
                    Ok(())
                });
                async { Ok(outcome) }
            },
        )
        .await
        .unwrap()
        .batch(10, Duration::from_millis(50))
        .build();
    let running = Running::start_batch(worker);
    let done = status_until(&jobs, ok.as_str(), "succeeded", |s| {
        matches!(s.state, JobState::Succeeded { .. })
    })
    .await;
    let dead = status_until(&jobs, failing.as_str(), "dead-lettered", |s| {
        matches!(s.state, JobState::DeadLettered { .. })
    })
    .await;
    running.stop().await;
    assert_eq!(done.result, Some(serde_json::json!({ "sent": "hello" })));
    assert_eq!(dead.attempt, 1, "{dead:?}");
    assert_eq!(
        seen.lock().unwrap().concat(),
        vec![10, 11],
        "the cancelled job never reached the handler"
    );
}
