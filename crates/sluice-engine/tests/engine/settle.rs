//! Settling many leases in one call (`Engine::settle`): each verb gets its own outcome, a
//! stale one is refused without holding up the others, and what was committed survives a
//! crash exactly as single verbs do.

use std::sync::mpsc;
use std::time::Duration;

use sluice_engine::catalog::TopicOptions;
use sluice_engine::engine::{Engine, Settle, Verb};
use sluice_engine::{Error, Result};

use crate::support::*;

/// Settles `verbs` (a lease index and a verb each) in one call; the outcomes in order.
fn settle_all(
    engine: &Engine,
    leased: &[sluice_engine::engine::Leased],
    verbs: &[(usize, u64, Verb)],
) -> Vec<Result<()>> {
    let mut receivers = Vec::new();
    let settles = verbs
        .iter()
        .map(|&(at, token_shift, verb)| {
            let (sender, receiver) = mpsc::sync_channel(1);
            receivers.push(receiver);
            Settle {
                r: leased[at].r,
                token: leased[at].token.wrapping_add(token_shift),
                verb,
                done: Box::new(move |result| {
                    let _ = sender.send(result);
                }),
            }
        })
        .collect();
    engine.settle("billing", settles);
    receivers
        .into_iter()
        .map(|r| {
            r.recv_timeout(Duration::from_secs(30))
                .expect("every verb completes")
        })
        .collect()
}

#[test]
fn given_mixed_verbs_in_one_call_when_one_is_stale_then_only_it_is_refused_and_the_rest_survive_a_crash(
) {
    let (storage, clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    publish_ok(&engine, "orders", &["a", "b", "c", "d"]);
    let leased = receive(&engine, "billing", 1, 4).unwrap();
    assert_eq!(leased.len(), 4);

    let outcomes = settle_all(
        &engine,
        &leased,
        &[
            (0, 0, Verb::Ack),
            (1, 1, Verb::Ack), // a token that is not the lease's: stale
            (2, 0, Verb::Retry { after_ms: 5_000 }),
            (3, 0, Verb::Release),
        ],
    );
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok() && outcomes[3].is_ok());
    assert!(
        matches!(outcomes[1], Err(Error::LeaseLost { .. })),
        "the stale verb is refused: {:?}",
        outcomes[1]
    );
    drop(engine); // a crash: the journal is replayed

    let engine = Engine::open(DATA, options(storage.clone(), &clock)).unwrap();
    let now = receive(&engine, "billing", 1, 10).unwrap();
    let mut got: Vec<(String, u32)> = now
        .iter()
        .map(|l| (l.record.id.clone(), l.attempt))
        .collect();
    got.sort();
    // `b`'s lease did not survive the restart (leases never do): delivered again, attempt 2;
    // `d` was released: attempt 1 again; `a` is settled; `c` waits for its retry.
    assert_eq!(got, vec![("b".into(), 2), ("d".into(), 1)]);
    clock.advance(5_000);
    let later = receive(&engine, "billing", 1, 10).unwrap();
    let later: Vec<(String, u32)> = later
        .iter()
        .map(|l| (l.record.id.clone(), l.attempt))
        .collect();
    assert_eq!(later, vec![("c".into(), 2)], "the retry is due, attempt 2");
}

#[test]
fn given_a_missing_subscription_when_settling_then_every_verb_is_refused_with_not_found() {
    let (_storage, _clock, engine) = mem_engine();
    topic_with_subscription(&engine, "orders", TopicOptions::default(), "billing");
    publish_ok(&engine, "orders", &["a"]);
    let leased = receive(&engine, "billing", 1, 1).unwrap();
    engine.delete_subscription("billing").unwrap();
    let outcomes = settle_all(
        &engine,
        &leased,
        &[(0, 0, Verb::Ack), (0, 0, Verb::Release)],
    );
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, Err(Error::SubscriptionNotFound { .. }))));
}
