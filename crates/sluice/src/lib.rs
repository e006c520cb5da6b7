//! Sluice: durable messaging for Rust services, with one API over Sluice's own embedded
//! broker and RabbitMQ, Amazon SQS (+SNS) and Apache Kafka.
//!
//! Producers publish [`Message`]s to topics; every subscription of a topic receives every
//! message (fan-out); the consumers of one subscription compete for its messages. Failures
//! are retried through the broker with backoff, then dead-lettered; consumers skip
//! duplicates with an idempotency store.
//!
//! ```
//! use std::time::Duration;
//! use sluice::prelude::*;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct OrderPlaced { order_id: u64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = sluice::connect("memory:").await?;
//! let orders = TopicName::new("orders")?;
//! let billing = SubscriptionName::new("billing")?;
//! backend.ensure_topic(&orders, &TopicConfig::default().dedup_window(Duration::from_secs(600))).await?;
//! backend.ensure_subscription(&billing, &SubscriptionConfig::new(orders.clone()).max_attempts(5)).await?;
//!
//! // Publish: returns once the backend holds the message.
//! let publisher = backend.publisher().await?;
//! let message = json_message(&OrderPlaced { order_id: 42 })?.id("order-42-placed").build()?;
//! publisher.publish(&orders, message).await?;
//!
//! // Consume: retried with backoff on error, dead-lettered after 5 attempts, run once per id.
//! let worker = Worker::builder(
//!     backend.subscribe(&billing).await?,
//!     json_handler(|order: OrderPlaced, _ctx: Context| async move {
//!         println!("charging order {}", order.order_id);
//!         Ok(())
//!     }),
//! )
//! .backoff(Backoff::exponential(Duration::from_millis(200), Duration::from_secs(60)))
//! .idempotency(Idempotency::new(InMemoryStore::new()))
//! .build();
//! let stats = worker.stats();
//! let shutdown = CancellationToken::new(); // in a binary: sluice::runtime::shutdown_on_signals()
//! let running = worker.spawn(shutdown.clone());
//! while stats.snapshot().acked < 1 {
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//! }
//! shutdown.cancel();
//! running.await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! | item | where it comes from |
//! |---|---|
//! | the contract ([`Message`], [`Publisher`], [`Subscriber`], [`Delivery`], [`Backend`], errors) | [`sluice_core`], re-exported at the root |
//! | [`runtime`] (workers, handlers, backoff, idempotency, rate limits) | [`sluice_runtime`] |
//! | [`connect`]: a backend from a URL | this crate, `connect.rs` |
//! | backends | behind cargo features: `embedded` (the default backend), `memory`, `remote` (`sluice://`), `rabbitmq`, `sqs`, `kafka` |
//! | durable idempotency, inbox, outbox | features `postgres`, `sqlite` (`sluice::sql`) and `redis` (`sluice::redis`) |
//! | [`prelude`] | what most programs import |

mod connect;

pub use connect::connect;
pub use sluice_core::*;
pub use sluice_runtime as runtime;

/// Sluice's own durable engine, in-process (`embedded:PATH`): the default backend.
#[cfg(feature = "embedded")]
pub use sluice_embedded as embedded;

/// The in-process reference backend (`memory:`).
#[cfg(feature = "memory")]
pub use sluice_memory as memory;

/// `sluice serve` over the network (`sluice://HOST:PORT`).
#[cfg(feature = "remote")]
pub use sluice_remote as remote;

/// Apache Kafka (`kafka://HOST:PORT[,HOST:PORT]`).
#[cfg(feature = "kafka")]
pub use sluice_kafka as kafka;
/// RabbitMQ (`amqp://USER:PASS@HOST:PORT/VHOST`).
#[cfg(feature = "rabbitmq")]
pub use sluice_rabbitmq as rabbitmq;
/// Amazon SQS + SNS (`sqs://REGION[?endpoint=URL]`).
#[cfg(feature = "sqs")]
pub use sluice_sqs as sqs;

/// Durable idempotency and dedup stores, the transactional inbox and outbox on PostgreSQL
/// and SQLite (features `postgres`, `sqlite`).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use sluice_sql as sql;

/// Durable idempotency and dedup-window stores on Redis (feature `redis`).
#[cfg(feature = "redis")]
pub use sluice_redis as redis;

/// What most programs import: `use sluice::prelude::*;`.
pub mod prelude {
    pub use sluice_core::{
        Backend, DeadLetterReason, Delivery, DynBackend, Filter, Message, PublishOutcome,
        Publisher, StartPosition, Subscriber, SubscriptionConfig, SubscriptionName, TopicConfig,
        TopicName,
    };
    pub use sluice_runtime::{
        batch_handler, event_message, json_batch_handler, json_handler, json_message, raw_handler,
        Backoff, BatchContext, BatchOutcome, CancellationToken, Context, Event, HandlerError,
        HandlerResult, Idempotency, InMemoryStore, Job, JobOptions, Jobs, Producer, RateLimit,
        Router, UnknownType, Worker,
    };
}

/// The README's code, compiled as a doc test so it stays true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
