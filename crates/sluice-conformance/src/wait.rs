//! Waiting for conditions with a deadline, and asserting that something does *not* happen
//! within a settle time. The suite never sleeps to wait for an event: it waits for the event
//! itself, bounded by a deadline.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use sluice_core::{Delivery, Subscriber};
use tokio::time::Instant;

/// Most deliveries asked for in one `receive` (SQS's limit; every backend accepts it).
pub const RECEIVE_BATCH: usize = 10;

/// Unwraps a result or fails the scenario with what was being done.
pub trait Must<T> {
    /// The value, or a panic naming `what` and the error.
    fn must(self, what: &str) -> T;
}

impl<T, E: Display> Must<T> for Result<T, E> {
    #[track_caller]
    fn must(self, what: &str) -> T {
        match self {
            Ok(value) => value,
            Err(err) => panic!("{what}: {err}"),
        }
    }
}

/// Receives until `n` deliveries arrived or `within` passed; returns what arrived (the
/// caller asserts the count). Asks for at most [`RECEIVE_BATCH`] at a time.
pub async fn receive_until<S: Subscriber>(
    subscriber: &S,
    n: usize,
    within: Duration,
) -> Vec<S::Delivery> {
    let deadline = Instant::now() + within;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let max = (n - got.len()).min(RECEIVE_BATCH);
        let batch = subscriber
            .receive(max, deadline - now)
            .await
            .must("receive");
        got.extend(batch);
    }
    got
}

/// Receives exactly `n` deliveries within `within`, or fails naming `what`.
#[track_caller]
pub fn receive_exactly<'a, S: Subscriber>(
    subscriber: &'a S,
    n: usize,
    within: Duration,
    what: &'a str,
) -> impl Future<Output = Vec<S::Delivery>> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let got = receive_until(subscriber, n, within).await;
        assert!(
            got.len() == n,
            "{what}: expected {n} deliveries within {within:?}, got {} {:?} (at {caller})",
            got.len(),
            labels(&got),
        );
        got
    }
}

/// Receives and acks at once until `n` deliveries arrived within `within`, or fails naming
/// `what`; returns their labels, sorted. For scenarios that collect many messages on a
/// backend with short leases: a delivery held unacked while the others arrive would come
/// back when its lease ends, a legitimate redelivery this scenario is not about. A label
/// seen twice is then a real duplicate.
#[track_caller]
pub fn receive_and_ack<'a, S: Subscriber>(
    subscriber: &'a S,
    n: usize,
    within: Duration,
    what: &'a str,
) -> impl Future<Output = Vec<String>> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let max = (n - got.len()).min(RECEIVE_BATCH);
            let batch = subscriber
                .receive(max, deadline - now)
                .await
                .must("receive");
            for delivery in batch {
                got.push(label(&delivery));
                delivery.ack().await.must("ack");
            }
        }
        got.sort();
        assert!(
            got.len() == n,
            "{what}: expected {n} deliveries within {within:?}, got {} {got:?} (at {caller})",
            got.len(),
        );
        got
    }
}

/// Watches the subscription for `settle` and fails naming `what` if anything arrives.
#[track_caller]
pub fn expect_nothing<'a, S: Subscriber>(
    subscriber: &'a S,
    settle: Duration,
    what: &'a str,
) -> impl Future<Output = ()> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let deadline = Instant::now() + settle;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let got = subscriber
                .receive(RECEIVE_BATCH, deadline - now)
                .await
                .must("receive");
            assert!(
                got.is_empty(),
                "{what}: expected nothing within {settle:?}, got {:?} (at {caller})",
                described(&got),
            );
        }
    }
}

/// Polls `check` every `interval` until it returns `Ok`, or fails after `within` with the
/// last reason it gave. For state that a backend updates asynchronously (stats, DLQ lists).
#[track_caller]
pub fn eventually<'a, T, F, Fut>(
    within: Duration,
    interval: Duration,
    what: &'a str,
    mut check: F,
) -> impl Future<Output = T> + 'a
where
    T: 'a,
    F: FnMut() -> Fut + 'a,
    Fut: Future<Output = Result<T, String>> + 'a,
{
    let caller = std::panic::Location::caller();
    async move {
        let deadline = Instant::now() + within;
        loop {
            match check().await {
                Ok(value) => return value,
                Err(reason) if Instant::now() >= deadline => {
                    panic!("{what}: still not true after {within:?}: {reason} (at {caller})")
                }
                // Polling a condition with a deadline, not waiting blindly.
                Err(_) => tokio::time::sleep(interval).await,
            }
        }
    }
}

/// The payload of a delivery as text: scenarios put a readable label there.
pub fn label<D: Delivery>(delivery: &D) -> String {
    String::from_utf8_lossy(delivery.message().payload()).into_owned()
}

/// The labels of some deliveries, in order.
pub fn labels<D: Delivery>(deliveries: &[D]) -> Vec<String> {
    deliveries.iter().map(label).collect()
}

/// The labels of some deliveries, sorted (for comparing sets).
pub fn sorted_labels<D: Delivery>(deliveries: &[D]) -> Vec<String> {
    let mut labels = labels(deliveries);
    labels.sort();
    labels
}

/// Label and attempt of each delivery, for failure messages.
pub fn described<D: Delivery>(deliveries: &[D]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| format!("{} (attempt {})", label(d), d.attempt()))
        .collect()
}

/// Acks every delivery, failing the scenario if one cannot be acked.
pub async fn ack_all<D: Delivery>(deliveries: Vec<D>) {
    for delivery in deliveries {
        delivery.ack().await.must("ack");
    }
}
