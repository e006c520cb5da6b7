//! Sluice's embedded durable broker engine. See `docs/engine-format.md` for the on-disk
//! format, the commit protocol and the crash case analysis this code keeps.
//!
//! # Layout
//!
//! | module | what lives there |
//! |---|---|
//! | [`io`] | the one I/O trait ([`io::Storage`], [`io::StorageFile`]) with file, memory (crash-simulating) and fault-injecting implementations |
//! | [`codec`] | record bodies: the message record, fixed little-endian field encodings |
//! | [`segment`] | segment header, record framing (length, CRC32C), scanning and recovery |
//! | [`log`] | a segmented append-only log: preallocated segments, sparse index, reads, retention |
//! | [`dir`] | the data directory: lock, `FORMAT`, catalog |
//! | [`commit`] | group commit: one flusher thread, sync modes, poisoning |
//! | [`subscription`] | a subscription's state machine, its journal records and checkpoint |
//! | [`catalog`] | topics and subscriptions with their options (JSON, replaced atomically) |
//! | [`dedup`] | a topic's dedup window, rebuilt from the log at open |
//! | [`filter`] | routing-key patterns |
//! | [`clock`] | injected time |
//! | [`error`] | the engine's errors |

pub mod catalog;
pub mod clock;
pub mod codec;
pub mod dedup;
pub mod filter;
