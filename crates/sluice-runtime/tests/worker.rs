//! Worker behaviour over the in-memory reference backend, under tokio's paused clock.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{setup, wait_until, Events, Running};
use sluice_core::{Backend, Delivery, Envelope, Message, Subscriber};
use sluice_runtime::{
    json_handler, raw_handler, Backoff, Context, HandlerError, Idempotency, InMemoryStore, Jitter,
    OutcomeKind, RateLimit, Worker,
};

fn fast_backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1)).jitter(Jitter::None)
}

#[tokio::test(start_paused = true)]
async fn an_undecodable_payload_is_dead_lettered_without_running_the_handler() {
    let s = setup(|c| c).await;
    s.publish(Message::json_builder("{not json").id("m1").build().unwrap())
        .await;
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let events = Events::default();
    #[derive(serde::Deserialize)]
    struct Order {
        #[allow(dead_code)]
        id: u64,
    }
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        json_handler(move |_o: Order, _c: Context| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }),
    )
    .observer(events.observer())
    .build();
    let running = Running::start(worker);
    wait_until("dead-lettered", Duration::from_secs(5), || {
        events.count(|k| matches!(k, OutcomeKind::DeadLettered { .. })) == 1
    })
    .await;
    running.stop().await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "the handler must not run on an undecodable payload"
    );
    let dlq = s.backend.dlq_list(&s.subscription, 10).await.unwrap();
    let envelope = dlq[0].envelope.clone().expect("envelope");
    assert_eq!(envelope.reason, "undecodable payload");
    assert!(
        envelope
            .last_error
            .unwrap()
            .contains("payload is not a valid"),
        "reason names the decode error"
    );
}

#[tokio::test(start_paused = true)]
async fn a_delivery_over_max_attempts_is_dead_lettered_without_running_the_handler() {
    let s = setup(|c| c.max_attempts(2).lease(Duration::from_secs(1))).await;
    s.publish(
        Message::builder("crashes the process")
            .id("poison")
            .build()
            .unwrap(),
    )
    .await;
    // Two consumers "crash" with the message: they receive it and never settle it.
    let raw = s.backend.subscribe(&s.subscription).await.unwrap();
    for attempt in 1..=2 {
        let got = raw.receive(1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got[0].attempt(), attempt);
        drop(got); // lease runs out
    }
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let events = Events::default();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, _c| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }),
    )
    .observer(events.observer())
    .build();
    let running = Running::start(worker);
    wait_until("dead-lettered", Duration::from_secs(10), || {
        events.count(|k| matches!(k, OutcomeKind::DeadLettered { .. })) == 1
    })
    .await;
    running.stop().await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "the handler must not run past max_attempts"
    );
    let dlq = s.backend.dlq_list(&s.subscription, 10).await.unwrap();
    let envelope = dlq[0].envelope.clone().unwrap();
    assert!(
        envelope.reason.contains("max attempts exceeded"),
        "{}",
        envelope.reason
    );
    assert_eq!(envelope.attempts, 3);
}

#[tokio::test(start_paused = true)]
async fn a_panic_counts_as_a_transient_failure_and_is_retried() {
    let s = setup(|c| c).await;
    s.publish(Message::builder("x").id("m1").build().unwrap())
        .await;
    let events = Events::default();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(|_p, ctx: Context| async move {
            if ctx.attempt() == 1 {
                panic!("boom");
            }
            Ok(())
        }),
    )
    .backoff(fast_backoff())
    .observer(events.observer())
    .build();
    let stats = worker.stats();
    let running = Running::start(worker);
    wait_until("acked", Duration::from_secs(5), || {
        events.count(|k| *k == OutcomeKind::Acked) == 1
    })
    .await;
    running.stop().await;
    let kinds = events.kinds();
    assert!(
        matches!(&kinds[0], OutcomeKind::Retried { error, .. } if error.contains("handler panicked: boom")),
        "{kinds:?}"
    );
    assert_eq!(stats.snapshot().panics, 1);
}

