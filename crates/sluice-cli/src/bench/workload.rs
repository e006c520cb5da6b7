//! The end-to-end workload against one backend: consumers start first, then producers
//! publish with confirms in batches; consumers receive in batches and ack every message.
//! A warm-up of a tenth of the messages runs first and is not measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use hdrhistogram::Histogram;
use sluice::prelude::*;
use sluice::{DynBackend, DynPublisher, DynSubscriber};

use super::BenchArgs;

/// The figures of one backend.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct BackendResult {
    /// The URL measured.
    pub(crate) url: String,
    /// The backend's name.
    pub(crate) backend: String,
    /// Messages measured (after warm-up).
    pub(crate) messages: u64,
    /// Wall time of the measured part, in seconds.
    pub(crate) seconds: f64,
    /// End-to-end throughput (messages acked per second).
    pub(crate) messages_per_sec: f64,
    /// The same in MiB of payload per second.
    pub(crate) mib_per_sec: f64,
    /// Publish-confirm latency of a batch: p50, p99, p99.9 in microseconds.
    pub(crate) publish_us: [u64; 3],
    /// Publish → ack-time latency of a message: p50, p99, p99.9 in microseconds.
    pub(crate) end_to_end_us: [u64; 3],
    /// Peak resident memory of this process so far (KiB; the broker is in-process for
    /// `embedded:` and `memory:`).
    pub(crate) peak_rss_kib: u64,
    /// CPU time (user + system) the broker process spent in the measured round, where the
    /// bench can see it: this process for in-process brokers (client included), the
    /// `sluice serve` child for `serve:` URLs; `None` for brokers the bench did not start.
    pub(crate) broker_cpu_seconds: Option<f64>,
    /// Peak resident memory of the broker process (KiB), where the bench started it.
    pub(crate) broker_peak_rss_kib: Option<u64>,
}

impl BackendResult {
    /// The figures of `total` messages of `size` bytes measured over `seconds`.
    pub(crate) fn new(
        url: String,
        backend: String,
        (total, size, seconds): (u64, usize, f64),
        publish: &Histogram<u64>,
        end_to_end: &Histogram<u64>,
    ) -> Self {
        Self {
            url,
            backend,
            messages: total,
            seconds,
            messages_per_sec: total as f64 / seconds,
            mib_per_sec: (total as f64 * size as f64) / seconds / (1024.0 * 1024.0),
            publish_us: percentiles(publish),
            end_to_end_us: percentiles(end_to_end),
            peak_rss_kib: peak_rss_kib("self").unwrap_or(0),
            broker_cpu_seconds: None,
            broker_peak_rss_kib: None,
        }
    }
}

/// A process's peak resident set size (`VmHWM`), in KiB: `pid` is a number or `self`.
pub(crate) fn peak_rss_kib(pid: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
}

/// A process's CPU time so far (user + system, from `/proc/PID/stat`), in seconds.
pub(crate) fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel's USER_HZ: 100 on every Linux Sluice runs on.
    Some(ticks as f64 / 100.0)
}

const HEADER: &str = "bench-t";

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("valid histogram precision")
}

/// Producer `p`'s share of `total` messages split over `count` producers.
pub(crate) fn share(total: u64, count: u64, p: u64) -> u64 {
    total / count + u64::from(p < total % count)
}

/// One producer of a raw baseline: `count` messages in batches of up to `batch`, each batch
/// sent by `send(n, stamp)` (`stamp`: microseconds since `origin`, for the end-to-end latency)
/// and timed until confirmed. Returns the batches' confirm latencies.
pub(crate) async fn timed_batches<F, Fut>(
    count: u64,
    batch: usize,
    origin: Instant,
    mut send: F,
) -> anyhow::Result<Histogram<u64>>
where
    F: FnMut(u64, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut latency = histogram();
    let mut sent = 0u64;
    while sent < count {
        let n = (count - sent).min(batch as u64);
        let began = Instant::now();
        send(n, origin.elapsed().as_micros().to_string()).await?;
        latency.record(began.elapsed().as_micros() as u64)?;
        sent += n;
    }
    Ok(latency)
}

/// Waits for latency-recording tasks and merges their histograms.
pub(crate) async fn merged(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Histogram<u64>>>>,
) -> anyhow::Result<Histogram<u64>> {
    let mut all = histogram();
    for task in tasks {
        all.add(task.await??)?;
    }
    Ok(all)
}

fn percentiles(h: &Histogram<u64>) -> [u64; 3] {
    [
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
    ]
}

/// Runs the workload against `url`.
pub(crate) async fn run(url: &str, args: &BenchArgs) -> anyhow::Result<BackendResult> {
    run_with(url, args, None).await
}

