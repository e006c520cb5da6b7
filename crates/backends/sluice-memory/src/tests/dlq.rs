//! Dead-lettering, the DLQ tools and stats.

use std::time::Duration;

use sluice_core::{
    envelope, Backend, DeadLetterReason, Delivery, Envelope, Publisher, RedriveOptions,
};
use tokio::time::{advance, Instant};

use super::{fixture, ids, one_now, ready_now, sub};

#[tokio::test(start_paused = true)]
async fn dead_letter_moves_the_message_to_the_dlq_with_its_envelope() {
    let f = fixture().await;
    let lease = Duration::from_secs(10);
    let subscriber = f.subscribe("billing", f.config().lease(lease)).await;
    f.publish(
        sluice_core::Message::builder("body")
            .id("a")
            .header("tenant", "acme")
            .build()
            .unwrap(),
    )
    .await;
    let start = std::time::SystemTime::now();
    drop(one_now(&subscriber).await);
    advance(lease).await; // first failure: the lease runs out
    one_now(&subscriber)
        .await
        .retry(Duration::from_secs(5))
        .await
        .unwrap();
    advance(Duration::from_secs(5)).await;
    let third = one_now(&subscriber).await;
    assert_eq!(third.attempt(), 3, "two failures before");
    third
        .dead_letter(DeadLetterReason::new("max attempts exceeded").with_last_error("boom"))
        .await
        .unwrap();

    assert!(
        ready_now(&subscriber, 10).await.is_empty(),
        "a dead letter leaves the subscription"
    );
    let listed = f.backend.dlq_list(&sub("billing"), 10).await.unwrap();
    assert_eq!(listed.len(), 1, "the DLQ holds it");
    let dead = &listed[0];
    assert_eq!(dead.message.id().as_str(), "a", "it keeps its id");
    assert_eq!(dead.message.payload().as_ref(), b"body", "and its payload");
    assert_eq!(
        dead.message.header("tenant"),
        Some("acme"),
        "and its headers"
    );
    let env = dead.envelope.as_ref().expect("it has an envelope");
    assert_eq!(
        (env.topic.as_str(), env.subscription.as_str()),
        ("orders", "billing")
    );
    assert_eq!(env.attempts, 3, "attempts is the current attempt");
    assert_eq!(env.reason, "max attempts exceeded");
    assert_eq!(env.last_error.as_deref(), Some("boom"));
    let first_failure = env.first_failure_at.expect("first failure recorded");
    let offset = first_failure.duration_since(start).unwrap();
    assert!(
        offset >= Duration::from_secs(9) && offset < Duration::from_secs(11),
        "the first failure is the lease expiry at 10 s, got {offset:?}"
    );
    let at = env.dead_lettered_at.duration_since(start).unwrap();
    assert!(
        at >= Duration::from_secs(14),
        "dead-lettered at 15 s on the backend clock, got {at:?}"
    );
    assert_eq!(
        f.backend
            .stats(&sub("billing"))
            .await
            .unwrap()
            .dead_lettered,
        Some(1)
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_dead_letter_queue_dead_letter_drops_the_message() {
    let f = fixture().await;
    let subscriber = f
        .subscribe("billing", f.config().dead_letter_queue(false))
        .await;
    f.publish_ids(&["a"]).await;
    one_now(&subscriber)
        .await
        .dead_letter("permanent error".into())
        .await
        .unwrap();
    assert!(ready_now(&subscriber, 10).await.is_empty(), "it is gone");
    assert!(
        f.backend
            .dlq_list(&sub("billing"), 10)
            .await
            .unwrap()
            .is_empty(),
        "and not kept anywhere"
    );
}

#[tokio::test(start_paused = true)]
async fn redrive_moves_messages_back_with_attempt_one_and_no_envelope() {
    let f = fixture().await;
    let billing = f.subscribe("billing", f.config()).await;
    let audit = f.subscribe("audit", f.config()).await;
    f.publish_ids(&["a"]).await;
    let delivery = one_now(&billing).await;
    delivery.retry(Duration::ZERO).await.unwrap();
    let delivery = one_now(&billing).await;
    assert_eq!(delivery.attempt(), 2);
    delivery.dead_letter("poison".into()).await.unwrap();
    ready_now(&audit, 10)
        .await
        .pop()
        .unwrap()
        .ack()
        .await
        .unwrap();

    let report = f
        .backend
        .dlq_redrive(&sub("billing"), &RedriveOptions::all())
        .await
        .unwrap();
    assert_eq!(report.moved, ["a"], "the report lists what moved");
    assert!(!report.dry_run);
    let back = one_now(&billing).await;
    assert_eq!(back.attempt(), 1, "attempt starts again at 1");
    assert_eq!(
        Envelope::read(back.message()),
        None,
        "the envelope is stripped"
    );
    assert!(
        back.message().header(envelope::REASON).is_none(),
        "no envelope header is left"
    );
    assert!(
        ready_now(&audit, 10).await.is_empty(),
        "other subscriptions do not get it again"
    );
    assert!(
        f.backend
            .dlq_list(&sub("billing"), 10)
            .await
            .unwrap()
            .is_empty(),
        "the DLQ is empty"
    );
}

/// Dead-letters `ids` in subscription `billing` of the fixture.
async fn dead_letter_all(f: &super::Fixture, ids: &[&str]) {
    let subscriber = f.subscribe("billing", f.config()).await;
    f.publish_ids(ids).await;
    for delivery in ready_now(&subscriber, 100).await {
        delivery.dead_letter("poison".into()).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_reports_without_moving_and_filters_and_limits_apply() {
    let f = fixture().await;
    dead_letter_all(&f, &["a", "b", "c", "d"]).await;
    let billing = sub("billing");
    let dry = f
        .backend
        .dlq_redrive(&billing, &RedriveOptions::all().dry_run(true))
        .await
        .unwrap();
    assert_eq!(dry.moved, ["a", "b", "c", "d"], "oldest first");
    assert!(dry.dry_run);
    assert_eq!(
        f.backend.dlq_list(&billing, 10).await.unwrap().len(),
        4,
        "a dry run moves nothing"
    );
    let some = f
        .backend
        .dlq_redrive(
            &billing,
            &RedriveOptions::all().ids(["b", "c", "d"]).limit(2),
        )
        .await
        .unwrap();
    assert_eq!(some.moved, ["b", "c"], "only selected ids, up to the limit");
    let left: Vec<_> = f
        .backend
        .dlq_list(&billing, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|dead| dead.message.id().to_string())
        .collect();
    assert_eq!(left, ["a", "d"]);
    assert_eq!(
        f.backend.dlq_list(&billing, 1).await.unwrap().len(),
        1,
        "list honours its limit"
    );
}

#[tokio::test(start_paused = true)]
async fn redrive_keeps_to_its_rate() {
    let f = fixture().await;
    dead_letter_all(&f, &["a", "b", "c", "d", "e"]).await;
    let start = Instant::now();
    let report = f
        .backend
        .dlq_redrive(&sub("billing"), &RedriveOptions::all().rate_per_second(2))
        .await
        .unwrap();
    assert_eq!(report.moved.len(), 5);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(2),
        "5 messages at 2 per second: the first at once, then one every 500 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn purge_empties_the_dlq_and_returns_the_count() {
    let f = fixture().await;
    dead_letter_all(&f, &["a", "b", "c"]).await;
    assert_eq!(f.backend.dlq_purge(&sub("billing")).await.unwrap(), 3);
    assert!(f
        .backend
        .dlq_list(&sub("billing"), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        f.backend.dlq_purge(&sub("billing")).await.unwrap(),
        0,
        "purging an empty DLQ is fine"
    );
}

#[tokio::test(start_paused = true)]
async fn stats_count_every_state_and_the_oldest_age() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config()).await;
    let billing = sub("billing");
    let empty = f.backend.stats(&billing).await.unwrap();
    assert_eq!(
        (
            empty.ready,
            empty.in_flight,
            empty.delayed,
            empty.dead_lettered,
            empty.oldest_age
        ),
        (Some(0), Some(0), Some(0), Some(0), Some(Duration::ZERO)),
        "every field is known, even when empty"
    );
    f.publish_ids(&["leased", "retried", "dead"]).await;
    f.publisher
        .publish_delayed(&f.topic, super::message("delayed"), Duration::from_secs(60))
        .await
        .unwrap();
    advance(Duration::from_secs(3)).await;
    f.publish_ids(&["ready"]).await;
    let mut got = ready_now(&subscriber, 3).await;
    assert_eq!(ids(&got), ["leased", "retried", "dead"]);
    got.pop().unwrap().dead_letter("x".into()).await.unwrap();
    got.pop()
        .unwrap()
        .retry(Duration::from_secs(30))
        .await
        .unwrap();
    let stats = f.backend.stats(&billing).await.unwrap();
    assert_eq!(stats.ready, Some(1), "`ready` is ready");
    assert_eq!(stats.in_flight, Some(1), "`leased` is in flight");
    assert_eq!(
        stats.delayed,
        Some(2),
        "`delayed` and `retried` wait for their time"
    );
    assert_eq!(stats.dead_lettered, Some(1), "`dead` is in the DLQ");
    assert_eq!(
        stats.oldest_age,
        Some(Duration::from_secs(3)),
        "the oldest unacked message was published 3 s ago"
    );
    assert_eq!(stats.backlog(), Some(4));
}
