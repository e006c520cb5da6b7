//! Batch handlers through the runtime: many messages in one call, each settled on its own,
//! on every backend (a batch is built from `receive`s of the backend's own size).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sluice_core::{Message, SubscriptionConfig};
use sluice_runtime::{
    json_batch_handler, BatchContext, BatchOutcome, CancellationToken, Context, HandlerError,
    Outcome as Settled, OutcomeKind, Worker,
};
use tokio::time::Instant;

use crate::fixture::{Fixture, Outcome};
use crate::harness::Harness;
use crate::wait::Must;

const MESSAGES: u32 = 20;

#[derive(serde::Deserialize)]
struct Item {
    n: u32,
}

/// 20 messages and a poison one through a batch handler that fails item 3 for good and item
/// 5 once: the poison is dead-lettered before the handler, 3 is dead-lettered, 5 is retried
/// after its own delay and acked on its second attempt, and the 18 others are acked once.
pub async fn batch_handler_settles_each_message_on_its_own<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "batch_handler_settles_each_message_on_its_own").await;
    if let Some(skip) = f.gate() {
        return skip;
    }
    let topic = f.topic("batches").await;
    let (_, subscriber) = f
        .subscribe_with(
            "bulk",
            SubscriptionConfig::new(topic.clone())
                .max_attempts(3)
                .prefetch(100),
        )
        .await;
    for n in 0..MESSAGES {
        let message = Message::json_builder(format!("{{\"n\":{n}}}"))
            .build()
            .must("building a message");
        f.publish(&topic, message).await;
    }
    let poison = Message::json_builder("{not json")
        .build()
        .must("building a message");
    f.publish(&topic, poison).await;

    let seen: Arc<Mutex<BTreeMap<u32, Vec<u32>>>> = Arc::default();
    let sizes: Arc<Mutex<Vec<usize>>> = Arc::default();
    let (s, z) = (seen.clone(), sizes.clone());
    let delay = f.timing.delay;
    let handler = json_batch_handler(move |batch: Vec<(Item, Context)>, ctx: BatchContext| {
        z.lock().unwrap().push(ctx.len());
        let outcome = BatchOutcome::each(batch.len(), |i| {
            let (item, ctx) = &batch[i];
            s.lock()
                .unwrap()
                .entry(item.n)
                .or_default()
                .push(ctx.attempt());
            match item.n {
                3 => Err(HandlerError::permanent("item 3 is invalid")),
                5 if ctx.attempt() == 1 => Err(HandlerError::retry_after("busy", delay)),
                _ => Ok(()),
            }
        });
        async { Ok(outcome) }
    });
    let settled: Arc<Mutex<Vec<Settled>>> = Arc::default();
    let record = settled.clone();
    let worker = Worker::builder(subscriber, handler)
        .batch(50, std::time::Duration::from_millis(300))
        .observer(move |outcome: &Settled| record.lock().unwrap().push(outcome.clone()))
        .build();
    let stop = CancellationToken::new();
    let running = worker.spawn(stop.clone());
    let count = |pred: &dyn Fn(&OutcomeKind) -> bool| {
        settled
            .lock()
            .unwrap()
            .iter()
            .filter(|o| pred(&o.kind))
            .count()
    };
    let deadline = Instant::now() + f.timing.deadline * 2;
    loop {
        let acked = count(&|k| matches!(k, OutcomeKind::Acked));
        let dead = count(&|k| matches!(k, OutcomeKind::DeadLettered { .. }));
        if acked == MESSAGES as usize - 1 && dead == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{acked} acked of {}, {dead} dead-lettered of 2; handled: {:?}",
            MESSAGES - 1,
            seen.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.cancel();
    let stats = running.await.must("the worker task");
    let seen = seen.lock().unwrap().clone();
    for n in 0..MESSAGES {
        let expected = if n == 5 { vec![1, 2] } else { vec![1] };
        assert_eq!(seen.get(&n), Some(&expected), "attempts of item {n}");
    }
    let mut reasons: Vec<String> = settled
        .lock()
        .unwrap()
        .iter()
        .filter_map(|o| match &o.kind {
            OutcomeKind::DeadLettered { reason } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["permanent error", "undecodable payload"]);
    assert_eq!(stats.retried, 1, "{stats:?}");
    let sizes = sizes.lock().unwrap().clone();
    assert!(
        sizes.iter().any(|&size| size > 1),
        "messages were handled in batches, not one by one: {sizes:?}"
    );
    println!("{}: batch sizes {sizes:?}", h.name());
    f.finish().await
}
