//! Crash test: a real child process publishes with confirms and acks while it is killed with
//! SIGKILL at random moments, 20 times. After each kill the directory is opened again and:
//! every confirmed publish is present exactly once, no confirmed ack is redelivered, and the
//! next child carries on from there.
//!
//! The child is this same test binary, re-run with `SLUICE_CRASH_CHILD` set on the ignored
//! test `crash_child` (`--ignored --exact`), printing `P <id>` after each confirmed publish
//! and `A <id>` after each confirmed ack.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{
    Backend, Delivery, Message, Publisher, StartPosition, Subscriber, SubscriptionConfig,
    SubscriptionName, TopicConfig, TopicName,
};
use sluice_embedded::EmbeddedBackend;

const ROUNDS: usize = 20;

fn names() -> (TopicName, SubscriptionName) {
    (
        TopicName::new("orders").unwrap(),
        SubscriptionName::new("work").unwrap(),
    )
}

async fn setup(backend: &EmbeddedBackend) {
    let (topic, work) = names();
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    let config = SubscriptionConfig::new(topic)
        .start(StartPosition::Earliest)
        .lease(Duration::from_secs(60))
        .prefetch(10_000);
    backend.ensure_subscription(&work, &config).await.unwrap();
}

/// The child: publish and ack until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by confirmed_messages_survive_sigkill_at_random_moments as its child process"]
async fn crash_child() {
    let dir = std::env::var("SLUICE_CRASH_CHILD").expect("SLUICE_CRASH_CHILD");
    let round = std::env::var("SLUICE_CRASH_ROUND").expect("SLUICE_CRASH_ROUND");
    let backend = EmbeddedBackend::open(&dir).await.unwrap();
    setup(&backend).await;
    let (topic, work) = names();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let consumer = {
        let backend = backend.clone();
        let out = out.clone();
        tokio::spawn(async move {
            let subscriber = backend.subscribe(&work).await.unwrap();
            let mut n = 0u64;
            loop {
                for delivery in subscriber
                    .receive(16, Duration::from_millis(50))
                    .await
                    .unwrap()
                {
                    n += 1;
                    let id = delivery.message().id().to_string();
                    if n % 2 == 0 {
                        delivery.ack().await.unwrap();
                        let mut out = out.lock().unwrap();
                        writeln!(out, "A {id}").unwrap();
                        out.flush().unwrap();
                    } else {
                        delivery.release().await.unwrap();
                    }
                }
            }
        })
    };
    let mut producers = Vec::new();
    for p in 0..3 {
        let publisher = backend.publisher().await.unwrap();
        let (topic, out, round) = (topic.clone(), out.clone(), round.clone());
        producers.push(tokio::spawn(async move {
            for n in 0.. {
                let batch: Vec<Message> = (0..8)
                    .map(|i| {
                        Message::builder("x")
                            .id(format!("r{round}-p{p}-{n}-{i}"))
                            .build()
                            .unwrap()
                    })
                    .collect();
                for receipt in publisher.publish_batch(&topic, batch).await {
                    let receipt = receipt.unwrap();
                    let mut out = out.lock().unwrap();
                    writeln!(out, "P {}", receipt.id).unwrap();
                    out.flush().unwrap();
                }
            }
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    consumer.await.unwrap();
}

/// Runs one child for `ms` milliseconds, SIGKILLs it, and returns what it confirmed.
fn run_child(dir: &Path, round: usize, ms: u64) -> (Vec<String>, Vec<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SLUICE_CRASH_CHILD", dir)
        .env("SLUICE_CRASH_ROUND", round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut published, mut acked) = (Vec::new(), Vec::new());
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(id) = line.strip_prefix("P ") {
                published.push(id.to_owned());
            } else if let Some(id) = line.strip_prefix("A ") {
                acked.push(id.to_owned());
            }
        }
        (published, acked)
    });
    std::thread::sleep(Duration::from_millis(ms));
    child.kill().expect("SIGKILL the child");
    let _ = child.wait();
    reader.join().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_sigkill_at_random_moments() {
    if std::env::var_os("SLUICE_CRASH_CHILD").is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut confirmed: BTreeSet<String> = BTreeSet::new();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut seed = 0x5eed_u64;
    for round in 0..ROUNDS {
        // A cheap deterministic generator: the kill moments vary but are reproducible.
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let ms = 150 + (seed >> 33) % 600;
        let path = dir.path().to_path_buf();
        let (published, newly_acked) =
            tokio::task::spawn_blocking(move || run_child(&path, round, ms))
                .await
                .unwrap();
        confirmed.extend(published);
        acked.extend(newly_acked);

        let backend = EmbeddedBackend::open(dir.path())
            .await
            .unwrap_or_else(|e| panic!("round {round}: reopening after SIGKILL: {e}"));
        setup(&backend).await;
        let (topic, work) = names();
        // Every confirmed publish is in the log exactly once: replay it from the start.
        let check = SubscriptionName::new(format!("check-{round}")).unwrap();
        backend
            .ensure_subscription(
                &check,
                &SubscriptionConfig::new(topic.clone())
                    .start(StartPosition::Earliest)
                    .prefetch(10_000),
            )
            .await
            .unwrap();
        let mut seen: BTreeMap<String, u32> = BTreeMap::new();
        loop {
            // A new subscriber each time: leases held, not acked, count against its prefetch.
            let replay = backend.subscribe(&check).await.unwrap();
            let got = replay
                .receive(1000, Duration::from_millis(200))
                .await
                .unwrap();
            if got.is_empty() {
                break;
            }
            // Leased, not acked: the check subscription is deleted below.
            for d in got {
                *seen.entry(d.message().id().to_string()).or_default() += 1;
            }
        }
        let missing: Vec<&String> = confirmed
            .iter()
            .filter(|id| !seen.contains_key(*id))
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} confirmed publishes lost, e.g. {:?}",
            missing.len(),
            missing.first()
        );
        let twice: Vec<(&String, &u32)> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "round {round}: stored more than once: {twice:?}"
        );
        backend.delete_subscription(&check).await.unwrap();

        // No confirmed ack comes back: take everything `work` has ready (a fresh subscriber
        // per batch, so prefetch does not stop us), then give it all back in one go.
        let mut redelivered_acked = Vec::new();
        let mut held = Vec::new();
        loop {
            let work_sub = backend.subscribe(&work).await.unwrap();
            let got = work_sub
                .receive(1000, Duration::from_millis(100))
                .await
                .unwrap();
            if got.is_empty() {
                break;
            }
            for d in &got {
                if acked.contains(d.message().id().as_str()) {
                    redelivered_acked.push(d.message().id().to_string());
                }
            }
            held.extend(got);
        }
        for released in futures::future::join_all(held.into_iter().map(Delivery::release)).await {
            released.unwrap();
        }
        assert!(
            redelivered_acked.is_empty(),
            "round {round}: acked messages delivered again: {redelivered_acked:?}"
        );
        backend.close().await.unwrap();
    }
    assert!(
        confirmed.len() > ROUNDS * 10,
        "the children confirmed only {} publishes in all",
        confirmed.len()
    );
    assert!(!acked.is_empty(), "the children acked nothing");
    eprintln!(
        "crash test: {ROUNDS} SIGKILLs, {} confirmed publishes and {} confirmed acks checked",
        confirmed.len(),
        acked.len()
    );
}
