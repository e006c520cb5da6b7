//! Sluice's embedded durable broker engine. See `docs/engine-format.md` for the on-disk
//! format, the commit protocol and the crash case analysis this code keeps.
//!
//! # Layout
//!
//! | module | what lives there |
//! |---|---|
//! | [`io`] | the one I/O trait ([`io::Storage`], [`io::StorageFile`]) with file, memory (crash-simulating) and fault-injecting implementations |
//! | [`codec`] | field encodings shared by every record body: fixed little-endian integers, strings, bytes |
//! | [`record`] | the message record (type 1) of topic logs and DLQs: encode, decode, decode the scheduling fields only |
//! | [`segment`] | segment header, record framing (length, CRC32C), the frame scanner, the sparse index file |
//! | [`log`] | a segmented append-only log: preallocated segments, recovery, sparse index, reads, retention |
//! | [`dir`] | the data directory: lock, `FORMAT`, catalog |
//! | [`commit`] | group commit: one flusher thread, sync modes, poisoning |
//! | [`subscription`] | a subscription's state machine, its journal records and checkpoint |
//! | [`kv`] | the keyed store's state (a versioned map with a time to live: job status, cancellations, schedules), its journal records and checkpoint |
//! | [`engine`] | the [`Engine`](engine::Engine): topics, subscriptions, publish, receive, verbs, DLQ tools, checkpoints, retention (and its maintenance thread), backlog bounds |
//! | [`check`] | offline `check` and `repair` of a data directory (`sluice check`, `sluice repair`) |
//! | [`catalog`] | topics and subscriptions with their options (JSON, replaced atomically) |
//! | [`dedup`] | a topic's dedup window, rebuilt from the log at open |
//! | [`filter`] | routing-key patterns |
//! | [`clock`] | injected time |
//! | [`error`] | the engine's errors |

pub mod catalog;
pub mod check;
pub mod clock;
pub mod codec;
pub mod commit;
pub mod dedup;
pub mod dir;
pub mod engine;
pub mod error;
pub mod filter;
pub mod io;
pub mod kv;
pub mod log;
pub mod record;
pub mod segment;
pub mod subscription;

pub use error::{Error, Result};
