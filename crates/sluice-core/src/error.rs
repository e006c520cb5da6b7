//! Errors of the contract, one enum per concern, joined in [`Error`].

use std::time::Duration;

/// A boxed error from a backend's client library, kept as the source of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result type of the contract.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A topic, subscription or namespace name that breaks the naming rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("{kind} name is empty")]
    Empty {
        /// What was being named (`topic`, `subscription`, `namespace`).
        kind: &'static str,
    },
    /// The name is longer than allowed.
    #[error("{kind} name `{name}` is {len} characters long; the limit is {max}")]
    TooLong {
        /// What was being named.
        kind: &'static str,
        /// The offending name.
        name: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name holds a character outside `[a-z0-9_-]`.
    #[error("{kind} name `{name}` contains `{character}`; only a-z, 0-9, `_` and `-` are allowed")]
    InvalidCharacter {
        /// What was being named.
        kind: &'static str,
        /// The offending name.
        name: String,
        /// The first character that is not allowed.
        character: char,
    },
}

/// A message that cannot be published as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The message id is empty or too long.
    #[error("message id must be 1 to {max} bytes long, got {len}")]
    InvalidId {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A header name is empty, too long, or holds characters outside `[A-Za-z0-9_.-]`.
    #[error(
        "header name `{name}` is invalid: 1 to 128 characters of A-Z, a-z, 0-9, `_`, `.`, `-`"
    )]
    InvalidHeaderName {
        /// The offending header name.
        name: String,
    },
    /// A header name uses the prefix `sluice-`, which Sluice reserves for itself.
    #[error("header name `{name}` uses the reserved prefix `sluice-`")]
    ReservedHeader {
        /// The offending header name.
        name: String,
    },
    /// The headers (names and values) are larger than allowed.
    #[error("headers take {size} bytes; the limit is {max}")]
    HeadersTooLarge {
        /// Their size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The whole message is larger than the backend accepts.
    #[error("message `{id}` is {size} bytes; the backend accepts at most {max}")]
    TooLarge {
        /// The message id.
        id: String,
        /// Its size (payload plus headers) in bytes.
        size: usize,
        /// The backend's limit.
        max: usize,
    },
    /// A routing key or ordering key is invalid.
    #[error("{field} `{value}` is invalid: {reason}")]
    InvalidKey {
        /// `routing_key` or `ordering_key`.
        field: &'static str,
        /// The offending value.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The message asks for a delay longer than the backend supports.
    #[error("delay of {requested:?} exceeds the backend's maximum of {max:?}")]
    DelayTooLong {
        /// The delay asked for.
        requested: Duration,
        /// The backend's maximum.
        max: Duration,
    },
}

/// A backend URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The string is not a URL Sluice understands.
    #[error("invalid backend URL `{url}`: {reason}")]
    Invalid {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The scheme is not one of Sluice's backends.
    #[error("unknown backend scheme `{scheme}` in `{url}`; expected one of memory:, embedded:PATH, sluice://HOST:PORT, amqp://, sqs://REGION, kafka://HOST:PORT")]
    UnknownScheme {
        /// The URL as given.
        url: String,
        /// The scheme found.
        scheme: String,
    },
    /// The scheme is valid, but its backend is not compiled into this build.
    #[error("the `{scheme}` backend is not available in this build (enable the `{feature}` feature of the `sluice` crate, or wait for the release that ships it)")]
    NotAvailable {
        /// The scheme asked for.
        scheme: &'static str,
        /// The cargo feature that would enable it.
        feature: &'static str,
    },
}

/// What kind of object an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObjectKind {
    /// A topic.
    Topic,
    /// A subscription.
    Subscription,
    /// A message.
    Message,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Topic => "topic",
            ObjectKind::Subscription => "subscription",
            ObjectKind::Message => "message",
        })
    }
}

