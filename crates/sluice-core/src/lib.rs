//! The Sluice contract: the types and traits every backend implements and every consumer
//! runtime builds on. No broker client, runtime or heavy dependency lives here.
//!
//! # Layout
//!
//! | module | what lives there |
//! |---|---|
//! | [`name`] | topic, subscription and namespace names; [`Naming`], the one function for physical names |
//! | [`message`] | [`Message`], its builder and limits |
//! | [`filter`] | routing-key patterns (`*`, `#`) |
//! | [`config`] | [`TopicConfig`] (with its [`BacklogBound`]), [`SubscriptionConfig`], [`StartPosition`] |
//! | [`publisher`] | the [`Publisher`] trait and its receipt |
//! | [`delivery`] | the [`Subscriber`] and [`Delivery`] traits: receive and the verbs |
//! | [`backend`] | the [`Backend`] trait: factory, topology, stats and DLQ tools |
//! | [`capabilities`] | what a backend does natively, emulates or cannot do |
//! | [`envelope`] | the dead-letter envelope headers |
//! | [`dedup`] | the [`DedupStore`] contract of emulated dedup windows, its in-memory store, the pending claim a publish holds |
//! | [`ops`] | stats, topic and subscription descriptions, DLQ types |
//! | [`idempotency`] | the [`IdempotencyStore`] contract |
//! | [`jobs`] | the [`JobStore`] contract (job status, cancellations, unique locks) and its in-memory store |
//! | [`url`] | the backend URL parser |
//! | [`dynamic`] | `Dyn*` wrappers to choose a backend at run time |
//! | [`error`] | errors, one enum per concern |
//!
//! The contract is written on the traits: read [`Publisher`], [`Subscriber`], [`Delivery`]
//! and [`Backend`] for what each call guarantees.

pub mod backend;
pub mod capabilities;
pub mod cloudevents;
pub mod config;
pub mod dedup;
pub mod delivery;
pub mod dynamic;
pub mod envelope;
pub mod error;
pub mod filter;
pub mod idempotency;
pub mod jobs;
pub mod limit;
pub mod message;
pub mod name;
pub mod ops;
pub mod publisher;
pub mod tags;
pub mod url;

pub use backend::Backend;
pub use capabilities::{Capabilities, OrderingLevel, Support};
pub use config::{BacklogBound, Overflow, StartPosition, SubscriptionConfig, TopicConfig};
pub use dedup::{DedupClaim, DedupStore};
pub use delivery::{Delivery, Subscriber, VerbError, VerbResult};
pub use dynamic::{DynBackend, DynDelivery, DynPublisher, DynSubscriber};
pub use envelope::{DeadLetterReason, Envelope};
pub use error::{BoxError, Error, MessageError, NameError, ObjectKind, Result, UrlError};
pub use filter::Filter;
pub use idempotency::{Claim, ClaimToken, IdempotencyKey, IdempotencyStore};
pub use jobs::{JobStore, MemoryJobStore, Versioned};
pub use limit::{Grant, LimiterStore, MemoryLimiter, Rate, SlotsRequest};
pub use message::{Headers, Message, MessageBuilder, MessageId, MessageParts};
pub use name::{Namespace, Naming, SubscriptionName, TopicName};
pub use ops::{
    DeadLetteredMessage, RedriveOptions, RedriveReport, SubscriptionInfo, SubscriptionStats,
    TopicInfo,
};
pub use publisher::{PublishOutcome, PublishReceipt, Publisher};
pub use url::{BackendKind, BackendUrl};
