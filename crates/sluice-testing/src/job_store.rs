//! [`check_job_store`]: the behaviour every [`JobStore`] must have, for a store's own tests.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::jobs::JobStore;

/// Checks `store` against the [`JobStore`] contract and panics on the first difference:
/// absent keys, compare-and-swap (one winner among 32 concurrent creators), stale versions,
/// expiry, remove, and scan (prefix, newest first, limit). Uses keys under a fresh random
/// prefix, so it can run against a shared database.
pub async fn check_job_store(store: Arc<dyn JobStore>) {
    let key = format!("check/{}", uuid::Uuid::now_v7());
    let ttl = Duration::from_secs(60);
    assert_eq!(store.load(&key).await.unwrap(), None, "a new key is absent");
    let v1 = store
        .swap(&key, None, br#"{"a":1}"#, ttl)
        .await
        .unwrap()
        .expect("an absent key can be created");
    assert_eq!(
        store.swap(&key, None, b"{}", ttl).await.unwrap(),
        None,
        "creating a live key again fails"
    );
    let read = store.load(&key).await.unwrap().expect("written");
    assert_eq!(read.value, br#"{"a":1}"#.to_vec());
    assert_eq!(read.version, v1);
    let v2 = store
        .swap(&key, Some(v1), br#"{"a":2}"#, ttl)
        .await
        .unwrap()
        .expect("a swap at the version read succeeds");
    assert_ne!(v1, v2, "a write changes the version");
    assert_eq!(
        store.swap(&key, Some(v1), b"{}", ttl).await.unwrap(),
        None,
        "a swap at a stale version fails"
    );
    assert_eq!(
        store.load(&key).await.unwrap().expect("still there").value,
        br#"{"a":2}"#.to_vec(),
        "a failed swap writes nothing"
    );
    assert!(
        !store.remove(&key, v1).await.unwrap(),
        "a remove at a stale version fails"
    );

    // Scan: the prefix only, newest first, at most `limit`.
    let newer = format!("{key}/b");
    store
        .swap(&newer, None, b"{}", ttl)
        .await
        .unwrap()
        .expect("second key");
    store
        .swap(&format!("{key}x"), None, b"{}", ttl)
        .await
        .unwrap()
        .expect("third key");
    let listed = store.scan(&format!("{key}/"), 10).await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, vec![newer.as_str()], "scan takes the prefix only");
    let listed = store.scan(&key, 10).await.unwrap();
    assert_eq!(listed.len(), 3, "every key under the prefix: {listed:?}");
    assert_eq!(listed[2].0, key, "the oldest write last: {listed:?}");
    assert_eq!(store.scan(&key, 1).await.unwrap().len(), 1, "limit");
    // A prefix short of the first `/` reaches the same keys (stores may index by namespace).
    let short: Vec<String> = store
        .scan("chec", 50)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for k in [&key, &newer] {
        assert!(
            short.contains(k),
            "a prefix without `/` lists {k}: {short:?}"
        );
    }

    assert!(
        store.remove(&key, v2).await.unwrap(),
        "a remove at the version read succeeds"
    );
    assert_eq!(store.load(&key).await.unwrap(), None, "removed");

    // Concurrent creators: exactly one wins.
    let contested = format!("{key}/contested");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32u32 {
        let (store, contested) = (store.clone(), contested.clone());
        tasks.spawn(async move {
            let value = format!("{{\"writer\":{i}}}");
            store
                .swap(&contested, None, value.as_bytes(), Duration::from_secs(60))
                .await
                .unwrap()
                .is_some()
        });
    }
    let mut winners = 0;
    while let Some(won) = tasks.join_next().await {
        winners += usize::from(won.unwrap());
    }
    assert_eq!(winners, 1, "of 32 concurrent creators exactly one wins");

    // Expiry: a short-lived entry is absent once expired and can be created again.
    let short = format!("{key}/short");
    let v = store
        .swap(&short, None, b"{}", Duration::from_millis(300))
        .await
        .unwrap()
        .expect("short-lived entry");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(store.load(&short).await.unwrap(), None, "expired");
    assert_eq!(
        store.swap(&short, Some(v), b"{}", ttl).await.unwrap(),
        None,
        "an expired entry cannot be swapped at its old version"
    );
    assert!(
        store
            .swap(&short, None, b"{}", ttl)
            .await
            .unwrap()
            .is_some(),
        "an expired key counts as absent"
    );
}
