//! The dedup window survives a restart: it is rebuilt from the log, reading only the
//! segments whose newest message is inside the window.

use sluice_engine::catalog::TopicOptions;
use sluice_engine::engine::Engine;
use sluice_engine::engine::Published;

use crate::support::{mem_engine, options, publish, DATA};

#[test]
fn given_a_restart_when_an_id_inside_the_window_is_published_again_then_it_is_a_duplicate() {
    let (storage, clock, engine) = mem_engine();
    let window = 60_000;
    assert!(engine
        .create_topic(
            "orders",
            TopicOptions::default().dedup_window_ms(Some(window))
        )
        .unwrap()
        .is_none());
    // Enough messages to fill several small segments; the old ones fall out of the window.
    let old: Vec<String> = (0..200).map(|i| format!("old-{i}")).collect();
    let old_refs: Vec<&str> = old.iter().map(String::as_str).collect();
    publish(&engine, "orders", &old_refs).unwrap();
    clock.advance(window + 1);
    publish(&engine, "orders", &["recent"]).unwrap();
    engine.close().unwrap();

    let engine = Engine::open(DATA, options(storage, &clock)).expect("reopens");
    let outcomes = publish(&engine, "orders", &["recent", "old-7"]).unwrap();
    let outcomes: Vec<Published> = outcomes.into_iter().map(|o| o.unwrap()).collect();
    assert_eq!(
        outcomes[0],
        Published::Duplicate,
        "an id inside the window is remembered across a restart"
    );
    assert!(
        matches!(outcomes[1], Published::Stored { .. }),
        "an id older than the window is forgotten: {:?}",
        outcomes[1]
    );
}

/// Publishes take the topic's own write lock, not the engine's state lock: a topic deleted
/// while publishes to it are in flight makes them succeed or fail with "not found", and the
/// engine stays writable. (The interleaving that reaches the topic's `deleted` flag is rare;
/// this checks the outcome over many rounds, not that interleaving.)
#[test]
fn given_publishes_in_flight_when_the_topic_is_deleted_then_they_fail_cleanly_and_the_engine_stays_writable(
) {
    let (_storage, _clock, engine) = mem_engine();
    for round in 0..20 {
        let topic = format!("t{round}");
        assert!(engine
            .create_topic(
                &topic,
                TopicOptions::default().dedup_window_ms(Some(60_000))
            )
            .unwrap()
            .is_none());
        let publisher = {
            let (engine, topic) = (engine.clone(), topic.clone());
            std::thread::spawn(move || {
                for i in 0..50 {
                    match publish(&engine, &topic, &[&format!("m{i}")]) {
                        Ok(_) => {}
                        Err(sluice_engine::Error::TopicNotFound { .. }) => return,
                        Err(err) => panic!("a publish racing a delete failed with {err}"),
                    }
                }
            })
        };
        std::thread::yield_now();
        engine.delete_topic(&topic).unwrap();
        publisher.join().expect("the publisher");
    }
    assert!(engine
        .create_topic("after", TopicOptions::default())
        .unwrap()
        .is_none());
    publish(&engine, "after", &["still-writable"]).expect("the engine is not poisoned");
}
