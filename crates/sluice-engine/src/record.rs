//! The message record (record type 1), stored in topic logs and dead-letter logs
//! (`docs/engine-format.md`, "Topic log record").
//!
//! Invariants: the body starts with [`MESSAGE_RECORD`], then the 8-byte offset, so a log can
//! read or stamp the offset at bytes `1..9` without decoding the rest
//! ([`peek_offset`], [`stamp_offset`]); [`MessageRecord::encode`] refuses what the field
//! encodings cannot hold instead of writing a body that decodes differently; decoding never
//! panics on any input.

use bytes::Bytes;

use crate::codec::{CodecError, Decoder, Encoder};
use crate::error::{Error, Result};
use crate::segment::MAX_BODY_LEN;

/// Record type byte of a message record.
pub const MESSAGE_RECORD: u8 = 1;

/// The `type` of a placeholder record ([`MessageRecord::lost`]).
pub const LOST_TYPE: &str = "sluice.lost";
/// The id prefix of a placeholder record.
pub const LOST_ID_PREFIX: &str = "sluice-lost-";
/// The reserved header of a placeholder record: why the record was lost.
pub const LOST_HEADER: &str = "sluice-lost";

/// Longest `str` field (its `u16` length; `0xFFFF` marks an absent `opt str`).
const MAX_STR_LEN: usize = u16::MAX as usize - 1;

/// A message as stored in a topic log or DLQ.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageRecord {
    /// Position in its log, dense from 0 (stamped by the log on append).
    pub offset: u64,
    /// When it was published, ms since the Unix epoch (0 = unknown).
    pub published_at_ms: u64,
    /// When it becomes deliverable, ms since the Unix epoch (0 = at once).
    pub deliver_at_ms: u64,
    /// The message id.
    pub id: String,
    /// The event type.
    pub message_type: Option<String>,
    /// The routing key.
    pub routing_key: Option<String>,
    /// The ordering key.
    pub ordering_key: Option<String>,
    /// The payload's content type.
    pub content_type: Option<String>,
    /// Headers, in order (names are `str`, values are stored as `bytes`).
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub payload: Bytes,
}

/// The fields of a message record needed to schedule it, borrowed from the body: no copy of
/// the payload or headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageMeta<'a> {
    /// Position in its log.
    pub offset: u64,
    /// When it was published (ms, 0 = unknown).
    pub published_at_ms: u64,
    /// When it becomes deliverable (ms, 0 = at once).
    pub deliver_at_ms: u64,
    /// The message id.
    pub id: &'a str,
    /// The routing key.
    pub routing_key: Option<&'a str>,
    /// The ordering key.
    pub ordering_key: Option<&'a str>,
    /// A placeholder for a record that was lost ([`MessageRecord::lost`]): never delivered.
    pub lost: bool,
}

fn check_str(what: &'static str, s: &str) -> Result<()> {
    if s.len() > MAX_STR_LEN {
        return Err(Error::Invalid {
            what,
            reason: format!("{} bytes; at most {MAX_STR_LEN} can be stored", s.len()),
        });
    }
    Ok(())
}

impl MessageRecord {
    /// A placeholder that takes the offset of a record that was lost (damage quarantined by
    /// a salvage, or a log tail an OS crash took while a subscription's journal kept
    /// its acks), so offsets stay dense and are never reused. Dispatch never delivers it
    /// (it counts as not selected); `reason` says what happened, for an operator reading the
    /// log.
    pub fn lost(offset: u64, now_ms: u64, reason: &str) -> Self {
        let mut reason = reason.to_owned();
        if reason.len() > 1024 {
            let mut cut = 1024;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Self {
            offset,
            published_at_ms: now_ms,
            id: format!("{LOST_ID_PREFIX}{offset}"),
            message_type: Some(LOST_TYPE.to_owned()),
            headers: vec![(LOST_HEADER.to_owned(), reason)],
            ..Self::default()
        }
    }

    /// Whether this is a placeholder made by [`MessageRecord::lost`].
    pub fn is_lost(&self) -> bool {
        self.message_type.as_deref() == Some(LOST_TYPE) && self.id.starts_with(LOST_ID_PREFIX)
    }

    /// Bytes [`MessageRecord::encode`] produces.
    pub fn encoded_len(&self) -> usize {
        let opt = |s: &Option<String>| 2 + s.as_ref().map_or(0, String::len);
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| 6 + n.len() + v.len())
            .sum();
        1 + 8
            + 8
            + 8
            + 2
            + self.id.len()
            + opt(&self.message_type)
            + opt(&self.routing_key)
            + opt(&self.ordering_key)
            + opt(&self.content_type)
            + 2
            + headers
            + 4
            + self.payload.len()
    }

