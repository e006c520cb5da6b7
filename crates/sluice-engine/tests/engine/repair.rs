//! `check` and `repair` of a data directory: damage is found without changing anything, and
//! salvaged without losing a readable record.

use std::path::Path;
use std::sync::Arc;

use sluice_engine::catalog::TopicOptions;
use sluice_engine::check::{check_with, repair_with, Severity};
use sluice_engine::engine::{Engine, EngineOptions};
use sluice_engine::io::{MemStorage, Storage};
use sluice_engine::segment::{frame_len, FRAME_HEADER_LEN, HEADER_LEN};
use sluice_engine::Error;

use crate::support::*;

const SEGMENT0: &str = "/data/topics/orders/00000000000000000000.seg";

/// Ten messages in `orders`, the first `acked` of them acked by `billing`; then the engine
/// is closed and a byte inside record `flip` is flipped.
fn damaged(
    acked: usize,
    flip: u64,
) -> (Arc<MemStorage>, Arc<sluice_engine::clock::ManualClock>, u64) {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    for i in 0..10 {
        publish_ok(&engine, "orders", &[&format!("m{i}")]);
    }
    let leased = receive(&engine, "billing", 1, 10).unwrap();
    for lease in leased.iter().take(acked) {
        ack(&engine, "billing", lease).unwrap();
    }
    let position = HEADER_LEN
        + (0..flip)
            .map(|o| frame_len(engine.read("orders", o).unwrap().unwrap().encoded_len()))
            .sum::<u64>();
    engine.close().unwrap();
    let path = Path::new(SEGMENT0);
    let byte = storage.file_bytes(path).unwrap()[(position + FRAME_HEADER_LEN + 12) as usize];
    assert!(storage.corrupt(path, position + FRAME_HEADER_LEN + 12, &[!byte]));
    (storage, clock, position)
}

fn repaired(storage: &Arc<MemStorage>, clock: &Arc<sluice_engine::clock::ManualClock>) -> String {
    let dyn_storage: Arc<dyn Storage> = storage.clone();
    let report = repair_with(
        dyn_storage,
        Path::new(DATA),
        false,
        options(storage.clone(), clock),
    )
    .expect("repair salvages the directory");
    report.to_string()
}

#[test]
fn given_a_flipped_bit_mid_log_when_checking_then_the_damage_is_reported_and_nothing_changes() {
    let (storage, _clock, position) = damaged(10, 6);
    let before = storage.file_bytes(Path::new(SEGMENT0)).unwrap();
    let dyn_storage: Arc<dyn Storage> = storage.clone();
    let report = check_with(dyn_storage, Path::new(DATA), false).unwrap();
    assert!(report.is_damaged(), "{report}");
    let finding = report
        .findings
        .iter()
        .find(|f| f.severity == Severity::Damage)
        .unwrap();
    assert_eq!(finding.file, Path::new(SEGMENT0));
    assert_eq!(finding.position, Some(position), "{report}");
    assert!(finding.problem.contains("offsets 6 to 6 lost"), "{report}");
    assert_eq!(
        storage.file_bytes(Path::new(SEGMENT0)).unwrap(),
        before,
        "check changes nothing"
    );
}

#[test]
fn given_a_flipped_bit_mid_log_when_repairing_then_every_readable_record_is_kept_and_new_messages_are_delivered(
) {
    let (storage, clock, _) = damaged(10, 6);
    let text = repaired(&storage, &clock);
    assert!(text.contains("offsets 6 to 6 are lost"), "{text}");
    let quarantine = storage.list_dir(Path::new("/data/quarantine")).unwrap();
    assert!(
        quarantine.iter().any(|n| n.ends_with(".bin"))
            && quarantine.contains(&"REPORT.txt".to_string()),
        "the damaged bytes are kept with a report: {quarantine:?}"
    );
    let engine = Engine::open(DATA, options(storage.clone(), &clock)).expect("opens again");
    let ids: Vec<String> = (0..10)
        .map(|o| engine.read("orders", o).unwrap().unwrap())
        .filter(|m| !m.is_lost())
        .map(|m| m.id)
        .collect();
    assert_eq!(
        ids,
        ["m0", "m1", "m2", "m3", "m4", "m5", "m7", "m8", "m9"],
        "records after the damage are kept"
    );
    assert!(
        engine.read("orders", 6).unwrap().unwrap().is_lost(),
        "a placeholder keeps offset 6"
    );
    assert_eq!(publish_ok(&engine, "orders", &["new"]), vec![10]);
    assert_eq!(
        drain(&engine, "billing"),
        vec!["new".to_string()],
        "nothing acked comes back; the new one is delivered"
    );
    let dyn_storage: Arc<dyn Storage> = storage.clone();
    engine.close().unwrap();
    assert!(check_with(dyn_storage, Path::new(DATA), false)
        .unwrap()
        .is_clean());
}

