//! `sluice bench`: the same end-to-end workload (publish with confirms → consume → ack)
//! against each `--url`, one after another, plus the disk's own append + `fdatasync` limit at
//! the same batch size, measured in the same run. Every figure is meant to be read as a
//! ratio against a peer measured here, never as an absolute.

mod disk;
mod kafka_baseline;
mod lapin_baseline;
mod recovery;
mod report;
mod sqs_baseline;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

pub(crate) use report::Report;

/// Flags of `sluice bench`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// A backend to measure; repeat for several (`--url embedded:/tmp/b --url memory:`).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Messages per backend (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
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
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
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

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut report = Report::new(&args);
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
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            report.print();
        }
        return Ok(());
    }
    for url in &args.urls {
        if !args.json {
            eprintln!(
                "{url}: {} messages of {} B, {} producers, {} consumers, batch {}",
                args.messages, args.size, args.producers, args.consumers, args.batch
            );
        }
        let result = workload::run(url, &args)
            .await
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
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
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
