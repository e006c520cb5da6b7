//! The shared conformance suite against the RabbitMQ broker at 127.0.0.1:5672 (guest/guest,
//! vhost `/`), in real time.
//!
//! Every run uses its own namespace (`c` and 10 random hex digits), so runs and parallel
//! tests never see each other's objects. Delays are rounded up to delay tiers (250 ms,
//! 500 ms, 1 s…): the harness's delay of 500 ms is a tier.
//!
//! The broker-restart scenario really restarts RabbitMQ (`rabbitmqctl stop_app` /
//! `start_app`, keeping its data); the suite runs it alone, and cargo runs one test binary
//! at a time, so nothing else of the test run is using the broker meanwhile. Set
//! `SLUICE_RABBITMQ_RESTART=0` on a machine whose RabbitMQ others are using: the scenario then
//! prints SKIPPED. `tests/force_close.rs` also force-closes every connection mid-run.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use sluice_conformance::{Harness, Timing};
use sluice_core::Namespace;
use sluice_rabbitmq::{RabbitBackend, RabbitOptions};

const BROKER: &str = "127.0.0.1:5672";

fn namespace() -> Namespace {
    static NAMESPACE: OnceLock<Namespace> = OnceLock::new();
    NAMESPACE
        .get_or_init(|| {
            let uuid = uuid::Uuid::now_v7().simple().to_string();
            Namespace::new(format!("c{}", &uuid[uuid.len() - 10..])).expect("a namespace")
        })
        .clone()
}

fn uri(addr: &str) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

struct RabbitHarness;

impl Harness for RabbitHarness {
    type Backend = RabbitBackend;

    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    async fn connect(&self) -> sluice_core::Result<RabbitBackend> {
        let options = RabbitOptions::default().namespace(Some(namespace()));
        RabbitBackend::connect(&uri(BROKER), options).await
    }

    fn timing(&self) -> Timing {
        Timing::new(Duration::from_secs(1), Duration::from_millis(500))
    }

    fn broker_addr(&self) -> Option<SocketAddr> {
        BROKER.parse().ok()
    }

    async fn connect_through(
        &self,
        proxy_addr: SocketAddr,
    ) -> Option<sluice_core::Result<RabbitBackend>> {
        let options = RabbitOptions::default().namespace(Some(namespace()));
        Some(RabbitBackend::connect(&uri(&proxy_addr.to_string()), options).await)
    }

    async fn restart_broker(&self) -> Option<sluice_core::Result<()>> {
        if std::env::var("SLUICE_RABBITMQ_RESTART").as_deref() == Ok("0") {
            return None;
        }
        Some(restart().await)
    }
}

/// Stops and starts the RabbitMQ application (the node and its data stay), then waits for
/// it to accept work again.
async fn restart() -> sluice_core::Result<()> {
    for step in [
        &["-q", "stop_app"][..],
        &["-q", "start_app"][..],
        &["-q", "await_startup"][..],
    ] {
        let status = tokio::process::Command::new("rabbitmqctl")
            .args(step)
            .status()
            .await
            .map_err(|err| sluice_core::Error::backend(format!("rabbitmqctl: {err}"), false))?;
        if !status.success() {
            let message = format!("rabbitmqctl {step:?} failed: {status}");
            return Err(sluice_core::Error::backend(message, false));
        }
    }
    Ok(())
}

sluice_conformance::conformance_tests!(RabbitHarness);
