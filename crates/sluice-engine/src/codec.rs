//! Field encodings shared by every record body: fixed-width little-endian integers, `str`
//! (`u16` length + UTF-8), `opt str` (`u16` length, `0xFFFF` = absent), `bytes` (`u32` length
//! + bytes), `time` (`u64` ms since the Unix epoch, `0` = none). See `docs/engine-format.md`.
//!
//! Invariant: [`Decoder`] never panics on any input; a short or malformed body is a
//! [`CodecError`].

/// Marker of an absent `opt str`.
const ABSENT: u16 = u16::MAX;

/// A body that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed record body: {0}")]
pub struct CodecError(pub &'static str);

/// Appends fields to a body.
#[derive(Debug, Default, Clone)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// An empty body.
    pub fn new() -> Self {
        Self::default()
    }
    /// An empty body with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }
    /// A `u8`.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    /// A `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A `str` (at most 65 534 bytes; callers validate lengths before encoding).
    pub fn str(&mut self, s: &str) -> &mut Self {
        debug_assert!(s.len() < ABSENT as usize, "str field too long");
        self.u16(s.len() as u16);
        self.buf.extend_from_slice(s.as_bytes());
        self
    }
    /// An `opt str`.
    pub fn opt_str(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.str(s),
            None => self.u16(ABSENT),
        }
    }
    /// A `bytes` field.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.buf.extend_from_slice(b);
        self
    }
    /// The encoded body.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// Whether nothing was encoded.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Reads fields from a body, in order.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    buf: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// Reads `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    /// A `u8`.
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1, "truncated u8")?[0])
    }
    /// A `u16`.
    pub fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2, "truncated u16")?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    /// A `u32`.
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4, "truncated u32")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A `u64`.
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8, "truncated u64")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A `str`.
    pub fn str(&mut self) -> Result<&'a str, CodecError> {
        let len = self.u16()?;
        if len == ABSENT {
            return Err(CodecError("absent str where one is required"));
        }
        let b = self.take(len as usize, "truncated str")?;
        std::str::from_utf8(b).map_err(|_| CodecError("str is not UTF-8"))
    }
    /// An `opt str`.
    pub fn opt_str(&mut self) -> Result<Option<&'a str>, CodecError> {
        let len = self.u16()?;
        if len == ABSENT {
            return Ok(None);
        }
        let b = self.take(len as usize, "truncated str")?;
        std::str::from_utf8(b)
            .map(Some)
            .map_err(|_| CodecError("str is not UTF-8"))
    }
    /// A `bytes` field.
    pub fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.u32()?;
        self.take(len as usize, "truncated bytes")
    }
    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), CodecError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CodecError("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_round_trip() {
        let mut e = Encoder::new();
        e.u8(7)
            .u16(300)
            .u32(70_000)
            .u64(u64::MAX)
            .str("héllo")
            .opt_str(None)
            .opt_str(Some(""))
            .bytes(b"\0\x01");
        let body = e.finish();
        let mut d = Decoder::new(&body);
        assert_eq!(d.u8().unwrap(), 7);
        assert_eq!(d.u16().unwrap(), 300);
        assert_eq!(d.u32().unwrap(), 70_000);
        assert_eq!(d.u64().unwrap(), u64::MAX);
        assert_eq!(d.str().unwrap(), "héllo");
        assert_eq!(d.opt_str().unwrap(), None);
        assert_eq!(d.opt_str().unwrap(), Some(""));
        assert_eq!(d.bytes().unwrap(), b"\0\x01");
        d.finish().unwrap();
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut d = Decoder::new(&body);
            let _ = d.u8().and_then(|_| d.str()).and_then(|_| d.bytes()).and_then(|_| d.opt_str());
        }
    }
}
