//! What the server's integration tests share: a plain HTTP/1.1 client for the admin API, a
//! way to fill a dead-letter queue, a wait for a condition with a deadline, and a headless
//! browser to click in the dashboard (`browser.rs`).
#![allow(dead_code)] // each test binary uses a part of it

pub(crate) mod browser;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 request; returns the status and the body.
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the admin API");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let text = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, body.to_owned())
}

/// `GET path` answered with JSON (any status).
pub(crate) async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (_, body) = http(addr, "GET", path, None, "").await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// Receives and dead-letters `count` deliveries of `subscriber` ("card declined").
pub(crate) async fn dead_letter<S: sluice_core::Subscriber>(subscriber: &S, count: usize) {
    use sluice_core::{DeadLetterReason, Delivery};
    let mut dead = 0;
    while dead < count {
        for d in subscriber
            .receive(count - dead, Duration::from_secs(5))
            .await
            .unwrap()
        {
            d.dead_letter(DeadLetterReason::new("card declined"))
                .await
                .unwrap();
            dead += 1;
        }
    }
}

/// Waits until `condition` holds, checking every 10 ms; panics naming `what` if it does not
/// within `within`.
pub(crate) async fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