#[test]
fn given_unacked_messages_after_the_damage_when_repairing_then_they_are_still_delivered() {
    let (storage, clock, _) = damaged(0, 5);
    repaired(&storage, &clock);
    let engine = Engine::open(DATA, options(storage, &clock)).unwrap();
    assert_eq!(
        drain(&engine, "billing"),
        ["m0", "m1", "m2", "m3", "m4", "m6", "m7", "m8", "m9"],
        "every readable message is delivered; the placeholder is not"
    );
}

#[test]
fn given_a_clean_directory_when_checking_and_repairing_then_nothing_is_found_or_done() {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    publish_ok(&engine, "orders", &["a", "b"]);
    engine.close().unwrap();
    let dyn_storage: Arc<dyn Storage> = storage.clone();
    let report = check_with(dyn_storage, Path::new(DATA), false).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.records, 2, "two messages: {report}");
    assert!(repaired(&storage, &clock).contains("nothing to repair"));
}

#[test]
fn given_a_damaged_checkpoint_when_repairing_then_it_is_quarantined_and_the_state_comes_from_the_journal(
) {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    publish_ok(&engine, "orders", &["a", "b", "c"]);
    let leased = receive(&engine, "billing", 1, 1).unwrap();
    ack(&engine, "billing", &leased[0]).unwrap();
    engine.close().unwrap();
    let checkpoint = Path::new("/data/subscriptions/billing/checkpoint");
    let bytes = storage.file_bytes(checkpoint).unwrap();
    assert!(storage.corrupt(checkpoint, 30, &[bytes[30] ^ 0x80]));
    assert!(matches!(
        Engine::open(DATA, options(storage.clone(), &clock)),
        Err(Error::Corrupt { .. })
    ));
    let text = repaired(&storage, &clock);
    assert!(text.contains("checkpoint"), "{text}");
    let engine = Engine::open(DATA, options(storage, &clock)).unwrap();
    assert_eq!(
        drain(&engine, "billing"),
        ["b", "c"],
        "the ack in the journal holds"
    );
}

#[test]
fn given_an_engine_holding_the_directory_when_checking_then_it_is_refused_as_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open(tmp.path(), EngineOptions::default()).unwrap();
    assert!(matches!(
        sluice_engine::check::check(tmp.path()),
        Err(Error::InUse { .. })
    ));
    assert!(matches!(
        sluice_engine::check::repair(tmp.path()),
        Err(Error::InUse { .. })
    ));
    engine.close().unwrap();
    assert!(sluice_engine::check::check(tmp.path()).unwrap().is_clean());
}

#[test]
fn given_a_damaged_journal_record_mid_journal_when_repairing_then_the_state_is_rebuilt_and_nothing_is_lost(
) {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    publish_ok(&engine, "orders", &["m0", "m1", "m2", "m3", "m4"]);
    let leased = receive(&engine, "billing", 1, 5).unwrap();
    for lease in leased.iter().take(3) {
        ack(&engine, "billing", lease).unwrap();
    }
    drop(engine); // a crash: the state is only in the journal
                  // Journal: one `delivered` per message (5), then the acks of m0, m1, m2; damage the ack of
                  // m1 (the 7th record), with the ack of m2 after it.
    let journal = Path::new("/data/subscriptions/billing/journal/00000000000000000000.seg");
    let bytes = storage.file_bytes(journal).unwrap();
    let mut pos = HEADER_LEN as usize;
    for _ in 0..6 {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 8 + len;
    }
    assert!(storage.corrupt(journal, pos as u64 + 9, &[bytes[pos + 9] ^ 0x40]));
    let opened = Engine::open(DATA, options(storage.clone(), &clock));
    assert!(
        matches!(opened, Err(Error::Corrupt { .. })),
        "{:?}",
        opened.map(|_| ())
    );
    let text = repaired(&storage, &clock);
    assert!(text.contains("rebuilt"), "{text}");
    let engine = Engine::open(DATA, options(storage.clone(), &clock)).unwrap();
    assert_eq!(
        drain(&engine, "billing"),
        ["m1", "m3", "m4"],
        "the ack lost in the damage is delivered again; the others hold"
    );
    engine.close().unwrap();
    let dyn_storage: Arc<dyn Storage> = storage;
    assert!(check_with(dyn_storage, Path::new(DATA), false)
        .unwrap()
        .is_clean());
}
