//! Kafka behaviour beyond the shared suite, against Tansu at 127.0.0.1:9092: two members of
//! one group sharing partitions through a rebalance with one of them stopping, retries that
//! do not block their partition, replay from a time, one delay mover per topic (run by
//! subscribers, publishers or `move_delays`), an ack committed when `close` returns, a poison
//! record produced by a plain Kafka client, and a batch meeting a dedup claim in progress.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sluice_core::dedup::{Claims, DedupStore, PENDING_CLAIM};
use sluice_core::{
    Backend, DedupClaim, Delivery, Message, Naming, PublishOutcome, Publisher, StartPosition,
    Subscriber, SubscriptionConfig, SubscriptionName, TopicConfig, TopicName,
};
use sluice_kafka::KafkaBackend;
use tokio::time::Instant;

mod support;

/// The longest wait for something that must happen (a new member's first assignment takes
/// a few seconds on Tansu).
const DEADLINE: Duration = Duration::from_secs(40);

fn unique(label: &str) -> String {
    let uuid = uuid::Uuid::now_v7().simple().to_string();
    format!("{label}-{}", &uuid[uuid.len() - 8..])
}

async fn topic(backend: &KafkaBackend) -> TopicName {
    let name = TopicName::new(unique("t")).unwrap();
    backend
        .ensure_topic(&name, &TopicConfig::default())
        .await
        .unwrap();
    name
}

async fn subscription(backend: &KafkaBackend, config: SubscriptionConfig) -> SubscriptionName {
    let name = SubscriptionName::new(unique("s")).unwrap();
    backend.ensure_subscription(&name, &config).await.unwrap();
    name
}

fn label(message: &Message) -> String {
    String::from_utf8_lossy(message.payload()).into_owned()
}

async fn publish_labels(backend: &KafkaBackend, topic: &TopicName, labels: &[String]) {
    let publisher = backend.publisher().await.unwrap();
    let messages = labels
        .iter()
        .map(|l| Message::builder(l.clone().into_bytes()).build().unwrap())
        .collect();
    for result in publisher.publish_batch(topic, messages).await {
        result.unwrap();
    }
}

/// Receives until `count` deliveries arrived (acking them), or fails at the deadline.
async fn drain(subscriber: &impl Subscriber, count: usize) -> Vec<(String, u32, Instant)> {
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    while got.len() < count {
        let wait = deadline.saturating_duration_since(Instant::now());
        assert!(
            !wait.is_zero(),
            "only {} of {count} arrived: {:?}",
            got.len(),
            got.iter().map(|(l, _, _)| l).collect::<Vec<_>>()
        );
        for delivery in subscriber.receive(10, wait).await.unwrap() {
            got.push((
                label(delivery.message()),
                delivery.attempt(),
                Instant::now(),
            ));
            delivery.ack().await.unwrap();
        }
    }
    got
}

/// What the two members of the rebalance test saw.
#[derive(Default)]
struct Seen {
    /// Deliveries per label.
    deliveries: HashMap<String, usize>,
    /// Labels delivered after they had been acked.
    after_ack: Vec<String>,
    acked: BTreeSet<String>,
    /// Deliveries per member.
    per_member: [usize; 2],
}

