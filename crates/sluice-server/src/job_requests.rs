//! The job store requests (`JobLoad`, `JobSwap`, `JobRemove`, `JobScan`): the engine's own
//! job store in the connection's namespace, so `Jobs` over `sluice://` keeps job status,
//! cancellations and schedules durably in the server's data directory, where the dashboard
//! reads them.

use std::time::Duration;

use sluice_core::Backend;
use sluice_embedded::EmbeddedBackend;
use sluice_protocol::convert;
use sluice_protocol::message::{WireError, WireJobEntry, WireVersioned};
use sluice_protocol::{Request, Response};

/// The most bytes of entries one `JobScan` answer holds: it must stay well under the frame
/// limit (16 MiB by default), so a scan of many large entries answers with fewer.
pub(crate) const MAX_SCAN_BYTES: usize = 8 * 1024 * 1024;

/// Answers a job store request on `backend`'s job store.
pub(crate) async fn answer(
    backend: &EmbeddedBackend,
    request: Request,
) -> Result<Response, WireError> {
    let store = backend.job_store().ok_or_else(|| WireError::Unsupported {
        message: "this server has no job store".into(),
    })?;
    let w = |e: sluice_core::Error| convert::error_to_wire(&e);
    Ok(match request {
        Request::JobLoad { key } => {
            Response::JobEntry(store.load(&key).await.map_err(w)?.map(|v| WireVersioned {
                value: v.value,
                version: v.version,
            }))
        }
        Request::JobSwap {
            key,
            expected,
            value,
            ttl_ms,
        } => Response::Swapped(
            store
                .swap(&key, expected, &value, Duration::from_millis(ttl_ms))
                .await
                .map_err(w)?,
        ),
        Request::JobRemove { key, expected } => {
            Response::Removed(store.remove(&key, expected).await.map_err(w)?)
        }
        Request::JobScan { prefix, limit } => {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            // The budget is applied while the engine walks its entries, under its lock: a
            // client asking for everything costs no more than one answer.
            Response::JobEntries(
                backend
                    .engine_job_store()
                    .scan_within(&prefix, limit, MAX_SCAN_BYTES)
                    .map_err(w)?
                    .into_iter()
                    .map(|(key, v)| WireJobEntry {
                        key,
                        value: v.value,
                        version: v.version,
                    })
                    .collect(),
            )
        }
        other => {
            return Err(WireError::Invalid {
                message: format!("request {other:?} is not a job store request"),
            })
        }
    })
}
