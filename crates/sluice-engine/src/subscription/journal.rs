//! Journal records: every change to a subscription's durable state, as record bodies of types
//! 16 to 23 (`docs/engine-format.md`, "Journal records").
//!
//! Invariant: [`JournalRecord::decode`] accepts exactly what [`JournalRecord::encode`]
//! produces and never panics on other input.

use crate::codec::{CodecError, Decoder, Encoder};

use super::Ref;

const DELIVERED: u8 = 16;
const ACKED: u8 = 17;
const RETRY: u8 = 18;
const RELEASED: u8 = 19;
const DEAD_LETTERED: u8 = 20;
const DLQ_REMOVED: u8 = 21;
const REDRIVEN: u8 = 22;
const SKIPPED: u8 = 23;

const SOURCE_TOPIC: u8 = 1;
const SOURCE_DLQ: u8 = 2;

/// Why a message left the DLQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemovalReason {
    /// Moved back to the subscription (encoded `1`).
    Redriven,
    /// Deleted (encoded `2`).
    Purged,
}

/// One change to a subscription's durable state.
///
/// Times are ms since the Unix epoch, `0` = none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JournalRecord {
    /// Type 16: the message was delivered with this attempt. Carries the time of its first
    /// failure (0 = none yet) so the DLQ envelope survives a restart.
    Delivered {
        /// The message.
        message: Ref,
        /// The attempt of this delivery (1-based).
        attempt: u32,
        /// When the message first failed, 0 if it has not.
        first_failure_ms: u64,
    },
    /// Type 17: the message is settled (acked; or a redriven message that no longer needs
    /// delivering).
    Acked {
        /// The message.
        message: Ref,
    },
    /// Type 18: the delivery failed; the next one (`attempt + 1`) is due at `due_ms`. The
    /// message keeps its ordering key meanwhile.
    Retry {
        /// The message.
        message: Ref,
        /// Not deliverable again before this time.
        due_ms: u64,
        /// When the message first failed (this retry, or an earlier failure).
        first_failure_ms: u64,
    },
    /// Type 19: the delivery was given back without penalty; the next one keeps its attempt.
    Released {
        /// The message.
        message: Ref,
    },
    /// Type 20: the message is settled, moved to the DLQ at `dlq_offset`.
    DeadLettered {
        /// The message.
        message: Ref,
        /// Its offset in the subscription's DLQ log.
        dlq_offset: u64,
    },
    /// Type 21: a DLQ message left the DLQ.
    DlqRemoved {
        /// Its offset in the DLQ log.
        dlq_offset: u64,
        /// Redriven or purged.
        reason: RemovalReason,
    },
    /// Type 22: a DLQ message is pending again as [`Ref::Dlq`], attempt 1. Follows a
    /// [`JournalRecord::DlqRemoved`] with reason [`RemovalReason::Redriven`].
    Redriven {
        /// Its offset in the DLQ log.
        dlq_offset: u64,
    },
    /// Type 23: topic offsets `[from, to)` settled without delivery: the filter does not
    /// select them (or they no longer exist). An optimisation of restart only: losing this
    /// record is harmless, the filter decides the same again.
    Skipped {
        /// First offset.
        from: u64,
        /// One past the last offset.
        to: u64,
    },
}

impl JournalRecord {
    /// The message the record is about, if it is about one.
    pub fn message(&self) -> Option<Ref> {
        match *self {
            JournalRecord::Delivered { message, .. }
            | JournalRecord::Acked { message }
            | JournalRecord::Retry { message, .. }
            | JournalRecord::Released { message }
            | JournalRecord::DeadLettered { message, .. } => Some(message),
            JournalRecord::Redriven { dlq_offset } => Some(Ref::Dlq(dlq_offset)),
            JournalRecord::DlqRemoved { .. } | JournalRecord::Skipped { .. } => None,
        }
    }

