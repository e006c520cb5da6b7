//! Per-key limits (`KeyLimit`) and `HandlerError::rate_limited`, on tokio's paused clock.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{setup, wait_until, Running};
use sluice_core::{Backend, Message};
use sluice_runtime::{raw_handler, Context, HandlerError, KeyLimit, Worker};
use tokio::time::Instant;

fn tenant(tenant: &str, i: usize) -> Message {
    Message::builder("x")
        .id(format!("{tenant}-{i}"))
        .header("tenant", tenant)
        .build()
        .unwrap()
}

/// Every handler call: tenant, attempt, when.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<(String, u32, Instant)>>>);

impl Calls {
    fn record(&self, ctx: &Context) {
        let tenant = ctx.message().header("tenant").unwrap_or("").to_owned();
        self.0
            .lock()
            .unwrap()
            .push((tenant, ctx.attempt(), Instant::now()));
    }
    fn of(&self, tenant: &str) -> Vec<(u32, Instant)> {
        let calls = self.0.lock().unwrap();
        calls
            .iter()
            .filter(|(t, _, _)| t == tenant)
            .map(|(_, attempt, at)| (*attempt, *at))
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn a_flooding_tenant_does_not_hold_up_another() {
    let s = setup(|c| c).await;
    for i in 0..2_000 {
        s.publish(tenant("a", i)).await;
    }
    for i in 0..100 {
        s.publish(tenant("b", i)).await;
    }
    let calls = Calls::default();
    let c = calls.clone();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, ctx: Context| {
            c.record(&ctx);
            async { Ok(()) }
        }),
    )
    .key_limit(KeyLimit::header("tenant").per_second(50.0))
    .build();
    let stats = worker.stats();
    let start = Instant::now();
    let running = Running::start(worker);
    wait_until("tenant b's 100 handled", Duration::from_secs(10), || {
        calls.of("b").len() == 100
    })
    .await;
    let b_done = calls.of("b").last().unwrap().1 - start;
    // b's own limit: a burst of 50, then 50 more at 50/s.
    assert!(
        b_done <= Duration::from_millis(1_500),
        "tenant b finished {b_done:?} after the start, behind a's backlog of 2000 (40 s at its limit)"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let a = calls.of("a");
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        a.len() as f64 <= 50.0 + 50.0 * elapsed + 2.0,
        "tenant a ran {} times in {elapsed:.1} s: over its 50/s",
        a.len()
    );
    assert!(
        a.len() as f64 >= 50.0 * elapsed * 0.8,
        "tenant a ran only {} times in {elapsed:.1} s: its own limit is not used",
        a.len()
    );
    let snapshot = stats.snapshot();
    assert!(
        snapshot.deferred > 0,
        "a's backlog was deferred: {snapshot:?}"
    );
    assert_eq!(snapshot.dead_lettered, 0);
    assert!(
        a.iter().all(|(attempt, _)| *attempt <= 2),
        "a deferred message comes back once, at its slot"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_number_in_flight_per_key() {
    let s = setup(|c| c).await;
    for i in 0..20 {
        s.publish(tenant("a", i)).await;
        s.publish(tenant("b", i)).await;
    }
    let running_now: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let peaks: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let (r, p) = (running_now.clone(), peaks.clone());
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, ctx: Context| {
            let (r, p) = (r.clone(), p.clone());
            let key = ctx.message().header("tenant").unwrap().to_owned();
            async move {
                {
                    let mut r = r.lock().unwrap();
                    let now = r.entry(key.clone()).or_default();
                    *now += 1;
                    let mut p = p.lock().unwrap();
                    let peak = p.entry(key.clone()).or_default();
                    *peak = (*peak).max(*now);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                *r.lock().unwrap().get_mut(&key).unwrap() -= 1;
                Ok(())
            }
        }),
    )
    .key_limit(KeyLimit::header("tenant").in_flight(2))
    .build();
    let stats = worker.stats();
    let running = Running::start(worker);
    wait_until("all 40 acked", Duration::from_secs(10), || {
        stats.snapshot().acked == 40
    })
    .await;
    running.stop().await;
    let peaks = peaks.lock().unwrap();
    assert_eq!(peaks["a"], 2, "at most 2 of a at once, and 2 reached");
    assert_eq!(peaks["b"], 2);
}

#[tokio::test(start_paused = true)]
async fn rate_limited_parks_only_its_key_without_spending_an_attempt() {
    let s = setup(|c| c).await;
    for i in 0..5 {
        s.publish(tenant("a", i)).await;
    }
    for i in 0..5 {
        s.publish(tenant("b", i)).await;
    }
    let calls = Calls::default();
    let throttled = Arc::new(AtomicBool::new(false));
    let (c, t) = (calls.clone(), throttled.clone());
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, ctx: Context| {
            c.record(&ctx);
            let first_of_a =
                ctx.message().header("tenant") == Some("a") && !t.swap(true, Ordering::SeqCst);
            async move {
                if first_of_a {
                    return Err(HandlerError::rate_limited(Duration::from_secs(10)));
                }
                Ok(())
            }
        }),
    )
    .concurrency(1)
    .key_limit(KeyLimit::header("tenant").per_second(100.0))
    .build();
    let stats = worker.stats();
    let start = Instant::now();
    let running = Running::start(worker);
    wait_until("all 10 acked", Duration::from_secs(30), || {
        stats.snapshot().acked == 10
    })
    .await;
    running.stop().await;
    let b = calls.of("b");
    assert!(
        b.iter().all(|(_, at)| *at - start < Duration::from_secs(1)),
        "b is not held up by a's 429"
    );
    let a = calls.of("a");
    assert_eq!(a.len(), 6, "a's first ran twice, the others once: {a:?}");
    assert!(
        a[1..]
            .iter()
            .all(|(_, at)| *at - start >= Duration::from_secs(10)),
        "nothing of a ran during its 10 s: {a:?}"
    );
    assert!(
        a.iter().all(|(attempt, _)| *attempt == 1),
        "waiting spent no attempt: {a:?}"
    );
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.retried, 0);
    assert_eq!(snapshot.dead_lettered, 0);
}

