//! The `sluice://HOST:PORT` backend: Sluice's contract over the network, against
//! `sluice serve` (the embedded engine shared between processes).
//!
//! Everything the embedded backend does, it does — the engine does it, on the server — and
//! it survives what a network does: a broken connection is re-established by the next call,
//! publishes in flight fail with a retryable error (never a silent loss), receives keep
//! trying for as long as they were asked to wait, and leases held on the broken connection
//! run out on the server and their messages are delivered again.
//!
//! # Layout
//! - `link.rs`: one multiplexed connection at a time, requests matched to answers by id,
//!   reconnection.
//! - [`backend`]: [`RemoteBackend`], topology and operations as one request each.
//! - `publisher.rs`, `subscriber.rs`, `delivery.rs`: the contract's three roles.
//! - `jobs.rs`: [`RemoteJobStore`], the server's job store (`Backend::job_store`).
//! - `limits.rs`: [`RemoteLimiter`], the server's limiter (`Subscriber::limiter`).

pub mod backend;
mod delivery;
mod jobs;
mod limits;
mod link;
mod publisher;
mod subscriber;

pub use backend::{capabilities, RemoteBackend, RemoteOptions};
pub use delivery::RemoteDelivery;
pub use jobs::RemoteJobStore;
pub use limits::RemoteLimiter;
pub use publisher::RemotePublisher;
pub use subscriber::RemoteSubscriber;
