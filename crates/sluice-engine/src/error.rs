//! The engine's errors: one enum, [`Error`], for every module of the crate.
//!
//! Invariants: an error names the file (or directory) it is about whenever there is one, so an
//! operator can act on the message alone; [`Error::Poisoned`] and [`Error::InUse`] carry the
//! exact wording of `docs/engine-format.md`.

use std::fmt;
use std::path::PathBuf;

use crate::codec::CodecError;

/// Result type of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error of the storage engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path (`fdatasync DATA/topics/orders/….seg`).
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds bytes that cannot be what the engine wrote: a flipped bit at rest, a
    /// stray file, a truncated sealed segment. The engine refuses to skip data silently.
    #[error("{} is corrupt at byte {position}: {reason}", file.display())]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// Byte position in the file where the problem starts.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// An earlier write or sync failed, so what is on disk is unknown (after a failed
    /// `fsync` the kernel may have dropped the dirty pages); the engine refuses further
    /// writes. Reads keep working.
    #[error(
        "a write to the data directory failed ({cause}); the engine refuses further writes; \
         restart to recover"
    )]
    Poisoned {
        /// The first failure, with the file it was about.
        cause: String,
    },
    /// Another engine (in this or another process) has the data directory open.
    #[error(
        "data directory `{}` is in use by another process{}. To share one data directory \
         between processes, run `sluice serve --data {}` and connect with `sluice://HOST:PORT`.",
        dir.display(), Pid(*pid), dir.display()
    )]
    InUse {
        /// The data directory.
        dir: PathBuf,
        /// The pid written into `LOCK` by its holder, when it could be read.
        pid: Option<u32>,
    },
    /// A `FORMAT` file or a segment header names a format version this build cannot read.
    #[error("format {found} found; this build of Sluice reads format {expected}")]
    Format {
        /// The version found, as written.
        found: String,
        /// The version this build reads.
        expected: u32,
    },
    /// The directory is not empty but is not a Sluice data directory (no `FORMAT`, or a
    /// `FORMAT` of another program).
    #[error("`{}` is not a Sluice data directory: {reason}", dir.display())]
    NotDataDir {
        /// The directory.
        dir: PathBuf,
        /// Why not.
        reason: String,
    },
    /// A record body does not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A record body is empty or larger than a frame may carry.
    #[error("record body of {len} bytes; a record body must be 1 to {max} bytes")]
    RecordSize {
        /// The body's length.
        len: usize,
        /// The largest body this log accepts.
        max: usize,
    },
    /// A value handed to the engine cannot be stored as it is (a string field longer than
    /// its encoding allows, a name that is not a safe path component).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The committer was shut down before the operation could run.
    #[error("the engine is shutting down; the write was not performed")]
    Closed,
    /// No topic of that name.
    #[error("topic `{name}` does not exist")]
    TopicNotFound {
        /// The topic.
        name: String,
    },
    /// No subscription of that name.
    #[error("subscription `{name}` does not exist")]
    SubscriptionNotFound {
        /// The subscription.
        name: String,
    },
    /// The lease is not (or no longer) held: it ran out, or the delivery was settled.
    #[error("lease lost on {id}: it ran out or the delivery was already settled")]
    LeaseLost {
        /// What the lease was on.
        id: String,
    },
    /// Accepting the publish would take the topic's backlog (from the slowest subscription's
    /// low watermark to the end of the log) past its bound. Nothing of the publish was
    /// stored, so trying it again is safe (no dedup claim was made).
    #[error(
        "topic `{topic}` is full: its backlog of {backlog} {unit} plus this publish would exceed \
         the bound of {bound} {unit}; subscription `{slowest}` is the furthest behind{}",
        BlockHint(*block_timeout_ms)
    )]
    BacklogFull {
        /// The topic.
        topic: String,
        /// Its backlog now, in `unit`.
        backlog: u64,
        /// The bound that would be exceeded, in `unit`.
        bound: u64,
        /// Whether `backlog` and `bound` count messages or bytes.
        unit: BacklogUnit,
        /// The subscription furthest behind (lowest low watermark).
        slowest: String,
        /// `Some(timeout)` when the topic's overflow is `Block`: the publisher may wait up to
        /// this long for consumers to make room and publish again (the engine itself never
        /// blocks a thread). `None` when the overflow is `Reject`, or when the publish alone
        /// is larger than the bound, so that waiting cannot help.
        block_timeout_ms: Option<u64>,
    },
    /// A subscription's state refused the operation.
    #[error(transparent)]
    State(#[from] crate::subscription::StateError),
}

