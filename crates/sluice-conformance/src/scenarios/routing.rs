//! Routing: every subscription gets every message, filters select by routing key, topics do
//! not leak into each other.

use futures::future::join_all;
use sluice_core::{Filter, Message, SubscriptionConfig};

use crate::fixture::{Fixture, Outcome};
use crate::harness::Harness;
use crate::wait::{ack_all, expect_nothing, receive_exactly, sorted_labels, Must};

/// Every subscription of a topic receives every message once.
pub async fn fan_out_delivers_to_every_subscription<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "fan_out_delivers_to_every_subscription").await;
    let topic = f.topic("t").await;
    let mut subs = Vec::new();
    for label in ["a", "b", "c"] {
        subs.push(f.subscribe(&topic, label).await);
    }
    let labels = ["m1", "m2", "m3", "m4", "m5"];
    f.publish_labels(&topic, &labels).await;

    for sub in &subs {
        let got = receive_exactly(sub, labels.len(), f.timing.deadline, "fan-out").await;
        assert_eq!(
            sorted_labels(&got),
            labels,
            "each subscription gets every message"
        );
        ack_all(got).await;
    }
    let watch = f.timing.settle;
    join_all(
        subs.iter()
            .map(|s| expect_nothing(s, watch, "fan-out delivers each message once")),
    )
    .await;
    f.finish().await
}

/// `*` matches exactly one word, `#` zero or more; a subscription without a filter (or with
/// `#`) receives everything, messages without a routing key included.
pub async fn filter_matches_routing_key_patterns<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "filter_matches_routing_key_patterns").await;
    if let Some(skip) = f.gate() {
        return skip;
    }
    let topic = f.topic("t").await;
    // (pattern, expected labels); a label is the routing key, `no-key` for none.
    let cases: [(Option<&str>, &[&str]); 7] = [
        (Some("eu.*"), &["eu.orders"]),
        (Some("eu.#"), &["eu", "eu.orders", "eu.orders.placed"]),
        (Some("#.placed"), &["eu.orders.placed", "us.orders.placed"]),
        (
            Some("*.orders.placed"),
            &["eu.orders.placed", "us.orders.placed"],
        ),
        (Some("us.orders.placed"), &["us.orders.placed"]),
        (Some("#"), &KEYS),
        (None, &KEYS),
    ];
    const KEYS: [&str; 6] = [
        "eu",
        "eu.orders",
        "eu.orders.placed",
        "us.orders.placed",
        "us.orders.shipped",
        "no-key",
    ];
    let mut subs = Vec::new();
    for (i, (pattern, expected)) in cases.iter().enumerate() {
        let mut config = SubscriptionConfig::new(topic.clone());
        if let Some(pattern) = pattern {
            let filter = Filter::new(*pattern).must("building a filter");
            // Guards the table above against typos: it agrees with the reference matcher.
            let computed: Vec<&str> = KEYS
                .iter()
                .copied()
                .filter(|k| filter.matches((*k != "no-key").then_some(*k)))
                .collect();
            assert_eq!(computed, *expected, "expectation for `{pattern}`");
            config = config.filter(filter);
        }
        subs.push(f.subscribe_with(&format!("f{i}"), config).await.1);
    }

    for key in KEYS {
        let mut message = Message::builder(key.as_bytes().to_vec());
        if key != "no-key" {
            message = message.routing_key(key);
        }
        f.publish(&topic, message.build().must("building a message"))
            .await;
    }

    for ((pattern, expected), sub) in cases.iter().zip(&subs) {
        let what = format!("filter {pattern:?}");
        let got = receive_exactly(sub, expected.len(), f.timing.deadline, &what).await;
        let mut expected = expected.to_vec();
        expected.sort_unstable();
        assert_eq!(sorted_labels(&got), expected, "filter {pattern:?}");
        ack_all(got).await;
    }
    let watch = f.timing.settle;
    join_all(
        subs.iter()
            .map(|s| expect_nothing(s, watch, "a filter lets through only what it matches")),
    )
    .await;
    f.finish().await
}

/// A subscription receives only its own topic's messages.
pub async fn topic_isolation<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "topic_isolation").await;
    let first = f.topic("a").await;
    let second = f.topic("b").await;
    let sub_first = f.subscribe(&first, "a").await;
    let sub_second = f.subscribe(&second, "b").await;

    f.publish_labels(&first, &["for-a-1", "for-a-2"]).await;
    let got = receive_exactly(&sub_first, 2, f.timing.deadline, "topic a").await;
    assert_eq!(sorted_labels(&got), ["for-a-1", "for-a-2"]);
    ack_all(got).await;
    expect_nothing(&sub_second, f.timing.settle, "topic b gets nothing of a").await;

    f.publish_labels(&second, &["for-b"]).await;
    let got = receive_exactly(&sub_second, 1, f.timing.deadline, "topic b").await;
    assert_eq!(sorted_labels(&got), ["for-b"]);
    ack_all(got).await;
    expect_nothing(&sub_first, f.timing.settle, "topic a gets nothing of b").await;
    f.finish().await
}
