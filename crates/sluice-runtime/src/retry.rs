//! Retry policy: turns a handler's result into the verb to apply (DESIGN §2). The
//! subscription owns `max_attempts`; the runtime owns the backoff.
//!
//! - `Ok` ⇒ ack.
//! - transient error and attempts left ⇒ `retry(retry_after or backoff(attempt))`.
//! - transient error on the last attempt ⇒ dead-letter (`max attempts exhausted`).
//! - permanent error ⇒ dead-letter at once.

use std::time::Duration;

use crate::handler::{ErrorKind, HandlerResult};

/// The verb the pipeline applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Disposition {
    Ack,
    Retry {
        after: Duration,
        error: String,
    },
    DeadLetter {
        reason: String,
        last_error: Option<String>,
    },
}

/// Chooses the verb for a handler result. `backoff` is called only when a retry is chosen.
pub(crate) fn decide(
    result: HandlerResult,
    attempt: u32,
    max_attempts: u32,
    backoff: impl FnOnce() -> Duration,
) -> Disposition {
    let error = match result {
        Ok(()) => return Disposition::Ack,
        Err(error) => error,
    };
    let text = error.to_string();
    match error.kind() {
        ErrorKind::Permanent => Disposition::DeadLetter {
            reason: "permanent error".into(),
            last_error: Some(text),
        },
        ErrorKind::Transient { .. } if attempt >= max_attempts => Disposition::DeadLetter {
            reason: format!("max attempts exhausted ({attempt} of {max_attempts})"),
            last_error: Some(text),
        },
        ErrorKind::Transient { retry_after } => Disposition::Retry {
            after: retry_after.unwrap_or_else(backoff),
            error: text,
        },
        // The pipeline parks these before asking; a retry that waits as long, if one comes.
        ErrorKind::RateLimited { retry_after } => Disposition::Retry {
            after: retry_after,
            error: text,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::HandlerError;

    #[test]
    fn transient_errors_retry_until_the_last_attempt_then_dead_letter() {
        let d = decide(Err(HandlerError::transient("down")), 1, 3, || {
            Duration::from_secs(2)
        });
        assert_eq!(
            d,
            Disposition::Retry {
                after: Duration::from_secs(2),
                error: "down".into()
            }
        );
        let d = decide(
            Err(HandlerError::transient("down")),
            3,
            3,
            || unreachable!(),
        );
        assert!(
            matches!(d, Disposition::DeadLetter { ref reason, .. } if reason.contains("3 of 3")),
            "{d:?}"
        );
    }

    #[test]
    fn permanent_errors_dead_letter_at_once_and_retry_after_overrides_backoff() {
        let d = decide(
            Err(HandlerError::permanent("bad card")),
            1,
            5,
            || unreachable!(),
        );
        assert_eq!(
            d,
            Disposition::DeadLetter {
                reason: "permanent error".into(),
                last_error: Some("bad card".into())
            }
        );
        let d = decide(
            Err(HandlerError::retry_after("429", Duration::from_secs(7))),
            1,
            5,
            || unreachable!(),
        );
        assert_eq!(
            d,
            Disposition::Retry {
                after: Duration::from_secs(7),
                error: "429".into()
            }
        );
        assert_eq!(decide(Ok(()), 5, 5, || unreachable!()), Disposition::Ack);
    }
}
