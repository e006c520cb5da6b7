//! `sluice bench`: the same end-to-end workload (publish with confirms → consume → ack)
//! against each `--url`, one after another, plus the disk's own append + `fdatasync` limit at
//! the same batch size, measured in the same run. Every figure is meant to be read as a
//! ratio against a peer measured here, never as an absolute.

mod batch_handler;
mod chart;
mod disk;
mod http_api;
mod kafka_baseline;
mod lapin_baseline;
pub(crate) mod limit;
mod nats_baseline;
mod preset;
mod recovery;
mod redis_streams_baseline;
mod report;
mod served;
mod sqs_baseline;
mod sweep;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

pub(crate) use report::Report;

/// Flags of `sluice bench`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// A backend to measure; repeat for several (`--url embedded:/tmp/b --url memory:`).
    /// `serve:DIR` starts `sluice serve --data DIR` for the run and measures it over
    /// `sluice://`, with the server's CPU time and memory; `serve-http:DIR` the same
    /// through its HTTP data API. `http://HOST:PORT` measures a running server's HTTP data
    /// API (with `SLUICE_TOKEN`, if set).
    #[arg(long = "url", required_unless_present = "all")]
    urls: Vec<String>,
    /// Every backend and peer this machine runs: Sluice's engine in-process and served (in
    /// a fresh directory under `--disk-dir`, removed afterwards), and whatever answers on
    /// the default loopback ports of RabbitMQ, Kafka, SQS (an emulator), NATS and Redis.
    #[arg(long)]
    all: bool,
    /// With `--all`, leave these out: `amqp`, `kafka`, `sqs`, `nats`, `redis`, `serve`, `serve-http`
    /// (repeat, or separate with commas), e.g. `--except sqs` where the emulator's hundred
    /// messages a second would make the run long.
    #[arg(long, value_delimiter = ',', requires = "all")]
    except: Vec<String>,
    /// A short profile (400 messages, 1 producer, 1 consumer, batch 20, a 200 ms disk
    /// baseline): to check that everything runs, not to compare figures.
    #[arg(long)]
    short: bool,
    /// A peer broker to measure on its own Rust client, with no Sluice code in the loop;
    /// repeat for several: `nats://HOST:PORT` (NATS JetStream, file storage) or
    /// `redis://HOST:PORT` (Redis Streams). Peers run the closed-loop workload of
    /// `--messages` after every `--url`; they are skipped with `--rate` or `--backlog`.
    #[arg(long = "peer", value_name = "URL", value_parser = Peer::parse)]
    peers: Vec<Peer>,
    /// Messages per backend (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Measure for this long instead of a number of messages (producers publish until it
    /// is over; the round ends when everything published is acked). The warm-up is still a
    /// tenth of `--messages`.
    #[arg(long, value_parser = crate::duration::parse, conflicts_with = "backlog")]
    duration: Option<Duration>,
    /// Payload size in bytes (`1024`, or with a unit: `1KiB`, `4KiB`).
    #[arg(long, default_value = "1KiB", value_parser = parse_size)]
    size: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Concurrent consumers.
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// Messages per publish batch and per receive.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Where the disk baseline writes its file (default: the first `embedded:` directory,
    /// else the system's temporary directory).
    #[arg(long)]
    disk_dir: Option<PathBuf>,
    /// How long the disk baseline runs.
    #[arg(long, default_value = "2s", value_parser = crate::duration::parse)]
    disk_duration: Duration,
    /// Open loop: publish single messages at this many per second in total (latency at a
    /// given load, not at saturation). Without it, producers publish batches as fast as
    /// confirms come back.
    #[arg(long)]
    rate: Option<u64>,
    /// Backlog mode: publish this many messages with no consumer running, then measure how
    /// fast the consumers drain them (and the process's peak memory).
    #[arg(long)]
    backlog: Option<u64>,
    /// Recovery mode (embedded URLs only): write this much log (`1GiB`), close the engine,
    /// and time opening it again.
    #[arg(long, value_parser = parse_size)]
    recovery: Option<usize>,
    /// Sweep: find the highest rate each `--url` sustains, with open-loop steps of
    /// `--duration` (5 s by default) from `--rate` (1000 msg/s by default) up, doubling, then
    /// bisecting. Peers and baselines are not swept.
    #[arg(long, conflicts_with_all = ["backlog", "recovery"])]
    sweep: bool,
    /// What a batch handler buys a consumer writing to PostgreSQL: drains `--messages` from
    /// each `--url` once with a handler inserting one row per message, once with a batch
    /// handler inserting each batch of up to N in one statement, and reports the ratio.
    #[arg(long, value_name = "N", conflicts_with_all = ["backlog", "recovery", "sweep", "rate", "all"])]
    batch_handler: Option<usize>,
    /// The PostgreSQL `--batch-handler` writes to (a table of its own, dropped afterwards).
    #[arg(
        long,
        value_name = "URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    database: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also write the report to `DIR/bench.json` (the JSON `--json` prints) and a chart of
    /// throughput and latency per backend to `DIR/bench.svg`, creating `DIR`.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// A peer broker measured on its own Rust client (`--peer`).
