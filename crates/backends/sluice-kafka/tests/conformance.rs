//! The shared conformance suite against Tansu, a Kafka-protocol broker at 127.0.0.1:9092
//! (started by `scripts/services-up`), in real time.
//!
//! Two scenarios print SKIPPED because of the harness, not the capabilities: connection loss
//! (a Kafka client reaches the brokers at the addresses they advertise, so the suite's TCP
//! proxy would only carry the bootstrap connection) and broker restart (Tansu runs on memory
//! storage here; a Kafka cluster keeps everything, and the capability says so).

use std::time::Duration;

use sluice_conformance::{Harness, Timing};
use sluice_kafka::KafkaBackend;

mod support;

struct KafkaHarness;

impl Harness for KafkaHarness {
    type Backend = KafkaBackend;

    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn connect(&self) -> sluice_core::Result<KafkaBackend> {
        KafkaBackend::connect(support::options(support::TANSU)).await
    }

    fn timing(&self) -> Timing {
        // A new group member gets its partitions after a rebalance of a few seconds.
        Timing::new(Duration::from_secs(2), Duration::from_secs(1))
            .with_deadline(Duration::from_secs(30))
            .with_settle(Duration::from_secs(2))
            .with_recovery(Duration::from_secs(60))
    }
}

sluice_conformance::conformance_tests!(KafkaHarness);
