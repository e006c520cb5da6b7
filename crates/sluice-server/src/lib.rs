//! `sluice serve`: Sluice's embedded engine shared over the network.
//!
//! One process owns the data directory (the engine's lock makes sure of it); services in
//! other processes reach it with the `sluice://HOST:PORT` backend, which speaks the protocol
//! of `sluice-protocol` (documented in `docs/protocol.md`). Next to it, an HTTP listener
//! serves the admin API (JSON, described by `openapi.json`), Prometheus `/metrics` and the
//! dashboard.
//!
//! # Layout
//! - [`config`]: [`ServerConfig`] and [`Auth`] (API tokens).
//! - `connection.rs`: one client connection: preface, hello, requests answered
//!   concurrently, protocol errors that close only that connection.
//! - `session.rs`: a connection's subscribers and leased deliveries, and each request mapped
//!   onto the embedded backend.
//! - `admin.rs`: the HTTP admin API, `/metrics` and the dashboard page.
//! - `prefetch.rs`: deliveries pushed to clients and not yet taken (counted as ready).
//! - [`metrics`]: the server's own counters.
//!
//! Shutdown ([`Server::shutdown`]): stop accepting, let every connection finish the
//! requests it has in flight (publishes are confirmed or fail, never vanish), then flush and
//! close the engine.

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_embedded::{EmbeddedBackend, EmbeddedOptions};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod admin;
pub mod config;
mod connection;
pub mod metrics;
mod prefetch;
mod session;

pub use config::{Auth, ServerConfig, TlsFiles};
pub use metrics::{ByName, MetricsSnapshot, ServerMetrics};

/// How long a client has to complete the TLS handshake.
const TLS_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a server did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Listening on an address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Refused: no tokens configured and a non-loopback address.
    #[error("refusing to listen on {addr} without API tokens: without tokens `sluice serve` accepts connections from this machine only (listen on 127.0.0.1, or configure tokens with --tokens-file or SLUICE_TOKENS)")]
    Unauthenticated {
        /// The address.
        addr: SocketAddr,
    },
    /// The TLS certificate or key could not be used.
    #[error("{0}")]
    Tls(#[from] sluice_protocol::tls::TlsError),
    /// Opening the engine failed (for example: the directory is in use).
    #[error("cannot open the data directory: {0}")]
    Open(#[from] sluice_core::Error),
}

/// What every connection and the admin API share.
pub(crate) struct Shared {
    pub(crate) backend: EmbeddedBackend,
    pub(crate) config: ServerConfig,
    pub(crate) metrics: Arc<ServerMetrics>,
    pub(crate) prefetched: Arc<prefetch::Prefetched>,
}

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

async fn bind(addr: SocketAddr, auth: &Auth) -> Result<TcpListener, ServerError> {
    if !auth.required() && !addr.ip().is_loopback() {
        return Err(ServerError::Unauthenticated { addr });
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

impl Server {
    /// Opens the engine and starts listening. Port 0 picks a free port: see
    /// [`addr`](Self::addr).
    pub async fn start(config: ServerConfig) -> Result<Self, ServerError> {
        let tls = match &config.tls {
            Some(files) => Some(sluice_protocol::tls::acceptor(&files.cert, &files.key)?),
            None => None,
        };
        let listener = bind(config.listen, &config.auth).await?;
        let http = match config.http {
            Some(addr) => Some(bind(addr, &config.auth).await?),
            None => None,
        };
        let backend =
            EmbeddedBackend::open_with(&config.data, EmbeddedOptions::default().sync(config.sync))
                .await?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
        let shared = Arc::new(Shared {
            backend,
            config,
            metrics: Arc::new(ServerMetrics::default()),
            prefetched: Arc::default(),
        });
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(
            listener,
            tls.clone(),
            shared.clone(),
            stop.clone(),
            tasks.clone(),
        ));
        if let Some(http) = http {
            tasks.spawn(admin::serve(http, tls, shared.clone(), stop.clone()));
        }
        Ok(Self {
            shared,
            addr,
            http_addr,
            stop,
            tasks,
        })
    }

    /// The protocol listener's address (`sluice://` + this).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTP listener's address, if enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The engine behind the server (its default namespace).
    pub fn backend(&self) -> &EmbeddedBackend {
        &self.shared.backend
    }

    /// The server's counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// Stops accepting, lets connections finish what they have in flight, then flushes and
    /// closes the engine.
    pub async fn shutdown(self) -> Result<(), sluice_core::Error> {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.shared.backend.close().await
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (shared, stop) = (shared.clone(), stop.clone());
                    match tls.clone() {
                        None => {
                            tasks.spawn(connection::serve(stream, peer.to_string(), shared, stop));
                        }
                        Some(tls) => {
                            tasks.spawn(async move {
                                match tokio::time::timeout(TLS_HANDSHAKE, tls.accept(stream)).await {
                                    Ok(Ok(stream)) => {
                                        connection::serve(stream, peer.to_string(), shared, stop).await;
                                    }
                                    Ok(Err(err)) => {
                                        shared.metrics.protocol_error();
                                        tracing::warn!(%peer, error = %err, "TLS handshake failed");
                                    }
                                    Err(_) => tracing::warn!(%peer, "no TLS handshake within 10 s"),
                                }
                            });
                        }
                    }
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}
