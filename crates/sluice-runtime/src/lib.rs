//! The Sluice consumer runtime: a worker that pulls deliveries of one subscription and runs
//! a handler through retries with backoff, dead-lettering, idempotency, concurrency and rate
//! limits, panic recovery and graceful shutdown.
//!
//! ```no_run
//! # async fn example(backend: impl sluice_core::Backend) -> Result<(), Box<dyn std::error::Error>> {
//! use sluice_core::{Backend, SubscriptionName};
//! use sluice_runtime::{json_handler, Backoff, Context, HandlerError, Idempotency, InMemoryStore, Worker};
//! use std::time::Duration;
//!
//! #[derive(serde::Deserialize)]
//! struct OrderPlaced { order_id: u64, amount_cents: u64 }
//!
//! let subscriber = backend.subscribe(&SubscriptionName::new("billing")?).await?;
//! let worker = Worker::builder(subscriber, json_handler(|order: OrderPlaced, _ctx: Context| async move {
//!         if order.amount_cents == 0 { return Err(HandlerError::permanent("empty order")); }
//!         Ok(())
//!     }))
//!     .concurrency(8)
//!     .backoff(Backoff::exponential(Duration::from_millis(200), Duration::from_secs(60)))
//!     .idempotency(Idempotency::new(InMemoryStore::new()))
//!     .build();
//! let shutdown = sluice_runtime::shutdown_on_signals();
//! worker.run(shutdown).await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! | module | what lives there |
//! |---|---|
//! | [`handler`] | [`Handler`], [`Context`], [`HandlerError`], raw and JSON handlers |
//! | [`batch`] | [`BatchHandler`], [`BatchOutcome`], [`BatchContext`]: many messages in one call, each settled on its own |
//! | [`events`] | typed [`Event`]s, the [`Router`] dispatching on the message type, [`UnknownType`] |
//! | [`jobs`] | background [`Job`]s: [`Jobs`] enqueues them, builds their workers, runs recurring schedules, and tracks, cancels and reschedules them ([`JobStatus`], [`JobRecords`]) |
//! | [`producer`] | [`Producer`]: publish with a span, trace context and metrics; typed events |
//! | `worker` | [`Worker`] and its builder: the pull loop, backpressure, shutdown; `keyed.rs` takes one delivery through its key's gate (`gate.rs`) and the pipeline (`process.rs`); `batch.rs` fills batches and takes each through the same stages, `order.rs` keeps ordering keys in order across batches; `settle.rs` applies verbs |
//! | [`backoff`] | exponential backoff with jitter |
//! | `retry` (private) | handler result ⇒ verb |
//! | `recover` (private) | panic ⇒ transient error |
//! | [`lease`] | automatic lease extension and its hard cap |
//! | [`idempotency`] | the idempotency stage and [`InMemoryStore`] |
//! | [`rate_limit`] | [`RateLimit`], a token bucket drawn before pulling |
//! | [`key_limit`] | [`KeyLimit`]: a rate and a number in flight per key, parking and deferring so one key's backlog never holds up another |
//! | [`breaker`] | [`CircuitBreaker`]: stop pulling while the downstream fails |
//! | [`adaptive`] | [`AdaptiveConcurrency`]: the number of handlers at once, found from the downstream's latency |
//! | [`asyncapi`] | [`asyncapi::AsyncApi`]: the AsyncAPI 3.0 document of a topology, with typed events' payload schemas |
//! | [`trace`] | spans and W3C trace context in headers |
//! | [`metrics`] | metric names and recording (`docs/observability.md`) |
//! | [`observe`] | [`WorkerStats`] and the [`Observer`] outcome stream |
//! | [`shutdown`] | [`shutdown_on_signals`] for binaries |

pub mod adaptive;
pub mod asyncapi;
pub mod backoff;
pub mod batch;
pub mod breaker;
pub mod events;
pub mod handler;
pub mod idempotency;
pub mod jobs;
pub mod key_limit;
pub mod lease;
pub mod metrics;
pub mod observe;
pub mod producer;
pub mod rate_limit;
mod recover;
mod retry;
pub mod schedule;
pub mod shutdown;
pub mod trace;
mod worker;

pub use adaptive::AdaptiveConcurrency;
pub use backoff::{Backoff, Jitter};
pub use batch::{
    batch_handler, json_batch_handler, BatchContext, BatchHandler, BatchOutcome, BatchResult,
    Batched, JsonBatchHandler, RawBatchHandler,
};
pub use breaker::{CircuitBreaker, CircuitState};
pub use events::{event_message, Event, Routed, Router, UnknownType};
pub use handler::{
    decode_json, json_handler, json_message, raw_handler, Context, DecodeError, ErrorKind, Handler,
    HandlerError, HandlerResult, JsonHandler, RawHandler,
};
pub use idempotency::{Idempotency, InMemoryStore, DEFAULT_IDEMPOTENCY_TTL};
pub use jobs::{
    Job, JobOptions, JobRecords, JobStatus, Jobs, ScheduleInfo, ScheduleRecord, Unique, Upsert,
};
pub use key_limit::{KeyLimit, KeyOf};
pub use lease::{LeaseExtension, DEFAULT_MAX_EXTENSION};
#[cfg(feature = "prometheus")]
pub use metrics::install_prometheus;
pub use observe::{Observer, Outcome, OutcomeKind, StatsSnapshot, WorkerStats};
pub use producer::{ProduceError, Producer};
pub use rate_limit::RateLimit;
pub use recover::Panicked;
pub use shutdown::shutdown_on_signals;
pub use tokio_util::sync::CancellationToken;
pub use worker::{
    TimedOut, Worker, WorkerBuilder, CONTROL_EVERY, DEFAULT_BATCH_CONCURRENCY,
    DEFAULT_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_MESSAGES, DEFAULT_BATCH_MAX_WAIT,
    DEFAULT_CONCURRENCY, DEFAULT_POLL_WAIT, DEFAULT_SHUTDOWN_GRACE, SLOT_LEASE,
};
