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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_amqp_client_publishes_into_sluice_and_reads_its_queues() {
    let uuid = uuid::Uuid::now_v7().simple().to_string();
    let namespace = format!("i{}", &uuid[uuid.len() - 10..]);
    let options = RabbitOptions::default().namespace(Some(Namespace::new(&namespace).unwrap()));
    let backend = RabbitBackend::connect(URI, options)
        .await
        .expect("connecting");
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
    let plain = Connection::connect(URI, ConnectionProperties::default())
        .await
        .expect("a plain connection");
    let channel = plain.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
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
