//! `--sweep`: the highest rate a backend sustains. Open-loop steps (a fixed schedule, latency
//! measured without coordinated omission) at doubling rates until one is not sustained, then
//! a few bisection steps between the last rate sustained and the first one not.
//!
//! A step is sustained when the backend delivered at least 90 % of the offered rate over
//! the step (publish, consume and ack included) and its end-to-end p99 stayed under 1 s.

use std::time::Duration;

use anyhow::Context as _;

use super::workload;
use super::BenchArgs;

/// One step of a sweep.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct SweepStep {
    /// Offered rate, messages per second.
    pub(crate) offered: u64,
    /// Delivered rate over the step (acked messages ÷ the step's wall time).
    pub(crate) achieved: f64,
    /// Publish-confirm p99, µs.
    pub(crate) publish_p99_us: u64,
    /// End-to-end p99, µs.
    pub(crate) end_to_end_p99_us: u64,
    /// Whether the backend kept up (see the module docs).
    pub(crate) sustained: bool,
}

/// A sweep of one backend.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct SweepResult {
    /// The URL swept.
    pub(crate) url: String,
    /// Every step, in the order run.
    pub(crate) steps: Vec<SweepStep>,
    /// The highest offered rate sustained.
    pub(crate) max_sustainable: Option<u64>,
}

const END_TO_END_P99_LIMIT_US: u64 = 1_000_000;
const MAX_STEPS: usize = 14;

/// Sweeps `url`: steps of `step` each, starting at `start` messages per second.
pub(crate) async fn run(
    url: &str,
    args: &BenchArgs,
    start: u64,
    step: Duration,
) -> anyhow::Result<SweepResult> {
    let mut steps = Vec::new();
    let mut good: Option<u64> = None;
    let mut bad: Option<u64> = None;
    let mut rate = start.max(1);
    while steps.len() < MAX_STEPS {
        let mut at = args.clone();
        at.rate = Some(rate);
        at.duration = Some(step);
        // A short warm-up at the same rate.
        at.messages = (rate / 2).max(at.batch as u64);
        let r = workload::run(url, &at)
            .await
            .with_context(|| format!("sweeping {url} at {rate} msg/s"))?;
        let sustained = r.messages_per_sec >= 0.9 * rate as f64
            && r.end_to_end_us[1] <= END_TO_END_P99_LIMIT_US;
        if !args.json {
            eprintln!(
                "{url}: offered {rate} msg/s, delivered {:.0}, end-to-end p99 {:.1} ms: {}",
                r.messages_per_sec,
                r.end_to_end_us[1] as f64 / 1000.0,
                if sustained {
                    "sustained"
                } else {
                    "not sustained"
                }
            );
        }
        steps.push(SweepStep {
            offered: rate,
            achieved: r.messages_per_sec,
            publish_p99_us: r.publish_us[1],
            end_to_end_p99_us: r.end_to_end_us[1],
            sustained,
        });
        if sustained {
            good = Some(good.map_or(rate, |g| g.max(rate)));
        } else {
            bad = Some(bad.map_or(rate, |b| b.min(rate)));
        }
        rate = match (good, bad) {
            (_, None) => rate * 2,
            (None, Some(b)) if b <= 1 => break,
            (None, Some(b)) => b / 2,
            // Bisect until the bracket is within 10 %.
            (Some(g), Some(b)) if (b - g) * 10 <= b => break,
            (Some(g), Some(b)) => g + (b - g) / 2,
        };
    }
    Ok(SweepResult {
        url: url.to_owned(),
        steps,
        max_sustainable: good,
    })
}
