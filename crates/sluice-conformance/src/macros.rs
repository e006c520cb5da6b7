//! [`conformance_tests!`](crate::conformance_tests): one test per scenario for a backend's
//! `tests/conformance.rs`, and the single list of scenario names everything else uses.

/// Calls `$crate::$callback!{ $args ; scenario, scenario, … }` with every scenario name: the
/// one list of scenarios, used by [`conformance_tests!`](crate::conformance_tests) and
/// [`SCENARIOS`](crate::SCENARIOS).
#[doc(hidden)]
#[macro_export]
macro_rules! __with_scenarios {
    ($callback:ident ! ( $($args:tt)* )) => {
        $crate::$callback! {
            $($args)* ;
            // basic
            round_trip_keeps_id_payload_headers_and_keys,
            competing_consumers_share_work_without_loss,
            ack_removes_message,
            // routing
            fan_out_delivers_to_every_subscription,
            filter_matches_routing_key_patterns,
            topic_isolation,
            // publish
            publishing_to_a_missing_topic_is_not_found,
            batch_publish_returns_one_result_per_message,
            oversized_message_is_a_clear_error,
            publisher_close_flushes,
            delayed_publish_not_delivered_early,
            dedup_window_drops_duplicate_publish,
            // backlog
            backlog_bound_rejects_or_blocks_when_full,
            // lease
            retry_redelivers_no_earlier_than_asked_with_next_attempt,
            lease_expiry_redelivers_with_next_attempt,
            release_redelivers_at_declared_attempt,
            extend_lease_keeps_delivery_reserved,
            verb_after_lease_expiry_is_lease_lost_or_harmless,
            // dlq
            dead_letter_moves_to_dlq_with_envelope,
            redrive_returns_messages_with_attempt_one,
            stats_count_ready_in_flight_and_dead_lettered,
            // ordering
            ordering_per_key_at_declared_level,
            // topology
            ensure_with_other_config_is_a_conflict_naming_the_field,
            subscription_name_is_unique_across_topics,
            delete_subscription_and_topic,
            start_position_latest_skips_earlier_messages,
            start_position_earliest_replays,
            // connection
            consumer_close_loses_nothing,
            connection_loss_then_reconnect_loses_no_confirmed_message,
            broker_restart_keeps_topology_and_messages,
            // jobs
            jobs_one_job_per_tick_across_replicas_one_killed_mid_tick,
            jobs_cancelled_before_due_never_run,
            jobs_replaced_run_once_with_the_new_body,
            jobs_unique_modes_hold_and_release,
            // flow control
            global_rate_limit_is_one_bucket_across_connections,
            key_limit_keeps_one_keys_backlog_from_holding_up_another,
            // batch handlers
            batch_handler_settles_each_message_on_its_own,
            batch_handler_holds_a_keys_later_messages_back_when_one_is_retried,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __scenario_names {
    (; $($scenario:ident),* $(,)?) => {
        &[$(stringify!($scenario)),*]
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($harness:expr ; $($scenario:ident),* $(,)?) => {
        $(
            #[test]
            fn $scenario() {
                $crate::__private::run(async {
                    let harness = $harness;
                    let scenario = $crate::scenarios::$scenario(&harness);
                    $crate::__private::within_limit(&harness, stringify!($scenario), scenario)
                        .await
                });
            }
        )*
    };
}

/// Generates one test per conformance scenario, each on its own multi-threaded tokio runtime
/// with two worker threads (what `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`
/// expands to, built here so the backend's test crate needs no tokio features of its own).
///
/// The argument is an expression evaluated inside each test's runtime (it may `.await`) that
/// yields a [`Harness`](crate::Harness):
///
/// ```text
/// struct MemoryHarness(MemoryBackend);
/// impl sluice_conformance::Harness for MemoryHarness { /* … */ }
///
/// sluice_conformance::conformance_tests!(MemoryHarness(MemoryBackend::new()));
/// ```
///
/// A scenario fails by panicking with a message that says what was expected; a scenario the
/// backend cannot run prints `SKIPPED <backend>::<scenario>: <reason>` to stderr and passes.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr $(,)?) => {
        $crate::__with_scenarios!(__conformance_tests!($harness));
    };
}

/// What the generated tests call. Not part of the API.
#[doc(hidden)]
pub mod __private {
    use std::future::Future;

    use crate::fixture::Outcome;
    use crate::harness::Harness;

    /// Runs a test body on a fresh two-worker runtime.
    pub fn run<F: Future>(body: F) -> F::Output {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("building the test runtime")
            .block_on(body)
    }

    /// Held shared by every scenario of this process, and exclusively by the ones that
    /// disturb the whole broker (a restart), so those never run beside another.
    static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

    /// Runs a scenario, failing the test if it outlives the harness's scenario limit.
    pub async fn within_limit<H: Harness>(
        harness: &H,
        name: &str,
        scenario: impl Future<Output = Outcome>,
    ) {
        let (_shared, _exclusive);
        if crate::scenarios::EXCLUSIVE.contains(&name) {
            _exclusive = BROKER.write().await;
        } else {
            _shared = BROKER.read().await;
        }
        let limit = harness.timing().scenario_limit();
        // A skip was printed by the scenario itself; a failure is a panic.
        match tokio::time::timeout(limit, scenario).await {
            Ok(Outcome::Passed | Outcome::Skipped(_)) => {}
            Err(_) => panic!(
                "{}::{name} did not finish within {limit:?}: the backend hangs",
                harness.name()
            ),
        }
    }
}
