//! `sluice demo`: the seed scenario in one process, reproducible from its seed.
//!
//! An order service publishes a burst of orders ten times faster than the consumers take
//! them. Four subscriptions, all created before the burst:
//! - `email`: rate-limited; the backlog absorbs the burst and drains at the set rate;
//! - `billing`: idempotent; the demo loses some acks so orders are delivered twice, and each
//!   charge is still applied once;
//! - `analytics`: fan-out, a consumer added without touching the producer;
//! - `shipping`: a downstream failing 30 % of the time; retries with backoff; a poison order
//!   ends in the DLQ (it does in every subscription: its payload is not valid JSON).
//!
//! While it runs, `progress.rs` shows the backlog of every subscription on stderr; the summary
//! on stdout is the table (`ledger.rs`), the backlog over time (`chart.rs`) and a
//! reconciliation by unique message id; a mismatch exits non-zero.

mod chaos;
mod chart;
mod ledger;
mod progress;
mod services;

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice::prelude::*;
use sluice::runtime::{Jitter, StatsSnapshot, WorkerStats};
use sluice::{DynSubscriber, Message};

use chart::History;
use ledger::{Ledger, Row};
use progress::{Progress, Sample};
use services::{Effects, OrderPlaced};

/// Flags of `sluice demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Backend URL: Sluice's durable engine in `./sluice-data` by default (its own `demo`
    /// namespace; each run starts fresh), `memory:`, or RabbitMQ
    /// (`amqp://guest:guest@127.0.0.1:5672/%2f`).
    #[arg(long, default_value = "embedded:./sluice-data?namespace=demo")]
    url: String,
    /// Number of orders in the burst.
    #[arg(long, default_value_t = 1000)]
    orders: u64,
    /// Orders per second during the burst (ten times what the consumers take).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seed of every random choice (orders, failures, lost acks, jitter).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Longest run; the demo stops and reports failure if the backlog is not drained by then.
    #[arg(long, default_value = "60s", value_parser = crate::duration::parse)]
    duration: Duration,
    /// Emails per second (the rate limit of `email`).
    #[arg(long, default_value_t = 100)]
    email_rate: u32,
    /// Plain progress lines on stderr instead of live bars (the default when stderr is not a
    /// terminal).
    #[arg(long)]
    plain: bool,
    /// Serve the run's metrics in Prometheus' format at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

/// A number in `[0, 1)` fixed by the seed, a message id and a salt: reproducible whatever
/// the scheduling.
pub(crate) fn chance(seed: u64, id: &str, salt: &str) -> f64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (seed, id, salt).hash(&mut h);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

