//! Sluice on Apache Kafka (`kafka://HOST:PORT[,HOST:PORT]`) — **in progress** (issue #8):
//! not a backend yet, not wired into the `sluice` crate. What exists is the part of the
//! design that needs no broker, tested on its own:
//!
//! | module | what lives there |
//! |---|---|
//! | `offsets.rs` | per-partition offset tracking: out-of-order completion, the committed position as the end of the contiguous completed prefix, a bounded in-flight window, revocation |
//! | `wire.rs` | the message ↔ record mapping (value, key, headers) |
//!
//! Next (the plan is `docs/kafka.md`): the rdkafka producer and consumer (bundled librdkafka), the
//! topology and catalog, retry and DLQ topics, the conformance suite against Tansu
//! (`scripts/services-up` already starts it on 127.0.0.1:9092).

#![allow(dead_code)]

mod offsets;
pub mod wire;
