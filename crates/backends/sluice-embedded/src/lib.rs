//! Sluice's default backend, `embedded:PATH`: the contract over the embedded durable engine
//! (`sluice-engine`), in this process. Nothing to install; every semantic of the model is
//! native and durable (fsynced before a publish or a verb is confirmed).
//!
//! One process at a time may open a data directory (the engine locks it); to share one
//! between processes, run `sluice serve --data PATH` and connect with `sluice://HOST:PORT`.
//!
//! ```no_run
//! # async fn example() -> sluice_core::Result<()> {
//! use sluice_core::{Backend, TopicConfig, TopicName};
//! let backend = sluice_embedded::EmbeddedBackend::open("./sluice-data").await?;
//! backend.ensure_topic(&TopicName::new("orders")?, &TopicConfig::default()).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! | module | what lives there |
//! |---|---|
//! | `backend.rs` | [`EmbeddedBackend`]: open, capabilities, topology, stats, DLQ tools |
//! | `publisher.rs` | [`EmbeddedPublisher`] |
//! | `subscriber.rs` | [`EmbeddedSubscriber`]: receive, waiting on the engine's wake-ups |
//! | `ahead.rs` | the next batch leased in the background after a full one |
//! | `delivery.rs` | [`EmbeddedDelivery`]: the verbs |
//! | `jobs.rs` | [`EngineJobStore`]: job status, cancellations and schedules in the engine's keyed store |
//! | `limits.rs` | [`EngineLimiter`]: global rate limits' buckets in the engine's process |
//! | `bridge.rs` | the engine's completion callbacks as futures |
//! | `convert.rs` | messages, configurations, times and errors between contract and engine |

mod ahead;
mod backend;
mod bridge;
mod convert;
mod delivery;
mod jobs;
mod limits;
mod publisher;
mod settle;
mod subscriber;

pub use backend::{capabilities, EmbeddedBackend, EmbeddedOptions, MAX_MESSAGE_SIZE};
pub use delivery::EmbeddedDelivery;
pub use jobs::EngineJobStore;
pub use limits::EngineLimiter;
pub use publisher::EmbeddedPublisher;
pub use sluice_engine::commit::SyncMode;
pub use subscriber::EmbeddedSubscriber;