impl Error {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// No subscription of that name.
    pub fn subscription_not_found(name: &str) -> Self {
        Self::SubscriptionNotFound {
            name: name.to_owned(),
        }
    }

    /// No topic of that name.
    pub fn topic_not_found(name: &str) -> Self {
        Self::TopicNotFound {
            name: name.to_owned(),
        }
    }

    /// A corruption report.
    pub fn corrupt(file: impl Into<PathBuf>, position: u64, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            file: file.into(),
            position,
            reason: reason.into(),
        }
    }

    /// Whether trying the same operation again may succeed without operator action:
    /// interrupted or timed-out I/O, and a full backlog (consumers may catch up). A poisoned
    /// engine, corruption, a locked directory or a foreign format stay as they are until
    /// someone intervenes.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::BacklogFull { .. } => true,
            Self::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }
}

/// What a backlog bound counts (see [`Error::BacklogFull`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BacklogUnit {
    /// Messages.
    Messages,
    /// Bytes of log (frames: record bodies and their 8-byte frame headers).
    Bytes,
}

impl fmt::Display for BacklogUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Messages => "messages",
            Self::Bytes => "bytes",
        })
    }
}

/// Formats the end of a [`Error::BacklogFull`] message: how long a blocked publisher waits.
struct BlockHint(Option<u64>);

impl fmt::Display for BlockHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ms) => write!(f, " (the publisher may wait up to {ms} ms for room)"),
            None => Ok(()),
        }
    }
}

/// Formats ` (pid N)` when the pid is known.
struct Pid(Option<u32>);

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(pid) => write!(f, " (pid {pid})"),
            None => Ok(()),
        }
    }
}

/// Extension for `std::io::Result`: attach what was being done.
pub(crate) trait IoContext<T> {
    /// Wraps an I/O error into [`Error::Io`], computing the context only on failure.
    fn context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|source| Error::io(context(), source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_use_message_points_to_sluice_serve() {
        let e = Error::InUse {
            dir: "/var/lib/sluice".into(),
            pid: Some(42),
        };
        assert_eq!(
            e.to_string(),
            "data directory `/var/lib/sluice` is in use by another process (pid 42). To share \
             one data directory between processes, run `sluice serve --data /var/lib/sluice` \
             and connect with `sluice://HOST:PORT`.",
            "the message must match docs/engine-format.md"
        );
        let e = Error::InUse {
            dir: "d".into(),
            pid: None,
        };
        assert!(
            e.to_string()
                .starts_with("data directory `d` is in use by another process. "),
            "without a pid the parenthesis is left out: {e}"
        );
    }

    #[test]
    fn format_and_poisoned_messages_follow_the_doc() {
        let e = Error::Format {
            found: "2".into(),
            expected: 1,
        };
        assert_eq!(
            e.to_string(),
            "format 2 found; this build of Sluice reads format 1"
        );
        let e = Error::Poisoned {
            cause: "fdatasync d/x.seg: Input/output error".into(),
        };
        assert!(
            e.to_string()
                .ends_with("the engine refuses further writes; restart to recover"),
            "{e}"
        );
    }

    #[test]
    fn a_full_backlog_names_the_topic_the_bound_and_the_slowest_subscription() {
        let e = Error::BacklogFull {
            topic: "orders".into(),
            backlog: 998,
            bound: 1000,
            unit: BacklogUnit::Messages,
            slowest: "billing".into(),
            block_timeout_ms: Some(5000),
        };
        assert_eq!(
            e.to_string(),
            "topic `orders` is full: its backlog of 998 messages plus this publish would exceed \
             the bound of 1000 messages; subscription `billing` is the furthest behind (the \
             publisher may wait up to 5000 ms for room)"
        );
        assert!(e.is_retryable(), "consumers may make room");
        let e = Error::BacklogFull {
            topic: "orders".into(),
            backlog: 4096,
            bound: 4096,
            unit: BacklogUnit::Bytes,
            slowest: "billing".into(),
            block_timeout_ms: None,
        };
        assert!(
            e.to_string().ends_with(
                "the bound of 4096 bytes; subscription `billing` is the furthest behind"
            ),
            "a rejecting bound says nothing of waiting: {e}"
        );
    }

    #[test]
    fn only_transient_io_errors_and_a_full_backlog_are_retryable() {
        let interrupted = Error::io("read", std::io::ErrorKind::Interrupted.into());
        assert!(
            interrupted.is_retryable(),
            "an interrupted read may succeed"
        );
        let poisoned = Error::Poisoned { cause: "x".into() };
        assert!(!poisoned.is_retryable(), "poisoning lasts until restart");
    }
}
