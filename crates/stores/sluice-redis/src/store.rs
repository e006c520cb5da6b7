//! [`RedisStore`]: the connection, the key prefix, and Redis errors as Sluice errors.
//!
//! One [`ConnectionManager`] per store: a multiplexed connection (concurrent calls share it
//! and are pipelined) that reconnects by itself after a loss. A call made while Redis is
//! unreachable fails with a retryable [`Error::Connection`]; the next call tries again.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RetryMethod};
use sluice_core::{Error, Result};

/// The key prefix of a store made by [`RedisStore::connect`].
pub const DEFAULT_PREFIX: &str = "sluice";

/// How long [`RedisStore::connect`] waits for one answer before the call fails (retryably).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`RedisStore::connect`] waits for one connection attempt.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// How many times [`RedisStore::connect`]'s connection is retried (0.1 s apart, doubling)
/// before the calls waiting for it fail: enough to ride out a blip, short enough that a
/// publish or a delivery does not hang while Redis is down (they fail, retryably, in about
/// a second when Redis refuses connections; the next call tries again).
pub const CONNECTION_RETRIES: usize = 3;

/// Sluice's idempotency store and dedup store on Redis. Cheap to clone: clones share one
/// connection. See the crate docs for the key layout and what survives a Redis restart.
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) connection: ConnectionManager,
    pub(crate) prefix: Arc<str>,
    /// `host:port` (or the socket path), for error messages.
    address: Arc<str>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.address)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis server at `url` (`redis://[:PASSWORD@]HOST[:PORT][/DB]`), with
    /// the key prefix [`DEFAULT_PREFIX`], answers awaited for at most [`RESPONSE_TIMEOUT`],
    /// connection attempts for at most [`CONNECTION_TIMEOUT`] and retried
    /// [`CONNECTION_RETRIES`] times.
    ///
    /// # Errors
    /// [`Error::Connection`] if Redis does not answer; [`Error::Backend`] if the URL is
    /// invalid or Redis refuses the connection (authentication, for instance).
    pub async fn connect(url: &str) -> Result<Self> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_number_of_retries(CONNECTION_RETRIES);
        Self::connect_with(url, config).await
    }

    /// [`connect`](Self::connect) with the connection manager's settings given (timeouts,
    /// reconnection backoff). The URL is not repeated in errors: it may hold a password.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_with(url: &str, config: ConnectionManagerConfig) -> Result<Self> {
        let client = redis::Client::open(url).map_err(|err| Error::Backend {
            message: format!("invalid Redis URL: {err}"),
            retryable: false,
            source: Some(Box::new(err)),
        })?;
        let address: Arc<str> = client.get_connection_info().addr().to_string().into();
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|err| to_error(&address, err, format_args!("connecting")))?;
        Ok(Self {
            connection,
            prefix: DEFAULT_PREFIX.into(),
            address,
        })
    }

    /// The same store with every key under `prefix` instead of [`DEFAULT_PREFIX`]. Processes
    /// that must see each other's claims use the same prefix; separate applications (or
    /// separate brokers) sharing one Redis use different ones.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().into();
        self
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A handle on the connection for one call (a clone of the manager: an `Arc`).
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// A Redis error as a Sluice error naming Redis, the operation and the key.
    pub(crate) fn error(&self, err: RedisError, what: fmt::Arguments<'_>) -> Error {
        to_error(&self.address, err, what)
    }
}

/// Connection problems (I/O errors, timeouts, a dropped connection) are a retryable
/// [`Error::Connection`]; anything else is an [`Error::Backend`], retryable when Redis says
/// trying again may help (loading, failover, `TRYAGAIN`).
fn to_error(address: &str, err: RedisError, what: fmt::Arguments<'_>) -> Error {
    let message = format!("Redis at {address}: {what}: {err}");
    if err.is_io_error() || err.is_connection_dropped() {
        return Error::connection(message, Some(Box::new(err)));
    }
    let retryable = !matches!(err.retry_method(), RetryMethod::NoRetry);
    Error::Backend {
        message,
        retryable,
        source: Some(Box::new(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_retryable_connection_errors_naming_redis_and_the_operation() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let err = to_error(
            "127.0.0.1:6379",
            RedisError::from(io),
            format_args!("claiming `sluice:idem:billing:a`"),
        );
        assert!(matches!(err, Error::Connection { .. }), "{err:?}");
        assert!(err.is_retryable());
        let text = err.to_string();
        assert!(
            text.contains("Redis at 127.0.0.1:6379: claiming `sluice:idem:billing:a`"),
            "{text}"
        );
    }

    #[test]
    fn a_type_error_is_a_backend_error_that_is_not_retried() {
        let err = to_error(
            "127.0.0.1:6379",
            RedisError::from((redis::ErrorKind::UnexpectedReturnType, "not a string")),
            format_args!("renewing"),
        );
        assert!(matches!(err, Error::Backend { .. }), "{err:?}");
        assert!(!err.is_retryable());
    }
}
