//! Durable Sluice stores on Redis: [`RedisStore`] is an
//! [`IdempotencyStore`](sluice_core::IdempotencyStore) (which messages a subscription's
//! consumers have handled), a [`DedupStore`](sluice_core::DedupStore) (the claims of a
//! topic's emulated dedup window) and a [`JobStore`](sluice_core::JobStore) (job status,
//! cancellations and unique jobs: `Jobs::job_store`), shared by every process connected to the same Redis with
//! the same key prefix. Its semantics are exactly those of the in-memory stores
//! (`sluice_runtime::InMemoryStore`, `sluice_core::dedup::Claims`); only the reach differs.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use sluice_core::{Backend, DedupStore, SubscriptionName};
//! use sluice_redis::RedisStore;
//! use sluice_runtime::{raw_handler, CancellationToken, Idempotency, Worker};
//!
//! let store = RedisStore::connect("redis://127.0.0.1:6379").await?.with_prefix("shop");
//!
//! // Consumers in every process skip what any of them has handled.
//! let backend = sluice_embedded::EmbeddedBackend::open("./sluice-data").await?;
//! let subscriber = backend.subscribe(&SubscriptionName::new("billing")?).await?;
//! let worker = Worker::builder(subscriber, raw_handler(|_payload, _ctx| async { Ok(()) }))
//!     .idempotency(Idempotency::new(store.clone()))
//!     .build();
//!
//! // Publishers in every process share one dedup window: give this to the backend's
//! // options (`dedup_store` on the RabbitMQ, Kafka and SQS options).
//! let dedup: Arc<dyn DedupStore> = Arc::new(store);
//! # drop(dedup);
//! worker.run(CancellationToken::new()).await;
//! # Ok(()) }
//! ```
//!
//! # What survives a Redis restart
//!
//! Only what Redis itself keeps. Done markers guard against a second effect for the
//! `idempotency_ttl`; if Redis restarts without them, a duplicate arriving afterwards runs
//! its handler again. For the markers to survive, run Redis with the append-only file
//! (`appendonly yes`, and `appendfsync everysec` or `always`: with `everysec` the last
//! second of markers can be lost in a crash of the machine). RDB snapshots alone lose
//! everything since the last snapshot. A replica promoted after a failover may also lack
//! the last writes (replication is asynchronous). Claims need no durability: a lost claim
//! only means a concurrent duplicate may run, as after a lease expiry.
//!
//! The Redis this project's tests run against keeps nothing on disk (`appendonly no`, no
//! `save` points): its markers and claims are gone when it restarts. That is fine for the
//! tests, and wrong for production.
//!
//! # Deployment notes
//!
//! - One Redis server (or a primary with replicas): Redis Cluster is not supported
//!   (forgetting a topic scans one node).
//! - Keys expire by themselves (every key has a TTL); with `maxmemory`, use a
//!   `volatile-*` or `noeviction` policy and enough memory: an evicted done marker is a
//!   duplicate that runs again, an evicted dedup claim a duplicate that is published.
//! - Dedup claims are keyed by the topic's physical name, so namespaces sharing one Redis
//!   never see each other's windows; separate brokers or applications sharing one Redis use
//!   separate prefixes ([`RedisStore::with_prefix`]).
//!
//! # Layout
//!
//! | module | what lives there |
//! |---|---|
//! | `store.rs` | [`RedisStore`]: connecting, the prefix, Redis errors as Sluice errors |
//! | `idempotency.rs` | the idempotency store: claims, renewals, done markers (Lua scripts) |
//! | `dedup.rs` | the dedup store: pending and confirmed claims (Lua scripts), forgetting a topic with `SCAN` |
//! | `jobs.rs` | the job store (`Jobs::job_store`): versioned entries, compare-and-swap in Lua |
//! | `limits.rs` | global rate limits (`RateLimit::global`): a token bucket per limit, taken from in Lua on Redis's clock |
//! | `keys.rs` | the key layout: every key and `SCAN` pattern is built there |

mod dedup;
mod idempotency;
mod jobs;
mod keys;
mod limits;
mod store;

pub use store::{
    RedisStore, CONNECTION_RETRIES, CONNECTION_TIMEOUT, DEFAULT_PREFIX, RESPONSE_TIMEOUT,
};

/// The Redis client this crate is built on, for [`RedisStore::connect_with`]'s settings.
pub use redis;
