//! The operations commands end to end, as an operator runs them: against an embedded data
//! directory (the CLI opens and releases it on each run) and against `sluice serve`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use serde_json::Value;
use sluice::prelude::*;
use support::{free_addr, Served};

/// Runs `sluice ARGS` with `SLUICE_URL=url` (and `stdin` piped in); returns success,
/// stdout and stderr.
fn sluice(url: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let (code, out, err) = support::run_sluice(url, args, stdin);
    (code == 0, out, err)
}

fn ok(url: &str, args: &[&str]) -> String {
    let (success, out, err) = sluice(url, args, None);
    assert!(success, "sluice {args:?} failed:\n{out}\n{err}");
    out
}

fn json(url: &str, args: &[&str]) -> Value {
    let out = ok(url, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("sluice {args:?}: not JSON ({e}):\n{out}"))
}

/// Dead-letters `n` messages of `billing` in-process, then releases the directory.
async fn dead_letter(dir: &Path, n: usize) {
    let backend = sluice::embedded::EmbeddedBackend::open(dir)
        .await
        .expect("open the directory");
    let sub = backend
        .subscribe(&SubscriptionName::new("billing").unwrap())
        .await
        .unwrap();
    let mut done = 0;
    while done < n {
        for d in sub.receive(n - done, Duration::from_secs(5)).await.unwrap() {
            d.dead_letter(DeadLetterReason::new("card declined").with_last_error("402"))
                .await
                .unwrap();
            done += 1;
        }
    }
    backend.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_publish_stats_consume_and_the_dlq_tools_work_on_an_embedded_directory() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("embedded:{}", dir.path().display());
    ok(
        &url,
        &["topics", "create", "orders", "--dedup-window", "10m"],
    );
    ok(&url, &["topics", "subscribe", "orders", "billing"]);
    let (success, out, err) = sluice(
        &url,
        &[
            "publish",
            "orders",
            "--key",
            "eu.paris",
            "--header",
            "tenant=acme",
        ],
        Some("one\ntwo\nthree\nfour\n"),
    );
    assert!(success, "{out}{err}");
    assert!(out.contains("published 4 messages to orders"), "{out}");
    let single = json(
        &url,
        &["publish", "orders", "five", "--id", "o-5", "--json"],
    );
    assert_eq!(single["published"], 1);
    let again = json(
        &url,
        &["publish", "orders", "five", "--id", "o-5", "--json"],
    );
    assert_eq!(
        (again["published"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(1)),
        "the dedup window drops it"
    );

    let topics = json(&url, &["topics", "--json"]);
    assert_eq!(topics[0]["name"], "orders");
    assert_eq!(topics[0]["subscriptions"][0], "billing");
    assert_eq!(topics[0]["dedup_window_ms"], 600_000);
    let table = ok(&url, &["stats"]);
    assert!(
        table.lines().next().unwrap().starts_with("TOPIC"),
        "{table}"
    );
    assert!(
        table.contains("billing") && table.contains(" 5 "),
        "five ready:\n{table}"
    );

    let consumed = ok(&url, &["consume", "billing", "--count", "2", "--json"]);
    let lines: Vec<Value> = consumed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{consumed}");
    assert_eq!(
        (
            lines[0]["payload"].as_str(),
            lines[0]["routing_key"].as_str()
        ),
        (Some("one"), Some("eu.paris"))
    );
    assert_eq!(lines[0]["headers"]["tenant"], "acme");

    dead_letter(dir.path(), 2).await;
    let stats = json(&url, &["stats", "billing", "--json"]);
    assert_eq!(
        (
            stats[0]["ready"].as_u64(),
            stats[0]["dead_lettered"].as_u64()
        ),
        (Some(1), Some(2)),
        "{stats}"
    );
    let dlq = json(&url, &["dlq", "list", "billing", "--json"]);
    assert_eq!(dlq.as_array().unwrap().len(), 2);
    assert_eq!(
        (dlq[0]["reason"].as_str(), dlq[0]["last_error"].as_str()),
        (Some("card declined"), Some("402"))
    );
    let id = dlq[0]["id"].as_str().unwrap().to_owned();
    let shown = json(&url, &["dlq", "show", "billing", &id]);
    assert_eq!(shown["id"], id.as_str());
    let (success, _, err) = sluice(&url, &["dlq", "show", "billing", "nope"], None);
    assert!(
        !success && err.contains("no message `nope`") && err.contains(&url),
        "{err}"
    );

    let dry = json(&url, &["dlq", "redrive", "billing", "--dry-run", "--json"]);
    assert_eq!(
        (
            dry["moved"].as_array().unwrap().len(),
            dry["dry_run"].as_bool()
        ),
        (2, Some(true))
    );
    let moved = json(
        &url,
        &["dlq", "redrive", "billing", "--rate", "100", "--json"],
    );
    assert_eq!(moved["moved"].as_array().unwrap().len(), 2, "{moved}");
    let stats = json(&url, &["stats", "billing", "--json"]);
    assert_eq!(
        (
            stats[0]["ready"].as_u64(),
            stats[0]["dead_lettered"].as_u64()
        ),
        (Some(3), Some(0)),
        "{stats}"
    );

    dead_letter(dir.path(), 1).await;
    let (success, _, err) = sluice(&url, &["dlq", "purge", "billing"], None);
    assert!(
        !success && err.contains("pass --yes"),
        "purge asks for confirmation: {err}"
    );
    assert_eq!(
        json(&url, &["dlq", "purge", "billing", "--yes", "--json"])["purged"],
        1
    );

    // Errors name the operation and the URL.
    let (success, _, err) = sluice(&url, &["publish", "nowhere", "x"], None);
    assert!(!success, "publishing to a missing topic fails");
    assert!(
        err.contains("publishing to `nowhere`")
            && err.contains(&url)
            && err.contains("does not exist"),
        "{err}"
    );
    let (success, _, err) = sluice("sluice://127.0.0.1:1", &["topics"], None);
    assert!(
        !success && err.contains("connecting to sluice://127.0.0.1:1"),
        "{err}"
    );
}

#[test]
fn tail_follows_a_topic_on_sluice_serve_through_a_temporary_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _server = Served::start(dir.path(), addr);
    let url = format!("sluice://{addr}");
    ok(&url, &["topics", "create", "events"]);
    let tail = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["tail", "events", "--count", "2", "--json"])
        .env("SLUICE_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice tail");
    // Publish once the temporary subscription exists (it starts at the latest message).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok(&url, &["topics"]).contains("tail-") {
        assert!(Instant::now() < deadline, "tail never subscribed");
        std::thread::sleep(Duration::from_millis(50));
    }
    ok(&url, &["publish", "events", "first"]);
    ok(&url, &["publish", "events", "second"]);
    let out = tail.wait_with_output().expect("tail exits after --count 2");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let payloads: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["payload"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(payloads, ["first", "second"]);
    assert!(
        !ok(&url, &["topics"]).contains("tail-"),
        "the temporary subscription is deleted on exit"
    );
}

