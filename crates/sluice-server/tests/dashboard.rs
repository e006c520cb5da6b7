//! The dashboard in a real headless browser (Debian's Chromium): the numbers the page shows
//! after its scripts ran are the numbers the admin API reports; its schedules are the job
//! store's, and its Cancel button cancels the job the application then sees cancelled.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::jobs::{JobStore, MemoryJobStore};
use sluice_core::{
    Backend, Message, Publisher, Subscriber, SubscriptionConfig, SubscriptionName, TopicConfig,
    TopicName,
};
use sluice_remote::{RemoteBackend, RemoteOptions};
use sluice_runtime::jobs::JobState;
use sluice_runtime::schedule::{Missed, Schedule};
use sluice_runtime::{CancellationToken, Context, Job, Jobs};
use sluice_server::{Server, ServerConfig};
use support::browser::{Browser, CHROMIUM, HEADLESS};
use support::get_json;

/// The page's DOM after its scripts ran, rendered by headless Chromium.
async fn rendered(url: &str) -> String {
    support::browser::require_chromium();
    let profile = tempfile::tempdir().unwrap();
    let url = url.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(CHROMIUM)
            .args(HEADLESS)
            .args(["--virtual-time-budget=5000", "--dump-dom"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .output()
            .expect("run chromium")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 DOM")
}

/// The text of the dashboard cell of `subscription`'s `field` (tags stripped).
fn cell(dom: &str, subscription: &str, field: &str) -> String {
    let marker = format!("data-sub=\"{subscription}\" data-field=\"{field}\">");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no {field} cell for {subscription} in the page:\n{dom}"))
        + marker.len();
    let inner = &dom[start..start + dom[start..].find("</td>").expect("a closed cell")];
    let mut text = String::new();
    let mut in_tag = false;
    for c in inner.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

/// A server on `dir` (on loopback ports of its own), its HTTP address, and a client of it.
async fn serve(
    dir: &std::path::Path,
    config: impl FnOnce(ServerConfig) -> ServerConfig,
) -> (Server, std::net::SocketAddr, RemoteBackend) {
    let server = Server::start(config(
        ServerConfig::new(dir)
            .listen("127.0.0.1:0".parse().unwrap())
            .http(Some("127.0.0.1:0".parse().unwrap())),
    ))
    .await
    .unwrap();
    let http = server.http_addr().unwrap();
    let client = RemoteBackend::connect(&server.addr().to_string(), RemoteOptions::default())
        .await
        .unwrap();
    (server, http, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_numbers_of_the_admin_api_and_the_dlq() {
    let dir = tempfile::tempdir().unwrap();
    let (server, http, client) = serve(dir.path(), |config| config).await;
    let topic = TopicName::new("orders").unwrap();
    client
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    for name in ["billing", "email"] {
        let config = SubscriptionConfig::new(topic.clone()).lease(Duration::from_secs(120));
        client
            .ensure_subscription(&SubscriptionName::new(name).unwrap(), &config)
            .await
            .unwrap();
    }
    let publisher = client.publisher().await.unwrap();
    for i in 0..7 {
        let m = Message::builder(format!("order {i}"))
            .id(format!("order-{i}"))
            .build()
            .unwrap();
        publisher.publish(&topic, m).await.unwrap();
    }
    // billing: two dead-lettered; email: one held in flight (a long lease keeps it there).
    let billing = client
        .subscribe(&SubscriptionName::new("billing").unwrap())
        .await
        .unwrap();
    support::dead_letter(&billing, 2).await;
    billing.close().await.unwrap();
    let email = client
        .subscribe(&SubscriptionName::new("email").unwrap())
        .await
        .unwrap();
    let held = email.receive(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(held.len(), 1);

    let dom = rendered(&format!("http://{http}/?dlq=billing")).await;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page rendered the overview:\n{dom}"
    );
    for name in ["billing", "email"] {
        let stats = get_json(http, &format!("/api/v1/subscriptions/{name}/stats")).await;
        for field in ["ready", "in_flight", "delayed", "dead_lettered"] {
            assert_eq!(
                cell(&dom, name, field),
                stats[field].to_string(),
                "{name}.{field}: the page and the API disagree"
            );
        }
    }
    assert_eq!(cell(&dom, "billing", "ready"), "5");
    assert_eq!(cell(&dom, "email", "in_flight"), "1");
    // The DLQ view lists exactly what the API lists.
    let dlq = get_json(http, "/api/v1/subscriptions/billing/dlq").await;
    for message in dlq.as_array().unwrap() {
        let id = message["id"].as_str().unwrap();
        assert!(
            dom.contains(&format!("data-id=\"{id}\"")),
            "the DLQ view lists {id}:\n{dom}"
        );
    }
    assert_eq!(
        dom.matches("card declined").count(),
        2,
        "both reasons are shown"
    );
    drop(held);
    server.shutdown().await.unwrap();
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Reminder {
    user: u64,
}

impl Job for Reminder {
    const NAME: &'static str = "reminder";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_schedules_and_its_cancel_button_cancels_a_pending_job() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn JobStore> = Arc::new(MemoryJobStore::new());
    let (server, http, client) = serve(dir.path(), |config| config.job_store(store.clone())).await;
    let jobs = Arc::new(Jobs::new(client).await.unwrap().job_store(store));
    // A nightly schedule that catches up its last missed tick at once: one run to show.
    let nightly = Schedule::cron("0 3 * * *")
        .unwrap()
        .timezone("Europe/Paris")
        .unwrap()
        .missed(Missed::CatchUp { at_most: 1 });
    jobs.schedule("nightly", nightly, &Reminder { user: 0 })
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let producer = tokio::spawn({
        let (jobs, stop) = (jobs.clone(), stop.clone());
        async move { jobs.run_schedules(stop).await }
    });
    let worker = jobs
        .worker(|_: Reminder, _: Context| async { Ok(()) })
        .await
        .unwrap()
        .build();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let schedules = jobs.records().schedules(10).await.unwrap();
        let ran = schedules
            .first()
            .and_then(|s| s.last_runs.first())
            .is_some_and(|run| matches!(run.state, JobState::Succeeded { .. }));
        if ran {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the caught-up tick never ran: {schedules:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hour = Duration::from_secs(3600);
    let kept = jobs
        .enqueue_in(hour, &Reminder { user: 1 })
        .await
        .unwrap()
        .id;
    let doomed = jobs
        .enqueue_in(hour, &Reminder { user: 2 })
        .await
        .unwrap()
        .id;

    let mut page = Browser::open(&format!("http://{http}/")).await;
    page.until(
        "document.body.dataset.jobsLoaded === 'true' && !document.getElementById('jobs-view').hidden",
        "the page loaded the jobs",
    )
    .await;
    // The schedule row shows what the API says: its next due tick and its run.
    let api = get_json(http, "/api/v1/schedules").await;
    let next_due = page
        .eval("document.querySelector('tr[data-schedule=nightly] td[data-field=next_due]').dataset.ms")
        .await;
    assert_eq!(
        next_due,
        api[0]["next_due"].to_string(),
        "next due on the page and in the API"
    );
    let runs = page
        .eval("document.querySelector('tr[data-schedule=nightly] td[data-field=last_runs]').dataset.ids")
        .await;
    assert_eq!(
        runs, api[0]["last_runs"][0]["id"],
        "the last run on the page and in the API"
    );
    let shown = page
        .eval("document.querySelector('tr[data-schedule=nightly] td[data-field=last_runs]').textContent")
        .await;
    assert!(shown.as_str().unwrap().starts_with("succeeded"), "{shown}");

    // Both pending reminders have a Cancel button; one click cancels one.
    for id in [&kept, &doomed] {
        page.until(
            &format!("!!document.querySelector('button[data-cancel=\"{id}\"]')"),
            "a Cancel button for each pending job",
        )
        .await;
    }
    page.eval(&format!(
        "document.querySelector('button[data-cancel=\"{doomed}\"]').click(); true"
    ))
    .await;
    let said = page
        .until(
            "document.getElementById('jobs-status').dataset.cancelled",
            "the page to report the cancel",
        )
        .await;
    assert_eq!(said, doomed.as_str());
    let status = jobs.status(doomed.as_str()).await.unwrap().unwrap();
    assert!(
        matches!(status.state, JobState::Cancelled { .. }),
        "the application sees the job cancelled: {status:?}"
    );
    let other = jobs.status(kept.as_str()).await.unwrap().unwrap();
    assert!(
        matches!(other.state, JobState::Scheduled { .. }),
        "the other job is untouched: {other:?}"
    );
    page.until(
        &format!(
            "document.querySelector('tr[data-job=\"{doomed}\"] td[data-field=state]')?.textContent === 'cancelled' \
             && !document.querySelector('button[data-cancel=\"{doomed}\"]')"
        ),
        "the page to show the job cancelled, without its button",
    )
    .await;

    drop(page);
    stop.cancel();
    producer.await.unwrap();
    running.await.unwrap();
    server.shutdown().await.unwrap();
}
