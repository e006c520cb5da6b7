//! The promises of docs/durability.md that single scenarios show: dedup answers only after
//! durability, dead-letters survive any crash order, subscriptions without a DLQ keep sane
//! counters, checkpoints are checked, deletes never poison the engine.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use sluice_engine::catalog::{Start, SubscriptionOptions, TopicOptions};
use sluice_engine::clock::ManualClock;
use sluice_engine::engine::{Engine, Published};
use sluice_engine::io::{FaultyStorage, MemStorage, Storage};
use sluice_engine::log::segment_path;
use sluice_engine::record::MessageRecord;
use sluice_engine::Error;

use crate::support::*;

/// Publishes without waiting; the outcome arrives on the returned channel.
fn publish_later(
    engine: &Engine,
    topic: &str,
    records: Vec<MessageRecord>,
) -> mpsc::Receiver<sluice_engine::Result<Vec<sluice_engine::Result<Published>>>> {
    let (tx, rx) = mpsc::channel();
    engine.publish(
        topic,
        records,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx
}

/// An engine on fault-injecting memory storage.
fn faulty_engine() -> (Arc<FaultyStorage<MemStorage>>, Engine) {
    let faulty = Arc::new(FaultyStorage::new(MemStorage::new()));
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Engine::open(DATA, options(faulty.clone(), &clock)).unwrap();
    (faulty, engine)
}

fn dead_letter(engine: &Engine, subscription: &str, lease: &sluice_engine::engine::Leased) {
    let record = lease.record.clone();
    wait(|done| {
        engine.dead_letter(
            subscription,
            lease.r,
            lease.token,
            Box::new(move |_attempts, _first| record),
            done,
        )
    })
    .expect("the dead-letter is confirmed");
}

#[test]
fn given_a_publish_not_yet_durable_when_the_same_id_is_published_then_the_duplicate_waits_for_it() {
    let (faulty, engine) = faulty_engine();
    engine
        .create_topic(
            "orders",
            TopicOptions::default().dedup_window_ms(Some(60_000)),
        )
        .unwrap();
    faulty.set_sync_delay(Duration::from_millis(300));
    let first_rx = publish_later(&engine, "orders", vec![record("order-1")]);
    let second_rx = publish_later(&engine, "orders", vec![record("order-1")]);
    let first = first_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    assert!(matches!(first[0], Ok(Published::Stored { offset: 0 })));
    let second = second_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    assert!(
        matches!(second[0], Ok(Published::Duplicate)),
        "a duplicate once the first is confirmed: {second:?}"
    );
    faulty.set_sync_delay(Duration::ZERO);
}

#[test]
fn given_the_first_publish_of_an_id_fails_when_a_duplicate_waited_for_it_then_the_duplicate_is_not_confirmed(
) {
    let (faulty, engine) = faulty_engine();
    engine
        .create_topic(
            "orders",
            TopicOptions::default().dedup_window_ms(Some(60_000)),
        )
        .unwrap();
    faulty.set_sync_delay(Duration::from_millis(300));
    faulty.fail_nth_sync(1);
    let first_rx = publish_later(&engine, "orders", vec![record("order-1")]);
    let second = publish(&engine, "orders", &["order-1"]);
    let first = first_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(first.is_err(), "the first publish failed its sync");
    let confirmed_duplicate =
        matches!(&second, Ok(outcomes) if matches!(outcomes[0], Ok(Published::Duplicate)));
    assert!(
        !confirmed_duplicate,
        "a duplicate of a publish that failed is never confirmed: {second:?}"
    );
}

#[test]
fn given_a_dead_letter_whose_dlq_record_was_lost_when_reopening_then_the_message_is_delivered_again(
) {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    publish_ok(&engine, "orders", &["poison"]);
    let leased = receive(&engine, "billing", 1, 1).unwrap();
    dead_letter(&engine, "billing", &leased[0]);
    drop(engine); // a crash: no checkpoint, the journal is replayed
                  // The journal kept `dead-lettered` but the DLQ record did not survive (unsynced writes
                  // are lost in any order across files): its frame is torn.
    let dlq = segment_path(Path::new("/data/subscriptions/billing/dlq"), 0);
    assert!(
        storage.corrupt(&dlq, 32 + 20, &[0xEE]),
        "tear the DLQ record"
    );

    let engine = Engine::open(DATA, options(storage.clone(), &clock)).unwrap();
    assert!(engine.dlq_list("billing", 10).unwrap().is_empty());
    let again = receive(&engine, "billing", 1, 1).unwrap();
    assert_eq!(again.len(), 1, "the message is not lost: delivered again");
    assert_eq!(again[0].record.id, "poison");
    dead_letter(&engine, "billing", &again[0]);
    engine.close().unwrap();

    // The old `dead-lettered` record names the DLQ offset the new one took: it must not be
    // replayed against it.
    let engine = Engine::open(DATA, options(storage, &clock)).unwrap();
    let ids: Vec<String> = engine
        .dlq_list("billing", 10)
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, vec!["poison".to_string()], "in the DLQ once");
    assert!(drain(&engine, "billing").is_empty(), "and settled");
}

