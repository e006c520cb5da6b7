//! The keyed store (job status, cancellations, schedules): every confirmed write survives a
//! power cut, a torn tail, checkpoints and restarts; versions are never given twice; a
//! failed sync fails the write; damage at rest is refused, found by `check` and salvaged by
//! `repair`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sluice_engine::check::{check_with, repair_with};
use sluice_engine::clock::ManualClock;
use sluice_engine::engine::Engine;
use sluice_engine::io::{FaultyStorage, MemStorage, Storage};
use sluice_engine::kv::KvRecord;
use sluice_engine::log::segment_path;
use sluice_engine::segment::{frame_len, FRAME_HEADER_LEN, HEADER_LEN};
use sluice_engine::Error;

use crate::support::*;

const DAY: u64 = 86_400_000;

fn swap(
    engine: &Engine,
    key: &str,
    expected: Option<u64>,
    value: &str,
) -> sluice_engine::Result<Option<u64>> {
    wait(|done| engine.kv_swap(key, expected, value.as_bytes(), DAY, done))
}

fn remove(engine: &Engine, key: &str, expected: u64) -> sluice_engine::Result<bool> {
    wait(|done| engine.kv_remove(key, expected, done))
}

/// Every live entry, by key: value and version.
fn contents(engine: &Engine) -> BTreeMap<String, (String, u64)> {
    engine
        .kv_scan("", usize::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, e)| (k, (String::from_utf8(e.value).unwrap(), e.version)))
        .collect()
}

/// A deterministic stream of swaps and removes over a few keys; the confirmed model.
fn churn(engine: &Engine, model: &mut BTreeMap<String, (String, u64)>, seed: u64, steps: usize) {
    let mut x = seed | 1;
    for step in 0..steps {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = format!("job/{}", x % 23);
        let current = model.get(&key).map(|(_, v)| *v);
        if x.is_multiple_of(5) {
            if let Some(version) = current {
                assert!(remove(engine, &key, version).unwrap(), "{key} is there");
                model.remove(&key);
            }
            continue;
        }
        let value = format!("{{\"step\":{step},\"seed\":{seed}}}");
        let version = swap(engine, &key, current, &value)
            .unwrap()
            .expect("the version read is current");
        model.insert(key, (value, version));
    }
}

#[test]
fn an_engine_that_never_stores_a_key_has_no_keyed_store_on_disk() {
    let (storage, _clock, engine) = mem_engine();
    assert!(engine.kv_get("job/a").unwrap().is_none());
    assert!(engine.kv_scan("", 10, usize::MAX).unwrap().is_empty());
    assert!(!remove(&engine, "job/a", 1).unwrap());
    engine.close().unwrap();
    assert!(!storage.exists(Path::new("/data/kv")).unwrap());
}

#[test]
fn given_confirmed_writes_across_checkpoints_when_the_power_fails_then_every_one_is_there_and_versions_go_on(
) {
    let storage = Arc::new(MemStorage::new());
    let clock = Arc::new(ManualClock::new(T0));
    // One wrapper per engine: a crashed engine's threads (a checkpoint under way) can write
    // nothing after the crash, as a dead process could not.
    let open = || {
        let faulty = Arc::new(FaultyStorage::new(SharedMem(storage.clone())));
        let engine = Engine::open(DATA, options(faulty.clone(), &clock).checkpoint_every(7))
            .expect("the engine opens");
        (faulty, engine)
    };
    let mut model = BTreeMap::new();
    let mut newest = 0;
    for round in 0..6u64 {
        let (faulty, engine) = open();
        assert_eq!(
            contents(&engine),
            model,
            "round {round}: the confirmed state"
        );
        churn(&engine, &mut model, 0x9E37_79B9 + round, 60);
        let version = swap(&engine, &format!("fresh/{round}"), None, "x")
            .unwrap()
            .unwrap();
        assert!(
            version > newest,
            "versions only grow: {version} after {newest}"
        );
        newest = version;
        model.insert(format!("fresh/{round}"), ("x".into(), version));
        faulty.break_now();
        if round.is_multiple_of(2) {
            storage.crash_torn(round);
        } else {
            storage.crash();
        }
        drop(engine);
    }
    let (_faulty, engine) = open();
    assert_eq!(contents(&engine), model);
    assert!(
        storage
            .list_dir(Path::new("/data/kv/journal"))
            .unwrap()
            .len()
            < 20,
        "checkpoints trim the journal"
    );
}