const SUBSCRIPTIONS: [&str; 4] = ["email", "billing", "analytics", "shipping"];
const DUPLICATE_PUBLISH_RATE: f64 = 0.05;
const LOST_ACK_RATE: f64 = 0.05;
/// How often the producer's loop samples the backlog during the burst.
const SAMPLE_DURING_BURST: Duration = Duration::from_millis(250);
/// How often the backlog is sampled while the consumers drain it.
const SAMPLE_WHILE_DRAINING: Duration = Duration::from_millis(100);
/// Width of the backlog chart, in columns.
const CHART_COLUMNS: usize = 60;

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if let Some(addr) = args.metrics {
        sluice::runtime::install_prometheus(addr)
            .with_context(|| format!("serving metrics on {addr}"))?;
        println!("metrics: http://{addr}/metrics");
    }
    let backend = sluice::connect(&args.url)
        .await
        .with_context(|| format!("connecting to {}", args.url))?;
    let orders = TopicName::new("orders")?;
    // Each run starts fresh: the previous run's orders would be duplicates within the
    // window, and its backlog would not reconcile with this run's books.
    match backend.delete_topic(&orders).await {
        Ok(()) => println!("starting fresh: removed the previous run's `orders` topic"),
        Err(sluice::Error::NotFound { .. }) => {}
        Err(err) => return Err(err).context("removing the previous run's topic"),
    }
    // Ten minutes where the backend lets us choose; SQS FIFO's window is fixed (5 minutes).
    let caps = backend.capabilities();
    let window = caps.fixed_dedup_window.unwrap_or_else(|| {
        let wanted = Duration::from_secs(600);
        caps.max_dedup_window.map_or(wanted, |max| max.min(wanted))
    });
    backend
        .ensure_topic(&orders, &TopicConfig::default().dedup_window(window))
        .await?;
    for name in SUBSCRIPTIONS {
        let mut config = SubscriptionConfig::new(orders.clone()).max_attempts(5);
        if name == "billing" {
            // Short lease: a lost ack comes back quickly.
            config = config.lease(Duration::from_secs(2));
        }
        backend
            .ensure_subscription(&SubscriptionName::new(name)?, &config)
            .await?;
    }
    println!(
        "Sluice demo: {} backend, seed {}, {} orders (+1 poison) at {}/s; the consumers take about {}/s",
        backend.capabilities().backend,
        args.seed,
        args.orders,
        args.rate,
        args.email_rate
    );

    let effects = Arc::new(Effects::default());
    let ledger = Ledger::default();
    let shutdown = CancellationToken::new();
    let mut workers = Vec::new();
    let mut stats: Vec<(&str, Arc<WorkerStats>)> = Vec::new();
    for name in SUBSCRIPTIONS {
        let subscriber = backend.subscribe(&SubscriptionName::new(name)?).await?;
        let (handle, worker_stats) =
            spawn_worker(name, subscriber, &args, &effects, &ledger, &shutdown);
        workers.push(handle);
        stats.push((name, worker_stats));
    }

    // The order service: a burst, with some publishes retried (same id: dropped by the dedup
    // window) and one poison order.
    // A Producer adds the publish span, trace context and metrics to the backend's publisher.
    let publisher = Producer::new(backend.publisher().await?);
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let poison_at = rng.gen_range(0..args.orders.max(1));
    let mut published = BTreeSet::new();
    let mut dropped_duplicates = 0u64;
    let tick = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let burst_start = tokio::time::Instant::now();
    let origin = burst_start.into_std();
    let mut progress = Progress::start(args.plain, &SUBSCRIPTIONS, args.orders, origin);
    let mut history = History::new(&SUBSCRIPTIONS);
    // One look at every subscription: recorded for the chart, shown on stderr.
    let mut observe = async |progress: &mut Progress| -> anyhow::Result<[Sample; 4]> {
        let samples = sample(&backend, &stats).await?;
        history.record(origin.elapsed(), &samples.map(|s| s.backlog));
        progress.update(&samples);
        Ok(samples)
    };
    observe(&mut progress).await?;
    let mut last_sample = Instant::now();
    for i in 0..args.orders {
        tokio::time::sleep_until(burst_start + tick * i as u32).await;
        let order = OrderPlaced {
            order_id: 1000 + i,
            customer: format!("customer-{}", rng.gen_range(1..=200)),
            region: ["eu", "us", "apac"][rng.gen_range(0..3)].to_owned(),
            amount_cents: rng.gen_range(500..50_000),
        };
        let message = json_message(&order)?
            .id(format!("order-{}-placed", order.order_id))
            .message_type("order.placed")
            .routing_key(format!("order.placed.{}", order.region))
            .build()?;
        let retry_publish = rng.gen_bool(DUPLICATE_PUBLISH_RATE);
        publish(
            &publisher,
            &orders,
            message.clone(),
            &mut published,
            &mut dropped_duplicates,
        )
        .await?;
        if retry_publish {
            // The producer timed out waiting for the confirm and publishes again.
            publish(
                &publisher,
                &orders,
                message,
                &mut published,
                &mut dropped_duplicates,
            )
            .await?;
        }
        if i == poison_at {
            let poison = Message::json_builder(r#"{"order_id": 17, "amount_cents": "#)
                .id("order-poison")
                .message_type("order.placed")
                .build()?;
            publish(
                &publisher,
                &orders,
                poison,
                &mut published,
                &mut dropped_duplicates,
            )
            .await?;
        }
        progress.sent(i + 1);
        if last_sample.elapsed() >= SAMPLE_DURING_BURST {
            observe(&mut progress).await?;
            last_sample = Instant::now();
        }
    }
    publisher.close().await?;
    let burst = format!(
        "burst done in {:.1}s: {} published, {} duplicate publishes dropped by the dedup window",
        burst_start.elapsed().as_secs_f64(),
        published.len(),
        dropped_duplicates
    );
    progress.burst_done();
    progress.println(&burst);

    // Drain, sampling the backlog, until every subscription has settled every published
    // message and is empty, or time runs out. The books decide, not only the backend's
    // counts: a backend may not count every place a message waits (a retry on its way back,
    // a prefetch buffer), and the demo must not stop before those messages come back.
    let drained = loop {
        let samples = observe(&mut progress).await?;
        let empty = samples.iter().all(|s| s.backlog == 0 && s.in_flight == 0);
        if empty
            && SUBSCRIPTIONS
                .iter()
                .all(|name| ledger.books(name).settles(&published))
        {
            break true;
        }
        if started.elapsed() >= args.duration {
            break false;
        }
        tokio::time::sleep(SAMPLE_WHILE_DRAINING).await;
    };
    progress.finish();
    shutdown.cancel();
    let mut finals: Vec<StatsSnapshot> = Vec::new();
    for handle in workers {
        finals.push(handle.await?);
    }

    // Summary and reconciliation.
    let rows: Vec<Row> = SUBSCRIPTIONS
        .iter()
        .zip(&finals)
        .enumerate()
        .map(|(i, (name, s))| Row {
            subscription: (*name).to_owned(),
            stats: *s,
            effects: describe_effects(name, &effects),
            peak_backlog: history.peak(i),
        })
        .collect();
    println!();
    ledger::print_table(published.len(), &rows);
    println!();
    print!("{}", history.render(CHART_COLUMNS));
    println!();
    let problems = reconcile(&backend, &ledger, &effects, &published).await?;
    println!("finished in {:.1}s", started.elapsed().as_secs_f64());
    if !drained {
        bail!(
            "the backlog was not drained within {:?} (raise --duration)",
            args.duration
        );
    }
    if problems > 0 {
        bail!("{problems} reconciliation check(s) failed");
    }
    Ok(())
}

