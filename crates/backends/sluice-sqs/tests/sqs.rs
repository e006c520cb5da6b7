//! SQS + SNS behaviour beyond the shared suite, against moto at 127.0.0.1:4566: fan-out with a
//! filtered subscription, FIFO order per key with several keys in flight, DLQ and redrive, a
//! poison message, the wire format as a plain SQS client sees it, and the dedup store deciding
//! only the receipts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use sluice_core::dedup::{Claims, DedupStore, PENDING_CLAIM};
use sluice_core::idempotency::{boxed, BoxFuture};
use sluice_core::{
    Backend, ClaimToken, DeadLetterReason, DedupClaim, Delivery, Filter, Message, Naming,
    PublishOutcome, Publisher, RedriveOptions, Subscriber, SubscriptionConfig, SubscriptionName,
    TopicConfig, TopicName,
};
use sluice_sqs::SqsBackend;
use tokio::time::Instant;

mod support;

const DEADLINE: Duration = Duration::from_secs(20);

fn unique(label: &str) -> String {
    let uuid = uuid::Uuid::now_v7().simple().to_string();
    format!("{label}-{}", &uuid[uuid.len() - 8..])
}

async fn topic(backend: &SqsBackend, config: TopicConfig) -> TopicName {
    let name = TopicName::new(unique("t")).unwrap();
    backend.ensure_topic(&name, &config).await.unwrap();
    name
}

async fn subscription(backend: &SqsBackend, config: SubscriptionConfig) -> SubscriptionName {
    let name = SubscriptionName::new(unique("s")).unwrap();
    backend.ensure_subscription(&name, &config).await.unwrap();
    name
}

/// Receives until `count` deliveries arrived (acking them), or fails at the deadline.
async fn drain(subscriber: &impl Subscriber, count: usize) -> Vec<Message> {
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    while got.len() < count {
        let wait = deadline.saturating_duration_since(Instant::now());
        assert!(!wait.is_zero(), "only {} of {count} arrived", got.len());
        for delivery in subscriber.receive(10, wait).await.unwrap() {
            got.push(delivery.message().clone());
            delivery.ack().await.unwrap();
        }
    }
    got
}

