//! The SQL job store: the `JobStore` contract on the real PostgreSQL and on an SQLite file,
//! and job status, cancel and unique jobs shared by separate `Jobs` (as separate processes
//! would be) through one SQLite file, on the embedded engine.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{postgres, wait_until};
use sluice_core::PublishOutcome;
use sluice_embedded::EmbeddedBackend;
use sluice_runtime::jobs::{JobState, Unique};
use sluice_runtime::{CancellationToken, Context, Job, JobOptions, Jobs};
use sluice_sql::SqlStore;

#[tokio::test]
async fn the_postgres_job_store_keeps_the_job_store_contract() {
    sluice_testing::check_job_store(SqlStore::new(postgres().await).into_job_store()).await;
}

#[tokio::test]
async fn the_sqlite_job_store_keeps_the_job_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sluice_sql::sqlite::open(dir.path().join("jobs.db"))
        .await
        .unwrap();
    sluice_testing::check_job_store(SqlStore::new(pool).into_job_store()).await;
}

#[tokio::test]
async fn expired_job_records_are_purged() {
    let store = SqlStore::new(postgres().await);
    let key = format!("purge/{}", common::unique("k"));
    let shared = store.clone().into_job_store();
    shared
        .swap(&key, None, b"{}", Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(store.purge_expired().await.unwrap() >= 1);
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Invoice {
    customer: String,
}

impl Job for Invoice {
    const NAME: &'static str = "invoice";
    fn options() -> JobOptions {
        JobOptions::default().unique(Unique::UntilCompleted)
    }
    fn unique_key(&self) -> Option<String> {
        Some(self.customer.clone())
    }
}

#[tokio::test]
async fn separate_jobs_sharing_an_sqlite_job_store_agree_on_status_cancel_and_uniqueness() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path().join("engine"))
        .await
        .unwrap();
    let pool = sluice_sql::sqlite::open(dir.path().join("jobs.db"))
        .await
        .unwrap();
    let store = || SqlStore::new(pool.clone()).into_job_store();
    let web = Jobs::new(backend.clone()).await.unwrap().job_store(store());
    let admin = Jobs::new(backend.clone()).await.unwrap().job_store(store());
    let workers = Jobs::new(backend.clone()).await.unwrap().job_store(store());

    let acme = web
        .enqueue_in(
            Duration::from_secs(2),
            &Invoice {
                customer: "acme".into(),
            },
        )
        .await
        .unwrap();
    let again = admin
        .enqueue(&Invoice {
            customer: "acme".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        (again.id.clone(), again.outcome),
        (acme.id.clone(), PublishOutcome::Duplicate),
        "another process's enqueue sees the unique lock"
    );
    let globex = web
        .enqueue_in(
            Duration::from_secs(2),
            &Invoice {
                customer: "globex".into(),
            },
        )
        .await
        .unwrap();
    let status = admin.status(globex.id.as_str()).await.unwrap().unwrap();
    assert!(
        matches!(status.state, JobState::Scheduled { .. }),
        "{status:?}"
    );
    assert!(admin
        .cancel(globex.id.as_str())
        .await
        .unwrap()
        .was_pending());

    let ran = Arc::new(Mutex::new(Vec::new()));
    let r = ran.clone();
    let worker = workers
        .worker(move |job: Invoice, _ctx: Context| {
            r.lock().unwrap().push(job.customer);
            async { Ok(()) }
        })
        .await
        .unwrap()
        .build();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    wait_until(
        Duration::from_secs(20),
        "acme's invoice to succeed",
        || async {
            web.status(acme.id.as_str())
                .await
                .unwrap()
                .is_some_and(|s| matches!(s.state, JobState::Succeeded { .. }))
        },
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "globex's message to be skipped",
        || async { backend_idle(&backend).await },
    )
    .await;
    shutdown.cancel();
    running.await.unwrap();
    assert_eq!(
        *ran.lock().unwrap(),
        vec!["acme".to_owned()],
        "the cancelled job never ran"
    );
    let next = admin
        .enqueue(&Invoice {
            customer: "acme".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        next.outcome,
        PublishOutcome::Published,
        "released on success"
    );
}

async fn backend_idle(backend: &EmbeddedBackend) -> bool {
    use sluice_core::{Backend, SubscriptionName};
    let stats = backend
        .stats(&SubscriptionName::new("invoice").unwrap())
        .await
        .unwrap();
    stats.backlog() == Some(0)
}
