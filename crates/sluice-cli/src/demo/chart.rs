//! The backlog over time, for the summary: every sample the demo took, one sparkline row per
//! subscription.
//!
//! Samples arrive at uneven intervals (every 250 ms during the burst, about every 100 ms while
//! draining), so a row is resampled by time, not by index: each column covers an equal slice
//! of the run and shows the highest backlog sampled in it (a spike is never averaged away); a
//! column with no sample holds the last value seen before it. Every row uses the same scale,
//! the highest backlog of any subscription, so rows compare at a glance. An empty backlog is
//! drawn as a blank, so the drained tail of a row is visibly empty rather than a low bar.

use std::fmt::Write as _;
use std::time::Duration;

/// The eight heights of a sparkline, lowest first.
const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The backlog of each subscription, sampled over the run.
pub(crate) struct History {
    series: Vec<Series>,
}

/// One subscription's samples: time since the burst began, backlog.
struct Series {
    name: String,
    points: Vec<(Duration, u64)>,
}

impl History {
    /// An empty history for these subscriptions, in display order.
    pub(crate) fn new(names: &[&str]) -> Self {
        let series = names
            .iter()
            .map(|name| Series {
                name: (*name).to_owned(),
                points: Vec::new(),
            })
            .collect();
        Self { series }
    }

    /// Records one sample; `backlogs` is in the order of the names given to [`History::new`].
    pub(crate) fn record(&mut self, at: Duration, backlogs: &[u64]) {
        for (series, backlog) in self.series.iter_mut().zip(backlogs) {
            series.points.push((at, *backlog));
        }
    }

    /// The highest backlog sampled for the `index`-th subscription.
    pub(crate) fn peak(&self, index: usize) -> u64 {
        self.series[index]
            .points
            .iter()
            .map(|(_, backlog)| *backlog)
            .max()
            .unwrap_or(0)
    }

    /// The chart: a header, one row per subscription `columns` wide, and a time axis.
    pub(crate) fn render(&self, columns: usize) -> String {
        let columns = columns.max(1);
        let span = self
            .series
            .iter()
            .filter_map(|s| s.points.last().map(|(at, _)| *at))
            .max()
            .unwrap_or_default();
        let scale = (0..self.series.len())
            .map(|i| self.peak(i))
            .max()
            .unwrap_or(0);
        let name_width = self.series.iter().map(|s| s.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "backlog over time (ready + in flight + delayed; one column = {:.2}s, full height = {scale}):",
            (span / columns as u32).as_secs_f64(),
        );
        for series in &self.series {
            let peak = series
                .points
                .iter()
                .filter(|(_, backlog)| *backlog > 0)
                .max_by_key(|(at, backlog)| (*backlog, std::cmp::Reverse(*at)));
            let note = match (peak, drained_at(&series.points)) {
                (None, _) => "never backed up".to_owned(),
                (Some((at, backlog)), Some(drained)) => format!(
                    "peak {backlog} at {}, drained at {}",
                    seconds(*at),
                    seconds(drained)
                ),
                (Some((at, backlog)), None) => {
                    format!("peak {backlog} at {}, not drained", seconds(*at))
                }
            };
            let row = sparkline(&resample(&series.points, span, columns), scale);
            let _ = writeln!(out, "  {:<name_width$} │{row}│ {note}", series.name);
        }
        let _ = writeln!(
            out,
            "  {:<name_width$} {}",
            "",
            axis(span, columns + 2),
            name_width = name_width
        );
        out
    }
}

/// `points` (time, value) resampled into `columns` equal slices of `[0, span]`: the highest
/// value sampled in each slice, or, for a slice without a sample, the last value before it
/// (zero before the first sample).
pub(crate) fn resample(points: &[(Duration, u64)], span: Duration, columns: usize) -> Vec<u64> {
    let column_of = |at: Duration| {
        if span.is_zero() {
            0
        } else {
            let position = at.as_secs_f64() / span.as_secs_f64() * columns as f64;
            (position as usize).min(columns.saturating_sub(1))
        }
    };
    let mut values = vec![0; columns];
    let mut held = 0;
    let mut points = points.iter().peekable();
    for (column, value) in values.iter_mut().enumerate() {
        let mut highest = None;
        while let Some((_, v)) = points.next_if(|(at, _)| column_of(*at) <= column) {
            highest = Some(highest.map_or(*v, |h: u64| h.max(*v)));
            held = *v;
        }
        *value = highest.unwrap_or(held);
    }
    values
}

/// One character per value, the height relative to `scale`: blank for zero, at least the
/// lowest bar for anything above zero, the full bar for `scale` and above.
pub(crate) fn sparkline(values: &[u64], scale: u64) -> String {
    values
        .iter()
        .map(|&value| {
            if value == 0 || scale == 0 {
                ' '
            } else {
                let level = (value.min(scale) * LEVELS.len() as u64).div_ceil(scale);
                LEVELS[(level as usize).clamp(1, LEVELS.len()) - 1]
            }
        })
        .collect()
}

