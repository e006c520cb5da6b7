//! `/api/v1/jobs` and `/api/v1/schedules`: the jobs and schedules of the job store an
//! application's `Jobs` share with the server (`ServerConfig::job_store`, or by default the
//! server's own, which `Jobs` over `sluice://` uses), enqueued by the application over a real
//! `sluice://` connection; cancel through the API is what the application then sees.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_core::jobs::{JobStore, MemoryJobStore};
use sluice_remote::{RemoteBackend, RemoteOptions};
use sluice_runtime::jobs::JobState;
use sluice_runtime::schedule::Schedule;
use sluice_runtime::{Job, Jobs};
use sluice_server::{Server, ServerConfig};
use support::http;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Reminder {
    user: u64,
}

impl Job for Reminder {
    const NAME: &'static str = "reminder";
}

async fn json(addr: SocketAddr, method: &str, path: &str) -> (u16, Value) {
    let (status, text) = http(addr, method, path, None, "").await;
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}")),
    )
}

async fn start(store: Option<Arc<dyn JobStore>>) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path())
        .listen("127.0.0.1:0".parse().unwrap())
        .http(Some("127.0.0.1:0".parse().unwrap()));
    if let Some(store) = store {
        config = config.job_store(store);
    }
    (dir, Server::start(config).await.expect("start the server"))
}

