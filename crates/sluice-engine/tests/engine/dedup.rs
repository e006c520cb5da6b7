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
