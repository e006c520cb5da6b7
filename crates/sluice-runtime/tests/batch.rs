//! Batch handlers over the in-memory reference backend, under tokio's paused clock: how
//! batches form, how each message is settled on its own, failures of the whole batch,
//! duplicates, leases and shutdown.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{setup, wait_until, Events, Running};
use sluice_core::{Backend, ClaimToken, IdempotencyKey, IdempotencyStore, Message};
use sluice_runtime::{
    batch_handler, json_batch_handler, Backoff, BatchContext, BatchOutcome, Context, HandlerError,
    Idempotency, InMemoryStore, Jitter, OutcomeKind, Worker,
};
use tokio::time::Instant;

fn fast_backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1)).jitter(Jitter::None)
}

#[derive(Debug, serde::Deserialize)]
struct Item {
    n: u32,
}

fn item(n: u32) -> Message {
    Message::json_builder(format!("{{\"n\":{n}}}"))
        .id(format!("m{n}"))
        .build()
        .unwrap()
}

/// A batch the handler saw: the numbers in it, and when.
type SeenBatch = (Vec<u32>, Instant);

/// Every batch the handler saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<SeenBatch>>>);

impl Seen {
    fn record(&self, batch: &[(Item, Context)]) {
        let ns = batch.iter().map(|(item, _)| item.n).collect();
        self.0.lock().unwrap().push((ns, Instant::now()));
    }
    fn sizes(&self) -> Vec<usize> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(b, _)| b.len())
            .collect()
    }
    fn all(&self) -> Vec<u32> {
        let mut all: Vec<u32> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(b, _)| b.clone())
            .collect();
        all.sort_unstable();
        all
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_closes_when_full_or_max_wait_after_its_first_message() {
    let s = setup(|c| c.prefetch(500)).await;
    for n in 0..250 {
        s.publish(item(n)).await;
    }
    let seen = Seen::default();
    let record = seen.clone();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        json_batch_handler(move |batch: Vec<(Item, Context)>, ctx: BatchContext| {
            assert_eq!(ctx.len(), batch.len());
            record.record(&batch);
            async { Ok(BatchOutcome::AllOk) }
        }),
    )
    .batch(100, Duration::from_secs(2))
    .concurrency(1)
    .build();
    let started = Instant::now();
    let running = Running::start_batch(worker);
    wait_until("250 handled", Duration::from_secs(10), || {
        seen.all().len() == 250
    })
    .await;
    let stats = running.stop().await;
    assert_eq!(
        seen.sizes(),
        vec![100, 100, 50],
        "full batches, then the rest"
    );
    let last = seen.0.lock().unwrap()[2].1;
    assert!(
        last - started >= Duration::from_secs(2),
        "the last batch of 50 waited max_wait for more: {:?}",
        last - started
    );
    assert_eq!(stats.acked, 250, "{stats:?}");
    assert_eq!(stats.delivered, 250, "counted per message: {stats:?}");
    assert_eq!(seen.all(), (0..250).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn each_message_is_settled_on_its_own_ack_retry_and_dead_letter_in_one_batch() {
    let s = setup(|c| c.prefetch(100).max_attempts(3)).await;
    for n in 0..10 {
        s.publish(item(n)).await;
    }
    let seen = Seen::default();
    let record = seen.clone();
    let attempts: Arc<Mutex<Vec<(u32, u32)>>> = Arc::default();
    let a = attempts.clone();
    let events = Events::default();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        json_batch_handler(move |batch: Vec<(Item, Context)>, _ctx: BatchContext| {
            record.record(&batch);
            let outcome = BatchOutcome::PerMessage(
                batch
                    .iter()
                    .map(|(item, ctx)| {
                        a.lock().unwrap().push((item.n, ctx.attempt()));
                        match item.n {
                            3 => Err(HandlerError::permanent("item 3 is invalid")),
                            5 if ctx.attempt() == 1 => Err(HandlerError::retry_after(
                                "downstream busy",
                                Duration::from_secs(1),
                            )),
                            7 => Err(HandlerError::transient("always fails")),
                            _ => Ok(()),
                        }
                    })
                    .collect(),
            );
            async { Ok(outcome) }
        }),
    )
    .batch(50, Duration::from_millis(100))
    .backoff(fast_backoff())
    .observer(events.observer())
    .build();
    let running = Running::start_batch(worker);
    wait_until("every message settled", Duration::from_secs(30), || {
        events.count(|k| matches!(k, OutcomeKind::Acked)) == 8
            && events.count(|k| matches!(k, OutcomeKind::DeadLettered { .. })) == 2
    })
    .await;
    let stats = running.stop().await;
    assert_eq!(seen.sizes()[0], 10, "one batch first: {:?}", seen.sizes());
    let attempts = attempts.lock().unwrap().clone();
    let of = |n| {
        attempts
            .iter()
            .filter(|(m, _)| *m == n)
            .map(|(_, a)| *a)
            .collect::<Vec<_>>()
    };
    assert_eq!(of(0), vec![1], "acked at once, never again");
    assert_eq!(of(3), vec![1], "permanent: dead-lettered at once");
    assert_eq!(of(5), vec![1, 2], "retried after its own delay, then acked");
    assert_eq!(of(7), vec![1, 2, 3], "its own attempts, then dead-lettered");
    assert_eq!(stats.retried, 3, "5 once, 7 twice: {stats:?}");
    let dlq = s.backend.dlq_list(&s.subscription, 10).await.unwrap();
    let mut reasons: Vec<(String, String)> = dlq
        .iter()
        .map(|d| {
            let envelope = d.envelope.clone().expect("envelope");
            (d.message.id().to_string(), envelope.reason)
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons[0].0, "m3");
    assert_eq!(reasons[0].1, "permanent error");
    assert_eq!(reasons[1].0, "m7");
    assert!(
        reasons[1].1.contains("max attempts exhausted"),
        "{reasons:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_poison_message_in_a_batch_of_100_is_dead_lettered_and_the_99_others_acked() {
    let s = setup(|c| c.prefetch(200)).await;
    for n in 0..100 {
        if n == 42 {
            s.publish(
                Message::json_builder("{not json")
                    .id("poison")
                    .build()
                    .unwrap(),
            )
            .await;
        } else {
            s.publish(item(n)).await;
        }
    }
    let seen = Seen::default();
    let record = seen.clone();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        json_batch_handler(move |batch: Vec<(Item, Context)>, _ctx: BatchContext| {
            record.record(&batch);
            async { Ok(BatchOutcome::AllOk) }
        }),
    )
    .batch(100, Duration::from_millis(100))
    .build();
    let running = Running::start_batch(worker);
    wait_until("all settled", Duration::from_secs(10), || {
        seen.all().len() == 99
    })
    .await;
    let stats = running.stop().await;
    assert_eq!(
        seen.sizes(),
        vec![99],
        "the poison never reached the handler"
    );
    assert_eq!((stats.acked, stats.dead_lettered), (99, 1), "{stats:?}");
    let dlq = s.backend.dlq_list(&s.subscription, 10).await.unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].message.id().as_str(), "poison");
    assert_eq!(
        dlq[0].envelope.clone().unwrap().reason,
        "undecodable payload"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_or_timed_out_batch_fails_as_a_whole_and_loses_nothing() {
    let s = setup(|c| c.prefetch(100).max_attempts(5)).await;
    for n in 0..20 {
        s.publish(item(n)).await;
    }
    let runs = Arc::new(Mutex::new(0u32));
    let r = runs.clone();
    let seen = Seen::default();
    let record = seen.clone();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        json_batch_handler(move |batch: Vec<(Item, Context)>, _ctx: BatchContext| {
            let run = {
                let mut runs = r.lock().unwrap();
                *runs += 1;
                *runs
            };
            let record = record.clone();
            async move {
                match run {
                    1 => panic!("the bulk API crashed"),
                    2 => tokio::time::sleep(Duration::from_secs(60)).await,
                    _ => record.record(&batch),
                }
                Ok(BatchOutcome::AllOk)
            }
        }),
    )
    .batch(100, Duration::from_millis(50))
    .timeout(Duration::from_secs(5))
    .backoff(fast_backoff())
    .build();
    let running = Running::start_batch(worker);
    wait_until("all handled", Duration::from_secs(60), || {
        seen.all().len() == 20
    })
    .await;
    let stats = running.stop().await;
    assert_eq!(seen.all(), (0..20).collect::<Vec<_>>(), "nothing lost");
    assert_eq!(stats.panics, 1, "{stats:?}");
    assert_eq!(stats.timeouts, 1, "{stats:?}");
    assert_eq!(stats.retried, 40, "each message retried twice: {stats:?}");
    assert_eq!((stats.acked, stats.dead_lettered), (20, 0), "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn an_error_for_the_whole_batch_is_applied_to_each_message() {
    let s = setup(|c| c.prefetch(100)).await;
    for n in 0..5 {
        s.publish(item(n)).await;
    }
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        batch_handler(|_batch, _ctx: BatchContext| async {
            Err(HandlerError::permanent("schema rejected by the warehouse"))
        }),
    )
    .batch(10, Duration::from_millis(50))
    .build();
    let live = worker.stats();
    let running = Running::start_batch(worker);
    wait_until("dead-lettered", Duration::from_secs(10), || {
        live.snapshot().dead_lettered == 5
    })
    .await;
    running.stop().await;
    let dlq = s.backend.dlq_list(&s.subscription, 10).await.unwrap();
    assert_eq!(dlq.len(), 5);
    let envelope = dlq[0].envelope.clone().unwrap();
    assert_eq!(envelope.reason, "permanent error");
    assert_eq!(
        envelope.last_error.as_deref(),
        Some("schema rejected by the warehouse")
    );
}