    /// The record body: type byte 1, then the fields in the order of the format table.
    ///
    /// Fails with [`Error::Invalid`] if a string is longer than 65 534 bytes or there are
    /// more than 65 535 headers, and with [`Error::RecordSize`] if the body would exceed a
    /// frame's 16 MiB: such a record could not be stored faithfully.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let len = self.encoded_len();
        if len > MAX_BODY_LEN {
            return Err(Error::RecordSize {
                len,
                max: MAX_BODY_LEN,
            });
        }
        check_str("message id", &self.id)?;
        for (what, s) in [
            ("message type", &self.message_type),
            ("routing key", &self.routing_key),
            ("ordering key", &self.ordering_key),
            ("content type", &self.content_type),
        ] {
            check_str(what, s.as_deref().unwrap_or(""))?;
        }
        let count = u16::try_from(self.headers.len()).map_err(|_| Error::Invalid {
            what: "headers",
            reason: format!("{} headers; at most 65 535", self.headers.len()),
        })?;
        let mut e = Encoder::with_capacity(len);
        e.u8(MESSAGE_RECORD)
            .u64(self.offset)
            .u64(self.published_at_ms)
            .u64(self.deliver_at_ms)
            .str(&self.id)
            .opt_str(self.message_type.as_deref())
            .opt_str(self.routing_key.as_deref())
            .opt_str(self.ordering_key.as_deref())
            .opt_str(self.content_type.as_deref())
            .u16(count);
        for (name, value) in &self.headers {
            check_str("header name", name)?;
            e.str(name).bytes(value.as_bytes());
        }
        e.bytes(&self.payload);
        Ok(e.finish())
    }

    /// Decodes a body, copying the payload.
    pub fn decode(body: &[u8]) -> Result<Self> {
        Self::decode_with(body, Bytes::copy_from_slice)
    }

    /// Decodes a body held in [`Bytes`]; the payload shares its allocation (no copy).
    pub fn decode_shared(body: &Bytes) -> Result<Self> {
        Self::decode_with(body, |payload| body.slice_ref(payload))
    }

    fn decode_with(body: &[u8], payload: impl FnOnce(&[u8]) -> Bytes) -> Result<Self> {
        let mut d = Decoder::new(body);
        let (offset, published_at_ms, deliver_at_ms, id) = decode_head(&mut d)?;
        let owned = |s: Option<&str>| s.map(str::to_owned);
        let message_type = owned(d.opt_str()?);
        let routing_key = owned(d.opt_str()?);
        let ordering_key = owned(d.opt_str()?);
        let content_type = owned(d.opt_str()?);
        let count = d.u16()? as usize;
        let mut headers = Vec::with_capacity(count.min(d.remaining() / 6));
        for _ in 0..count {
            let name = d.str()?.to_owned();
            let value = std::str::from_utf8(d.bytes()?)
                .map_err(|_| CodecError("header value is not UTF-8"))?;
            headers.push((name, value.to_owned()));
        }
        let payload = payload(d.bytes()?);
        d.finish()?;
        Ok(Self {
            offset,
            published_at_ms,
            deliver_at_ms,
            id: id.to_owned(),
            message_type,
            routing_key,
            ordering_key,
            content_type,
            headers,
            payload,
        })
    }
}

fn decode_head<'a>(d: &mut Decoder<'a>) -> Result<(u64, u64, u64, &'a str), CodecError> {
    if d.u8()? != MESSAGE_RECORD {
        return Err(CodecError("not a message record"));
    }
    Ok((d.u64()?, d.u64()?, d.u64()?, d.str()?))
}

/// Decodes what scheduling needs (offset, times, id, routing and ordering keys) without
/// touching the headers or payload.
pub fn decode_meta(body: &[u8]) -> Result<MessageMeta<'_>> {
    let mut d = Decoder::new(body);
    let (offset, published_at_ms, deliver_at_ms, id) = decode_head(&mut d)?;
    let message_type = d.opt_str()?;
    let routing_key = d.opt_str()?;
    let ordering_key = d.opt_str()?;
    Ok(MessageMeta {
        offset,
        published_at_ms,
        deliver_at_ms,
        id,
        routing_key,
        ordering_key,
        lost: message_type == Some(LOST_TYPE) && id.starts_with(LOST_ID_PREFIX),
    })
}

/// The offset stored in a message record body, if `body` is one.
pub fn peek_offset(body: &[u8]) -> Option<u64> {
    match body {
        [MESSAGE_RECORD, offset @ ..] if offset.len() >= 8 => {
            Some(crate::segment::le_u64(&offset[..8]))
        }
        _ => None,
    }
}

