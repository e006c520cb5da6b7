//! What `sluice serve` is told: where the data lives, where to listen, who may connect
//! ([`Auth`](crate::Auth)), and
//! how many connections it holds and for how long ([`ConnectionLimits`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::jobs::JobStore;
use sluice_embedded::SyncMode;
use sluice_protocol::{DEFAULT_MAX_FRAME, DEFAULT_PORT};

use crate::auth::Auth;

/// Configuration of a server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Data directory of the engine.
    pub data: PathBuf,
    /// Address of the `sluice://` protocol listener (`127.0.0.1:7575` by default).
    pub listen: SocketAddr,
    /// Address of the HTTP admin API, metrics and dashboard (`127.0.0.1:7576` by default;
    /// `None` disables it).
    pub http: Option<SocketAddr>,
    /// Who may connect.
    pub auth: Auth,
    /// Durability of the engine (fsync before confirming by default).
    pub sync: SyncMode,
    /// Largest frame a client may send.
    pub max_frame: usize,
    /// Certificate chain and private key (PEM files): both listeners speak TLS only.
    pub tls: Option<TlsFiles>,
    /// How many client connections the protocol listener holds, and for how long.
    pub limits: ConnectionLimits,
    /// The job store the applications' `Jobs` share, shown and changed by the dashboard and
    /// `/api/v1/jobs`, `/api/v1/schedules` (none: those answer 404).
    pub(crate) job_store: Option<SharedJobStore>,
}

/// A job store, debug-printed by name.
#[derive(Clone)]
pub(crate) struct SharedJobStore(pub(crate) Arc<dyn JobStore>);

impl std::fmt::Debug for SharedJobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobStore")
    }
}

/// How many client connections `sluice serve` holds, and how long it waits for each one.
///
/// The defaults suit one broker on one machine; each bound protects memory and file
/// descriptors from clients that connect and then misbehave (or just linger):
///
/// | setting | default | a connection… |
/// |---|---|---|
/// | [`max_connections`](Self::max_connections) | 1024 | beyond this many open is refused |
/// | [`max_connections_per_address`](Self::max_connections_per_address) | 256 | beyond this many from one IP address is refused |
/// | [`handshake_timeout`](Self::handshake_timeout) | 10 s | must complete TLS, preface and hello within this of being accepted |
/// | [`idle_timeout`](Self::idle_timeout) | 10 min | sending nothing for this long, with nothing in flight, is closed |
/// | [`slow_frame_timeout`](Self::slow_frame_timeout) | 30 s | must finish a frame within this of its first byte |
///
/// A connection is idle only if it has no request in flight (a long-poll `Receive`
/// included), no `Consume` stream and no delivery whose lease is still running: a consumer
/// waiting for messages, or working on the ones it holds, is never idle.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionLimits {
    /// Most client connections open at once; one more is refused (at least 1).
    pub max_connections: usize,
    /// Most client connections open at once from one IP address (at least 1). Without tokens
    /// every client is on this machine, so this is also the bound of the whole server.
    pub max_connections_per_address: usize,
    /// From accepting a connection to its hello: TLS handshake, preface and hello together.
    pub handshake_timeout: Duration,
    /// How long a connection with nothing in flight may send nothing before it is closed.
    pub idle_timeout: Duration,
    /// How long a frame may take to arrive, from its first byte to its last (the time the
    /// server itself stops reading, to push back on a busy connection, does not count).
    pub slow_frame_timeout: Duration,
}

impl ConnectionLimits {
    /// Default of [`max_connections`](Self::max_connections).
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
    /// Default of [`max_connections_per_address`](Self::max_connections_per_address).
    pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
    /// Default of [`handshake_timeout`](Self::handshake_timeout).
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default of [`idle_timeout`](Self::idle_timeout) (Kafka's broker closes idle
    /// connections after the same 10 minutes).
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
    /// Default of [`slow_frame_timeout`](Self::slow_frame_timeout) (a frame of the default
    /// 16 MiB limit then needs about 560 KB/s).
    pub const DEFAULT_SLOW_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

    /// Sets the most connections open at once (at least 1).
    #[must_use]
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Sets the most connections open at once from one IP address (at least 1).
    #[must_use]
    pub fn max_connections_per_address(mut self, max: usize) -> Self {
        self.max_connections_per_address = max.max(1);
        self
    }

    /// Sets the time a new connection has for its TLS handshake, preface and hello.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the time a connection with nothing in flight may stay silent.
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets the time a frame may take from its first byte to its last.
    #[must_use]
    pub fn slow_frame_timeout(mut self, timeout: Duration) -> Self {
        self.slow_frame_timeout = timeout;
        self
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: Self::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            slow_frame_timeout: Self::DEFAULT_SLOW_FRAME_TIMEOUT,
        }
    }
}

/// The PEM files of a server's TLS identity.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

impl ServerConfig {
    /// Serves `data` on the default addresses, durable, without tokens (loopback only).
    pub fn new(data: impl Into<PathBuf>) -> Self {
        Self {
            data: data.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            http: Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT + 1))),
            auth: Auth::open(),
            sync: SyncMode::Always,
            max_frame: DEFAULT_MAX_FRAME,
            tls: None,
            limits: ConnectionLimits::default(),
            job_store: None,
        }
    }

    /// Shows the jobs and schedules of this job store (the one the applications' `Jobs`
    /// share: `sluice-sql`'s or `sluice-redis`'s) on the dashboard and the admin API, which
    /// can cancel pending jobs in it.
    #[must_use]
    pub fn job_store(mut self, store: Arc<dyn JobStore>) -> Self {
        self.job_store = Some(SharedJobStore(store));
        self
    }

    /// Serves TLS only, with this certificate chain and key.
    #[must_use]
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls = Some(TlsFiles {
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    /// Sets the protocol address.
    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Sets (or disables) the HTTP address.
    #[must_use]
    pub fn http(mut self, addr: Option<SocketAddr>) -> Self {
        self.http = addr;
        self
    }

    /// Sets who may connect.
    #[must_use]
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Sets the durability mode.
    #[must_use]
    pub fn sync(mut self, sync: SyncMode) -> Self {
        self.sync = sync;
        self
    }

    /// Sets the frame limit.
    #[must_use]
    pub fn max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame;
        self
    }

    /// Sets the connection limits and timeouts.
    #[must_use]
    pub fn limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }
}
