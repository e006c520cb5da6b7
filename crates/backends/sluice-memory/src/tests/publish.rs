//! Publishing: dedup window, delays, size limit, batches, close, start positions.

use std::time::{Duration, SystemTime};

use sluice_core::{
    Backend, Delivery, Error, Message, MessageError, PublishOutcome, Publisher, StartPosition,
    Subscriber, TopicConfig,
};
use tokio::time::advance;

use super::{fixture, fixture_with, ids, message, ready_now};

#[tokio::test(start_paused = true)]
async fn a_duplicate_within_the_dedup_window_is_dropped_and_the_window_expires() {
    let f = fixture_with(TopicConfig::default().dedup_window(Duration::from_secs(60))).await;
    let subscriber = f.subscribe("billing", f.config()).await;
    let publish = |id: &'static str| f.publisher.publish(&f.topic, message(id));
    assert_eq!(
        publish("a").await.unwrap().outcome,
        PublishOutcome::Published
    );
    advance(Duration::from_secs(59)).await;
    assert_eq!(
        publish("a").await.unwrap().outcome,
        PublishOutcome::Duplicate,
        "a second publish within the window is a duplicate"
    );
    assert_eq!(
        publish("b").await.unwrap().outcome,
        PublishOutcome::Published,
        "other ids are not affected"
    );
    assert_eq!(
        ids(&ready_now(&subscriber, 10).await),
        ["a", "b"],
        "the duplicate was not delivered"
    );
    advance(Duration::from_secs(1)).await;
    assert_eq!(
        publish("a").await.unwrap().outcome,
        PublishOutcome::Published,
        "the window runs from the first publish and has expired"
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_dedup_window_the_same_id_is_delivered_twice() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config()).await;
    f.publish_ids(&["a", "a"]).await;
    assert_eq!(ids(&ready_now(&subscriber, 10).await), ["a", "a"]);
}

#[tokio::test(start_paused = true)]
async fn a_delayed_message_is_not_delivered_early() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config()).await;
    f.publisher
        .publish_delayed(&f.topic, message("later"), Duration::from_secs(30))
        .await
        .unwrap();
    f.publish(message("now")).await;
    let now = ready_now(&subscriber, 10).await;
    assert_eq!(ids(&now), ["now"], "only the undelayed message is ready");
    super::ack_all(now).await;
    advance(Duration::from_millis(29_990)).await;
    assert!(
        ready_now(&subscriber, 10).await.is_empty(),
        "the delayed message is not ready before its time"
    );
    let got = subscriber
        .receive(10, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(ids(&got), ["later"], "it is delivered once due");
}

#[tokio::test(start_paused = true)]
async fn a_message_scheduled_in_the_past_is_delivered_at_once() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config()).await;
    let past = SystemTime::now() - Duration::from_secs(3600);
    f.publisher
        .publish_at(&f.topic, message("a"), past)
        .await
        .unwrap();
    assert_eq!(ids(&ready_now(&subscriber, 10).await), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn an_oversized_message_is_refused_before_anything_is_stored() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config()).await;
    let big = Message::builder(vec![0u8; crate::MAX_MESSAGE_SIZE])
        .id("big")
        .build()
        .unwrap();
    let err = f
        .publisher
        .publish(&f.topic, big)
        .await
        .expect_err("1 MiB of payload plus its id is too large");
    assert!(
        matches!(err, Error::Message(MessageError::TooLarge { .. })),
        "{err}"
    );
    assert!(
        ready_now(&subscriber, 10).await.is_empty(),
        "nothing stored"
    );
}

#[tokio::test(start_paused = true)]
async fn publish_sets_published_at_on_the_backend_clock() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config()).await;
    advance(Duration::from_secs(10)).await;
    let before = SystemTime::now();
    f.publish(message("a")).await;
    let delivery = ready_now(&subscriber, 1).await.pop().unwrap();
    let published_at = delivery.message().published_at().expect("set at publish");
    assert!(
        published_at >= before + Duration::from_secs(9),
        "published_at follows the paused clock"
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_returns_one_result_per_message_in_order() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config()).await;
    let too_big = Message::builder(vec![0u8; crate::MAX_MESSAGE_SIZE + 1])
        .id("big")
        .build()
        .unwrap();
    let results = f
        .publisher
        .publish_batch(&f.topic, vec![message("a"), too_big, message("c")])
        .await;
    assert_eq!(results.len(), 3, "one result per message");
    assert!(
        results[0].is_ok() && results[2].is_ok(),
        "valid ones succeed"
    );
    assert!(results[1].is_err(), "the invalid one fails alone");
    assert_eq!(ids(&ready_now(&subscriber, 10).await), ["a", "c"]);
}

#[tokio::test(start_paused = true)]
async fn a_closed_publisher_refuses_to_publish() {
    let f = fixture().await;
    f.publisher.close().await.unwrap();
    let err = f
        .publisher
        .publish(&f.topic, message("a"))
        .await
        .expect_err("closed");
    assert!(matches!(err, Error::Closed(_)), "{err}");
    let other = f.backend.publisher().await.unwrap();
    other
        .publish(&f.topic, message("b"))
        .await
        .expect("closing one publisher leaves others open");
}

#[tokio::test(start_paused = true)]
async fn start_positions_latest_earliest_and_at_replay_what_they_should() {
    let f = fixture().await;
    f.publish_ids(&["old1", "old2"]).await;
    advance(Duration::from_secs(10)).await;
    let cut = SystemTime::now() + Duration::from_secs(10); // the backend's now
    f.publish(message("new1")).await;

    let latest = f.subscribe("latest", f.config()).await;
    let earliest = f
        .subscribe("earliest", f.config().start(StartPosition::Earliest))
        .await;
    let at = f
        .subscribe(
            "at",
            f.config()
                .start(StartPosition::At(cut - Duration::from_secs(1))),
        )
        .await;
    f.publish(message("new2")).await;

    assert_eq!(
        ids(&ready_now(&latest, 10).await),
        ["new2"],
        "latest: only what was published after creation"
    );
    assert_eq!(
        ids(&ready_now(&earliest, 10).await),
        ["old1", "old2", "new1", "new2"],
        "earliest: everything the topic retains"
    );
    assert_eq!(
        ids(&ready_now(&at, 10).await),
        ["new1", "new2"],
        "at: what was published at or after the time"
    );
}

#[tokio::test(start_paused = true)]
async fn acked_state_is_per_subscription_so_earliest_replays_acked_messages() {
    let f = fixture().await;
    let first = f.subscribe("first", f.config()).await;
    f.publish(message("a")).await;
    ready_now(&first, 1)
        .await
        .pop()
        .unwrap()
        .ack()
        .await
        .unwrap();
    let replay = f
        .subscribe("replay", f.config().start(StartPosition::Earliest))
        .await;
    assert_eq!(
        ids(&ready_now(&replay, 10).await),
        ["a"],
        "another subscription's ack does not hide the message"
    );
}