fn payloads(messages: &[Message]) -> Vec<String> {
    let mut out: Vec<String> = messages
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload()).into_owned())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn fan_out_reaches_three_subscriptions_and_the_filtered_one_gets_only_its_keys() {
    let backend = support::connect().await;
    let topic = topic(&backend, TopicConfig::default()).await;
    let all_a = subscription(&backend, SubscriptionConfig::new(topic.clone())).await;
    let all_b = subscription(&backend, SubscriptionConfig::new(topic.clone())).await;
    let eu_only = SubscriptionConfig::new(topic.clone()).filter(Filter::new("eu.#").unwrap());
    let eu = subscription(&backend, eu_only).await;

    let keys = [
        "eu.orders",
        "us.orders",
        "eu",
        "asia.orders.placed",
        "eu.orders.placed",
    ];
    let publisher = backend.publisher().await.unwrap();
    let messages = keys
        .iter()
        .map(|k| {
            Message::builder(k.as_bytes().to_vec())
                .routing_key(*k)
                .build()
                .unwrap()
        })
        .collect();
    for result in publisher.publish_batch(&topic, messages).await {
        result.unwrap();
    }

    let mut expected_all: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    expected_all.sort();
    for name in [&all_a, &all_b] {
        let subscriber = backend.subscribe(name).await.unwrap();
        assert_eq!(
            payloads(&drain(&subscriber, keys.len()).await),
            expected_all
        );
    }
    let subscriber = backend.subscribe(&eu).await.unwrap();
    assert_eq!(
        payloads(&drain(&subscriber, 3).await),
        ["eu", "eu.orders", "eu.orders.placed"]
    );
    let extra = subscriber
        .receive(10, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(extra.is_empty(), "the filter let through {:?}", extra.len());
    let info = backend.describe_topic(&topic).await.unwrap();
    assert_eq!(info.subscriptions.len(), 3);
    backend.delete_topic(&topic).await.unwrap();
}

#[tokio::test]
async fn fifo_keeps_each_key_in_order_while_other_keys_are_in_flight() {
    let backend = support::connect().await;
    let topic = topic(&backend, TopicConfig::default().ordered(true)).await;
    let name = subscription(
        &backend,
        SubscriptionConfig::new(topic.clone()).prefetch(16),
    )
    .await;
    let subscriber = backend.subscribe(&name).await.unwrap();

    const KEYS: [&str; 4] = ["k1", "k2", "k3", "k4"];
    const PER_KEY: usize = 5;
    let publisher = backend.publisher().await.unwrap();
    let mut batch = Vec::new();
    for n in 0..PER_KEY {
        for key in KEYS {
            let message = Message::builder(format!("{key}-{n}").into_bytes())
                .ordering_key(key)
                .build()
                .unwrap();
            batch.push(message);
        }
    }
    for result in publisher.publish_batch(&topic, batch).await {
        result.unwrap();
    }

    // Hold what arrives; settle the oldest held delivery only once two keys are held or
    // nothing new came, so several keys are in flight at once whenever SQS allows it.
    let mut held: Vec<_> = Vec::new();
    let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut most_keys_in_flight = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let total = KEYS.len() * PER_KEY;
    let mut seen = 0;
    while seen < total {
        assert!(
            Instant::now() < deadline,
            "only {seen} of {total}: {order:?}"
        );
        let got = subscriber
            .receive(10, Duration::from_secs(3))
            .await
            .unwrap();
        let nothing_new = got.is_empty();
        for d in got {
            let key = d.message().ordering_key().unwrap().to_owned();
            let label = String::from_utf8_lossy(d.message().payload()).into_owned();
            let in_flight: HashSet<String> = held
                .iter()
                .map(|h: &sluice_sqs::SqsDelivery| h.message().ordering_key().unwrap().to_owned())
                .collect();
            assert!(!in_flight.contains(&key), "two of {key} in flight at once");
            order.entry(key).or_default().push(label);
            seen += 1;
            held.push(d);
        }
        let keys: HashSet<&str> = held
            .iter()
            .filter_map(|d| d.message().ordering_key())
            .collect();
        most_keys_in_flight = most_keys_in_flight.max(keys.len());
        if !held.is_empty() && (nothing_new || keys.len() >= 2) {
            held.remove(0).ack().await.unwrap();
        }
    }
    for d in held {
        d.ack().await.unwrap();
    }
    for key in KEYS {
        let expected: Vec<String> = (0..PER_KEY).map(|n| format!("{key}-{n}")).collect();
        assert_eq!(order[key], expected, "publish order of {key}");
    }
    assert!(
        most_keys_in_flight >= 2,
        "keys are handled concurrently (at most {most_keys_in_flight} in flight)"
    );
    backend.delete_topic(&topic).await.unwrap();
}

#[tokio::test]
async fn dead_lettered_messages_keep_their_envelope_and_redrive_starts_over() {
    let backend = support::connect().await;
    let topic = topic(&backend, TopicConfig::default()).await;
    let name = subscription(&backend, SubscriptionConfig::new(topic.clone())).await;
    let subscriber = backend.subscribe(&name).await.unwrap();
    let publisher = backend.publisher().await.unwrap();
    for label in ["bad-1", "bad-2", "good"] {
        let message = Message::builder(label.as_bytes().to_vec())
            .id(label)
            .header("tenant", "acme")
            .build()
            .unwrap();
        publisher.publish(&topic, message).await.unwrap();
    }
    let deadline = Instant::now() + DEADLINE;
    let mut settled = 0;
    while settled < 3 {
        assert!(Instant::now() < deadline, "only {settled} of 3 settled");
        for d in subscriber
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap()
        {
            if d.message().id().as_str().starts_with("bad") {
                let reason = DeadLetterReason::new("validation").with_last_error("no total");
                d.dead_letter(reason).await.unwrap();
            } else {
                d.ack().await.unwrap();
            }
            settled += 1;
        }
    }

    let listed = backend.dlq_list(&name, 10).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|m| m.message.id().as_str()).collect();
    assert_eq!(ids, ["bad-1", "bad-2"], "oldest first");
    let envelope = listed[0].envelope.as_ref().expect("an envelope");
    assert_eq!(envelope.subscription, name.as_str());
    assert_eq!(envelope.reason, "validation");
    assert_eq!(listed[0].message.header("tenant"), Some("acme"));
    let listed_again = backend.dlq_list(&name, 10).await.unwrap();
    assert_eq!(listed_again.len(), 2, "listing removes nothing");

    let dry = backend
        .dlq_redrive(&name, &RedriveOptions::all().dry_run(true))
        .await
        .unwrap();
    assert_eq!(dry.moved.len(), 2);
    assert_eq!(
        backend.dlq_list(&name, 10).await.unwrap().len(),
        2,
        "a dry run moves nothing"
    );
    let report = backend
        .dlq_redrive(&name, &RedriveOptions::all().ids(["bad-2"]))
        .await
        .unwrap();
    assert_eq!(report.moved, ["bad-2"]);
    let back = subscriber.receive(10, DEADLINE).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].message().id().as_str(), "bad-2");
    assert_eq!(back[0].attempt(), 1, "a redriven message starts over");
    assert!(
        back[0].message().header("sluice-dlq-reason").is_none(),
        "envelope removed"
    );
    for d in back {
        d.ack().await.unwrap();
    }
    assert_eq!(backend.dlq_purge(&name).await.unwrap(), 1);
    let stats = backend.stats(&name).await.unwrap();
    assert_eq!(stats.dead_lettered, Some(0));
    backend.delete_topic(&topic).await.unwrap();
}

