//! A randomized run checked against a plain model: competing consumers apply random verbs
//! while time moves. After every step the subscription's invariants hold; at the end every
//! message was settled (acked or dead-lettered) exactly once, each ordering key in publish
//! order, and no key ever had two live leases at once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sluice_core::{Backend, Delivery, Error, Message};
use tokio::time::{advance, Instant};

use super::{fixture, ready_now, sub};
use crate::{MemoryDelivery, MemorySubscriber};

/// xorshift64*: deterministic, good enough to pick verbs.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

const MESSAGES: usize = 60;
const KEYS: [Option<&str>; 4] = [Some("k0"), Some("k1"), Some("k2"), None];

#[tokio::test(start_paused = true)]
async fn random_verbs_never_lose_duplicate_or_reorder_a_message() {
    for seed in 1..=20 {
        run(seed).await;
    }
}

async fn run(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let f = fixture().await;
    let config = f.config().lease(Duration::from_secs(5)).prefetch(4);
    let first = f.subscribe("billing", config).await;
    let mut subscribers: Vec<MemorySubscriber> = vec![first];
    for _ in 0..2 {
        subscribers.push(f.backend.subscribe(&sub("billing")).await.unwrap());
    }
    let mut key_of = HashMap::new();
    for i in 0..MESSAGES {
        let id = format!("m{i:03}");
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        let mut builder = Message::builder("x").id(&id);
        if let Some(key) = key {
            builder = builder.ordering_key(key);
        }
        f.publish(builder.build().unwrap()).await;
        key_of.insert(id, key);
    }

    let mut held: Vec<MemoryDelivery> = Vec::new();
    let mut settled: BTreeMap<String, &str> = BTreeMap::new();
    let mut settle_order: HashMap<&str, Vec<String>> = HashMap::new();
    let mut dead_lettered = 0;
    for step in 0..5_000 {
        if settled.len() == MESSAGES {
            break;
        }
        let subscriber = &subscribers[rng.below(subscribers.len() as u64) as usize];
        for delivery in ready_now(subscriber, 1 + rng.below(4) as usize).await {
            let key = key_of[delivery.message().id().as_str()];
            if let Some(key) = key {
                let now = Instant::now().into_std();
                assert!(
                    !held.iter().any(|other| {
                        key_of[other.message().id().as_str()] == Some(key)
                            && other.lease_deadline() > now
                    }),
                    "seed {seed} step {step}: two live leases for key {key}"
                );
            }
            held.push(delivery);
        }
        let mut keep = Vec::new();
        for delivery in held.drain(..) {
            let id = delivery.message().id().to_string();
            let expired = delivery.lease_deadline() <= Instant::now().into_std();
            let result = match rng.below(20) {
                0..=9 => delivery.ack().await.map(|()| "acked"),
                10..=12 => delivery
                    .retry(Duration::from_millis(rng.below(3_000)))
                    .await
                    .map(|()| "retried"),
                13..=14 => delivery.release().await.map(|()| "released"),
                15 => delivery.dead_letter("poison".into()).await.map(|()| "dead"),
                16..=17 => Ok("dropped"),
                _ => {
                    keep.push(delivery);
                    continue;
                }
            };
            match result {
                Ok(outcome @ ("acked" | "dead")) => {
                    assert!(!expired, "seed {seed}: a verb succeeded after expiry");
                    let before = settled.insert(id.clone(), outcome);
                    assert_eq!(before, None, "seed {seed}: {id} settled twice");
                    dead_lettered += usize::from(outcome == "dead");
                    if let Some(key) = key_of[&id] {
                        settle_order.entry(key).or_default().push(id);
                    }
                }
                Ok(_) => assert!(!expired, "seed {seed}: a verb succeeded after expiry"),
                Err(failed) => assert!(
                    matches!(failed.error, Error::LeaseLost { .. }) && expired,
                    "seed {seed}: only an expired lease may fail, got {}",
                    failed.error
                ),
            }
        }
        held = keep;
        advance(Duration::from_millis(rng.below(2_000))).await;
        f.backend.with_state(|state, _, _| {
            state
                .subscription(&sub("billing"))
                .unwrap()
                .check_invariants()
        });
    }
    assert_eq!(
        settled.len(),
        MESSAGES,
        "seed {seed}: every message is eventually settled"
    );
    for (key, order) in settle_order {
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(
            order, sorted,
            "seed {seed}: key {key} settled in publish order"
        );
    }
    let stats = f.backend.stats(&sub("billing")).await.unwrap();
    assert_eq!(stats.dead_lettered, Some(dead_lettered as u64));
    assert_eq!(stats.backlog(), Some(0), "seed {seed}: nothing left");
}
