//! Sluice's in-process reference backend (URL `memory:`).
//!
//! It implements every semantic of the model exactly, on tokio's clock, and keeps nothing
//! across a restart: other backends are compared to it. Topics keep every published message
//! in a log (so `earliest` and `at(time)` start positions replay them); each subscription
//! keeps its own per-message state: ready queue, timers for delays, retries and leases,
//! strict ordering per key, and a dead-letter queue.
//!
//! ```
//! use sluice_core::{Backend, Delivery, Message, Publisher, Subscriber};
//! use sluice_core::{SubscriptionConfig, SubscriptionName, TopicConfig, TopicName};
//! use sluice_memory::MemoryBackend;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> sluice_core::Result<()> {
//! let backend = MemoryBackend::new();
//! let orders = TopicName::new("orders")?;
//! let billing = SubscriptionName::new("billing")?;
//! backend.ensure_topic(&orders, &TopicConfig::default()).await?;
//! backend.ensure_subscription(&billing, &SubscriptionConfig::new(orders.clone())).await?;
//!
//! let publisher = backend.publisher().await?;
//! publisher.publish(&orders, Message::builder("order 42").build()?).await?;
//!
//! let subscriber = backend.subscribe(&billing).await?;
//! for delivery in subscriber.receive(10, Duration::from_secs(1)).await? {
//!     assert_eq!(delivery.attempt(), 1);
//!     delivery.ack().await.map_err(|failed| failed.into_error())?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! | module | what lives there |
//! |---|---|
//! | `backend` | [`MemoryBackend`]: the handle, its [`capabilities`], topology, stats, DLQ tools |
//! | `publisher` | [`MemoryPublisher`]: validation and publish, waiting for room under a `Block` backlog bound |
//! | `subscriber` | [`MemorySubscriber`]: `receive`, waiting without polling |
//! | `delivery` | [`MemoryDelivery`]: the verbs |
//! | `state` | the whole state behind the lock: topics, subscriptions, backlog bounds, publish fan-out |
//! | `topic` | one topic: its log (for replay) and its dedup window |
//! | `subscription` | one subscription: per-message phases, ready queue, timers, leases, ordering keys, DLQ |
//! | `clock` | the backend clock: instants and wall-clock times from tokio's (pausable) clock |
//!
//! Each module opens with the invariants it keeps. Unit tests live in `src/tests/`, one
//! file per theme plus `model.rs` (random verbs by competing consumers, checked against a
//! model and the invariants after every step), all on tokio's paused clock. The shared
//! conformance suite runs from `tests/conformance.rs`, in real time.
//!
//! # Semantics worth knowing
//! - `attempt` counts deliveries: +1 on retry and lease expiry, unchanged on `release`.
//! - Ordering is `strict`: per subscription, one message per ordering key is in flight
//!   (leased or waiting for retry); the next one goes when it is acked or dead-lettered.
//! - A dead letter's envelope records the first failure (first retry or lease expiry; the
//!   dead-lettering itself if it failed on its first attempt).
//! - Without a dead-letter queue, `dead_letter` logs a warning and drops the message.
//! - Backlog bounds (`TopicConfig::backlog_bound`): a topic's backlog is the largest, over
//!   its subscriptions, of their unsettled messages (ready, in flight, delayed, waiting for
//!   retry or behind their ordering key; dead letters are settled), in messages and in bytes
//!   (`Message::size`: payload, headers, keys). A topic without subscriptions has none. A
//!   publish that would exceed it fails with `Error::BacklogFull` at once (`Reject`), or waits
//!   (`Block { timeout }`, on tokio's clock, no thread blocked) until an ack, a dead-letter or
//!   a deletion makes room, failing with `BacklogFull` after the timeout. A refused publish
//!   changes nothing (not even the dedup window). Redrive is never refused.

mod backend;
mod clock;
mod delivery;
mod publisher;
mod state;
mod subscriber;
mod subscription;
mod topic;

#[cfg(test)]
mod tests;

pub use backend::{capabilities, MemoryBackend, MAX_BATCH, MAX_MESSAGE_SIZE};
pub use delivery::MemoryDelivery;
pub use publisher::MemoryPublisher;
pub use subscriber::MemorySubscriber;
pub use topic::REPLAY_RETENTION;
