//! Ordering keys at level `strict`.

use std::time::Duration;

use sluice_core::{Delivery, Message};
use tokio::time::advance;

use super::{fixture, ids, one_now, ready_now};

fn keyed(id: &str, key: Option<&str>) -> Message {
    let builder = Message::builder("x").id(id);
    match key {
        Some(key) => builder.ordering_key(key),
        None => builder,
    }
    .build()
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_key_is_held_while_its_message_waits_for_retry_and_the_retried_one_goes_first() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config()).await;
    for id in ["k1", "k2", "k3"] {
        f.publish(keyed(id, Some("customer-1"))).await;
    }
    let first = one_now(&subscriber).await;
    assert_eq!(
        first.message().id().as_str(),
        "k1",
        "only the first message of a key is delivered"
    );
    first.retry(Duration::from_secs(10)).await.unwrap();
    advance(Duration::from_secs(5)).await;
    assert!(
        ready_now(&subscriber, 10).await.is_empty(),
        "the key is held while its message waits for retry"
    );
    advance(Duration::from_secs(5)).await;
    let again = one_now(&subscriber).await;
    assert_eq!(
        (again.message().id().as_str(), again.attempt()),
        ("k1", 2),
        "the retried message goes first again"
    );
    again.ack().await.unwrap();
    let second = one_now(&subscriber).await;
    assert_eq!(
        second.message().id().as_str(),
        "k2",
        "then the next in publish order"
    );
    second.ack().await.unwrap();
    assert_eq!(
        ids(&ready_now(&subscriber, 10).await),
        ["k3"],
        "then the last"
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_is_held_while_its_message_is_leased_and_freed_by_dead_letter() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config()).await;
    f.publish(keyed("k1", Some("k"))).await;
    f.publish(keyed("k2", Some("k"))).await;
    let first = one_now(&subscriber).await;
    assert!(
        ready_now(&subscriber, 10).await.is_empty(),
        "one message per key in flight"
    );
    first.dead_letter("poison".into()).await.unwrap();
    assert_eq!(
        ids(&ready_now(&subscriber, 10).await),
        ["k2"],
        "dead-lettering the head lets the next one go"
    );
}

#[tokio::test(start_paused = true)]
async fn messages_of_other_keys_and_without_key_flow_concurrently() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config()).await;
    f.publish(keyed("a1", Some("a"))).await;
    f.publish(keyed("a2", Some("a"))).await;
    f.publish(keyed("b1", Some("b"))).await;
    f.publish(keyed("n1", None)).await;
    f.publish(keyed("n2", None)).await;
    assert_eq!(
        ids(&ready_now(&subscriber, 10).await),
        ["a1", "b1", "n1", "n2"],
        "one per key, every keyless message, in publish order"
    );
}

#[tokio::test(start_paused = true)]
async fn ordering_is_per_subscription() {
    let f = fixture().await;
    let billing = f.subscribe("billing", f.config()).await;
    let audit = f.subscribe("audit", f.config()).await;
    f.publish(keyed("k1", Some("k"))).await;
    f.publish(keyed("k2", Some("k"))).await;
    let held = one_now(&billing).await;
    assert_eq!(
        ids(&ready_now(&audit, 10).await),
        ["k1"],
        "another subscription's lease does not hold this one's key"
    );
    held.ack().await.unwrap();
}
