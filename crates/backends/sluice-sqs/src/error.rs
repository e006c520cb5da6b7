//! Mapping AWS SDK errors to Sluice's. Every error names what was being done (`publishing to
//! SNS topic `dev-orders``, `receiving from `dev-billing``) so the queue is in the message.
//!
//! The SDK itself retries throttling and transient errors with backoff (the retry
//! configuration in `backend.rs`); what reaches this module is what survived those retries.

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use sluice_core::Error;

/// Error codes meaning "this queue or topic does not exist".
const NOT_FOUND_CODES: [&str; 3] = [
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "NotFound",
];

/// Error codes of throttling and server-side trouble: worth trying again later.
const RETRYABLE_CODES: [&str; 7] = [
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
];

/// The service's error code, if the service answered.
pub(crate) fn code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    match err {
        SdkError::ServiceError(service) => service.err().code(),
        _ => None,
    }
}

/// Whether the service said the object does not exist.
pub(crate) fn is_not_found<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    code(err).is_some_and(|c| NOT_FOUND_CODES.contains(&c))
}

/// A Sluice error for an SDK error met while doing `what`.
pub(crate) fn to_error<E, R>(err: SdkError<E, R>, what: &str) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("unknown").to_owned();
            let message = service.err().message().unwrap_or("").to_owned();
            let retryable = RETRYABLE_CODES.contains(&code.as_str());
            Error::Backend {
                message: format!("{what}: {code}: {message}"),
                retryable,
                source: Some(Box::new(err)),
            }
        }
        SdkError::ConstructionFailure(_) => {
            let detail = source_chain(&err);
            let hint = if detail.contains("credentials") {
                " (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile; any value \
                 works for a local emulator such as moto)"
            } else {
                ""
            };
            Error::backend(format!("{what}: {detail}{hint}"), false)
        }
        _ => {
            let detail = source_chain(&err);
            Error::connection(format!("{what}: {detail}"), Some(Box::new(err)))
        }
    }
}

/// The error and its sources, joined (the SDK's top-level messages are terse).
fn source_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(next) = source {
        out.push_str(": ");
        out.push_str(&next.to_string());
        source = next.source();
    }
    out
}
