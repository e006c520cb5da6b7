//! The server's own counters (connections, requests, protocol errors), kept as atomics and
//! rendered with the engine's per-subscription gauges at scrape time (`admin.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sluice_protocol::Request;

/// Counters of one running server.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    connections_total: AtomicU64,
    connections_open: AtomicU64,
    connections_refused: AtomicU64,
    timed_out_handshake: AtomicU64,
    timed_out_idle: AtomicU64,
    timed_out_slow_frame: AtomicU64,
    protocol_errors: AtomicU64,
    published: AtomicU64,
    receives: AtomicU64,
    settles: AtomicU64,
    other_requests: AtomicU64,
    // std Mutex: held for a map update only, never across an .await.
    by_name: Mutex<ByName>,
}

/// Which timeout closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timeout {
    /// No TLS handshake, preface or hello in time.
    Handshake,
    /// Nothing sent and nothing in flight for the idle timeout.
    Idle,
    /// A frame did not complete within the slow-frame timeout of its first byte.
    SlowFrame,
}

impl Timeout {
    /// The `reason` label in `/metrics` and logs.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Timeout::Handshake => "handshake",
            Timeout::Idle => "idle",
            Timeout::SlowFrame => "slow_frame",
        }
    }
}

/// Counters per topic and per subscription (physical names: namespace included).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ByName {
    /// Messages confirmed per topic (duplicates dropped by the dedup window excluded).
    pub published: BTreeMap<String, u64>,
    /// Verbs that succeeded per subscription, by verb (`ack`, `retry`, `release`,
    /// `dead_letter`).
    pub settled: BTreeMap<String, BTreeMap<&'static str, u64>>,
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections refused because the server, or their address, held its maximum.
    pub connections_refused: u64,
    /// Connections closed for want of a TLS handshake, preface or hello in time.
    pub timed_out_handshake: u64,
    /// Connections closed after the idle timeout with nothing in flight.
    pub timed_out_idle: u64,
    /// Connections closed because a frame did not complete in time.
    pub timed_out_slow_frame: u64,
    /// Connections closed on a protocol error.
    pub protocol_errors: u64,
    /// Messages received in publish requests.
    pub published: u64,
    /// Receive requests.
    pub receives: u64,
    /// Verbs (ack, retry, release, dead_letter).
    pub settles: u64,
    /// Every other request.
    pub other_requests: u64,
}

impl ServerMetrics {
    pub(crate) fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn timed_out(&self, timeout: Timeout) {
        let counter = match timeout {
            Timeout::Handshake => &self.timed_out_handshake,
            Timeout::Idle => &self.timed_out_idle,
            Timeout::SlowFrame => &self.timed_out_slow_frame,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request(&self, request: &Request) {
        let (counter, n) = match request {
            Request::Publish { messages, .. } => (&self.published, messages.len() as u64),
            Request::Receive { .. } => (&self.receives, 1),
            Request::Settle { .. } => (&self.settles, 1),
            Request::SettleBatch { items } => (&self.settles, items.len() as u64),
            _ => (&self.other_requests, 1),
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn published(&self, topic: &str, n: u64) {
        if n > 0 {
            let mut by_name = self.by_name.lock().expect("metrics lock");
            *by_name.published.entry(topic.to_owned()).or_default() += n;
        }
    }

    pub(crate) fn settled(&self, subscription: &str, verb: &'static str) {
        let mut by_name = self.by_name.lock().expect("metrics lock");
        *by_name
            .settled
            .entry(subscription.to_owned())
            .or_default()
            .entry(verb)
            .or_default() += 1;
    }

    /// Drops the counters of a deleted topic (its series leave `/metrics`).
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.by_name
            .lock()
            .expect("metrics lock")
            .published
            .remove(topic);
    }

    /// Drops the counters of a deleted subscription.
    pub(crate) fn forget_subscription(&self, subscription: &str) {
        self.by_name
            .lock()
            .expect("metrics lock")
            .settled
            .remove(subscription);
    }

    /// The per-topic and per-subscription counters now.
    pub fn by_name(&self) -> ByName {
        self.by_name.lock().expect("metrics lock").clone()
    }

    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            connections_total: get(&self.connections_total),
            connections_open: get(&self.connections_open),
            connections_refused: get(&self.connections_refused),
            timed_out_handshake: get(&self.timed_out_handshake),
            timed_out_idle: get(&self.timed_out_idle),
            timed_out_slow_frame: get(&self.timed_out_slow_frame),
            protocol_errors: get(&self.protocol_errors),
            published: get(&self.published),
            receives: get(&self.receives),
            settles: get(&self.settles),
            other_requests: get(&self.other_requests),
        }
    }
}