/// Runs the workload against `url`; `broker_pid` is the broker's process when the bench
/// started it (its CPU time in the measured round and peak memory are reported).
pub(crate) async fn run_with(
    url: &str,
    args: &BenchArgs,
    broker_pid: Option<&str>,
) -> anyhow::Result<BackendResult> {
    let backend = sluice::connect(url).await?;
    let suffix = uuid_suffix();
    let topic = TopicName::new(format!("bench-{suffix}"))?;
    let subscription = SubscriptionName::new(format!("bench-{suffix}"))?;
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await?;
    let config = SubscriptionConfig::new(topic.clone())
        .lease(Duration::from_secs(60))
        .prefetch(u32::try_from(args.batch * 4).unwrap_or(u32::MAX));
    backend.ensure_subscription(&subscription, &config).await?;

    let origin = Instant::now();
    let warmup = (args.messages / 10).max(args.batch as u64);
    // The consumers live through both rounds, as in a long-running service (on Kafka a new
    // group member costs a rebalance).
    let mut subscribers = Vec::new();
    for _ in 0..args.consumers.max(1) {
        subscribers.push(Arc::new(backend.subscribe(&subscription).await?));
    }
    let clients = (&backend, &topic, subscribers.as_slice());
    round(clients, args, Amount::Messages(warmup), origin, false).await?;
    let amount = match (args.backlog, args.duration) {
        (Some(n), _) => Amount::Messages(n),
        (None, Some(d)) => Amount::For(d),
        (None, None) => Amount::Messages(args.messages),
    };
    let pid = broker_pid.unwrap_or("self");
    let cpu_before = cpu_seconds(pid);
    // With --backlog: fill first, with nobody consuming; then time the drain alone.
    let (publish, end_to_end, total, seconds) =
        round(clients, args, amount, origin, args.backlog.is_some()).await?;
    let cpu = cpu_seconds(pid).zip(cpu_before).map(|(a, b)| a - b);
    for subscriber in &subscribers {
        subscriber.close().await?;
    }

    let _ = backend.delete_topic(&topic).await;
    let name = backend.capabilities().backend.to_owned();
    let mut result = BackendResult::new(
        url.to_owned(),
        name.clone(),
        (total, args.size, seconds),
        &publish,
        &end_to_end,
    );
    if broker_pid.is_some() || matches!(name.as_str(), "embedded" | "memory") {
        result.broker_cpu_seconds = cpu;
        result.broker_peak_rss_kib = peak_rss_kib(pid);
    }
    Ok(result)
}

/// How much a round publishes: a number of messages, or for a time (`--duration`).
#[derive(Debug, Clone, Copy)]
enum Amount {
    Messages(u64),
    For(Duration),
}

pub(crate) fn uuid_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:08x}{:04x}", nanos, std::process::id() & 0xffff)
}

/// Publishes `amount` and waits until every message published is acked. Returns the
/// publish and end-to-end latency histograms, the messages published and the measured
/// seconds (the whole round, or with `fill_first` only the drain after every message was
/// published).
async fn round(
    (backend, topic, subscribers): (&DynBackend, &TopicName, &[Arc<DynSubscriber>]),
    args: &BenchArgs,
    amount: Amount,
    origin: Instant,
    fill_first: bool,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>, u64, f64)> {
    let started = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    // What the consumers wait for: known up front for a number of messages, set when the
    // producers are done for a duration.
    let target = Arc::new(AtomicU64::new(match amount {
        Amount::Messages(n) => n,
        Amount::For(_) => u64::MAX,
    }));
    let mut consumers = Vec::new();
    let start_consumers = |consumers: &mut Vec<_>| -> anyhow::Result<()> {
        for subscriber in subscribers {
            let (subscriber, acked, target) =
                (Arc::clone(subscriber), acked.clone(), target.clone());
            let batch = args.batch;
            consumers.push(tokio::spawn(consume(
                subscriber, batch, target, acked, origin,
            )));
        }
        Ok(())
    };
    if !fill_first {
        start_consumers(&mut consumers)?;
    }
    let payload = Bytes::from(vec![b'x'; args.size]);
    let mut producers = Vec::new();
    let producer_count = args.producers.max(1) as u64;
    for p in 0..producer_count {
        let rate = args
            .rate
            .map(|r| (r as f64 / producer_count as f64).max(0.001));
        let share = match amount {
            Amount::Messages(total) => Amount::Messages(share(total, producer_count, p)),
            // Open loop for a time: the schedule's count over the duration.
            Amount::For(d) => match rate {
                Some(rate) => Amount::Messages((rate * d.as_secs_f64()).ceil() as u64),
                None => Amount::For(d),
            },
        };
        let publisher = backend.publisher().await?;
        producers.push(tokio::spawn(produce(
            publisher,
            topic.clone(),
            share,
            args.batch,
            payload.clone(),
            origin,
            rate,
        )));
    }
    let mut publish = histogram();
    let mut total = 0;
    for producer in producers {
        let (latency, sent) = producer.await??;
        publish.add(latency)?;
        total += sent;
    }
    target.store(total, Ordering::Relaxed);
    let drain_started = Instant::now();
    if fill_first {
        start_consumers(&mut consumers)?;
    }
    let end_to_end = merged(consumers).await?;
    let seconds = if fill_first {
        drain_started.elapsed()
    } else {
        started.elapsed()
    };
    Ok((publish, end_to_end, total, seconds.as_secs_f64()))
}