#[tokio::test(start_paused = true)]
async fn duplicates_are_dropped_from_the_batch_before_the_handler_sees_them() {
    let s = setup(|c| c.prefetch(100)).await;
    let store = Arc::new(InMemoryStore::new());
    // m2 and m4 were handled before (by another worker, or before a lost ack).
    for id in ["m2", "m4"] {
        let key = IdempotencyKey {
            subscription: s.subscription.clone(),
            id: sluice_core::MessageId::new(id).unwrap(),
        };
        let token: ClaimToken = match store.claim(&key, Duration::from_secs(10)).await.unwrap() {
            sluice_core::Claim::Acquired(token) => token,
            other => panic!("{other:?}"),
        };
        store
            .complete(&key, &token, Duration::from_secs(3600))
            .await
            .unwrap();
    }
    for n in 0..6 {
        s.publish(item(n)).await;
    }
    let seen = Seen::default();
    let record = seen.clone();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        json_batch_handler(move |batch: Vec<(Item, Context)>, _ctx: BatchContext| {
            record.record(&batch);
            async { Ok(BatchOutcome::AllOk) }
        }),
    )
    .batch(10, Duration::from_millis(50))
    .idempotency(Idempotency::from_arc(store.clone()))
    .build();
    let live = worker.stats();
    let running = Running::start_batch(worker);
    wait_until("all settled", Duration::from_secs(10), || {
        let stats = live.snapshot();
        stats.acked + stats.duplicates_skipped == 6
    })
    .await;
    let stats = running.stop().await;
    assert_eq!(seen.all(), vec![0, 1, 3, 5]);
    assert_eq!((stats.acked, stats.duplicates_skipped), (4, 2), "{stats:?}");
    // The handled ones are marked done: a redelivery would be skipped too.
    let key = IdempotencyKey {
        subscription: s.subscription.clone(),
        id: sluice_core::MessageId::new("m1").unwrap(),
    };
    assert!(matches!(
        store.claim(&key, Duration::from_secs(1)).await.unwrap(),
        sluice_core::Claim::Done
    ));
}

