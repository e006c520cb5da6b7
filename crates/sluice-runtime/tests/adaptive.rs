//! Adaptive concurrency against a simulated downstream of capacity C: C requests are served
//! at once in 100 ms; past C they queue (n in flight take n / C × 100 ms). The limit must
//! settle within ±25 % of C in under 30 s, and follow C when it changes. Tokio's paused
//! clock: the downstream's time is virtual, so the figures are exact and the run is quick.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{setup, Running};
use sluice_core::{Backend, Message};
use sluice_runtime::{raw_handler, AdaptiveConcurrency, Worker};

struct Downstream {
    capacity: AtomicUsize,
    in_flight: AtomicUsize,
}

impl Downstream {
    async fn call(&self) {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let c = self.capacity.load(Ordering::SeqCst);
        let factor = (n as f64 / c as f64).max(1.0);
        tokio::time::sleep(Duration::from_millis(100).mul_f64(factor)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn the_limit_settles_near_the_downstreams_capacity_and_follows_it() {
    let s = setup(|c| c.prefetch(400)).await;
    for i in 0..25_000 {
        s.publish(Message::builder("x").id(format!("m{i}")).build().unwrap())
            .await;
    }
    let downstream = Arc::new(Downstream {
        capacity: AtomicUsize::new(20),
        in_flight: AtomicUsize::new(0),
    });
    let d = downstream.clone();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, _c| {
            let d = d.clone();
            async move {
                d.call().await;
                Ok(())
            }
        }),
    )
    .concurrency(1)
    .adaptive_concurrency(AdaptiveConcurrency::new().min(1).max(200))
    .build();
    let stats = worker.stats();
    let running = Running::start(worker);

    // Each phase: C for 30 s; the limit sampled every 100 ms over its last 10 s.
    let mut report = Vec::new();
    for capacity in [20usize, 40, 10] {
        downstream.capacity.store(capacity, Ordering::SeqCst);
        let mut first_within = None;
        let mut tail = Vec::new();
        for tick in 0..300 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let limit = stats.snapshot().concurrency_limit as f64;
            let within = (limit - capacity as f64).abs() <= 0.25 * capacity as f64;
            if within && first_within.is_none() {
                first_within = Some(tick as f64 / 10.0);
            }
            if tick >= 200 {
                tail.push(limit);
            }
        }
        let (low, high) = tail
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
        let mean = tail.iter().sum::<f64>() / tail.len() as f64;
        println!(
            "capacity {capacity}: within ±25 % after {first_within:?} s; last 10 s: limit {low}..{high}, mean {mean:.1}"
        );
        report.push((capacity, first_within, low, high));
    }
    running.stop().await;
    for (capacity, first_within, low, high) in report {
        let c = capacity as f64;
        assert!(
            first_within.is_some_and(|t| t < 30.0),
            "capacity {capacity}: the limit never came within ±25 %"
        );
        assert!(
            low >= 0.75 * c && high <= 1.25 * c,
            "capacity {capacity}: over the phase's last 10 s the limit ranged {low}..{high}, \
             not within ±25 %"
        );
    }
}
