//! `sluice bench-limit`: how closely a global rate limit holds across worker processes.
//!
//! The parent fills a subscription's backlog (more than the run can drain), starts
//! `--processes` children of this same binary (`--worker`), each running a worker with
//! `RateLimit::global(…, --rate)` on that subscription, and reads the running count of
//! messages each child handled (a line every 50 ms). The aggregate rate is the handled
//! count over `--duration`, after `--warmup`; it is reported against the limit, with each
//! process's share. The limiter is the backend's own (the embedded engine over `sluice
//! serve`) or the one `--limiter redis://…` names (RabbitMQ, SQS, Kafka).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice::prelude::*;
use sluice::LimiterStore;

/// Arguments of `sluice bench-limit`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LimitArgs {
    /// The backend the workers consume from: `sluice://HOST:PORT` (the server hands out the
    /// tokens) or a broker with `--limiter`.
    #[arg(long)]
    url: String,
    /// The limiter when the backend has none (RabbitMQ, SQS, Kafka): `redis://HOST:PORT`.
    #[arg(long)]
    limiter: Option<String>,
    /// Worker processes sharing the limit.
    #[arg(long, default_value_t = 3)]
    processes: u32,
    /// The global limit, messages per second in all.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// How long the rate is measured.
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse)]
    duration: Duration,
    /// Run before measuring (connections, the first burst).
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse)]
    warmup: Duration,
    /// Handlers per worker.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Give each process its own limit of `--rate` instead of one shared limit (what a
    /// global limit replaces: N processes, N times the rate).
    #[arg(long)]
    local: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Run as one worker process (started by the parent).
    #[arg(long, hide = true)]
    worker: bool,
    /// The subscription a worker consumes (set by the parent).
    #[arg(long, hide = true)]
    subscription: Option<String>,
}

/// Runs `sluice bench-limit` (or one of its worker processes).
pub(crate) async fn run(args: LimitArgs) -> anyhow::Result<()> {
    if args.worker {
        return worker(args).await;
    }
    let backend = sluice::connect(&args.url)
        .await
        .with_context(|| format!("connecting to {}", args.url))?;
    let run = format!("bench-limit-{}", std::process::id());
    let topic = TopicName::new(run.as_str())?;
    let subscription = SubscriptionName::new(run.as_str())?;
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await?;
    backend
        // Created before anything is published: the default start (latest) holds all of it,
        // on every backend.
        .ensure_subscription(&subscription, &SubscriptionConfig::new(topic.clone()))
        .await?;
    // More than the run can drain: with `--local` each process drains at the full rate.
    let drainers = if args.local {
        f64::from(args.processes)
    } else {
        1.0
    };
    let total =
        ((args.warmup + args.duration).as_secs_f64() * args.rate * drainers * 1.3) as u64 + 1000;
    eprintln!("filling the backlog with {total} messages…");
    let publisher = backend.publisher().await?;
    let mut sent = 0;
    while sent < total {
        let batch: Vec<Message> = (sent..(sent + 500).min(total))
            .map(|i| Message::builder(format!("{i}")).id(format!("m{i}")).build())
            .collect::<Result<_, _>>()?;
        sent += batch.len() as u64;
        for outcome in publisher.publish_batch(&topic, batch).await {
            outcome?;
        }
    }
    let counts: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(vec![0; args.processes as usize]));
    let mut children: Vec<Child> = Vec::new();
    for i in 0..args.processes as usize {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["bench-limit", "--worker", "--url", &args.url])
            .args(["--subscription", subscription.as_str()])
            .args(["--rate", &args.rate.to_string()])
            .args(["--concurrency", &args.concurrency.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(limiter) = &args.limiter {
            command.args(["--limiter", limiter]);
        }
        if args.local {
            command.arg("--local");
        }
        let mut child = command.spawn().context("starting a worker process")?;
        let stdout = child.stdout.take().expect("piped");
        let counts = counts.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("handled ").and_then(|n| n.parse().ok()) {
                    counts.lock().expect("counts")[i] = n;
                }
            }
        });
        children.push(child);
    }
    let snapshot = || counts.lock().expect("counts").clone();
    tokio::time::sleep(args.warmup).await;
    let (start, at_start) = (Instant::now(), snapshot());
    tokio::time::sleep(args.duration).await;
    let (took, at_end) = (start.elapsed().as_secs_f64(), snapshot());
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let shares: Vec<f64> = at_end
        .iter()
        .zip(&at_start)
        .map(|(end, begin)| (end - begin) as f64 / took)
        .collect();
    let aggregate: f64 = shares.iter().sum();
    let ratio = aggregate / args.rate;
    let _ = backend.delete_topic(&topic).await;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "url": args.url, "limiter": args.limiter, "processes": args.processes,
                "local": args.local,
                "limit_per_second": args.rate, "measured_seconds": took,
                "aggregate_per_second": aggregate, "ratio": ratio,
                "per_process_per_second": shares,
            })
        );
    } else {
        println!(
            "{} process(es) {} on {}{}: {aggregate:.1}/s over {took:.1} s = {:.1} % of the limit (per process: {})",
            args.processes,
            if args.local {
                format!("each with RateLimit::per_second({})", args.rate)
            } else {
                format!("sharing RateLimit::global(_, {})", args.rate)
            },
            args.url,
            args.limiter
                .as_deref()
                .map(|l| format!(" with the limiter {l}"))
                .unwrap_or_default(),
            ratio * 100.0,
            shares
                .iter()
                .map(|s| format!("{s:.1}/s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// One worker process: handles messages under the global limit, printing its running count.
async fn worker(args: LimitArgs) -> anyhow::Result<()> {
    let backend = sluice::connect(&args.url).await?;
    let name = SubscriptionName::new(args.subscription.clone().context("--subscription")?)?;
    let subscriber = backend.subscribe(&name).await?;
    let limiter: Option<Arc<dyn LimiterStore>> = match &args.limiter {
        Some(url) => Some(Arc::new(
            sluice::redis::RedisStore::connect(url)
                .await
                .with_context(|| format!("connecting to {url}"))?,
        )),
        None => None,
    };
    let handled = Arc::new(AtomicU64::new(0));
    let counter = handled.clone();
    let mut builder = Worker::builder(
        subscriber,
        raw_handler(move |_payload, _ctx| {
            counter.fetch_add(1, Ordering::Relaxed);
            async { Ok(()) }
        }),
    )
    .concurrency(args.concurrency)
    .rate_limit(if args.local {
        sluice::runtime::RateLimit::per_second(args.rate)
    } else {
        sluice::runtime::RateLimit::global("bench-limit", args.rate)
    });
    if let Some(limiter) = limiter {
        builder = builder.limiter(limiter);
    }
    let shutdown = CancellationToken::new();
    let _running = builder.build().spawn(shutdown.clone());
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        println!("handled {}", handled.load(Ordering::Relaxed));
    }
}
