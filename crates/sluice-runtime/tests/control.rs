//! Operator control through the limiter's flags: a paused subscription's workers stop
//! pulling and go on when resumed; a worker with a circuit breaker lists its state. Tokio's
//! paused clock; the limiter is the in-process one on that clock.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{setup, wait_until, Running};
use sluice_core::limit::{circuit_flags, pause_flag};
use sluice_core::{Backend, LimiterStore, MemoryLimiter, Message};
use sluice_runtime::{raw_handler, CircuitBreaker, Worker, CONTROL_EVERY};
use tokio::time::Instant;

fn limiter() -> Arc<dyn LimiterStore> {
    let start = Instant::now();
    Arc::new(MemoryLimiter::with_clock(Box::new(move || {
        start.elapsed().as_secs_f64() * 1000.0
    })))
}

#[tokio::test(start_paused = true)]
async fn a_paused_subscription_pulls_nothing_until_resumed() {
    let s = setup(|c| c).await;
    let store = limiter();
    let flag = pause_flag(s.subscription.as_str());
    store
        .set_flag(&flag, Some("by the test"), None)
        .await
        .unwrap();
    for i in 0..5 {
        s.publish(Message::builder("x").id(format!("m{i}")).build().unwrap())
            .await;
    }
    let handled = Arc::new(AtomicU32::new(0));
    let h = handled.clone();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, _c| {
            h.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }),
    )
    .limiter(store.clone())
    .build();
    let running = Running::start(worker);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        handled.load(Ordering::SeqCst),
        0,
        "nothing pulled while paused"
    );
    store.set_flag(&flag, None, None).await.unwrap();
    let resumed = Instant::now();
    wait_until(
        "all 5 handled after the resume",
        Duration::from_secs(10),
        || handled.load(Ordering::SeqCst) == 5,
    )
    .await;
    assert!(resumed.elapsed() <= CONTROL_EVERY + Duration::from_millis(500));
    // Paused again while running: what is in flight finishes, nothing new is pulled.
    store.set_flag(&flag, Some("again"), None).await.unwrap();
    tokio::time::sleep(CONTROL_EVERY * 2).await;
    for i in 5..8 {
        s.publish(Message::builder("x").id(format!("m{i}")).build().unwrap())
            .await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(handled.load(Ordering::SeqCst), 5, "paused again");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_with_a_breaker_lists_its_circuit_state_while_it_runs() {
    let s = setup(|c| c).await;
    let store = limiter();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(|_p, _c| async { Ok(()) }),
    )
    .circuit_breaker(CircuitBreaker::new())
    .limiter(store.clone())
    .build();
    let running = Running::start(worker);
    tokio::time::sleep(CONTROL_EVERY).await;
    let prefix = circuit_flags(s.subscription.as_str());
    let listed = store.flags(&prefix).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].1, "closed");
    running.stop().await;
    assert!(
        store.flags(&prefix).await.unwrap().is_empty(),
        "a stopped worker's state is gone"
    );
}