/// Writes `offset` into a message record body (bytes `1..9`); returns whether `body` is a
/// message record.
pub fn stamp_offset(body: &mut [u8], offset: u64) -> bool {
    match body {
        [MESSAGE_RECORD, rest @ ..] if rest.len() >= 8 => {
            rest[..8].copy_from_slice(&offset.to_le_bytes());
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> MessageRecord {
        MessageRecord {
            offset: 42,
            published_at_ms: 1_700_000_000_000,
            deliver_at_ms: 0,
            id: "order-42-placed".into(),
            message_type: Some("order.placed".into()),
            routing_key: None,
            ordering_key: Some("customer-7".into()),
            content_type: Some("application/json".into()),
            headers: vec![("traceparent".into(), "00-abc".into())],
            payload: Bytes::from_static(b"{\"total\":12}"),
        }
    }

    #[test]
    fn a_record_encodes_with_type_byte_1_and_the_offset_right_after() {
        let body = sample().encode().unwrap();
        assert_eq!(body[0], MESSAGE_RECORD, "type byte");
        assert_eq!(peek_offset(&body), Some(42), "offset at bytes 1..9");
        assert_eq!(body.len(), sample().encoded_len(), "encoded_len is exact");
    }

    #[test]
    fn stamping_an_offset_changes_only_the_offset() {
        let mut body = sample().encode().unwrap();
        assert!(stamp_offset(&mut body, 7), "a message record");
        let decoded = MessageRecord::decode(&body).unwrap();
        assert_eq!(
            decoded,
            MessageRecord {
                offset: 7,
                ..sample()
            }
        );
        assert!(!stamp_offset(&mut [16, 0, 0], 1), "not a message record");
    }

    #[test]
    fn decode_meta_reads_the_scheduling_fields_without_the_payload() {
        let body = sample().encode().unwrap();
        let meta = decode_meta(&body).unwrap();
        assert_eq!(meta.offset, 42);
        assert_eq!(meta.id, "order-42-placed");
        assert_eq!(meta.ordering_key, Some("customer-7"));
        assert_eq!(meta.routing_key, None);
        assert_eq!(meta.published_at_ms, 1_700_000_000_000);
    }

    #[test]
    fn decode_shared_shares_the_payload_allocation() {
        let body = Bytes::from(sample().encode().unwrap());
        let record = MessageRecord::decode_shared(&body).unwrap();
        let within = body.as_ptr_range();
        assert!(
            within.contains(&record.payload.as_ptr()),
            "the payload must point into the body"
        );
    }

    #[test]
    fn oversized_fields_are_refused_rather_than_stored_wrong() {
        let long = "k".repeat(70_000);
        let record = MessageRecord {
            ordering_key: Some(long),
            ..sample()
        };
        assert!(
            matches!(
                record.encode(),
                Err(Error::Invalid {
                    what: "ordering key",
                    ..
                })
            ),
            "a 70 000-byte key does not fit a u16 length"
        );
        let big = MessageRecord {
            payload: Bytes::from(vec![0; MAX_BODY_LEN]),
            ..sample()
        };
        assert!(matches!(big.encode(), Err(Error::RecordSize { .. })));
    }

    #[test]
    fn truncated_or_trailing_bytes_do_not_decode() {
        let body = sample().encode().unwrap();
        for cut in 0..body.len() {
            assert!(
                MessageRecord::decode(&body[..cut]).is_err(),
                "a body cut at {cut} must not decode"
            );
        }
        let mut longer = body.clone();
        longer.push(0);
        assert!(MessageRecord::decode(&longer).is_err(), "trailing byte");
    }

    fn opt_string() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(".{0,20}")
    }

    prop_compose! {
        fn record()(
            offset in any::<u64>(),
            published_at_ms in any::<u64>(),
            deliver_at_ms in any::<u64>(),
            id in ".{1,40}",
            message_type in opt_string(),
            routing_key in opt_string(),
            ordering_key in opt_string(),
            content_type in opt_string(),
            headers in proptest::collection::vec((".{0,10}", ".{0,30}"), 0..5),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) -> MessageRecord {
            MessageRecord {
                offset, published_at_ms, deliver_at_ms, id, message_type, routing_key,
                ordering_key, content_type, headers, payload: Bytes::from(payload),
            }
        }
    }

    proptest! {
        #[test]
        fn every_record_round_trips(record in record()) {
            let body = record.encode().unwrap();
            prop_assert_eq!(MessageRecord::decode(&body).unwrap(), record.clone());
            let meta = decode_meta(&body).unwrap();
            prop_assert_eq!(meta.offset, record.offset);
            prop_assert_eq!(meta.deliver_at_ms, record.deliver_at_ms);
            prop_assert_eq!(meta.ordering_key, record.ordering_key.as_deref());
        }

        #[test]
        fn decoding_arbitrary_bodies_never_panics(body in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = MessageRecord::decode(&body);
            let _ = decode_meta(&body);
        }
    }
}
