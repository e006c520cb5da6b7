//! The wire protocol between `sluice serve` and the `sluice://` backend, version 1.
//!
//! The whole protocol is written down in `docs/protocol.md`; this crate is its one
//! implementation, shared by the server and the client so the two cannot drift.
//!
//! # Layout
//! - [`frame`]: the connection preface (`SLUICE\0` + version byte) and the length-prefixed
//!   frame codec, with its size limit. The fuzzed decoder lives here.
//! - [`message`]: every frame body: requests, responses, the wire shapes of messages,
//!   configurations and errors (serde structs encoded with postcard).
//! - [`io`]: the write loop both ends use (coalesces frames that are ready into one write).
//! - [`tls`]: certificates and keys from PEM files into rustls configurations (server and
//!   client), for `sluice serve --tls-cert/--tls-key` and `sluice://…?tls=true`.
//! - [`convert`]: the mapping between the wire shapes and `sluice-core`'s types, both ways.

pub mod convert;
pub mod frame;
pub mod io;
pub mod message;
pub mod tls;

pub use frame::{FrameCodec, ProtocolError, DEFAULT_MAX_FRAME, PREFACE, VERSION};
pub use message::{Body, Frame, Request, Response, Verb, WireError};

/// The port `sluice serve` listens on by default (not assigned to a well-known service).
pub const DEFAULT_PORT: u16 = 7575;
