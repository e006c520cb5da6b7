//! Fault injection through [`FaultyStorage`]: a failed sync fails its operation and poisons
//! the engine (every later write fails with `Poisoned`, reads keep working), and a restart
//! recovers.

use std::sync::Arc;

use sluice_engine::catalog::TopicOptions;
use sluice_engine::clock::ManualClock;
use sluice_engine::engine::Engine;
use sluice_engine::io::{FaultyStorage, MemStorage};
use sluice_engine::subscription::Ref;
use sluice_engine::Error;

use crate::support::*;

fn faulty_engine() -> (Arc<FaultyStorage<MemStorage>>, Arc<ManualClock>, Engine) {
    let storage = Arc::new(FaultyStorage::new(MemStorage::new()));
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Engine::open(DATA, options(storage.clone(), &clock)).expect("the engine opens");
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    (storage, clock, engine)
}

fn assert_poisoned<T: std::fmt::Debug>(result: sluice_engine::Result<T>, what: &str) {
    match result {
        Err(err @ Error::Poisoned { .. }) => {
            let message = err.to_string();
            assert!(
                message.contains("fdatasync /data/topics/orders/")
                    && message.contains("injected fault: sync number"),
                "{what}: the message names the failed operation, its file and the OS error: {message}"
            );
            assert!(
                message.ends_with("the engine refuses further writes; restart to recover"),
                "{what}: the message says what to do: {message}"
            );
        }
        other => panic!("{what}: expected Poisoned, got {other:?}"),
    }
}

#[test]
fn given_the_next_sync_fails_when_publishing_then_that_publish_fails_and_every_later_write_is_refused_as_poisoned(
) {
    let (storage, _clock, engine) = faulty_engine();
    publish_ok(&engine, "orders", &["a", "b", "c"]);
    let leased = receive(&engine, "billing", 1, 1).unwrap();
    assert_eq!(leased.len(), 1, "one lease taken before the fault");

    storage.fail_nth_sync(1);
    assert_poisoned(
        publish(&engine, "orders", &["d"]),
        "the publish whose sync failed",
    );
    assert!(
        engine.poisoned().is_some(),
        "the engine says it is poisoned"
    );
    assert_poisoned(publish(&engine, "orders", &["e"]), "a later publish");
    assert_poisoned(ack(&engine, "billing", &leased[0]), "a later ack");
    assert_poisoned(
        receive(&engine, "billing", 2, 1),
        "a later receive (it journals)",
    );

    for (offset, id) in ["a", "b", "c"].iter().enumerate() {
        let record = engine
            .read("orders", offset as u64)
            .expect("reads keep working");
        assert_eq!(
            record.map(|r| r.id).as_deref(),
            Some(*id),
            "confirmed message {offset} still reads"
        );
    }
    assert!(
        engine.stats("billing").is_ok(),
        "stats keep working on a poisoned engine"
    );
    assert!(
        matches!(engine.enforce_retention(), Err(Error::Poisoned { .. })),
        "a poisoned engine deletes nothing"
    );
}

#[test]
fn given_a_poisoned_engine_when_restarting_then_every_confirmed_message_is_there_once_and_writes_work_again(
) {
    let (storage, clock, engine) = faulty_engine();
    publish_ok(&engine, "orders", &["a", "b"]);
    let leased = receive(&engine, "billing", 1, 1).unwrap();
    storage.fail_nth_sync(1);
    assert!(
        publish(&engine, "orders", &["lost"]).is_err(),
        "the publish whose sync failed is not confirmed"
    );
    assert!(
        ack(&engine, "billing", &leased[0]).is_err(),
        "the ack after the fault is not confirmed"
    );
    assert!(
        matches!(engine.close(), Err(Error::Poisoned { .. })),
        "close reports that the final checkpoints could not be written"
    );

    let engine = Engine::open(DATA, options(storage.clone(), &clock)).expect("the engine reopens");
    assert!(
        engine.poisoned().is_none(),
        "a restart clears the poisoning"
    );
    let ids = ids_in_log(&engine, "orders", 10);
    assert_eq!(&ids[..2], ["a", "b"], "the confirmed messages, in order");
    assert!(
        ids.len() <= 3 && ids[2..].iter().all(|id| id == "lost"),
        "an unconfirmed publish may survive (its bytes were written), at most once: {ids:?}"
    );
    let delivered = receive(&engine, "billing", 1, 10).unwrap();
    let first = delivered
        .iter()
        .find(|l| l.r == Ref::Topic(0))
        .expect("the message whose ack failed is delivered again");
    assert_eq!(first.attempt, 2, "its lease ended without a confirmed verb");
    let offsets = publish_ok(&engine, "orders", &["after"]);
    assert_eq!(
        offsets,
        vec![ids.len() as u64],
        "publishing works again, after what the log holds"
    );
}

#[test]
fn given_the_next_write_fails_when_acking_then_the_ack_fails_and_the_message_comes_back_after_a_restart(
) {
    let (storage, clock, engine) = faulty_engine();
    publish_ok(&engine, "orders", &["a"]);
    let leased = receive(&engine, "billing", 1, 1).unwrap();
    storage.fail_nth_write(1);
    let err = ack(&engine, "billing", &leased[0]).expect_err("the ack's write fails");
    assert!(
        matches!(err, Error::Poisoned { ref cause } if cause.contains("write /data/subscriptions/billing/journal/")),
        "the failed write names the journal segment: {err}"
    );
    assert!(
        matches!(
            publish(&engine, "orders", &["b"]),
            Err(Error::Poisoned { .. })
        ),
        "a publish after a failed write is refused"
    );
    drop(engine);

    let engine = Engine::open(DATA, options(storage.clone(), &clock)).expect("the engine reopens");
    let again = receive(&engine, "billing", 1, 1).unwrap();
    assert_eq!(
        again.iter().map(|l| (l.r, l.attempt)).collect::<Vec<_>>(),
        vec![(Ref::Topic(0), 2)],
        "the unconfirmed ack did not settle the message"
    );
}
