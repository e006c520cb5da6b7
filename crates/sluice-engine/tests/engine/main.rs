//! Engine-level tests: the [`Engine`](sluice_engine::engine::Engine) over in-memory storage
//! with a manual clock, through its public API only. One binary, one module per concern.

mod backlog;
mod corruption;
mod crash;
mod dedup;
mod durability;
mod faults;
mod kv;
mod model;
mod repair;
mod retention;
mod settle;
mod simulation;
mod support;
