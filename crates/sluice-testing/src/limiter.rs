//! [`check_limiter`]: the behaviour every [`LimiterStore`] must have, for a store's own tests.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::limit::{LimiterStore, Rate, SlotsRequest};

/// Checks `store` against the [`LimiterStore`] contract and panics on the first difference:
/// a new limit starts full and grants at most its burst, an empty one names the wait for the
/// next token, tokens given back never pass the burst, and of 32 concurrent takes on a fresh
/// limit exactly its burst is granted (no token taken twice). Uses fresh random names, so
/// it can run against a shared store. The rates are so slow that no token refills meanwhile.
/// Then its global concurrency slots ([`LimiterStore::slots`]): see `check_slots`.
pub async fn check_limiter(store: Arc<dyn LimiterStore>) {
    let slow = Rate {
        per_second: 0.001,
        burst: 10,
    };
    let name = format!("check-{}", uuid::Uuid::now_v7());
    let take = |give_back: u32, want: u32| {
        let store = store.clone();
        let name = name.clone();
        async move { store.take(&name, slow, give_back, want).await.unwrap() }
    };
    assert_eq!(take(0, 4).await.granted, 4, "a new limit starts full");
    assert_eq!(take(0, 10).await.granted, 6, "at most the burst in all");
    let empty = take(0, 1).await;
    assert_eq!(empty.granted, 0, "an empty limit grants nothing");
    assert!(
        empty.retry_after > Duration::from_secs(500),
        "the next token of 0.001/s is far off: {:?}",
        empty.retry_after
    );
    assert_eq!(take(3, 0).await.granted, 0, "want 0 only gives back");
    assert_eq!(take(0, 10).await.granted, 3, "what was given back");
    assert_eq!(take(50, 0).await.granted, 0);
    assert_eq!(take(0, 100).await.granted, 10, "never past the burst");

    let fresh = format!("check-{}", uuid::Uuid::now_v7());
    let five = Rate {
        per_second: 0.001,
        burst: 5,
    };
    let takes = (0..32).map(|_| {
        let store = store.clone();
        let fresh = fresh.clone();
        tokio::spawn(async move { store.take(&fresh, five, 0, 1).await.unwrap().granted })
    });
    let mut granted = 0;
    for take in takes {
        granted += take.await.unwrap();
    }
    assert_eq!(granted, 5, "32 concurrent takes share the burst of 5");

    check_slots(store).await;
}

/// Global concurrency slots ([`LimiterStore::slots`]): bounded across holders, given back,
/// shared exactly by concurrent takers, and lost by a holder that stops calling.
async fn check_slots(store: Arc<dyn LimiterStore>) {
    let name = format!("check-slots-{}", uuid::Uuid::now_v7());
    let call = |holder: &'static str, hold: u32, want: u32, ttl: Duration| {
        let (store, name) = (store.clone(), name.clone());
        async move {
            let request = SlotsRequest {
                max: 3,
                hold,
                want,
                ttl,
            };
            store.slots(&name, holder, request).await.unwrap()
        }
    };
    let long = Duration::from_secs(60);
    assert_eq!(call("w1", 0, 2, long).await, 2);
    assert_eq!(
        call("w2", 0, 5, long).await,
        1,
        "3 at most, every holder together"
    );
    assert_eq!(call("w2", 1, 1, long).await, 0);
    assert_eq!(call("w1", 1, 0, long).await, 0, "w1 keeps 1: one back");
    assert_eq!(call("w2", 1, 5, long).await, 1);
    assert_eq!(
        call("w2", 50, 0, long).await,
        0,
        "a hold above what it has takes nothing"
    );
    assert_eq!(call("w3", 0, 1, long).await, 0, "still 3 held");
    assert_eq!(call("w1", 0, 0, long).await, 0);
    assert_eq!(
        call("w1", 0, 0, long).await,
        0,
        "repeated, it gives back once"
    );
    assert_eq!(call("w2", 0, 0, long).await, 0);
    // Every slot is free again: 32 concurrent takers get exactly 3.
    let takes = (0..32).map(|i| {
        let (store, name) = (store.clone(), name.clone());
        tokio::spawn(async move {
            let request = SlotsRequest {
                max: 3,
                hold: 0,
                want: 1,
                ttl: Duration::from_millis(300),
            };
            store.slots(&name, &format!("t{i}"), request).await.unwrap()
        })
    });
    let mut taken = 0;
    for take in takes {
        taken += take.await.unwrap();
    }
    assert_eq!(taken, 3, "32 concurrent takers share 3 slots");
    // The takers never call again: their leases (300 ms) run out and the slots are free.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if call("w3", 0, 3, long).await == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slots of holders silent past their lease were never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(call("w3", 0, 0, long).await, 0);
}

/// Checks `store`'s flow-control flags ([`LimiterStore::set_flag`], [`LimiterStore::flags`]):
/// set, listed by prefix in key order, replaced, removed, and forgotten after their time to
/// live. Uses a fresh random prefix, so it can run against a shared store.
pub async fn check_flags(store: Arc<dyn LimiterStore>) {
    let base = format!("check-flags-{}:", uuid::Uuid::now_v7());
    let key = |k: &str| format!("{base}{k}");
    store.set_flag(&key("b"), Some("2"), None).await.unwrap();
    store.set_flag(&key("a"), Some("1"), None).await.unwrap();
    store
        .set_flag(&key("c"), Some("3"), Some(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(
        store.flags(&base).await.unwrap(),
        vec![
            (key("a"), "1".to_owned()),
            (key("b"), "2".to_owned()),
            (key("c"), "3".to_owned())
        ],
        "listed by prefix, in key order"
    );
    assert_eq!(
        store.flags(&key("b")).await.unwrap(),
        vec![(key("b"), "2".to_owned())]
    );
    store.set_flag(&key("a"), Some("one"), None).await.unwrap();
    store.set_flag(&key("b"), None, None).await.unwrap();
    assert_eq!(
        store.flags(&key("a")).await.unwrap(),
        vec![(key("a"), "one".to_owned())],
        "replaced"
    );
    assert!(store.flags(&key("b")).await.unwrap().is_empty(), "removed");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !store.flags(&key("c")).await.unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a flag past its time to live is still listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.set_flag(&key("a"), None, None).await.unwrap();
    assert!(store.flags(&base).await.unwrap().is_empty());
}
