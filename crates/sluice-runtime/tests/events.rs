//! Several event types on one topic: dispatch by type and the unknown-type policy.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{setup, wait_until, Events, Running};
use sluice_core::{Backend, Message};
use sluice_runtime::{
    event_message, Context, Event, OutcomeKind, Producer, Router, UnknownType, Worker,
};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    order_id: u64,
}
impl Event for OrderPlaced {
    const TYPE: &'static str = "order.placed";
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct OrderCancelled {
    order_id: u64,
    reason: String,
}
impl Event for OrderCancelled {
    const TYPE: &'static str = "order.cancelled";
}

fn router(seen: &Arc<Mutex<Vec<String>>>) -> Router {
    let (a, b) = (seen.clone(), seen.clone());
    Router::new()
        .on(move |e: OrderPlaced, _c: Context| {
            a.lock().unwrap().push(format!("placed {}", e.order_id));
            async { Ok(()) }
        })
        .on(move |e: OrderCancelled, _c: Context| {
            b.lock()
                .unwrap()
                .push(format!("cancelled {} ({})", e.order_id, e.reason));
            async { Ok(()) }
        })
}

#[tokio::test(start_paused = true)]
async fn each_type_reaches_its_own_handler_and_an_unknown_type_is_dead_lettered() {
    let s = setup(|c| c).await;
    let producer = Producer::new(s.backend.publisher().await.unwrap());
    producer
        .publish_event(&s.topic, &OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    producer
        .publish_event(
            &s.topic,
            &OrderCancelled {
                order_id: 1,
                reason: "customer".into(),
            },
        )
        .await
        .unwrap();
    s.publish(
        Message::json_builder("{}")
            .message_type("order.refunded")
            .id("refund-1")
            .build()
            .unwrap(),
    )
    .await;
    s.publish(
        Message::json_builder(r#"{"order_id":"not a number"}"#)
            .message_type("order.placed")
            .id("bad-1")
            .build()
            .unwrap(),
    )
    .await;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let events = Events::default();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        router(&seen),
    )
    .concurrency(1)
    .observer(events.observer())
    .build();
    let running = Running::start(worker);
    wait_until("all settled", Duration::from_secs(5), || {
        events.kinds().len() == 4
    })
    .await;
    running.stop().await;

    assert_eq!(
        *seen.lock().unwrap(),
        vec!["placed 1".to_owned(), "cancelled 1 (customer)".to_owned()]
    );
    let dlq = s.backend.dlq_list(&s.subscription, 10).await.unwrap();
    let reasons: Vec<(String, String)> = dlq
        .iter()
        .map(|d| {
            let e = d.envelope.clone().unwrap();
            (d.message.id().to_string(), e.reason)
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("refund-1".to_owned(), "unknown message type".to_owned()),
            ("bad-1".to_owned(), "undecodable payload".to_owned())
        ]
    );
    let unknown = dlq[0].envelope.clone().unwrap().last_error.unwrap();
    assert!(
        unknown.contains("\"order.refunded\"") && unknown.contains("order.cancelled, order.placed"),
        "{unknown}"
    );
}

#[tokio::test(start_paused = true)]
async fn under_the_ack_policy_an_unknown_type_is_acked_and_skipped() {
    let s = setup(|c| c).await;
    s.publish(
        event_message(&OrderPlaced { order_id: 7 })
            .unwrap()
            .build()
            .unwrap(),
    )
    .await;
    s.publish(
        Message::json_builder("{}")
            .message_type("invoice.sent")
            .build()
            .unwrap(),
    )
    .await;
    s.publish(Message::json_builder("{}").build().unwrap())
        .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let events = Events::default();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        router(&seen).unknown_type(UnknownType::Ack),
    )
    .observer(events.observer())
    .build();
    let running = Running::start(worker);
    wait_until("all settled", Duration::from_secs(5), || {
        events.kinds().len() == 3
    })
    .await;
    let report = running.stop().await;
    assert_eq!(*seen.lock().unwrap(), vec!["placed 7".to_owned()]);
    assert_eq!(
        (report.acked, report.skipped, report.dead_lettered),
        (1, 2, 0)
    );
    assert!(events.count(|k| matches!(k, OutcomeKind::Skipped { reason } if reason.contains("unknown message type"))) == 2);
    assert_eq!(
        s.backend.stats(&s.subscription).await.unwrap().backlog(),
        Some(0)
    );
}
