//! Flow control: a global rate limit is one bucket, whichever connection takes from it; a
//! key's backlog does not hold up another key.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::limit::Rate;
use sluice_core::{Backend, Message, Subscriber, SubscriptionConfig};
use sluice_runtime::{raw_handler, CancellationToken, Context, KeyLimit, Worker};
use tokio::time::Instant;

use crate::fixture::{Fixture, Outcome};
use crate::harness::Harness;
use crate::wait::Must;

/// Two connections' subscribers take tokens of one limit: the second sees what the first
/// took (the backend keeps one bucket), never its own full burst. Tokens refill at 0.001/s,
/// so none does during the scenario. The same for a global concurrency bound's slots.
pub async fn global_rate_limit_is_one_bucket_across_connections<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "global_rate_limit_is_one_bucket_across_connections").await;
    if let Some(skip) = f.gate() {
        return skip;
    }
    let topic = f.topic("limited").await;
    let first = f.subscribe(&topic, "first").await;
    let (second_name, _) = f
        .subscribe_with("second", SubscriptionConfig::new(topic.clone()))
        .await;
    let other = h.connect().await.must("connecting a second time");
    let second = other
        .subscribe(&second_name)
        .await
        .must("subscribing on the second connection");
    let (one, two) = (
        first
            .limiter()
            .expect("a backend declaring native global rate limits has a limiter"),
        second
            .limiter()
            .expect("a backend declaring native global rate limits has a limiter"),
    );
    let name = topic.as_str();
    let rate = Rate {
        per_second: 0.001,
        burst: 5,
    };
    let take = |limiter: &std::sync::Arc<dyn sluice_core::LimiterStore>, want| {
        let limiter = limiter.clone();
        async move {
            limiter
                .take(name, rate, 0, want)
                .await
                .must("taking tokens")
                .granted
        }
    };
    assert_eq!(take(&one, 3).await, 3, "a new limit starts with its burst");
    assert_eq!(
        take(&two, 5).await,
        2,
        "the second connection shares the first's bucket"
    );
    assert_eq!(take(&one, 1).await, 0, "the burst is spent for both");
    // Global concurrency slots live in the same limiter: one bound for both connections.
    let slots = |limiter: &std::sync::Arc<dyn sluice_core::LimiterStore>, holder, want| {
        let limiter = limiter.clone();
        async move {
            let request = sluice_core::SlotsRequest {
                max: 2,
                hold: 0,
                want,
                ttl: std::time::Duration::from_secs(60),
            };
            limiter
                .slots(name, holder, request)
                .await
                .must("taking slots")
        }
    };
    assert_eq!(slots(&one, "first", 1).await, 1);
    assert_eq!(
        slots(&two, "second", 5).await,
        1,
        "the second connection sees the first's slot"
    );
    assert_eq!(slots(&one, "third", 1).await, 0, "2 held in all");
    let _ = first.close().await;
    let _ = second.close().await;
    f.finish().await
}

/// Tenant `a` floods the subscription (300 messages, 60 s at its 5/s), then tenant `b`
/// sends 10: a worker with a per-key limit handles `b`'s within seconds — it parks and
/// defers `a`'s backlog in the broker instead of serving it first — and never runs `a` past
/// its own limit. Every backend: the limit is the runtime's, the deferral a `retry`.
pub async fn key_limit_keeps_one_keys_backlog_from_holding_up_another<H: Harness>(
    h: &H,
) -> Outcome {
    let f = Fixture::new(
        h,
        "key_limit_keeps_one_keys_backlog_from_holding_up_another",
    )
    .await;
    if let Some(skip) = f.gate() {
        return skip;
    }
    let topic = f.topic("tenants").await;
    let (_, subscriber) = f
        .subscribe_with(
            "fair",
            SubscriptionConfig::new(topic.clone()).max_attempts(10),
        )
        .await;
    let tenant = |tenant: &str, i: usize| {
        Message::builder("x")
            .id(format!("{tenant}-{i}"))
            .header("tenant", tenant)
            .build()
            .must("building a message")
    };
    for i in 0..300 {
        f.publish(&topic, tenant("a", i)).await;
    }
    for i in 0..10 {
        f.publish(&topic, tenant("b", i)).await;
    }
    let calls: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let c = calls.clone();
    let worker = Worker::builder(
        subscriber,
        raw_handler(move |_p, ctx: Context| {
            let t = ctx.message().header("tenant").unwrap_or("").to_owned();
            c.lock().unwrap().push((t, Instant::now()));
            async { Ok(()) }
        }),
    )
    .key_limit(KeyLimit::header("tenant").per_second(5.0).max_parked(16))
    .build();
    let live = worker.stats();
    let start = Instant::now();
    let stop = CancellationToken::new();
    let running = worker.spawn(stop.clone());
    let count = |who: &str| {
        calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == who)
            .count()
    };
    // a's backlog takes 60 s at its 5/s: b done well before that proves it did not wait
    // behind it. 50 s, not less: the SQS emulator shares its one process with the suite's
    // other scenarios running beside this one, and slows under them.
    let deadline = start + Duration::from_secs(50);
    while count("b") < 10 {
        assert!(
            Instant::now() < deadline,
            "tenant b's 10 messages not handled 50 s after the start ({} were, and {} of a's): \
             they wait behind a's backlog; worker: {:?}",
            count("b"),
            count("a"),
            live.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b_done = start.elapsed();
    let a_ran = count("a");
    stop.cancel();
    let stats = running.await.must("the worker task");
    // a's burst of 5, then 5/s (and slack for the clock's granularity).
    let a_limit = 5.0 + 5.0 * b_done.as_secs_f64() + 2.0;
    assert!(
        a_ran as f64 <= a_limit,
        "tenant a ran {a_ran} times in {b_done:?}: over its 5/s"
    );
    println!(
        "{}: tenant b's 10 handled {b_done:.2?} after the start",
        h.name()
    );
    assert!(stats.deferred > 0, "a's backlog was deferred: {stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    f.finish().await
}
