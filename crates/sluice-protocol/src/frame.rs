//! Connection preface and framing.
//!
//! A connection opens with the client's 8-byte preface, `SLUICE\0` and the protocol version
//! (one byte); the server answers with its own preface, then both sides exchange frames:
//!
//! ```text
//! frame := length: u32 little-endian | body: [u8; length]     (body = postcard(Frame))
//! ```
//!
//! Invariants the decoder keeps, whatever the bytes: a length above the limit is an error
//! before anything is buffered; a body that does not decode is an error, never a panic; a
//! partial frame waits for more bytes; the buffer grows with the bytes that arrive, never
//! with the length a peer announces (at most [`RESERVE_STEP`] ahead of them), so a peer that
//! announces the limit and sends a trickle costs what it sent, not the limit.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::message::Frame;

/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Magic bytes that open every connection, followed by [`VERSION`].
pub const MAGIC: &[u8; 7] = b"SLUICE\0";
/// The full preface of this version.
pub const PREFACE: [u8; 8] = *b"SLUICE\0\x01";
/// Largest frame accepted by default (16 MiB: four maximum-size messages).
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;
/// Most bytes the decoder reserves at once for the rest of a partial frame. Reserving the
/// whole announced length would let a peer make the buffer as large as it claims; reserving
/// this much at a time still spares a large frame most reallocations (the buffer doubles).
pub const RESERVE_STEP: usize = 64 * 1024;

/// Why bytes from the peer are not a valid frame or preface. Fatal for the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The connection did not open with `SLUICE\0`.
    #[error(
        "not a Sluice connection: the preface is {0:02x?}, expected `SLUICE\\0` and a version byte"
    )]
    BadMagic([u8; 7]),
    /// The peer speaks a version this build does not.
    #[error("unsupported protocol version {got}; this server speaks version {VERSION}")]
    UnsupportedVersion {
        /// The version the peer asked for.
        got: u8,
    },
    /// A frame's length is above the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame's body does not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The frame was valid but not allowed here (e.g. a request before the hello).
    #[error("unexpected frame: {0}")]
    Unexpected(String),
    /// The peer was too slow: no preface or hello in time, or a frame it started that did
    /// not complete in time. The text says which.
    #[error("timed out: {0}")]
    TimedOut(String),
    /// Reading or writing the socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks a peer's preface: the magic and a version this build speaks.
pub fn check_preface(preface: &[u8; 8]) -> Result<(), ProtocolError> {
    let mut magic = [0u8; 7];
    magic.copy_from_slice(&preface[..7]);
    if &magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    match preface[7] {
        VERSION => Ok(()),
        got => Err(ProtocolError::UnsupportedVersion { got }),
    }
}

/// Length-prefixed postcard frames, for `tokio_util::codec::Framed`.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameCodec {
    /// A codec refusing frames longer than `max_frame` bytes (in both directions).
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }

    /// The frame-size limit.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_frame {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        if src.len() < 4 + len {
            // Room for what may come next, not for everything announced: the buffer grows
            // with the bytes that actually arrive.
            src.reserve((4 + len - src.len()).min(RESERVE_STEP));
            return Ok(None);
        }
        src.advance(4);
        let body = src.split_to(len);
        postcard::from_bytes(&body)
            .map(Some)
            .map_err(|e| ProtocolError::Malformed(e.to_string()))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let body =
            postcard::to_allocvec(&frame).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        if body.len() > self.max_frame {
            return Err(ProtocolError::FrameTooLarge {
                len: body.len(),
                max: self.max_frame,
            });
        }
        dst.reserve(4 + body.len());
        dst.put_u32_le(body.len() as u32);
        dst.put_slice(&body);
        Ok(())
    }
}

