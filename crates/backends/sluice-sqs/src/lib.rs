//! Sluice on Amazon SQS + SNS (`sqs://REGION[?endpoint=URL]`), built on the AWS SDK for Rust.
//!
//! A topic is an SNS topic; a subscription is an SQS queue subscribed to it with raw message
//! delivery (and an SNS filter policy for its routing-key filter); its DLQ is a second queue,
//! also named in the queue's redrive policy as a safety net. A topic created `ordered` (or
//! with a dedup window) is a FIFO topic with FIFO queues: the ordering key is the
//! `MessageGroupId`, the message id the `MessageDeduplicationId`. Leases are visibility
//! timeouts; SNS cannot delay, so delayed messages are held back on the consumer side until
//! they are due. `docs/sqs.md` documents the wire mapping for consumers in other languages,
//! and what each capability means here.
//!
//! ```no_run
//! # async fn example() -> sluice_core::Result<()> {
//! use sluice_core::{Backend, TopicConfig, TopicName};
//! use sluice_sqs::{SqsBackend, SqsOptions};
//! let options = SqsOptions::new("us-east-1").endpoint(Some("http://127.0.0.1:4566".into()));
//! let backend = SqsBackend::connect(options).await?;
//! backend.ensure_topic(&TopicName::new("orders")?, &TopicConfig::default()).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! | module | what lives there |
//! |---|---|
//! | `backend.rs` | [`SqsBackend`]: clients, capabilities, topology, stats, DLQ tools |
//! | `publisher.rs` | [`SqsPublisher`]: SNS publishes in batches of ten, FIFO ids, dedup receipts |
//! | `dedup.rs` | the dedup window's claims, which decide the receipts: pending, confirmed, released |
//! | `subscriber.rs` | [`SqsSubscriber`]: long-polling receivers, credit, held-back delays, poison messages |
//! | `delivery.rs` | [`SqsDelivery`]: the verbs as SQS calls |
//! | `batch.rs` | coalescing of deletes and visibility changes into batch calls |
//! | `catalog.rs` | Sluice's configuration as tags on the topics and queues |
//! | `filter.rs` | routing-key patterns as SNS filter policies |
//! | `wire.rs` | the message ↔ body + attributes mapping |
//! | `names.rs` | physical names (`-` separator, `.fifo`) |
//! | `error.rs` | AWS SDK errors as Sluice errors |

mod backend;
mod batch;
mod catalog;
mod dedup;
mod delivery;
mod error;
mod filter;
pub mod names;
mod publisher;
mod receives;
mod subscriber;
pub mod wire;

pub use backend::{
    capabilities, sdk_config, SqsBackend, SqsOptions, DEDUP_WINDOW, MAX_DELAY, MAX_MESSAGE_SIZE,
    MAX_VISIBILITY, RECEIVE_LIMIT_MARGIN, RETENTION,
};
pub use delivery::SqsDelivery;
pub use publisher::SqsPublisher;
pub use subscriber::SqsSubscriber;
