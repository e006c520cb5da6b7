//! The HTTP admin API, `/metrics` and the OpenAPI document, against a real server with
//! traffic from a real `sluice://` client.

use std::net::SocketAddr;

mod support;

use serde_json::Value;
use sluice_core::{
    Backend, Message, Publisher, Subscriber, SubscriptionConfig, SubscriptionName, TopicConfig,
    TopicName,
};
use sluice_remote::{RemoteBackend, RemoteOptions};
use sluice_server::{Auth, Server, ServerConfig};
use support::http;

async fn json(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = http(addr, method, path, None, body).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}")),
    )
}

async fn start(auth: Auth) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        ServerConfig::new(dir.path())
            .listen("127.0.0.1:0".parse().unwrap())
            .http(Some("127.0.0.1:0".parse().unwrap()))
            .auth(auth),
    )
    .await
    .expect("start the server");
    (dir, server)
}

#[tokio::test]
async fn the_admin_api_reports_topics_stats_and_the_dlq_and_redrives() {
    let (_dir, server) = start(Auth::open()).await;
    let http_addr = server.http_addr().expect("HTTP enabled");
    let client = RemoteBackend::connect(&server.addr().to_string(), RemoteOptions::default())
        .await
        .unwrap();
    let topic = TopicName::new("orders").unwrap();
    let sub = SubscriptionName::new("billing").unwrap();
    client
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    client
        .ensure_subscription(&sub, &SubscriptionConfig::new(topic.clone()))
        .await
        .unwrap();
    let publisher = client.publisher().await.unwrap();
    for i in 0..5 {
        let m = Message::builder(format!("order {i}"))
            .id(format!("o-{i}"))
            .build()
            .unwrap();
        publisher.publish(&topic, m).await.unwrap();
    }
    let subscriber = client.subscribe(&sub).await.unwrap();
    support::dead_letter(&subscriber, 2).await;
    // An operator's pause and a worker's circuit state, as `sluice pause` and a worker
    // with a breaker write them.
    let limiter = sluice_core::Subscriber::limiter(&subscriber).expect("sluice:// has a limiter");
    limiter
        .set_flag(
            &sluice_core::limit::pause_flag("billing"),
            Some("by the test"),
            None,
        )
        .await
        .unwrap();
    limiter
        .set_flag(
            "circuit:billing:worker-1",
            Some("open"),
            Some(std::time::Duration::from_secs(60)),
        )
        .await
        .unwrap();
    // Nobody consumes from here on: the counts below change only by what the API does.
    subscriber.close().await.unwrap();

    let (status, health) = json(http_addr, "GET", "/api/v1/health", "").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (_, topics) = json(http_addr, "GET", "/api/v1/topics", "").await;
    assert_eq!(topics[0]["name"], "orders");
    assert_eq!(topics[0]["subscriptions"][0], "billing");
    let (_, stats) = json(http_addr, "GET", "/api/v1/subscriptions/billing/stats", "").await;
    assert_eq!(
        (stats["ready"].as_u64(), stats["dead_lettered"].as_u64()),
        (Some(3), Some(2)),
        "{stats}"
    );
    let (_, described) = json(http_addr, "GET", "/api/v1/subscriptions/billing", "").await;
    assert_eq!(described["topic"], "orders");

    let (_, dlq) = json(http_addr, "GET", "/api/v1/subscriptions/billing/dlq", "").await;
    let dlq = dlq.as_array().expect("a list");
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0]["reason"], "card declined");
    let id = dlq[0]["id"].as_str().unwrap();
    let (status, shown) = json(
        http_addr,
        "GET",
        &format!("/api/v1/subscriptions/billing/dlq/messages/{id}"),
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        shown["payload"].as_str().unwrap().starts_with("order "),
        "{shown}"
    );
    for field in ["content_type", "published_at", "ordering_key"] {
        assert!(shown.get(field).is_some(), "no {field}: {shown}");
    }
    assert!(shown["published_at"].is_string(), "{shown}");
    let (status, missing) = json(
        http_addr,
        "GET",
        "/api/v1/subscriptions/billing/dlq/messages/nope",
        "",
    )
    .await;
    assert_eq!(status, 404, "{missing}");
    assert!(missing["error"].as_str().unwrap().contains("nope"));

    let (_, overview) = json(http_addr, "GET", "/api/v1/overview", "").await;
    assert_eq!(overview["topics"][0]["published"], 5, "{overview}");
    assert_eq!(
        overview["topics"][0]["subscriptions"][0]["settled"]["dead_letter"], 2,
        "{overview}"
    );
    assert_eq!(
        overview["topics"][0]["subscriptions"][0]["paused"], true,
        "{overview}"
    );
    assert_eq!(
        overview["topics"][0]["subscriptions"][0]["circuits"]["open"], 1,
        "{overview}"
    );

    let (_, metrics) = http(http_addr, "GET", "/metrics", None, "").await;
    for line in [
        "sluice_subscription_ready{topic=\"orders\",subscription=\"billing\"} 3",
        "sluice_subscription_dead_lettered{topic=\"orders\",subscription=\"billing\"} 2",
        "sluice_server_published_total{topic=\"orders\"} 5",
        "sluice_server_settled_total{subscription=\"billing\",verb=\"dead_letter\"} 2",
        "sluice_server_connections_open 1",
    ] {
        assert!(
            metrics.contains(line),
            "/metrics lacks `{line}`:\n{metrics}"
        );
    }

    let doc = include_str!("../../../docs/observability.md");
    for family in metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split(' ').next().unwrap();
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "docs/observability.md does not list {name}"
        );
    }

    let (_, dry) = json(
        http_addr,
        "POST",
        "/api/v1/subscriptions/billing/dlq/redrive",
        r#"{"dry_run":true}"#,
    )
    .await;
    assert_eq!(
        (
            dry["moved"].as_array().unwrap().len(),
            dry["dry_run"].as_bool()
        ),
        (2, Some(true))
    );
    let (_, moved) = json(
        http_addr,
        "POST",
        "/api/v1/subscriptions/billing/dlq/redrive",
        "",
    )
    .await;
    assert_eq!(moved["moved"].as_array().unwrap().len(), 2, "{moved}");
    let (_, stats) = json(http_addr, "GET", "/api/v1/subscriptions/billing/stats", "").await;
    assert_eq!(
        (stats["ready"].as_u64(), stats["dead_lettered"].as_u64()),
        (Some(5), Some(0)),
        "{stats}"
    );
    let (_, purged) = json(
        http_addr,
        "POST",
        "/api/v1/subscriptions/billing/dlq/purge",
        "",
    )
    .await;
    assert_eq!(purged["purged"], 0);

    let (status, err) = json(http_addr, "GET", "/api/v1/subscriptions/nobody/stats", "").await;
    assert_eq!(status, 404, "{err}");
    let (status, err) = json(
        http_addr,
        "GET",
        "/api/v1/subscriptions/Bad%20Name/stats",
        "",
    )
    .await;
    assert_eq!(status, 400, "{err}");
    // Unknown routes and wrong methods answer with the documented JSON error too.
    let (status, err) = json(http_addr, "GET", "/api/v1/nothing-here", "").await;
    assert_eq!(status, 404, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("/api/v1/nothing-here"),
        "{err}"
    );
    let (status, err) = json(http_addr, "DELETE", "/api/v1/topics", "").await;
    assert_eq!(status, 405, "{err}");
    assert!(err["error"].as_str().unwrap().contains("DELETE"), "{err}");

    // A deleted topic's series leave /metrics (counters included).
    client.delete_topic(&topic).await.unwrap();
    let (_, metrics) = http(http_addr, "GET", "/metrics", None, "").await;
    assert!(
        !metrics.contains("orders") && !metrics.contains("billing"),
        "deleted objects stay in /metrics:\n{metrics}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_tokens_the_api_needs_a_bearer_token_but_health_does_not() {
    let (_dir, server) = start(Auth::tokens(["s3cret"])).await;
    let addr = server.http_addr().unwrap();
    assert_eq!(http(addr, "GET", "/api/v1/health", None, "").await.0, 200);
    assert_eq!(http(addr, "GET", "/api/v1/topics", None, "").await.0, 401);
    assert_eq!(
        http(addr, "GET", "/metrics", Some("wrong"), "").await.0,
        401
    );
    assert_eq!(
        http(addr, "GET", "/api/v1/topics", Some("s3cret"), "")
            .await
            .0,
        200
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_the_server_has() {
    let (_dir, server) = start(Auth::open()).await;
    let (status, doc) = json(
        server.http_addr().unwrap(),
        "GET",
        "/api/v1/openapi.json",
        "",
    )
    .await;
    assert_eq!(status, 200);
    // Every (path, method) the router serves, and only those, is documented.
    const METHODS: [&str; 4] = ["get", "post", "put", "delete"];
    let documented: std::collections::BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|m| METHODS.contains(&m.as_str()))
                .map(move |m| (path.clone(), m.clone()))
        })
        .collect();
    let source = include_str!("../src/admin.rs");
    let routed: std::collections::BTreeSet<(String, String)> = source
        .split(".route(")
        .skip(1)
        .filter_map(|rest| {
            let (path, tail) = rest.trim_start().strip_prefix('"')?.split_once('"')?;
            // The method router: up to the next route or layer.
            let tail = tail.split(".route").next()?.split(".layer").next()?;
            Some((path, tail))
        })
        .filter(|(path, _)| *path != "/")
        .flat_map(|(path, tail)| {
            METHODS.iter().filter_map(move |m| {
                let called = format!("{m}(");
                tail.match_indices(&called)
                    .any(|(at, _)| {
                        !tail[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                    })
                    .then(|| (path.to_owned(), (*m).to_owned()))
            })
        })
        .collect();
    assert_eq!(documented, routed, "openapi.json and the router disagree");
    // And the dashboard page is served.
    let (status, page) = http(server.http_addr().unwrap(), "GET", "/", None, "").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>Sluice</title>"));
    server.shutdown().await.unwrap();
}