#[test]
fn only_one_of_many_concurrent_swaps_over_one_version_wins() {
    let (_storage, _clock, engine) = mem_engine();
    let first = swap(&engine, "unique/report", None, "0").unwrap().unwrap();
    let winners: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let engine = &engine;
                scope.spawn(move || {
                    swap(engine, "unique/report", Some(first), &i.to_string())
                        .unwrap()
                        .is_some()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(winners.iter().filter(|w| **w).count(), 1, "{winners:?}");
}

#[test]
fn entries_expire_with_the_engine_clock_and_a_checkpoint_forgets_them() {
    let (storage, clock, engine) = mem_engine();
    let short = wait(|done| engine.kv_swap("short", None, b"v", 1_000, done))
        .unwrap()
        .unwrap();
    swap(&engine, "long", None, "v").unwrap().unwrap();
    clock.advance(999);
    assert!(engine.kv_get("short").unwrap().is_some());
    clock.advance(1);
    assert!(engine.kv_get("short").unwrap().is_none(), "expired");
    assert!(
        !remove(&engine, "short", short).unwrap(),
        "absent for every call"
    );
    assert!(
        wait(|done| engine.kv_swap("short", None, b"again", 500, done))
            .unwrap()
            .is_some(),
        "written over as absent"
    );
    clock.advance(1_000);
    engine.kv_checkpoint().unwrap();
    engine.close().unwrap();
    let engine = Engine::open(DATA, options(storage.clone(), &clock)).unwrap();
    assert_eq!(
        contents(&engine).keys().collect::<Vec<_>>(),
        ["long"],
        "expired entries are not restored"
    );
}

#[test]
fn keys_and_values_past_the_limits_are_refused_with_the_limit() {
    let (_storage, _clock, engine) = mem_engine();
    let err = wait(|done| engine.kv_swap("", None, b"v", DAY, done)).unwrap_err();
    assert!(
        err.to_string().contains("keys are 1 to 1024 bytes"),
        "{err}"
    );
    let big = vec![b'x'; 1024 * 1024 + 1];
    let err = wait(|done| engine.kv_swap("k", None, &big, DAY, done)).unwrap_err();
    assert!(err.to_string().contains("at most 1048576 bytes"), "{err}");
}

#[test]
fn given_the_sync_fails_when_swapping_then_the_swap_fails_and_a_restart_keeps_what_was_confirmed() {
    let storage = Arc::new(FaultyStorage::new(MemStorage::new()));
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Engine::open(DATA, options(storage.clone(), &clock)).unwrap();
    let kept = swap(&engine, "job/kept", None, "1").unwrap().unwrap();
    storage.fail_nth_sync(1);
    let err = swap(&engine, "job/lost", None, "2").unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    assert!(matches!(
        swap(&engine, "job/later", None, "3"),
        Err(Error::Poisoned { .. })
    ));
    storage.inner().crash();
    drop(engine);
    let engine = Engine::open(DATA, options(storage.clone(), &clock)).unwrap();
    let now = contents(&engine);
    assert_eq!(now.get("job/kept"), Some(&("1".to_owned(), kept)));
    assert!(!now.contains_key("job/later"));
}

/// A store with records in its checkpoint and in its journal, closed without a final
/// checkpoint (as a crash leaves it).
fn store_with_journal(storage: &Arc<MemStorage>, clock: &Arc<ManualClock>) {
    let engine = Engine::open(DATA, options(storage.clone(), clock)).unwrap();
    for i in 0..5 {
        swap(&engine, &format!("old/{i}"), None, "checkpointed").unwrap();
    }
    engine.kv_checkpoint().unwrap();
    for i in 0..5 {
        swap(&engine, &format!("new/{i}"), None, "journalled").unwrap();
    }
    storage.crash();
}

#[test]
fn a_damaged_checkpoint_is_refused_found_by_check_and_repair_keeps_every_readable_record() {
    let storage = Arc::new(MemStorage::new());
    let clock = Arc::new(ManualClock::new(T0));
    store_with_journal(&storage, &clock);
    let checkpoint = Path::new("/data/kv/checkpoint");
    let bytes = storage.file_bytes(checkpoint).unwrap();
    storage.corrupt(checkpoint, 20, &[!bytes[20]]);

    let err = Engine::open(DATA, options(storage.clone(), &clock)).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    let report = check_with(storage.clone(), Path::new(DATA), false).unwrap();
    assert!(report.is_damaged(), "{report}");
    assert!(
        report.findings.iter().any(|f| f.file == checkpoint),
        "{report}"
    );

    let repaired = repair_with(
        storage.clone(),
        Path::new(DATA),
        false,
        options(storage.clone(), &clock),
    )
    .unwrap();
    assert!(!repaired.actions.is_empty(), "{repaired:?}");
    let engine = Engine::open(DATA, options(storage.clone(), &clock)).unwrap();
    let keys: Vec<String> = contents(&engine).into_keys().collect();
    // The journal's one segment still holds the checkpointed records too: nothing is lost.
    assert_eq!(
        keys,
        [
            "new/0", "new/1", "new/2", "new/3", "new/4", "old/0", "old/1", "old/2", "old/3",
            "old/4"
        ],
        "every readable journal record is replayed"
    );
    assert!(
        swap(&engine, "after", None, "v").unwrap().unwrap() > 10,
        "versions go on past every version the journal names"
    );
}

#[test]
fn a_damaged_journal_record_with_records_after_it_is_refused_and_repair_keeps_the_rest() {
    let storage = Arc::new(MemStorage::new());
    let clock = Arc::new(ManualClock::new(T0));
    store_with_journal(&storage, &clock);
    let journal = Path::new("/data/kv/journal");
    let base = storage
        .list_dir(journal)
        .unwrap()
        .iter()
        .filter_map(|n| n.strip_suffix(".seg")?.parse::<u64>().ok())
        .max()
        .unwrap();
    let segment = segment_path(journal, base);
    // The sixth record (`new/0`): damage with valid records after it.
    let old = KvRecord::Put {
        key: "old/0".into(),
        version: 1,
        expires_ms: 0,
        value: b"checkpointed".to_vec(),
    };
    let at = HEADER_LEN + 5 * frame_len(old.encode().len()) + FRAME_HEADER_LEN + 3;
    let bytes = storage.file_bytes(&segment).unwrap();
    storage.corrupt(&segment, at, &[!bytes[at as usize]]);

    let err = Engine::open(DATA, options(storage.clone(), &clock)).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    let report = check_with(storage.clone(), Path::new(DATA), false).unwrap();
    assert!(report.is_damaged(), "{report}");

    repair_with(
        storage.clone(),
        Path::new(DATA),
        false,
        options(storage.clone(), &clock),
    )
    .unwrap();
    let engine = Engine::open(DATA, options(storage.clone(), &clock)).unwrap();
    let keys: Vec<String> = contents(&engine).into_keys().collect();
    assert_eq!(
        keys,
        ["new/1", "new/2", "new/3", "new/4", "old/0", "old/1", "old/2", "old/3", "old/4"],
        "only the damaged record is lost"
    );
    engine.close().unwrap();
    assert!(check_with(storage.clone(), Path::new(DATA), false)
        .unwrap()
        .is_clean());
}

#[test]
fn a_write_the_journal_cannot_hold_is_refused_before_anything_changes() {
    let (storage, clock, engine) = mem_engine();
    let first = swap(&engine, "job/a", None, "small").unwrap().unwrap();
    let big = "x".repeat(SEGMENT as usize);
    let err = swap(&engine, "job/a", Some(first), &big).unwrap_err();
    assert!(
        err.to_string().contains("journal holds records of at most"),
        "{err}"
    );
    assert_eq!(
        contents(&engine).get("job/a"),
        Some(&("small".to_owned(), first)),
        "the refused write left nothing behind"
    );
    let second = swap(&engine, "job/a", Some(first), "next")
        .unwrap()
        .unwrap();
    engine.kv_checkpoint().unwrap();
    let third = swap(&engine, "job/b", None, "after").unwrap().unwrap();
    storage.crash();
    drop(engine);
    let engine = Engine::open(DATA, options(storage.clone(), &clock)).unwrap();
    let now = contents(&engine);
    assert_eq!(now.get("job/a"), Some(&("next".to_owned(), second)));
    assert_eq!(now.get("job/b"), Some(&("after".to_owned(), third)));
}

#[test]
fn after_a_restart_versions_start_past_the_clock_s_microseconds() {
    let (storage, clock, engine) = mem_engine();
    let before = swap(&engine, "job/a", None, "1").unwrap().unwrap();
    assert!(
        before > T0 * 1000,
        "a new store starts past the clock too: {before}"
    );
    // A write applied in memory, seen by a load, then lost with the power: its version must
    // never be given again.
    storage.crash();
    drop(engine);
    clock.advance(1);
    let engine = Engine::open(DATA, options(storage.clone(), &clock)).unwrap();
    let after = swap(&engine, "job/b", None, "2").unwrap().unwrap();
    assert!(after > (T0 + 1) * 1000, "{after}");
    assert!(after > before);
}
