//! What the Kafka tests share: Tansu's address, a fresh namespace per test binary, options.
#![allow(dead_code, unreachable_pub)]

use std::sync::OnceLock;
use std::time::Duration;

use sluice_core::Namespace;
use sluice_kafka::{KafkaBackend, KafkaOptions};

/// Tansu, started by `scripts/services-up`.
pub const TANSU: &str = "127.0.0.1:9092";

/// A namespace of this test binary's own (`k` and 10 random hex digits), so runs and
/// parallel tests never see each other's topics and groups.
pub fn namespace() -> Namespace {
    static NAMESPACE: OnceLock<Namespace> = OnceLock::new();
    NAMESPACE
        .get_or_init(|| {
            let uuid = uuid::Uuid::now_v7().simple().to_string();
            Namespace::new(format!("k{}", &uuid[uuid.len() - 10..])).expect("a namespace")
        })
        .clone()
}

/// Options for the broker at `addr`: a 6 s session timeout (Tansu hands a new group its first
/// record after about half of it).
pub fn options(addr: &str) -> KafkaOptions {
    // `RUST_LOG=sluice_kafka=debug` shows rebalances and commits; `SLUICE_KAFKA_DEBUG=cgrp`
    // adds librdkafka's own debug contexts.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let options = KafkaOptions::new(addr)
        .namespace(Some(namespace()))
        .session_timeout(Duration::from_secs(6));
    match std::env::var("SLUICE_KAFKA_DEBUG") {
        Ok(contexts) => options.client_setting("debug", contexts),
        Err(_) => options,
    }
}

/// A backend on Tansu.
pub async fn connect() -> KafkaBackend {
    KafkaBackend::connect(options(TANSU))
        .await
        .expect("connecting to Tansu")
}