/// A raw SQS client of the subscription's queue.
async fn raw_queue(name: &SubscriptionName) -> (aws_sdk_sqs::Client, String) {
    let config = sluice_sqs::sdk_config(&support::options(support::MOTO)).await;
    let client = aws_sdk_sqs::Client::new(&config);
    let queue = format!("{}-{}", support::namespace(), name);
    let url = client
        .get_queue_url()
        .queue_name(&queue)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    (client, url)
}

#[tokio::test]
async fn a_plain_sqs_client_reads_the_wire_format_and_poison_goes_to_the_dlq() {
    let backend = support::connect().await;
    let topic = topic(&backend, TopicConfig::default()).await;
    let name = subscription(&backend, SubscriptionConfig::new(topic.clone())).await;
    let (client, url) = raw_queue(&name).await;

    let binary = vec![0u8, 159, 146, 150, 255];
    let message = Message::builder(binary.clone())
        .id("bin-1")
        .routing_key("eu.orders")
        .header("tenant", "acme")
        .build()
        .unwrap();
    backend
        .publisher()
        .await
        .unwrap()
        .publish(&topic, message)
        .await
        .unwrap();
    let out = client
        .receive_message()
        .queue_url(&url)
        .wait_time_seconds(5)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap();
    let raw = &out.messages()[0];
    let attributes: HashMap<&str, &str> = raw
        .message_attributes()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v.string_value().unwrap()))
        .collect();
    assert_eq!(attributes["sluice-id"], "bin-1");
    assert_eq!(attributes["routing_key"], "eu.orders");
    assert_eq!(attributes["sluice-encoding"], "base64");
    assert_eq!(attributes["sluice-headers"], r#"{"tenant":"acme"}"#);
    let body = base64::engine::general_purpose::STANDARD
        .decode(raw.body().unwrap())
        .unwrap();
    assert_eq!(body, binary);
    client
        .delete_message()
        .queue_url(&url)
        .receipt_handle(raw.receipt_handle().unwrap())
        .send()
        .await
        .unwrap();

    // A message whose Sluice attributes do not decode never reaches a handler.
    let bad = aws_sdk_sqs::types::MessageAttributeValue::builder()
        .data_type("String")
        .string_value("rot13")
        .build()
        .unwrap();
    client
        .send_message()
        .queue_url(&url)
        .message_body("uryyb")
        .message_attributes("sluice-encoding", bad)
        .send()
        .await
        .unwrap();
    let subscriber = backend.subscribe(&name).await.unwrap();
    let got = subscriber
        .receive(10, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(got.is_empty(), "the poison message was handed out");
    let deadline = Instant::now() + DEADLINE;
    let listed = loop {
        let listed = backend.dlq_list(&name, 10).await.unwrap();
        if !listed.is_empty() || Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(listed.len(), 1, "the poison message is in the DLQ");
    let envelope = listed[0].envelope.as_ref().unwrap();
    assert!(
        envelope.reason.contains("undecodable"),
        "{}",
        envelope.reason
    );
    assert!(envelope.reason.contains("rot13"), "{}", envelope.reason);
    assert_eq!(listed[0].message.payload().as_ref(), b"uryyb");

    // A plain producer's message (no `sluice-id`, headers with numbers) keeps one id across
    // its redeliveries, and its headers.
    let headers = aws_sdk_sqs::types::MessageAttributeValue::builder()
        .data_type("String")
        .string_value(r#"{"tenant":"globex","priority":5}"#)
        .build()
        .unwrap();
    let sent = client
        .send_message()
        .queue_url(&url)
        .message_body("plain")
        .message_attributes("sluice-headers", headers)
        .send()
        .await
        .unwrap();
    let mut ids = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while ids.len() < 2 {
        assert!(Instant::now() < deadline, "redeliveries seen: {ids:?}");
        for delivery in subscriber
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap()
        {
            let m = delivery.message();
            assert_eq!(m.payload().as_ref(), b"plain");
            assert_eq!(m.header("tenant"), Some("globex"));
            assert_eq!(m.header("priority"), Some("5"));
            ids.push(m.id().to_string());
            if ids.len() < 2 {
                delivery.release().await.unwrap();
            } else {
                delivery.ack().await.unwrap();
            }
        }
    }
    assert_eq!(ids[0], ids[1], "a redelivery has the same id");
    assert_eq!(ids[0], format!("sqs-{}", sent.message_id().unwrap()));
    backend.delete_topic(&topic).await.unwrap();
}

#[tokio::test]
async fn configuration_conflicts_and_unsupported_windows_are_named() {
    let backend = support::connect().await;
    let topic = topic(&backend, TopicConfig::default()).await;
    let err = backend
        .ensure_topic(
            &TopicName::new(unique("w")).unwrap(),
            &TopicConfig::default().dedup_window(Duration::from_secs(60)),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("5 minutes"), "{err}");
    let name = subscription(&backend, SubscriptionConfig::new(topic.clone())).await;
    let other = TopicName::new(unique("o")).unwrap();
    backend
        .ensure_topic(&other, &TopicConfig::default())
        .await
        .unwrap();
    let err = backend
        .ensure_subscription(&name, &SubscriptionConfig::new(other.clone()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("topic: existing"), "{err}");
    // A fresh handle reads the configuration back from the tags.
    let fresh = support::connect().await;
    let info = fresh.describe_subscription(&name).await.unwrap();
    assert_eq!(info.config.topic, topic);
    backend.delete_topic(&topic).await.unwrap();
    backend.delete_topic(&other).await.unwrap();
    let err = fresh.describe_subscription(&name).await.unwrap_err();
    assert!(matches!(err, sluice_core::Error::NotFound { .. }), "{err}");
}

/// A dedup store that is down: every call fails, retryably.
struct Unreachable;

impl DedupStore for Unreachable {
    fn claim<'a>(
        &'a self,
        _topic: &'a str,
        _id: &'a str,
        _pending: Duration,
    ) -> BoxFuture<'a, sluice_core::Result<DedupClaim>> {
        boxed(async { Err(sluice_core::Error::connection("the store is down", None)) })
    }

    fn confirm<'a>(
        &'a self,
        _topic: &'a str,
        _id: &'a str,
        _token: &'a ClaimToken,
        _window: Duration,
    ) -> BoxFuture<'a, sluice_core::Result<()>> {
        boxed(async { Err(sluice_core::Error::connection("the store is down", None)) })
    }

    fn release<'a>(
        &'a self,
        _topic: &'a str,
        _id: &'a str,
        _token: &'a ClaimToken,
    ) -> BoxFuture<'a, sluice_core::Result<()>> {
        boxed(async { Err(sluice_core::Error::connection("the store is down", None)) })
    }

    fn forget_topic<'a>(&'a self, _topic: &'a str) -> BoxFuture<'a, sluice_core::Result<()>> {
        boxed(async { Err(sluice_core::Error::connection("the store is down", None)) })
    }
}

