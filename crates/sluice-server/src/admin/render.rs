//! The JSON shapes of the admin API and the Prometheus text of `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::UNIX_EPOCH;

use serde::Serialize;
use sluice_core::{
    Backend, DeadLetteredMessage, Error, StartPosition, SubscriptionInfo, SubscriptionStats,
    TopicInfo,
};
use sluice_embedded::EmbeddedBackend;

use crate::metrics::Timeout;
use crate::Shared;

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A topic.
#[derive(Debug, Serialize)]
pub(crate) struct Topic {
    name: String,
    dedup_window_ms: Option<u64>,
    ordered: bool,
    backlog_max_messages: Option<u64>,
    backlog_max_bytes: Option<u64>,
    subscriptions: Vec<String>,
}

pub(crate) fn topic(info: &TopicInfo) -> Topic {
    Topic {
        name: info.name.to_string(),
        dedup_window_ms: info.config.dedup_window.map(ms),
        ordered: info.config.ordered,
        backlog_max_messages: info.config.backlog_bound.and_then(|b| b.max_messages),
        backlog_max_bytes: info.config.backlog_bound.and_then(|b| b.max_bytes),
        subscriptions: info.subscriptions.iter().map(ToString::to_string).collect(),
    }
}

/// Counts of a subscription.
#[derive(Debug, Serialize)]
pub(crate) struct Stats {
    ready: Option<u64>,
    in_flight: Option<u64>,
    delayed: Option<u64>,
    dead_lettered: Option<u64>,
    oldest_age_ms: Option<u64>,
}

pub(crate) fn stats(stats: &SubscriptionStats) -> Stats {
    Stats {
        ready: stats.ready,
        in_flight: stats.in_flight,
        delayed: stats.delayed,
        dead_lettered: stats.dead_lettered,
        oldest_age_ms: stats.oldest_age.map(ms),
    }
}

/// A subscription, its configuration and counts.
#[derive(Debug, Serialize)]
pub(crate) struct Subscription {
    name: String,
    topic: String,
    filter: Option<String>,
    start: String,
    lease_ms: u64,
    max_attempts: u32,
    dead_letter_queue: bool,
    prefetch: u32,
    stats: Stats,
}

pub(crate) fn subscription(info: &SubscriptionInfo, counts: &SubscriptionStats) -> Subscription {
    let c = &info.config;
    Subscription {
        name: info.name.to_string(),
        topic: c.topic.to_string(),
        filter: c.filter.as_ref().map(|f| f.as_str().to_owned()),
        start: match c.start {
            StartPosition::Latest => "latest".into(),
            StartPosition::Earliest => "earliest".into(),
            StartPosition::At(at) => sluice_core::envelope::format_time(at),
        },
        lease_ms: ms(c.lease),
        max_attempts: c.max_attempts,
        dead_letter_queue: c.dead_letter_queue,
        prefetch: c.prefetch,
        stats: stats(counts),
    }
}

/// A dead-lettered message with its envelope.
#[derive(Debug, Serialize)]
pub(crate) struct DeadLettered {
    id: String,
    message_type: Option<String>,
    routing_key: Option<String>,
    ordering_key: Option<String>,
    content_type: Option<String>,
    /// When it was first published (RFC 3339, milliseconds).
    published_at: Option<String>,
    headers: BTreeMap<String, String>,
    /// The payload as text (invalid UTF-8 replaced).
    payload: String,
    payload_size: usize,
    reason: Option<String>,
    last_error: Option<String>,
    attempts: Option<u32>,
    dead_lettered_at_ms: Option<u64>,
}

