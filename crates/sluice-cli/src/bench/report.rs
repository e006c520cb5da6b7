//! The benchmark report: a human table with every backend's throughput as a ratio of the
//! disk's own limit, or JSON.

use super::disk::DiskResult;
use super::workload::BackendResult;
use super::BenchArgs;

/// Everything one `sluice bench` run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Report {
    /// Message payload size.
    pub(crate) size: usize,
    /// Producers.
    pub(crate) producers: usize,
    /// Consumers.
    pub(crate) consumers: usize,
    /// Batch size.
    pub(crate) batch: usize,
    /// The disk's append + fdatasync limit at this batch size.
    pub(crate) disk: Option<DiskResult>,
    /// One result per backend.
    pub(crate) results: Vec<BackendResult>,
    /// Recovery measurements (`--recovery`).
    pub(crate) recovery: Vec<super::recovery::RecoveryResult>,
    /// The open-loop rate, if any.
    pub(crate) rate: Option<u64>,
    /// The backlog filled before consuming, if any.
    pub(crate) backlog: Option<u64>,
    /// Rate sweeps (`--sweep`).
    pub(crate) sweeps: Vec<super::sweep::SweepResult>,
    /// Per-message against batch handlers writing to PostgreSQL (`--batch-handler`).
    pub(crate) batch_handlers: Vec<super::batch_handler::BatchHandlerResult>,
}

impl Report {
    pub(crate) fn new(args: &BenchArgs) -> Self {
        Self {
            size: args.size,
            producers: args.producers,
            consumers: args.consumers,
            batch: args.batch,
            disk: None,
            results: Vec::new(),
            recovery: Vec::new(),
            rate: args.rate,
            backlog: args.backlog,
            sweeps: Vec::new(),
            batch_handlers: Vec::new(),
        }
    }

    pub(crate) fn print(&self) {
        if !self.batch_handlers.is_empty() {
            println!(
                "\nsluice bench --batch-handler: {} B messages, published in batches of {}",
                self.size, self.batch
            );
        } else {
            self.print_header();
        }
        self.print_results();
    }

    fn print_header(&self) {
        println!(
            "\nsluice bench: {} B messages, {} producers, {} consumers, batch {}{}{}",
            self.size,
            self.producers,
            self.consumers,
            self.batch,
            // A sweep's starting rate is not the load of the run.
            self.rate
                .filter(|_| self.sweeps.is_empty())
                .map_or(String::new(), |r| format!(", open loop at {r} msg/s")),
            self.backlog
                .map_or(String::new(), |n| format!(", draining a backlog of {n}"))
        );
    }

