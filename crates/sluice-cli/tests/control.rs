//! `sluice pause` / `sluice resume` and the PAUSED column of `sluice stats`, against a real
//! `sluice serve`; a worker on `sluice://` stops pulling while its subscription is paused.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::prelude::*;

mod support;

use support::{free_addr, run_sluice, Served};

fn stats_paused(url: &str) -> serde_json::Value {
    let (code, out, err) = run_sluice(url, &["stats", "--json"], None);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    doc[0]["paused"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pauses_and_resumes_a_subscriptions_workers() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _server = Served::start(dir.path(), addr);
    let url = format!("sluice://{addr}");
    let backend = sluice::connect(&url).await.unwrap();
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
    let handled = Arc::new(AtomicU32::new(0));
    let h = handled.clone();
    let worker = Worker::builder(
        backend.subscribe(&sub).await.unwrap(),
        raw_handler(move |_p, _c| {
            h.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }),
    )
    .build();
    let stop = CancellationToken::new();
    let running = worker.spawn(stop.clone());
    let publisher = backend.publisher().await.unwrap();

    assert_eq!(stats_paused(&url), false);
    let (code, out, err) = run_sluice(&url, &["pause", "billing"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("paused `billing`"), "{out}");
    assert_eq!(stats_paused(&url), true);
    // Within the workers' read interval (and a receive's poll wait already under way),
    // nothing more is pulled.
    tokio::time::sleep(sluice::runtime::CONTROL_EVERY + Duration::from_millis(1_500)).await;
    for i in 0..5 {
        publisher
            .publish(
                &topic,
                Message::builder("x").id(format!("m{i}")).build().unwrap(),
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        handled.load(Ordering::SeqCst),
        0,
        "a paused subscription pulls nothing"
    );

    let (code, _, err) = run_sluice(&url, &["resume", "billing"], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stats_paused(&url), false);
    let deadline = Instant::now() + Duration::from_secs(15);
    while handled.load(Ordering::SeqCst) < 5 {
        assert!(Instant::now() < deadline, "not resumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    running.await.unwrap();

    let (code, _, err) = run_sluice(&url, &["pause", "nope"], None);
    assert_ne!(code, 0);
    assert!(err.contains("nope"), "{err}");
    let (code, _, err) = run_sluice(
        &format!("embedded:{}", dir.path().join("other").display()),
        &["pause", "billing"],
        None,
    );
    assert_ne!(
        code, 0,
        "an embedded engine opened by the command has no shared limiter"
    );
    assert!(!err.is_empty());
}
