//! Retention: whole sealed segments go once every subscription has handled them and the
//! topic's retention (age or size) lets them go; never an unhandled message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_engine::catalog::TopicOptions;
use sluice_engine::engine::Engine;
use sluice_engine::record::MessageRecord;
use sluice_engine::segment::frame_len;

use crate::support::*;

const MINUTE: u64 = 60_000;

fn ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i:04}")).collect()
}

fn publish_many(engine: &Engine, topic: &str, prefix: &str, count: usize) -> Vec<u64> {
    let ids = ids(prefix, count);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    refs.chunks(50)
        .flat_map(|chunk| publish_ok(engine, topic, chunk))
        .collect()
}

/// The first offset of `topic` still readable (up to `end`).
fn first_retained(engine: &Engine, topic: &str, end: u64) -> u64 {
    (0..end)
        .find(|&offset| engine.read(topic, offset).unwrap().is_some())
        .unwrap_or(end)
}

fn by_age(age_ms: u64) -> TopicOptions {
    TopicOptions::default().retention(Some(age_ms), None)
}

#[test]
fn given_old_segments_every_subscription_handled_when_enforcing_retention_then_they_are_removed() {
    let (_storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", by_age(MINUTE), "billing");
    publish_many(&engine, "orders", "m", 300);
    assert_eq!(drain(&engine, "billing").len(), 300, "everything handled");
    clock.advance(MINUTE);

    let report = engine.enforce_retention().expect("retention runs");
    let removed = report
        .topics
        .get("orders")
        .expect("the topic lost segments");
    assert!(
        removed.segments >= 2,
        "several sealed segments: {removed:?}"
    );
    let first = first_retained(&engine, "orders", 300);
    assert_eq!(
        removed.records, first,
        "every offset before the first retained one went"
    );
    assert!(first < 300, "the active segment always stays");
    assert!(
        engine.read("orders", 299).unwrap().is_some(),
        "the newest message is kept"
    );
    assert!(
        engine.enforce_retention().unwrap().is_empty(),
        "a second pass finds nothing more"
    );
}

#[test]
fn given_messages_not_handled_by_every_subscription_when_enforcing_retention_then_no_segment_holding_one_is_removed(
) {
    let (_storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", by_age(MINUTE), "billing");
    subscribe(&engine, "orders", "shipping");
    publish_many(&engine, "orders", "m", 300);
    drain(&engine, "billing");
    let leased = receive(&engine, "shipping", 1, 150).unwrap();
    // Shipping handles 0..70 and leaves 70..150 leased, unacked.
    for lease in leased.iter().take(70) {
        ack(&engine, "shipping", lease).unwrap();
    }
    clock.advance(24 * 60 * MINUTE);

    let report = engine.enforce_retention().unwrap();
    let first = first_retained(&engine, "orders", 300);
    assert!(
        (1..=70).contains(&first),
        "the handled segments went, nothing at or after shipping's low watermark: first retained {first}"
    );
    assert!(
        report
            .topics
            .get("orders")
            .is_some_and(|r| r.records == first),
        "what went is reported: {report:?}"
    );
    for offset in 70..300 {
        assert!(
            engine.read("orders", offset).unwrap().is_some(),
            "unhandled offset {offset} is kept"
        );
    }
    let redelivered = receive(&engine, "shipping", 2, 1000);
    assert!(redelivered.is_ok(), "the subscription goes on reading");
}

#[test]
fn given_segments_younger_than_the_retention_age_when_enforcing_retention_then_they_stay() {
    let (_storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", by_age(MINUTE), "billing");
    publish_many(&engine, "orders", "old", 200);
    clock.advance(MINUTE / 2);
    let young = publish_many(&engine, "orders", "new", 200);
    drain(&engine, "billing");

    assert!(
        engine.enforce_retention().unwrap().is_empty(),
        "nothing is a minute old yet"
    );
    clock.advance(MINUTE / 2);
    let report = engine.enforce_retention().unwrap();
    assert!(
        report.topics.contains_key("orders"),
        "the old messages' segments went: {report:?}"
    );
    for offset in young {
        assert!(
            engine.read("orders", offset).unwrap().is_some(),
            "young message {offset} is kept"
        );
    }
}

#[test]
fn given_a_size_limit_when_enforcing_retention_then_the_oldest_handled_segments_go_until_the_log_fits(
) {
    let (_storage, _clock, engine) = mem_engine();
    let limit = 3 * SEGMENT;
    let options = TopicOptions::default().retention(None, Some(limit));
    topic_with_subscription(&engine, "orders", options, "billing");
    publish_many(&engine, "orders", "m", 600);
    drain(&engine, "billing");

    let report = engine.enforce_retention().unwrap();
    assert!(
        report.topics.contains_key("orders"),
        "the log was too large: {report:?}"
    );
    let first = first_retained(&engine, "orders", 600);
    let retained: u64 = (first..600)
        .map(|offset| {
            let record = engine.read("orders", offset).unwrap().unwrap();
            frame_len(record.encoded_len())
        })
        .sum();
    assert!(
        retained <= limit,
        "the log fits its limit: {retained} bytes of frames"
    );
    assert!(
        retained > limit - 2 * SEGMENT,
        "no more than needed went: {retained} bytes of frames kept"
    );
}

#[test]
fn given_a_topic_without_subscriptions_when_enforcing_retention_then_its_retention_alone_decides() {
    let (_storage, clock, engine) = mem_engine();
    engine.create_topic("audit", by_age(MINUTE)).unwrap();
    engine
        .create_topic("forever", TopicOptions::default())
        .unwrap();
    publish_many(&engine, "audit", "a", 300);
    publish_many(&engine, "forever", "f", 300);
    clock.advance(MINUTE);

    let report = engine.enforce_retention().unwrap();
    assert!(
        report.topics.contains_key("audit"),
        "old messages went: {report:?}"
    );
    assert!(
        !report.topics.contains_key("forever"),
        "a topic without retention keeps everything: {report:?}"
    );
    assert!(engine.read("forever", 0).unwrap().is_some(), "still there");
}

#[test]
fn given_removed_segments_when_the_power_fails_then_the_engine_reopens_without_them_and_delivery_goes_on(
) {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", by_age(MINUTE), "billing");
    publish_many(&engine, "orders", "m", 300);
    drain(&engine, "billing");
    clock.advance(MINUTE);
    engine.enforce_retention().unwrap();
    let first = first_retained(&engine, "orders", 300);
    storage.crash();
    drop(engine);

    let engine = Engine::open(DATA, options(storage.clone(), &clock)).expect("the engine reopens");
    assert_eq!(
        first_retained(&engine, "orders", 300),
        first,
        "the removals were durable"
    );
    assert!(
        drain(&engine, "billing").is_empty(),
        "nothing handled is delivered again"
    );
    subscribe(&engine, "orders", "late");
    let late = drain(&engine, "late");
    assert_eq!(
        late.len() as u64,
        300 - first,
        "a new subscription starts at the first retained message"
    );
    publish_ok(&engine, "orders", &["after"]);
    assert_eq!(
        drain(&engine, "billing"),
        ["after"],
        "new messages are delivered"
    );
}

#[test]
fn given_purged_dead_letters_when_enforcing_retention_then_their_dead_letter_segments_are_removed()
{
    let (_storage, _clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    publish_many(&engine, "orders", "m", 300);
    for lease in receive(&engine, "billing", 1, 300).unwrap() {
        let record: MessageRecord = lease.record.clone();
        wait(|done| {
            engine.dead_letter(
                "billing",
                lease.r,
                lease.token,
                Box::new(move |_attempt, _first_failure| record),
                done,
            )
        })
        .expect("dead-lettered");
    }
    assert!(
        engine
            .enforce_retention()
            .unwrap()
            .dead_letter_logs
            .is_empty(),
        "messages still in the DLQ are kept"
    );
    assert_eq!(wait(|done| engine.dlq_purge("billing", done)).unwrap(), 300);

    let report = engine.enforce_retention().unwrap();
    let removed = report
        .dead_letter_logs
        .get("billing")
        .expect("purged messages' segments went");
    assert!(removed.segments >= 1, "{removed:?}");
    assert!(
        engine.dlq_list("billing", 10).unwrap().is_empty(),
        "the DLQ is empty"
    );
}

/// Waits until `condition` holds, up to `deadline`.
fn eventually(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    condition()
}

#[test]
fn given_a_maintenance_interval_when_time_passes_then_the_background_thread_enforces_retention() {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", by_age(MINUTE), "billing");
    publish_many(&engine, "orders", "m", 300);
    drain(&engine, "billing");
    engine.close().unwrap();
    let engine = Engine::open(
        DATA,
        options(storage.clone(), &clock).maintenance_interval(Some(Duration::from_millis(10))),
    )
    .unwrap();
    assert!(
        engine.read("orders", 0).unwrap().is_some(),
        "nothing is old enough yet"
    );
    clock.advance(MINUTE);
    assert!(
        eventually(Duration::from_secs(10), || engine
            .read("orders", 0)
            .unwrap()
            .is_none()),
        "the maintenance thread removed the old segments"
    );
    engine.close().unwrap();
}

#[test]
fn given_a_long_maintenance_interval_when_closing_then_close_does_not_wait_for_it() {
    let storage = Arc::new(sluice_engine::io::MemStorage::new());
    let clock = Arc::new(sluice_engine::clock::ManualClock::new(T0));
    let engine = Engine::open(
        DATA,
        options(storage, &clock).maintenance_interval(Some(Duration::from_secs(3600))),
    )
    .unwrap();
    let started = Instant::now();
    engine.close().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "close stops the maintenance thread at once: took {:?}",
        started.elapsed()
    );
}
