//! The embedded backend's own job store (the engine's keyed store): it keeps the job store
//! contract, namespaces do not see each other, `Jobs` uses it by default so a cancel and a
//! status survive a restart, and every confirmed write survives SIGKILL at random moments
//! (a child process, as in `crash.rs`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{Backend, DynBackend, JobStore, Namespace, Naming};
use sluice_embedded::EmbeddedBackend;
use sluice_runtime::jobs::JobState;
use sluice_runtime::{Job, Jobs};

const ROUNDS: usize = 8;

fn store(backend: &EmbeddedBackend) -> Arc<dyn JobStore> {
    backend
        .job_store()
        .expect("the embedded backend has a job store")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Reminder {
    text: String,
}

impl Job for Reminder {
    const NAME: &'static str = "reminder";
}

#[tokio::test]
async fn the_engine_store_keeps_the_job_store_contract_in_every_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path()).await.unwrap();
    sluice_testing::check_job_store(store(&backend)).await;
    let team = backend.with_naming(Naming::new(Some(Namespace::new("team-a").unwrap())));
    sluice_testing::check_job_store(store(&team)).await;
    backend.close().await.unwrap();
}

#[tokio::test]
async fn namespaces_sharing_an_engine_do_not_see_each_other_s_entries() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path()).await.unwrap();
    let a = store(&backend.with_naming(Naming::new(Some(Namespace::new("a").unwrap()))));
    let ab = store(&backend.with_naming(Naming::new(Some(Namespace::new("ab").unwrap()))));
    let none = store(&backend);
    let ttl = Duration::from_secs(60);
    a.swap("job/1", None, b"{}", ttl).await.unwrap().unwrap();
    assert!(ab.load("job/1").await.unwrap().is_none());
    assert!(none.load("job/1").await.unwrap().is_none());
    assert!(
        ab.swap("job/1", None, b"{}", ttl).await.unwrap().is_some(),
        "the same key in another namespace is another entry"
    );
    let listed = a.scan("job/", 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["job/1"],
        "keys come back without the namespace"
    );
    assert!(none.scan("job/", 10).await.unwrap().is_empty());
    backend.close().await.unwrap();
}

#[tokio::test]
async fn by_default_jobs_keep_a_cancel_and_a_status_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, dropped) = {
        let backend = EmbeddedBackend::open(dir.path()).await.unwrap();
        let jobs = Jobs::new(backend.clone()).await.unwrap();
        let later = Duration::from_secs(3600);
        let kept = jobs
            .enqueue_in(later, &Reminder { text: "a".into() })
            .await
            .unwrap();
        let dropped = jobs
            .enqueue_in(later, &Reminder { text: "b".into() })
            .await
            .unwrap();
        assert!(jobs
            .cancel(dropped.id.as_str())
            .await
            .unwrap()
            .was_pending());
        drop(jobs);
        backend.close().await.unwrap();
        (kept.id, dropped.id)
    };
    let backend = EmbeddedBackend::open(dir.path()).await.unwrap();
    // As `sluice::connect("embedded:PATH")` hands it out: erased, the store is still there.
    let jobs = Jobs::new(DynBackend::new(backend.clone())).await.unwrap();
    let status = |id: String| {
        let jobs = &jobs;
        async move { jobs.status(&id).await.unwrap().expect("known").state }
    };
    assert!(matches!(
        status(dropped.to_string()).await,
        JobState::Cancelled { .. }
    ));
    assert!(matches!(
        status(kept.to_string()).await,
        JobState::Scheduled { .. }
    ));
    backend.close().await.unwrap();
}

/// The child: swaps keys one after another until killed, printing `S <key> <version>` after
/// each confirmed swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by confirmed_job_store_writes_survive_sigkill as its child process"]
async fn job_store_child() {
    let dir = std::env::var("SLUICE_KV_CHILD").expect("SLUICE_KV_CHILD");
    let backend = EmbeddedBackend::open(&dir).await.unwrap();
    let store = store(&backend);
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0u64.. {
                let key = format!("job/{writer}-{}", n % 7);
                let current = store.load(&key).await.unwrap().map(|v| v.version);
                let value = format!("{{\"n\":{n}}}");
                if let Some(version) = store
                    .swap(&key, current, value.as_bytes(), Duration::from_secs(3600))
                    .await
                    .unwrap()
                {
                    println!("S {key} {version}");
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

fn run_child(dir: &Path, ms: u64) -> Vec<(String, u64)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "job_store_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SLUICE_KV_CHILD", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                let mut parts = line.strip_prefix("S ")?.split(' ');
                Some((parts.next()?.to_owned(), parts.next()?.parse().ok()?))
            })
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(ms));
    child.kill().expect("SIGKILL the child");
    let _ = child.wait();
    reader.join().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_job_store_writes_survive_sigkill() {
    if std::env::var_os("SLUICE_KV_CHILD").is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut confirmed: BTreeMap<String, u64> = BTreeMap::new();
    let mut seed = 0xfeed_u64;
    let mut total = 0;
    for round in 0..ROUNDS {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let ms = 200 + (seed >> 33) % 500;
        let path = dir.path().to_path_buf();
        let writes = tokio::task::spawn_blocking(move || run_child(&path, ms))
            .await
            .unwrap();
        total += writes.len();
        for (key, version) in writes {
            confirmed.insert(key, version);
        }
        let backend = EmbeddedBackend::open(dir.path())
            .await
            .unwrap_or_else(|e| panic!("round {round}: reopening after SIGKILL: {e}"));
        let store = store(&backend);
        for (key, version) in &confirmed {
            let found = store.load(key).await.unwrap().map(|v| v.version);
            assert!(
                found.is_some_and(|found| found >= *version),
                "round {round}: {key} was confirmed at version {version}, found {found:?}"
            );
        }
        backend.close().await.unwrap();
    }
    assert!(
        total > 100,
        "the children confirmed {total} writes: too few to test anything"
    );
}

#[tokio::test]
async fn the_engine_limiter_keeps_the_limiter_contract_and_namespaces_have_their_own_limits() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path()).await.unwrap();
    sluice_testing::check_limiter(backend.limiter()).await;
    let team = backend.with_naming(Naming::new(Some(Namespace::new("team-a").unwrap())));
    sluice_testing::check_limiter(team.limiter()).await;
    sluice_testing::check_flags(team.limiter()).await;
    sluice_core::LimiterStore::set_flag(&*team.limiter(), "pause:x", Some("1"), None)
        .await
        .unwrap();
    assert!(
        sluice_core::LimiterStore::flags(&*backend.limiter(), "pause:")
            .await
            .unwrap()
            .is_empty(),
        "another namespace's flags are not the default one's"
    );
    let rate = sluice_core::Rate {
        per_second: 0.001,
        burst: 2,
    };
    let take = |store: Arc<dyn sluice_core::LimiterStore>| async move {
        store.take("stripe", rate, 0, 5).await.unwrap().granted
    };
    assert_eq!(take(backend.limiter()).await, 2);
    assert_eq!(take(team.limiter()).await, 2, "another namespace's limit");
    assert_eq!(
        take(backend.limiter()).await,
        0,
        "every view shares one bucket"
    );
    backend.close().await.unwrap();
}
