//! `sluice serve` as a real process: SIGKILLed under publish load with confirms and
//! restarted, it keeps every confirmed message, and clients reconnect by themselves; the
//! demo runs across processes against it.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use sluice::prelude::*;

mod support;

use support::{free_addr, Served};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_publish_load_keeps_every_confirmed_message_and_clients_reconnect() {
    const ROUNDS: usize = 5;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let addr = free_addr();
    let mut server = Served::start(dir.path(), addr);
    let url = format!("sluice://{addr}");
    let backend = sluice::connect(&url).await.expect("connect");
    let topic = TopicName::new("orders").unwrap();
    let sub = SubscriptionName::new("billing").unwrap();
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    backend
        .ensure_subscription(
            &sub,
            &SubscriptionConfig::new(topic.clone()).lease(Duration::from_secs(2)),
        )
        .await
        .unwrap();

    let confirmed = Arc::new(Mutex::new(BTreeSet::new()));
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = CancellationToken::new();

    // Two producers publishing with confirms; an id is recorded only once confirmed.
    let mut producers = Vec::new();
    for p in 0..2 {
        let publisher = backend.publisher().await.unwrap();
        let (topic, confirmed, stop) = (topic.clone(), confirmed.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let batch: Vec<Message> = (0..16)
                    .map(|i| {
                        Message::builder(&b"x"[..])
                            .id(format!("p{p}-{n}-{i}"))
                            .build()
                            .unwrap()
                    })
                    .collect();
                n += 1;
                let ids: Vec<String> = batch.iter().map(|m| m.id().to_string()).collect();
                for (id, result) in ids
                    .into_iter()
                    .zip(publisher.publish_batch(&topic, batch).await)
                {
                    match result {
                        Ok(_) => {
                            confirmed.lock().unwrap().insert(id);
                        }
                        Err(err) => assert!(err.is_retryable(), "a publish failed for good: {err}"),
                    }
                }
            }
        }));
    }
    // One consumer acking what it receives; it is never told about the restarts.
    let consumer = {
        let subscriber = backend.subscribe(&sub).await.unwrap();
        let (seen, stop) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                match subscriber.receive(64, Duration::from_millis(200)).await {
                    Ok(batch) => {
                        for d in batch {
                            seen.lock().unwrap().insert(d.message().id().to_string());
                            let _ = d.ack().await; // a lost ack only means a redelivery
                        }
                    }
                    Err(err) => {
                        assert!(err.is_retryable(), "receive failed for good: {err}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    };

    for round in 0..ROUNDS {
        let before = confirmed.lock().unwrap().len();
        let pause = rand::thread_rng().gen_range(200..700);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        server.child().kill().expect("SIGKILL sluice serve");
        server.child().wait().expect("reap sluice serve");
        server = Served::start(dir.path(), addr);
        // Publishing resumes by itself on the new process.
        let deadline = Instant::now() + Duration::from_secs(20);
        while confirmed.lock().unwrap().len() <= before {
            assert!(
                Instant::now() < deadline,
                "round {round}: no publish confirmed after the restart"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.cancel();
    for p in producers {
        p.await.expect("producer");
    }
    consumer.await.expect("consumer");

    // Every confirmed message is there: drain with a fresh subscriber until all were seen.
    let confirmed = confirmed.lock().unwrap().clone();
    assert!(
        confirmed.len() > 100,
        "the load was real: {} confirmed",
        confirmed.len()
    );
    let subscriber = backend.subscribe(&sub).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = confirmed.difference(&seen.lock().unwrap()).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} confirmed messages never came",
            confirmed.len()
        );
        for d in subscriber
            .receive(256, Duration::from_millis(500))
            .await
            .expect("receive")
        {
            seen.lock().unwrap().insert(d.message().id().to_string());
            d.ack().await.expect("ack");
        }
    }
}

#[test]
fn the_demo_runs_across_processes_against_sluice_serve() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let addr = free_addr();
    let _server = Served::start(dir.path(), addr);
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "demo",
            "--plain",
            "--orders",
            "200",
            "--rate",
            "2000",
            "--email-rate",
            "400",
            "--seed",
            "3",
        ])
        .args(["--url", &format!("sluice://{addr}")])
        .output()
        .expect("run sluice demo");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{text}");
    assert!(
        text.contains("ok   billing: 200 orders charged exactly once"),
        "billing does not reconcile:\n{text}"
    );
    assert!(!text.contains("FAIL"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_publishes_in_flight_and_exits_cleanly_keeping_every_confirmed_message() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let addr = free_addr();
    let served = Served::start_with(dir.path(), addr, Stdio::piped());
    let backend = sluice::connect(&format!("sluice://{addr}"))
        .await
        .expect("connect");
    let topic = TopicName::new("orders").unwrap();
    let sub = SubscriptionName::new("billing").unwrap();
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    backend
        .ensure_subscription(&sub, &SubscriptionConfig::new(topic.clone()))
        .await
        .unwrap();
    let confirmed = Arc::new(Mutex::new(BTreeSet::new()));
    let publisher = backend.publisher().await.unwrap();
    let producing = {
        let (topic, confirmed) = (topic.clone(), confirmed.clone());
        tokio::spawn(async move {
            for n in 0.. {
                let batch: Vec<Message> = (0..32)
                    .map(|i| {
                        Message::builder(&b"x"[..])
                            .id(format!("{n}-{i}"))
                            .build()
                            .unwrap()
                    })
                    .collect();
                let ids: Vec<String> = batch.iter().map(|m| m.id().to_string()).collect();
                let results = publisher.publish_batch(&topic, batch).await;
                let mut failed = false;
                for (id, result) in ids.into_iter().zip(results) {
                    match result {
                        Ok(_) => {
                            confirmed.lock().unwrap().insert(id);
                        }
                        // The server going away fails what it did not confirm, retryably.
                        Err(err) => {
                            assert!(err.is_retryable(), "{err}");
                            failed = true;
                        }
                    }
                }
                if failed {
                    return;
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while confirmed.lock().unwrap().len() < 500 {
        assert!(Instant::now() < deadline, "publishing never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let child = served.into_child();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .expect("sluice serve exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit status {:?}:\n{stderr}",
        out.status
    );
    assert!(stderr.contains("stopped cleanly"), "{stderr}");
    producing.await.expect("producer");

    // Everything confirmed before the shutdown is there after a restart.
    let _server = Served::start(dir.path(), addr);
    let confirmed = confirmed.lock().unwrap().clone();
    let stats = backend.stats(&sub).await.expect("stats after the restart");
    assert_eq!(
        stats.ready,
        Some(confirmed.len() as u64),
        "every confirmed message (and nothing else) is ready after a graceful shutdown"
    );
}
