//! Backlog bounds: a publish that would take a topic's backlog past its bound fails with
//! `BacklogFull` (with a timeout to wait for when the overflow is `Block`), before anything
//! of it is done.

use sluice_engine::catalog::{BacklogBound, Overflow, TopicOptions};
use sluice_engine::engine::{Backlog, Engine, Published};
use sluice_engine::error::BacklogUnit;
use sluice_engine::Error;

use crate::support::*;

fn bounded(max_messages: Option<u64>, max_bytes: Option<u64>, overflow: Overflow) -> TopicOptions {
    TopicOptions::default().backlog(Some(BacklogBound {
        max_messages,
        max_bytes,
        overflow,
    }))
}

/// The fields of a `BacklogFull`, or a panic naming what came instead.
fn full<T: std::fmt::Debug>(
    result: sluice_engine::Result<T>,
) -> (u64, u64, BacklogUnit, String, Option<u64>) {
    match result {
        Err(Error::BacklogFull {
            backlog,
            bound,
            unit,
            slowest,
            block_timeout_ms,
            ..
        }) => (backlog, bound, unit, slowest, block_timeout_ms),
        other => panic!("expected BacklogFull, got {other:?}"),
    }
}

#[test]
fn given_a_rejecting_bound_when_the_backlog_is_full_then_a_publish_fails_at_once_until_consumers_make_room(
) {
    let (_storage, _clock, engine) = mem_engine();
    let options = bounded(Some(3), None, Overflow::Reject);
    topic_with_subscription(&engine, "orders", options, "billing");
    publish_ok(&engine, "orders", &["a", "b", "c"]);

    let (backlog, bound, unit, slowest, block) = full(publish(&engine, "orders", &["d"]));
    assert_eq!(
        (backlog, bound, unit, slowest.as_str(), block),
        (3, 3, BacklogUnit::Messages, "billing", None),
        "the error names the backlog, the bound and the slowest subscription"
    );
    let leased = receive(&engine, "billing", 1, 1).unwrap();
    ack(&engine, "billing", &leased[0]).unwrap();
    assert_eq!(
        publish_ok(&engine, "orders", &["d"]),
        vec![3],
        "an ack made room for one more"
    );
}

#[test]
fn given_a_blocking_bound_when_the_backlog_is_full_then_the_error_carries_the_timeout_unless_waiting_cannot_help(
) {
    let (_storage, _clock, engine) = mem_engine();
    let options = bounded(Some(3), None, Overflow::Block { timeout_ms: 250 });
    topic_with_subscription(&engine, "orders", options, "billing");
    publish_ok(&engine, "orders", &["a", "b"]);

    let (backlog, _, _, _, block) = full(publish(&engine, "orders", &["c", "d"]));
    assert_eq!(
        (backlog, block),
        (2, Some(250)),
        "a publisher may wait up to the timeout for room"
    );
    drain(&engine, "billing");
    let (_, _, _, _, block) = full(publish(&engine, "orders", &["1", "2", "3", "4"]));
    assert_eq!(
        block, None,
        "a batch larger than the bound never fits: no waiting"
    );
    publish_ok(&engine, "orders", &["c", "d"]);
}

#[test]
fn given_a_byte_bound_when_publishing_then_the_frames_after_the_slowest_low_watermark_count() {
    let (_storage, _clock, engine) = mem_engine();
    let options = bounded(None, Some(1000), Overflow::Reject);
    topic_with_subscription(&engine, "orders", options, "billing");
    let mut stored = 0;
    let err = loop {
        match publish(&engine, "orders", &[&format!("m{stored}")]) {
            Ok(_) => stored += 1,
            Err(err) => break err,
        }
    };
    let (backlog, bound, unit, _, _) = full::<()>(Err(err));
    assert_eq!(
        (bound, unit),
        (1000, BacklogUnit::Bytes),
        "the byte bound refused it"
    );
    assert!(stored > 5, "several messages fit first: {stored}");
    let Backlog {
        messages, bytes, ..
    } = engine.backlog("orders").unwrap();
    assert_eq!(
        (messages, bytes),
        (stored, backlog),
        "backlog() agrees with the error"
    );
    assert!(bytes <= 1000, "the bound was never exceeded: {bytes}");
}

#[test]
fn given_several_subscriptions_when_the_backlog_is_full_then_the_one_furthest_behind_is_named() {
    let (_storage, _clock, engine) = mem_engine();
    let options = bounded(Some(2), None, Overflow::Reject);
    topic_with_subscription(&engine, "orders", options, "billing");
    subscribe(&engine, "orders", "shipping");
    publish_ok(&engine, "orders", &["a", "b"]);
    drain(&engine, "billing");

    let (_, _, _, slowest, _) = full(publish(&engine, "orders", &["c"]));
    assert_eq!(slowest, "shipping", "billing caught up; shipping did not");
    assert_eq!(
        engine.backlog("orders").unwrap().slowest.as_deref(),
        Some("shipping"),
        "backlog() names it too"
    );
}

#[test]
fn given_a_topic_without_subscriptions_when_publishing_past_the_bound_then_nothing_is_refused() {
    let (_storage, _clock, engine) = mem_engine();
    engine
        .create_topic("audit", bounded(Some(1), Some(10), Overflow::Reject))
        .unwrap();
    publish_ok(&engine, "audit", &["a", "b", "c"]);
    assert_eq!(
        engine.backlog("audit").unwrap(),
        Backlog::default(),
        "no subscription, no backlog"
    );
}

#[test]
fn given_a_refused_publish_when_publishing_the_same_id_later_then_it_is_not_taken_for_a_duplicate()
{
    let (_storage, _clock, engine) = mem_engine();
    let options = bounded(Some(1), None, Overflow::Reject).dedup_window_ms(Some(60_000));
    topic_with_subscription(&engine, "orders", options, "billing");
    publish_ok(&engine, "orders", &["a"]);
    full(publish(&engine, "orders", &["b"]));
    drain(&engine, "billing");
    let outcomes = publish(&engine, "orders", &["b"]).unwrap();
    assert!(
        matches!(outcomes[..], [Ok(Published::Stored { .. })]),
        "the refused publish made no dedup claim: {outcomes:?}"
    );
}

#[test]
fn given_a_bounded_topic_when_the_engine_reopens_then_the_bound_still_applies() {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(
        &engine,
        "orders",
        bounded(Some(1), None, Overflow::Reject),
        "billing",
    );
    engine
        .create_topic("free", TopicOptions::default())
        .unwrap();
    publish_ok(&engine, "orders", &["a"]);
    engine.close().unwrap();

    let engine = Engine::open(DATA, options(storage, &clock)).unwrap();
    full(publish(&engine, "orders", &["b"]));
    publish_ok(&engine, "free", &["x", "y"]);
}