async fn publish(
    publisher: &impl Publisher,
    topic: &TopicName,
    message: Message,
    published: &mut BTreeSet<String>,
    dropped: &mut u64,
) -> anyhow::Result<()> {
    let receipt = publisher.publish(topic, message).await?;
    match receipt.outcome {
        PublishOutcome::Published => {
            published.insert(receipt.id.to_string());
        }
        PublishOutcome::Duplicate => *dropped += 1,
    }
    Ok(())
}

/// Every subscription's backlog (from the backend) and counters (from its worker).
async fn sample(
    backend: &impl Backend,
    workers: &[(&str, Arc<WorkerStats>)],
) -> anyhow::Result<[Sample; 4]> {
    let mut samples = [Sample::default(); 4];
    for (sample, (name, worker)) in samples.iter_mut().zip(workers) {
        let stats = backend.stats(&SubscriptionName::new(*name)?).await?;
        let counters = worker.snapshot();
        *sample = Sample {
            backlog: stats.backlog().unwrap_or(0),
            acked: counters.acked,
            retried: counters.retried,
            dead_lettered: stats.dead_lettered.unwrap_or(counters.dead_lettered),
            in_flight: counters.in_flight,
        };
    }
    Ok(samples)
}

fn spawn_worker(
    name: &'static str,
    subscriber: DynSubscriber,
    args: &DemoArgs,
    effects: &Arc<Effects>,
    ledger: &Ledger,
    shutdown: &CancellationToken,
) -> (tokio::task::JoinHandle<StatsSnapshot>, Arc<WorkerStats>) {
    let effects = effects.clone();
    let seed = args.seed;
    let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(2))
        .jitter(Jitter::Full);
    macro_rules! start {
        ($subscriber:expr, $handler:expr, |$b:ident| $configure:expr) => {{
            let $b = Worker::builder($subscriber, $handler)
                .observer(ledger.clone())
                .backoff(backoff)
                .seed(seed)
                .shutdown_grace(Duration::from_secs(5));
            let worker = $configure.build();
            let stats = worker.stats();
            (worker.spawn(shutdown.clone()), stats)
        }};
    }
    match name {
        "email" => {
            // A limit every email worker shares, in any process: the backend's limiter
            // (embedded, sluice://), else this process's (the demo's workers share it).
            let limiter = sluice::Subscriber::limiter(&subscriber).unwrap_or_else(|| {
                Arc::new(sluice::MemoryLimiter::new()) as Arc<dyn sluice::LimiterStore>
            });
            start!(
                subscriber,
                json_handler(move |o: OrderPlaced, _c: Context| services::send_email(
                    effects.clone(),
                    o
                )),
                |b| b
                    .concurrency(8)
                    .rate_limit(
                        RateLimit::global("demo-email", f64::from(args.email_rate)).burst(10)
                    )
                    .limiter(limiter)
            )
        }
        "billing" => start!(
            chaos::LostAcks {
                inner: subscriber,
                seed,
                rate: LOST_ACK_RATE
            },
            json_handler(move |o: OrderPlaced, _c: Context| services::charge(effects.clone(), o)),
            |b| b
                .concurrency(2)
                .idempotency(Idempotency::new(InMemoryStore::new()))
        ),
        "analytics" => start!(
            subscriber,
            json_handler(move |o: OrderPlaced, _c: Context| services::record_sale(
                effects.clone(),
                o
            )),
            |b| b.concurrency(1)
        ),
        _ => start!(
            subscriber,
            json_handler(move |o: OrderPlaced, c: Context| services::ship(
                effects.clone(),
                seed,
                o,
                c
            )),
            |b| b.concurrency(4)
        ),
    }
}

