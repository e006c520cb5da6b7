//! A plain AMQP client (raw lapin, following `docs/rabbitmq.md` and nothing else) publishes
//! into a Sluice topic and reads a Sluice subscription's queue.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sluice_core::{
    Backend, Delivery, Filter, Message, Namespace, Publisher, Subscriber, SubscriptionConfig,
    SubscriptionName, TopicConfig, TopicName,
};
use sluice_rabbitmq::{RabbitBackend, RabbitOptions};

const URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn text(value: Option<&AMQPValue>) -> Option<String> {
    match value? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// A backend on a namespace of this test's own.
async fn fresh_backend() -> (RabbitBackend, String) {
    let uuid = uuid::Uuid::now_v7().simple().to_string();
    let namespace = format!("i{}", &uuid[uuid.len() - 10..]);
    let options = RabbitOptions::default().namespace(Some(Namespace::new(&namespace).unwrap()));
    let backend = RabbitBackend::connect(URI, options)
        .await
        .expect("connecting");
    (backend, namespace)
}

/// A plain client's connection and a channel on it, with publisher confirms when asked.
async fn plain_channel(confirms: bool) -> (Connection, lapin::Channel) {
    let plain = Connection::connect(URI, ConnectionProperties::default())
        .await
        .expect("a plain connection");
    let channel = plain.create_channel().await.unwrap();
    if confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
    }
    (plain, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_amqp_client_publishes_into_sluice_and_reads_its_queues() {
    let (backend, namespace) = fresh_backend().await;
    let topic = TopicName::new("orders").unwrap();
    let (sluice_side, plain_side) = (
        SubscriptionName::new("billing").unwrap(),
        SubscriptionName::new("audit").unwrap(),
    );
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    let filter = Filter::new("eu.#").unwrap();
    for name in [&sluice_side, &plain_side] {
        let config = SubscriptionConfig::new(topic.clone()).filter(filter.clone());
        backend.ensure_subscription(name, &config).await.unwrap();
    }
    let subscriber = backend.subscribe(&sluice_side).await.unwrap();

    // The plain client publishes to the topic exchange `<ns>.orders`.
    let (plain, channel) = plain_channel(true).await;
    let mut headers = FieldTable::default();
    headers.insert("tenant".into(), AMQPValue::LongString("acme".into()));
    headers.insert("retries".into(), AMQPValue::LongInt(5));
    let properties = BasicProperties::default()
        .with_message_id("plain-1".into())
        .with_content_type("application/json".into())
        .with_type("order.placed".into())
        .with_timestamp(1_700_000_000)
        .with_delivery_mode(2)
        .with_headers(headers);
    let exchange = format!("{namespace}.orders");
    let confirm = channel
        .basic_publish(
            &exchange,
            "eu.orders",
            BasicPublishOptions::default(),
            br#"{"id":1}"#,
            properties,
        )
        .await
        .unwrap();
    assert!(confirm.await.unwrap().is_ack(), "the broker confirmed");

    let got = subscriber
        .receive(1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "Sluice receives the plain client's message");
    let m = got[0].message();
    assert_eq!(m.id().as_str(), "plain-1");
    assert_eq!(m.routing_key(), Some("eu.orders"));
    assert_eq!(m.content_type(), Some("application/json"));
    assert_eq!(m.message_type(), Some("order.placed"));
    assert_eq!(m.header("tenant"), Some("acme"));
    assert_eq!(m.header("retries"), Some("5"), "numbers arrive as text");
    assert_eq!(
        m.published_at(),
        Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    );
    assert_eq!(got[0].attempt(), 1);
    for d in got {
        d.ack().await.unwrap();
    }

    // Sluice publishes; the plain client reads the `audit` subscription's quorum queue.
    let publisher = backend.publisher().await.unwrap();
    let message = Message::builder("hello")
        .id("sluice-1")
        .routing_key("eu.orders.placed")
        .ordering_key("customer-7")
        .header("tenant", "acme")
        .content_type("text/plain")
        .build()
        .unwrap();
    let before = SystemTime::now();
    publisher.publish(&topic, message).await.unwrap();
    let queue = format!("{namespace}.audit");
    // `audit` got the plain client's message too (fan-out): it comes first.
    let first = channel
        .basic_get(&queue, BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the plain message, fanned out to `audit`");
    assert_eq!(
        first
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("plain-1")
    );
    let mut read = None;
    for _ in 0..100 {
        read = channel
            .basic_get(&queue, BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        if read.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let read = read
        .expect("the plain client reads the Sluice message")
        .delivery;
    assert_eq!(read.data, b"hello");
    assert_eq!(read.routing_key.as_str(), "eu.orders.placed");
    let p = &read.properties;
    assert_eq!(
        p.message_id().as_ref().map(|s| s.as_str()),
        Some("sluice-1")
    );
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("text/plain")
    );
    assert_eq!(p.delivery_mode(), &Some(2), "persistent");
    let seconds = before.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(
        p.timestamp().is_some_and(|t| t + 1 >= seconds),
        "timestamp set"
    );
    let headers = p.headers().as_ref().expect("headers").inner();
    assert_eq!(text(headers.get("tenant")).as_deref(), Some("acme"));
    assert_eq!(
        text(headers.get("sluice-ordering-key")).as_deref(),
        Some("customer-7")
    );
    assert_eq!(
        text(headers.get("sluice-routing-key")).as_deref(),
        Some("eu.orders.placed")
    );
    assert!(headers.contains_key("sluice-published-at"));

    let _ = plain.close(200, "done").await;
    backend.delete_topic(&topic).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looking_at_an_unused_namespace_leaves_nothing_behind() {
    let (backend, namespace) = fresh_backend().await;
    assert!(backend.list_topics().await.unwrap().is_empty());
    let (_plain, channel) = plain_channel(false).await;
    let catalog = format!("{namespace}.sluice.catalog");
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let found = channel
        .queue_declare(&catalog, passive, FieldTable::default())
        .await;
    assert!(found.is_err(), "`sluice topics` left {catalog} behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_clients_headers_are_kept_and_no_routing_key_is_invented() {
    let (backend, namespace) = fresh_backend().await;
    let topic = TopicName::new("orders").unwrap();
    let name = SubscriptionName::new("billing").unwrap();
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    backend
        .ensure_subscription(&name, &SubscriptionConfig::new(topic.clone()))
        .await
        .unwrap();
    let subscriber = backend.subscribe(&name).await.unwrap();

    // A plain client's message with header types Sluice does not write.
    let (_plain, channel) = plain_channel(true).await;
    let mut headers = FieldTable::default();
    headers.insert(
        "trace".into(),
        AMQPValue::ByteArray(b"abc-123".to_vec().into()),
    );
    headers.insert(
        "tags".into(),
        AMQPValue::FieldArray(
            vec![AMQPValue::LongString("a".into()), AMQPValue::LongInt(2)].into(),
        ),
    );
    let properties = BasicProperties::default()
        .with_message_id("plain-1".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    channel
        .basic_publish(
            &format!("{namespace}.orders"),
            "eu.paris",
            BasicPublishOptions::default(),
            b"{}",
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    // And a Sluice message without a routing key.
    let keyless = Message::builder("no key").id("keyless-1").build().unwrap();
    backend
        .publisher()
        .await
        .unwrap()
        .publish(&topic, keyless)
        .await
        .unwrap();

    let mut seen = 0;
    while seen < 2 {
        for delivery in subscriber
            .receive(10, Duration::from_secs(5))
            .await
            .unwrap()
        {
            let m = delivery.message().clone();
            if m.id().as_str() == "plain-1" {
                assert_eq!(m.header("trace"), Some("abc-123"));
                assert_eq!(m.header("tags"), Some(r#"["a",2]"#));
                assert_eq!(m.routing_key(), Some("eu.paris"));
            } else {
                assert_eq!(m.routing_key(), None);
            }
            let reason = sluice_core::DeadLetterReason::new("checked");
            delivery.dead_letter(reason).await.unwrap();
            seen += 1;
        }
    }
    let listed = backend.dlq_list(&name, 10).await.unwrap();
    assert_eq!(listed.len(), 2);
    for d in &listed {
        let key = d.message.routing_key();
        match d.message.id().as_str() {
            "plain-1" => {
                assert_eq!(key, Some("eu.paris"));
                assert_eq!(d.message.header("trace"), Some("abc-123"));
            }
            _ => assert_eq!(key, None, "the DLQ's queue name became a routing key"),
        }
    }
    backend
        .dlq_redrive(&name, &sluice_core::RedriveOptions::default())
        .await
        .unwrap();
    let mut back = Vec::new();
    while back.len() < 2 {
        for delivery in subscriber
            .receive(10, Duration::from_secs(5))
            .await
            .unwrap()
        {
            back.push((
                delivery.message().id().to_string(),
                delivery.message().routing_key().map(str::to_owned),
            ));
            delivery.ack().await.unwrap();
        }
    }
    back.sort();
    assert_eq!(
        back,
        [
            ("keyless-1".to_owned(), None),
            ("plain-1".to_owned(), Some("eu.paris".to_owned()))
        ]
    );
    backend.delete_topic(&topic).await.unwrap();
}