fn with_id(id: &str) -> Message {
    Message::builder(id.as_bytes().to_vec())
        .id(id)
        .build()
        .unwrap()
}

/// SQS FIFO's only window: 5 minutes.
fn five_minute_window() -> TopicConfig {
    TopicConfig::default().dedup_window(Duration::from_secs(300))
}

#[tokio::test]
async fn a_dedup_store_that_is_down_never_stops_a_publish_sqs_still_drops_the_copy() {
    let backend =
        SqsBackend::connect(support::options(support::MOTO).dedup_store(Arc::new(Unreachable)))
            .await
            .unwrap();
    let topic = topic(&backend, five_minute_window()).await;
    let name = subscription(&backend, SubscriptionConfig::new(topic.clone())).await;
    let publisher = backend.publisher().await.unwrap();

    let receipt = publisher.publish(&topic, with_id("a")).await;
    assert_eq!(
        receipt.expect("published without the store").outcome,
        PublishOutcome::Published
    );
    let again = publisher.publish(&topic, with_id("a")).await.unwrap();
    assert_eq!(
        again.outcome,
        PublishOutcome::Published,
        "without the store the receipt cannot say duplicate"
    );
    let batch = publisher
        .publish_batch(&topic, vec![with_id("b"), with_id("c")])
        .await;
    assert!(batch.iter().all(Result::is_ok), "{batch:?}");

    let subscriber = backend.subscribe(&name).await.unwrap();
    let got = drain(&subscriber, 3).await;
    assert_eq!(payloads(&got), ["a", "b", "c"]);
    let extra = subscriber
        .receive(10, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(extra.is_empty(), "SQS FIFO dropped the copy of `a`");
    backend.delete_topic(&topic).await.unwrap();
}

#[tokio::test]
async fn a_pending_claim_fails_a_publish_retryably_and_its_batch_after_it_until_released() {
    let claims = Arc::new(Claims::default());
    let store: Arc<dyn DedupStore> = Arc::clone(&claims) as Arc<dyn DedupStore>;
    let backend = SqsBackend::connect(support::options(support::MOTO).dedup_store(store))
        .await
        .unwrap();
    let topic = topic(&backend, five_minute_window()).await;
    let name = subscription(&backend, SubscriptionConfig::new(topic.clone())).await;
    let publisher = backend.publisher().await.unwrap();

    // A publish of `a` claimed its id and never settled (its answer was lost). Claims are
    // keyed by the topic's physical name (without `.fifo`).
    let physical = Naming::new(Some(support::namespace()))
        .with_separator('-')
        .topic(&topic);
    let DedupClaim::Claimed(token) =
        claims.claim_at(&physical, "a", PENDING_CLAIM, std::time::Instant::now())
    else {
        panic!("`a` is free")
    };
    let err = publisher
        .publish(&topic, with_id("a"))
        .await
        .expect_err("a pending claim is never a duplicate");
    assert!(
        err.is_retryable() && err.to_string().contains("in progress"),
        "{err}"
    );
    let batch = publisher
        .publish_batch(&topic, vec![with_id("a"), with_id("b")])
        .await;
    assert!(
        batch
            .iter()
            .all(|r| r.as_ref().is_err_and(|e| e.is_retryable())),
        "nothing after the message in progress is sent: {batch:?}"
    );

    claims.release(&physical, "a", &token);
    let outcomes: Vec<_> = publisher
        .publish_batch(&topic, vec![with_id("a"), with_id("b"), with_id("a")])
        .await
        .into_iter()
        .map(|r| r.unwrap().outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            PublishOutcome::Published,
            PublishOutcome::Published,
            PublishOutcome::Duplicate
        ],
        "the later copy in a batch is a duplicate of the earlier"
    );
    let again = publisher.publish(&topic, with_id("b")).await.unwrap();
    assert_eq!(again.outcome, PublishOutcome::Duplicate, "b was confirmed");

    let subscriber = backend.subscribe(&name).await.unwrap();
    let got = drain(&subscriber, 2).await;
    assert_eq!(payloads(&got), ["a", "b"]);
    backend.delete_topic(&topic).await.unwrap();
}