#[test]
fn given_a_subscription_without_a_dlq_when_dead_lettering_then_counters_and_dlq_tools_stay_sane() {
    let (storage, clock, engine) = mem_engine();
    engine
        .create_topic("orders", TopicOptions::default())
        .unwrap();
    let mut options_ = SubscriptionOptions::new("orders");
    options_.start = Start::Earliest;
    options_.dead_letter_queue = false;
    engine.create_subscription("billing", options_).unwrap();
    publish_ok(&engine, "orders", &["a", "b"]);
    for lease in receive(&engine, "billing", 1, 2).unwrap() {
        dead_letter(&engine, "billing", &lease);
    }
    let stats = engine.stats("billing").unwrap();
    assert_eq!(
        stats.dead_lettered, 0,
        "dropped, not counted in a DLQ: {stats:?}"
    );
    assert!(engine.dlq_list("billing", 10).unwrap().is_empty());
    let purged = wait(|done| engine.dlq_purge("billing", done)).unwrap();
    assert_eq!(purged, 0, "purge has nothing to iterate");
    engine.close().unwrap();
    let engine = Engine::open(DATA, options(storage, &clock)).unwrap();
    assert_eq!(engine.stats("billing").unwrap().dead_lettered, 0);
    assert!(
        drain(&engine, "billing").is_empty(),
        "the dropped messages stay settled"
    );
}

