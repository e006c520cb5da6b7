//! Crashes through [`MemStorage::crash`] and [`MemStorage::crash_torn`]: after reopening,
//! every confirmed message is present exactly once, no confirmed ack is undone, and the
//! subscription's state agrees with the log.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_engine::catalog::TopicOptions;
use sluice_engine::clock::ManualClock;
use sluice_engine::engine::{Engine, Published};
use sluice_engine::io::MemStorage;
use sluice_engine::subscription::Ref;

use crate::support::*;

#[test]
fn given_confirmed_publishes_and_acks_when_the_power_fails_then_each_message_is_there_once_and_no_acked_one_comes_back(
) {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    let ids: Vec<String> = (0..200).map(|i| format!("m{i:03}")).collect();
    for batch in ids.chunks(20) {
        let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
        publish_ok(&engine, "orders", &batch);
    }
    let leased = receive(&engine, "billing", 1, 100).unwrap();
    for lease in &leased[..60] {
        ack(&engine, "billing", lease).unwrap();
    }
    storage.crash();
    drop(engine);

    let engine = Engine::open(DATA, options(storage.clone(), &clock)).expect("the engine reopens");
    assert_eq!(
        ids_in_log(&engine, "orders", 300),
        ids,
        "every confirmed message, once, in order"
    );
    let redelivered = receive(&engine, "billing", 1, 1000).unwrap();
    let offsets: Vec<u64> = redelivered
        .iter()
        .map(|l| match l.r {
            Ref::Topic(offset) => offset,
            Ref::Dlq(offset) => panic!("nothing was dead-lettered, got DLQ offset {offset}"),
        })
        .collect();
    assert_eq!(
        offsets,
        (60..200).collect::<Vec<u64>>(),
        "acked messages are not delivered again; the others are, in order"
    );
    for lease in &redelivered {
        let expected = if lease.r < Ref::Topic(100) { 2 } else { 1 };
        assert_eq!(
            lease.attempt, expected,
            "{}: a lease lost in the crash counts as an attempt",
            lease.r
        );
    }
    let stats = engine.stats("billing").unwrap();
    assert_eq!(
        (stats.ready, stats.in_flight),
        (0, 140),
        "the state agrees with what was delivered"
    );
}

/// What a run saw confirmed before and around the crash.
#[derive(Default)]
struct Confirmed {
    published: BTreeSet<String>,
    acked: BTreeSet<String>,
}

fn crash_while_writing(seed: u64) {
    let storage = Arc::new(MemStorage::new());
    let clock = Arc::new(ManualClock::new(T0));
    // No automatic checkpoints: their threads could outlive the crash and write into the
    // world after it, which a process killed by a power cut cannot (see the checkpoint test
    // below for crashes around checkpoints).
    let engine = Engine::open(DATA, options(storage.clone(), &clock)).unwrap();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    let confirmed = Arc::new(Mutex::new(Confirmed::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (engine, confirmed, stop) = (engine.clone(), confirmed.clone(), stop.clone());
        std::thread::spawn(move || {
            for batch in 0..400u64 {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let ids: Vec<String> = (0..5).map(|i| format!("s{seed}-b{batch}-{i}")).collect();
                let records = ids.iter().map(|id| record(id)).collect();
                let confirmed = confirmed.clone();
                // Not waiting for the completion: publishes pile up behind the flusher.
                engine.publish(
                    "orders",
                    records,
                    Box::new(move |result| {
                        if let Ok(outcomes) = result {
                            let mut confirmed = confirmed.lock().unwrap();
                            for (id, outcome) in ids.into_iter().zip(outcomes) {
                                if matches!(outcome, Ok(Published::Stored { .. })) {
                                    confirmed.published.insert(id);
                                }
                            }
                        }
                    }),
                );
                if batch % 8 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        })
    };
    // Consume and ack while publishes go on, then cut the power at a point that depends on
    // the seed.
    let crash_after = 20 + (seed as usize * 97) % 900;
    let deadline = Instant::now() + Duration::from_secs(20);
    while confirmed.lock().unwrap().published.len() < crash_after && Instant::now() < deadline {
        if let Ok(leased) = receive(&engine, "billing", 1, 16) {
            for lease in leased {
                if ack(&engine, "billing", &lease).is_ok() {
                    confirmed
                        .lock()
                        .unwrap()
                        .acked
                        .insert(lease.record.id.clone());
                }
            }
        }
    }
    storage.crash_torn(seed);
    let confirmed_at_crash = {
        let c = confirmed.lock().unwrap();
        (c.published.clone(), c.acked.clone())
    };
    stop.store(true, Ordering::SeqCst);
    publisher.join().unwrap();
    drop(engine);
    // Completions that ran after the crash instant were for batches synced before it.
    let (published, acked) = {
        let c = confirmed.lock().unwrap();
        (c.published.clone(), c.acked.clone())
    };
    assert!(
        confirmed_at_crash.0.len() >= crash_after,
        "seed {seed}: the crash came after {crash_after} confirmed publishes"
    );
    assert!(
        confirmed_at_crash.0.is_subset(&published),
        "seed {seed}: confirmations only grow"
    );

    let engine = Engine::open(DATA, options(storage.clone(), &clock))
        .unwrap_or_else(|err| panic!("seed {seed}: the engine reopens after a torn crash: {err}"));
    let end = 400 * 5 + 1;
    let mut in_log: BTreeMap<String, u32> = BTreeMap::new();
    for id in ids_in_log(&engine, "orders", end) {
        *in_log.entry(id).or_default() += 1;
    }
    for id in &published {
        assert_eq!(
            in_log.get(id),
            Some(&1),
            "seed {seed}: confirmed message {id} is in the log exactly once"
        );
    }
    assert!(
        in_log.values().all(|&n| n == 1),
        "seed {seed}: no message is in the log twice"
    );
    let redelivered: BTreeSet<String> = drain(&engine, "billing").into_iter().collect();
    let again: Vec<&String> = redelivered.intersection(&acked).collect();
    assert!(
        again.is_empty(),
        "seed {seed}: confirmed acks are never undone, yet {again:?} came back"
    );
    let handled: BTreeSet<&String> = acked.iter().chain(&redelivered).collect();
    for id in &published {
        assert!(
            handled.contains(id),
            "seed {seed}: confirmed message {id} was neither acked before the crash nor delivered after it"
        );
    }
    engine.close().unwrap();
}

#[test]
fn given_publishes_and_acks_in_flight_when_the_power_fails_mid_write_then_every_confirmed_one_survives(
) {
    for seed in 0..12 {
        crash_while_writing(seed);
    }
}

#[test]
fn given_a_checkpoint_between_acks_when_the_power_fails_then_acks_before_and_after_it_hold() {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    let ids: Vec<String> = (0..30).map(|i| format!("m{i:02}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    publish_ok(&engine, "orders", &refs);
    let leased = receive(&engine, "billing", 1, 30).unwrap();
    for lease in &leased[..10] {
        ack(&engine, "billing", lease).unwrap();
    }
    engine
        .checkpoint("billing")
        .expect("the checkpoint is written");
    for lease in &leased[20..] {
        ack(&engine, "billing", lease).unwrap();
    }
    storage.crash();
    drop(engine);

    let engine = Engine::open(DATA, options(storage.clone(), &clock)).expect("the engine reopens");
    assert_eq!(
        drain(&engine, "billing"),
        ids[10..20].to_vec(),
        "only the messages never acked come back: the checkpoint and the journal after it agree"
    );
}
