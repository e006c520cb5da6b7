//! Metrics: exact counts for a scripted run.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{setup, wait_until, Running};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use sluice_core::{Backend, Message, Publisher};
use sluice_runtime::{
    raw_handler, Backoff, Context, HandlerError, Idempotency, InMemoryStore, Jitter, Producer,
    Worker,
};

#[test]
fn metrics_counters_match_a_scripted_run_exactly() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || runtime.block_on(scripted_run()));

    let mut counters: BTreeMap<String, u64> = BTreeMap::new();
    let mut histograms: BTreeMap<String, usize> = BTreeMap::new();
    let mut gauges: BTreeMap<String, f64> = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<String> = key
            .key()
            .labels()
            .filter(|l| matches!(l.key(), "outcome" | "reason"))
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = if labels.is_empty() {
            key.key().name().to_owned()
        } else {
            format!("{}{{{}}}", key.key().name(), labels.join(","))
        };
        match value {
            DebugValue::Counter(n) => *counters.entry(name).or_default() += n,
            DebugValue::Histogram(v) => *histograms.entry(name).or_default() += v.len(),
            DebugValue::Gauge(g) => *gauges.entry(name).or_default() += g.into_inner(),
        }
    }
    let expected: BTreeMap<String, u64> = [
        ("sluice_published_total{outcome=published}", 5),
        ("sluice_delivered_total", 6),
        ("sluice_acked_total", 3),
        ("sluice_retried_total", 1),
        ("sluice_dead_lettered_total{reason=permanent}", 1),
        ("sluice_duplicates_skipped_total", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(counters, expected);
    let expected_histograms: BTreeMap<String, usize> = [
        ("sluice_handler_duration_seconds{outcome=ok}", 3),
        ("sluice_handler_duration_seconds{outcome=error}", 2),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(histograms, expected_histograms);
    assert_eq!(
        gauges.get("sluice_in_flight"),
        Some(&0.0),
        "nothing left in flight"
    );
}

/// Five publishes, six deliveries: one acked, one retried then acked, one permanent
/// failure, and one id published twice (the second copy skipped as a duplicate).
async fn scripted_run() {
    let s = setup(|c| c).await;
    let producer = Producer::new(s.backend.publisher().await.unwrap());
    for id in ["ok", "flaky", "broken", "twice", "twice"] {
        producer
            .publish(&s.topic, Message::builder(id).id(id).build().unwrap())
            .await
            .unwrap();
    }
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(|payload, ctx: Context| async move {
            match (&payload[..], ctx.attempt()) {
                (b"flaky", 1) => Err(HandlerError::transient("first try fails")),
                (b"broken", _) => Err(HandlerError::permanent("never works")),
                _ => Ok(()),
            }
        }),
    )
    .concurrency(1)
    .backoff(
        Backoff::exponential(Duration::from_millis(10), Duration::from_millis(10))
            .jitter(Jitter::None),
    )
    .idempotency(Idempotency::new(InMemoryStore::new()))
    .build();
    let stats = worker.stats();
    let running = Running::start(worker);
    wait_until("all settled", Duration::from_secs(10), || {
        let s = stats.snapshot();
        s.acked + s.dead_lettered + s.duplicates_skipped == 5
    })
    .await;
    running.stop().await;
}
