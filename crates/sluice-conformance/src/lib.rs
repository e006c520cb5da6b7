//! The one conformance suite every Sluice backend runs, against the real broker, in real
//! time. A backend proves it keeps Sluice's contract by passing it; what it cannot do is
//! declared in its [`Capabilities`](sluice_core::Capabilities), and every scenario those
//! exclude prints `SKIPPED <backend>::<scenario>: <reason>` instead of passing silently.
//!
//! # Layout
//!
//! | module | what lives there |
//! |---|---|
//! | [`harness`] | [`Harness`], what a backend's test file implements, and its [`Timing`] |
//! | [`scenarios`] | the scenarios, one `pub async fn` each, grouped by theme; [`SCENARIOS`] and the capability gates ([`skip_reason`]) |
//! | [`fixture`] | [`Fixture`]: connection, publisher, unique names and cleanup for one scenario; [`Outcome`] |
//! | [`wait`] | waiting for a condition with a deadline, asserting that nothing arrives |
//! | [`proxy`] | [`TcpProxy`], the loopback proxy that cuts connections |
//! | [`table`] | [`capability_table`], the markdown table behind `docs/capabilities.md` |
//! | `macros.rs` | [`conformance_tests!`]: one `#[test]` per scenario |
//!
//! # Using it
//!
//! A backend's `tests/conformance.rs` is a few lines (this one is compiled and run as
//! `crates/backends/sluice-memory/tests/conformance.rs`):
//!
//! ```text
//! use sluice_conformance::{Harness, Timing};
//! use sluice_memory::MemoryBackend;
//!
//! struct MemoryHarness(MemoryBackend);
//!
//! impl Harness for MemoryHarness {
//!     type Backend = MemoryBackend;
//!     fn name(&self) -> &'static str { "memory" }
//!     async fn connect(&self) -> sluice_core::Result<MemoryBackend> { Ok(self.0.clone()) }
//!     fn timing(&self) -> Timing { Timing::in_process() }
//! }
//!
//! sluice_conformance::conformance_tests!(MemoryHarness(MemoryBackend::new()));
//! ```
//!
//! # Rules every scenario follows
//!
//! - Fresh topic and subscription names (`<scenario>-<random>-<label>`), so scenarios run in
//!   parallel against one broker and leave nothing behind that a later run could see.
//! - Waiting is for a condition, bounded by [`Timing::deadline`]; the only fixed waits are
//!   the ones that assert a negative ("nothing arrives within [`Timing::settle`]"), and they
//!   are receives, not sleeps.
//! - A failure is a panic whose message says what was expected and what happened.

pub mod fixture;
pub mod harness;
mod macros;
pub mod proxy;
pub mod scenarios;
pub mod table;
pub mod wait;

#[doc(hidden)]
pub use macros::__private;

pub use fixture::{report_skip, DeliveryOf, Fixture, Outcome, PublisherOf, SubscriberOf};
pub use harness::{Harness, Timing};
pub use proxy::TcpProxy;
pub use scenarios::{skip_reason, SCENARIOS};
pub use table::capability_table;
pub use wait::{eventually, expect_nothing, receive_exactly, receive_until, Must};
