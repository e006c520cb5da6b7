//! `LimitTake`: global rate limits' tokens handed out from the engine's limiter, in the
//! connection's namespace, so workers in every process connected to this server share one
//! bucket per limit. `SlotsTake`: global concurrency bounds' slots, from the same limiter.

use std::time::Duration;

use sluice_core::limit::{Rate, SlotsRequest};
use sluice_embedded::EmbeddedBackend;
use sluice_protocol::convert;
use sluice_protocol::message::WireError;
use sluice_protocol::Response;

/// The most tokens one take may ask for or give back (a worker asks for its free permits).
pub(crate) const MAX_TOKENS: u32 = 1_000_000;

/// The longest a holder's slots stay held without another call.
const MAX_SLOT_TTL_MS: u64 = 24 * 3600 * 1000;

/// The longest flag key and value.
const MAX_FLAG_KEY: usize = 512;
const MAX_FLAG_VALUE: usize = 4096;

/// Answers a `FlagSet`.
pub(crate) async fn set_flag(
    backend: &EmbeddedBackend,
    key: &str,
    value: Option<&str>,
    ttl_ms: Option<u64>,
) -> Result<Response, WireError> {
    if key.is_empty() || key.len() > MAX_FLAG_KEY || value.is_some_and(|v| v.len() > MAX_FLAG_VALUE)
    {
        return Err(WireError::Invalid {
            message: format!(
                "a flag's key is 1 to {MAX_FLAG_KEY} bytes and its value at most {MAX_FLAG_VALUE}"
            ),
        });
    }
    if ttl_ms.is_some_and(|ttl| ttl == 0 || ttl > MAX_SLOT_TTL_MS * 365) {
        return Err(WireError::Invalid {
            message: "a flag's ttl_ms is 1 ms to a year".into(),
        });
    }
    backend
        .limiter()
        .set_flag(key, value, ttl_ms.map(Duration::from_millis))
        .await
        .map_err(|e| convert::error_to_wire(&e))?;
    Ok(Response::Done)
}

/// Answers a `FlagList`.
pub(crate) async fn flags(backend: &EmbeddedBackend, prefix: &str) -> Result<Response, WireError> {
    if prefix.len() > MAX_FLAG_KEY {
        return Err(WireError::Invalid {
            message: format!("a flag prefix is at most {MAX_FLAG_KEY} bytes"),
        });
    }
    let found = backend
        .limiter()
        .flags(prefix)
        .await
        .map_err(|e| convert::error_to_wire(&e))?;
    Ok(Response::Flags(found))
}

/// Answers a `SlotsTake`.
pub(crate) async fn slots(
    backend: &EmbeddedBackend,
    name: &str,
    holder: &str,
    max: u32,
    hold: u32,
    want: u32,
    ttl_ms: u64,
) -> Result<Response, WireError> {
    if name.is_empty() || name.len() > 256 || holder.is_empty() || holder.len() > 256 {
        return Err(WireError::Invalid {
            message: format!(
                "a bound's name and holder are 1 to 256 bytes, not {} and {}",
                name.len(),
                holder.len()
            ),
        });
    }
    if max == 0 || want > MAX_TOKENS || hold > MAX_TOKENS || ttl_ms == 0 || ttl_ms > MAX_SLOT_TTL_MS
    {
        return Err(WireError::Invalid {
            message: format!(
                "max must be at least 1, want and hold at most {MAX_TOKENS}, ttl_ms 1 to \
                 {MAX_SLOT_TTL_MS} (got {max}, {want}, {hold}, {ttl_ms})"
            ),
        });
    }
    let request = SlotsRequest {
        max,
        hold,
        want,
        ttl: Duration::from_millis(ttl_ms),
    };
    let taken = backend
        .limiter()
        .slots(name, holder, request)
        .await
        .map_err(|e| convert::error_to_wire(&e))?;
    Ok(Response::Slots(taken))
}

/// Answers a `LimitTake`.
pub(crate) async fn take(
    backend: &EmbeddedBackend,
    name: &str,
    per_second: f64,
    burst: u32,
    give_back: u32,
    want: u32,
) -> Result<Response, WireError> {
    if name.is_empty() || name.len() > 256 {
        return Err(WireError::Invalid {
            message: format!("a limit's name is 1 to 256 bytes, not {}", name.len()),
        });
    }
    if !per_second.is_finite() || per_second <= 0.0 {
        return Err(WireError::Invalid {
            message: format!("a limit's rate must be a finite number above zero, not {per_second}"),
        });
    }
    if burst == 0 || want > MAX_TOKENS || give_back > MAX_TOKENS {
        return Err(WireError::Invalid {
            message: format!(
                "burst must be at least 1 and want and give_back at most {MAX_TOKENS} (got {burst}, {want}, {give_back})"
            ),
        });
    }
    let rate = Rate { per_second, burst };
    let grant = backend
        .limiter()
        .take(name, rate, give_back, want)
        .await
        .map_err(|e| convert::error_to_wire(&e))?;
    Ok(Response::Granted {
        granted: grant.granted,
        retry_after_ms: u64::try_from(grant.retry_after.as_millis())
            .unwrap_or(u64::MAX)
            .max(u64::from(grant.granted == 0 && want > 0)),
    })
}
