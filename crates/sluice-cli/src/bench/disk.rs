//! The disk's own limit: append records of the benchmark's size to a preallocated file and
//! `fdatasync` after every batch, as a group commit at the same batch size would, for a fixed
//! time. No Sluice code in the loop.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// What the disk did.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct DiskResult {
    /// Records (of the benchmark's size plus 8 bytes of framing) per second.
    pub(crate) records_per_sec: f64,
    /// `fdatasync` calls per second.
    pub(crate) syncs_per_sec: f64,
    /// Median time of one batch write + `fdatasync`, in microseconds.
    pub(crate) sync_p50_us: u64,
    /// 99th percentile of the same.
    pub(crate) sync_p99_us: u64,
    /// Records per sync.
    pub(crate) batch: usize,
}

const FILE_SIZE: u64 = 256 * 1024 * 1024;

pub(crate) fn measure(
    dir: &Path,
    size: usize,
    batch: usize,
    duration: Duration,
) -> std::io::Result<DiskResult> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("sluice-bench-disk-{}.tmp", std::process::id()));
    let result = run(&path, size, batch.max(1), duration);
    let _ = std::fs::remove_file(&path);
    result
}

fn run(path: &Path, size: usize, batch: usize, duration: Duration) -> std::io::Result<DiskResult> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    // Preallocate, as the engine does, so fdatasync has no metadata to flush.
    file.set_len(FILE_SIZE)?;
    file.flush()?;
    file.sync_all()?;
    let record = size + 8;
    let buf = vec![0xA5u8; record * batch];
    let mut latency = Histogram::<u64>::new(3).expect("histogram");
    let (mut position, mut records, mut syncs) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < duration {
        if position + buf.len() as u64 > FILE_SIZE {
            position = 0;
        }
        let t = Instant::now();
        file.write_all_at(&buf, position)?;
        file.sync_data()?;
        let _ = latency.record(t.elapsed().as_micros() as u64);
        position += buf.len() as u64;
        records += batch as u64;
        syncs += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(DiskResult {
        records_per_sec: records as f64 / secs,
        syncs_per_sec: syncs as f64 / secs,
        sync_p50_us: latency.value_at_quantile(0.5),
        sync_p99_us: latency.value_at_quantile(0.99),
        batch,
    })
}
