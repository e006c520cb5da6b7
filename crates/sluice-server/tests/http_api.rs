//! The HTTP data API's edges, against a real server: what a client in another language
//! meets when it gets things wrong, and the promises it relies on (byte-exact JSON, the
//! attempts limit, leases that run out, body limits, JSON errors with stable codes).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use sluice_core::Backend;
use sluice_server::{Auth, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request with these headers; the status, the response's headers (lower-case names)
/// and its body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(40), stream.read_to_end(&mut raw))
        .await
        .expect("an answer")
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}

async fn json(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, _, body) = request(
        addr,
        method,
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn start(config: impl FnOnce(ServerConfig) -> ServerConfig) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(
        ServerConfig::new(dir.path())
            .listen("127.0.0.1:0".parse().unwrap())
            .http(Some("127.0.0.1:0".parse().unwrap()))
            .auth(Auth::open()),
    ))
    .await
    .unwrap();
    (dir, server)
}

async fn topology(addr: SocketAddr, sub_body: &str) {
    let (status, body) = json(addr, "PUT", "/api/v1/topics/orders", "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = json(addr, "PUT", "/api/v1/subscriptions/billing", sub_body).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_json_payload_comes_back_byte_for_byte_and_raw_bodies_keep_their_type() {
    let (_dir, server) = start(|c| c).await;
    let addr = server.http_addr().unwrap();
    topology(addr, r#"{"topic":"orders"}"#).await;
    let (status, body) = json(
        addr,
        "POST",
        "/api/v1/topics/orders/messages",
        r#"{"id":"m-1","payload":{"z": 1.50, "a": [10000000000000000000001]}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A raw body: its content type and bytes as sent, its attributes in the query.
    let (status, _, body) = request(
        addr,
        "POST",
        "/api/v1/topics/orders/messages?id=m-2&ordering_key=c-1&type=blob",
        &[("Content-Type", "application/octet-stream")],
        &[0, 159, 255],
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = request(
        addr,
        "POST",
        "/api/v1/subscriptions/billing/receive",
        &[],
        br#"{"max":2,"wait_ms":5000}"#,
    )
    .await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains(r#""payload":{"z": 1.50, "a": [10000000000000000000001]}"#),
        "{text}"
    );
    let answer: Value = serde_json::from_str(&text).unwrap();
    let raw = &answer["deliveries"][1]["message"];
    assert_eq!(raw["base64"], "AJ//", "{raw}");
    assert_eq!(raw["content_type"], "application/octet-stream");
    assert_eq!(raw["ordering_key"], "c-1");
    assert_eq!(raw["type"], "blob");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_binary_cloudevent_keeps_its_content_type_and_header_values() {
    let (_dir, server) = start(|c| c).await;
    let addr = server.http_addr().unwrap();
    topology(addr, r#"{"topic":"orders"}"#).await;
    let (status, _, body) = request(
        addr,
        "POST",
        "/api/v1/topics/orders/messages",
        &[
            ("Content-Type", "text/plain; charset=utf-8"),
            ("ce-specversion", "1.0"),
            ("ce-id", "e-1"),
            ("ce-source", "/a b"),
            ("ce-type", "t"),
            ("ce-subject", "caf%C3%A9 %25"),
        ],
        "héllo".as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, headers, body) = request(
        addr,
        "POST",
        "/api/v1/subscriptions/billing/receive",
        &[],
        br#"{"format":"cloudevents-binary","wait_ms":5000}"#,
    )
    .await;
    assert_eq!(status, 200);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(header("ce-subject"), Some("caf%C3%A9%20%25"));
    assert_eq!(header("ce-source"), Some("/a%20b"));
    assert_eq!(header("sluice-attempt"), Some("1"));
    assert_eq!(body, "héllo".as_bytes());
    // Nothing more: 204.
    let (status, _, _) = request(
        addr,
        "POST",
        "/api/v1/subscriptions/billing/receive",
        &[],
        br#"{"format":"cloudevents-binary"}"#,
    )
    .await;
    assert_eq!(status, 204);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_delivery_never_settled_is_dead_lettered_after_its_attempts() {
    let (_dir, server) = start(|c| c).await;
    let addr = server.http_addr().unwrap();
    topology(
        addr,
        r#"{"topic":"orders","max_attempts":2,"lease_ms":300}"#,
    )
    .await;
    let (status, body) = json(
        addr,
        "POST",
        "/api/v1/topics/orders/messages",
        r#"{"id":"poison","text":"crashes its consumer"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Two consumers take it and die (never settle): each lease runs out.
    for attempt in 1..=2 {
        let (_, body) = json(
            addr,
            "POST",
            "/api/v1/subscriptions/billing/receive",
            r#"{"wait_ms":5000}"#,
        )
        .await;
        assert_eq!(body["deliveries"][0]["attempt"], attempt, "{body}");
        assert_eq!(body["deliveries"][0]["message"]["id"], "poison");
    }
    // The third delivery is past its attempts: dead-lettered by the server, not handed out.
    let (_, body) = json(
        addr,
        "POST",
        "/api/v1/subscriptions/billing/receive",
        r#"{"wait_ms":2000}"#,
    )
    .await;
    assert_eq!(body["deliveries"].as_array().unwrap().len(), 0, "{body}");
    let (status, dead) = json(addr, "GET", "/api/v1/subscriptions/billing/dlq", "").await;
    assert_eq!(status, 200);
    assert_eq!(dead[0]["id"], "poison", "{dead}");
    assert!(dead.to_string().contains("max attempts exceeded"), "{dead}");
    server.shutdown().await.unwrap();
}

type Case<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
);

#[tokio::test]
async fn every_refusal_is_json_with_a_stable_code() {
    let (_dir, server) = start(|c| c.max_frame(4096)).await;
    let addr = server.http_addr().unwrap();
    topology(addr, r#"{"topic":"orders","prefetch":7}"#).await;
    // method, path, headers, body, status, code
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            "/api/v1/topics/orders/messages?delay_ms=abc",
            vec![("Content-Type", "text/plain")],
            b"x".to_vec(),
            400,
            "invalid",
        ),
        (
            "POST",
            "/api/v1/topics/orders/messages?routing_key=a.*",
            vec![("Content-Type", "application/json")],
            br#"{"text":"x"}"#.to_vec(),
            400,
            "invalid_message",
        ),
        (
            "POST",
            "/api/v1/topics/orders/messages?id=x",
            vec![("Content-Type", "application/json")],
            br#"{"text":"x"}"#.to_vec(),
            400,
            "invalid",
        ),
        (
            "POST",
            "/api/v1/topics/orders/messages",
            vec![("Content-Type", "application/json")],
            b"{nope".to_vec(),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/api/v1/topics/orders/messages",
            vec![("Content-Type", "text/plain")],
            vec![b'x'; 5000],
            413,
            "body_too_large",
        ),
        (
            "POST",
            "/api/v1/topics/bad%21name/messages",
            vec![("Content-Type", "text/plain")],
            b"x".to_vec(),
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/api/v1/topics/nope/messages",
            vec![("Content-Type", "text/plain")],
            b"x".to_vec(),
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/v1/subscriptions/billing/settle",
            vec![],
            br#"{"settlements":[{"lease":"x","verb":"nack"}]}"#.to_vec(),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/api/v1/subscriptions/billing/receive",
            vec![],
            br#"{"max":"ten"}"#.to_vec(),
            400,
            "invalid_body",
        ),
        (
            "PUT",
            "/api/v1/subscriptions/other",
            vec![],
            br#"{"topic":"orders","lease_ms":0}"#.to_vec(),
            400,
            "invalid_body",
        ),
        (
            "PUT",
            "/api/v1/topics/t2",
            vec![],
            br#"{"block_ms":10}"#.to_vec(),
            400,
            "invalid_body",
        ),
        (
            "PUT",
            "/api/v1/subscriptions/other",
            vec![],
            br#"{"topic":"orders","lease_ms":43200001}"#.to_vec(),
            400,
            "invalid_body",
        ),
        (
            "DELETE",
            "/api/v1/topics/orders/messages",
            vec![],
            vec![],
            405,
            "method_not_allowed",
        ),
        ("GET", "/api/v1/nowhere", vec![], vec![], 404, "not_found"),
    ];
    for (method, path, headers, body, status, code) in cases {
        let (got, _, answer) = request(addr, method, path, &headers, &body).await;
        let answer: Value = serde_json::from_slice(&answer).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: not JSON ({e}): {}",
                String::from_utf8_lossy(&answer)
            )
        });
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {answer}"
        );
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    // A settle of a lease the server does not hold: per-verb, lease_lost.
    let (status, body) = json(
        addr,
        "POST",
        "/api/v1/subscriptions/billing/settle",
        r#"{"settlements":[{"lease":"0123","verb":"ack"}]}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["results"][0]["code"], "lease_lost", "{body}");
    // A PUT without a prefetch keeps the one set before.
    let (status, _) = json(
        addr,
        "PUT",
        "/api/v1/subscriptions/billing",
        r#"{"topic":"orders"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let info = server
        .backend()
        .describe_subscription(&sluice_core::SubscriptionName::new("billing").unwrap())
        .await
        .unwrap();
    assert_eq!(info.config.prefetch, 7);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_asyncapi_document_describes_the_topology() {
    let (_dir, server) = start(|c| c).await;
    let addr = server.http_addr().unwrap();
    topology(addr, r#"{"topic":"orders","filter":"order.*"}"#).await;
    let (status, doc) = json(addr, "GET", "/api/v1/asyncapi.json", "").await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["channels"]["orders"]["address"], "orders");
    assert_eq!(
        doc["operations"]["receive.billing"]["x-sluice-subscription"]["filter"],
        "order.*"
    );
    assert_eq!(doc["servers"]["http"]["host"], addr.to_string());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_subscription_deleted_and_created_again_is_read_with_its_new_configuration() {
    let (_dir, server) = start(|c| c).await;
    let addr = server.http_addr().unwrap();
    topology(addr, r#"{"topic":"orders","max_attempts":2}"#).await;
    let (status, _) = json(addr, "PUT", "/api/v1/topics/audit", "").await;
    assert_eq!(status, 200);
    // A first receive makes the server's subscriber of `billing`.
    let (status, body) = json(addr, "POST", "/api/v1/subscriptions/billing/receive", "").await;
    assert_eq!(status, 200, "{body}");
    // Deleted and created again on another topic by another client (here: in-process).
    let billing = sluice_core::SubscriptionName::new("billing").unwrap();
    server
        .backend()
        .delete_subscription(&billing)
        .await
        .unwrap();
    let (status, body) = json(
        addr,
        "PUT",
        "/api/v1/subscriptions/billing",
        r#"{"topic":"audit","max_attempts":10}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = json(
        addr,
        "POST",
        "/api/v1/topics/audit/messages",
        r#"{"text":"x"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = json(
        addr,
        "POST",
        "/api/v1/subscriptions/billing/receive",
        r#"{"wait_ms":5000}"#,
    )
    .await;
    assert_eq!(body["deliveries"][0]["topic"], "audit", "{body}");
    // A lease of one subscription is refused on another's settle.
    let (status, _) = json(
        addr,
        "PUT",
        "/api/v1/subscriptions/other",
        r#"{"topic":"audit"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let lease = body["deliveries"][0]["lease"].as_str().unwrap();
    let settle = format!(r#"{{"settlements":[{{"lease":"{lease}","verb":"ack"}}]}}"#);
    let (status, answer) = json(addr, "POST", "/api/v1/subscriptions/other/settle", &settle).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["results"][0]["code"], "wrong_subscription",
        "{answer}"
    );
    // Still held by its own subscription.
    let (_, answer) = json(
        addr,
        "POST",
        "/api/v1/subscriptions/billing/settle",
        &settle,
    )
    .await;
    assert_eq!(answer["results"][0]["status"], "ok", "{answer}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn http_connections_are_counted_per_address_and_refused_over_the_limit() {
    let (_dir, server) = start(|c| {
        c.limits(sluice_server::ConnectionLimits::default().max_connections_per_address(2))
    })
    .await;
    let addr = server.http_addr().unwrap();
    // Two idle connections hold this address's two places.
    let first = TcpStream::connect(addr).await.unwrap();
    let second = TcpStream::connect(addr).await.unwrap();
    let refused = async {
        let (status, _, body) = request(addr, "GET", "/api/v1/health", &[], b"").await;
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, body)
    };
    let (status, body) = refused.await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "too_many_connections", "{body}");
    // One closes: its place is given back.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = request(addr, "GET", "/api/v1/health", &[], b"").await;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never admitted again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(second);
    server.shutdown().await.unwrap();
}