#[test]
fn publish_checks_every_line_before_publishing_and_empty_payloads_are_messages() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("embedded:{}", dir.path().display());
    ok(&url, &["topics", "create", "orders"]);
    ok(
        &url,
        &[
            "topics",
            "subscribe",
            "orders",
            "billing",
            "--lease",
            "5s",
            "--prefetch",
            "8",
            "--max-attempts",
            "3",
        ],
    );
    // An over-size line in the middle: nothing at all is published, and the error says which.
    let big = "x".repeat(5 * 1024 * 1024);
    let file = dir.path().join("lines.txt");
    std::fs::write(&file, format!("first\n{big}\nthird\n")).unwrap();
    let (success, out, err) = sluice(
        &url,
        &["publish", "orders", "--file", file.to_str().unwrap()],
        None,
    );
    assert!(!success, "{out}");
    assert!(
        err.contains("line 2 is not publishable; nothing was published"),
        "{err}"
    );
    let stats = json(&url, &["stats", "--json"]);
    assert_eq!(stats[0]["ready"], 0, "{stats}");

    // An empty payload is a message: as DATA, and as an empty line.
    let single = json(&url, &["publish", "orders", "", "--json"]);
    assert_eq!(single["published"], 1, "{single}");
    let (success, out, err) = sluice(
        &url,
        &["publish", "orders", "--content-type", "text/plain"],
        Some("a\n\nb\n"),
    );
    assert!(success, "{out}{err}");
    assert!(out.contains("published 3 messages"), "{out}");
    let consumed = ok(&url, &["consume", "billing", "--count", "4", "--json"]);
    let lines: Vec<Value> = consumed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let payloads: Vec<&str> = lines
        .iter()
        .map(|l| l["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, ["", "a", "", "b"], "{consumed}");
    assert_eq!(lines[1]["content_type"], "text/plain", "{consumed}");
    assert!(lines[1]["published_at"].is_string(), "{consumed}");

    // `unsubscribe` removes the subscription and keeps the topic.
    ok(&url, &["topics", "unsubscribe", "billing"]);
    let topics = json(&url, &["topics", "--json"]);
    assert_eq!(topics[0]["name"], "orders");
    assert_eq!(topics[0]["subscriptions"].as_array().unwrap().len(), 0);
}

#[test]
fn without_a_url_the_config_file_decides_and_a_new_directory_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let run = |envs: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .args(["topics", "--json"])
            .current_dir(dir.path())
            .env_remove("SLUICE_URL")
            .env_remove("SLUICE_CONFIG")
            .env("HOME", dir.path())
            .env_remove("XDG_CONFIG_HOME");
        for (k, v) in envs {
            command.env(k, v);
        }
        let out = command.output().expect("run sluice");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (success, err) = run(&[]);
    assert!(success, "{err}");
    assert!(
        err.contains("created a new, empty embedded data directory ./sluice-data")
            && err.contains("this is the default"),
        "{err}"
    );
    assert!(dir.path().join("sluice-data").is_dir());
    let (_, again) = run(&[]);
    assert!(!again.contains("created"), "said only once: {again}");

    std::fs::write(
        dir.path().join("sluice.toml"),
        "url = \"embedded:./from-config\"\n",
    )
    .unwrap();
    let (success, err) = run(&[]);
    assert!(success, "{err}");
    assert!(err.contains("the URL of the config file"), "{err}");
    assert!(dir.path().join("from-config").is_dir());
    let (success, err) = run(&[("SLUICE_URL", "memory:")]);
    assert!(success && err.is_empty(), "SLUICE_URL wins: {err}");
    std::fs::write(dir.path().join("sluice.toml"), "uri = 3\n").unwrap();
    let (success, err) = run(&[]);
    assert!(!success);
    assert!(
        err.contains("sluice.toml") && err.contains("unknown field"),
        "{err}"
    );
}

#[test]
fn asyncapi_prints_the_topology_as_an_asyncapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("embedded:{}", dir.path().display());
    ok(&url, &["topics", "create", "orders", "--ordered"]);
    ok(
        &url,
        &[
            "topics",
            "subscribe",
            "orders",
            "billing",
            "--filter",
            "eu.*",
        ],
    );
    let doc = json(&url, &["asyncapi", "--title", "Shop"]);
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], "Shop");
    assert_eq!(doc["channels"]["orders"]["x-sluice-topic"]["ordered"], true);
    let receive = &doc["operations"]["receive.billing"];
    assert_eq!(receive["channel"]["$ref"], "#/channels/orders");
    assert_eq!(receive["x-sluice-subscription"]["filter"], "eu.*");
    assert!(doc["channels"]["billing.dlq"].is_object(), "{doc}");
}
