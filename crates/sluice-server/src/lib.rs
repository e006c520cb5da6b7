//! `sluice serve`: Sluice's embedded engine shared over the network.
//!
//! One process owns the data directory (the engine's lock makes sure of it); services in
//! other processes reach it with the `sluice://HOST:PORT` backend, which speaks the protocol
//! of `sluice-protocol` (documented in `docs/protocol.md`). Next to it, an HTTP listener
//! serves the admin API (JSON, described by `openapi.json`), Prometheus `/metrics` and the
//! dashboard.
//!
//! # Layout
//! - [`config`]: [`ServerConfig`] and [`ConnectionLimits`].
//! - [`auth`]: [`Auth`] (API tokens) and each token's [`Grants`] (publish, consume, admin).
//! - `connection.rs`: one client connection: TLS, preface, hello, requests answered
//!   concurrently, protocol errors that close only that connection, the idle timeout.
//! - `frames.rs`: the frames a client sends, each within the slow-frame timeout.
//! - `limits.rs`: connections counted in all and per address, refusals over the limits, and
//!   warnings throttled per address.
//! - `session.rs`: a connection's subscribers and leased deliveries, and each request mapped
//!   onto the embedded backend.
//! - `job_requests.rs`: the job store requests, on the engine's own job store.
//! - `limit_requests.rs`: global rate limits' tokens, from the engine's limiter.
//! - `admin.rs`: the HTTP admin API, `/metrics` and the dashboard page.
//! - `prefetch.rs`: deliveries pushed to clients and not yet taken (counted as ready).
//! - [`metrics`]: the server's own counters.
//!
//! Shutdown ([`Server::shutdown`]): stop accepting, let every connection finish the
//! requests it has in flight (publishes are confirmed or fail, never vanish), then flush and
//! close the engine.
//!
//! Hostile or forgetful clients ([`ConnectionLimits`]): connections are counted in all and
//! per client address and refused over the limits; each must complete its handshake, and
//! each frame, in time; a connection with nothing in flight that stays silent is closed; a
//! frame's buffer grows with the bytes that arrive, not with the length announced.

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_embedded::{EmbeddedBackend, EmbeddedOptions};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod admin;
pub mod auth;
pub mod config;
mod connection;
mod frames;
mod job_requests;
mod limit_requests;
mod limits;
pub mod metrics;
mod prefetch;
mod session;

pub use auth::{Action, Auth, Grants};
pub use config::{ConnectionLimits, ServerConfig, TlsFiles};
pub use metrics::{ByName, MetricsSnapshot, ServerMetrics};

use connection::Admission;
use limits::{ConnectionCounter, WarnThrottle};

/// The longest lease a subscription or an extension may ask of this server: 12 hours (SQS's
/// longest visibility timeout). A longer one would leave a delivery whose consumer died
/// stranded for longer than anyone waits.
pub const MAX_LEASE: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// Most refused connections told why at once; past that, a refused connection is closed
/// without a word (a flood of them must not cost more than this many tasks).
const MAX_REFUSING: usize = 64;

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
    /// Open connections, in all and per address.
    pub(crate) connections: Arc<ConnectionCounter>,
    /// Warnings about refused and timed-out connections, at most one per address, reason
    /// and interval.
    pub(crate) warnings: WarnThrottle,
    /// Deliveries leased over the HTTP data API.
    pub(crate) http_leases: admin::Leases,
    /// Refused HTTP connections being told why (at most [`MAX_REFUSING`] at once).
    pub(crate) http_refusing: Arc<Semaphore>,
    /// Where the listeners are (ports picked by the system included).
    pub(crate) addr: SocketAddr,
    pub(crate) http_addr: Option<SocketAddr>,
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
            connections: Arc::new(ConnectionCounter::new(&config.limits)),
            config,
            metrics: Arc::new(ServerMetrics::default()),
            prefetched: Arc::default(),
            warnings: WarnThrottle::default(),
            http_leases: admin::Leases::default(),
            http_refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            addr,
            http_addr,
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
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let Some(admission) = admission(&shared, peer, &refusing) else {
                        continue;
                    };
                    tasks.spawn(connection::accept(
                        stream,
                        tls.clone(),
                        peer,
                        shared.clone(),
                        stop.clone(),
                        admission,
                    ));
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

/// Counts a new connection from `peer`, or refuses it: told why if fewer than
/// [`MAX_REFUSING`] refusals are under way, else (`None`) closed at once.
fn admission(shared: &Shared, peer: SocketAddr, refusing: &Arc<Semaphore>) -> Option<Admission> {
    let refusal = match shared.connections.acquire(peer.ip()) {
        Ok(slot) => return Some(Admission::Admitted(slot)),
        Err(refusal) => refusal,
    };
    shared.metrics.connection_refused();
    let now = std::time::Instant::now();
    if let Some(held_back) = shared.warnings.check(peer.ip(), refusal.reason(), now) {
        tracing::warn!(
            %peer,
            reason = refusal.reason(),
            held_back,
            "connection refused: {refusal}"
        );
    }
    let permit = refusing.clone().try_acquire_owned().ok()?;
    Some(Admission::Refused(refusal, permit))
}