/// Feeds arbitrary bytes to the decoder as a peer could: the fuzz target's body. Panics only
/// if the decoder breaks an invariant (a panic inside, or a decoded frame that does not
/// round-trip).
#[doc(hidden)]
pub fn fuzz_decode(bytes: &[u8]) {
    let mut codec = FrameCodec::new(64 * 1024);
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        let mut again = BytesMut::new();
        codec
            .encode(frame.clone(), &mut again)
            .expect("a decoded frame re-encodes");
        let back = codec.decode(&mut again).expect("re-encoded frame decodes");
        assert_eq!(
            back.as_ref(),
            Some(&frame),
            "decode ∘ encode is the identity"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Body, Request};

    fn encode(frame: &Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        FrameCodec::default()
            .encode(frame.clone(), &mut buf)
            .unwrap();
        buf
    }

    #[test]
    fn a_frame_round_trips_and_a_partial_frame_waits_for_more_bytes() {
        let frame = Frame::new(7, Body::Request(Request::Ping));
        let bytes = encode(&frame);
        let mut codec = FrameCodec::default();
        for cut in 0..bytes.len() {
            let mut partial = BytesMut::from(&bytes[..cut]);
            assert!(
                codec.decode(&mut partial).unwrap().is_none(),
                "cut at {cut}"
            );
        }
        let mut whole = bytes.clone();
        assert_eq!(codec.decode(&mut whole).unwrap(), Some(frame));
        assert!(whole.is_empty(), "the frame is consumed exactly");
    }

    #[test]
    fn an_oversized_length_is_refused_before_anything_is_buffered() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&2048u32.to_le_bytes()[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::FrameTooLarge {
                    len: 2048,
                    max: 1024
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_huge_announced_frame_reserves_a_bounded_step_not_the_announced_length() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(DEFAULT_MAX_FRAME as u32).to_le_bytes());
        buf.extend_from_slice(&[0u8; 1024]);
        assert!(codec.decode(&mut buf).unwrap().is_none(), "a partial frame");
        assert!(
            buf.capacity() <= 4 + 1024 + 2 * RESERVE_STEP,
            "announcing {DEFAULT_MAX_FRAME} bytes and sending 1 KiB reserves {} bytes",
            buf.capacity()
        );
    }

    #[test]
    fn the_buffer_grows_with_the_bytes_that_arrive_and_the_frame_still_decodes() {
        let frame = Frame::new(
            9,
            Body::Request(Request::Publish {
                topic: "big".into(),
                messages: vec![crate::message::WireMessage {
                    id: "m".into(),
                    message_type: None,
                    routing_key: None,
                    ordering_key: None,
                    headers: Vec::new(),
                    content_type: None,
                    payload: vec![7; 1024 * 1024],
                    published_at_ns: None,
                    deliver_at_ns: None,
                }],
            }),
        );
        let bytes = encode(&frame);
        let mut codec = FrameCodec::default();
        // As `FramedRead` reads: make room for one byte, append what arrived, decode.
        let mut buf = BytesMut::new();
        let mut decoded = None;
        for chunk in bytes.chunks(4096) {
            buf.reserve(1);
            buf.extend_from_slice(chunk);
            assert!(
                buf.capacity() <= 2 * buf.len() + 2 * RESERVE_STEP,
                "{} bytes arrived, {} reserved",
                buf.len(),
                buf.capacity()
            );
            if let Some(done) = codec.decode(&mut buf).unwrap() {
                decoded = Some(done);
            }
        }
        assert_eq!(decoded, Some(frame), "the frame decodes once complete");
    }

    #[test]
    fn garbage_is_a_malformed_frame_not_a_panic() {
        let mut buf = BytesMut::from(&[3u8, 0, 0, 0, 0xff, 0xff, 0xff][..]);
        let err = FrameCodec::default().decode(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed(_)), "{err}");
    }

    #[test]
    fn the_preface_names_a_wrong_magic_and_an_unknown_version() {
        assert!(check_preface(&PREFACE).is_ok());
        let err = check_preface(b"GET / HT").unwrap_err();
        assert!(err.to_string().contains("not a Sluice connection"), "{err}");
        let err = check_preface(b"SLUICE\0\x09").unwrap_err();
        assert!(
            err.to_string().contains("unsupported protocol version 9"),
            "{err}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]
        /// The bounded fuzz run of the decoder (the cargo-fuzz target in `fuzz/` runs the same
        /// function unbounded): arbitrary bytes never panic, and whatever decodes re-encodes
        /// to a frame that decodes to the same value.
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            crate::frame::fuzz_decode(&bytes);
            // The same bytes behind a correct length prefix reach the body decoder.
            let mut framed = (bytes.len() as u32).to_le_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            crate::frame::fuzz_decode(&framed);
        }
    }
}
