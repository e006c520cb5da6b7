//! The dead-letter queue: the envelope, redrive, purge, and the counters that show them.

use std::time::{Duration, SystemTime};

use sluice_core::envelope::{FIRST_FAILURE_HEADER, PREFIX};
use sluice_core::message::RESERVED_PREFIX;
use sluice_core::{
    Backend, DeadLetterReason, DeadLetteredMessage, Delivery, Message, RedriveOptions,
    SubscriptionName,
};

use crate::fixture::{Fixture, Outcome};
use crate::harness::Harness;
use crate::wait::{ack_all, eventually, expect_nothing, receive_exactly, Must};

/// Waits until the subscription's DLQ lists exactly `n` messages, and returns them.
async fn dlq_holds<B: Backend>(
    backend: &B,
    subscription: &SubscriptionName,
    n: usize,
    within: Duration,
    interval: Duration,
) -> Vec<DeadLetteredMessage> {
    let what = format!("the DLQ holds {n} messages");
    eventually(within, interval, &what, || async move {
        let listed = backend
            .dlq_list(subscription, 100)
            .await
            .map_err(|e| e.to_string())?;
        if listed.len() == n {
            Ok(listed)
        } else {
            Err(format!("it lists {}", listed.len()))
        }
    })
    .await
}

/// A dead-lettered message leaves the subscription and appears in its DLQ with its id,
/// payload and headers, and an envelope: topic, subscription, attempts, reason, last error.
pub async fn dead_letter_moves_to_dlq_with_envelope<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "dead_letter_moves_to_dlq_with_envelope").await;
    let topic = f.topic("t").await;
    let (name, sub) = f
        .subscribe_with("s", sluice_core::SubscriptionConfig::new(topic.clone()))
        .await;
    let sent = Message::builder("poison")
        .header("tenant", "acme")
        .build()
        .must("building");
    f.publish(&topic, sent.clone()).await;

    let first = receive_exactly(&sub, 1, f.timing.deadline, "first")
        .await
        .remove(0);
    first.retry(Duration::ZERO).await.must("retry");
    let second = receive_exactly(&sub, 1, f.timing.deadline, "second")
        .await
        .remove(0);
    assert_eq!(second.attempt(), 2);
    let before = SystemTime::now();
    let reason = DeadLetterReason::new("permanent error").with_last_error("card declined");
    second.dead_letter(reason).await.must("dead_letter");
    expect_nothing(&sub, f.timing.settle, "a dead-lettered message").await;

    let (deadline, poll) = (f.timing.deadline, f.timing.poll_interval());
    let listed = dlq_holds(&f.backend, &name, 1, deadline, poll).await;
    let dead = &listed[0];
    assert_eq!(dead.message.id(), sent.id());
    assert_eq!(dead.message.payload(), sent.payload());
    let user_headers: Vec<_> = dead
        .message
        .headers()
        .iter()
        .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
        .collect();
    assert_eq!(
        user_headers,
        sent.headers().iter().collect::<Vec<_>>(),
        "headers kept"
    );
    let envelope = dead
        .envelope
        .as_ref()
        .expect("a dead-lettered message has an envelope");
    assert_eq!(envelope.topic, topic.as_str(), "envelope topic");
    assert_eq!(
        envelope.subscription,
        name.as_str(),
        "envelope subscription"
    );
    assert_eq!(envelope.attempts, 2, "envelope attempts");
    assert_eq!(envelope.reason, "permanent error", "envelope reason");
    assert_eq!(
        envelope.last_error.as_deref(),
        Some("card declined"),
        "last error"
    );
    let skew = Duration::from_secs(60);
    assert!(
        envelope.dead_lettered_at + skew >= before
            && envelope.dead_lettered_at <= SystemTime::now() + skew,
        "dead_lettered_at {:?} is around now",
        envelope.dead_lettered_at
    );
    f.finish().await
}