async fn member(
    subscriber: sluice_kafka::KafkaSubscriber,
    index: usize,
    seen: Arc<Mutex<Seen>>,
    total: usize,
    stop_after: Option<usize>,
) {
    let deadline = Instant::now() + DEADLINE * 2;
    let mut mine = 0;
    while Instant::now() < deadline && seen.lock().unwrap().acked.len() < total {
        let batch = subscriber
            .receive(5, Duration::from_millis(500))
            .await
            .unwrap();
        for delivery in batch {
            let label = label(delivery.message());
            {
                let mut seen = seen.lock().unwrap();
                *seen.deliveries.entry(label.clone()).or_default() += 1;
                if seen.acked.contains(&label) {
                    seen.after_ack.push(label.clone());
                }
                seen.per_member[index] += 1;
            }
            // A little work, so the other member's join lands mid-run.
            tokio::time::sleep(Duration::from_millis(5)).await;
            delivery.ack().await.unwrap();
            seen.lock().unwrap().acked.insert(label);
            mine += 1;
        }
        if stop_after.is_some_and(|n| mine >= n) {
            // Stops mid-run, with records of its partitions still unread.
            subscriber.close().await.unwrap();
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_share_partitions_and_lose_nothing_when_one_stops() {
    const TOTAL: usize = 600;
    let first = support::connect().await;
    let topic = topic(&first).await;
    let name = subscription(&first, SubscriptionConfig::new(topic.clone()).prefetch(10)).await;
    let labels: Vec<String> = (0..TOTAL).map(|i| format!("m{i:03}")).collect();
    publish_labels(&first, &topic, &labels).await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let a = first.subscribe(&name).await.unwrap();
    let a = tokio::spawn(member(a, 0, Arc::clone(&seen), TOTAL, Some(TOTAL / 4)));
    // The second member joins once the first is at work: a rebalance mid-run.
    let start = Instant::now();
    while seen.lock().unwrap().per_member[0] == 0 {
        assert!(start.elapsed() < DEADLINE, "the first member got nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = support::connect().await;
    let b = second.subscribe(&name).await.unwrap();
    let b = tokio::spawn(member(b, 1, Arc::clone(&seen), TOTAL, None));
    a.await.unwrap();
    b.await.unwrap();

    let seen = seen.lock().unwrap();
    let missing: Vec<&String> = labels.iter().filter(|l| !seen.acked.contains(*l)).collect();
    assert!(
        missing.is_empty(),
        "lost through the rebalance: {missing:?}"
    );
    assert!(
        seen.after_ack.is_empty(),
        "acked records delivered again: {:?}",
        seen.after_ack
    );
    assert!(
        seen.per_member.iter().all(|n| *n > 0),
        "both members got work: {:?}",
        seen.per_member
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_does_not_block_the_rest_of_its_partition() {
    // One partition: every record is behind the retried one in the log.
    let backend = KafkaBackend::connect(support::options(support::TANSU).partitions(1))
        .await
        .unwrap();
    let topic = topic(&backend).await;
    let name = subscription(&backend, SubscriptionConfig::new(topic.clone())).await;
    let subscriber = backend.subscribe(&name).await.unwrap();
    let labels: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    publish_labels(&backend, &topic, &labels).await;

    let deadline = Instant::now() + DEADLINE;
    let head = loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        assert!(!wait.is_zero(), "nothing arrived");
        if let Some(d) = subscriber.receive(1, wait).await.unwrap().pop() {
            break d;
        }
    };
    assert_eq!(label(head.message()), "r0", "the log's head comes first");
    let after = Duration::from_secs(3);
    let retried_at = Instant::now();
    head.retry(after).await.unwrap();

    let rest = drain(&subscriber, 9).await;
    let mut got: Vec<&str> = rest.iter().map(|(l, _, _)| l.as_str()).collect();
    got.sort();
    assert_eq!(got, &labels[1..], "the rest of the partition");
    let last = rest.iter().map(|(_, _, at)| *at).max().unwrap();
    assert!(
        last < retried_at + after,
        "the rest arrived {:?} after the retry, not held behind it",
        last - retried_at
    );
    let back = drain(&subscriber, 1).await.remove(0);
    assert_eq!(
        (back.0.as_str(), back.1),
        ("r0", 2),
        "retried with the next attempt"
    );
    assert!(
        back.2 >= retried_at + after - Duration::from_millis(50),
        "not before its due time: {:?}",
        back.2 - retried_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_can_start_at_a_time_and_replays_from_there() {
    let backend = support::connect().await;
    let topic = topic(&backend).await;
    publish_labels(&backend, &topic, &["old-0".into(), "old-1".into()]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let from = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish_labels(&backend, &topic, &["new-0".into(), "new-1".into()]).await;

    let at = subscription(
        &backend,
        SubscriptionConfig::new(topic.clone()).start(StartPosition::At(from)),
    )
    .await;
    let earliest = subscription(
        &backend,
        SubscriptionConfig::new(topic.clone()).start(StartPosition::Earliest),
    )
    .await;
    let at = backend.subscribe(&at).await.unwrap();
    let earliest = backend.subscribe(&earliest).await.unwrap();
    let mut from_time: Vec<String> = drain(&at, 2).await.into_iter().map(|d| d.0).collect();
    from_time.sort();
    assert_eq!(from_time, ["new-0", "new-1"], "from the time on");
    let mut all: Vec<String> = drain(&earliest, 4).await.into_iter().map(|d| d.0).collect();
    all.sort();
    assert_eq!(
        all,
        ["new-0", "new-1", "old-0", "old-1"],
        "everything retained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_publish_reaches_each_subscription_once_when_due() {
    let backend = support::connect().await;
    let topic = topic(&backend).await;
    let names = [
        subscription(&backend, SubscriptionConfig::new(topic.clone())).await,
        subscription(&backend, SubscriptionConfig::new(topic.clone())).await,
    ];
    // Two subscribers per subscription, on two connections: two movers for the topic.
    let other = support::connect().await;
    let mut subscribers = Vec::new();
    for name in &names {
        subscribers.push(backend.subscribe(name).await.unwrap());
        subscribers.push(other.subscribe(name).await.unwrap());
    }
    let delay = Duration::from_secs(3);
    let published = Instant::now();
    let publisher = backend.publisher().await.unwrap();
    let message = Message::builder(&b"later"[..]).build().unwrap();
    publisher
        .publish_delayed(&topic, message, delay)
        .await
        .unwrap();

    let got = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, subscriber) in subscribers.into_iter().enumerate() {
        let got = Arc::clone(&got);
        tasks.push(tokio::spawn(async move {
            let end = Instant::now() + DEADLINE;
            while Instant::now() < end {
                for d in subscriber
                    .receive(10, Duration::from_millis(500))
                    .await
                    .unwrap()
                {
                    got.lock().unwrap().push((i / 2, Instant::now()));
                    d.ack().await.unwrap();
                }
                if got.lock().unwrap().len() >= 2 {
                    // Watch a little longer for copies.
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    return;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let got = got.lock().unwrap();
    let mut per_subscription: Vec<usize> = got.iter().map(|(s, _)| *s).collect();
    per_subscription.sort();
    assert_eq!(per_subscription, [0, 1], "once per subscription: {got:?}");
    for (_, at) in got.iter() {
        assert!(
            *at >= published + delay,
            "early by {:?}",
            published + delay - *at
        );
    }
}

/// The first delivery `subscriber` receives, or a failure at the deadline.
async fn receive_one<S: Subscriber>(subscriber: &S) -> S::Delivery {
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "nothing was delivered");
        let mut got = subscriber.receive(1, Duration::from_secs(1)).await.unwrap();
        if let Some(delivery) = got.pop() {
            return delivery;
        }
    }
}

/// Waits until the subscription counts `count` unsettled records (what its topic holds past
/// its commits), or fails at the deadline.
async fn wait_unsettled(backend: &KafkaBackend, name: &SubscriptionName, count: u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stats = backend.stats(name).await.unwrap();
        if stats.unsettled == Some(count) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the topic never held {count} unsettled record(s): {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_publish_reaches_its_topic_with_no_sluice_subscriber_running() {
    // Only the publisher runs (the consumers would be plain Kafka clients): it moves the
    // topic's delayed messages itself while it lives.
    let backend = support::connect().await;
    let topic = topic(&backend).await;
    let name = subscription(&backend, SubscriptionConfig::new(topic.clone())).await;
    let publisher = backend.publisher().await.unwrap();
    let message = Message::builder(&b"later"[..]).build().unwrap();
    publisher
        .publish_delayed(&topic, message, Duration::from_secs(1))
        .await
        .unwrap();
    wait_unsettled(&backend, &name, 1).await;
    publisher.close().await.unwrap();

    // A publisher gone before the message is due: `move_delays` (`sluice delays`) moves it.
    let short_lived = backend.publisher().await.unwrap();
    let message = Message::builder(&b"later still"[..]).build().unwrap();
    short_lived
        .publish_delayed(&topic, message, Duration::from_secs(2))
        .await
        .unwrap();
    short_lived.close().await.unwrap();
    let movers = backend
        .move_delays(std::slice::from_ref(&topic))
        .await
        .unwrap();
    wait_unsettled(&backend, &name, 2).await;
    movers.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_is_committed_when_close_returns() {
    let backend = support::connect().await;
    let topic = topic(&backend).await;
    let name = subscription(&backend, SubscriptionConfig::new(topic.clone())).await;
    publish_labels(&backend, &topic, &["a".into(), "b".into()]).await;
    // Checked by what a consumer receives, not by the topic's high watermarks: Tansu's can
    // report one record short after two appends to one partition (docs/kafka.md, Tansu).
    let subscriber = backend.subscribe(&name).await.unwrap();
    let first = receive_one(&subscriber).await;
    let acked = label(first.message());
    first.ack().await.unwrap();
    // What `sluice consume --count 1` does before it exits: the ack is committed once close
    // returns, not 200 ms later by a thread the exit would kill.
    subscriber.close().await.unwrap();

    let next = backend.subscribe(&name).await.unwrap();
    let second = receive_one(&next).await;
    let other = label(second.message());
    assert_ne!(
        other, acked,
        "the acked record came back: its ack was not committed"
    );
    second.ack().await.unwrap();
    let again = next.receive(1, Duration::from_secs(3)).await.unwrap();
    assert!(
        again.is_empty(),
        "nothing more: {:?}",
        again.iter().map(|d| label(d.message())).collect::<Vec<_>>()
    );
    next.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_from_another_client_goes_to_the_dlq_with_its_reason() {
    let backend = support::connect().await;
    let topic = topic(&backend).await;
    let name = subscription(&backend, SubscriptionConfig::new(topic.clone())).await;
    let subscriber = backend.subscribe(&name).await.unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", support::TANSU)
        .create()
        .unwrap();
    let physical = backend.naming().topic(&topic);
    let headers = OwnedHeaders::new().insert(Header {
        key: "sluice-id",
        value: Some(&[0xff, 0xfe][..]),
    });
    producer
        .send(
            FutureRecord::<(), _>::to(&physical)
                .payload("poison")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    publish_labels(&backend, &topic, &["healthy".into()]).await;

    let got = drain(&subscriber, 1).await;
    assert_eq!(got[0].0, "healthy", "the handler sees only the good record");
    let deadline = Instant::now() + DEADLINE;
    let dead = loop {
        let listed = backend.dlq_list(&name, 10).await.unwrap();
        if let Some(dead) = listed.into_iter().next() {
            break dead;
        }
        assert!(
            Instant::now() < deadline,
            "the poison record never reached the DLQ"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(dead.message.payload().as_ref(), b"poison");
    let envelope = dead.envelope.expect("an envelope");
    assert!(
        envelope.reason.contains("sluice-id"),
        "the reason names the bad header: {}",
        envelope.reason
    );
}

#[tokio::test]
async fn a_batch_meeting_a_claim_in_progress_sends_what_came_before_and_nothing_after() {
    let claims = Arc::new(Claims::default());
    let store: Arc<dyn DedupStore> = Arc::clone(&claims) as Arc<dyn DedupStore>;
    let backend = KafkaBackend::connect(support::options(support::TANSU).dedup_store(store))
        .await
        .unwrap();
    let topic = TopicName::new(unique("t")).unwrap();
    let window = TopicConfig::default().dedup_window(Duration::from_secs(60));
    backend.ensure_topic(&topic, &window).await.unwrap();
    let with_id = |id: &str| {
        Message::builder(id.as_bytes().to_vec())
            .id(id)
            .build()
            .unwrap()
    };

    // A publish of `b` claimed its id and never settled (its answer was lost).
    let physical = Naming::new(Some(support::namespace())).topic(&topic);
    let DedupClaim::Claimed(token) =
        claims.claim_at(&physical, "b", PENDING_CLAIM, std::time::Instant::now())
    else {
        panic!("`b` is free")
    };
    let publisher = backend.publisher().await.unwrap();
    let results = publisher
        .publish_batch(&topic, vec![with_id("a"), with_id("b"), with_id("c")])
        .await;
    assert_eq!(
        results[0].as_ref().map(|r| r.outcome).ok(),
        Some(PublishOutcome::Published),
        "{results:?}"
    );
    for (result, why) in results[1..].iter().zip(["in progress", "earlier message"]) {
        let err = result.as_ref().expect_err("not sent");
        assert!(err.is_retryable() && err.to_string().contains(why), "{err}");
    }

    // `c`'s claim was released with it: after `b`'s claim goes, both go through.
    claims.release(&physical, "b", &token);
    let outcomes: Vec<_> = publisher
        .publish_batch(&topic, vec![with_id("b"), with_id("c"), with_id("a")])
        .await
        .into_iter()
        .map(|r| r.expect("published").outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            PublishOutcome::Published,
            PublishOutcome::Published,
            PublishOutcome::Duplicate
        ]
    );
    publisher.close().await.unwrap();
    backend.delete_topic(&topic).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_publishes_of_two_publishers_of_one_topic_all_arrive() {
    let first = support::connect().await;
    let topic = topic(&first).await;
    let name = subscription(&first, SubscriptionConfig::new(topic.clone())).await;
    let subscriber = first.subscribe(&name).await.unwrap();
    let a = first.publisher().await.unwrap();
    a.publish_delayed(
        &topic,
        Message::builder(&b"a"[..]).build().unwrap(),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = support::connect().await;
    let b = second.publisher().await.unwrap();
    b.publish_delayed(
        &topic,
        Message::builder(&b"b"[..]).build().unwrap(),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let got = drain(&subscriber, 2).await;
    let mut labels: Vec<String> = got.into_iter().map(|(l, _, _)| l).collect();
    labels.sort();
    assert_eq!(labels, ["a", "b"]);
    a.close().await.unwrap();
    b.close().await.unwrap();
}
