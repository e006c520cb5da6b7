//! Corruption at rest through [`MemStorage::corrupt`]: a bad last record of the active
//! segment is a torn tail, cut off at reopen, and the engine goes on; a bad record with valid
//! records after it is damage: open refuses and changes nothing; a bad record in a sealed segment is never
//! skipped: open refuses when it has to scan the segment, and otherwise the read fails.

use std::path::{Path, PathBuf};

use sluice_engine::catalog::TopicOptions;
use sluice_engine::engine::Engine;
use sluice_engine::io::{MemStorage, Storage};
use sluice_engine::log::{index_path, segment_path};
use sluice_engine::segment::{frame_len, FRAME_HEADER_LEN, HEADER_LEN};
use sluice_engine::Error;

use crate::support::*;

const TOPIC_DIR: &str = "/data/topics/orders";

/// Byte position of record `offset`'s frame in its segment, which starts at `base`.
fn frame_position(engine: &Engine, base: u64, offset: u64) -> u64 {
    HEADER_LEN
        + (base..offset)
            .map(|o| frame_len(engine.read("orders", o).unwrap().unwrap().encoded_len()))
            .sum::<u64>()
}

/// Flips the bits of a byte inside the body of record `offset` (of the segment at `base`).
fn flip_record(storage: &MemStorage, engine: &Engine, base: u64, offset: u64) -> PathBuf {
    let path = segment_path(Path::new(TOPIC_DIR), base);
    let position = frame_position(engine, base, offset) + FRAME_HEADER_LEN + 12;
    let byte = storage.file_bytes(&path).expect("the segment exists")[position as usize];
    assert!(
        storage.corrupt(&path, position, &[!byte]),
        "the segment exists"
    );
    path
}

fn published(engine: &Engine, count: usize) -> Vec<String> {
    let ids: Vec<String> = (0..count).map(|i| format!("m{i:03}")).collect();
    for id in &ids {
        publish_ok(engine, "orders", &[id]);
    }
    ids
}

