//! The engine completes operations through callbacks run on its flusher thread; this turns
//! one into a future. The callback only sends on a oneshot channel: it never blocks the
//! flusher.

use sluice_core::Error;
use tokio::sync::oneshot;

use crate::convert::error;

/// A completion callback for the engine, and the future of its result.
pub(crate) fn completion<T: Send + 'static>() -> (
    sluice_engine::engine::Completion<T>,
    impl std::future::Future<Output = Result<T, Error>>,
) {
    let (tx, rx) = oneshot::channel();
    let done = Box::new(move |result: sluice_engine::Result<T>| {
        let _ = tx.send(result);
    });
    let future = async move {
        match rx.await {
            Ok(result) => result.map_err(error),
            Err(_) => Err(Error::Closed(
                "the engine stopped before completing the operation",
            )),
        }
    };
    (done, future)
}
