//! RabbitMQ force-closes every client connection (`rabbitmqctl close_all_connections`) in
//! the middle of a run: publishers and consumers reconnect by themselves and every message
//! whose publish was confirmed is delivered.
//!
//! Alone in its own test binary, because it closes every connection on the broker.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{
    Backend, Delivery, Message, Namespace, Publisher, Subscriber, SubscriptionConfig,
    SubscriptionName, TopicConfig, TopicName,
};
use sluice_rabbitmq::{RabbitBackend, RabbitOptions};
use tokio::time::Instant;

const URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const TOTAL: usize = 300;

async fn close_all_connections() -> bool {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "close_all_connections", "test"])
        .output()
        .await;
    match output {
        Ok(output) if output.status.success() => true,
        Ok(output) => panic!(
            "rabbitmqctl close_all_connections failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_closing_every_connection_mid_run_loses_no_confirmed_message() {
    let uuid = uuid::Uuid::now_v7().simple().to_string();
    let namespace = Namespace::new(format!("f{}", &uuid[uuid.len() - 10..])).unwrap();
    let options = RabbitOptions::default().namespace(Some(namespace));
    let backend = RabbitBackend::connect(URI, options)
        .await
        .expect("connecting");
    let topic = TopicName::new("force-close").unwrap();
    let name = SubscriptionName::new("force-close-s").unwrap();
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .expect("ensuring the topic");
    backend
        .ensure_subscription(&name, &SubscriptionConfig::new(topic.clone()))
        .await
        .expect("ensuring the subscription");
    let publisher = backend.publisher().await.expect("a publisher");
    let subscriber = backend.subscribe(&name).await.expect("a subscriber");

    let confirmed = Arc::new(Mutex::new(BTreeSet::new()));
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let consumer = {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(90);
            while Instant::now() < end && seen.lock().unwrap().len() < TOTAL {
                match subscriber.receive(50, Duration::from_millis(200)).await {
                    Ok(batch) => {
                        for d in batch {
                            let label = String::from_utf8_lossy(d.message().payload()).into_owned();
                            // A failed ack only means it comes again.
                            if d.ack().await.is_ok() {
                                seen.lock().unwrap().insert(label);
                            }
                        }
                    }
                    Err(err) => {
                        assert!(err.is_retryable(), "receive: {err}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    };

    let (mut closes, mut retries) = (0, 0);
    for i in 0..TOTAL {
        if i == TOTAL / 3 || i == 2 * TOTAL / 3 {
            if !close_all_connections().await {
                eprintln!("SKIPPED rabbitmq::force_close: rabbitmqctl is not available");
                return;
            }
            closes += 1;
        }
        let label = format!("m{i:04}");
        let message = Message::builder(label.clone().into_bytes())
            .build()
            .unwrap();
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            match publisher.publish(&topic, message.clone()).await {
                Ok(_) => break,
                Err(err) if err.is_retryable() && Instant::now() < give_up => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("publishing {label}: {err}"),
            }
        }
        confirmed.lock().unwrap().insert(label);
    }
    assert_eq!(closes, 2, "the connections were force-closed twice");
    assert!(
        backend.reconnections() >= 2,
        "the backend reconnected after each close ({} times; {retries} publishes retried)",
        backend.reconnections()
    );
    consumer.await.expect("the consumer task");

    let confirmed = confirmed.lock().unwrap().clone();
    let seen = seen.lock().unwrap().clone();
    let missing: Vec<_> = confirmed.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "confirmed but never delivered: {missing:?}"
    );
    backend.delete_topic(&topic).await.expect("cleaning up");
}