#[derive(Debug, Clone)]
enum Peer {
    /// `nats://HOST:PORT`: NATS JetStream on `async-nats`.
    NatsJetStream(String),
    /// `redis://HOST:PORT`: Redis Streams on the `redis` crate.
    RedisStreams(String),
}

impl Peer {
    /// Parses `nats://HOST:PORT` or `redis://HOST:PORT`.
    fn parse(url: &str) -> Result<Self, String> {
        if url.starts_with("nats://") {
            Ok(Self::NatsJetStream(url.to_owned()))
        } else if url.starts_with("redis://") {
            Ok(Self::RedisStreams(url.to_owned()))
        } else {
            Err(format!(
                "`{url}` is not a peer: use nats://HOST:PORT (NATS JetStream) or redis://HOST:PORT (Redis Streams)"
            ))
        }
    }
}

/// Parses `1024`, `1KiB`, `4KiB`, `1MiB`, `1GiB`.
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: usize = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 1024 or 1KiB"))?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" | "kb" => 1024,
        "mib" | "m" | "mb" => 1024 * 1024,
        "gib" | "g" | "gb" => 1024 * 1024 * 1024,
        _ => return Err(format!("`{s}`: use B, KiB, MiB or GiB")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{s}` is too large"))
}

pub(crate) async fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    if args.short {
        preset::short(&mut args);
    }
    // Kept until the end: `--all`'s directories for the engine, removed afterwards.
    let mut _all_dir = None;
    if args.all {
        let base = args.disk_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("sluice-bench-")
            .tempdir_in(&base)
            .with_context(|| format!("creating a directory in {}", base.display()))?;
        for note in preset::discover(&mut args, dir.path()) {
            if !args.json {
                eprintln!("{note}");
            }
        }
        if args
            .urls
            .iter()
            .any(|u| u.contains("endpoint=http://127.0.0.1"))
            && std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
        {
            // A local emulator takes any credentials; real AWS never gets these.
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        }
        _all_dir = Some(dir);
    }
    let mut report = Report::new(&args);
    if let Some(dir) = &args.out {
        // Now, so that a bad directory fails before the measurement rather than after it.
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if let Some(batch) = args.batch_handler {
        anyhow::ensure!(
            batch > 0,
            "--batch-handler takes a batch size of at least 1"
        );
        for url in &args.urls {
            if !args.json {
                eprintln!(
                    "{url}: {} messages of {} B into PostgreSQL, one row per message, then batches of up to {batch} in one statement",
                    args.messages, args.size
                );
            }
            let result = batch_handler::run(url, &args, batch, &args.database)
                .await
                .with_context(|| format!("benchmarking batch handlers on {url}"))?;
            report.batch_handlers.push(result);
        }
        return emit(&args, &report);
    }
    let disk_dir = args.disk_dir.clone().unwrap_or_else(|| {
        args.urls
            .iter()
            .find_map(|u| u.strip_prefix("embedded:").map(PathBuf::from))
            .unwrap_or_else(std::env::temp_dir)
    });
    if !args.json {
        eprintln!(
            "disk baseline: append {} B records + fdatasync per {} in {}",
            args.size,
            args.batch,
            disk_dir.display()
        );
    }
    if args.recovery.is_none() {
        let disk = disk::measure(&disk_dir, args.size, args.batch, args.disk_duration)
            .with_context(|| format!("measuring the disk in {}", disk_dir.display()))?;
        report.disk = Some(disk);
    }
    if let Some(bytes) = args.recovery {
        for url in args.urls.iter().filter(|u| u.starts_with("embedded:")) {
            if !args.json {
                eprintln!(
                    "{url}: writing {} MiB of log, then timing a reopen",
                    bytes >> 20
                );
            }
            report
                .recovery
                .push(recovery::measure(url, bytes, args.size).await?);
        }
        return emit(&args, &report);
    }
    if args.sweep {
        let step = args.duration.unwrap_or(Duration::from_secs(5));
        for url in &args.urls {
            let swept = sweep::run(url, &args, args.rate.unwrap_or(1000), step).await?;
            report.sweeps.push(swept);
        }
        return emit(&args, &report);
    }
    for url in &args.urls {
        if !args.json {
            eprintln!(
                "{url}: {} messages of {} B, {} producers, {} consumers, batch {}",
                args.messages, args.size, args.producers, args.consumers, args.batch
            );
        }
        let result = if let Some(dir) = url.strip_prefix("serve:") {
            served::run(dir, &args, false).await
        } else if let Some(dir) = url.strip_prefix("serve-http:") {
            served::run(dir, &args, true).await
        } else if url.starts_with("http://") || url.starts_with("https://") {
            http_api::run(url, &args, None).await
        } else {
            workload::run(url, &args).await
        }
        .with_context(|| format!("benchmarking {url}"))?;
        report.results.push(result);
        if url.starts_with("amqp") && args.rate.is_none() && args.backlog.is_none() {
            if !args.json {
                eprintln!(
                    "{url}: the same workload on raw lapin (quorum queue, confirms, manual acks)"
                );
            }
            let baseline = lapin_baseline::run(url, &args)
                .await
                .with_context(|| format!("the raw lapin baseline on {url}"))?;
            report.results.push(baseline);
        }
        if url.starts_with("sqs") && args.rate.is_none() && args.backlog.is_none() {
            if !args.json {
                eprintln!("{url}: the same workload on the raw AWS SDK (SNS PublishBatch, SQS receive + DeleteMessageBatch)");
            }
            let baseline = sqs_baseline::run(url, &args)
                .await
                .with_context(|| format!("the raw AWS SDK baseline on {url}"))?;
            report.results.push(baseline);
        }
        if url.starts_with("kafka") && args.rate.is_none() && args.backlog.is_none() {
            if !args.json {
                eprintln!("{url}: the same workload on raw rdkafka (idempotent producer, acks=all, a consumer group)");
            }
            let baseline = kafka_baseline::run(url, &args)
                .await
                .with_context(|| format!("the raw rdkafka baseline on {url}"))?;
            report.results.push(baseline);
        }
    }
    for peer in &args.peers {
        let (Peer::NatsJetStream(url) | Peer::RedisStreams(url)) = peer;
        if args.rate.is_some() || args.backlog.is_some() {
            if !args.json {
                eprintln!("{url}: peer skipped (peers run the closed-loop workload only, not --rate or --backlog)");
            }
            continue;
        }
        if !args.json {
            eprintln!("{url}: the same workload on the peer's own Rust client");
        }
        let result = match peer {
            Peer::NatsJetStream(url) => nats_baseline::run(url, &args).await,
            Peer::RedisStreams(url) => redis_streams_baseline::run(url, &args).await,
        }
        .with_context(|| format!("the peer baseline on {url}"))?;
        report.results.push(result);
    }
    emit(&args, &report)
}

/// The report on stdout (JSON with `--json`, else the table), and in `--out DIR`.
fn emit(args: &BenchArgs, report: &Report) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        report.print();
    }
    write_out(args.out.as_deref(), report)
}

/// `--out DIR`: the report as JSON and, when backends were measured, as a chart.
fn write_out(dir: Option<&std::path::Path>, report: &Report) -> anyhow::Result<()> {
    let Some(dir) = dir else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join("bench.json");
    let text = serde_json::to_string_pretty(report)? + "\n";
    std::fs::write(&json, text).with_context(|| format!("writing {}", json.display()))?;
    eprintln!("wrote {}", json.display());
    let svg = dir.join("bench.svg");
    if report.results.is_empty() {
        eprintln!(
            "no end-to-end results to chart: {} not written",
            svg.display()
        );
        return Ok(());
    }
    chart::write(report, &svg)?;
    eprintln!("wrote {}", svg.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("4kib"), Ok(4096));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("1TB").is_err());
        assert!(parse_size("x").is_err());
    }
}