/// A dry run reports without moving; redrive by id or with a limit moves messages back to
/// the subscription without their envelope, as attempt 1; purge empties the DLQ.
pub async fn redrive_returns_messages_with_attempt_one<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "redrive_returns_messages_with_attempt_one").await;
    let topic = f.topic("t").await;
    let (name, sub) = f
        .subscribe_with("s", sluice_core::SubscriptionConfig::new(topic.clone()))
        .await;
    let (deadline, poll) = (f.timing.deadline, f.timing.poll_interval());
    f.publish_labels(&topic, &["a", "b", "c"]).await;
    let got = receive_exactly(&sub, 3, deadline, "three messages").await;
    let mut ids: Vec<String> = got.iter().map(|d| d.message().id().to_string()).collect();
    ids.sort();
    for d in got {
        d.dead_letter("test".into()).await.must("dead_letter");
    }
    dlq_holds(&f.backend, &name, 3, deadline, poll).await;

    let dry = RedriveOptions::all().dry_run(true);
    let report = f.backend.dlq_redrive(&name, &dry).await.must("dry run");
    let mut moved = report.moved.clone();
    moved.sort();
    assert!(report.dry_run, "the report says it was a dry run");
    assert_eq!(moved, ids, "a dry run reports every message it would move");
    expect_nothing(&sub, f.timing.settle, "after a dry run").await;
    dlq_holds(&f.backend, &name, 3, deadline, poll).await;

    let mut remaining = ids.clone();
    let first = remaining.remove(0);
    let by_id = RedriveOptions::all().ids([first.clone()]);
    let report = f
        .backend
        .dlq_redrive(&name, &by_id)
        .await
        .must("redrive by id");
    assert_eq!((report.moved, report.dry_run), (vec![first.clone()], false));
    let limited = RedriveOptions::all().limit(1);
    let report = f
        .backend
        .dlq_redrive(&name, &limited)
        .await
        .must("redrive 1");
    assert_eq!(report.moved.len(), 1, "limit 1 moves one");
    assert!(
        remaining.contains(&report.moved[0]),
        "moves a dead-lettered one"
    );

    let back = receive_exactly(&sub, 2, deadline, "the redriven messages").await;
    let mut back_ids: Vec<String> = back.iter().map(|d| d.message().id().to_string()).collect();
    back_ids.sort();
    let mut expected = vec![first, report.moved[0].clone()];
    expected.sort();
    assert_eq!(back_ids, expected, "redrive moves exactly what it reports");
    for d in &back {
        assert_eq!(
            d.attempt(),
            1,
            "a redriven message starts again at attempt 1"
        );
        let leftover: Vec<_> = d
            .message()
            .headers()
            .keys()
            .filter(|k| k.starts_with(PREFIX) || k.starts_with(FIRST_FAILURE_HEADER))
            .collect();
        assert!(leftover.is_empty(), "envelope removed, found {leftover:?}");
    }
    ack_all(back).await;

    let purged = f.backend.dlq_purge(&name).await.must("purge");
    assert_eq!(purged, 1, "purge returns how many it deleted");
    dlq_holds(&f.backend, &name, 0, deadline, poll).await;
    expect_nothing(&sub, f.timing.settle, "after purge").await;
    f.finish().await
}

/// Compares the counters a backend reports (`Some`) with `ready`, `in_flight`, `dead`
/// (and `unsettled` with `ready + in_flight`).
async fn stats_are<B: Backend>(
    backend: &B,
    subscription: &SubscriptionName,
    (ready, in_flight, dead): (u64, u64, u64),
) -> Result<(), String> {
    let stats = backend
        .stats(subscription)
        .await
        .map_err(|e| e.to_string())?;
    let matches = |field: Option<u64>, want| field.is_none_or(|got| got == want);
    if matches(stats.ready, ready)
        && matches(stats.in_flight, in_flight)
        && matches(stats.unsettled, ready + in_flight)
        && matches(stats.dead_lettered, dead)
    {
        Ok(())
    } else {
        Err(format!(
            "want ready {ready}, in_flight {in_flight}, dead_lettered {dead}; got {stats:?}"
        ))
    }
}

/// The counters a backend reports follow messages from ready to in flight to the DLQ and out.
pub async fn stats_count_ready_in_flight_and_dead_lettered<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "stats_count_ready_in_flight_and_dead_lettered").await;
    let topic = f.topic("t").await;
    let (name, sub) = f
        .subscribe_with("s", sluice_core::SubscriptionConfig::new(topic.clone()))
        .await;
    let stats = f.backend.stats(&name).await.must("stats");
    if stats.ready.is_none()
        && stats.in_flight.is_none()
        && stats.unsettled.is_none()
        && stats.dead_lettered.is_none()
    {
        return f.skip("the backend reports none of ready, in_flight, unsettled, dead_lettered");
    }
    let (deadline, poll) = (f.timing.deadline, f.timing.poll_interval());
    let expect = |want| {
        let (backend, name) = (&f.backend, &name);
        let what = format!("stats reach {want:?}");
        async move { eventually(deadline, poll, &what, || stats_are(backend, name, want)).await }
    };

    f.publish_labels(&topic, &["a", "b", "c"]).await;
    expect((3, 0, 0)).await;
    let mut got = receive_exactly(&sub, 2, deadline, "two of three").await;
    expect((1, 2, 0)).await;
    got.pop()
        .unwrap()
        .dead_letter("test".into())
        .await
        .must("dead_letter");
    ack_all(got).await;
    expect((1, 0, 1)).await;
    let last = receive_exactly(&sub, 1, deadline, "the last one").await;
    ack_all(last).await;
    expect((0, 0, 1)).await;
    f.backend.dlq_purge(&name).await.must("purge");
    expect((0, 0, 0)).await;
    f.finish().await
}
