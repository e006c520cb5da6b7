//! Timeouts, automatic lease extension and its hard cap, under tokio's paused clock.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{setup, wait_until, Events, Running};
use sluice_core::{Backend, Message, Subscriber};
use sluice_runtime::{
    raw_handler, Backoff, Context, Idempotency, InMemoryStore, Jitter, LeaseExtension, OutcomeKind,
    Worker,
};

#[tokio::test(start_paused = true)]
async fn a_handler_past_its_timeout_is_a_transient_failure_and_is_retried() {
    let s = setup(|c| c).await;
    s.publish(Message::builder("x").id("slow-once").build().unwrap())
        .await;
    let events = Events::default();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(|_p, ctx: Context| async move {
            if ctx.attempt() == 1 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Ok(())
        }),
    )
    .timeout(Duration::from_secs(2))
    .backoff(
        Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1))
            .jitter(Jitter::None),
    )
    .observer(events.observer())
    .build();
    let running = Running::start(worker);
    wait_until("acked", Duration::from_secs(10), || {
        events.count(|k| *k == OutcomeKind::Acked) == 1
    })
    .await;
    let report = running.stop().await;
    let kinds = events.kinds();
    assert!(
        matches!(&kinds[0], OutcomeKind::Retried { error, after } if error.contains("timed out after 2s") && *after == Duration::from_millis(100)),
        "the timed-out attempt is retried with backoff: {kinds:?}"
    );
    assert_eq!(report.timeouts, 1);
}

#[tokio::test(start_paused = true)]
async fn lease_extension_keeps_a_long_handler_from_being_redelivered() {
    // Lease 10 s; the handler takes 60 s.
    let s = setup(|c| c.lease(Duration::from_secs(10))).await;
    s.publish(Message::builder("long job").id("m1").build().unwrap())
        .await;
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let events = Events::default();
    let store = Arc::new(InMemoryStore::new());
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, _c| {
            r.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            }
        }),
    )
    .idempotency(Idempotency::from_arc(store.clone()))
    .observer(events.observer())
    .build();
    let running = Running::start(worker);
    wait_until("handler started", Duration::from_secs(5), || {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;
    // A competing consumer polls the whole time: it must never get the message.
    let competitor = s.backend.subscribe(&s.subscription).await.unwrap();
    let stolen = competitor
        .receive(1, Duration::from_secs(70))
        .await
        .unwrap();
    assert!(
        stolen.is_empty(),
        "the message was redelivered while its handler ran: attempt {:?}",
        stolen.first().map(sluice_core::Delivery::attempt)
    );
    wait_until("acked", Duration::from_secs(5), || {
        events.count(|k| *k == OutcomeKind::Acked) == 1
    })
    .await;
    let report = running.stop().await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(
        report.lease_extensions >= 10,
        "about one extension every 5 s over 60 s, got {}",
        report.lease_extensions
    );
    assert_eq!(events.kinds(), vec![OutcomeKind::Acked]);
    let stats = s.backend.stats(&s.subscription).await.unwrap();
    assert_eq!((stats.ready, stats.in_flight), (Some(0), Some(0)));
}

#[tokio::test(start_paused = true)]
async fn without_lease_extension_a_long_handler_loses_its_lease() {
    let s = setup(|c| c.lease(Duration::from_secs(10))).await;
    s.publish(Message::builder("long job").id("m1").build().unwrap())
        .await;
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, _c| {
            r.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            }
        }),
    )
    .lease_extension(LeaseExtension::Off)
    .concurrency(1)
    .build();
    let running = Running::start(worker);
    wait_until("handler started", Duration::from_secs(5), || {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;
    let competitor = s.backend.subscribe(&s.subscription).await.unwrap();
    let stolen = competitor
        .receive(1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        stolen.len(),
        1,
        "the control case: without extension the lease runs out"
    );
    assert_eq!(sluice_core::Delivery::attempt(&stolen[0]), 2);
    drop(stolen);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_handler_past_the_hard_cap_is_abandoned_and_its_delivery_released() {
    let s = setup(|c| c.lease(Duration::from_secs(10))).await;
    s.publish(Message::builder("stuck").id("m1").build().unwrap())
        .await;
    let events = Events::default();
    let runs = Arc::new(AtomicU32::new(0));
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, ctx: Context| {
            let first = runs.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    std::future::pending::<()>().await;
                }
                assert_eq!(
                    ctx.attempt(),
                    1,
                    "a release does not count as an attempt on memory:"
                );
                Ok(())
            }
        }),
    )
    .lease_extension(LeaseExtension::UpTo(Duration::from_secs(45)))
    .observer(events.observer())
    .build();
    let running = Running::start(worker);
    let started = tokio::time::Instant::now();
    wait_until("released", Duration::from_secs(60), || {
        events.count(|k| *k == OutcomeKind::Released) == 1
    })
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(45) && took < Duration::from_secs(47),
        "abandoned at the cap, after {took:?}"
    );
    wait_until("acked", Duration::from_secs(10), || {
        events.count(|k| *k == OutcomeKind::Acked) == 1
    })
    .await;
    running.stop().await;
}