    fn print_results(&self) {
        for r in &self.recovery {
            println!(
                "recovery of {}: {:.1} MiB of log in {} segments reopened in {:.3} s ({} messages, {} page cache)",
                r.url,
                r.log_bytes as f64 / (1024.0 * 1024.0),
                r.segments,
                r.reopen_seconds,
                r.messages,
                if r.cold_cache { "cold" } else { "warm" }
            );
        }
        for b in &self.batch_handlers {
            println!(
                "\nbatch handler on {}: {} messages into PostgreSQL\n  one row per message: {:>9.0} msg/s\n  one statement per batch (up to {}, {:.1} on average): {:>9.0} msg/s\n  batch ÷ per message: {:.1}×",
                b.url,
                b.messages,
                b.per_message_per_sec,
                b.batch,
                b.mean_batch,
                b.batched_per_sec,
                b.ratio
            );
        }
        for sweep in &self.sweeps {
            println!("\nsweep of {}:", sweep.url);
            println!(
                "{:>12} {:>12} {:>16} {:>18}  kept up",
                "offered/s", "delivered/s", "publish p99 ms", "end-to-end p99 ms"
            );
            for s in &sweep.steps {
                println!(
                    "{:>12} {:>12.0} {:>16.2} {:>18.2}  {}",
                    s.offered,
                    s.achieved,
                    s.publish_p99_us as f64 / 1000.0,
                    s.end_to_end_p99_us as f64 / 1000.0,
                    if s.sustained { "yes" } else { "no" }
                );
            }
            match sweep.max_sustainable {
                Some(rate) => println!(
                    "highest rate sustained: {rate} msg/s (≥ 90 % delivered, end-to-end p99 < 1 s)"
                ),
                None => println!("no rate tried was sustained"),
            }
        }
        if let Some(d) = &self.disk {
            println!(
                "disk (append + fdatasync every {} records): {:.0} records/s, {:.0} syncs/s, sync p50 {} µs, p99 {} µs",
                d.batch, d.records_per_sec, d.syncs_per_sec, d.sync_p50_us, d.sync_p99_us
            );
        }
        if self.results.is_empty() {
            return;
        }
        println!(
            "\n{:<28} {:>10} {:>8} {:>9} {:>22} {:>24} {:>12} {:>11}",
            "backend",
            "msg/s",
            "MiB/s",
            "vs disk",
            "publish p50/p99/p99.9",
            "end-to-end p50/p99/p99.9",
            "broker CPU",
            "broker RSS"
        );
        for r in &self.results {
            let ratio = self.disk.as_ref().map_or("-".to_owned(), |d| {
                format!("{:.0} %", 100.0 * r.messages_per_sec / d.records_per_sec)
            });
            // CPU per message makes brokers comparable whatever their throughput.
            let cpu = r.broker_cpu_seconds.map_or("-".to_owned(), |c| {
                format!("{:.1} µs/msg", 1e6 * c / r.messages.max(1) as f64)
            });
            let rss = r
                .broker_peak_rss_kib
                .map_or("-".to_owned(), |k| format!("{} MiB", k / 1024));
            println!(
                "{:<28} {:>10.0} {:>8.1} {:>9} {:>22} {:>24} {:>12} {:>11}",
                truncate(&r.url, 28),
                r.messages_per_sec,
                r.mib_per_sec,
                ratio,
                format_us(r.publish_us),
                format_us(r.end_to_end_us),
                cpu,
                rss
            );
        }
        println!("\nlatencies in ms; 'vs disk' = end-to-end messages/s ÷ the disk's records/s at the same batch size;");
        println!("broker CPU and RSS where the bench runs or started the broker (in-process brokers include the client; '-': a broker the bench did not start)");
        // `sluice serve` against the engine in-process, when both ran.
        let in_process = self.results.iter().find(|r| r.backend == "embedded");
        let nats = self.results.iter().find(|r| r.backend == "nats-jetstream");
        for served in self.results.iter().filter(|r| r.backend == "sluice") {
            if let Some(local) = in_process {
                println!(
                    "{} reaches {:.0} % of the in-process engine's throughput ({}) in the same run (goal: at least 75 %)",
                    served.url,
                    100.0 * served.messages_per_sec / local.messages_per_sec,
                    local.url
                );
            }
            if let Some(peer) = nats {
                println!(
                    "{} reaches {:.0} % of NATS JetStream's throughput in the same run (goal: at least 200 %)",
                    served.url,
                    100.0 * served.messages_per_sec / peer.messages_per_sec
                );
            }
        }
        // The HTTP data API against `sluice://`, when both ran.
        if let Some(native) = self.results.iter().find(|r| r.backend == "sluice") {
            for http in self.results.iter().filter(|r| r.backend == "http") {
                println!(
                    "{} reaches {:.0} % of sluice:// throughput ({}) in the same run (goal: at least 50 %)",
                    http.url,
                    100.0 * http.messages_per_sec / native.messages_per_sec,
                    native.url
                );
            }
        }
        // Sluice over a broker against the raw client loop run right after it.
        let raw = [
            ("lapin", "raw lapin's", " (goal: at least 90 %)"),
            ("rdkafka", "raw rdkafka's", " (goal: at least 90 %)"),
            ("aws-sdk", "the raw AWS SDK's", ""),
        ];
        for pair in self.results.windows(2) {
            for (backend, name, goal) in raw {
                if pair[1].backend == backend {
                    println!(
                        "{} reaches {:.0} % of {name} throughput on the same broker{goal}",
                        pair[0].url,
                        100.0 * pair[0].messages_per_sec / pair[1].messages_per_sec
                    );
                }
            }
        }
        // The embedded engine against the disk and the peers run on their own clients
        // (RabbitMQ's quorum queue is the raw lapin loop), with the goals in docs/benchmarks.md.
        if let (Some(local), Some(d)) = (in_process, &self.disk) {
            println!(
                "{} reaches {:.0} % of the disk's append + fdatasync limit at batch {} (goal: at least 60 %)",
                local.url,
                100.0 * local.messages_per_sec / d.records_per_sec,
                d.batch
            );
        }
        if let Some(cpu) = in_process.and_then(|r| r.broker_cpu_seconds.map(|c| (r, c))) {
            let (local, seconds) = cpu;
            println!(
                "{} spends {:.1} µs of CPU per message, client included (goal: at most 5 µs)",
                local.url,
                1e6 * seconds / local.messages.max(1) as f64
            );
        }
        let peers = [
            ("lapin", "RabbitMQ's quorum queue (raw lapin)", 800),
            ("nats-jetstream", "NATS JetStream's", 300),
            ("redis-streams", "Redis Streams'", 200),
        ];
        for local in self.results.iter().filter(|r| r.backend == "embedded") {
            for (backend, name, goal) in peers {
                if let Some(peer) = self.results.iter().find(|r| r.backend == backend) {
                    println!(
                        "{} reaches {:.0} % of {name} throughput in the same run (goal: at least {goal} %)",
                        local.url,
                        100.0 * local.messages_per_sec / peer.messages_per_sec
                    );
                }
            }
        }
    }
}

fn format_us(p: [u64; 3]) -> String {
    format!(
        "{:.2}/{:.2}/{:.2}",
        p[0] as f64 / 1000.0,
        p[1] as f64 / 1000.0,
        p[2] as f64 / 1000.0
    )
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(n - 1).collect();
        format!("{cut}…")
    }
}
