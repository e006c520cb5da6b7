//! The dead-letter envelope: reserved `sluice-` headers a message gains when it is
//! dead-lettered, and how to read them back.
//!
//! Messages dead-lettered by a broker's own limit (SQS `maxReceiveCount`, RabbitMQ
//! `x-delivery-limit`) have no envelope; [`Envelope::read`] returns `None` for them and the
//! DLQ tools still list, redrive and purge them.

use std::time::SystemTime;

use crate::message::Message;

/// Header: the topic the message was published to.
pub const TOPIC: &str = "sluice-dlq-topic";
/// Header: the subscription that dead-lettered it.
pub const SUBSCRIPTION: &str = "sluice-dlq-subscription";
/// Header: the attempts made before dead-lettering.
pub const ATTEMPTS: &str = "sluice-dlq-attempts";
/// Header: why it was dead-lettered.
pub const REASON: &str = "sluice-dlq-reason";
/// Header: the last error a handler returned, if any.
pub const LAST_ERROR: &str = "sluice-dlq-last-error";
/// Header: when the first attempt failed (RFC 3339).
pub const FIRST_FAILURE_AT: &str = "sluice-dlq-first-failure-at";
/// Header: when it was dead-lettered (RFC 3339).
pub const DEAD_LETTERED_AT: &str = "sluice-dlq-dead-lettered-at";
/// Prefix of every envelope header.
pub const PREFIX: &str = "sluice-dlq-";
/// Header kept across retries: when the first attempt failed (RFC 3339).
pub const FIRST_FAILURE_HEADER: &str = "sluice-first-failure-at";
/// Longest reason or error kept in the envelope, in bytes (longer ones are cut).
pub const MAX_TEXT: usize = 2048;

/// Why a message is being dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterReason {
    /// Short reason (`max attempts exceeded`, `undecodable payload`, `permanent error`).
    pub reason: String,
    /// The last error a handler returned, if any.
    pub last_error: Option<String>,
}

impl DeadLetterReason {
    /// A reason without a handler error.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            last_error: None,
        }
    }

    /// The same reason with the handler's last error.
    pub fn with_last_error(mut self, error: impl Into<String>) -> Self {
        self.last_error = Some(error.into());
        self
    }
}

impl<S: Into<String>> From<S> for DeadLetterReason {
    fn from(reason: S) -> Self {
        Self::new(reason)
    }
}

/// The envelope of a dead-lettered message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope {
    /// Topic it was published to.
    pub topic: String,
    /// Subscription that dead-lettered it.
    pub subscription: String,
    /// Attempts made.
    pub attempts: u32,
    /// Why.
    pub reason: String,
    /// The last handler error.
    pub last_error: Option<String>,
    /// When the first attempt failed, if known.
    pub first_failure_at: Option<SystemTime>,
    /// When it was dead-lettered.
    pub dead_lettered_at: SystemTime,
}

fn cut(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn parse_time(value: Option<&str>) -> Option<SystemTime> {
    value.and_then(|v| humantime::parse_rfc3339(v).ok())
}

/// Formats a time as RFC 3339 with milliseconds, as used in every `sluice-` time header;
/// a time past year 9999 as the last instant RFC 3339 can write.
pub fn format_time(at: SystemTime) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    match write!(out, "{}", humantime::format_rfc3339_millis(at)) {
        Ok(()) => out,
        // Past year 9999, which RFC 3339 cannot write: its last instant.
        Err(_) => "9999-12-31T23:59:59.999Z".to_owned(),
    }
}

impl Envelope {
    /// An envelope for a message that `subscription` (of `topic`) dead-letters after
    /// `attempts` deliveries, for `reason`. Backends build one in `dead_letter` (the struct
    /// is `#[non_exhaustive]`, so this is the only way outside this crate).
    pub fn new(
        topic: impl Into<String>,
        subscription: impl Into<String>,
        attempts: u32,
        reason: DeadLetterReason,
        first_failure_at: Option<SystemTime>,
        dead_lettered_at: SystemTime,
    ) -> Self {
        Self {
            topic: topic.into(),
            subscription: subscription.into(),
            attempts,
            reason: reason.reason,
            last_error: reason.last_error,
            first_failure_at,
            dead_lettered_at,
        }
    }

    /// Writes the envelope into the message's reserved headers.
    pub fn write(&self, message: &mut Message) {
        message.set_reserved_header(TOPIC, self.topic.clone());
        message.set_reserved_header(SUBSCRIPTION, self.subscription.clone());
        message.set_reserved_header(ATTEMPTS, self.attempts.to_string());
        message.set_reserved_header(REASON, cut(&self.reason));
        if let Some(err) = &self.last_error {
            message.set_reserved_header(LAST_ERROR, cut(err));
        }
        if let Some(at) = self.first_failure_at {
            message.set_reserved_header(FIRST_FAILURE_AT, format_time(at));
        }
        message.set_reserved_header(DEAD_LETTERED_AT, format_time(self.dead_lettered_at));
    }

    /// Reads the envelope back; `None` if the message has none.
    pub fn read(message: &Message) -> Option<Self> {
        let subscription = message.header(SUBSCRIPTION)?.to_owned();
        Some(Self {
            topic: message.header(TOPIC).unwrap_or_default().to_owned(),
            subscription,
            attempts: message
                .header(ATTEMPTS)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            reason: message.header(REASON).unwrap_or_default().to_owned(),
            last_error: message.header(LAST_ERROR).map(str::to_owned),
            first_failure_at: parse_time(message.header(FIRST_FAILURE_AT)),
            dead_lettered_at: parse_time(message.header(DEAD_LETTERED_AT))
                .unwrap_or(SystemTime::UNIX_EPOCH),
        })
    }

    /// Removes the envelope (on redrive).
    pub fn strip(message: &mut Message) {
        message.remove_headers_with_prefix(PREFIX);
        message.remove_headers_with_prefix(FIRST_FAILURE_HEADER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn envelope_round_trips_through_headers_and_is_stripped_on_redrive() {
        let mut m = Message::builder("x").build().unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let env = Envelope {
            topic: "orders".into(),
            subscription: "billing".into(),
            attempts: 5,
            reason: "max attempts exceeded".into(),
            last_error: Some("card declined".into()),
            first_failure_at: Some(at),
            dead_lettered_at: at,
        };
        env.write(&mut m);
        assert_eq!(Envelope::read(&m), Some(env));
        Envelope::strip(&mut m);
        assert_eq!(Envelope::read(&m), None);
        assert!(m.headers().is_empty());
    }

    #[test]
    fn long_reasons_are_cut() {
        let mut m = Message::builder("x").build().unwrap();
        let env = Envelope {
            topic: "t".into(),
            subscription: "s".into(),
            attempts: 1,
            reason: "é".repeat(MAX_TEXT),
            last_error: None,
            first_failure_at: None,
            dead_lettered_at: SystemTime::now(),
        };
        env.write(&mut m);
        assert!(m.header(REASON).unwrap().len() <= MAX_TEXT + 3);
    }
}