pub(crate) fn dead_lettered(d: &DeadLetteredMessage) -> DeadLettered {
    let m = &d.message;
    let e = d.envelope.as_ref();
    DeadLettered {
        id: m.id().to_string(),
        message_type: m.message_type().map(str::to_owned),
        routing_key: m.routing_key().map(str::to_owned),
        ordering_key: m.ordering_key().map(str::to_owned),
        content_type: m.content_type().map(str::to_owned),
        published_at: m.published_at().map(sluice_core::envelope::format_time),
        headers: m.headers().clone(),
        payload: String::from_utf8_lossy(m.payload()).into_owned(),
        payload_size: m.payload().len(),
        reason: e.map(|e| e.reason.clone()),
        last_error: e.and_then(|e| e.last_error.clone()),
        attempts: e.map(|e| e.attempts),
        dead_lettered_at_ms: e
            .and_then(|e| e.dead_lettered_at.duration_since(UNIX_EPOCH).ok().map(ms)),
    }
}

/// One subscription's line in the overview.
#[derive(Debug, Serialize)]
pub(crate) struct SubscriptionLine {
    name: String,
    stats: Stats,
    /// Verbs that succeeded through this server since it started, by verb.
    settled: BTreeMap<&'static str, u64>,
    /// Paused by an operator (`sluice pause`).
    paused: bool,
    /// The circuit states its workers with a breaker report: state → workers.
    circuits: BTreeMap<String, u32>,
}

/// One topic's block in the overview.
#[derive(Debug, Serialize)]
pub(crate) struct TopicLine {
    name: String,
    /// Messages confirmed through this server since it started.
    published: u64,
    subscriptions: Vec<SubscriptionLine>,
}

/// Everything the dashboard shows, in one answer.
#[derive(Debug, Serialize)]
pub(crate) struct Overview {
    /// Server time, ms since the Unix epoch (the dashboard computes rates against it).
    now_ms: u64,
    server: crate::MetricsSnapshot,
    topics: Vec<TopicLine>,
}

pub(crate) async fn overview(
    backend: &EmbeddedBackend,
    shared: &Shared,
) -> Result<Overview, Error> {
    let metrics = &shared.metrics;
    let by_name = metrics.by_name();
    let naming = backend.naming();
    // Operator pauses and the workers' circuit states: flags in the server's limiter.
    let limiter = backend.limiter();
    let paused = limiter.flags("pause:").await?;
    let circuits = limiter.flags("circuit:").await?;
    let mut topics = Vec::new();
    for info in backend.list_topics().await? {
        let mut subscriptions = Vec::new();
        for sub in &info.subscriptions {
            // Deleted since the list was read: not an error of the whole page.
            let counts = match shared.prefetched.stats(backend, sub).await {
                Err(Error::NotFound { .. }) => continue,
                other => other?,
            };
            let pause = sluice_core::limit::pause_flag(sub.as_str());
            let prefix = sluice_core::limit::circuit_flags(sub.as_str());
            let mut states = BTreeMap::new();
            for (key, state) in &circuits {
                if key.starts_with(&prefix) {
                    *states.entry(state.clone()).or_default() += 1;
                }
            }
            subscriptions.push(SubscriptionLine {
                paused: paused.iter().any(|(key, _)| *key == pause),
                circuits: states,
                name: sub.to_string(),
                stats: stats(&counts),
                settled: by_name
                    .settled
                    .get(&naming.subscription(sub))
                    .cloned()
                    .unwrap_or_default(),
            });
        }
        topics.push(TopicLine {
            name: info.name.to_string(),
            published: by_name
                .published
                .get(&naming.topic(&info.name))
                .copied()
                .unwrap_or(0),
            subscriptions,
        });
    }
    Ok(Overview {
        now_ms: std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(ms)
            .unwrap_or(0),
        server: metrics.snapshot(),
        topics,
    })
}

/// A label value escaped for the Prometheus text format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One gauge's samples: (topic, subscription, value).
type Series = Vec<(String, String, f64)>;