#[tokio::test(start_paused = true)]
async fn every_lease_of_a_long_batch_is_extended_and_nothing_is_delivered_twice() {
    let s = setup(|c| c.prefetch(100).lease(Duration::from_secs(2))).await;
    for n in 0..10 {
        s.publish(item(n)).await;
    }
    let seen = Seen::default();
    let record = seen.clone();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        json_batch_handler(move |batch: Vec<(Item, Context)>, _ctx: BatchContext| {
            record.record(&batch);
            async {
                tokio::time::sleep(Duration::from_secs(9)).await;
                Ok(BatchOutcome::AllOk)
            }
        }),
    )
    .batch(10, Duration::from_millis(50))
    .build();
    let live = worker.stats();
    let running = Running::start_batch(worker);
    wait_until("acked", Duration::from_secs(30), || {
        live.snapshot().acked == 10
    })
    .await;
    let stats = running.stop().await;
    assert_eq!(seen.sizes(), vec![10], "handled once: {:?}", seen.sizes());
    assert!(
        stats.lease_extensions >= 10 * 4,
        "each of the 10 leases extended every second: {stats:?}"
    );
    assert_eq!(stats.delivered, 10, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_batch_never_waits_past_half_its_first_lease() {
    let s = setup(|c| c.prefetch(100).lease(Duration::from_secs(2))).await;
    s.publish(item(1)).await;
    let seen = Seen::default();
    let record = seen.clone();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        json_batch_handler(move |batch: Vec<(Item, Context)>, _ctx: BatchContext| {
            record.record(&batch);
            async { Ok(BatchOutcome::AllOk) }
        }),
    )
    .batch(100, Duration::from_secs(60))
    .build();
    let started = Instant::now();
    let running = Running::start_batch(worker);
    wait_until("handled", Duration::from_secs(10), || seen.all().len() == 1).await;
    let waited = seen.0.lock().unwrap()[0].1 - started;
    running.stop().await;
    assert!(
        waited <= Duration::from_millis(1100),
        "closed at half the 2 s lease, not max_wait's 60 s: {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_the_open_batch_handles_it_and_waits_for_it() {
    let s = setup(|c| c.prefetch(100)).await;
    for n in 0..5 {
        s.publish(item(n)).await;
    }
    let seen = Seen::default();
    let record = seen.clone();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        json_batch_handler(move |batch: Vec<(Item, Context)>, _ctx: BatchContext| {
            let record = record.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                record.record(&batch);
                Ok(BatchOutcome::AllOk)
            }
        }),
    )
    .batch(100, Duration::from_secs(20))
    .build();
    let running = Running::start_batch(worker);
    // The 5 are pulled and wait for more (max_wait 20 s); shutdown comes first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(seen.all().is_empty(), "still open");
    let stats = running.stop().await;
    assert_eq!(seen.all(), vec![0, 1, 2, 3, 4], "handled, not released");
    assert_eq!((stats.acked, stats.released), (5, 0), "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_batch_past_the_grace_period_is_abandoned_and_its_messages_released() {
    let s = setup(|c| c.prefetch(100)).await;
    for n in 0..3 {
        s.publish(item(n)).await;
    }
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        json_batch_handler(|_batch: Vec<(Item, Context)>, _ctx: BatchContext| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(BatchOutcome::AllOk)
        }),
    )
    .batch(10, Duration::from_millis(10))
    .shutdown_grace(Duration::from_secs(1))
    .build();
    let live = worker.stats();
    let running = Running::start_batch(worker);
    wait_until("running", Duration::from_secs(5), || {
        live.snapshot().in_flight == 3
    })
    .await;
    let stats = running.stop().await;
    assert_eq!((stats.released, stats.acked), (3, 0), "{stats:?}");
    let raw = s.backend.subscribe(&s.subscription).await.unwrap();
    let again = sluice_core::Subscriber::receive(&raw, 10, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(again.len(), 3, "released at once, not at lease expiry");
}

