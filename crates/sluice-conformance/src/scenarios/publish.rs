//! Publishing: errors that name the problem, batches, close, delays and the dedup window.

use std::time::{Duration, SystemTime};

use futures::future::{join, join_all};
use sluice_core::{
    Backend, Delivery, Error, Message, MessageError, ObjectKind, PublishOutcome, Publisher,
    SubscriptionConfig, TopicConfig, TopicName,
};
use tokio::time::Instant;

use crate::fixture::{Fixture, Outcome};
use crate::harness::Harness;
use crate::wait::{
    ack_all, expect_nothing, label, receive_and_ack, receive_exactly, sorted_labels, Must,
};

fn names_missing_topic<T>(result: &Result<T, Error>, topic: &TopicName) -> bool {
    matches!(result, Err(Error::NotFound { kind: ObjectKind::Topic, name })
        if name.contains(topic.as_str()))
}

/// Publishing (one or a batch) to a topic that does not exist fails with `NotFound` naming
/// the topic, and so does subscribing a topic that does not exist.
pub async fn publishing_to_a_missing_topic_is_not_found<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "publishing_to_a_missing_topic_is_not_found").await;
    let missing = f.topic_name("missing");
    let is_missing_topic = |result: &Result<_, Error>| names_missing_topic(result, &missing);

    let result = f.publisher.publish(&missing, f.message("x")).await;
    assert!(is_missing_topic(&result), "publish: {result:?}");
    let results = f
        .publisher
        .publish_batch(&missing, vec![f.message("a"), f.message("b")])
        .await;
    assert_eq!(results.len(), 2, "one result per message");
    assert!(results.iter().all(is_missing_topic), "batch: {results:?}");

    let subscription = f.subscription_name("s");
    let result = f
        .backend
        .ensure_subscription(&subscription, &SubscriptionConfig::new(missing.clone()))
        .await;
    assert!(
        names_missing_topic(&result, &missing),
        "ensure_subscription: {result:?}"
    );
    f.finish().await
}

/// A batch returns one result per message, in order; one bad message fails alone.
pub async fn batch_publish_returns_one_result_per_message<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "batch_publish_returns_one_result_per_message").await;
    let topic = f.topic("t").await;
    let sub = f.subscribe(&topic, "s").await;
    let size = 5.min(f.caps().max_batch);
    let bad = (size >= 3).then_some(size / 2);
    let mut messages: Vec<Message> = (0..size).map(|i| f.message(&format!("b{i}"))).collect();
    if let Some(bad) = bad {
        messages[bad] = Message::builder(vec![b'x'; f.caps().max_message_size + 1])
            .build()
            .must("building an oversized message");
    }
    let ids: Vec<_> = messages.iter().map(|m| m.id().clone()).collect();

    let results = f.publisher.publish_batch(&topic, messages).await;
    assert_eq!(results.len(), size, "one result per message");
    let mut expected = Vec::new();
    for (i, (result, id)) in results.iter().zip(&ids).enumerate() {
        if Some(i) == bad {
            assert!(
                matches!(result, Err(Error::Message(MessageError::TooLarge { .. }))),
                "the oversized message fails alone: {result:?}"
            );
            continue;
        }
        let receipt = result.as_ref().must("a valid message of the batch");
        assert_eq!(&receipt.id, id, "results are in message order");
        assert_eq!(receipt.outcome, PublishOutcome::Published);
        expected.push(format!("b{i}"));
    }

    let got = receive_exactly(&sub, expected.len(), f.timing.deadline, "the batch").await;
    assert_eq!(sorted_labels(&got), expected);
    ack_all(got).await;
    expect_nothing(&sub, f.timing.settle, "nothing but the valid messages").await;
    f.finish().await
}

/// A message larger than `max_message_size` fails with `TooLarge` naming the limit, and is
/// not delivered; a message of exactly the limit is accepted.
pub async fn oversized_message_is_a_clear_error<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "oversized_message_is_a_clear_error").await;
    let max = f.caps().max_message_size;
    if max > 64 << 20 {
        return f.skip(format!("max_message_size {max} is too large to test"));
    }
    let topic = f.topic("t").await;
    let sub = f.subscribe(&topic, "s").await;

    let too_big = Message::builder(vec![b'x'; max])
        .id("too-big")
        .build()
        .must("building");
    let size = too_big.size();
    let result = f.publisher.publish(&topic, too_big).await;
    match &result {
        Err(
            err @ Error::Message(MessageError::TooLarge {
                id,
                size: s,
                max: m,
            }),
        ) => {
            assert_eq!((id.as_str(), *s, *m), ("too-big", size, max), "{err}");
            assert!(
                err.to_string().contains(&max.to_string()),
                "names the limit: {err}"
            );
        }
        other => panic!("expected MessageError::TooLarge, got {other:?}"),
    }

    let empty_size = Message::builder(Vec::new())
        .id("at-limit")
        .build()
        .must("building");
    let at_limit = Message::builder(vec![b'y'; max - empty_size.size()])
        .id("at-limit")
        .build()
        .must("building");
    assert_eq!(at_limit.size(), max);
    f.publish(&topic, at_limit).await;
    let got = receive_exactly(&sub, 1, f.timing.deadline, "the message at the limit").await;
    assert_eq!(got[0].message().id().as_str(), "at-limit");
    assert_eq!(got[0].message().payload().len(), max - empty_size.size());
    ack_all(got).await;
    expect_nothing(&sub, f.timing.settle, "the oversized message").await;
    f.finish().await
}