/// The `/metrics` page: the server's counters, then one gauge set per subscription read from
/// the engine at scrape time (every object, physical names).
pub(crate) async fn prometheus(
    backend: &EmbeddedBackend,
    shared: &Shared,
) -> Result<String, Error> {
    let metrics = &shared.metrics;
    let s = metrics.snapshot();
    let by_name = metrics.by_name();
    let mut out = String::new();
    for (name, kind, help, value) in [
        (
            "sluice_server_connections_open",
            "gauge",
            "Client connections open now.",
            s.connections_open,
        ),
        (
            "sluice_server_connections_total",
            "counter",
            "Client connections accepted.",
            s.connections_total,
        ),
        (
            "sluice_server_connections_refused_total",
            "counter",
            "Connections refused over the connection limits.",
            s.connections_refused,
        ),
        (
            "sluice_server_protocol_errors_total",
            "counter",
            "Connections closed on a protocol error.",
            s.protocol_errors,
        ),
    ] {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        &mut out,
        "sluice_server_connections_timed_out_total",
        "counter",
        "Connections closed by a timeout, by which one.",
    );
    for (timeout, value) in [
        (Timeout::Handshake, s.timed_out_handshake),
        (Timeout::Idle, s.timed_out_idle),
        (Timeout::SlowFrame, s.timed_out_slow_frame),
    ] {
        let _ = writeln!(
            out,
            "sluice_server_connections_timed_out_total{{reason=\"{}\"}} {value}",
            timeout.label()
        );
    }
    family(
        &mut out,
        "sluice_server_requests_total",
        "counter",
        "Requests by kind (publish counts messages).",
    );
    for (kind, value) in [
        ("publish", s.published),
        ("receive", s.receives),
        ("settle", s.settles),
        ("other", s.other_requests),
    ] {
        let _ = writeln!(
            out,
            "sluice_server_requests_total{{kind=\"{kind}\"}} {value}"
        );
    }
    family(
        &mut out,
        "sluice_server_published_total",
        "counter",
        "Messages confirmed per topic.",
    );
    for (topic, n) in &by_name.published {
        let _ = writeln!(
            out,
            "sluice_server_published_total{{topic=\"{}\"}} {n}",
            label(topic)
        );
    }
    family(
        &mut out,
        "sluice_server_settled_total",
        "counter",
        "Verbs that succeeded per subscription.",
    );
    for (sub, verbs) in &by_name.settled {
        for (verb, n) in verbs {
            let _ = writeln!(
                out,
                "sluice_server_settled_total{{subscription=\"{}\",verb=\"{verb}\"}} {n}",
                label(sub)
            );
        }
    }
    let mut gauges: Vec<(&str, &str, Series)> = vec![
        (
            "sluice_subscription_ready",
            "Messages ready for delivery.",
            Vec::new(),
        ),
        (
            "sluice_subscription_in_flight",
            "Messages leased to a consumer.",
            Vec::new(),
        ),
        (
            "sluice_subscription_delayed",
            "Messages waiting for a retry or a delayed delivery.",
            Vec::new(),
        ),
        (
            "sluice_subscription_dead_lettered",
            "Messages in the dead-letter queue.",
            Vec::new(),
        ),
        (
            "sluice_subscription_oldest_age_seconds",
            "Age of the oldest unsettled message.",
            Vec::new(),
        ),
    ];
    for info in backend.list_topics().await? {
        for sub in &info.subscriptions {
            let st = match shared.prefetched.stats(backend, sub).await {
                Err(Error::NotFound { .. }) => continue,
                other => other?,
            };
            let values = [
                st.ready.map(|v| v as f64),
                st.in_flight.map(|v| v as f64),
                st.delayed.map(|v| v as f64),
                st.dead_lettered.map(|v| v as f64),
                Some(st.oldest_age.map_or(0.0, |d| d.as_secs_f64())),
            ];
            for ((_, _, series), value) in gauges.iter_mut().zip(values) {
                if let Some(v) = value {
                    series.push((info.name.to_string(), sub.to_string(), v));
                }
            }
        }
    }
    for (name, help, series) in gauges {
        family(&mut out, name, "gauge", help);
        for (topic, sub, v) in series {
            let _ = writeln!(
                out,
                "{name}{{topic=\"{}\",subscription=\"{}\"}} {v}",
                label(&topic),
                label(&sub)
            );
        }
    }
    Ok(out)
}
