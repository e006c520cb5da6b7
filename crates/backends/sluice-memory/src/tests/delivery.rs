//! Fan-out, filters, competing consumers, leases and the verbs.

use std::collections::BTreeSet;
use std::time::Duration;

use sluice_core::{Backend, Delivery, Error, Filter, Message, Subscriber};
use tokio::time::{advance, Instant};

use super::{ack_all, fixture, ids, message, one_now, ready_now};

const LEASE: Duration = Duration::from_secs(10);

#[tokio::test(start_paused = true)]
async fn every_subscription_gets_every_message() {
    let f = fixture().await;
    let billing = f.subscribe("billing", f.config()).await;
    let audit = f.subscribe("audit", f.config()).await;
    f.publish_ids(&["a", "b", "c"]).await;
    assert_eq!(
        ids(&ready_now(&billing, 10).await),
        ["a", "b", "c"],
        "billing gets every message, in publish order"
    );
    assert_eq!(
        ids(&ready_now(&audit, 10).await),
        ["a", "b", "c"],
        "audit gets every message too"
    );
}

#[tokio::test(start_paused = true)]
async fn a_filter_selects_messages_by_routing_key() {
    let f = fixture().await;
    let eu = f
        .subscribe("eu", f.config().filter(Filter::new("eu.#").unwrap()))
        .await;
    let all = f.subscribe("all", f.config()).await;
    for (id, key) in [
        ("1", Some("eu.orders")),
        ("2", Some("us.orders")),
        ("3", None),
    ] {
        let mut builder = Message::builder("x").id(id);
        if let Some(key) = key {
            builder = builder.routing_key(key);
        }
        f.publish(builder.build().unwrap()).await;
    }
    assert_eq!(
        ids(&ready_now(&eu, 10).await),
        ["1"],
        "only the eu message matches `eu.#`"
    );
    assert_eq!(
        ids(&ready_now(&all, 10).await),
        ["1", "2", "3"],
        "no filter receives everything, with or without routing key"
    );
}

#[tokio::test(start_paused = true)]
async fn competing_consumers_share_messages_without_duplicates() {
    let f = fixture().await;
    let first = f.subscribe("workers", f.config()).await;
    let second = f.backend.subscribe(&super::sub("workers")).await.unwrap();
    let all: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    for id in &all {
        f.publish(message(id)).await;
    }
    let a = ready_now(&first, 4).await;
    let b = ready_now(&second, 100).await;
    assert_eq!(a.len(), 4, "the first consumer gets what it asked for");
    assert_eq!(b.len(), 6, "the second gets the rest");
    let seen: BTreeSet<String> = ids(&a).into_iter().chain(ids(&b)).collect();
    assert_eq!(seen.len(), 10, "each message went to exactly one consumer");
    assert!(
        ready_now(&first, 10).await.is_empty(),
        "nothing is left while both hold their leases"
    );
    ack_all(a).await;
    ack_all(b).await;
}

#[tokio::test(start_paused = true)]
async fn receive_holds_at_most_the_prefetch_per_subscriber() {
    let f = fixture().await;
    let first = f.subscribe("workers", f.config().prefetch(2)).await;
    let second = f.backend.subscribe(&super::sub("workers")).await.unwrap();
    f.publish_ids(&["a", "b", "c", "d", "e"]).await;
    let held = ready_now(&first, 10).await;
    assert_eq!(held.len(), 2, "a subscriber holds at most its prefetch");
    assert!(
        ready_now(&first, 10).await.is_empty(),
        "no more until it settles one"
    );
    assert_eq!(
        ready_now(&second, 10).await.len(),
        2,
        "another subscriber has its own prefetch"
    );
    let mut held = held.into_iter();
    held.next().unwrap().ack().await.unwrap();
    assert_eq!(
        ids(&ready_now(&first, 10).await),
        ["e"],
        "settling one makes room for one"
    );
}

#[tokio::test(start_paused = true)]
async fn receive_wakes_for_a_message_published_while_it_waits() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config()).await;
    let start = Instant::now();
    let waiting = tokio::spawn(async move {
        let got = subscriber
            .receive(10, Duration::from_secs(60))
            .await
            .unwrap();
        (ids(&got), start.elapsed())
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    f.publish(message("late")).await;
    let (got, waited) = waiting.await.unwrap();
    assert_eq!(got, ["late"], "the waiting receive gets the message");
    assert_eq!(
        waited,
        Duration::from_secs(5),
        "it returned when the message arrived, not at the end of its wait"
    );
}

#[tokio::test(start_paused = true)]
async fn receive_returns_nothing_after_waiting_when_nothing_arrives() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config()).await;
    let start = Instant::now();
    let got = subscriber
        .receive(10, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(got.is_empty(), "nothing was published");
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(2),
        "it waited the full wait"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_redelivers_the_message_with_attempt_plus_one() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config().lease(LEASE)).await;
    f.publish(message("a")).await;
    let first = one_now(&subscriber).await;
    assert_eq!(first.attempt(), 1, "the first delivery is attempt 1");
    assert_eq!(
        first.lease_deadline(),
        (Instant::now() + LEASE).into_std(),
        "the lease runs for the subscription's lease from now"
    );
    drop(first);
    advance(LEASE - Duration::from_millis(1)).await;
    assert!(
        ready_now(&subscriber, 10).await.is_empty(),
        "not redelivered before the lease runs out"
    );
    let start = Instant::now();
    let again = subscriber
        .receive(10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(1),
        "a waiting receive wakes when the lease runs out"
    );
    assert_eq!(ids(&again), ["a"], "the same message comes back");
    assert_eq!(again[0].attempt(), 2, "lease expiry counts as an attempt");
}

