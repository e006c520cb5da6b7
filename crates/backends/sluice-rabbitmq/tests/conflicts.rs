//! A RabbitMQ object that already exists with other arguments (created by another tool) is
//! a conflict naming the object, and it leaves Sluice's topology lock free for everyone.

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use sluice_core::{
    Backend, Error, Namespace, ObjectKind, SubscriptionConfig, SubscriptionName, TopicConfig,
    TopicName,
};
use sluice_rabbitmq::{RabbitBackend, RabbitOptions};

const URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_declared_elsewhere_with_other_arguments_is_a_conflict_naming_it() {
    let uuid = uuid::Uuid::now_v7().simple().to_string();
    let namespace = format!("x{}", &uuid[uuid.len() - 10..]);
    let options = RabbitOptions::default().namespace(Some(Namespace::new(&namespace).unwrap()));
    let backend = RabbitBackend::connect(URI, options.clone())
        .await
        .expect("connecting");
    let topic = TopicName::new("orders").unwrap();
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();

    // Another tool made `<ns>.billing` a classic queue; Sluice wants a quorum queue.
    let plain = Connection::connect(URI, ConnectionProperties::default())
        .await
        .expect("a plain connection");
    let channel = plain.create_channel().await.unwrap();
    let queue = format!("{namespace}.billing");
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(&queue, durable, FieldTable::default())
        .await
        .unwrap();

    let billing = SubscriptionName::new("billing").unwrap();
    let result = backend
        .ensure_subscription(&billing, &SubscriptionConfig::new(topic.clone()))
        .await;
    match &result {
        Err(
            err @ Error::Conflict {
                kind,
                name,
                difference,
            },
        ) => {
            assert_eq!(*kind, ObjectKind::Subscription, "{err}");
            assert_eq!(name, "billing", "{err}");
            assert!(difference.contains(&queue), "names the queue: {err}");
            assert!(
                difference.contains("inequivalent arg"),
                "quotes the broker: {err}"
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    // The lock was released: another connection changes the topology at once.
    let other = RabbitBackend::connect(URI, options).await.unwrap();
    let audit = SubscriptionName::new("audit").unwrap();
    let ensured = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        other.ensure_subscription(&audit, &SubscriptionConfig::new(topic.clone())),
    )
    .await
    .expect("the topology lock is free");
    ensured.expect("ensuring another subscription");

    channel
        .queue_delete(&queue, QueueDeleteOptions::default())
        .await
        .unwrap();
    let _ = plain.close(200, "done").await;
    other.delete_topic(&topic).await.unwrap();
}
