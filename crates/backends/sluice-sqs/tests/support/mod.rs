//! What the SQS tests share: moto's address, a fresh namespace per test binary, and options.
#![allow(dead_code, unreachable_pub)]

use std::sync::OnceLock;
use std::time::Duration;

use sluice_core::Namespace;
use sluice_sqs::{SqsBackend, SqsOptions};

/// moto, started by `scripts/services-up`.
pub const MOTO: &str = "127.0.0.1:4566";

/// A namespace of this test binary's own (`q` and 10 random hex digits), so runs and
/// parallel tests never see each other's topics and queues.
pub fn namespace() -> Namespace {
    static NAMESPACE: OnceLock<Namespace> = OnceLock::new();
    NAMESPACE
        .get_or_init(|| {
            let uuid = uuid::Uuid::now_v7().simple().to_string();
            Namespace::new(format!("q{}", &uuid[uuid.len() - 10..])).expect("a namespace")
        })
        .clone()
}

/// Options for moto at `addr` (any credentials work; long polls of 2 s keep closing quick).
pub fn options(addr: &str) -> SqsOptions {
    SqsOptions::new("us-east-1")
        .endpoint(Some(format!("http://{addr}")))
        .credentials("sluice-test", "sluice-test")
        .namespace(Some(namespace()))
        .poll_wait(Duration::from_secs(2))
}

/// A backend on moto.
pub async fn connect() -> SqsBackend {
    SqsBackend::connect(options(MOTO))
        .await
        .expect("connecting to moto")
}
