//! What the demo shows on stderr while it runs.
//!
//! On a terminal: live bars (`indicatif`), one for the producer during the burst and one per
//! subscription; a subscription's bar is its backlog against the size of the burst (or the
//! highest backlog, if redeliveries push it higher), so it fills during the burst and empties
//! as the consumers drain it. Anywhere else (a pipe,
//! a CI log, or `--plain`): one plain line every two seconds with the same numbers. Stdout is
//! left to the summary; a line the demo prints to stdout while the bars are live goes through
//! [`Progress::println`] so it lands above them instead of through them.

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain line is printed.
const PLAIN_EVERY: Duration = Duration::from_secs(2);
/// The span the acked rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// The start of every bar's line: a name, then the bar; with the numbers, under 80 columns.
const BAR: &str = "{prefix:<9.bold} {bar:20.cyan/blue}";

/// One subscription as sampled: its backlog in the backend, its worker's counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    /// Ready plus in flight plus delayed.
    pub(crate) backlog: u64,
    /// Acked by the worker so far.
    pub(crate) acked: u64,
    /// Retried by the worker so far.
    pub(crate) retried: u64,
    /// Messages in the dead-letter queue.
    pub(crate) dead_lettered: u64,
    /// Deliveries the worker is handling now.
    pub(crate) in_flight: u64,
}

/// The progress display: live bars or plain lines, chosen once at the start.
pub(crate) struct Progress {
    names: Vec<&'static str>,
    origin: Instant,
    orders: u64,
    sent: u64,
    burst_over: bool,
    rates: Rates,
    view: View,
}

enum View {
    Live {
        multi: MultiProgress,
        producer: ProgressBar,
        subscriptions: Vec<ProgressBar>,
    },
    Plain {
        last_line: Instant,
    },
}