/// When the backlog last became empty: the first sample of the trailing run of zeros, or
/// `None` if the last sample is not empty (or there is none).
fn drained_at(points: &[(Duration, u64)]) -> Option<Duration> {
    let (_, last) = points.last()?;
    if *last != 0 {
        return None;
    }
    let busy = points.iter().rposition(|(_, backlog)| *backlog != 0);
    Some(points[busy.map_or(0, |i| i + 1)].0)
}

/// A time axis `width` characters wide: `0s` at the left, the middle and `span` at the right.
fn axis(span: Duration, width: usize) -> String {
    let mut line: Vec<char> = vec![' '; width];
    let mut place = |label: String, center: usize| {
        let label: Vec<char> = label.chars().collect();
        let start = center
            .saturating_sub(label.len() / 2)
            .min(width.saturating_sub(label.len()));
        for (i, c) in label.into_iter().enumerate() {
            if let Some(slot) = line.get_mut(start + i) {
                *slot = c;
            }
        }
    };
    place("0s".to_owned(), 0);
    place(seconds(span / 2), width / 2);
    place(seconds(span), width);
    let line: String = line.into_iter().collect();
    format!("{} (since the burst began)", line.trim_end())
}

/// A time in seconds, to a tenth.
fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn an_empty_series_resamples_to_blank_columns() {
        let values = resample(&[], at(0), 60);
        assert_eq!(values, vec![0; 60], "no sample means no backlog");
        assert_eq!(sparkline(&values, 0), " ".repeat(60), "blank, not a bar");
    }

    #[test]
    fn a_constant_series_fills_every_column_at_full_height() {
        let points: Vec<_> = (0..=10).map(|i| (at(i * 100), 40)).collect();
        let values = resample(&points, at(1000), 60);
        assert_eq!(
            values,
            vec![40; 60],
            "columns between samples hold the last value"
        );
        assert_eq!(sparkline(&values, 40), "█".repeat(60));
    }

    #[test]
    fn a_spike_between_low_samples_keeps_its_full_height() {
        // Ten samples a second for ten seconds; one spike at 5.05 s, inside a column that
        // also holds low samples.
        let mut points: Vec<_> = (0..=100).map(|i| (at(i * 100), 1)).collect();
        points.insert(51, (at(5050), 800));
        let values = resample(&points, at(10_000), 20);
        assert_eq!(
            values.iter().filter(|v| **v == 800).count(),
            1,
            "{values:?}"
        );
        assert_eq!(
            values[10], 800,
            "5.05 s of 10 s is the eleventh of 20 columns"
        );
        let row = sparkline(&values, 800);
        assert_eq!(row.chars().nth(10), Some('█'), "{row}");
        assert_eq!(
            row.chars().filter(|c| *c == '▁').count(),
            19,
            "a backlog of 1 in 800 still shows as the lowest bar, not a blank: {row}"
        );
    }

    #[test]
    fn sparse_samples_hold_their_value_until_the_next_one() {
        let points = [(at(0), 0), (at(250), 8), (at(1000), 0)];
        let values = resample(&points, at(1000), 8);
        assert_eq!(values, vec![0, 0, 8, 8, 8, 8, 8, 0], "{values:?}");
    }

    #[test]
    fn heights_scale_to_eight_levels() {
        assert_eq!(sparkline(&[0, 1, 4, 5, 8, 9], 8), " ▁▄▅██");
    }

    #[test]
    fn drained_at_is_the_start_of_the_trailing_zeros() {
        let points = [(at(0), 0), (at(100), 5), (at(200), 0), (at(300), 0)];
        assert_eq!(drained_at(&points), Some(at(200)));
        assert_eq!(drained_at(&points[..2]), None, "still backed up");
        assert_eq!(drained_at(&[]), None);
    }

    #[test]
    fn the_chart_has_a_header_a_row_per_subscription_and_an_axis() {
        let mut history = History::new(&["email", "shipping"]);
        for i in 0..=20u64 {
            let backlog = 100u64.saturating_sub(i * 10);
            history.record(at(i * 100), &[backlog, backlog / 2]);
        }
        let chart = history.render(20);
        let lines: Vec<&str> = chart.lines().collect();
        assert_eq!(lines.len(), 4, "{chart}");
        assert!(lines[0].starts_with("backlog over time"), "{chart}");
        assert!(
            lines[1].contains("peak 100 at 0.0s, drained at 1.0s"),
            "{chart}"
        );
        assert!(lines[2].starts_with("  shipping │"), "{chart}");
        assert!(
            lines[3].trim_start().starts_with("0s") && lines[3].contains("2.0s"),
            "{chart}"
        );
        assert_eq!(history.peak(1), 50);
    }
}
