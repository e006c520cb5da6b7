//! Recovery time: fill an embedded data directory with a log of a given size, close the
//! engine cleanly, SIGKILL-free reopen, and time `open` (lock, catalog, recovery scan of each
//! log's active segment, subscription restore).

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice::prelude::*;

/// What a reopen cost.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RecoveryResult {
    /// The URL.
    pub(crate) url: String,
    /// Bytes of topic log written.
    pub(crate) log_bytes: u64,
    /// Topic log segments on disk.
    pub(crate) segments: usize,
    /// Messages in the log.
    pub(crate) messages: u64,
    /// Time to open the engine again, in seconds.
    pub(crate) reopen_seconds: f64,
    /// Whether the page cache was dropped before reopening (needs root).
    pub(crate) cold_cache: bool,
}

pub(crate) async fn measure(
    url: &str,
    bytes: usize,
    size: usize,
) -> anyhow::Result<RecoveryResult> {
    let path = url
        .strip_prefix("embedded:")
        .map(|p| p.split('?').next().unwrap_or(p).to_owned())
        .ok_or_else(|| anyhow::anyhow!("--recovery needs an embedded: URL"))?;
    let dir = std::path::PathBuf::from(&path).join("recovery");
    let _ = std::fs::remove_dir_all(&dir);
    let options =
        sluice::embedded::EmbeddedOptions::default().sync(sluice::embedded::SyncMode::Never);
    let backend = sluice::embedded::EmbeddedBackend::open_with(&dir, options).await?;
    let topic = TopicName::new("recovery")?;
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await?;
    let sub = SubscriptionName::new("recovery")?;
    backend
        .ensure_subscription(
            &sub,
            &SubscriptionConfig::new(topic.clone()).start(StartPosition::Earliest),
        )
        .await?;
    let publisher = backend.publisher().await?;
    let payload = Bytes::from(vec![b'r'; size]);
    let messages = (bytes / (size + 64)).max(1) as u64;
    let mut sent = 0;
    while sent < messages {
        let n = (messages - sent).min(1000);
        let batch: Vec<Message> = (0..n)
            .map(|_| Message::builder(payload.clone()).build())
            .collect::<Result<_, _>>()?;
        for r in publisher.publish_batch(&topic, batch).await {
            r?;
        }
        sent += n;
    }
    backend.close().await?;
    drop(publisher);
    drop(backend);
    let topic_dir = dir.join("topics").join("recovery");
    let (mut log_bytes, mut segments) = (0u64, 0usize);
    for entry in std::fs::read_dir(&topic_dir)? {
        let entry = entry?;
        if entry.path().extension().is_some_and(|e| e == "seg") {
            segments += 1;
            log_bytes += entry.metadata()?.len();
        }
    }
    // Cold cache when allowed (root): recovery then reads from the disk, not from memory.
    let cold = std::process::Command::new("sync").status().is_ok()
        && std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok();
    let started = Instant::now();
    let reopened = sluice::embedded::EmbeddedBackend::open(&dir).await?;
    let reopen_seconds = started.elapsed().as_secs_f64();
    let stats = reopened.stats(&sub).await?;
    anyhow::ensure!(
        stats.ready == Some(messages),
        "after reopening, {:?} ready instead of {messages}",
        stats.ready
    );
    reopened.close().await?;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(RecoveryResult {
        url: url.to_owned(),
        log_bytes,
        segments,
        messages,
        reopen_seconds,
        cold_cache: cold,
    })
}