/// One producer: `amount` in batches (or, with `rate`, open loop); returns the confirm
/// latencies and how many messages it published.
async fn produce(
    publisher: DynPublisher,
    topic: TopicName,
    amount: Amount,
    batch: usize,
    payload: Bytes,
    origin: Instant,
    rate: Option<f64>,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let (count, until) = match amount {
        Amount::Messages(n) => (n, None),
        Amount::For(d) => (u64::MAX, Some(Instant::now() + d)),
    };
    if let Some(rate) = rate {
        let latency = produce_at_rate(publisher, topic, count, payload, origin, rate).await?;
        return Ok((latency, count));
    }
    let mut latency = histogram();
    let mut sent = 0u64;
    while sent < count && until.is_none_or(|t| Instant::now() < t) {
        let n = (count - sent).min(batch as u64);
        let t = origin.elapsed().as_micros().to_string();
        let messages: Vec<Message> = (0..n)
            .map(|_| {
                Message::builder(payload.clone())
                    .header(HEADER, t.clone())
                    .build()
            })
            .collect::<Result<_, _>>()?;
        let began = Instant::now();
        for result in publisher.publish_batch(&topic, messages).await {
            result?;
        }
        latency.record(began.elapsed().as_micros() as u64)?;
        sent += n;
    }
    Ok((latency, sent))
}

/// Open loop: one message every `1/rate` s on a fixed schedule, each publish on its own
/// task, so a slow confirm delays no later send and is not hidden. The latency of a publish
/// is measured from its send (see the comment in the task). Finished publishes are collected
/// in the idle part of each tick: a task kept until the end holds its memory, and a round of
/// a few hundred thousand would grow the process by as many task cells, charged to an
/// in-process broker's CPU and memory.
async fn produce_at_rate(
    publisher: DynPublisher,
    topic: TopicName,
    count: u64,
    payload: Bytes,
    origin: Instant,
    rate: f64,
) -> anyhow::Result<Histogram<u64>> {
    let start = tokio::time::Instant::now();
    let mut inflight = tokio::task::JoinSet::new();
    let mut latency = histogram();
    let mut record = |done: Result<Result<Duration, sluice::Error>, tokio::task::JoinError>| {
        anyhow::Ok(latency.record(done??.as_micros() as u64)?)
    };
    for i in 0..count {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let message = Message::builder(payload.clone())
            .header(HEADER, origin.elapsed().as_micros().to_string())
            .build()?;
        let (publisher, topic) = (publisher.clone(), topic.clone());
        inflight.spawn(async move {
            // Measured from the send, not from `due`: tokio's timer wakes the generator up to
            // 1 ms late, which is the generator's lateness, not the broker's. The wait of this
            // task for a worker is not counted either. The schedule itself never waits for a
            // confirm, so slow confirms are not hidden.
            let began = Instant::now();
            publisher
                .publish(&topic, message)
                .await
                .map(|_| began.elapsed())
        });
        while let Some(done) = inflight.try_join_next() {
            record(done)?;
        }
    }
    while let Some(done) = inflight.join_next().await {
        record(done)?;
    }
    Ok(latency)
}

async fn consume(
    subscriber: Arc<DynSubscriber>,
    batch: usize,
    target: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    origin: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = histogram();
    while acked.load(Ordering::Relaxed) < target.load(Ordering::Relaxed) {
        let deliveries = subscriber.receive(batch, Duration::from_millis(50)).await?;
        if deliveries.is_empty() {
            continue;
        }
        let now = origin.elapsed().as_micros() as u64;
        for d in &deliveries {
            if let Some(t) = d
                .message()
                .header(HEADER)
                .and_then(|t| t.parse::<u64>().ok())
            {
                latency.record(now.saturating_sub(t))?;
            }
        }
        let n = deliveries.len() as u64;
        for result in join_all(deliveries.into_iter().map(Delivery::ack)).await {
            result.map_err(|e| e.error)?;
        }
        acked.fetch_add(n, Ordering::Relaxed);
    }
    Ok(latency)
}