/// Publishes started before `close` are all confirmed and delivered; publishing after it
/// fails with `Closed`.
pub async fn publisher_close_flushes<H: Harness>(h: &H) -> Outcome {
    const TOTAL: usize = 50;
    let f = Fixture::new(h, "publisher_close_flushes").await;
    let topic = f.topic("t").await;
    let sub = f.subscribe(&topic, "s").await;
    let publisher = f.backend.publisher().await.must("creating a publisher");

    let labels: Vec<String> = (0..TOTAL).map(|i| format!("p{i:02}")).collect();
    let publishes = join_all(
        labels
            .iter()
            .map(|l| publisher.publish(&topic, f.message(l))),
    );
    // `join` polls the publishes first, so every one has started when close begins.
    let close = async {
        tokio::task::yield_now().await;
        publisher.close().await
    };
    let (results, closed) = join(publishes, close).await;
    closed.must("closing the publisher");
    for (label, result) in labels.iter().zip(&results) {
        let receipt = result.as_ref().unwrap_or_else(|err| {
            panic!("publish of {label}, started before close, failed: {err}")
        });
        assert_eq!(receipt.outcome, PublishOutcome::Published);
    }
    let after = publisher.publish(&topic, f.message("late")).await;
    assert!(
        matches!(after, Err(Error::Closed(_))),
        "publish after close: {after:?}"
    );

    let got = receive_and_ack(&sub, TOTAL, f.timing.deadline, "every flushed message").await;
    assert_eq!(got, labels);
    f.finish().await
}

/// A delayed or scheduled message arrives no earlier than asked and does not hold back the
/// messages published after it; a delay beyond `max_delay` is refused.
pub async fn delayed_publish_not_delivered_early<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "delayed_publish_not_delivered_early").await;
    if let Some(skip) = f.gate() {
        return skip;
    }
    let topic = f.topic("t").await;
    let sub = f.subscribe(&topic, "s").await;
    let delay = f.timing.delay;

    let start = Instant::now();
    let receipt = f
        .publisher
        .publish_delayed(&topic, f.message("delayed"), delay)
        .await
        .must("publishing with a delay");
    assert_eq!(receipt.outcome, PublishOutcome::Published);
    let at = SystemTime::now() + delay;
    f.publisher
        .publish_at(&topic, f.message("scheduled"), at)
        .await
        .must("publishing at a time");
    f.publish(&topic, f.message("now")).await;

    let mut arrivals = Vec::new();
    while arrivals.len() < 3 {
        let what = "the immediate, delayed and scheduled messages";
        let got = receive_exactly(&sub, 1, f.timing.deadline, what).await;
        arrivals.push((label(&got[0]), start.elapsed()));
        ack_all(got).await;
    }
    let early = delay.saturating_sub(f.timing.tolerance);
    for (label, elapsed) in &arrivals {
        if label != "now" {
            assert!(
                *elapsed >= early,
                "{label} arrived after {elapsed:?}, before {delay:?}"
            );
        }
    }
    let mut labels: Vec<_> = arrivals.into_iter().map(|(l, _)| l).collect();
    labels.sort();
    assert_eq!(labels, ["delayed", "now", "scheduled"]);

    if let Some(max) = f.caps().max_delay {
        let message = f.message("too-late");
        let result = f.publisher.publish_delayed(&topic, message, max * 2).await;
        assert!(
            matches!(
                result,
                Err(Error::Message(MessageError::DelayTooLong { .. }))
            ),
            "a delay beyond max_delay {max:?}: {result:?}"
        );
    }
    f.finish().await
}

/// Within the topic's dedup window, a second publish of an id returns `Duplicate` and is not
/// delivered; other ids are.
pub async fn dedup_window_drops_duplicate_publish<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "dedup_window_drops_duplicate_publish").await;
    if let Some(skip) = f.gate() {
        return skip;
    }
    let caps = f.caps();
    let window = caps.fixed_dedup_window.unwrap_or_else(|| {
        caps.max_dedup_window
            .map_or(Duration::from_secs(60), |max| {
                max.min(Duration::from_secs(60))
            })
    });
    let topic = f
        .topic_with("t", TopicConfig::default().dedup_window(window))
        .await;
    let sub = f.subscribe(&topic, "s").await;
    let with_id = |payload: &str, id: &str| {
        Message::builder(payload.as_bytes().to_vec())
            .id(id)
            .build()
            .must("building")
    };

    f.publish(&topic, with_id("first", "order-1")).await;
    let again = f
        .publisher
        .publish(&topic, with_id("again", "order-1"))
        .await;
    let again = again.must("publishing a duplicate is accepted");
    assert_eq!(
        again.outcome,
        PublishOutcome::Duplicate,
        "second publish of order-1"
    );
    f.publish(&topic, with_id("other", "order-2")).await;
    let batch = vec![with_id("dup", "order-2"), with_id("third", "order-3")];
    let results = f.publisher.publish_batch(&topic, batch).await;
    let outcomes: Vec<_> = results
        .into_iter()
        .map(|r| r.must("batch publish").outcome)
        .collect();
    assert_eq!(
        outcomes,
        [PublishOutcome::Duplicate, PublishOutcome::Published]
    );

    let got = receive_exactly(&sub, 3, f.timing.deadline, "the distinct ids").await;
    assert_eq!(sorted_labels(&got), ["first", "other", "third"]);
    ack_all(got).await;
    expect_nothing(&sub, f.timing.settle, "duplicates are dropped").await;
    f.finish().await
}
