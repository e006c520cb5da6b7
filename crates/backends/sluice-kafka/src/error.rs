//! Mapping rdkafka errors to Sluice's. Every error names what was being done (`publishing to
//! `dev.orders``), and says whether trying again may help: librdkafka reconnects by itself,
//! so transport errors, timeouts and a full local queue are retryable.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use sluice_core::Error;

/// Whether the broker said the topic does not exist.
pub(crate) fn is_unknown_topic(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
    )
}

/// A Sluice error for an rdkafka error met while doing `what`.
pub(crate) fn to_error(err: KafkaError, what: &str) -> Error {
    use RDKafkaErrorCode as C;
    let code = err.rdkafka_error_code();
    let message = format!("{what}: {err}");
    match code {
        Some(
            C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::NetworkException
            | C::Resolve
            | C::NotCoordinator
            | C::CoordinatorNotAvailable
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition,
        ) => Error::connection(message, Some(Box::new(err))),
        Some(C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue) => {
            Error::Backend {
                message,
                retryable: true,
                source: Some(Box::new(err)),
            }
        }
        Some(C::QueueFull) => Error::Backend {
            message: format!("{message} (the producer's local queue is full)"),
            retryable: true,
            source: Some(Box::new(err)),
        },
        Some(C::MessageSizeTooLarge) => Error::Backend {
            message: format!("{message} (raise the broker's message.max.bytes)"),
            retryable: false,
            source: Some(Box::new(err)),
        },
        _ => {
            let retryable = matches!(err, KafkaError::MessageProduction(_))
                && code.is_some_and(|c| {
                    matches!(c, C::NotEnoughReplicas | C::OutOfOrderSequenceNumber)
                });
            Error::Backend {
                message,
                retryable,
                source: Some(Box::new(err)),
            }
        }
    }
}

/// Whether the error means "not there yet": a topic just created whose metadata has not
/// reached every broker (or the client) yet.
pub(crate) fn is_not_yet(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::LeaderNotAvailable
        )
    )
}

/// Runs a blocking client call, trying again for up to 10 s while a new topic's metadata is
/// not there yet.
pub(crate) fn settle<T>(mut call: impl FnMut() -> Result<T, KafkaError>) -> Result<T, KafkaError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match call() {
            Err(err) if is_not_yet(&err) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}
