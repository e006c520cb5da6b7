//! Sluice on Apache Kafka (`kafka://HOST:PORT[,HOST:PORT]`), on rdkafka with its bundled
//! librdkafka.
//!
//! A topic is a Kafka topic, a subscription a consumer group (classic protocol) reading it;
//! the ordering key is the record key (same key, same partition, in order) and the rest of a
//! message travels in headers ([`wire`]). Per-message verbs sit on top of committed offsets:
//! records of a partition are handed out concurrently where ordering keys allow, and the
//! committed position is the end of the contiguous completed prefix. Retries go to retry-tier
//! topics of the subscription (never blocking the partition), dead letters to its DLQ topic,
//! delayed publishes to delay-tier topics of the topic moved by one mover per topic.
//! `docs/kafka.md` has the mapping, the guarantees and what differs from the other backends.
//!
//! | module | what lives there |
//! |---|---|
//! | `backend.rs` | [`KafkaBackend`], [`KafkaOptions`], topology, stats, DLQ tools |
//! | `catalog.rs` | the namespace's configuration in a compacted catalog topic |
//! | `consumer.rs` | the engine under subscribers and movers: poll thread, leases, keys, tiers, rebalances |
//! | `offsets.rs` | per-partition offset tracking (property-tested) |
//! | `publisher.rs` | [`KafkaPublisher`]: the idempotent producer, delay tiers, dedup claims |
//! | `dedup.rs` | the dedup window's claims: pending, confirmed, released (also when a publish is dropped) |
//! | `subscriber.rs` | [`KafkaSubscriber`], [`KafkaDelivery`]: the verbs |
//! | `mover.rs` | the delay mover of a topic |
//! | `names.rs` | physical names and tiers |

mod backend;
mod catalog;
mod consumer;
mod dedup;
mod error;
mod mover;
mod names;
mod offsets;
mod publisher;
mod subscriber;
pub mod wire;

pub use backend::{capabilities, KafkaBackend, KafkaOptions, MAX_MESSAGE_SIZE};
pub use mover::DelayMovers;
pub use names::{tier_for, MAX_DELAY, TIERS};
pub use publisher::KafkaPublisher;
pub use subscriber::{KafkaDelivery, KafkaSubscriber};