#[tokio::test(start_paused = true)]
async fn a_keys_messages_are_handled_in_order_when_one_is_retried() {
    let s = setup(|c| c.prefetch(100).max_attempts(5)).await;
    for n in 0..4 {
        for key in ["a", "b"] {
            let message = Message::builder(format!("{key}{n}"))
                .id(format!("{key}{n}"))
                .ordering_key(key)
                .build()
                .unwrap();
            s.publish(message).await;
        }
    }
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let a = acked.clone();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        batch_handler(move |batch, _ctx: BatchContext| {
            let outcome = BatchOutcome::PerMessage(
                batch
                    .iter()
                    .map(|(payload, ctx): &(bytes::Bytes, Context)| {
                        let label = String::from_utf8_lossy(payload).into_owned();
                        if label == "a1" && ctx.attempt() == 1 {
                            return Err(HandlerError::transient("a1 fails once"));
                        }
                        a.lock().unwrap().push(label);
                        Ok(())
                    })
                    .collect(),
            );
            async { Ok(outcome) }
        }),
    )
    .batch(10, Duration::from_millis(20))
    .concurrency(2)
    .backoff(fast_backoff())
    .build();
    let running = Running::start_batch(worker);
    wait_until("8 handled", Duration::from_secs(30), || {
        acked.lock().unwrap().len() == 8
    })
    .await;
    running.stop().await;
    let acked = acked.lock().unwrap().clone();
    for key in ["a", "b"] {
        let order: Vec<&String> = acked.iter().filter(|l| l.starts_with(key)).collect();
        let expected: Vec<String> = (0..4).map(|n| format!("{key}{n}")).collect();
        assert_eq!(
            order,
            expected.iter().collect::<Vec<_>>(),
            "key {key} in publish order"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_batch_stops_pulling_for_its_delay_then_runs_again() {
    let s = setup(|c| c.prefetch(100).max_attempts(5)).await;
    for n in 0..5 {
        s.publish(item(n)).await;
    }
    let seen = Seen::default();
    let record = seen.clone();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        json_batch_handler(move |batch: Vec<(Item, Context)>, _ctx: BatchContext| {
            let first = record.0.lock().unwrap().is_empty();
            record.record(&batch);
            async move {
                if first {
                    return Err(HandlerError::rate_limited(Duration::from_secs(5)));
                }
                Ok(BatchOutcome::AllOk)
            }
        }),
    )
    .batch(10, Duration::from_millis(20))
    .build();
    let live = worker.stats();
    let running = Running::start_batch(worker);
    wait_until("acked", Duration::from_secs(30), || {
        live.snapshot().acked == 5
    })
    .await;
    let stats = running.stop().await;
    let batches = seen.0.lock().unwrap().clone();
    assert_eq!(batches.len(), 2, "{batches:?}");
    assert!(
        batches[1].1 - batches[0].1 >= Duration::from_secs(5),
        "ran again only after the downstream's delay"
    );
    assert_eq!(stats.retried, 5, "{stats:?}");
}
