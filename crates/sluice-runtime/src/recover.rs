//! Panic recovery: a handler that panics is a transient failure, never a dead worker.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use crate::handler::HandlerError;

/// Runs the handler future, turning a panic into a transient [`HandlerError`]. Returns
/// whether it panicked, for the counters.
pub(crate) async fn catch_panic<T>(
    handler: impl Future<Output = Result<T, HandlerError>>,
) -> (Result<T, HandlerError>, bool) {
    // AssertUnwindSafe: after a panic the future is dropped and never polled again, and the
    // handler's shared state is the user's (as with a panicking tokio task).
    match AssertUnwindSafe(handler).catch_unwind().await {
        Ok(result) => (result, false),
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            (
                Err(HandlerError::transient(format!("handler panicked: {text}"))),
                true,
            )
        }
    }
}

/// A handler panicked; the panic message is kept.
#[derive(Debug, thiserror::Error)]
#[error("handler panicked: {0}")]
pub struct Panicked(pub String);
