//! The scenarios, written once for every backend. Each is a `pub async fn name<H: Harness>(h:
//! &H) -> Outcome` whose name reads as the sentence it proves; it fails by panicking with a
//! message saying what was expected, and skips (printing why) when the backend's
//! capabilities or the harness's hooks exclude it.
//!
//! | file | scenarios |
//! |---|---|
//! | `basic.rs` | round trip, competing consumers, ack |
//! | `routing.rs` | fan-out, filters, topic isolation |
//! | `publish.rs` | missing topic, batch, size limit, publisher close, delay, dedup window |
//! | `backlog.rs` | backlog bounds: reject, block until an ack, block until the timeout |
//! | `lease.rs` | retry, lease expiry, release, extend lease, verbs after the lease |
//! | `dlq.rs` | dead letter, redrive, stats |
//! | `ordering.rs` | ordering per key |
//! | `topology.rs` | ensure conflicts, unique names, delete, start positions |
//! | `connection.rs` | consumer close, connection loss, broker restart |
//! | `batch.rs` | batch handlers: each message settled on its own |
//! | `jobs.rs` | background jobs through `Jobs`: one job per tick across replicas, cancel, replace, unique modes |

use sluice_core::{Capabilities, OrderingLevel};

mod backlog;
mod basic;
mod batch;
mod connection;
mod dlq;
mod flow;
mod jobs;
mod lease;
mod ordering;
mod publish;
mod routing;
mod topology;

pub use backlog::*;
pub use basic::*;
pub use batch::*;
pub use connection::*;
pub use dlq::*;
pub use flow::*;
pub use jobs::*;
pub use lease::*;
pub use ordering::*;
pub use publish::*;
pub use routing::*;
pub use topology::*;

/// Every scenario's name, in the order the tests are generated.
pub const SCENARIOS: &[&str] = crate::__with_scenarios!(__scenario_names!());

/// Scenarios that disturb the whole broker: the generated tests run each of them alone,
/// never beside another scenario of the same test binary.
pub const EXCLUSIVE: &[&str] = &["broker_restart_keeps_topology_and_messages"];

/// Why a backend with these capabilities skips `scenario`, or `None` if it runs it. The one
/// place capability gates are decided: the scenarios and the capability table both ask here.
pub fn skip_reason(scenario: &str, caps: &Capabilities) -> Option<String> {
    let reason = match scenario {
        "filter_matches_routing_key_patterns" if !caps.filter.is_available() => {
            "routing-key filters are unsupported"
        }
        "delayed_publish_not_delivered_early"
        | "jobs_one_job_per_tick_across_replicas_one_killed_mid_tick"
        | "jobs_cancelled_before_due_never_run"
        | "jobs_replaced_run_once_with_the_new_body"
            if !caps.delay.is_available() =>
        {
            "delayed publish is unsupported"
        }
        "dedup_window_drops_duplicate_publish" if !caps.dedup_window.is_available() => {
            "dedup windows are unsupported"
        }
        "backlog_bound_rejects_or_blocks_when_full" if !caps.backlog_bounds.is_available() => {
            "backlog bounds are unsupported"
        }
        "ordering_per_key_at_declared_level"
        | "batch_handler_holds_a_keys_later_messages_back_when_one_is_retried"
            if caps.ordering == OrderingLevel::None =>
        {
            "ordering level is `none`"
        }
        "start_position_earliest_replays" if !caps.replay => "replay is unsupported",
        "connection_loss_then_reconnect_loses_no_confirmed_message" if !caps.reconnects => {
            "the backend has no connection to lose (capabilities.reconnects = false)"
        }
        "broker_restart_keeps_topology_and_messages" if !caps.survives_restart => {
            "the backend does not survive a restart (capabilities.survives_restart = false)"
        }
        "global_rate_limit_is_one_bucket_across_connections"
            if caps.global_rate_limits != sluice_core::Support::Native =>
        {
            "the backend keeps no limiter: workers are given one (Redis), tested with it"
        }
        _ => return None,
    };
    Some(reason.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gated_name_is_a_scenario() {
        let mut none = Capabilities::full("none");
        none.filter = sluice_core::Support::Unsupported;
        none.delay = sluice_core::Support::Unsupported;
        none.dedup_window = sluice_core::Support::Unsupported;
        none.backlog_bounds = sluice_core::Support::Unsupported;
        none.ordering = OrderingLevel::None;
        none.replay = false;
        none.reconnects = false;
        none.survives_restart = false;
        none.global_rate_limits = sluice_core::Support::Emulated;
        let gated = SCENARIOS
            .iter()
            .filter(|s| skip_reason(s, &none).is_some())
            .count();
        // 9 gates; the delay gate also covers the three job scenarios that wait for a time,
        // the ordering gate the batch handler's ordering scenario.
        assert_eq!(gated, 13, "each gated name is a listed scenario");
        let full = Capabilities::full("full");
        assert!(SCENARIOS.iter().all(|s| skip_reason(s, &full).is_none()));
    }

    #[test]
    fn scenario_names_are_unique() {
        let mut names = SCENARIOS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
    }
}
