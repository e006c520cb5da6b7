//! The shared conformance suite on `sluice://`, against a `sluice serve` started by the test
//! on a fresh data directory and a free loopback port, in real time.
//!
//! "Restarting the broker" really restarts the server: a graceful shutdown (connections
//! closed, engine flushed and closed), then a new server on the same directory and port.
//! Connection loss goes through the suite's TCP proxy, which cuts every connection.

use std::net::SocketAddr;
use std::sync::Mutex;

use sluice_conformance::{Harness, Timing};
use sluice_remote::{RemoteBackend, RemoteOptions};
use sluice_server::{Server, ServerConfig};

struct RemoteHarness {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    // std Mutex: never held across an .await (taken out, or replaced after the await).
    server: Mutex<Option<Server>>,
}

fn config(dir: &std::path::Path, addr: SocketAddr) -> ServerConfig {
    ServerConfig::new(dir).listen(addr).http(None)
}

impl RemoteHarness {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let server = Server::start(config(dir.path(), "127.0.0.1:0".parse().unwrap()))
            .await
            .expect("starting sluice serve");
        Self {
            addr: server.addr(),
            dir,
            server: Mutex::new(Some(server)),
        }
    }
}

impl Harness for RemoteHarness {
    type Backend = RemoteBackend;

    fn name(&self) -> &'static str {
        "sluice"
    }

    async fn connect(&self) -> sluice_core::Result<RemoteBackend> {
        RemoteBackend::connect(&self.addr.to_string(), RemoteOptions::default()).await
    }

    fn timing(&self) -> Timing {
        Timing::in_process()
    }

    fn broker_addr(&self) -> Option<SocketAddr> {
        Some(self.addr)
    }

    async fn connect_through(
        &self,
        proxy_addr: SocketAddr,
    ) -> Option<sluice_core::Result<RemoteBackend>> {
        Some(RemoteBackend::connect(&proxy_addr.to_string(), RemoteOptions::default()).await)
    }

    async fn restart_broker(&self) -> Option<sluice_core::Result<()>> {
        Some(
            async {
                let old = self.server.lock().expect("harness lock").take();
                if let Some(old) = old {
                    old.shutdown().await?;
                }
                let server = Server::start(config(self.dir.path(), self.addr))
                    .await
                    .map_err(|e| sluice_core::Error::backend(e.to_string(), true))?;
                *self.server.lock().expect("harness lock") = Some(server);
                Ok(())
            }
            .await,
        )
    }
}

sluice_conformance::conformance_tests!(RemoteHarness::new().await);
