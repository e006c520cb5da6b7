//! Server-pushed deliveries and their flow control: a subscriber never has more than its
//! prefetch pushed and untaken, stats count those as ready, and closing the subscriber gives
//! them back at once instead of when their leases run out.

use std::time::{Duration, Instant};

use sluice_core::{
    Backend, Delivery, Message, Publisher, Subscriber, SubscriptionConfig, SubscriptionName,
    TopicConfig, TopicName,
};
use sluice_remote::{RemoteBackend, RemoteOptions};
use sluice_server::{Server, ServerConfig};

#[tokio::test]
async fn prefetch_bounds_what_a_slow_consumer_holds_and_close_gives_it_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        ServerConfig::new(dir.path())
            .listen("127.0.0.1:0".parse().unwrap())
            .http(None),
    )
    .await
    .unwrap();
    let addr = server.addr().to_string();
    let connect = || RemoteBackend::connect(&addr, RemoteOptions::default());
    let (slow_client, fast_client) = (connect().await.unwrap(), connect().await.unwrap());
    let topic = TopicName::new("work").unwrap();
    let name = SubscriptionName::new("workers").unwrap();
    slow_client
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    let config = SubscriptionConfig::new(topic.clone())
        .prefetch(4)
        .lease(Duration::from_secs(60));
    slow_client
        .ensure_subscription(&name, &config)
        .await
        .unwrap();
    let publisher = slow_client.publisher().await.unwrap();
    let batch = (0..10)
        .map(|i| Message::builder(format!("{i}")).build().unwrap())
        .collect();
    for result in publisher.publish_batch(&topic, batch).await {
        result.unwrap();
    }

    // The slow consumer takes one and sits on it: 3 more are pushed to it (it holds at most
    // its prefetch of 4 unsettled), no more.
    let slow = slow_client.subscribe(&name).await.unwrap();
    let taken = slow.receive(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(taken.len(), 1);
    let fast = fast_client.subscribe(&name).await.unwrap();
    let drain = |want: usize| {
        let fast = &fast;
        async move {
            let mut got = 0;
            let deadline = Instant::now() + Duration::from_secs(5);
            while got < want && Instant::now() < deadline {
                for d in fast.receive(10, Duration::from_millis(200)).await.unwrap() {
                    d.ack().await.unwrap();
                    got += 1;
                }
            }
            got
        }
    };
    assert_eq!(
        drain(6).await,
        6,
        "the fast consumer gets all the slow one does not hold"
    );
    assert!(
        fast.receive(10, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty(),
        "the slow consumer's prefetch holds the other 3"
    );
    let stats = fast_client.stats(&name).await.unwrap();
    assert_eq!(
        (stats.ready, stats.in_flight),
        (Some(3), Some(1)),
        "pushed but untaken counts as ready; taken counts as in flight"
    );

    // Closing the slow subscriber gives its 3 buffered deliveries back now, not in 60 s.
    slow.close().await.unwrap();
    assert_eq!(
        drain(3).await,
        3,
        "released at close, long before their leases run out"
    );
    for d in taken {
        d.ack().await.unwrap();
    }
    let stats = fast_client.stats(&name).await.unwrap();
    assert_eq!((stats.ready, stats.in_flight), (Some(0), Some(0)));
    server.shutdown().await.unwrap();
}

/// A subscriber whose buffer is full (no credit left) still closes at once, and the server
/// still shuts down: neither waits for credit that will never come.
#[tokio::test]
async fn a_subscriber_without_credit_closes_and_the_server_shuts_down_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        ServerConfig::new(dir.path())
            .listen("127.0.0.1:0".parse().unwrap())
            .http(None),
    )
    .await
    .unwrap();
    let client = RemoteBackend::connect(&server.addr().to_string(), RemoteOptions::default())
        .await
        .unwrap();
    let topic = TopicName::new("full").unwrap();
    let name = SubscriptionName::new("idle").unwrap();
    client
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    let config = SubscriptionConfig::new(topic.clone()).prefetch(2);
    client.ensure_subscription(&name, &config).await.unwrap();
    let publisher = client.publisher().await.unwrap();
    for i in 0..5 {
        let m = Message::builder(format!("{i}")).build().unwrap();
        publisher.publish(&topic, m).await.unwrap();
    }
    let idle = client.subscribe(&name).await.unwrap();
    // The server pushes 2 and runs out of credit: the engine (unadjusted) shows them leased.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.backend().stats(&name).await.unwrap().in_flight != Some(2) {
        assert!(
            Instant::now() < deadline,
            "the server never pushed the prefetch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::timeout(Duration::from_secs(5), idle.close())
        .await
        .expect("close does not wait for credit")
        .unwrap();
    let second = client.subscribe(&name).await.unwrap();
    let _held = second.receive(1, Duration::from_secs(5)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown does not wait for a stream without credit")
        .unwrap();
}

/// A server restart ends every delivery stream; a consumer that keeps calling `receive`
/// never sees that as the end (no `Closed`), and gets messages from the new server.
#[tokio::test]
async fn a_consumer_keeps_receiving_across_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = |addr: &str| {
        ServerConfig::new(dir.path())
            .listen(addr.parse().unwrap())
            .http(None)
    };
    let server = Server::start(config("127.0.0.1:0")).await.unwrap();
    let addr = server.addr().to_string();
    let client = RemoteBackend::connect(&addr, RemoteOptions::default())
        .await
        .unwrap();
    let topic = TopicName::new("restarts").unwrap();
    let name = SubscriptionName::new("steady").unwrap();
    client
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    client
        .ensure_subscription(&name, &SubscriptionConfig::new(topic.clone()))
        .await
        .unwrap();
    let subscriber = client.subscribe(&name).await.unwrap();
    server.shutdown().await.unwrap();
    let server = Server::start(config(&addr)).await.unwrap();
    let publisher = client.publisher().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match publisher
            .publish(
                &topic,
                Message::builder(&b"after"[..]).id("after").build().unwrap(),
            )
            .await
        {
            Ok(_) => break,
            Err(err) => assert!(err.is_retryable() && Instant::now() < deadline, "{err}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        match subscriber.receive(1, Duration::from_millis(500)).await {
            Ok(got) if !got.is_empty() => break got,
            Ok(_) => {}
            Err(err) => assert!(
                err.is_retryable(),
                "a restart must not end the consumer: {err}"
            ),
        }
        assert!(
            Instant::now() < deadline,
            "nothing received after the restart"
        );
    };
    assert_eq!(got[0].message().id().as_str(), "after");
    server.shutdown().await.unwrap();
}