#[test]
fn given_a_flipped_bit_mid_log_in_the_active_segment_when_reopening_then_open_refuses_naming_what_would_be_lost(
) {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    published(&engine, 10);
    let leased = receive(&engine, "billing", 10, 10).unwrap();
    for lease in &leased {
        ack(&engine, "billing", lease).unwrap();
    }
    let path = flip_record(&storage, &engine, 0, 6);
    let bad_frame = frame_position(&engine, 0, 6);
    engine.close().unwrap();
    let before = storage.file_bytes(&path).unwrap();

    let err = Engine::open(DATA, options(storage.clone(), &clock))
        .expect_err("valid records after a bad one: damage, not a torn tail");
    match &err {
        Error::Corrupt {
            file,
            position,
            reason,
        } => {
            assert_eq!(file, &path, "the file is named");
            assert_eq!(*position, bad_frame, "the byte of the bad frame is named");
            assert!(
                reason.contains("offsets 6 to 9"),
                "what would be lost: {reason}"
            );
            assert!(
                reason.contains("docs/durability.md"),
                "what to do next: {reason}"
            );
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    assert_eq!(
        storage.file_bytes(&path).unwrap(),
        before,
        "nothing is zeroed before a decision"
    );
}

#[test]
fn given_a_torn_last_record_when_reopening_then_the_log_ends_before_it_and_the_engine_goes_on() {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    let ids = published(&engine, 10);
    let leased = receive(&engine, "billing", 1, 3).unwrap();
    for lease in &leased {
        ack(&engine, "billing", lease).unwrap();
    }
    flip_record(&storage, &engine, 0, 9);
    engine.close().unwrap();

    let engine = Engine::open(DATA, options(storage.clone(), &clock))
        .expect("the engine opens: nothing valid follows the bad record");
    assert_eq!(
        ids_in_log(&engine, "orders", 20),
        ids[..9].to_vec(),
        "the records before the bad one are kept"
    );
    assert_eq!(
        publish_ok(&engine, "orders", &["new"]),
        vec![9],
        "the log goes on where the good records end"
    );
    let mut expected = ids[3..9].to_vec();
    expected.push("new".into());
    assert_eq!(
        drain(&engine, "billing"),
        expected,
        "the subscription goes on after what it acked"
    );
}

#[test]
fn given_a_subscription_that_acked_a_record_the_log_lost_when_reopening_then_new_messages_never_take_its_offset(
) {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    published(&engine, 10);
    let leased = receive(&engine, "billing", 10, 10).unwrap();
    for lease in &leased {
        ack(&engine, "billing", lease).unwrap();
    }
    // The last record is lost (as an OS crash under `sync = interval` can lose a log's
    // tail while the journal keeps the acks).
    flip_record(&storage, &engine, 0, 9);
    engine.close().unwrap();

    let engine = Engine::open(DATA, options(storage.clone(), &clock)).expect("the engine opens");
    let lost = engine.read("orders", 9).unwrap().expect("offset 9 is kept");
    assert!(
        lost.is_lost(),
        "a placeholder holds the lost offset: {lost:?}"
    );
    assert_eq!(
        publish_ok(&engine, "orders", &["n1", "n2"]),
        vec![10, 11],
        "new messages take offsets after every one the subscription settled"
    );
    assert_eq!(
        drain(&engine, "billing"),
        vec!["n1".to_string(), "n2".to_string()],
        "the new messages are delivered (and the placeholder is not)"
    );
    engine.close().unwrap();
    let engine = Engine::open(DATA, options(storage, &clock)).expect("reopens cleanly");
    assert!(
        drain(&engine, "billing").is_empty(),
        "acked messages never come back"
    );
}

/// Publishes until the topic has at least two sealed segments; returns the ids.
fn publish_past_two_segments(engine: &Engine) -> Vec<String> {
    let ids: Vec<String> = (0..200).map(|i| format!("m{i:03}")).collect();
    for chunk in ids.chunks(20) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        publish_ok(engine, "orders", &chunk);
    }
    ids
}

/// The base of the second segment: the first offset whose frame does not fit in the first.
fn second_segment_base(engine: &Engine) -> u64 {
    (1..200)
        .find(|&o| frame_position(engine, 0, o + 1) > SEGMENT)
        .expect("the records span several segments")
}

#[test]
fn given_a_flipped_bit_in_a_sealed_segment_whose_index_is_lost_when_reopening_then_open_refuses_naming_the_file(
) {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    publish_past_two_segments(&engine);
    let path = flip_record(&storage, &engine, 0, 5);
    engine.close().unwrap();
    storage
        .remove_file(&index_path(Path::new(TOPIC_DIR), 0))
        .expect("the sealed segment has an index");

    match Engine::open(DATA, options(storage.clone(), &clock)) {
        Err(Error::Corrupt { file, reason, .. }) => {
            assert_eq!(file, path, "the error names the segment");
            assert!(
                reason.contains("in a sealed segment"),
                "the reason says where: {reason}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn given_a_flipped_bit_in_a_sealed_segment_with_its_index_when_reading_it_then_the_read_fails_and_dispatch_stops_before_it(
) {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    let ids = publish_past_two_segments(&engine);
    let sealed_end = second_segment_base(&engine);
    assert!(sealed_end > 5, "record 5 is in the first, sealed, segment");
    flip_record(&storage, &engine, 0, 5);
    engine.close().unwrap();

    let engine = Engine::open(DATA, options(storage.clone(), &clock))
        .expect("open trusts a sealed segment's index: recovery reads only the active segment");
    match engine.read("orders", 5) {
        Err(Error::Corrupt { reason, .. }) => {
            assert!(
                reason.contains("record 5"),
                "the error names the record: {reason}"
            );
        }
        other => panic!("reading the bad record: expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        drain(&engine, "billing"),
        ids[..5].to_vec(),
        "dispatch delivers up to the bad record and never skips it"
    );
    assert_eq!(
        engine.read("orders", 199).unwrap().map(|r| r.id),
        Some(ids[199].clone()),
        "records in other segments still read"
    );
}
