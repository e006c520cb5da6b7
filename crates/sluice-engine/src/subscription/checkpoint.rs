//! The checkpoint body (type 32): the whole durable state and the journal position it
//! includes (`docs/engine-format.md`, "Checkpoint").
//!
//! Invariants: the encoding is canonical (maps and ranges in order), so two states with the
//! same durable part have byte-identical checkpoints; [`decode`] checks every invariant of
//! the durable state and never panics, nor allocates more than the body's size warrants.

use std::collections::{BTreeMap, BTreeSet};

use crate::codec::{Decoder, Encoder};

use super::durable::{Delivery, Durable};
use super::journal::{decode_ref, encode_ref};
use super::ranges::Ranges;
use super::{JournalPosition, StateError};

/// Record type of a checkpoint body.
pub(crate) const CHECKPOINT: u8 = 32;

/// Encodes `durable` and `position`.
pub(crate) fn encode(durable: &Durable, position: JournalPosition) -> Vec<u8> {
    let mut e = Encoder::with_capacity(
        64 + 16 * durable.settled.range_count()
            + 38 * durable.delivered.len()
            + 16 * durable.dlq_removed.range_count()
            + 8 * durable.redriven.len(),
    );
    e.u8(CHECKPOINT)
        .u64(position.segment)
        .u64(position.position);
    encode_ranges(&mut e, &durable.settled);
    e.u64(durable.delivered.len() as u64);
    for (&message, delivery) in &durable.delivered {
        encode_ref(&mut e, message);
        e.u32(delivery.attempt)
            .u8(u8::from(delivery.released))
            .u64(delivery.retry_due_ms)
            .u64(delivery.first_failure_ms);
    }
    e.u64(durable.dlq_end);
    encode_ranges(&mut e, &durable.dlq_removed);
    e.u64(durable.redriven.len() as u64);
    for &offset in &durable.redriven {
        e.u64(offset);
    }
    e.finish()
}

/// Decodes a body written by [`encode`], checking the state's invariants.
pub(crate) fn decode(body: &[u8]) -> Result<(Durable, JournalPosition), StateError> {
    let mut d = Decoder::new(body);
    if d.u8()? != CHECKPOINT {
        return Err(StateError::Corrupt("not a checkpoint record (type 32)"));
    }
    let position = JournalPosition {
        segment: d.u64()?,
        position: d.u64()?,
    };
    let settled = decode_ranges(&mut d)?;
    let count = d.u64()?;
    let mut delivered = BTreeMap::new();
    let mut previous = None;
    for _ in 0..count {
        let message = decode_ref(&mut d)?;
        let attempt = d.u32()?;
        let released = match d.u8()? {
            0 => false,
            1 => true,
            _ => return Err(StateError::Corrupt("released flag is neither 0 nor 1")),
        };
        let delivery = Delivery {
            attempt,
            released,
            retry_due_ms: d.u64()?,
            first_failure_ms: d.u64()?,
        };
        if attempt == 0 {
            return Err(StateError::Corrupt("a delivered message with attempt 0"));
        }
        if previous.is_some_and(|previous| previous >= message) {
            return Err(StateError::Corrupt("delivered messages out of order"));
        }
        previous = Some(message);
        delivered.insert(message, delivery);
    }
    let dlq_end = d.u64()?;
    let dlq_removed = decode_ranges(&mut d)?;
    let count = d.u64()?;
    let mut redriven = BTreeSet::new();
    for _ in 0..count {
        let offset = d.u64()?;
        if redriven.last().is_some_and(|&last| last >= offset) {
            return Err(StateError::Corrupt("redriven offsets out of order"));
        }
        redriven.insert(offset);
    }
    d.finish()?;

    let durable = Durable {
        settled,
        delivered,
        dlq_removed,
        dlq_end,
        redriven,
    };
    check(&durable)?;
    Ok((durable, position))
}

/// The invariants a decoded state must keep beyond its own encoding.
fn check(durable: &Durable) -> Result<(), StateError> {
    if durable
        .delivered
        .keys()
        .any(|&message| durable.is_settled(message))
    {
        return Err(StateError::Corrupt("a delivered message is also settled"));
    }
    let removed_end = durable
        .dlq_removed
        .ranges()
        .last()
        .map_or(durable.dlq_removed.low(), |(_, end)| end);
    if removed_end > durable.dlq_end {
        return Err(StateError::Corrupt(
            "DLQ offsets removed beyond the DLQ's end",
        ));
    }
    if durable
        .redriven
        .last()
        .is_some_and(|&last| last >= durable.dlq_end)
    {
        return Err(StateError::Corrupt(
            "a redriven offset beyond the DLQ's end",
        ));
    }
    Ok(())
}

fn encode_ranges(e: &mut Encoder, ranges: &Ranges) {
    e.u64(ranges.low()).u64(ranges.range_count() as u64);
    for (start, end) in ranges.ranges() {
        e.u64(start).u64(end);
    }
}

fn decode_ranges(d: &mut Decoder<'_>) -> Result<Ranges, StateError> {
    let low = d.u64()?;
    let count = d.u64()?;
    // Each range takes 16 bytes: a count beyond what is left is corrupt (and must not make
    // us allocate for it).
    if count > (d.remaining() / 16) as u64 {
        return Err(StateError::Corrupt("range count beyond the body's size"));
    }
    let mut parts = Vec::with_capacity(count as usize);
    for _ in 0..count {
        parts.push((d.u64()?, d.u64()?));
    }
    Ranges::from_parts(low, parts).map_err(StateError::Corrupt)
}
