//! Topics and subscriptions: ensure, conflict, describe, list, delete.

use std::time::Duration;

use sluice_core::{
    Backend, Error, ObjectKind, Publisher, Subscriber, SubscriptionConfig, TopicConfig,
};

use super::{fixture, message, sub, topic};

#[tokio::test(start_paused = true)]
async fn ensuring_a_topic_again_is_idempotent_and_a_different_config_conflicts() {
    let f = fixture().await;
    f.backend
        .ensure_topic(&f.topic, &TopicConfig::default())
        .await
        .expect("same config again is fine");
    let err = f
        .backend
        .ensure_topic(
            &f.topic,
            &TopicConfig::default().dedup_window(Duration::from_secs(60)),
        )
        .await
        .expect_err("another dedup window conflicts");
    match err {
        Error::Conflict {
            kind,
            name,
            difference,
        } => {
            assert_eq!(kind, ObjectKind::Topic, "the conflict is about the topic");
            assert_eq!(name, "orders", "the conflict names the topic");
            assert!(
                difference.starts_with("dedup_window"),
                "the conflict names the field: {difference}"
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn ensuring_a_subscription_with_another_config_conflicts_naming_the_field() {
    let f = fixture().await;
    let billing = sub("billing");
    f.backend
        .ensure_subscription(&billing, &f.config())
        .await
        .unwrap();
    f.backend
        .ensure_subscription(
            &billing,
            &f.config().start(sluice_core::StartPosition::Earliest),
        )
        .await
        .expect("the start position only matters at creation");
    let err = f
        .backend
        .ensure_subscription(&billing, &f.config().lease(Duration::from_secs(5)))
        .await
        .expect_err("another lease conflicts");
    assert!(
        matches!(&err, Error::Conflict { kind: ObjectKind::Subscription, difference, .. } if difference.starts_with("lease")),
        "the conflict names the subscription and the lease: {err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_subscription_name_is_unique_across_topics() {
    let f = fixture().await;
    let payments = topic("payments");
    f.backend
        .ensure_topic(&payments, &TopicConfig::default())
        .await
        .unwrap();
    f.backend
        .ensure_subscription(&sub("audit"), &f.config())
        .await
        .unwrap();
    let err = f
        .backend
        .ensure_subscription(&sub("audit"), &SubscriptionConfig::new(payments))
        .await
        .expect_err("the same name on another topic is refused");
    assert!(
        matches!(&err, Error::Conflict { difference, .. } if difference.starts_with("topic")),
        "the conflict names the topic field: {err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_subscription_of_a_missing_topic_is_not_found() {
    let f = fixture().await;
    let err = f
        .backend
        .ensure_subscription(&sub("x"), &SubscriptionConfig::new(topic("nope")))
        .await
        .expect_err("its topic must exist");
    assert!(
        matches!(
            err,
            Error::NotFound {
                kind: ObjectKind::Topic,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn publishing_to_a_missing_topic_is_not_found() {
    let f = fixture().await;
    let err = f
        .publisher
        .publish(&topic("nope"), message("a"))
        .await
        .expect_err("the topic does not exist");
    assert!(
        matches!(err, Error::NotFound { kind: ObjectKind::Topic, ref name } if name == "nope"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn subscribing_to_a_missing_subscription_is_not_found() {
    let f = fixture().await;
    let err = f
        .backend
        .subscribe(&sub("nope"))
        .await
        .expect_err("the subscription does not exist");
    assert!(
        matches!(
            err,
            Error::NotFound {
                kind: ObjectKind::Subscription,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn describe_and_list_report_the_topology() {
    let f = fixture().await;
    let config = f.config().max_attempts(3);
    f.backend
        .ensure_subscription(&sub("billing"), &config)
        .await
        .unwrap();
    f.backend
        .ensure_subscription(&sub("audit"), &f.config())
        .await
        .unwrap();
    let info = f.backend.describe_topic(&f.topic).await.unwrap();
    assert_eq!(
        info.subscriptions,
        vec![sub("audit"), sub("billing")],
        "the topic lists its subscriptions, sorted"
    );
    let described = f
        .backend
        .describe_subscription(&sub("billing"))
        .await
        .unwrap();
    assert_eq!(
        described.config, config,
        "the subscription is described as created"
    );
    let topics = f.backend.list_topics().await.unwrap();
    assert_eq!(topics.len(), 1, "one topic listed");
    assert_eq!(topics[0].name, f.topic);
}

#[tokio::test(start_paused = true)]
async fn deleting_a_topic_deletes_its_subscriptions() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config()).await;
    f.backend.delete_topic(&f.topic).await.unwrap();
    assert!(
        matches!(
            f.backend.describe_subscription(&sub("billing")).await,
            Err(Error::NotFound { .. })
        ),
        "the subscription went with its topic"
    );
    assert!(
        matches!(
            subscriber.receive(1, Duration::ZERO).await,
            Err(Error::NotFound { .. })
        ),
        "its subscriber sees it is gone"
    );
    assert!(
        matches!(
            f.backend.delete_topic(&f.topic).await,
            Err(Error::NotFound { .. })
        ),
        "deleting it twice is not found"
    );
    f.backend
        .ensure_subscription(&sub("billing"), &f.config())
        .await
        .expect_err("its topic is gone");
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_waiting_on_a_deleted_subscription_wakes_with_not_found() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config()).await;
    let backend = f.backend.clone();
    let start = tokio::time::Instant::now();
    let waiting =
        tokio::spawn(async move { subscriber.receive(1, Duration::from_secs(3600)).await });
    tokio::task::yield_now().await;
    backend.delete_subscription(&sub("billing")).await.unwrap();
    let result = waiting.await.unwrap();
    assert!(
        matches!(result, Err(Error::NotFound { .. })),
        "the waiting receive ends with not found: {result:?}"
    );
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "it woke at once, not at the end of its wait"
    );
}
