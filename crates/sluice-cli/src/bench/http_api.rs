//! `http://HOST:PORT` URLs (and `serve-http:DIR`): the same end-to-end workload through
//! `sluice serve`'s HTTP data API, as a service in another language would drive it: JSON
//! batches published with `POST /api/v1/topics/{topic}/messages` (answered once durable),
//! deliveries leased with `POST …/receive` and acked with one `POST …/settle` per batch, on
//! keep-alive connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::workload::{cpu_seconds, histogram, merged, peak_rss_kib, share, BackendResult};
use super::BenchArgs;

const HEADER: &str = "bench-t";

struct Api {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling {path}"))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "{path} answered {status}: {answer}");
        Ok(answer)
    }
}

/// Runs the workload through the HTTP API at `base` (`http://HOST:PORT`); `broker_pid` is
/// the server's process when the bench started it.
pub(crate) async fn run(
    base: &str,
    args: &BenchArgs,
    broker_pid: Option<&str>,
) -> anyhow::Result<BackendResult> {
    let api = Arc::new(Api {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?,
        base: base.trim_end_matches('/').to_owned(),
        token: std::env::var("SLUICE_TOKEN").ok(),
    });
    let suffix = format!(
        "{:08x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    let topic = format!("bench-http-{suffix}");
    let sub = topic.clone();
    api.call(
        reqwest::Method::PUT,
        &format!("/api/v1/topics/{topic}"),
        json!({}),
    )
    .await?;
    // Every HTTP consumer of a subscription shares the server's one subscriber, so the
    // prefetch bounds what they hold together.
    let prefetch = args.batch * args.consumers.max(1) * 2;
    api.call(
        reqwest::Method::PUT,
        &format!("/api/v1/subscriptions/{sub}"),
        json!({"topic": topic, "lease_ms": 60000, "prefetch": prefetch}),
    )
    .await?;
    let origin = Instant::now();
    let warmup = (args.messages / 10).max(args.batch as u64);
    round(&api, &topic, &sub, args, warmup, origin).await?;
    let pid = broker_pid.unwrap_or("self");
    let cpu_before = cpu_seconds(pid);
    let (publish, end_to_end, total, seconds) =
        round(&api, &topic, &sub, args, args.messages, origin).await?;
    let cpu = cpu_seconds(pid).zip(cpu_before).map(|(a, b)| a - b);
    let mut result = BackendResult::new(
        base.to_owned(),
        "http".to_owned(),
        (total, args.size, seconds),
        &publish,
        &end_to_end,
    );
    if broker_pid.is_some() {
        result.broker_cpu_seconds = cpu;
        result.broker_peak_rss_kib = peak_rss_kib(pid);
    }
    Ok(result)
}

async fn round(
    api: &Arc<Api>,
    topic: &str,
    sub: &str,
    args: &BenchArgs,
    total: u64,
    origin: Instant,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>, u64, f64)> {
    let started = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for _ in 0..args.consumers.max(1) {
        let (api, sub, acked) = (api.clone(), sub.to_owned(), acked.clone());
        let batch = args.batch;
        consumers.push(tokio::spawn(async move {
            consume(&api, &sub, batch, total, &acked, origin).await
        }));
    }
    let text = "x".repeat(args.size);
    let producers = args.producers.max(1) as u64;
    let mut tasks = Vec::new();
    for p in 0..producers {
        let (api, topic, text) = (api.clone(), topic.to_owned(), text.clone());
        let count = share(total, producers, p);
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut sent = 0u64;
            while sent < count {
                let n = (count - sent).min(batch as u64);
                let t = origin.elapsed().as_micros().to_string();
                let messages: Vec<Value> = (0..n)
                    .map(|_| json!({"text": text, "headers": {HEADER: t}}))
                    .collect();
                let began = Instant::now();
                let answer = api
                    .call(
                        reqwest::Method::POST,
                        &format!("/api/v1/topics/{topic}/messages"),
                        json!({ "messages": messages }),
                    )
                    .await?;
                let published = answer["results"].as_array().map_or(0, |r| {
                    r.iter().filter(|r| r["status"] == "published").count()
                }) as u64;
                anyhow::ensure!(published == n, "{n} published, {published} confirmed");
                latency.record(began.elapsed().as_micros() as u64)?;
                sent += n;
            }
            Ok(latency)
        }));
    }
    let publish = merged(tasks).await?;
    let end_to_end = merged(consumers).await?;
    Ok((publish, end_to_end, total, started.elapsed().as_secs_f64()))
}

async fn consume(
    api: &Api,
    sub: &str,
    batch: usize,
    target: u64,
    acked: &AtomicU64,
    origin: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = histogram();
    let deadline = Instant::now() + Duration::from_secs(600);
    while acked.load(Ordering::Relaxed) < target {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the HTTP round did not finish in 10 min"
        );
        let answer = api
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/subscriptions/{sub}/receive"),
                json!({"max": batch, "wait_ms": 50}),
            )
            .await?;
        let deliveries = answer["deliveries"].as_array().cloned().unwrap_or_default();
        if deliveries.is_empty() {
            continue;
        }
        let now = origin.elapsed().as_micros() as u64;
        let mut settlements = Vec::with_capacity(deliveries.len());
        for d in &deliveries {
            if let Some(t) = d["message"]["headers"][HEADER]
                .as_str()
                .and_then(|t| t.parse::<u64>().ok())
            {
                latency.record(now.saturating_sub(t))?;
            }
            settlements.push(json!({"lease": d["lease"], "verb": "ack"}));
        }
        let answer = api
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/subscriptions/{sub}/settle"),
                json!({ "settlements": settlements }),
            )
            .await?;
        let failed = answer["results"]
            .as_array()
            .map_or(0, |r| r.iter().filter(|r| r["status"] != "ok").count());
        anyhow::ensure!(failed == 0, "{failed} acks failed: {answer}");
        acked.fetch_add(deliveries.len() as u64, Ordering::Relaxed);
    }
    Ok(latency)
}
