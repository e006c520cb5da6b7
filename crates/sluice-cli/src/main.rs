//! The `sluice` command. Thin: parse arguments, set up tracing, call one `run` (and, on
//! Linux, turn transparent huge pages off for the process: see
//! `disable_transparent_huge_pages`).
//!
//! # Layout
//!
//! | module | command |
//! |---|---|
//! | `bench/` | `sluice bench`: `workload.rs` the end-to-end run per backend, `disk.rs` the disk's own limit, `report.rs` the table and JSON |
//! | `serve.rs` | `sluice serve`: starts `sluice-server`, waits for a shutdown signal, shuts down gracefully |
//! | `ops/` | `topics`, `stats`, `publish`, `tail`, `consume`, `dlq`: one file each, `mod.rs` the shared `--url`/`--json` and message printing, `table.rs` the tables |
//! | `demo/` | `sluice demo`: `mod.rs` runs the scenario, `services.rs` the four consumers, `chaos.rs` loses acks, `ledger.rs` reconciles and prints, `progress.rs` shows the run on stderr, `chart.rs` draws the backlog over time |
//! | `duration.rs` | the one parser of duration flags, shared by every command |
//! | `config.rs` | the config file (`sluice.toml`): the default `--url` |

mod bench;
mod config;
mod demo;
mod duration;
mod ops;
mod serve;

use clap::{Parser, Subcommand};

// The hot paths allocate small buffers per message; mimalloc handles that far better than
// glibc's allocator on few cores (measured with `sluice bench`: see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process and the processes it starts (Linux;
/// the flag is the process's, so threads already running are covered). mimalloc asks for
/// huge pages on its arenas (`MADV_HUGEPAGE`), and the kernel then faults memory in and
/// zeroes it 2 MiB at a time, on whichever hot path allocates next: in a profile of
/// `sluice bench --rate` that zeroing was 11.5 % of the process's samples, and publish tails
/// were longer with it (docs/benchmarks.md, "Third round"). Databases and brokers advise the
/// same (Redis warns when THP is on). A kernel that refuses is no reason not to run.
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::thread::disable_transparent_huge_pages(true)?;
    Ok(())
}

/// Sluice: durable messaging for Rust services.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output on stderr: `-v` shows Sluice's info and the client libraries'
    /// warnings, `-vv` everything at debug level. `RUST_LOG` overrides both.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the order-service scenario: a burst of orders, four subscriptions (rate-limited
    /// email, idempotent billing, fan-out analytics, flaky shipping with retries and a DLQ),
    /// then a reconciled summary.
    Demo(demo::DemoArgs),
    /// Measures backends side by side: end-to-end throughput and latency percentiles, with
    /// the disk's own append + fdatasync limit measured in the same run.
    Bench(bench::BenchArgs),
    /// Measures how closely a global rate limit holds across worker processes sharing it
    /// (the aggregate rate against the limit).
    BenchLimit(bench::limit::LimitArgs),
    /// Serves the embedded engine to other processes (`sluice://HOST:PORT`), with an HTTP
    /// admin API, Prometheus metrics and a dashboard.
    Serve(serve::ServeArgs),
    /// Lists topics and their subscriptions (`topics create`, `topics subscribe`,
    /// `topics delete` manage them).
    Topics(ops::topics::TopicsArgs),
    /// Shows ready, in-flight, delayed and dead-lettered counts per subscription.
    Stats(ops::stats::StatsArgs),
    /// Prints the AsyncAPI 3.0 document of the topology: topics, subscriptions and their
    /// filters, dead-letter queues, the reserved headers.
    Asyncapi(ops::asyncapi::AsyncApiArgs),
    /// Stops every worker of a subscription pulling (in-flight deliveries finish) until
    /// `sluice resume`: a flag in the limiter the workers share (`sluice serve`'s, or Redis).
    Pause(ops::control::ControlArgs),
    /// Lets the workers of a paused subscription pull again.
    Resume(ops::control::ControlArgs),
    /// Publishes a message, or one message per line of a file or standard input.
    Publish(ops::publish::PublishArgs),
    /// Follows a topic through a temporary subscription, printing every message.
    Tail(ops::tail::TailArgs),
    /// Prints and acks the messages of a subscription.
    Consume(ops::consume::ConsumeArgs),
    /// Lists, shows, redrives and purges a subscription's dead-letter queue.
    Dlq(ops::dlq::DlqArgs),
    /// Kafka only: moves the delayed messages of topics to them when due, for deployments
    /// where no Sluice subscriber or long-lived Sluice publisher of a topic runs.
    Delays(ops::delays::DelaysArgs),
    /// Verifies an embedded data directory offline (every record's CRC, dense offsets,
    /// indexes, checkpoints against journals, states against logs) and prints a report;
    /// exits 2 when it finds damage.
    Check(ops::check::CheckArgs),
    /// Salvages a damaged embedded data directory: damaged bytes go to `DATA/quarantine/`
    /// with a report, every readable record is kept, and the directory opens again.
    Repair(ops::check::RepairArgs),
    /// Relays the transactional outbox of a PostgreSQL or SQLite database to the backend,
    /// shows its lag, or creates Sluice's tables.
    Outbox(ops::outbox::OutboxArgs),
    /// Background jobs' status from the job store the application shares (`--store`):
    /// list them, show one, cancel ones that have not started.
    Jobs(ops::jobs::JobsArgs),
}

/// The log filter when `RUST_LOG` is not set. Quiet by default: Sluice's own warnings and
/// errors only. The client libraries report what Sluice reports itself, louder (lapin logs
/// every closed connection at ERROR, the runtime's own shutdown included; librdkafka logs a
/// reached partition end as an error; pinky_swear warns of a confirm nobody waits for).
fn log_filter(verbose: u8) -> &'static str {
    match verbose {
        0 => "warn,lapin=off,pinky_swear=off,rdkafka=off,aws_smithy_runtime=off",
        1 => "info,lapin=warn,pinky_swear=warn,rdkafka=warn",
        _ => "debug",
    }
}

#[tokio::main]
async fn main() {
    let huge_pages = disable_transparent_huge_pages();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(cli.verbose))),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(err) = huge_pages {
        tracing::debug!(%err, "could not turn transparent huge pages off; carrying on with them");
    }
    let result = match cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::BenchLimit(args) => bench::limit::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Topics(args) => ops::topics::run(args).await,
        Command::Stats(args) => ops::stats::run(args).await,
        Command::Asyncapi(args) => ops::asyncapi::run(args).await,
        Command::Pause(args) => ops::control::run(args, true).await,
        Command::Resume(args) => ops::control::run(args, false).await,
        Command::Publish(args) => ops::publish::run(args).await,
        Command::Tail(args) => ops::tail::run(args).await,
        Command::Consume(args) => ops::consume::run(args).await,
        Command::Dlq(args) => ops::dlq::run(args).await,
        Command::Delays(args) => ops::delays::run(args).await,
        Command::Outbox(args) => ops::outbox::run(args).await,
        Command::Jobs(args) => ops::jobs::run(args).await,
        Command::Check(args) => ops::check::check(args),
        Command::Repair(args) => ops::check::repair(args),
    };
    if let Err(err) = result {
        // What failed, then why, one cause per line; no backtrace for an operator's mistake.
        eprintln!("error: {err}");
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}