#[tokio::test(start_paused = true)]
async fn rate_limited_without_a_key_pauses_the_worker() {
    let s = setup(|c| c).await;
    for i in 0..5 {
        s.publish(Message::builder("x").id(format!("m{i}")).build().unwrap())
            .await;
    }
    let calls = Calls::default();
    let throttled = Arc::new(AtomicBool::new(false));
    let (c, t) = (calls.clone(), throttled.clone());
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, ctx: Context| {
            c.record(&ctx);
            let first = !t.swap(true, Ordering::SeqCst);
            async move {
                if first {
                    return Err(HandlerError::rate_limited(Duration::from_secs(5)));
                }
                Ok(())
            }
        }),
    )
    .concurrency(1)
    .build();
    let stats = worker.stats();
    let start = Instant::now();
    let running = Running::start(worker);
    wait_until("all 5 acked", Duration::from_secs(30), || {
        stats.snapshot().acked == 5
    })
    .await;
    running.stop().await;
    let all = calls.of("");
    assert_eq!(all.len(), 6);
    assert!(
        all[1..]
            .iter()
            .all(|(_, at)| *at - start >= Duration::from_secs(5)),
        "nothing ran while the worker was told to wait: {all:?}"
    );
    assert!(all.iter().all(|(attempt, _)| *attempt == 1), "{all:?}");
}

#[tokio::test(start_paused = true)]
async fn a_deferral_never_sends_a_message_to_the_dlq() {
    // Two attempts and no room to park: every message of a past its burst is deferred once,
    // then waits in the worker on its last attempt.
    let s = setup(|c| c.max_attempts(2)).await;
    for i in 0..200 {
        s.publish(tenant("a", i)).await;
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
    .key_limit(KeyLimit::header("tenant").per_second(20.0).max_parked(0))
    .build();
    let stats = worker.stats();
    let running = Running::start(worker);
    wait_until("all 200 acked", Duration::from_secs(60), || {
        stats.snapshot().acked == 200
    })
    .await;
    let snapshot = running.stop().await;
    assert_eq!(snapshot.dead_lettered, 0, "{snapshot:?}");
    assert!(snapshot.deferred >= 150, "{snapshot:?}");
    assert_eq!(handled.load(Ordering::SeqCst), 200, "each handled once");
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_parked_deliveries_and_loses_nothing() {
    let s = setup(|c| c.prefetch(200)).await;
    for i in 0..100 {
        s.publish(tenant("a", i)).await;
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
    .key_limit(KeyLimit::header("tenant").per_second(1.0).burst(1))
    .build();
    let stats = worker.stats();
    let running = Running::start(worker);
    wait_until("deliveries parked", Duration::from_secs(5), || {
        stats.snapshot().delivered >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let snapshot = running.stop().await;
    assert!(
        snapshot.released > 0,
        "parked deliveries released: {snapshot:?}"
    );
    assert_eq!(snapshot.in_flight, 0);
    // Everything not handled is still there for the next worker.
    let done = handled.load(Ordering::SeqCst);
    let rest = Arc::new(AtomicU32::new(0));
    let r = rest.clone();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, _c| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }),
    )
    .build();
    let stats = worker.stats();
    let running = Running::start(worker);
    wait_until("the rest handled", Duration::from_secs(10), || {
        stats.snapshot().acked == u64::from(100 - done)
    })
    .await;
    running.stop().await;
    assert_eq!(done + rest.load(Ordering::SeqCst), 100);
}

#[tokio::test(start_paused = true)]
async fn rate_limited_blocks_a_key_limited_only_in_flight() {
    // No rate: the key's state looks idle the moment its handler returns; the 429 must
    // still block it.
    let s = setup(|c| c).await;
    for i in 0..3 {
        s.publish(tenant("a", i)).await;
    }
    let calls = Calls::default();
    let throttled = Arc::new(AtomicBool::new(false));
    let (c, t) = (calls.clone(), throttled.clone());
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, ctx: Context| {
            c.record(&ctx);
            let first = !t.swap(true, Ordering::SeqCst);
            async move {
                if first {
                    return Err(HandlerError::rate_limited(Duration::from_secs(10)));
                }
                Ok(())
            }
        }),
    )
    .key_limit(KeyLimit::header("tenant").in_flight(1))
    .build();
    let stats = worker.stats();
    let start = Instant::now();
    let running = Running::start(worker);
    wait_until("all 3 acked", Duration::from_secs(30), || {
        stats.snapshot().acked == 3
    })
    .await;
    running.stop().await;
    let a = calls.of("a");
    assert_eq!(a.len(), 4, "{a:?}");
    assert!(
        a[1..]
            .iter()
            .all(|(_, at)| *at - start >= Duration::from_secs(10)),
        "the key waited its 10 s: {a:?}"
    );
    assert_eq!(
        stats.snapshot().delivered,
        3,
        "a run again is not a delivery again"
    );
}
