//! Global concurrency (`WorkerBuilder::global_concurrency`): a bound on deliveries handled at
//! once across every worker naming it, with slots that a crashed holder loses after its
//! lease. Tokio's paused clock; the limiter is the in-process one on that clock.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{setup, wait_until, Running};
use sluice_core::limit::SlotsRequest;
use sluice_core::{Backend, LimiterStore, MemoryLimiter, Message};
use sluice_runtime::{raw_handler, Worker, SLOT_LEASE};
use tokio::time::Instant;

fn limiter() -> Arc<dyn LimiterStore> {
    let start = Instant::now();
    Arc::new(MemoryLimiter::with_clock(Box::new(move || {
        start.elapsed().as_secs_f64() * 1000.0
    })))
}

/// Handler calls running now, and the most seen at once.
#[derive(Default)]
struct Gauge {
    now: AtomicU32,
    peak: AtomicU32,
    done: AtomicU32,
}

#[tokio::test(start_paused = true)]
async fn two_workers_share_one_bound() {
    let s = setup(|c| c).await;
    for i in 0..60 {
        s.publish(Message::builder("x").id(format!("m{i}")).build().unwrap())
            .await;
    }
    let store = limiter();
    let gauge = Arc::new(Gauge::default());
    let mut running = Vec::new();
    for _ in 0..2 {
        let g = gauge.clone();
        let worker = Worker::builder(
            s.backend.subscribe(&s.subscription).await.unwrap(),
            raw_handler(move |_p, _c| {
                let g = g.clone();
                async move {
                    let now = g.now.fetch_add(1, Ordering::SeqCst) + 1;
                    g.peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    g.now.fetch_sub(1, Ordering::SeqCst);
                    g.done.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .concurrency(8)
        .global_concurrency("render", 3)
        .limiter(store.clone())
        .build();
        running.push(Running::start(worker));
    }
    wait_until("all 60 handled", Duration::from_secs(30), || {
        gauge.done.load(Ordering::SeqCst) == 60
    })
    .await;
    for r in running {
        r.stop().await;
    }
    assert_eq!(
        gauge.peak.load(Ordering::SeqCst),
        3,
        "3 at once across both workers (16 handler slots), and 3 reached"
    );
    // Every slot was given back.
    let all = SlotsRequest {
        max: 3,
        hold: 0,
        want: 3,
        ttl: Duration::from_secs(1),
    };
    assert_eq!(store.slots("render", "check", all).await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_crashed_holders_slots_are_free_again_after_its_lease() {
    let s = setup(|c| c).await;
    for i in 0..5 {
        s.publish(Message::builder("x").id(format!("m{i}")).build().unwrap())
            .await;
    }
    let store = limiter();
    // A worker that took every slot and died: it never calls again.
    let crashed = SlotsRequest {
        max: 2,
        hold: 0,
        want: 2,
        ttl: SLOT_LEASE,
    };
    assert_eq!(store.slots("render", "dead", crashed).await.unwrap(), 2);
    let done = Arc::new(AtomicU32::new(0));
    let first: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let (d, f) = (done.clone(), first.clone());
    let start = Instant::now();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, _c| {
            f.lock().unwrap().get_or_insert_with(Instant::now);
            d.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }),
    )
    .global_concurrency("render", 2)
    .limiter(store.clone())
    .build();
    let running = Running::start(worker);
    wait_until("all 5 handled", Duration::from_secs(60), || {
        done.load(Ordering::SeqCst) == 5
    })
    .await;
    running.stop().await;
    let waited = first.lock().unwrap().unwrap() - start;
    assert!(
        waited >= SLOT_LEASE - Duration::from_millis(1)
            && waited <= SLOT_LEASE + Duration::from_secs(1),
        "the first delivery ran {waited:?} after the start: when the dead holder's lease ran out"
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_handler_keeps_its_slot_past_the_lease() {
    let s = setup(|c| c.lease(Duration::from_secs(120))).await;
    for i in 0..2 {
        s.publish(Message::builder("x").id(format!("m{i}")).build().unwrap())
            .await;
    }
    let store = limiter();
    let gauge = Arc::new(Gauge::default());
    let mut running = Vec::new();
    for _ in 0..2 {
        let g = gauge.clone();
        let worker = Worker::builder(
            s.backend.subscribe(&s.subscription).await.unwrap(),
            raw_handler(move |_p, _c| {
                let g = g.clone();
                async move {
                    let now = g.now.fetch_add(1, Ordering::SeqCst) + 1;
                    g.peak.fetch_max(now, Ordering::SeqCst);
                    // Three leases long: the heartbeat must keep the slot.
                    tokio::time::sleep(SLOT_LEASE * 3).await;
                    g.now.fetch_sub(1, Ordering::SeqCst);
                    g.done.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .global_concurrency("render", 1)
        .limiter(store.clone())
        .build();
        running.push(Running::start(worker));
    }
    wait_until("both handled", Duration::from_secs(600), || {
        gauge.done.load(Ordering::SeqCst) == 2
    })
    .await;
    for r in running {
        r.stop().await;
    }
    assert_eq!(gauge.peak.load(Ordering::SeqCst), 1, "never two at once");
}

#[tokio::test]
#[should_panic(expected = "WorkerBuilder::limiter")]
async fn a_global_bound_without_a_limiter_is_refused_at_build() {
    let s = setup(|c| c).await;
    let _ = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(|_p, _c| async { Ok(()) }),
    )
    .global_concurrency("render", 2)
    .build();
}

#[tokio::test(start_paused = true)]
async fn waiting_deliveries_give_their_slots_back_so_the_worker_never_deadlocks() {
    // As many global slots as handler slots; every delivery is told to wait once (no key:
    // the worker pauses), and a key limit parks the rest: the waiting ones must not keep
    // the slots the others need.
    let s = setup(|c| c).await;
    for i in 0..6 {
        s.publish(
            Message::builder("x")
                .id(format!("m{i}"))
                .header("tenant", if i % 2 == 0 { "a" } else { "b" })
                .build()
                .unwrap(),
        )
        .await;
    }
    let store = limiter();
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let done = Arc::new(AtomicU32::new(0));
    let (sn, d) = (seen.clone(), done.clone());
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, ctx: sluice_runtime::Context| {
            let first = sn.lock().unwrap().insert(ctx.message().id().to_string());
            let d = d.clone();
            async move {
                if first {
                    return Err(sluice_runtime::HandlerError::rate_limited(
                        Duration::from_secs(1),
                    ));
                }
                d.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }),
    )
    .concurrency(2)
    .global_concurrency("render", 2)
    .key_limit(sluice_runtime::KeyLimit::header("tenant").in_flight(1))
    .limiter(store.clone())
    .build();
    let running = Running::start(worker);
    wait_until("all 6 handled", Duration::from_secs(60), || {
        done.load(Ordering::SeqCst) == 6
    })
    .await;
    running.stop().await;
    let all = SlotsRequest {
        max: 2,
        hold: 0,
        want: 2,
        ttl: Duration::from_secs(1),
    };
    assert_eq!(
        store.slots("render", "check", all).await.unwrap(),
        2,
        "every slot given back"
    );
}