#[tokio::test(start_paused = true)]
async fn transient_errors_back_off_then_dead_letter_with_the_last_error() {
    let s = setup(|c| c.max_attempts(3)).await;
    s.publish(Message::builder("x").id("m1").build().unwrap())
        .await;
    let events = Events::default();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(|_p, ctx: Context| async move {
            Err(HandlerError::transient(format!(
                "downstream 503 on attempt {}",
                ctx.attempt()
            )))
        }),
    )
    .backoff(fast_backoff())
    .observer(events.observer())
    .build();
    let running = Running::start(worker);
    wait_until("dead-lettered", Duration::from_secs(10), || {
        events.count(|k| matches!(k, OutcomeKind::DeadLettered { .. })) == 1
    })
    .await;
    running.stop().await;
    let retries: Vec<Duration> = events
        .kinds()
        .into_iter()
        .filter_map(|k| match k {
            OutcomeKind::Retried { after, .. } => Some(after),
            _ => None,
        })
        .collect();
    assert_eq!(
        retries,
        vec![Duration::from_millis(100), Duration::from_millis(200)],
        "backoff doubles per attempt"
    );
    let envelope = s.backend.dlq_list(&s.subscription, 1).await.unwrap()[0]
        .envelope
        .clone()
        .unwrap();
    assert_eq!(
        envelope.last_error.as_deref(),
        Some("downstream 503 on attempt 3")
    );
    assert!(envelope.reason.contains("3 of 3"), "{}", envelope.reason);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_dead_letters_at_once() {
    let s = setup(|c| c).await;
    s.publish(Message::builder("x").id("m1").build().unwrap())
        .await;
    let events = Events::default();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(|_p, _c| async { Err(HandlerError::permanent("card number invalid")) }),
    )
    .observer(events.observer())
    .build();
    let running = Running::start(worker);
    wait_until("dead-lettered", Duration::from_secs(5), || {
        !events.kinds().is_empty()
    })
    .await;
    running.stop().await;
    assert_eq!(
        events.kinds(),
        vec![OutcomeKind::DeadLettered {
            reason: "permanent error".into()
        }]
    );
    let dlq = s.backend.dlq_list(&s.subscription, 1).await.unwrap();
    assert_eq!(Envelope::read(&dlq[0].message).unwrap().attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn two_concurrent_deliveries_of_one_id_run_the_handler_once() {
    let s = setup(|c| c).await;
    // No dedup window on the topic: both copies are delivered, as after a producer retry.
    s.publish(Message::builder("charge").id("order-42").build().unwrap())
        .await;
    s.publish(Message::builder("charge").id("order-42").build().unwrap())
        .await;
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let events = Events::default();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, _c| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok(())
            }
        }),
    )
    .concurrency(2)
    .idempotency(Idempotency::new(InMemoryStore::new()))
    .observer(events.observer())
    .build();
    let running = Running::start(worker);
    wait_until("duplicate skipped", Duration::from_secs(30), || {
        events.count(|k| *k == OutcomeKind::DuplicateSkipped) == 1
    })
    .await;
    running.stop().await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the handler must run once for one id"
    );
    let kinds = events.kinds();
    let in_progress = kinds
        .iter()
        .position(|k| matches!(k, OutcomeKind::DuplicateInProgress { .. }));
    let acked = kinds.iter().position(|k| *k == OutcomeKind::Acked);
    assert!(
        in_progress.is_some() && acked.is_some() && in_progress < acked,
        "the second copy waits while the first runs: {kinds:?}"
    );
    assert_eq!(events.count(|k| *k == OutcomeKind::Acked), 1);
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_in_progress_is_retried_after_the_claim_not_acked() {
    let s = setup(|c| c).await;
    s.publish(Message::builder("charge").id("order-7").build().unwrap())
        .await;
    // Someone else holds the claim for 5 s.
    let store = Arc::new(InMemoryStore::new());
    let key = sluice_core::IdempotencyKey {
        subscription: s.subscription.clone(),
        id: sluice_core::MessageId::new("order-7").unwrap(),
    };
    use sluice_core::IdempotencyStore;
    store.claim(&key, Duration::from_secs(5)).await.unwrap();
    let events = Events::default();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(|_p, _c| async { Ok(()) }),
    )
    .idempotency(Idempotency::from_arc(store.clone()))
    .observer(events.observer())
    .build();
    let running = Running::start(worker);
    wait_until("in progress", Duration::from_secs(4), || {
        !events.kinds().is_empty()
    })
    .await;
    let first = events.kinds()[0].clone();
    let OutcomeKind::DuplicateInProgress { after } = first else {
        panic!("expected in-progress, got {first:?}")
    };
    assert!(
        after <= Duration::from_secs(5) && after > Duration::from_secs(4),
        "retried after the claim's remaining time: {after:?}"
    );
    let stats = s.backend.stats(&s.subscription).await.unwrap();
    assert_eq!(
        stats.delayed,
        Some(1),
        "the duplicate waits for retry, it is not acked"
    );
    // The other holder never completes: its claim expires and this copy runs.
    wait_until("acked", Duration::from_secs(20), || {
        events.count(|k| *k == OutcomeKind::Acked) == 1
    })
    .await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_in_flight_work_after_the_grace_period() {
    let s = setup(|c| c).await;
    s.publish(Message::builder("slow").id("m1").build().unwrap())
        .await;
    let started = Arc::new(AtomicU32::new(0));
    let st = started.clone();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, _c| {
            st.fetch_add(1, Ordering::SeqCst);
            std::future::pending()
        }),
    )
    .shutdown_grace(Duration::from_secs(2))
    .build();
    let running = Running::start(worker);
    wait_until("handler started", Duration::from_secs(5), || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    let stopped_at = tokio::time::Instant::now();
    let report = running.stop().await;
    let waited = stopped_at.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "in-flight work gets the grace period, waited {waited:?}"
    );
    assert_eq!(report.released, 1);
    assert_eq!(report.in_flight, 0);
    // Released without penalty: delivered again at once with the same attempt.
    let again = s
        .backend
        .subscribe(&s.subscription)
        .await
        .unwrap()
        .receive(1, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "the released message is ready again");
    assert_eq!(again[0].attempt(), 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_in_flight_handlers_finish_within_the_grace_period() {
    let s = setup(|c| c).await;
    s.publish(Message::builder("x").id("m1").build().unwrap())
        .await;
    let started = Arc::new(AtomicU32::new(0));
    let st = started.clone();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, _c| {
            st.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(())
            }
        }),
    )
    .shutdown_grace(Duration::from_secs(5))
    .build();
    let running = Running::start(worker);
    wait_until("handler started", Duration::from_secs(5), || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    let report = running.stop().await;
    assert_eq!((report.acked, report.released), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn concurrency_limits_handlers_running_at_once() {
    let s = setup(|c| c).await;
    for i in 0..20 {
        s.publish(Message::builder("x").id(format!("m{i}")).build().unwrap())
            .await;
    }
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_b, _c| {
            let (r, p) = (r.clone(), p.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        }),
    )
    .concurrency(3)
    .build();
    let stats = worker.stats();
    let running = Running::start(worker);
    wait_until("all acked", Duration::from_secs(10), || {
        stats.snapshot().acked == 20
    })
    .await;
    running.stop().await;
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "at most 3 handlers at once, and the limit is used"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_drains_the_backlog_at_the_set_rate() {
    let s = setup(|c| c).await;
    for i in 0..30 {
        s.publish(Message::builder("x").id(format!("m{i}")).build().unwrap())
            .await;
    }
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(|_b, _c| async { Ok(()) }),
    )
    .rate_limit(RateLimit::per_second(10.0))
    .build();
    let stats = worker.stats();
    let start = tokio::time::Instant::now();
    let running = Running::start(worker);
    wait_until("all acked", Duration::from_secs(10), || {
        stats.snapshot().acked == 30
    })
    .await;
    let took = start.elapsed();
    running.stop().await;
    // A burst of 10, then 20 more at 10/s.
    assert!(
        took >= Duration::from_millis(1900) && took <= Duration::from_millis(2500),
        "30 messages at 10/s (burst 10) took {took:?}"
    );
    let remaining = s.backend.stats(&s.subscription).await.unwrap();
    assert_eq!(remaining.ready, Some(0));
}

#[tokio::test(start_paused = true)]
async fn a_message_already_done_past_max_attempts_is_skipped_not_dead_lettered() {
    // Succeeded on its last attempt, but the ack was lost: it comes back over the limit.
    let s = setup(|c| c.max_attempts(1).lease(Duration::from_secs(1))).await;
    s.publish(
        Message::builder("x")
            .id("done-then-lost-ack")
            .build()
            .unwrap(),
    )
    .await;
    let store = Arc::new(InMemoryStore::new());
    let key = sluice_core::IdempotencyKey {
        subscription: s.subscription.clone(),
        id: sluice_core::MessageId::new("done-then-lost-ack").unwrap(),
    };
    use sluice_core::IdempotencyStore;
    let sluice_core::Claim::Acquired(token) =
        store.claim(&key, Duration::from_secs(1)).await.unwrap()
    else {
        panic!("fresh key")
    };
    store
        .complete(&key, &token, Duration::from_secs(3600))
        .await
        .unwrap();
    let raw = s.backend.subscribe(&s.subscription).await.unwrap();
    drop(raw.receive(1, Duration::from_secs(1)).await.unwrap()); // attempt 1, ack lost
    let events = Events::default();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(|_p, _c| async { panic!("the handler must not run again") }),
    )
    .idempotency(Idempotency::from_arc(store))
    .observer(events.observer())
    .build();
    let running = Running::start(worker);
    wait_until("settled", Duration::from_secs(5), || {
        !events.kinds().is_empty()
    })
    .await;
    running.stop().await;
    assert_eq!(events.kinds(), vec![OutcomeKind::DuplicateSkipped]);
    assert_eq!(
        s.backend
            .stats(&s.subscription)
            .await
            .unwrap()
            .dead_lettered,
        Some(0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_global_rate_limit_is_shared_by_every_worker_naming_it() {
    let s = setup(|c| c).await;
    for i in 0..30 {
        s.publish(Message::builder("x").id(format!("m{i}")).build().unwrap())
            .await;
    }
    let start = tokio::time::Instant::now();
    let limiter: Arc<dyn sluice_core::LimiterStore> =
        Arc::new(sluice_core::MemoryLimiter::with_clock(Box::new(
            move || start.elapsed().as_secs_f64() * 1000.0,
        )));
    let mut workers = Vec::new();
    let mut all_stats = Vec::new();
    for _ in 0..3 {
        let worker = Worker::builder(
            s.backend.subscribe(&s.subscription).await.unwrap(),
            raw_handler(|_b, _c| async { Ok(()) }),
        )
        .rate_limit(RateLimit::global("stripe", 10.0))
        .limiter(limiter.clone())
        .build();
        all_stats.push(worker.stats());
        workers.push(Running::start(worker));
    }
    let start = tokio::time::Instant::now();
    wait_until("all acked", Duration::from_secs(20), || {
        all_stats.iter().map(|s| s.snapshot().acked).sum::<u64>() == 30
    })
    .await;
    let took = start.elapsed();
    for running in workers {
        running.stop().await;
    }
    // Three workers, one limit: a burst of 10, then 20 more at 10/s in all (not 30/s).
    assert!(
        took >= Duration::from_millis(1900) && took <= Duration::from_millis(2600),
        "30 messages at 10/s shared by three workers took {took:?}"
    );
}

#[tokio::test]
#[should_panic(expected = "needs a limiter every worker sharing it reaches")]
async fn a_global_rate_limit_without_a_limiter_is_refused_at_build() {
    let s = setup(|c| c).await;
    let _ = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(|_b, _c| async { Ok(()) }),
    )
    .rate_limit(RateLimit::global("stripe", 10.0))
    .build();
}

/// A downstream down for 20 s: the handler fails for every message meanwhile.
struct Downstream {
    down: std::sync::atomic::AtomicBool,
    calls_while_down: AtomicU32,
}

async fn outage(
    breaker: Option<sluice_runtime::CircuitBreaker>,
) -> (u32, sluice_runtime::observe::StatsSnapshot, u64) {
    let s = setup(|c| c.max_attempts(10)).await;
    for i in 0..50 {
        s.publish(Message::builder("x").id(format!("m{i}")).build().unwrap())
            .await;
    }
    let downstream = Arc::new(Downstream {
        down: std::sync::atomic::AtomicBool::new(true),
        calls_while_down: AtomicU32::new(0),
    });
    let d = downstream.clone();
    let mut builder = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_b, _c| {
            let d = d.clone();
            async move {
                if d.down.load(Ordering::SeqCst) {
                    d.calls_while_down.fetch_add(1, Ordering::SeqCst);
                    return Err(HandlerError::transient(std::io::Error::other("503")));
                }
                Ok(())
            }
        }),
    )
    .concurrency(1)
    .backoff(fast_backoff());
    if let Some(breaker) = breaker {
        builder = builder.circuit_breaker(breaker);
    }
    let worker = builder.build();
    let stats = worker.stats();
    let running = Running::start(worker);
    tokio::time::sleep(Duration::from_secs(20)).await;
    downstream.down.store(false, Ordering::SeqCst);
    let recovered = tokio::time::Instant::now();
    wait_until("every message settled", Duration::from_secs(60), || {
        let snap = stats.snapshot();
        snap.acked + snap.dead_lettered == 50
    })
    .await;
    let took = recovered.elapsed();
    let snapshot = running.stop().await;
    (
        downstream.calls_while_down.load(Ordering::SeqCst),
        snapshot,
        took.as_millis() as u64,
    )
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_spends_only_its_probes_and_nothing_reaches_the_dlq() {
    let breaker = sluice_runtime::CircuitBreaker::new()
        .min_calls(5)
        .window(Duration::from_secs(10))
        .cool_down(Duration::from_secs(5))
        .probes(1);
    let (calls, stats, recovery_ms) = outage(Some(breaker)).await;
    // 5 failures open it, then one probe per 5 s cool-down over the 20 s outage (each probe
    // spends an attempt of the message it picks: 1 + 4 of 10 at most).
    assert!(
        calls <= 5 + 4 + 1,
        "{calls} handler calls while the downstream was down: the failures that opened the circuit and the probes only"
    );
    assert_eq!(stats.dead_lettered, 0, "nothing reaches the DLQ: {stats:?}");
    assert_eq!(stats.acked, 50);
    assert!(
        recovery_ms <= 5_000 + 2_000,
        "everything handled {recovery_ms} ms after the downstream came back: within one cool-down"
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_circuit_breaker_an_outage_burns_the_attempts_into_the_dlq() {
    let (calls, stats, _) = outage(None).await;
    assert!(calls >= 500, "{calls}: every message's ten attempts spent");
    assert_eq!(stats.dead_lettered, 50, "{stats:?}");
}
