//! Sluice examples live in this folder as cargo examples: `cargo run -p sluice-examples --example fan_out`.
//!
//! The library holds what an example shares with its test: [`ledger`], the payment ledger the
//! idempotency checker runs against.

pub mod ledger;
