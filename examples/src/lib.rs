//! Sluice examples live in this folder as cargo examples: `cargo run -p sluice-examples --example fan_out`.
