//! Background jobs: enqueue, delays, and the job type's defaults applied to its worker.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{wait_until, Events, Running};
use sluice_core::{Backend, SubscriptionName};
use sluice_memory::MemoryBackend;
use sluice_runtime::{Backoff, Context, HandlerError, Jitter, Job, JobOptions, Jobs, OutcomeKind};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SendWelcomeEmail {
    user_id: u64,
}

impl Job for SendWelcomeEmail {
    const NAME: &'static str = "send-welcome-email";
    fn options() -> JobOptions {
        JobOptions::default()
            .max_attempts(3)
            .concurrency(2)
            .timeout(Duration::from_secs(5))
            .backoff(
                Backoff::exponential(Duration::from_secs(1), Duration::from_secs(10))
                    .jitter(Jitter::None),
            )
    }
}

#[tokio::test(start_paused = true)]
async fn enqueued_jobs_run_now_later_and_at_a_time() {
    let backend = MemoryBackend::new();
    let jobs = Jobs::new(backend.clone()).await.unwrap();
    let start = tokio::time::Instant::now();
    jobs.enqueue(&SendWelcomeEmail { user_id: 1 })
        .await
        .unwrap();
    jobs.enqueue_in(Duration::from_secs(30), &SendWelcomeEmail { user_id: 2 })
        .await
        .unwrap();
    jobs.enqueue_at(
        SystemTime::now() + Duration::from_secs(60),
        &SendWelcomeEmail { user_id: 3 },
    )
    .await
    .unwrap();

    let ran = Arc::new(Mutex::new(Vec::new()));
    let r = ran.clone();
    let worker = jobs
        .worker(move |job: SendWelcomeEmail, ctx: Context| {
            r.lock().unwrap().push((
                job.user_id,
                start.elapsed().as_secs(),
                ctx.message().message_type().map(str::to_owned),
            ));
            async { Ok(()) }
        })
        .await
        .unwrap()
        .build();
    let stats = worker.stats();
    let running = Running::start(worker);
    wait_until("three jobs", Duration::from_secs(70), || {
        stats.snapshot().acked == 3
    })
    .await;
    running.stop().await;
    let ran = ran.lock().unwrap().clone();
    assert_eq!(ran.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(ran[0].1 < 2, "immediate job ran at {}s", ran[0].1);
    assert!(
        (30..32).contains(&ran[1].1),
        "delayed job ran at {}s",
        ran[1].1
    );
    assert!(
        (60..62).contains(&ran[2].1),
        "scheduled job ran at {}s",
        ran[2].1
    );
    assert!(
        ran.iter()
            .all(|r| r.2.as_deref() == Some("send-welcome-email")),
        "the message type is the job name"
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_types_defaults_shape_its_subscription_and_worker() {
    let backend = MemoryBackend::new();
    let jobs = Jobs::new(backend.clone()).await.unwrap();
    jobs.enqueue(&SendWelcomeEmail { user_id: 9 })
        .await
        .unwrap();
    let info = backend
        .describe_subscription(&SubscriptionName::new("send-welcome-email").unwrap())
        .await
        .unwrap();
    assert_eq!(info.config.max_attempts, 3);
    let events = Events::default();
    let worker = jobs
        .worker(|_job: SendWelcomeEmail, _c: Context| async {
            Err(HandlerError::transient("smtp down"))
        })
        .await
        .unwrap()
        .observer(events.observer())
        .build();
    let running = Running::start(worker);
    wait_until("dead-lettered", Duration::from_secs(30), || {
        events.count(|k| matches!(k, OutcomeKind::DeadLettered { .. })) == 1
    })
    .await;
    running.stop().await;
    let retries: Vec<Duration> = events
        .kinds()
        .into_iter()
        .filter_map(|k| match k {
            OutcomeKind::Retried { after, .. } => Some(after),
            _ => None,
        })
        .collect();
    assert_eq!(
        retries,
        vec![Duration::from_secs(1), Duration::from_secs(2)],
        "the job's backoff and max attempts apply"
    );
}

#[tokio::test]
async fn an_invalid_job_name_is_a_clear_error() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Bad;
    impl Job for Bad {
        const NAME: &'static str = "Bad.Name";
    }
    let jobs = Jobs::new(MemoryBackend::new()).await.unwrap();
    let err = jobs.enqueue(&Bad).await.unwrap_err();
    assert!(err.to_string().contains("Bad.Name"), "{err}");
}
