//! `sluice jobs list|status|cancel|schedules` against the SQLite job store an application's
//! `Jobs` share, as an operator runs them while the application holds its jobs.

use std::time::Duration;

mod support;

use serde_json::Value;
use sluice::runtime::jobs::JobState;
use sluice::runtime::{Job, Jobs};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Reminder {
    user: u64,
}

impl Job for Reminder {
    const NAME: &'static str = "reminder";
}

fn jobs_cli(store: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["jobs", "--store", store];
    all.extend_from_slice(args);
    support::run_sluice("embedded:/nonexistent-unused", &all, None)
}

fn json(store: &str, args: &[&str]) -> Value {
    let (code, out, err) = jobs_cli(store, args);
    assert_eq!(code, 0, "sluice jobs {args:?} failed:\n{out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{out}"))
}

/// The application: `Jobs` on the embedded engine in `dir`, with an SQLite job store there;
/// and the store's URL for `sluice jobs --store`.
async fn application(dir: &std::path::Path) -> (Jobs<sluice::embedded::EmbeddedBackend>, String) {
    let db = dir.join("jobs.db");
    let backend = sluice::embedded::EmbeddedBackend::open(dir.join("engine"))
        .await
        .unwrap();
    let pool = sluice::sql::sqlite::open(&db).await.unwrap();
    let jobs = Jobs::new(backend)
        .await
        .unwrap()
        .job_store(sluice::sql::SqlStore::new(pool).into_job_store());
    (jobs, format!("sqlite:{}", db.display()))
}

#[tokio::test]
async fn an_operator_lists_reads_and_cancels_jobs_from_the_shared_store() {
    let dir = tempfile::tempdir().unwrap();
    let (jobs, store_url) = application(dir.path()).await;
    let hour = Duration::from_secs(3600);
    let first = jobs
        .enqueue_in(hour, &Reminder { user: 1 })
        .await
        .unwrap()
        .id;
    let second = jobs
        .enqueue_in(hour, &Reminder { user: 2 })
        .await
        .unwrap()
        .id;

    let listed = json(&store_url, &["list", "--json"]);
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![second.as_str(), first.as_str()], "newest first");
    assert_eq!(listed[0]["state"], "scheduled");
    assert_eq!(listed[0]["job"], "reminder");

    let (code, out, err) = jobs_cli(&store_url, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ID"), "a table: {out}");
    assert!(out.contains("scheduled") && out.contains("due in"), "{out}");

    let (code, out, err) = jobs_cli(&store_url, &["cancel", first.as_str()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cancelled; it will not run"), "{out}");
    let status = json(&store_url, &["status", first.as_str(), "--json"]);
    assert_eq!(status["state"], "cancelled", "{status}");
    let seen = jobs.status(first.as_str()).await.unwrap().unwrap();
    assert!(
        matches!(seen.state, JobState::Cancelled { .. }),
        "the application sees it"
    );

    let (code, out, _) = jobs_cli(&store_url, &["cancel", first.as_str()]);
    assert_eq!(
        code, 1,
        "cancelling a job that is not pending exits 1: {out}"
    );
    assert!(out.contains("not pending (cancelled)"), "{out}");
    let only = json(&store_url, &["list", "--state", "scheduled", "--json"]);
    assert_eq!(only.as_array().unwrap().len(), 1);
    assert_eq!(only[0]["id"], second.as_str());

    let (code, _, err) = jobs_cli(&store_url, &["status", "no-such-job"]);
    assert_ne!(code, 0);
    assert!(err.contains("knows no job `no-such-job`"), "{err}");
    let (code, _, err) = support::run_sluice("embedded:/unused", &["jobs", "list"], None);
    assert_ne!(code, 0);
    assert!(
        err.contains("--store"),
        "a missing store is explained: {err}"
    );
}

#[tokio::test]
async fn an_operator_lists_the_schedules_with_their_next_due_tick_and_last_run() {
    let dir = tempfile::tempdir().unwrap();
    let (jobs, store_url) = application(dir.path()).await;
    let nightly = sluice::runtime::schedule::Schedule::cron("0 3 * * *")
        .unwrap()
        .timezone("Europe/Paris")
        .unwrap();
    jobs.schedule("nightly", nightly, &Reminder { user: 0 })
        .await
        .unwrap();

    let listed = json(&store_url, &["schedules", "--json"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], "nightly");
    assert_eq!(listed[0]["job"], "reminder");
    let due = listed[0]["next_due"].as_u64().expect("a next due time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        due > now && due <= now + 25 * 3600 * 1000,
        "within a day: {due}"
    );
    let (code, out, err) = jobs_cli(&store_url, &["schedules"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ID"), "a table: {out}");
    assert!(
        out.contains("nightly") && out.contains("Europe/Paris") && out.contains("none yet"),
        "{out}"
    );

    jobs.unschedule("nightly").await;
    let (code, out, _) = jobs_cli(&store_url, &["schedules"]);
    assert_eq!(code, 0);
    assert!(out.contains("has no schedules"), "{out}");
}

#[tokio::test]
async fn with_no_job_store_given_the_operator_reads_the_embedded_engine_s_own() {
    let dir = tempfile::tempdir().unwrap();
    let engine = dir.path().join("engine");
    let id = {
        let backend = sluice::embedded::EmbeddedBackend::open(&engine)
            .await
            .unwrap();
        let jobs = Jobs::new(backend.clone()).await.unwrap();
        let id = jobs
            .enqueue_in(Duration::from_secs(3600), &Reminder { user: 7 })
            .await
            .unwrap()
            .id;
        drop(jobs);
        // The engine is one process's at a time: the application stops first.
        backend.close().await.unwrap();
        id
    };
    let store = format!("embedded:{}", engine.display());
    let listed = json(&store, &["list", "--json"]);
    assert_eq!(listed[0]["id"], id.as_str(), "{listed}");
    let (code, out, err) = jobs_cli(&store, &["cancel", id.as_str()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("cancelled"), "{out}");
    let seen = json(&store, &["status", id.as_str(), "--json"]);
    assert_eq!(seen["state"], "cancelled", "{seen}");
}
