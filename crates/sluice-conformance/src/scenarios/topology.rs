//! Topology: idempotent `ensure_*` with conflicts that name the field, unique subscription
//! names, deletion, and where a new subscription starts.

use sluice_core::{
    Backend, Error, Filter, ObjectKind, Publisher, StartPosition, SubscriptionConfig, TopicConfig,
};

use crate::fixture::{Fixture, Outcome};
use crate::harness::Harness;
use crate::wait::{ack_all, expect_nothing, receive_exactly, sorted_labels, Must};

/// Fails unless `result` is a conflict on `kind` `name` whose difference names `field`.
#[track_caller]
fn assert_conflict<T: std::fmt::Debug>(
    result: Result<T, Error>,
    kind: ObjectKind,
    name: &str,
    field: &str,
) {
    match &result {
        Err(
            err @ Error::Conflict {
                kind: k,
                name: n,
                difference,
            },
        ) => {
            assert_eq!(*k, kind, "{err}");
            assert!(n.contains(name), "the conflict names `{name}`: {err}");
            assert!(
                difference.contains(field),
                "the conflict names `{field}`: {err}"
            );
            assert!(
                err.to_string().contains(field),
                "its message names `{field}`: {err}"
            );
        }
        other => panic!("expected a {kind} conflict on `{field}`, got {other:?}"),
    }
}

/// Fails unless `result` is `NotFound` for `kind`.
#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(result: Result<T, Error>, kind: ObjectKind, what: &str) {
    assert!(
        matches!(&result, Err(Error::NotFound { kind: k, .. }) if *k == kind),
        "{what}: expected {kind} not found, got {result:?}"
    );
}

/// Ensuring the same configuration again does nothing; ensuring another one fails with a
/// conflict that names the object and the field. The start position is not compared.
pub async fn ensure_with_other_config_is_a_conflict_naming_the_field<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "ensure_with_other_config_is_a_conflict_naming_the_field").await;
    let topic = f.topic("t").await;
    let same = f
        .backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await;
    same.must("ensuring the same topic again");
    let info = f
        .backend
        .describe_topic(&topic)
        .await
        .must("describe_topic");
    assert_eq!(info.config, TopicConfig::default(), "describe_topic config");
    // Every backend records whether a topic is ordered, so it is the difference to try.
    let other = TopicConfig::default().ordered(true);
    let result = f.backend.ensure_topic(&topic, &other).await;
    assert_conflict(result, ObjectKind::Topic, topic.as_str(), "ordered");

    let config = SubscriptionConfig::new(topic.clone());
    let (name, _sub) = f.subscribe_with("s", config.clone()).await;
    let again = f.backend.ensure_subscription(&name, &config).await;
    again.must("ensuring the same subscription again");
    let replay = config.clone().start(StartPosition::Earliest);
    let again = f.backend.ensure_subscription(&name, &replay).await;
    again.must("the start position only matters at creation");
    let info = f
        .backend
        .describe_subscription(&name)
        .await
        .must("describe");
    assert_eq!(info.name, name);
    assert_eq!(
        info.config.difference(&config),
        None,
        "describe_subscription config"
    );

    let mut others = vec![
        (
            "max_attempts",
            config.clone().max_attempts(config.max_attempts + 4),
        ),
        ("lease", config.clone().lease(config.lease * 2)),
        (
            "dead_letter_queue",
            config.clone().dead_letter_queue(!config.dead_letter_queue),
        ),
    ];
    if f.caps().filter.is_available() {
        let filter = Filter::new("eu.#").must("building a filter");
        others.push(("filter", config.clone().filter(filter)));
    }
    for (field, other) in others {
        let result = f.backend.ensure_subscription(&name, &other).await;
        assert_conflict(result, ObjectKind::Subscription, name.as_str(), field);
    }
    // Prefetch is consumer-side: a new value is taken, not refused.
    let more = config.clone().prefetch(config.prefetch + 7);
    f.backend
        .ensure_subscription(&name, &more)
        .await
        .must("ensuring with another prefetch");
    let info = f
        .backend
        .describe_subscription(&name)
        .await
        .must("describing the subscription");
    assert_eq!(
        info.config.prefetch, more.prefetch,
        "ensure updates the prefetch"
    );
    f.finish().await
}

/// A subscription name is unique across topics: the same name on another topic conflicts,
/// and the first subscription is left as it was.
pub async fn subscription_name_is_unique_across_topics<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "subscription_name_is_unique_across_topics").await;
    let first = f.topic("a").await;
    let second = f.topic("b").await;
    let (name, _sub) = f
        .subscribe_with("s", SubscriptionConfig::new(first.clone()))
        .await;

    let result = f
        .backend
        .ensure_subscription(&name, &SubscriptionConfig::new(second.clone()))
        .await;
    assert_conflict(result, ObjectKind::Subscription, name.as_str(), "topic");
    let info = f
        .backend
        .describe_subscription(&name)
        .await
        .must("describe");
    assert_eq!(
        info.config.topic, first,
        "the subscription stays on its topic"
    );
    let other = f
        .backend
        .describe_topic(&second)
        .await
        .must("describe_topic");
    assert!(
        !other.subscriptions.contains(&name),
        "not added to the other topic"
    );
    f.finish().await
}

