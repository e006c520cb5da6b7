//! What every engine test needs: an engine on in-memory storage with a manual clock,
//! synchronous wrappers over the engine's completions, and message records by id.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_engine::catalog::{Start, SubscriptionOptions, TopicOptions};
use sluice_engine::clock::ManualClock;
use sluice_engine::engine::{Completion, Engine, EngineOptions, Leased, Published};
use sluice_engine::io::{MemStorage, Storage, StorageFile};
use sluice_engine::log::LogOptions;
use sluice_engine::record::MessageRecord;
use sluice_engine::Result;
use std::path::Path;

/// Where the data directory lives in a [`MemStorage`].
pub(crate) const DATA: &str = "/data";
/// The clock's start: an arbitrary, realistic time.
pub(crate) const T0: u64 = 1_700_000_000_000;
/// Segment size in tests: small, so logs span several segments and syncs copy little.
pub(crate) const SEGMENT: u64 = 4096;

/// Options for a test engine on `storage`: small segments, the clock given, no maintenance
/// thread (tests run retention themselves).
pub(crate) fn options(storage: Arc<dyn Storage>, clock: &Arc<ManualClock>) -> EngineOptions {
    EngineOptions::default()
        .storage(storage)
        .clock(clock.clone())
        .log(LogOptions::default().segment_size(SEGMENT))
        .maintenance_interval(None)
}

/// A fresh memory storage, a clock at [`T0`] and an engine on them.
pub(crate) fn mem_engine() -> (Arc<MemStorage>, Arc<ManualClock>, Engine) {
    let storage = Arc::new(MemStorage::new());
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Engine::open(DATA, options(storage.clone(), &clock)).expect("the engine opens");
    (storage, clock, engine)
}

/// Runs an engine operation and waits for its completion.
pub(crate) fn wait<T: Send + 'static>(operation: impl FnOnce(Completion<T>)) -> Result<T> {
    let (sender, receiver) = mpsc::sync_channel(1);
    operation(Box::new(move |result| {
        let _ = sender.send(result);
    }));
    receiver
        .recv_timeout(Duration::from_secs(30))
        .expect("the engine completes every operation")
}

/// A message record with this id and a small payload.
pub(crate) fn record(id: &str) -> MessageRecord {
    MessageRecord {
        id: id.to_owned(),
        payload: Bytes::from(format!("payload of {id}")),
        ..MessageRecord::default()
    }
}

/// Publishes one record per id as one batch.
pub(crate) fn publish(
    engine: &Engine,
    topic: &str,
    ids: &[&str],
) -> Result<Vec<Result<Published>>> {
    let records = ids.iter().map(|id| record(id)).collect();
    wait(|done| engine.publish(topic, records, done))
}

/// Publishes one record per id as one batch and returns their offsets; panics on any error.
pub(crate) fn publish_ok(engine: &Engine, topic: &str, ids: &[&str]) -> Vec<u64> {
    publish(engine, topic, ids)
        .expect("the publish is confirmed")
        .into_iter()
        .map(|outcome| match outcome.expect("each message is stored") {
            Published::Stored { offset } => offset,
            Published::Duplicate => panic!("no duplicate expected"),
        })
        .collect()
}

/// Leases up to `max` messages of `subscription` to `holder`.
pub(crate) fn receive(
    engine: &Engine,
    subscription: &str,
    holder: u64,
    max: usize,
) -> Result<Vec<Leased>> {
    wait(|done| engine.receive(subscription, holder, max, done))
}

/// Acks a lease.
pub(crate) fn ack(engine: &Engine, subscription: &str, leased: &Leased) -> Result<()> {
    wait(|done| engine.ack(subscription, leased.r, leased.token, done))
}

/// Creates topic `topic` with `options` and subscription `subscription` on it reading from
/// the earliest message.
pub(crate) fn topic_with_subscription(
    engine: &Engine,
    topic: &str,
    options: TopicOptions,
    subscription: &str,
) {
    engine
        .create_topic(topic, options)
        .expect("the topic is created");
    subscribe(engine, topic, subscription);
}

/// Creates subscription `subscription` on `topic`, from the earliest message.
pub(crate) fn subscribe(engine: &Engine, topic: &str, subscription: &str) {
    let mut options = SubscriptionOptions::new(topic);
    options.start = Start::Earliest;
    options.prefetch = 10_000;
    engine
        .create_subscription(subscription, options)
        .expect("the subscription is created");
}

/// The ids of a topic's retained messages, in offset order.
pub(crate) fn ids_in_log(engine: &Engine, topic: &str, end: u64) -> Vec<String> {
    (0..end)
        .filter_map(|offset| engine.read(topic, offset).expect("the log reads"))
        .map(|record| record.id)
        .collect()
}

/// Receives and acks everything deliverable now; returns the ids, in delivery order.
pub(crate) fn drain(engine: &Engine, subscription: &str) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let leased = receive(engine, subscription, 1, 1000).expect("receive works");
        if leased.is_empty() {
            return ids;
        }
        for lease in &leased {
            ack(engine, subscription, lease).expect("the ack is confirmed");
            ids.push(lease.record.id.clone());
        }
    }
}

/// One [`MemStorage`] seen through several [`FaultyStorage`] wrappers (one per engine).
#[derive(Debug)]
pub(crate) struct SharedMem(pub(crate) Arc<MemStorage>);

impl Storage for SharedMem {
    fn open(&self, path: &Path, create: bool) -> std::io::Result<Arc<dyn StorageFile>> {
        self.0.open(path, create)
    }
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.0.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> std::io::Result<Vec<String>> {
        self.0.list_dir(path)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.0.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.0.remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.0.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        self.0.sync_dir(path)
    }
    fn exists(&self, path: &Path) -> std::io::Result<bool> {
        self.0.exists(path)
    }
}
