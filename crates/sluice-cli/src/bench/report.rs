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
        }
    }

    pub(crate) fn print(&self) {
        println!(
            "\nsluice bench: {} B messages, {} producers, {} consumers, batch {}{}{}",
            self.size,
            self.producers,
            self.consumers,
            self.batch,
            self.rate
                .map_or(String::new(), |r| format!(", open loop at {r} msg/s")),
            self.backlog
                .map_or(String::new(), |n| format!(", draining a backlog of {n}"))
        );
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
            "\n{:<28} {:>10} {:>8} {:>9} {:>22} {:>24} {:>9}",
            "backend",
            "msg/s",
            "MiB/s",
            "vs disk",
            "publish p50/p99/p99.9",
            "end-to-end p50/p99/p99.9",
            "peak RSS"
        );
        for r in &self.results {
            let ratio = self.disk.as_ref().map_or("-".to_owned(), |d| {
                format!("{:.0} %", 100.0 * r.messages_per_sec / d.records_per_sec)
            });
            println!(
                "{:<28} {:>10.0} {:>8.1} {:>9} {:>22} {:>24} {:>6} MiB",
                truncate(&r.url, 28),
                r.messages_per_sec,
                r.mib_per_sec,
                ratio,
                format_us(r.publish_us),
                format_us(r.end_to_end_us),
                r.peak_rss_kib / 1024
            );
        }
        println!("\nlatencies in ms; 'vs disk' = end-to-end messages/s ÷ the disk's records/s at the same batch size");
        // `sluice serve` against the engine in-process, when both ran.
        let in_process = self.results.iter().find(|r| r.backend == "embedded");
        for served in self.results.iter().filter(|r| r.backend == "sluice") {
            if let Some(local) = in_process {
                println!(
                    "{} reaches {:.0} % of the in-process engine's throughput ({}) in the same run",
                    served.url,
                    100.0 * served.messages_per_sec / local.messages_per_sec,
                    local.url
                );
            }
        }
        for pair in self.results.windows(2) {
            if pair[1].backend == "lapin" {
                println!(
                    "{} reaches {:.0} % of raw lapin's throughput on the same broker (goal: at least 90 %)",
                    pair[0].url,
                    100.0 * pair[0].messages_per_sec / pair[1].messages_per_sec
                );
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
