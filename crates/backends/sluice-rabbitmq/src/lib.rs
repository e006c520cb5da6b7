//! Sluice on RabbitMQ (`amqp://USER:PASS@HOST:PORT/VHOST`), built on lapin with the tokio
//! executor.
//!
//! A topic is a durable topic exchange; a subscription is a durable quorum queue bound to it
//! with its filter (`#` without one); retries and delayed publishes wait in delay-tier
//! queues (per-tier message TTL, dead-lettered back to the right queue); dead-lettered
//! messages are republished by Sluice, with their envelope, to the subscription's DLQ.
//! Publishes are persistent and confirmed. `docs/rabbitmq.md` documents the wire mapping
//! for other AMQP clients, and what each capability means here.
//!
//! ```no_run
//! # async fn example() -> sluice_core::Result<()> {
//! use sluice_core::{Backend, TopicConfig, TopicName};
//! use sluice_rabbitmq::{RabbitBackend, RabbitOptions};
//! let backend =
//!     RabbitBackend::connect("amqp://guest:guest@127.0.0.1:5672/%2f", RabbitOptions::default())
//!         .await?;
//! backend.ensure_topic(&TopicName::new("orders")?, &TopicConfig::default()).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! | module | what lives there |
//! |---|---|
//! | `backend.rs` | [`RabbitBackend`]: connect, capabilities, topology, stats, DLQ tools |
//! | `publisher.rs` | [`RabbitPublisher`]: confirmed publishes, delays, the dedup window |
//! | `dedup.rs` | the dedup window's claims: pending, confirmed, released (also when a publish is dropped) |
//! | `subscriber.rs` | [`RabbitSubscriber`]: the consumer task, prefetch, reconsuming after a loss |
//! | `delivery.rs` | [`RabbitDelivery`]: the client-side lease and the verbs |
//! | `catalog.rs` | the topology catalog kept in the broker (configurations, listings) |
//! | `link.rs` | the connection: reconnect with backoff, channels, confirms, error mapping |
//! | `names.rs` | physical names and the delay tiers |
//! | `wire.rs` | the AMQP wire mapping of a message |

mod backend;
mod catalog;
mod dedup;
mod delivery;
mod link;
pub mod names;
mod ops;
mod publisher;
mod subscriber;
pub mod wire;

pub use backend::{
    capabilities, RabbitBackend, RabbitOptions, DELIVERY_LIMIT_MARGIN, MAX_MESSAGE_SIZE,
};
pub use delivery::RabbitDelivery;
pub use publisher::RabbitPublisher;
pub use subscriber::RabbitSubscriber;
