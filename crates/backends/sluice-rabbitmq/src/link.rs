//! The connection to RabbitMQ: connecting, reconnecting with backoff, channels, confirmed
//! publishes, and what lapin's errors mean in Sluice's terms.
//!
//! Invariants:
//! - At most one connection attempt runs at a time; after a failed one, callers get a
//!   retryable [`Error::Connection`] at once until the backoff (100 ms doubling to 5 s) has
//!   passed, so a broker that is down is not hammered.
//! - A publish returns `Ok` only once the broker confirmed it (publisher confirms: one
//!   channel per publisher, and one for the link's own republishes). A publish whose confirm was lost with the connection fails
//!   with a retryable error: publishing the same id again is safe with a dedup window.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use sluice_core::Error;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// AMQP reply code: the object does not exist.
pub(crate) const NOT_FOUND: u16 = 404;
/// AMQP reply code: an exclusive queue is owned by another connection.
pub(crate) const RESOURCE_LOCKED: u16 = 405;
/// AMQP reply code: the object exists with other arguments.
pub(crate) const PRECONDITION_FAILED: u16 = 406;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The AMQP reply code of a channel or connection error, if it is one.
pub(crate) fn reply_code(err: &lapin::Error) -> Option<u16> {
    match err {
        lapin::Error::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// The broker's text of an AMQP error, or the error itself.
pub(crate) fn reply_text(err: &lapin::Error) -> String {
    match err {
        lapin::Error::ProtocolError(amqp) => amqp.get_message().to_string(),
        other => other.to_string(),
    }
}

/// A lapin error as a Sluice error: broker replies are backend errors, everything else
/// (I/O, a closed channel or connection) is a retryable connection error.
pub(crate) fn to_error(err: lapin::Error, what: &str) -> Error {
    match reply_code(&err) {
        Some(code) => Error::Backend {
            message: format!("{what}: the broker replied {code}: {}", reply_text(&err)),
            retryable: false,
            source: Some(Box::new(err)),
        },
        None => Error::connection(format!("{what}: {err}"), Some(Box::new(err))),
    }
}

struct State {
    connection: Option<Arc<Connection>>,
    backoff: Duration,
    next_try: Option<Instant>,
}

/// One logical connection to the broker, re-established on demand.
pub(crate) struct Link {
    uri: String,
    state: Mutex<State>,
    publish: ConfirmChannel,
    connections: std::sync::atomic::AtomicU64,
}

fn properties() -> ConnectionProperties {
    ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name("sluice".into())
}

impl Link {
    /// Connects now (an error if the broker cannot be reached).
    pub(crate) async fn connect(uri: &str) -> Result<Self, Error> {
        let link = Self {
            uri: uri.to_owned(),
            state: Mutex::new(State {
                connection: None,
                backoff: FIRST_BACKOFF,
                next_try: None,
            }),
            publish: ConfirmChannel::default(),
            connections: std::sync::atomic::AtomicU64::new(0),
        };
        link.connection().await?;
        Ok(link)
    }

    /// The live connection, reconnecting if it was lost (subject to the backoff).
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>, Error> {
        let mut state = self.state.lock().await;
        if let Some(connection) = &state.connection {
            if connection.status().connected() {
                return Ok(Arc::clone(connection));
            }
        }
        if let Some(next) = state.next_try {
            if Instant::now() < next {
                return Err(Error::connection(
                    "the connection to RabbitMQ was lost; reconnecting",
                    None,
                ));
            }
        }
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, async {
            Connection::connect(&self.uri, properties()).await
        })
        .await;
        match attempt {
            Ok(Ok(connection)) => {
                let connection = Arc::new(connection);
                state.connection = Some(Arc::clone(&connection));
                state.backoff = FIRST_BACKOFF;
                state.next_try = None;
                self.connections
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(connection)
            }
            failed => {
                state.next_try = Some(Instant::now() + state.backoff);
                state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
                Err(match failed {
                    Ok(Err(err)) => to_error(err, "connecting to RabbitMQ"),
                    _ => Error::connection(
                        format!("connecting to RabbitMQ timed out after {CONNECT_TIMEOUT:?}"),
                        None,
                    ),
                })
            }
        }
    }

    /// How many times a connection was established (1 + reconnections).
    pub(crate) fn connections(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A new channel on the live connection.
    pub(crate) async fn channel(&self) -> Result<Channel, Error> {
        let connection = self.connection().await?;
        connection
            .create_channel()
            .await
            .map_err(|err| to_error(err, "opening a channel"))
    }

    /// Publishes on the link's own confirm channel and waits for the broker's confirm
    /// (Sluice's republishes: retries, dead letters, redrives).
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), Error> {
        let confirm = self
            .publish
            .send(self, exchange, routing_key, mandatory, body, properties)
            .await?;
        confirmed(confirm, exchange, routing_key).await
    }
}

/// A confirm-mode channel, opened on first use and again after it closed. Sends on one
/// channel keep their call order on the wire.
#[derive(Default)]
pub(crate) struct ConfirmChannel {
    slot: Mutex<Option<Channel>>,
}

impl ConfirmChannel {
    async fn channel(&self, link: &Link) -> Result<Channel, Error> {
        let mut slot = self.slot.lock().await;
        if let Some(channel) = &*slot {
            if channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        let channel = link.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|err| to_error(err, "turning publisher confirms on"))?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// Sends a message; the returned future waits for its confirm.
    pub(crate) async fn send(
        &self,
        link: &Link,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<lapin::publisher_confirm::PublisherConfirm, Error> {
        let channel = self.channel(link).await?;
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        channel
            .basic_publish(exchange, routing_key, options, body, properties)
            .await
            .map_err(|err| to_error(err, "publishing"))
    }
}

/// Waits for a publish's confirm: `Ok` once the broker holds the message.
pub(crate) async fn confirmed(
    confirm: lapin::publisher_confirm::PublisherConfirm,
    exchange: &str,
    routing_key: &str,
) -> Result<(), Error> {
    match confirm.await {
        Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
        Ok(Confirmation::Ack(Some(_))) | Ok(Confirmation::Nack(Some(_))) => Err(Error::backend(
            format!(
                "unroutable: no queue is bound to `{exchange}` for routing key `{routing_key}`"
            ),
            false,
        )),
        Ok(Confirmation::Nack(None)) => Err(Error::backend(
            format!("the broker refused the message published to `{exchange}` (nack)"),
            true,
        )),
        Err(err) => Err(to_error(err, "waiting for the publish confirm")),
    }
}
