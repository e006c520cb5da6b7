//! The dashboard in a real headless browser (Debian's Chromium): the numbers the page shows
//! after its scripts ran are the numbers the admin API reports.

mod support;

use std::process::Command;
use std::time::Duration;

use sluice_core::{
    Backend, Message, Publisher, Subscriber, SubscriptionConfig, SubscriptionName, TopicConfig,
    TopicName,
};
use sluice_remote::{RemoteBackend, RemoteOptions};
use sluice_server::{Server, ServerConfig};
use support::get_json;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The page's DOM after its scripts ran, rendered by headless Chromium.
async fn rendered(url: &str) -> String {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "this test drives Debian's Chromium at {CHROMIUM}: run scripts/services-up (it installs it) or `apt-get install chromium`"
    );
    let profile = tempfile::tempdir().unwrap();
    let url = url.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=5000",
                "--dump-dom",
            ])
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_numbers_of_the_admin_api_and_the_dlq() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        ServerConfig::new(dir.path())
            .listen("127.0.0.1:0".parse().unwrap())
            .http(Some("127.0.0.1:0".parse().unwrap())),
    )
    .await
    .unwrap();
    let http = server.http_addr().unwrap();
    let client = RemoteBackend::connect(&server.addr().to_string(), RemoteOptions::default())
        .await
        .unwrap();
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