/// Every error the contract returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name breaks the naming rules.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A message is invalid or too large.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// A backend URL cannot be used.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// A filter pattern is invalid.
    #[error("invalid filter `{pattern}`: {reason}")]
    InvalidFilter {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The object does not exist.
    #[error("{kind} `{name}` does not exist")]
    NotFound {
        /// Its kind.
        kind: ObjectKind,
        /// Its name.
        name: String,
    },
    /// The object exists with another configuration.
    #[error("{kind} `{name}` already exists with a different configuration: {difference}")]
    Conflict {
        /// Its kind.
        kind: ObjectKind,
        /// Its name.
        name: String,
        /// What differs, as `field: existing X, requested Y`.
        difference: String,
    },
    /// The delivery's lease expired (or it was already settled): the verb had no effect and
    /// the message is, or will be, delivered again.
    #[error("lease lost for message `{id}`: it expired or the delivery was already settled")]
    LeaseLost {
        /// The message id.
        id: String,
    },
    /// The backend cannot do this at all (see its [`Capabilities`](crate::Capabilities)).
    #[error("not supported by this backend: {0}")]
    Unsupported(String),
    /// The publisher, subscriber or backend was closed.
    #[error("closed: {0}")]
    Closed(&'static str),
    /// The connection to the broker failed or was lost. Retryable.
    #[error("connection to the broker failed: {message}")]
    Connection {
        /// What happened.
        message: String,
        /// The client library's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The topic's backlog bound refused the publish: its slowest subscription has too much
    /// waiting (see [`BacklogBound`](crate::config::BacklogBound)). Nothing of the refused
    /// message was stored, so publishing it again is safe. Retryable: consumers may catch up.
    #[error("topic `{topic}` is full: {detail}")]
    BacklogFull {
        /// The topic (its logical name).
        topic: String,
        /// The backlog, the bound, the slowest subscription and, under `block`, how long the
        /// publish waited, e.g. "its backlog of 3 messages has reached the bound of 3; the
        /// slowest subscription is \`billing\`".
        detail: String,
    },
    /// The operation did not complete in time. Retryable.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The credentials are valid but do not allow this operation (a `sluice serve` API
    /// token without the grant, for example). Not retryable.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Any other failure reported by the backend.
    #[error("backend error: {message}")]
    Backend {
        /// What happened.
        message: String,
        /// Whether trying again may succeed.
        retryable: bool,
        /// The client library's error.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// Whether the same call may succeed if tried again later (connection loss, timeouts,
    /// transient broker errors). Invalid input, conflicts and lost leases are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connection { .. } | Error::Timeout(_) | Error::BacklogFull { .. } => true,
            Error::Backend { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// A [`Error::Connection`] from a message and an optional source.
    pub fn connection(message: impl Into<String>, source: Option<BoxError>) -> Self {
        Error::Connection {
            message: message.into(),
            source,
        }
    }

    /// A [`Error::Backend`] from a message.
    pub fn backend(message: impl Into<String>, retryable: bool) -> Self {
        Error::Backend {
            message: message.into(),
            retryable,
            source: None,
        }
    }

    /// A [`Error::BacklogFull`] for a topic.
    pub fn backlog_full(topic: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::BacklogFull {
            topic: topic.into(),
            detail: detail.into(),
        }
    }

    /// A [`Error::NotFound`] for a topic.
    pub fn topic_not_found(name: impl Into<String>) -> Self {
        Error::NotFound {
            kind: ObjectKind::Topic,
            name: name.into(),
        }
    }

    /// A [`Error::NotFound`] for a subscription.
    pub fn subscription_not_found(name: impl Into<String>) -> Self {
        Error::NotFound {
            kind: ObjectKind::Subscription,
            name: name.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_timeout_errors_are_retryable_but_input_errors_are_not() {
        assert!(Error::connection("reset", None).is_retryable());
        assert!(Error::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(!Error::topic_not_found("orders").is_retryable());
        assert!(!Error::LeaseLost { id: "a".into() }.is_retryable());
        assert!(Error::backend("busy", true).is_retryable());
    }

    #[test]
    fn backlog_full_names_the_topic_and_is_retryable() {
        let err = Error::backlog_full(
            "orders",
            "its backlog of 3 messages has reached the bound of 3; the slowest subscription is `billing`",
        );
        assert!(err.is_retryable());
        assert_eq!(
            err.to_string(),
            "topic `orders` is full: its backlog of 3 messages has reached the bound of 3; \
             the slowest subscription is `billing`"
        );
    }
}