fn describe_effects(name: &str, effects: &Effects) -> String {
    match name {
        "email" => format!(
            "{} emails sent",
            effects.emails_sent.load(Ordering::Relaxed)
        ),
        "billing" => {
            let charges = effects.charges.lock().expect("charges");
            format!(
                "{} orders charged, {} charges",
                charges.len(),
                charges.values().sum::<u32>()
            )
        }
        "analytics" => {
            let revenue = effects.revenue_by_region.lock().expect("revenue");
            let total: u64 = revenue.values().sum();
            format!(
                "revenue {:.2} over {} regions",
                total as f64 / 100.0,
                revenue.len()
            )
        }
        _ => format!(
            "{} shipped, {} carrier failures",
            effects.shipments.load(Ordering::Relaxed),
            effects.downstream_failures.load(Ordering::Relaxed)
        ),
    }
}

/// Checks the books by unique id; prints one line per check and returns the failures.
async fn reconcile(
    backend: &impl Backend,
    ledger: &Ledger,
    effects: &Effects,
    published: &BTreeSet<String>,
) -> anyhow::Result<usize> {
    let mut problems = 0;
    let mut check = |ok: bool, line: String| {
        println!("  {} {line}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            problems += 1;
        }
    };
    println!("reconciliation by unique message id:");
    for name in SUBSCRIPTIONS {
        let books = ledger.books(name);
        let dlq: BTreeSet<String> = backend
            .dlq_list(&SubscriptionName::new(name)?, usize::MAX)
            .await?
            .into_iter()
            .map(|m| m.message.id().to_string())
            .collect();
        let settled: BTreeSet<String> = books.acked.union(&books.dead_lettered).cloned().collect();
        let overlap = books.acked.intersection(&books.dead_lettered).count();
        check(
            &settled == published && overlap == 0 && dlq == books.dead_lettered,
            format!(
                "{name}: {} published = {} acked + {} dead-lettered (DLQ holds {})",
                published.len(),
                books.acked.len(),
                books.dead_lettered.len(),
                dlq.len()
            ),
        );
    }
    let charges = effects.charges.lock().expect("charges").clone();
    let twice = charges.values().filter(|c| **c != 1).count();
    let billed = ledger.books("billing").acked.len();
    check(
        twice == 0 && charges.len() == billed,
        format!(
            "billing: {} orders charged exactly once, {twice} charged more than once",
            charges.len()
        ),
    );
    Ok(problems)
}
