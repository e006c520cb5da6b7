//! Per-key fairness on the engine (issue #20's figure): tenant `a` enqueues 20 000 messages,
//! tenant `b` 100, each limited to 50/s by a worker's `KeyLimit`: `b`'s messages are handled
//! within about their own limit's time of their enqueue (2 s for 100 at 50/s with a burst of
//! 50), not after `a`'s backlog (400 s at its limit). Real engine, real clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::{
    Backend, Message, Publisher, StartPosition, SubscriptionConfig, SubscriptionName, TopicConfig,
    TopicName,
};
use sluice_embedded::EmbeddedBackend;
use sluice_runtime::{raw_handler, CancellationToken, Context, KeyLimit, Worker};

fn tenant(tenant: &str, i: usize) -> Message {
    Message::builder("x")
        .id(format!("{tenant}-{i}"))
        .header("tenant", tenant)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_100_messages_is_not_held_up_by_one_with_20000() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path()).await.unwrap();
    let topic = TopicName::new("emails").unwrap();
    let name = SubscriptionName::new("sender").unwrap();
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    let config = SubscriptionConfig::new(topic.clone()).start(StartPosition::Earliest);
    backend.ensure_subscription(&name, &config).await.unwrap();

    let handled: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let h = handled.clone();
    let worker = Worker::builder(
        backend.subscribe(&name).await.unwrap(),
        raw_handler(move |_p, ctx: Context| {
            h.lock()
                .unwrap()
                .insert(ctx.message().id().to_string(), Instant::now());
            async { Ok(()) }
        }),
    )
    .key_limit(KeyLimit::header("tenant").per_second(50.0))
    .build();
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let running = worker.spawn(stop.clone());

    let publisher = backend.publisher().await.unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for part in 0..8 {
        let (publisher, topic) = (publisher.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            for i in (part..20_000).step_by(8) {
                publisher.publish(&topic, tenant("a", i)).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let a_enqueued = started.elapsed();
    let mut enqueued = HashMap::new();
    for i in 0..100 {
        let message = tenant("b", i);
        let id = message.id().to_string();
        publisher.publish(&topic, message).await.unwrap();
        enqueued.insert(id, Instant::now());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = handled
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with("b-"))
            .count();
        if done == 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of b's 100 handled in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let latencies: Vec<Duration> = {
        let handled = handled.lock().unwrap();
        enqueued
            .iter()
            .map(|(id, at)| handled[id].saturating_duration_since(*at))
            .collect()
    };
    let worst = latencies.iter().max().unwrap();
    let a_handled = handled
        .lock()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("a-"))
        .count();
    let elapsed = started.elapsed();
    let snapshot = stats.snapshot();
    println!(
        "fairness: a's 20000 enqueued in {a_enqueued:.2?}; b's 100 handled at most {worst:.2?} after \
         their enqueue; a handled {a_handled} in {elapsed:.2?} (limit 50/s); {} deferred",
        snapshot.deferred
    );
    assert!(
        *worst <= Duration::from_secs(10),
        "b's messages waited up to {worst:?}: held up behind a's backlog"
    );
    assert!(
        a_handled as f64 <= 50.0 + 50.0 * elapsed.as_secs_f64() + 5.0,
        "a ran {a_handled} times in {elapsed:?}: over its 50/s"
    );
    assert_eq!(snapshot.dead_lettered, 0);
    stop.cancel();
    running.await.unwrap();
}
