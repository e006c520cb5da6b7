//! Ordering per key, at the level the backend declares: `until_retry` keeps publish order
//! while nothing is retried; `strict` also keeps one message in flight per key and holds the
//! key while its message waits for a retry.

use std::collections::{BTreeMap, HashSet};

use sluice_core::{Delivery, Message, OrderingLevel, Subscriber, TopicConfig, TopicName};
use tokio::time::Instant;

use crate::fixture::{Fixture, Outcome, SubscriberOf};
use crate::harness::Harness;
use crate::wait::{ack_all, expect_nothing, label, receive_exactly, Must, RECEIVE_BATCH};

const KEYS: [&str; 3] = ["k1", "k2", "k3"];
const PER_KEY: usize = 4;

/// Publishes `PER_KEY` messages per key, interleaved, labelled `<key>-<n>`.
async fn publish_interleaved<H: Harness>(f: &Fixture<'_, H>, topic: &TopicName) {
    for n in 0..PER_KEY {
        for key in KEYS {
            let message = Message::builder(format!("{key}-{n}").into_bytes())
                .ordering_key(key)
                .build()
                .must("building");
            f.publish(topic, message).await;
        }
    }
}

fn expected_order(key: &str) -> Vec<String> {
    (0..PER_KEY).map(|n| format!("{key}-{n}")).collect()
}

fn key_of<D: Delivery>(delivery: &D) -> String {
    delivery
        .message()
        .ordering_key()
        .unwrap_or_default()
        .to_owned()
}

/// Messages of one key arrive in publish order, per key, and are ready together.
pub async fn ordering_per_key_at_declared_level<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "ordering_per_key_at_declared_level").await;
    if let Some(skip) = f.gate() {
        return skip;
    }
    let topic = f
        .topic_with("t", TopicConfig::default().ordered(true))
        .await;
    let in_order = f.subscribe(&topic, "order").await;
    let strict = f.subscribe(&topic, "strict").await;
    publish_interleaved(&f, &topic).await;

    keeps_publish_order(&f, &in_order).await;
    if f.caps().ordering == OrderingLevel::Strict {
        holds_key_during_retry(&f, &strict).await;
    } else {
        f.skip_part("strict", "ordering level is `until_retry`");
    }
    f.finish().await
}

/// Without retries, each key's messages are first delivered in publish order.
async fn keeps_publish_order<H: Harness>(f: &Fixture<'_, H>, sub: &SubscriberOf<H>) {
    let total = KEYS.len() * PER_KEY;
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let deadline = Instant::now() + f.timing.deadline;
    let mut count = 0;
    while count < total && Instant::now() < deadline {
        let wait = deadline.saturating_duration_since(Instant::now());
        let batch = sub.receive(RECEIVE_BATCH, wait).await.must("receive");
        for d in batch {
            let order = seen.entry(key_of(&d)).or_default();
            let label = label(&d);
            if !order.contains(&label) {
                order.push(label);
                count += 1;
            }
            d.ack().await.must("ack");
        }
    }
    for key in KEYS {
        let got = seen.remove(key).unwrap_or_default();
        assert_eq!(got, expected_order(key), "publish order of key {key}");
    }
}

/// With `strict`: one delivery in flight per key, even with room for more; a key whose
/// message waits for a retry is held, and its retried message still comes first.
async fn holds_key_during_retry<H: Harness>(f: &Fixture<'_, H>, sub: &SubscriberOf<H>) {
    let deadline = f.timing.deadline;
    let heads = receive_exactly(sub, KEYS.len(), deadline, "one head per key").await;
    let mut head_keys: Vec<String> = heads.iter().map(key_of).collect();
    head_keys.sort();
    assert_eq!(head_keys, KEYS, "one delivery in flight per key");
    assert!(
        heads.iter().all(|d| label(d).ends_with("-0")),
        "the heads come first"
    );
    expect_nothing(sub, f.timing.settle, "a key with a message in flight").await;

    // k1's head fails; k2's and k3's succeed.
    let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in heads {
        order.entry(key_of(&d)).or_default().push(label(&d));
        if key_of(&d) == "k1" {
            d.retry(f.timing.delay).await.must("retry");
        } else {
            d.ack().await.must("ack");
        }
    }

    let total = KEYS.len() * PER_KEY + 1;
    let end = Instant::now() + deadline;
    let mut count = KEYS.len();
    while count < total {
        let wait = end.saturating_duration_since(Instant::now());
        assert!(
            !wait.is_zero(),
            "only {count} of {total} deliveries: {order:?}"
        );
        let batch = sub.receive(RECEIVE_BATCH, wait).await.must("receive");
        let mut in_flight = HashSet::new();
        for d in &batch {
            assert!(
                in_flight.insert(key_of(d)),
                "two in flight for {}",
                key_of(d)
            );
            order.entry(key_of(d)).or_default().push(label(d));
        }
        count += batch.len();
        ack_all(batch).await;
    }
    for key in KEYS {
        let mut expected = expected_order(key);
        if key == "k1" {
            expected.insert(0, "k1-0".to_owned());
        }
        assert_eq!(order[key], expected, "key {key} with its head retried");
    }
}
