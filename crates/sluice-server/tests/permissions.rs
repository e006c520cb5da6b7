//! Per-token permissions, on both protocols: a consume-only token cannot publish, a token
//! limited to `orders-*` cannot read `payments`, the admin API needs `admin`; every refusal
//! has its stable code (HTTP) or `Error::Forbidden` (`sluice://`), and the connection stays
//! usable.

mod support;

use std::net::SocketAddr;

use serde_json::Value;
use sluice_core::{
    Backend, Error, Message, Publisher, SubscriptionConfig, SubscriptionName, TopicConfig,
    TopicName,
};
use sluice_remote::{RemoteBackend, RemoteOptions};
use sluice_server::{Auth, Server, ServerConfig};
use support::http;

const TOKENS: &str = "\
# the operators
root-token
ops-token admin
# the shop publishes orders, the billing service consumes them
shop-token publish:orders-*
reader-token consume:orders-*
# one subscription only, not its topic
billing-token consume:orders-billing
# the shop's staging namespace only
staging-shop publish:staging.orders-*
";

async fn call(addr: SocketAddr, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let (status, text) = http(addr, method, path, Some(token), body).await;
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, json)
}

async fn client(server: &Server, token: &str) -> RemoteBackend {
    RemoteBackend::connect(
        &server.addr().to_string(),
        RemoteOptions::default().token(Some(token.to_owned())),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn each_token_may_do_what_its_grants_say_on_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        ServerConfig::new(dir.path())
            .listen("127.0.0.1:0".parse().unwrap())
            .http(Some("127.0.0.1:0".parse().unwrap()))
            .auth(Auth::parse(TOKENS).unwrap()),
    )
    .await
    .unwrap();
    let addr = server.http_addr().unwrap();

    // Set-up by the unrestricted token.
    let root = client(&server, "root-token").await;
    for topic in ["orders-eu", "payments"] {
        let topic = TopicName::new(topic).unwrap();
        root.ensure_topic(&topic, &TopicConfig::default())
            .await
            .unwrap();
    }
    root.ensure_subscription(
        &SubscriptionName::new("payments").unwrap(),
        &SubscriptionConfig::new(TopicName::new("payments").unwrap()),
    )
    .await
    .unwrap();

    // ---- HTTP
    let message = r#"{"text":"hi"}"#;
    let (status, body) = call(
        addr,
        "POST",
        "/api/v1/topics/orders-eu/messages",
        "reader-token",
        message,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("publish"),
        "{body}"
    );
    let (status, body) = call(
        addr,
        "POST",
        "/api/v1/topics/orders-eu/messages",
        "shop-token",
        message,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        addr,
        "POST",
        "/api/v1/topics/payments/messages",
        "shop-token",
        message,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, body) = call(
        addr,
        "POST",
        "/api/v1/subscriptions/payments/receive",
        "reader-token",
        "",
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    // A subscription of its own, but on a topic it may not read.
    let sub = r#"{"topic":"payments"}"#;
    let (status, body) = call(
        addr,
        "PUT",
        "/api/v1/subscriptions/orders-spy",
        "reader-token",
        sub,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let sub = r#"{"topic":"orders-eu","start":"earliest"}"#;
    let (status, body) = call(
        addr,
        "PUT",
        "/api/v1/subscriptions/orders-billing",
        "reader-token",
        sub,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        addr,
        "POST",
        "/api/v1/subscriptions/orders-billing/receive",
        "reader-token",
        r#"{"max":5}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deliveries"].as_array().unwrap().len(), 1, "{body}");
    // The admin API needs `admin`.
    for token in ["reader-token", "shop-token"] {
        let (status, body) = call(addr, "GET", "/api/v1/topics", token, "").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("forbidden")),
            "{body}"
        );
        let (status, _) = call(addr, "GET", "/metrics", token, "").await;
        assert_eq!(status, 403);
    }
    // Its AsyncAPI document shows only what it may see.
    let (status, doc) = call(addr, "GET", "/api/v1/asyncapi.json", "reader-token", "").await;
    assert_eq!(status, 200, "{doc}");
    let channels: Vec<&String> = doc["channels"].as_object().unwrap().keys().collect();
    assert!(
        channels.iter().all(|c| c.starts_with("orders-")),
        "{channels:?}"
    );
    assert!(doc["operations"].get("receive.payments").is_none(), "{doc}");
    // A subscription's channel is its topic's, shown even without a grant on the topic.
    let (_, doc) = call(addr, "GET", "/api/v1/asyncapi.json", "billing-token", "").await;
    let channel = doc["operations"]["receive.orders-billing"]["channel"]["$ref"]
        .as_str()
        .unwrap();
    assert_eq!(channel, "#/channels/orders-eu");
    assert!(doc["channels"]["orders-eu"].is_object(), "{doc}");
    // Only what it may do: receive, not send.
    assert!(doc["operations"].get("send.orders-eu").is_none(), "{doc}");
    let (_, doc) = call(addr, "GET", "/api/v1/asyncapi.json", "ops-token", "").await;
    assert!(doc["operations"].get("receive.payments").is_some(), "{doc}");
    // A consumer may read its own subscription's stats, not another's.
    let (status, _) = call(
        addr,
        "GET",
        "/api/v1/subscriptions/orders-billing/stats",
        "reader-token",
        "",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        addr,
        "GET",
        "/api/v1/subscriptions/payments/stats",
        "reader-token",
        "",
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = call(addr, "GET", "/api/v1/topics", "ops-token", "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(addr, "GET", "/api/v1/topics", "wrong-token", "").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let (status, body) = http(addr, "GET", "/api/v1/topics", None, "").await;
    assert_eq!(status, 401, "{body}");

    // Patterns match the full name, namespace included, and a star never crosses into one.
    let (status, body) = call(
        addr,
        "PUT",
        "/api/v1/topics/orders-eu?namespace=staging",
        "root-token",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        addr,
        "PUT",
        "/api/v1/topics/payments?namespace=orders-x",
        "root-token",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for (token, path, expected) in [
        (
            "shop-token",
            "/api/v1/topics/orders-eu/messages?namespace=staging",
            403,
        ),
        (
            "shop-token",
            "/api/v1/topics/payments/messages?namespace=orders-x",
            403,
        ),
        (
            "staging-shop",
            "/api/v1/topics/orders-eu/messages?namespace=staging",
            200,
        ),
        ("staging-shop", "/api/v1/topics/orders-eu/messages", 403),
    ] {
        let (status, body) = call(addr, "POST", path, token, message).await;
        assert_eq!(status, expected, "{token} {path}: {body}");
    }

    // ---- sluice://
    let reader = client(&server, "reader-token").await;
    let publisher = reader.publisher().await.unwrap();
    let m = Message::builder("hi").build().unwrap();
    let err = publisher
        .publish(&TopicName::new("orders-eu").unwrap(), m.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden(_)), "{err}");
    let err = reader
        .subscribe(&SubscriptionName::new("payments").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden(_)), "{err}");
    assert!(err.to_string().contains("payments"), "{err}");
    let err = reader.list_topics().await.unwrap_err();
    assert!(matches!(err, Error::Forbidden(_)), "{err}");
    // The connection is still usable for what the token may do.
    reader
        .subscribe(&SubscriptionName::new("orders-billing").unwrap())
        .await
        .unwrap();
    let shop = client(&server, "shop-token").await;
    let shop_publisher = shop.publisher().await.unwrap();
    shop_publisher
        .publish(&TopicName::new("orders-eu").unwrap(), m.clone())
        .await
        .unwrap();
    let err = shop_publisher
        .publish(&TopicName::new("payments").unwrap(), m)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden(_)), "{err}");
    // An operator manages (creates, describes, reads stats) without touching the data.
    let ops = client(&server, "ops-token").await;
    let payments = SubscriptionName::new("payments").unwrap();
    ops.describe_subscription(&payments).await.unwrap();
    ops.stats(&payments).await.unwrap();
    ops.ensure_topic(&TopicName::new("audit").unwrap(), &TopicConfig::default())
        .await
        .unwrap();
    let err = ops
        .publisher()
        .await
        .unwrap()
        .publish(
            &TopicName::new("payments").unwrap(),
            Message::builder("x").build().unwrap(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden(_)), "{err}");
    let err = ops.subscribe(&payments).await.unwrap_err();
    assert!(matches!(err, Error::Forbidden(_)), "{err}");
    // Pausing a subscription is an operator's (admin); a worker's circuit state is not.
    let limiter = sluice_core::Subscriber::limiter(
        &reader
            .subscribe(&SubscriptionName::new("orders-billing").unwrap())
            .await
            .unwrap(),
    )
    .expect("sluice:// has a limiter");
    let err = limiter
        .set_flag(
            &sluice_core::limit::pause_flag("orders-billing"),
            Some("x"),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden(_)), "{err}");
    limiter
        .set_flag("circuit:orders-billing:w-1", Some("open"), None)
        .await
        .unwrap();
    let err = shop
        .delete_topic(&TopicName::new("orders-eu").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden(_)), "{err}");
    server.shutdown().await.unwrap();
}