impl Progress {
    /// Starts the display; `origin` is the start of the burst, `orders` its size. Plain lines
    /// when `plain` is set or stderr is not a terminal.
    pub(crate) fn start(plain: bool, names: &[&'static str], orders: u64, origin: Instant) -> Self {
        let view = if plain || !std::io::stderr().is_terminal() {
            View::Plain { last_line: origin }
        } else {
            live(names, orders)
        };
        Self {
            names: names.to_vec(),
            origin,
            orders,
            sent: 0,
            burst_over: false,
            rates: Rates::default(),
            view,
        }
    }

    /// The producer has sent `sent` orders of the burst.
    pub(crate) fn sent(&mut self, sent: u64) {
        self.sent = sent;
        if let View::Live { producer, .. } = &self.view {
            producer.set_position(sent);
        }
    }

    /// The burst is over.
    pub(crate) fn burst_done(&mut self) {
        self.burst_over = true;
        if let View::Live { producer, .. } = &self.view {
            let took = self.origin.elapsed().as_secs_f64();
            producer.finish_with_message(format!("done in {took:.1}s"));
        }
    }

    /// Prints a line to stdout, above the bars if they are live.
    pub(crate) fn println(&self, line: &str) {
        match &self.view {
            View::Live { multi, .. } => multi.suspend(|| println!("{line}")),
            View::Plain { .. } => println!("{line}"),
        }
    }

    /// Shows a new sample of every subscription, in the order of the names.
    pub(crate) fn update(&mut self, samples: &[Sample]) {
        let now = Instant::now();
        let acked: Vec<u64> = samples.iter().map(|s| s.acked).collect();
        let rates = self.rates.update(now, &acked);
        match &mut self.view {
            View::Live {
                producer,
                subscriptions,
                ..
            } => {
                if !self.burst_over && self.sent > 0 {
                    let elapsed = self.origin.elapsed().as_secs_f64().max(1e-3);
                    producer.set_message(format!("{:.0}/s", self.sent as f64 / elapsed));
                }
                for ((bar, sample), rate) in subscriptions.iter().zip(samples).zip(&rates) {
                    // Full length: the burst, or the highest backlog if that is higher.
                    bar.set_length(bar.length().unwrap_or(0).max(sample.backlog).max(1));
                    bar.set_position(sample.backlog);
                    bar.set_message(numbers(sample, *rate));
                }
            }
            View::Plain { last_line } => {
                if now.duration_since(*last_line) < PLAIN_EVERY {
                    return;
                }
                *last_line = now;
                let mut parts = Vec::new();
                if !self.burst_over {
                    parts.push(format!("producer {}/{} sent", self.sent, self.orders));
                }
                for ((name, sample), rate) in self.names.iter().zip(samples).zip(&rates) {
                    parts.push(format!(
                        "{name} {} ({rate:.0}/s, {} retried, {} DLQ)",
                        sample.backlog, sample.retried, sample.dead_lettered
                    ));
                }
                eprintln!(
                    "  t={:>4.1}s backlog: {}",
                    self.origin.elapsed().as_secs_f64(),
                    parts.join(" | ")
                );
            }
        }
    }

    /// Takes the bars off the screen (the summary follows on stdout).
    pub(crate) fn finish(self) {
        if let View::Live { multi, .. } = self.view {
            let _ = multi.clear();
        }
    }
}

/// The bars: the producer first, then one per subscription.
fn live(names: &[&'static str], orders: u64) -> View {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = |rest: &str| {
        ProgressStyle::with_template(&format!("{BAR} {rest}"))
            .expect("a valid template")
            .progress_chars("█▉▊▋▌▍▎▏░")
    };
    let producer = multi.add(
        ProgressBar::new(orders)
            .with_style(style("{pos:>6}/{len} orders sent  {msg}"))
            .with_prefix("producer"),
    );
    let subscriptions = names
        .iter()
        .map(|name| {
            multi.add(
                // The burst plus its poison order.
                ProgressBar::new(orders + 1)
                    .with_style(style("{msg}"))
                    .with_prefix(*name)
                    .with_message(numbers(&Sample::default(), 0.0)),
            )
        })
        .collect();
    View::Live {
        multi,
        producer,
        subscriptions,
    }
}

/// The numbers beside a subscription's bar.
fn numbers(sample: &Sample, rate: f64) -> String {
    format!(
        "{:>6} backlog {rate:>4.0} acked/s {:>4} retried {:>2} DLQ",
        sample.backlog, sample.retried, sample.dead_lettered
    )
}

/// Acked per second over about the last [`RATE_WINDOW`], per subscription.
#[derive(Default)]
struct Rates {
    /// (when, acked so far per subscription), oldest first.
    window: VecDeque<(Instant, Vec<u64>)>,
}

impl Rates {
    /// Records the acked counters at `now` and returns each one's rate.
    fn update(&mut self, now: Instant, acked: &[u64]) -> Vec<f64> {
        self.window.push_back((now, acked.to_vec()));
        // Drop the oldest sample while the next one still spans the whole window.
        while self
            .window
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= RATE_WINDOW)
        {
            self.window.pop_front();
        }
        let (since, before) = self.window.front().expect("just pushed");
        let seconds = now.duration_since(*since).as_secs_f64();
        acked
            .iter()
            .zip(before)
            .map(|(now, before)| {
                if seconds > 0.0 {
                    now.saturating_sub(*before) as f64 / seconds
                } else {
                    0.0
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_measured_over_the_last_second() {
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);
        let mut rates = Rates::default();
        assert_eq!(
            rates.update(at(0), &[0]),
            vec![0.0],
            "one sample: no rate yet"
        );
        // 100 acked per second for two seconds, sampled every 100 ms.
        let mut last = Vec::new();
        for i in 1..=20 {
            last = rates.update(at(i * 100), &[i * 10]);
        }
        assert!((last[0] - 100.0).abs() < 1e-9, "{last:?}");
        // Then nothing for 1.5 s: the old burst of acks leaves the window.
        for i in 21..=35 {
            last = rates.update(at(i * 100), &[200]);
        }
        assert_eq!(last, vec![0.0], "the rate falls to zero once acks stop");
    }
}