#[tokio::test(start_paused = true)]
async fn verbs_after_the_lease_expired_fail_with_lease_lost_and_hand_the_delivery_back() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config().lease(LEASE)).await;
    f.publish(message("a")).await;
    let stale = one_now(&subscriber).await;
    advance(LEASE).await;
    let err = stale.ack().await.expect_err("the lease ran out");
    assert!(
        matches!(err.error, Error::LeaseLost { ref id } if id == "a"),
        "{}",
        err.error
    );
    let stale = err.delivery;
    assert_eq!(
        stale.message().id().as_str(),
        "a",
        "the delivery is handed back"
    );

    let fresh = one_now(&subscriber).await;
    assert_eq!(fresh.attempt(), 2, "the message was redelivered");
    let err = stale
        .retry(Duration::ZERO)
        .await
        .expect_err("a stale delivery cannot settle the redelivered message");
    assert!(
        matches!(err.error, Error::LeaseLost { .. }),
        "{}",
        err.error
    );
    let mut stale = err.delivery;
    assert!(
        matches!(
            stale.extend_lease(LEASE).await,
            Err(Error::LeaseLost { .. })
        ),
        "extending a lost lease fails too"
    );
    fresh.ack().await.expect("the fresh delivery still settles");
}

#[tokio::test(start_paused = true)]
async fn extend_lease_keeps_the_message_leased() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config().lease(LEASE)).await;
    f.publish(message("a")).await;
    let mut delivery = one_now(&subscriber).await;
    advance(Duration::from_secs(8)).await;
    delivery
        .extend_lease(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        delivery.lease_deadline(),
        (Instant::now() + Duration::from_secs(30)).into_std(),
        "the deadline moved to 30 s from now"
    );
    advance(Duration::from_secs(20)).await;
    assert!(
        ready_now(&subscriber, 10).await.is_empty(),
        "still leased past the original deadline"
    );
    delivery.ack().await.expect("ack within the extended lease");
}

#[tokio::test(start_paused = true)]
async fn retry_redelivers_no_earlier_than_after_with_attempt_plus_one() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config()).await;
    f.publish(message("a")).await;
    one_now(&subscriber)
        .await
        .retry(Duration::from_secs(30))
        .await
        .unwrap();
    advance(Duration::from_millis(29_999)).await;
    assert!(
        ready_now(&subscriber, 10).await.is_empty(),
        "not before `after`"
    );
    advance(Duration::from_millis(1)).await;
    let again = one_now(&subscriber).await;
    assert_eq!(again.attempt(), 2, "a retry counts as an attempt");
}

#[tokio::test(start_paused = true)]
async fn release_redelivers_at_once_with_the_same_attempt() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config()).await;
    f.publish(message("a")).await;
    one_now(&subscriber).await.release().await.unwrap();
    let again = one_now(&subscriber).await;
    assert_eq!(again.attempt(), 1, "release does not count as an attempt");
}

#[tokio::test(start_paused = true)]
async fn ack_removes_the_message_for_good() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config().lease(LEASE)).await;
    f.publish(message("a")).await;
    one_now(&subscriber).await.ack().await.unwrap();
    advance(LEASE * 3).await;
    assert!(
        ready_now(&subscriber, 10).await.is_empty(),
        "an acked message never comes back"
    );
}

#[tokio::test(start_paused = true)]
async fn a_closed_subscriber_refuses_receive_but_its_deliveries_stay_valid() {
    let f = fixture().await;
    let subscriber = f.subscribe("billing", f.config()).await;
    f.publish(message("a")).await;
    let delivery = one_now(&subscriber).await;
    subscriber.close().await.unwrap();
    assert!(
        matches!(
            subscriber.receive(1, Duration::ZERO).await,
            Err(Error::Closed(_))
        ),
        "receive after close is refused"
    );
    delivery
        .ack()
        .await
        .expect("a delivery outlives its subscriber's close");
}

#[tokio::test(start_paused = true)]
async fn closing_a_subscriber_wakes_its_waiting_receive() {
    let f = fixture().await;
    let subscriber = std::sync::Arc::new(f.subscribe("billing", f.config()).await);
    let waiting = {
        let subscriber = subscriber.clone();
        tokio::spawn(async move { subscriber.receive(1, Duration::from_secs(3600)).await })
    };
    tokio::task::yield_now().await;
    subscriber.close().await.unwrap();
    assert!(
        matches!(waiting.await.unwrap(), Err(Error::Closed(_))),
        "the waiting receive ends with closed"
    );
}
