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

const KEYED: usize = 6;

/// A batch's messages: label and attempt, in order.
type Labels = Vec<(String, u32)>;

/// Key `k`'s six messages through a batch handler that fails `k-1`'s first attempt: every
/// message is acked exactly once in the end, none dead-lettered. On a `strict` backend no
/// batch ever holds two messages of the key (one is in flight at a time); on the others, the
/// key's messages after `k-1` in the batch where it failed are retried with it ("held back"),
/// not acked before it.
pub async fn batch_handler_holds_a_keys_later_messages_back_when_one_is_retried<H: Harness>(
    h: &H,
) -> Outcome {
    let f = Fixture::new(
        h,
        "batch_handler_holds_a_keys_later_messages_back_when_one_is_retried",
    )
    .await;
    if let Some(skip) = f.gate() {
        return skip;
    }
    let topic = f
        .topic_with("keyed", sluice_core::TopicConfig::default().ordered(true))
        .await;
    let (_, subscriber) = f
        .subscribe_with(
            "keyed",
            SubscriptionConfig::new(topic.clone())
                .max_attempts(5)
                .prefetch(100),
        )
        .await;
    for n in 0..KEYED {
        // Ids end with the label, so an outcome (which carries the id) names its message.
        let message = Message::builder(format!("k-{n}"))
            .id(format!("{topic}.k-{n}"))
            .ordering_key("k")
            .build()
            .must("building a message");
        f.publish(&topic, message).await;
    }
    // Each batch's labels with their attempts, in order.
    let batches: Arc<Mutex<Vec<Labels>>> = Arc::default();
    let b = batches.clone();
    let handler = sluice_runtime::batch_handler(move |batch, _ctx: BatchContext| {
        let labels: Vec<(String, u32)> = batch
            .iter()
            .map(|(payload, ctx): &(bytes::Bytes, Context)| {
                (String::from_utf8_lossy(payload).into_owned(), ctx.attempt())
            })
            .collect();
        let outcome = BatchOutcome::each(labels.len(), |i| match &labels[i] {
            (label, 1) if label == "k-1" => Err(HandlerError::transient("k-1 fails once")),
            _ => Ok(()),
        });
        b.lock().unwrap().push(labels);
        async { Ok(outcome) }
    });
    let settled: Arc<Mutex<Vec<Settled>>> = Arc::default();
    let record = settled.clone();
    let worker = Worker::builder(subscriber, handler)
        .batch(KEYED, std::time::Duration::from_millis(300))
        .backoff(
            sluice_runtime::Backoff::exponential(f.timing.delay, f.timing.delay)
                .jitter(sluice_runtime::Jitter::None),
        )
        .observer(move |outcome: &Settled| record.lock().unwrap().push(outcome.clone()))
        .build();
    let stop = CancellationToken::new();
    let running = worker.spawn(stop.clone());
    let deadline = Instant::now() + f.timing.deadline * 2;
    loop {
        let acked = settled
            .lock()
            .unwrap()
            .iter()
            .filter(|o| matches!(o.kind, OutcomeKind::Acked))
            .count();
        if acked == KEYED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{acked} of {KEYED} acked; batches: {:?}",
            batches.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.cancel();
    let stats = running.await.must("the worker task");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert_eq!(stats.acked, KEYED as u64, "each acked once: {stats:?}");
    let batches = batches.lock().unwrap().clone();
    if f.caps().ordering == sluice_core::OrderingLevel::Strict {
        for batch in &batches {
            assert!(
                batch.len() <= 1,
                "a strict backend had two of one key in flight: {batches:?}"
            );
        }
    } else {
        let failed = batches
            .iter()
            .find(|b| b.contains(&("k-1".to_owned(), 1)))
            .expect("k-1's first attempt");
        let after: Vec<&String> = failed
            .iter()
            .skip_while(|(label, _)| label != "k-1")
            .skip(1)
            .map(|(label, _)| label)
            .collect();
        let settled = settled.lock().unwrap();
        for label in &after {
            // The held-back retry is the first outcome of that message's first attempt.
            let held = settled.iter().any(|o| {
                o.attempt == 1
                    && matches!(&o.kind, OutcomeKind::Retried { error, .. } if error.contains("held back"))
                    && o.id.ends_with(&format!(".{label}"))
            });
            assert!(held, "{label} was not held back behind k-1: {batches:?}");
        }
        println!(
            "{}: held back behind k-1 in its batch: {after:?}; batches {batches:?}",
            h.name()
        );
    }
    f.finish().await
}
