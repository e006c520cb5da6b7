//! Helpers shared by the runtime's integration tests (all on tokio's paused clock).
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{
    Backend, Message, Publisher, Subscriber, SubscriptionConfig, SubscriptionName, TopicConfig,
    TopicName,
};
use sluice_memory::MemoryBackend;
use sluice_runtime::{
    BatchHandler, Batched, CancellationToken, Handler, Outcome, OutcomeKind, StatsSnapshot, Worker,
};

pub struct Setup {
    pub backend: MemoryBackend,
    pub topic: TopicName,
    pub subscription: SubscriptionName,
}

pub async fn setup(config: impl FnOnce(SubscriptionConfig) -> SubscriptionConfig) -> Setup {
    let backend = MemoryBackend::new();
    let topic = TopicName::new("orders").unwrap();
    let subscription = SubscriptionName::new("billing").unwrap();
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    let cfg = config(SubscriptionConfig::new(topic.clone()).lease(Duration::from_secs(10)));
    backend
        .ensure_subscription(&subscription, &cfg)
        .await
        .unwrap();
    Setup {
        backend,
        topic,
        subscription,
    }
}

impl Setup {
    pub async fn publish(&self, message: Message) {
        let publisher = self.backend.publisher().await.unwrap();
        publisher.publish(&self.topic, message).await.unwrap();
    }
}

/// Collects every event a worker reports.
#[derive(Clone, Default)]
pub struct Events(pub Arc<Mutex<Vec<Outcome>>>);

impl Events {
    pub fn observer(&self) -> impl Fn(&Outcome) + Send + Sync + 'static {
        let events = self.0.clone();
        move |e: &Outcome| events.lock().unwrap().push(e.clone())
    }
    pub fn kinds(&self) -> Vec<OutcomeKind> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.kind.clone())
            .collect()
    }
    pub fn count(&self, pred: impl Fn(&OutcomeKind) -> bool) -> usize {
        self.kinds().iter().filter(|k| pred(k)).count()
    }
}

/// A worker running on its own task.
pub struct Running {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<StatsSnapshot>,
}

impl Running {
    pub fn start<S: Subscriber, H: Handler>(worker: Worker<S, H>) -> Self {
        let stop = CancellationToken::new();
        let handle = worker.spawn(stop.clone());
        Self { stop, handle }
    }

    pub fn start_batch<S: Subscriber, B: BatchHandler>(worker: Worker<S, Batched<B>>) -> Self {
        let stop = CancellationToken::new();
        let handle = worker.spawn(stop.clone());
        Self { stop, handle }
    }

    pub async fn stop(self) -> StatsSnapshot {
        self.stop.cancel();
        self.handle.await.expect("worker task panicked")
    }
}

/// Waits (on the paused clock) until `cond` holds, failing after `deadline`.
pub async fn wait_until(what: &str, deadline: Duration, cond: impl Fn() -> bool) {
    let until = tokio::time::Instant::now() + deadline;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