#[tokio::test]
async fn the_admin_api_lists_reads_and_cancels_the_applications_jobs_and_schedules() {
    let store: Arc<dyn JobStore> = Arc::new(MemoryJobStore::new());
    let (_dir, server) = start(Some(store.clone())).await;
    let http_addr = server.http_addr().unwrap();
    let client = RemoteBackend::connect(&server.addr().to_string(), RemoteOptions::default())
        .await
        .unwrap();
    let jobs = Jobs::new(client).await.unwrap().job_store(store);
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
    jobs.schedule(
        "nightly",
        Schedule::cron("0 3 * * *")
            .unwrap()
            .timezone("Europe/Paris")
            .unwrap(),
        &Reminder { user: 0 },
    )
    .await
    .unwrap();

    let (status, listed) = json(http_addr, "GET", "/api/v1/jobs").await;
    assert_eq!(status, 200, "{listed}");
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str(), first.as_str()], "newest first");
    assert_eq!(listed[0]["state"], "scheduled");
    assert!(listed[0]["due_at"].as_u64().is_some(), "{listed}");

    let (status, cancelled) =
        json(http_addr, "POST", &format!("/api/v1/jobs/{first}/cancel")).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["cancelled"], true);
    assert_eq!(cancelled["state"], "cancelled");
    let seen = jobs.status(first.as_str()).await.unwrap().unwrap();
    assert!(
        matches!(seen.state, JobState::Cancelled { .. }),
        "the application sees the cancel: {seen:?}"
    );
    let (status, again) = json(http_addr, "POST", &format!("/api/v1/jobs/{first}/cancel")).await;
    assert_eq!(
        (status, &again["cancelled"], &again["state"]),
        (200, &Value::Bool(false), &Value::from("cancelled")),
        "a second cancel changes nothing and says so"
    );
    let (status, one) = json(http_addr, "GET", &format!("/api/v1/jobs/{second}")).await;
    assert_eq!((status, &one["state"]), (200, &Value::from("scheduled")));
    let (status, only) = json(http_addr, "GET", "/api/v1/jobs?state=cancelled").await;
    assert_eq!(status, 200);
    assert_eq!(only.as_array().unwrap().len(), 1);
    assert_eq!(only[0]["id"], first.as_str());

    let (status, schedules) = json(http_addr, "GET", "/api/v1/schedules").await;
    assert_eq!(status, 200, "{schedules}");
    assert_eq!(schedules.as_array().unwrap().len(), 1);
    assert_eq!(schedules[0]["id"], "nightly");
    assert_eq!(schedules[0]["job"], "reminder");
    assert!(
        schedules[0]["schedule"]
            .as_str()
            .unwrap()
            .contains("Europe/Paris"),
        "{schedules}"
    );
    assert!(schedules[0]["next_due"].as_u64().is_some(), "{schedules}");

    for (path, method, code) in [
        ("/api/v1/jobs/no-such-job", "GET", 404),
        ("/api/v1/jobs/no-such-job/cancel", "POST", 404),
        ("/api/v1/jobs?state=lost", "GET", 400),
    ] {
        let (status, error) = json(http_addr, method, path).await;
        assert_eq!(status, code, "{method} {path}: {error}");
        assert!(error["error"].as_str().is_some(), "{error}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn by_default_sluice_clients_keep_their_jobs_in_the_server_s_own_store_durably_and_per_namespace(
) {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        ServerConfig::new(dir.path())
            .listen("127.0.0.1:0".parse().unwrap())
            .http(Some("127.0.0.1:0".parse().unwrap()))
    };
    let server = Server::start(config()).await.unwrap();
    let connect = |namespace: Option<&str>| {
        let addr = server.addr().to_string();
        let namespace = namespace.map(|n| sluice_core::Namespace::new(n).unwrap());
        async move {
            RemoteBackend::connect(&addr, RemoteOptions::default().namespace(namespace))
                .await
                .unwrap()
        }
    };
    // No job store given anywhere: `Jobs` over `sluice://` uses the server's.
    let jobs = Jobs::new(connect(None).await).await.unwrap();
    let team = Jobs::new(connect(Some("team-a")).await).await.unwrap();
    let hour = Duration::from_secs(3600);
    let mine = jobs
        .enqueue_in(hour, &Reminder { user: 1 })
        .await
        .unwrap()
        .id;
    let theirs = team
        .enqueue_in(hour, &Reminder { user: 2 })
        .await
        .unwrap()
        .id;
    assert!(jobs.cancel(mine.as_str()).await.unwrap().was_pending());
    assert!(
        jobs.status(theirs.as_str()).await.unwrap().is_none(),
        "another namespace's job is not seen"
    );

    let http_addr = server.http_addr().unwrap();
    let (status, listed) = json(http_addr, "GET", "/api/v1/jobs").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], mine.as_str());
    assert_eq!(listed[0]["state"], "cancelled");
    let (status, listed) = json(http_addr, "GET", "/api/v1/jobs?namespace=team-a").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed[0]["id"], theirs.as_str());
    let (status, error) = json(http_addr, "GET", "/api/v1/jobs?namespace=Bad.Name").await;
    assert_eq!(status, 400, "{error}");
    drop((jobs, team));
    server.shutdown().await.unwrap();

    // The server restarts: what the store held is still there.
    let server = Server::start(config()).await.unwrap();
    let (status, one) = json(
        server.http_addr().unwrap(),
        "GET",
        &format!("/api/v1/jobs/{mine}"),
    )
    .await;
    assert_eq!(
        (status, &one["state"]),
        (200, &Value::from("cancelled")),
        "{one}"
    );
    let team = Jobs::new(
        RemoteBackend::connect(
            &server.addr().to_string(),
            RemoteOptions::default()
                .namespace(Some(sluice_core::Namespace::new("team-a").unwrap())),
        )
        .await
        .unwrap(),
    )
    .await
    .unwrap();
    let seen = team.status(theirs.as_str()).await.unwrap().unwrap();
    assert!(matches!(seen.state, JobState::Scheduled { .. }), "{seen:?}");
    drop(team);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_api_tokens_the_jobs_routes_need_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        ServerConfig::new(dir.path())
            .listen("127.0.0.1:0".parse().unwrap())
            .http(Some("127.0.0.1:0".parse().unwrap()))
            .auth(sluice_server::Auth::tokens(vec!["s3cret".to_owned()]))
            .job_store(Arc::new(MemoryJobStore::new())),
    )
    .await
    .unwrap();
    let addr = server.http_addr().unwrap();
    for (method, path) in [
        ("GET", "/api/v1/jobs"),
        ("GET", "/api/v1/schedules"),
        ("POST", "/api/v1/jobs/x/cancel"),
    ] {
        assert_eq!(http(addr, method, path, None, "").await.0, 401, "{path}");
    }
    assert_eq!(
        http(addr, "GET", "/api/v1/jobs", Some("s3cret"), "")
            .await
            .0,
        200
    );
    server.shutdown().await.unwrap();
}