/// Deleting a subscription removes it (and only it); deleting a topic removes it with its
/// subscriptions; deleting either twice, or using it after, is `NotFound`.
pub async fn delete_subscription_and_topic<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "delete_subscription_and_topic").await;
    let topic = f.topic("t").await;
    let (gone, _gone_sub) = f
        .subscribe_with("gone", SubscriptionConfig::new(topic.clone()))
        .await;
    let (kept, kept_sub) = f
        .subscribe_with("kept", SubscriptionConfig::new(topic.clone()))
        .await;
    let mut both = vec![gone.clone(), kept.clone()];
    both.sort();
    let mut listed = f
        .backend
        .describe_topic(&topic)
        .await
        .must("describe")
        .subscriptions;
    listed.sort();
    assert_eq!(listed, both, "describe_topic lists its subscriptions");
    let topics = f.backend.list_topics().await.must("list_topics");
    assert!(
        topics.iter().any(|t| t.name == topic),
        "list_topics lists it"
    );
    f.publish_labels(&topic, &["before"]).await;

    f.backend
        .delete_subscription(&gone)
        .await
        .must("delete_subscription");
    let described = f.backend.describe_subscription(&gone).await;
    assert_not_found(
        described,
        ObjectKind::Subscription,
        "describe a deleted subscription",
    );
    let again = f.backend.delete_subscription(&gone).await;
    assert_not_found(again, ObjectKind::Subscription, "delete it twice");
    let subscribed = f.backend.subscribe(&gone).await.map(|_| ());
    assert_not_found(subscribed, ObjectKind::Subscription, "subscribe to it");
    let info = f.backend.describe_topic(&topic).await.must("describe");
    let left = std::slice::from_ref(&kept);
    assert_eq!(info.subscriptions, left, "only the other one is left");
    let got = receive_exactly(&kept_sub, 1, f.timing.deadline, "the other one").await;
    ack_all(got).await;

    f.backend.delete_topic(&topic).await.must("delete_topic");
    let described = f.backend.describe_topic(&topic).await;
    assert_not_found(described, ObjectKind::Topic, "describe a deleted topic");
    let described = f.backend.describe_subscription(&kept).await;
    assert_not_found(described, ObjectKind::Subscription, "its subscriptions");
    let published = f.publisher.publish(&topic, f.message("after")).await;
    assert_not_found(published, ObjectKind::Topic, "publish to a deleted topic");
    let topics = f.backend.list_topics().await.must("list_topics");
    assert!(topics.iter().all(|t| t.name != topic), "no longer listed");
    let again = f.backend.delete_topic(&topic).await;
    assert_not_found(again, ObjectKind::Topic, "delete it twice");
    f.finish().await
}

/// A subscription created with `latest` gets what is published after it was created, and
/// nothing from before.
pub async fn start_position_latest_skips_earlier_messages<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "start_position_latest_skips_earlier_messages").await;
    let topic = f.topic("t").await;
    let early = f.subscribe(&topic, "early").await;
    f.publish_labels(&topic, &["before"]).await;
    let config = SubscriptionConfig::new(topic.clone()).start(StartPosition::Latest);
    let (_, late) = f.subscribe_with("late", config).await;
    f.publish_labels(&topic, &["after"]).await;

    let got = receive_exactly(&late, 1, f.timing.deadline, "after creation").await;
    assert_eq!(sorted_labels(&got), ["after"]);
    ack_all(got).await;
    expect_nothing(&late, f.timing.settle, "messages from before creation").await;
    let got = receive_exactly(&early, 2, f.timing.deadline, "the older subscription").await;
    assert_eq!(sorted_labels(&got), ["after", "before"]);
    ack_all(got).await;
    f.finish().await
}

/// A subscription created with `earliest` replays what the topic retains, then continues.
pub async fn start_position_earliest_replays<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "start_position_earliest_replays").await;
    if let Some(skip) = f.gate() {
        return skip;
    }
    let topic = f.topic("t").await;
    f.publish_labels(&topic, &["one", "two"]).await;
    let config = SubscriptionConfig::new(topic.clone()).start(StartPosition::Earliest);
    let (_, replay) = f.subscribe_with("replay", config).await;
    f.publish_labels(&topic, &["three"]).await;

    let got = receive_exactly(&replay, 3, f.timing.deadline, "replayed and new").await;
    assert_eq!(sorted_labels(&got), ["one", "three", "two"]);
    ack_all(got).await;
    expect_nothing(&replay, f.timing.settle, "each message once").await;
    f.finish().await
}