#[test]
fn given_a_flipped_bit_in_a_checkpoint_when_reopening_then_open_refuses_naming_it() {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    publish_ok(&engine, "orders", &["a", "b", "c"]);
    for lease in receive(&engine, "billing", 1, 2).unwrap() {
        ack(&engine, "billing", &lease).unwrap();
    }
    engine.close().unwrap(); // checkpoints every subscription
    let checkpoint = Path::new("/data/subscriptions/billing/checkpoint");
    let bytes = storage.file_bytes(checkpoint).expect("a checkpoint");
    // The low watermark sits after the frame header, the type byte and the position.
    let at = 8 + 1 + 16;
    assert!(storage.corrupt(checkpoint, at as u64, &[bytes[at] ^ 0x01]));
    match Engine::open(DATA, options(storage, &clock)) {
        Err(Error::Corrupt { file, reason, .. }) => {
            assert_eq!(file, checkpoint, "{reason}");
            assert!(reason.contains("CRC"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn given_a_checkpoint_past_the_journal_end_when_reopening_then_later_acks_are_not_skipped_by_replay(
) {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    publish_ok(&engine, "orders", &["a", "b", "c", "d"]);
    for lease in receive(&engine, "billing", 1, 2).unwrap() {
        ack(&engine, "billing", &lease).unwrap();
    }
    engine.close().unwrap();
    // An OS crash under `sync = interval` kept the checkpoint and lost the journal's tail:
    // here the whole journal is lost.
    let journal = segment_path(Path::new("/data/subscriptions/billing/journal"), 0);
    let len = storage.file_bytes(&journal).unwrap().len();
    assert!(storage.corrupt(&journal, 32, &vec![0; len - 32]));

    let engine = Engine::open(DATA, options(storage.clone(), &clock)).unwrap();
    let leased = receive(&engine, "billing", 1, 1).unwrap();
    assert_eq!(leased[0].record.id, "c", "the checkpoint's acks hold");
    ack(&engine, "billing", &leased[0]).unwrap();
    drop(engine); // no clean close: no new checkpoint, replay must find the ack

    let engine = Engine::open(DATA, options(storage, &clock)).unwrap();
    assert_eq!(
        drain(&engine, "billing"),
        vec!["d".to_string()],
        "the ack journalled after the reopen is replayed"
    );
}

#[test]
fn given_a_leftover_directory_of_a_deleted_topic_when_the_topic_is_created_again_then_it_starts_empty(
) {
    let (storage, clock, engine) = mem_engine();
    engine
        .create_topic(
            "orders",
            TopicOptions::default().dedup_window_ms(Some(60_000)),
        )
        .unwrap();
    publish_ok(&engine, "orders", &["old-1", "old-2"]);
    engine.close().unwrap();
    // A delete whose directory removal was cut short: the catalog forgot the topic, its
    // directory stayed.
    let catalog = br#"{"version":1,"topics":{},"subscriptions":{}}"#;
    let file = storage.open(Path::new("/data/catalog"), false).unwrap();
    file.set_len(0).unwrap();
    file.write_at(catalog, 0).unwrap();
    file.sync_all().unwrap();

    let engine = Engine::open(DATA, options(storage, &clock)).unwrap();
    engine
        .create_topic(
            "orders",
            TopicOptions::default().dedup_window_ms(Some(60_000)),
        )
        .unwrap();
    assert!(
        engine.read("orders", 0).unwrap().is_none(),
        "old messages do not come back"
    );
    assert_eq!(
        publish_ok(&engine, "orders", &["old-1"]),
        vec![0],
        "old dedup ids do not come back"
    );
}

#[test]
fn given_a_publish_queued_when_its_topic_is_deleted_then_it_fails_as_not_found_and_the_engine_stays_writable(
) {
    let (faulty, engine) = faulty_engine();
    engine
        .create_topic("orders", TopicOptions::default())
        .unwrap();
    engine
        .create_topic("other", TopicOptions::default())
        .unwrap();
    // A slow sync keeps the flusher busy, so the next publishes queue behind it.
    faulty.set_sync_delay(Duration::from_millis(200));
    let busy_rx = publish_later(&engine, "other", vec![record("x")]);
    std::thread::sleep(Duration::from_millis(20)); // let the flusher take the first batch
    let big = MessageRecord {
        payload: vec![7u8; 3000].into(),
        ..record("big")
    };
    // Enough bytes to roll a segment in the deleted directory.
    let queued: Vec<_> = (0..3)
        .map(|_| publish_later(&engine, "orders", vec![big.clone()]))
        .collect();
    engine.delete_topic("orders").unwrap();
    faulty.set_sync_delay(Duration::ZERO);
    busy_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    for rx in queued {
        match rx.recv_timeout(Duration::from_secs(10)).unwrap() {
            Ok(_) | Err(Error::TopicNotFound { .. }) => {}
            Err(other) => panic!("a queued publish to a deleted topic fails as not found: {other}"),
        }
    }
    assert!(engine.poisoned().is_none(), "the engine is not poisoned");
    assert_eq!(
        publish_ok(&engine, "other", &["y"]),
        vec![1],
        "and stays writable"
    );
}

#[test]
fn given_a_log_of_many_segments_when_subscribing_at_a_time_then_it_starts_at_the_first_message_published_then(
) {
    let (_storage, clock, engine) = mem_engine();
    engine
        .create_topic("orders", TopicOptions::default())
        .unwrap();
    for batch in 0..3 {
        let ids: Vec<String> = (0..60).map(|i| format!("b{batch}-{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        publish_ok(&engine, "orders", &refs);
        clock.advance(10_000);
    }
    let mut options_ = SubscriptionOptions::new("orders");
    options_.start = Start::At(T0 + 10_000);
    options_.prefetch = 1_000;
    engine.create_subscription("late", options_).unwrap();
    let got = drain(&engine, "late");
    assert_eq!(got.len(), 120, "batches 1 and 2");
    assert_eq!(
        got[0], "b1-0",
        "starts at the first message published at or after the time"
    );
    let mut options_ = SubscriptionOptions::new("orders");
    options_.start = Start::At(T0 + 60_000);
    engine.create_subscription("future", options_).unwrap();
    assert!(
        drain(&engine, "future").is_empty(),
        "a time after every message starts at the end"
    );
}

#[test]
fn given_many_dead_letters_when_redriving_each_by_id_then_each_is_found_once_and_purge_empties_the_index(
) {
    let (_storage, _clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    let ids: Vec<String> = (0..50).map(|i| format!("d{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    publish_ok(&engine, "orders", &refs);
    for lease in receive(&engine, "billing", 1, 50).unwrap() {
        dead_letter(&engine, "billing", &lease);
    }
    for id in ids.iter().rev().take(25) {
        let found = wait(|done| engine.dlq_redrive("billing", id, done)).unwrap();
        assert!(found, "{id} is found in the DLQ");
        let again = wait(|done| engine.dlq_redrive("billing", id, done)).unwrap();
        assert!(!again, "{id} left the DLQ with its redrive");
    }
    // A dead-letter after the index was built is found too.
    let back = receive(&engine, "billing", 1, 1).unwrap();
    let back_id = back[0].record.id.clone();
    dead_letter(&engine, "billing", &back[0]);
    assert!(wait(|done| engine.dlq_redrive("billing", &back_id, done)).unwrap());
    let purged = wait(|done| engine.dlq_purge("billing", done)).unwrap();
    assert_eq!(purged, 25);
    assert!(
        !wait(|done| engine.dlq_redrive("billing", "d0", done)).unwrap(),
        "purged"
    );
}

/// Found by the simulation (seed 8714): a delete whose catalog write failed had already
/// forgotten the subscription in memory, so creating the name again wiped its directory.
#[test]
fn given_a_failed_catalog_write_when_deleting_a_subscription_then_it_is_still_there_with_its_dlq() {
    let (faulty, engine) = faulty_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    publish_ok(&engine, "orders", &["poison"]);
    let leased = receive(&engine, "billing", 1, 1).unwrap();
    dead_letter(&engine, "billing", &leased[0]);
    faulty.fail_nth_write(1);
    assert!(
        engine.delete_subscription("billing").is_err(),
        "the catalog write fails"
    );
    assert!(
        engine.subscription("billing").is_ok(),
        "so the subscription is still there"
    );
    let existing = engine
        .create_subscription("billing", SubscriptionOptions::new("orders"))
        .unwrap();
    assert!(
        existing.is_some(),
        "creating it again finds it instead of wiping it"
    );
    assert_eq!(
        engine.dlq_list("billing", 10).unwrap().len(),
        1,
        "its DLQ is kept"
    );
    assert!(
        engine.delete_topic("orders").is_ok(),
        "and a later delete works"
    );
}

#[test]
fn given_a_sparse_filter_when_receiving_once_then_a_matching_message_far_down_the_log_is_delivered()
{
    let (_storage, _clock, engine) = mem_engine();
    engine
        .create_topic("orders", TopicOptions::default())
        .unwrap();
    let mut options_ = SubscriptionOptions::new("orders");
    options_.start = Start::Earliest;
    options_.filter = Some("eu.#".into());
    engine.create_subscription("eu-only", options_).unwrap();
    for chunk in 0..30 {
        let records: Vec<MessageRecord> = (0..300)
            .map(|i| MessageRecord {
                routing_key: Some("us.east".into()),
                ..record(&format!("us-{chunk}-{i}"))
            })
            .collect();
        wait(|done| engine.publish("orders", records, done)).unwrap();
    }
    let eu = MessageRecord {
        routing_key: Some("eu.paris".into()),
        ..record("eu-1")
    };
    wait(|done| engine.publish("orders", vec![eu], done)).unwrap();
    let leased = receive(&engine, "eu-only", 1, 10).unwrap();
    assert_eq!(
        leased.len(),
        1,
        "one receive walks past 9 000 unselected messages"
    );
    assert_eq!(leased[0].record.id, "eu-1");
}

#[test]
fn given_interval_sync_when_the_final_sync_at_close_fails_then_close_reports_it() {
    let faulty = Arc::new(FaultyStorage::new(MemStorage::new()));
    let clock = Arc::new(ManualClock::new(T0));
    let options_ = options(faulty.clone(), &clock).sync(sluice_engine::commit::SyncMode::Interval(
        Duration::from_secs(3600),
    ));
    let engine = Engine::open(DATA, options_).unwrap();
    engine
        .create_topic("orders", TopicOptions::default())
        .unwrap();
    publish_ok(&engine, "orders", &["a"]); // confirmed once written
    faulty.fail_nth_sync(1);
    let closed = engine.close();
    assert!(
        matches!(closed, Err(Error::Poisoned { .. })),
        "a confirmed write that may not be durable is reported: {closed:?}"
    );
}

#[test]
fn given_a_checkpoint_under_way_when_the_subscription_is_deleted_and_created_again_then_the_new_one_keeps_its_own_state(
) {
    let (faulty, engine) = faulty_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    publish_ok(&engine, "orders", &["a", "b", "c"]);
    for lease in receive(&engine, "billing", 1, 3).unwrap() {
        ack(&engine, "billing", &lease).unwrap();
    }
    // A slow sync holds the checkpoint in its barrier while the name is deleted and created.
    faulty.set_sync_delay(Duration::from_millis(200));
    let rx = publish_later(&engine, "orders", vec![record("d")]);
    let checkpointing = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.checkpoint("billing"))
    };
    engine.delete_subscription("billing").unwrap();
    subscribe(&engine, "orders", "billing");
    checkpointing.join().unwrap().unwrap();
    rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    faulty.set_sync_delay(Duration::ZERO);
    engine.checkpoint("billing").unwrap();
    drop(engine);
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Engine::open(DATA, options(faulty, &clock)).unwrap();
    assert_eq!(
        drain(&engine, "billing"),
        ["a", "b", "c", "d"],
        "the new subscription starts from the beginning, not from the old one's acks"
    );
}
