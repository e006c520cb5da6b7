//! What a failed check returns: a [`Finding`] when the states differ, or why the check
//! could not finish.

use std::fmt;

use sluice_core::{BoxError, MessageId};

use crate::DeliveryRecord;

/// Why [`Checker::check`](crate::Checker::check) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The chaos run's state differed from the clean run's: the handler is not idempotent,
    /// or not crash-safe.
    #[error(transparent)]
    Mismatch(Box<Finding>),
    /// A call to the subject outside a delivery failed.
    #[error("the subject's `{operation}` failed: {source}")]
    Subject {
        /// `"reset"` or `"state"`.
        operation: &'static str,
        /// The subject's error.
        #[source]
        source: BoxError,
    },
    /// One message kept failing (returning an error that was not a crash, or panicking)
    /// more than [`Checker::max_failures`](crate::Checker::max_failures) times.
    #[error(
        "message `{message}` failed {failures} times, more than `max_failures` allows \
         (seed {seed}); last error: {source}"
    )]
    Handler {
        /// The message.
        message: MessageId,
        /// How many times it failed.
        failures: usize,
        /// The seed, to replay the check.
        seed: u64,
        /// The last error.
        #[source]
        source: BoxError,
    },
    /// `reset` did not empty the state: it read differently after two resets.
    #[error(
        "`reset` does not empty the state: it read {first} after one reset and {second} \
         after another"
    )]
    UncleanReset {
        /// The state after the chaos run's reset, formatted with `Debug`.
        first: String,
        /// The state after the clean run's reset, formatted with `Debug`.
        second: String,
    },
    /// `SLUICE_CHECK_SEED` is set but is not a `u64`.
    #[error("SLUICE_CHECK_SEED must be an unsigned 64-bit integer, got `{0}`")]
    InvalidSeed(String),
}

/// The first delivery of the chaos run after which the state differed from a clean run
/// that handled the same messages once each, in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finding {
    /// What went wrong.
    pub kind: FindingKind,
    /// The message delivered.
    pub message: MessageId,
    /// The delivery's position in the chaos run, from 1.
    pub delivery: usize,
    /// How many deliveries the chaos run made.
    pub deliveries: usize,
    /// The clean run's state at that point, formatted with `Debug`.
    pub expected: String,
    /// The chaos run's state after the delivery, formatted with `Debug`.
    pub actual: String,
    /// The seed, to replay the check.
    pub seed: u64,
    /// The deliveries of this message so far, this one last.
    pub history: Vec<DeliveryRecord>,
}

/// What a [`Finding`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FindingKind {
    /// A duplicate delivery (the message had already been handled) changed the state again.
    DoubleEffect,
    /// A delivery crashed at a fault point and its writes stayed: its transaction did not
    /// roll back.
    CrashLeftPartialEffect {
        /// The fault point that crashed.
        point: String,
    },
    /// The handler returned an error (or panicked) and its writes stayed; the retry will
    /// apply them again.
    FailureLeftPartialEffect {
        /// The error, as displayed.
        error: String,
    },
    /// The message's first successful delivery left the state unchanged: its effect was
    /// lost (typically, an earlier crashed delivery recorded it as handled).
    LostEffect,
    /// The message's first successful delivery had an effect other than in the clean run.
    WrongEffect,
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DoubleEffect => {
                f.write_str("double effect: a duplicate delivery changed the state again")
            }
            Self::CrashLeftPartialEffect { point } => write!(
                f,
                "a crash at fault point `{point}` left a partial effect: the transaction did \
                 not roll back (fault points belong inside it, before the commit)"
            ),
            Self::FailureLeftPartialEffect { error } => write!(
                f,
                "the handler failed ({error}) but its writes stayed: they were not rolled \
                 back, and the retry applies them again"
            ),
            Self::LostEffect => f.write_str(
                "lost effect: its first successful delivery left the state unchanged (did a \
                 crashed delivery record it as handled?)",
            ),
            Self::WrongEffect => f.write_str(
                "wrong effect: its first successful delivery changed the state differently \
                 than in a clean run",
            ),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "idempotency check failed on message `{}`", self.message)?;
        writeln!(f, "  {}", self.kind)?;
        writeln!(
            f,
            "  at delivery {} of {}, seed {} (SLUICE_CHECK_SEED={} replays it)",
            self.delivery, self.deliveries, self.seed, self.seed
        )?;
        f.write_str("  deliveries of this message: ")?;
        for (i, record) in self.history.iter().enumerate() {
            let separator = if i == 0 { "" } else { ", " };
            write!(f, "{separator}{record}")?;
        }
        writeln!(f)?;
        writeln!(f, "  expected: {}", indent(&self.expected))?;
        write!(f, "  actual:   {}", indent(&self.actual))
    }
}

impl std::error::Error for Finding {}

/// Formats a state: on one line when it is short, pretty-printed otherwise.
pub(crate) fn show<T: fmt::Debug>(state: &T) -> String {
    let line = format!("{state:?}");
    if line.len() <= 100 {
        line
    } else {
        format!("{state:#?}")
    }
}

/// Indents continuation lines of a pretty-printed state under its label.
fn indent(text: &str) -> String {
    text.replace('\n', "\n  ")
}