    /// The record body: type byte, then the fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(32);
        match *self {
            JournalRecord::Delivered {
                message,
                attempt,
                first_failure_ms,
            } => {
                e.u8(DELIVERED);
                encode_ref(&mut e, message);
                e.u32(attempt).u64(first_failure_ms);
            }
            JournalRecord::Acked { message } => {
                e.u8(ACKED);
                encode_ref(&mut e, message);
            }
            JournalRecord::Retry {
                message,
                due_ms,
                first_failure_ms,
            } => {
                e.u8(RETRY);
                encode_ref(&mut e, message);
                e.u64(due_ms).u64(first_failure_ms);
            }
            JournalRecord::Released { message } => {
                e.u8(RELEASED);
                encode_ref(&mut e, message);
            }
            JournalRecord::DeadLettered {
                message,
                dlq_offset,
            } => {
                e.u8(DEAD_LETTERED);
                encode_ref(&mut e, message);
                e.u64(dlq_offset);
            }
            JournalRecord::DlqRemoved { dlq_offset, reason } => {
                e.u8(DLQ_REMOVED).u64(dlq_offset).u8(match reason {
                    RemovalReason::Redriven => 1,
                    RemovalReason::Purged => 2,
                });
            }
            JournalRecord::Redriven { dlq_offset } => {
                e.u8(REDRIVEN).u64(dlq_offset);
            }
            JournalRecord::Skipped { from, to } => {
                e.u8(SKIPPED).u64(from).u64(to);
            }
        }
        e.finish()
    }

    /// Reads a record body written by [`encode`](Self::encode).
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut d = Decoder::new(body);
        let record = match d.u8()? {
            DELIVERED => {
                let message = decode_ref(&mut d)?;
                let attempt = d.u32()?;
                if attempt == 0 {
                    return Err(CodecError("attempt 0: attempts start at 1"));
                }
                JournalRecord::Delivered {
                    message,
                    attempt,
                    first_failure_ms: d.u64()?,
                }
            }
            ACKED => JournalRecord::Acked {
                message: decode_ref(&mut d)?,
            },
            RETRY => JournalRecord::Retry {
                message: decode_ref(&mut d)?,
                due_ms: d.u64()?,
                first_failure_ms: d.u64()?,
            },
            RELEASED => JournalRecord::Released {
                message: decode_ref(&mut d)?,
            },
            DEAD_LETTERED => JournalRecord::DeadLettered {
                message: decode_ref(&mut d)?,
                dlq_offset: d.u64()?,
            },
            DLQ_REMOVED => JournalRecord::DlqRemoved {
                dlq_offset: d.u64()?,
                reason: match d.u8()? {
                    1 => RemovalReason::Redriven,
                    2 => RemovalReason::Purged,
                    _ => return Err(CodecError("unknown DLQ removal reason")),
                },
            },
            REDRIVEN => JournalRecord::Redriven {
                dlq_offset: d.u64()?,
            },
            SKIPPED => {
                let (from, to) = (d.u64()?, d.u64()?);
                if from >= to {
                    return Err(CodecError("empty skipped range"));
                }
                JournalRecord::Skipped { from, to }
            }
            _ => return Err(CodecError("not a subscription journal record type")),
        };
        d.finish()?;
        Ok(record)
    }
}

/// A `ref`: `u8` source (1 topic, 2 DLQ), `u64` offset.
pub(super) fn encode_ref(e: &mut Encoder, message: Ref) {
    match message {
        Ref::Topic(offset) => e.u8(SOURCE_TOPIC).u64(offset),
        Ref::Dlq(offset) => e.u8(SOURCE_DLQ).u64(offset),
    };
}

/// Reads a `ref`.
pub(super) fn decode_ref(d: &mut Decoder<'_>) -> Result<Ref, CodecError> {
    match d.u8()? {
        SOURCE_TOPIC => Ok(Ref::Topic(d.u64()?)),
        SOURCE_DLQ => Ok(Ref::Dlq(d.u64()?)),
        _ => Err(CodecError("unknown ref source")),
    }
}
