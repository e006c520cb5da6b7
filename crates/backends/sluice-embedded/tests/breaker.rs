//! The circuit breaker on the engine, real clock (issue #20's figure): a downstream that
//! fails every call for an outage; with the breaker, the attempts spent while it is down are
//! those that opened the circuit and the probes only, nothing reaches the DLQ, and handling
//! resumes within one cool-down of the downstream's return.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::{
    Backend, Message, Publisher, StartPosition, SubscriptionConfig, SubscriptionName, TopicConfig,
    TopicName,
};
use sluice_embedded::EmbeddedBackend;
use sluice_runtime::{
    raw_handler, Backoff, CancellationToken, CircuitBreaker, HandlerError, Jitter, Worker,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_spends_only_the_probes_and_handling_resumes_within_a_cool_down() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path()).await.unwrap();
    let topic = TopicName::new("payments").unwrap();
    let name = SubscriptionName::new("charger").unwrap();
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    let config = SubscriptionConfig::new(topic.clone())
        .start(StartPosition::Earliest)
        .max_attempts(10);
    backend.ensure_subscription(&name, &config).await.unwrap();
    let publisher = backend.publisher().await.unwrap();
    for i in 0..200 {
        publisher
            .publish(
                &topic,
                Message::builder("x").id(format!("p{i}")).build().unwrap(),
            )
            .await
            .unwrap();
    }

    let down = Arc::new(AtomicBool::new(true));
    let calls_while_down = Arc::new(AtomicU32::new(0));
    let first_success: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (d, c, f) = (
        down.clone(),
        calls_while_down.clone(),
        first_success.clone(),
    );
    let cool_down = Duration::from_secs(1);
    let worker = Worker::builder(
        backend.subscribe(&name).await.unwrap(),
        raw_handler(move |_p, _c| {
            let failing = d.load(Ordering::SeqCst);
            if failing {
                c.fetch_add(1, Ordering::SeqCst);
            } else {
                f.lock().unwrap().get_or_insert_with(Instant::now);
            }
            async move {
                if failing {
                    return Err(HandlerError::transient(std::io::Error::other("503")));
                }
                Ok(())
            }
        }),
    )
    .concurrency(4)
    .backoff(
        Backoff::exponential(Duration::from_millis(50), Duration::from_millis(200))
            .jitter(Jitter::None),
    )
    .circuit_breaker(
        CircuitBreaker::new()
            .min_calls(5)
            .window(Duration::from_secs(5))
            .cool_down(cool_down)
            .probes(1),
    )
    .build();
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let running = worker.spawn(stop.clone());

    let outage = Duration::from_secs(4);
    tokio::time::sleep(outage).await;
    down.store(false, Ordering::SeqCst);
    let recovered = Instant::now();
    let deadline = recovered + Duration::from_secs(60);
    while stats.snapshot().acked < 200 {
        assert!(
            Instant::now() < deadline,
            "not all handled: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_done = recovered.elapsed();
    stop.cancel();
    let snapshot = running.await.unwrap();
    let resumed = first_success
        .lock()
        .unwrap()
        .expect("a success")
        .saturating_duration_since(recovered);
    let calls = calls_while_down.load(Ordering::SeqCst);
    println!(
        "breaker: {calls} handler calls during a {outage:?} outage (4 handler slots, 5 to open, \
         1 probe per {cool_down:?}); first success {resumed:.2?} after the downstream's return; \
         all 200 handled {all_done:.2?} after it; {} dead-lettered",
        snapshot.dead_lettered
    );
    // At most 4 in flight when it opened, 5 counted failures, one probe per cool-down.
    let probes = outage.as_secs_f64() / cool_down.as_secs_f64() + 1.0;
    assert!(
        f64::from(calls) <= 5.0 + 4.0 + probes,
        "{calls} handler calls while the downstream was down"
    );
    assert_eq!(snapshot.dead_lettered, 0);
    assert!(
        resumed <= cool_down + Duration::from_millis(500),
        "handling resumed {resumed:?} after the downstream came back: more than one cool-down"
    );
}
