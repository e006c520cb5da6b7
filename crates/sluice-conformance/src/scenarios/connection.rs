//! Losing things: a consumer that closes, a connection that breaks, a broker that restarts.
//! None of them may lose a confirmed message.

use std::collections::BTreeSet;

use sluice_core::{Backend, Delivery, Error, Message, Publisher, Subscriber, SubscriptionConfig};
use tokio::time::Instant;

use crate::fixture::{Fixture, Outcome};
use crate::harness::{Harness, Timing};
use crate::proxy::TcpProxy;
use crate::wait::{
    ack_all, eventually, expect_nothing, label, receive_exactly, sorted_labels, Must, RECEIVE_BATCH,
};

/// Fails unless an error seen while the broker is unreachable is one worth retrying.
fn retryable(err: Error, what: &str) -> String {
    assert!(
        err.is_retryable(),
        "{what} fails with a retryable error, got {err}"
    );
    err.to_string()
}

/// Publishes `message`, retrying retryable errors (same id) until it is confirmed within
/// the recovery time. An attempt that hangs for longer than the deadline counts as failed.
async fn publish_until_confirmed<P: Publisher>(
    publisher: &P,
    topic: &sluice_core::TopicName,
    message: Message,
    timing: &Timing,
) {
    let what = format!("publishing {} while reconnecting", message.id());
    let per_attempt = timing.deadline;
    eventually(timing.recovery, timing.poll_interval(), &what, || {
        let attempt = tokio::time::timeout(per_attempt, publisher.publish(topic, message.clone()));
        async move {
            match attempt.await {
                Ok(result) => result.map(|_| ()).map_err(|e| retryable(e, "publish")),
                Err(_) => Err(format!("an attempt hung for {per_attempt:?}")),
            }
        }
    })
    .await;
}

/// Receives and acks until every label in `want` was seen (at least once) within the
/// recovery time, tolerating the retryable errors of a reconnecting client; returns what is
/// still missing.
async fn consume_until_seen<S: Subscriber>(
    sub: &S,
    want: &BTreeSet<String>,
    timing: &Timing,
) -> BTreeSet<String> {
    let end = Instant::now() + timing.recovery;
    let mut missing = want.clone();
    while !missing.is_empty() && Instant::now() < end {
        let wait = end
            .saturating_duration_since(Instant::now())
            .min(timing.deadline);
        let receive = sub.receive(RECEIVE_BATCH, wait);
        match tokio::time::timeout(wait + timing.deadline, receive).await {
            Ok(Ok(batch)) => {
                for d in batch {
                    missing.remove(&label(&d));
                    // A failed ack only means it comes again.
                    if let Err(err) = d.ack().await {
                        if !matches!(err.error, Error::LeaseLost { .. }) {
                            retryable(err.error, "ack");
                        }
                    }
                }
            }
            Ok(Err(err)) => {
                retryable(err, "receive");
                // Back off before asking a reconnecting client again.
                tokio::time::sleep(timing.poll_interval()).await;
            }
            Err(_) => panic!("receive hung past its wait of {wait:?}"),
        }
    }
    missing
}

/// A subscriber that closes while holding deliveries loses nothing: what it acked stays
/// acked, what it held comes back after the lease, what it never got goes to the next one.
pub async fn consumer_close_loses_nothing<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "consumer_close_loses_nothing").await;
    let topic = f.topic("t").await;
    let config = SubscriptionConfig::new(topic.clone()).lease(f.timing.lease);
    let (name, closing) = f.subscribe_with("s", config).await;
    let labels = ["c0", "c1", "c2", "c3", "c4"];
    f.publish_labels(&topic, &labels).await;

    let mut held = receive_exactly(&closing, 3, f.timing.deadline, "before close").await;
    closing.close().await.must("closing the subscriber");
    let after = closing.receive(1, f.timing.settle).await;
    assert!(
        after.as_ref().map_or(true, Vec::is_empty),
        "a closed subscriber receives nothing, got {:?}",
        after.map(|got| sorted_labels(&got))
    );
    let acked = held.remove(0);
    let acked_label = label(&acked);
    acked
        .ack()
        .await
        .must("acking a delivery received before close");
    let held_labels = sorted_labels(&held);
    drop(held);

    let other = h.connect().await.must("connecting the next consumer");
    let next = other.subscribe(&name).await.must("subscribing");
    // Ack as they come: the fresh ones arrive a lease earlier than the held ones.
    let mut got = Vec::new();
    let deadline = Instant::now() + f.timing.deadline;
    while got.len() < labels.len() - 1 && Instant::now() < deadline {
        let wait = deadline.saturating_duration_since(Instant::now());
        for d in next.receive(RECEIVE_BATCH, wait).await.must("receive") {
            let label = label(&d);
            if held_labels.contains(&label) {
                assert!(d.attempt() >= 2, "{label} was delivered before");
            }
            d.ack().await.must("ack");
            got.push(label);
        }
    }
    got.sort();
    let mut expected: Vec<_> = labels
        .iter()
        .copied()
        .filter(|l| *l != acked_label)
        .collect();
    expected.sort();
    assert_eq!(got, expected, "every message but the acked one, once");
    let watch = f.timing.lease + f.timing.settle;
    expect_nothing(&next, watch, "nothing more after the lease").await;
    f.finish().await
}

