//! The shared conformance suite against moto, the SQS + SNS emulator at 127.0.0.1:4566
//! (started by `scripts/services-up`), in real time with whole-second leases and delays.
//!
//! Connection loss goes through the suite's TCP proxy (the endpoint points at it); recovery
//! is given 60 s because messages taken by a long poll whose answer was cut stay hidden for a
//! lease. moto keeps
//! its state in memory, so there is no broker restart to survive here: the restart scenario
//! prints SKIPPED (real SQS keeps everything; the capability says so).

use std::net::SocketAddr;
use std::time::Duration;

use sluice_conformance::{Harness, Timing};
use sluice_sqs::SqsBackend;

mod support;

struct SqsHarness;

impl Harness for SqsHarness {
    type Backend = SqsBackend;

    fn name(&self) -> &'static str {
        "sqs"
    }

    async fn connect(&self) -> sluice_core::Result<SqsBackend> {
        SqsBackend::connect(support::options(support::MOTO)).await
    }

    fn timing(&self) -> Timing {
        Timing::new(Duration::from_secs(2), Duration::from_secs(1))
            .with_settle(Duration::from_secs(2))
            .with_tolerance(Duration::from_millis(200))
            // A long poll whose connection is cut may still take messages on the server side
            // (the answer is lost), and they stay hidden for the subscription's lease (30 s by
            // default) before they are delivered again.
            .with_recovery(Duration::from_secs(60))
    }

    fn broker_addr(&self) -> Option<SocketAddr> {
        support::MOTO.parse().ok()
    }

    async fn connect_through(
        &self,
        proxy_addr: SocketAddr,
    ) -> Option<sluice_core::Result<SqsBackend>> {
        Some(SqsBackend::connect(support::options(&proxy_addr.to_string())).await)
    }
}

sluice_conformance::conformance_tests!(SqsHarness);