/// Through a proxy that cuts every connection, the backend reconnects by itself, and every
/// message whose publish was confirmed is delivered at least once.
pub async fn connection_loss_then_reconnect_loses_no_confirmed_message<H: Harness>(
    h: &H,
) -> Outcome {
    let f = Fixture::new(
        h,
        "connection_loss_then_reconnect_loses_no_confirmed_message",
    )
    .await;
    if let Some(skip) = f.gate() {
        return skip;
    }
    let Some(broker) = h.broker_addr() else {
        return f.skip("the harness gives no broker address (Harness::broker_addr)");
    };
    let proxy = TcpProxy::start(broker).await.must("starting the proxy");
    let Some(proxied) = h.connect_through(proxy.addr()).await else {
        return f.skip("the harness cannot connect through a proxy (Harness::connect_through)");
    };
    let proxied = proxied.must("connecting through the proxy");

    let topic = f.topic("t").await;
    let name = f.subscription_name("s");
    let config = SubscriptionConfig::new(topic.clone());
    f.backend
        .ensure_subscription(&name, &config)
        .await
        .must("ensuring");
    let publisher = proxied
        .publisher()
        .await
        .must("publisher through the proxy");
    let subscriber = proxied
        .subscribe(&name)
        .await
        .must("subscriber through the proxy");

    let warm_up = ["w0", "w1", "w2"];
    for label in warm_up {
        publisher
            .publish(&topic, f.message(label))
            .await
            .must("publishing");
    }
    let got = receive_exactly(&subscriber, warm_up.len(), f.timing.deadline, "warm-up").await;
    ack_all(got).await;
    let connected = proxy.accepted();
    assert!(connected > 0, "the backend connects through the proxy");

    let mut confirmed = BTreeSet::new();
    for i in 0..10 {
        if i % 5 == 0 {
            proxy.cut_all().await;
        }
        let label = format!("after-cut-{i}");
        let message = f.message(&label);
        publish_until_confirmed(&publisher, &topic, message, &f.timing).await;
        confirmed.insert(label);
    }
    let missing = consume_until_seen(&subscriber, &confirmed, &f.timing).await;
    assert!(
        missing.is_empty(),
        "confirmed but never delivered: {missing:?}"
    );
    assert!(
        proxy.accepted() > connected,
        "the backend reconnected through the proxy"
    );
    drop(proxy);
    f.finish().await
}

/// After a broker restart, topics, subscriptions and unacked messages are still there, and
/// (where the backend reconnects) the old handles work again.
pub async fn broker_restart_keeps_topology_and_messages<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "broker_restart_keeps_topology_and_messages").await;
    if let Some(skip) = f.gate() {
        return skip;
    }
    let (recovery, poll) = (f.timing.recovery, f.timing.poll_interval());
    let topic = f.topic("t").await;
    let (name, sub) = f
        .subscribe_with("s", SubscriptionConfig::new(topic.clone()))
        .await;
    let labels = ["r0", "r1", "r2", "r3", "r4"];
    f.publish_labels(&topic, &labels).await;
    let acked = receive_exactly(&sub, 1, f.timing.deadline, "one before restart").await;
    let acked_label = label(&acked[0]);
    ack_all(acked).await;
    sub.close().await.must("closing the subscriber");
    drop(sub);

    let Some(restarted) = h.restart_broker().await else {
        let skipped = f.skip("the harness cannot restart the broker (Harness::restart_broker)");
        let _ = f.finish().await;
        return skipped;
    };
    restarted.must("restarting the broker");

    let fresh = eventually(recovery, poll, "connecting after the restart", || async {
        h.connect().await.map_err(|e| e.to_string())
    })
    .await;
    let info = eventually(recovery, poll, "describing after the restart", || async {
        fresh
            .describe_subscription(&name)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(
        info.config.topic, topic,
        "the subscription survived with its topic"
    );
    let sub = fresh
        .subscribe(&name)
        .await
        .must("subscribing after the restart");
    let want: BTreeSet<String> = labels
        .iter()
        .filter(|l| **l != acked_label)
        .map(|l| (*l).to_owned())
        .collect();
    let missing = consume_until_seen(&sub, &want, &f.timing).await;
    assert!(missing.is_empty(), "lost in the restart: {missing:?}");

    let publisher = fresh.publisher().await.must("publisher after the restart");
    publish_until_confirmed(&publisher, &topic, f.message("new"), &f.timing).await;
    if f.caps().reconnects {
        let message = f.message("old-handle");
        publish_until_confirmed(&f.publisher, &topic, message, &f.timing).await;
    }
    let mut want = BTreeSet::from(["new".to_owned()]);
    if f.caps().reconnects {
        want.insert("old-handle".to_owned());
    }
    let missing = consume_until_seen(&sub, &want, &f.timing).await;
    assert!(
        missing.is_empty(),
        "published after the restart, not delivered: {missing:?}"
    );
    f.finish().await
}
