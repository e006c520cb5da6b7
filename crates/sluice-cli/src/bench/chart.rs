//! The benchmark report as an SVG chart (`--out DIR` writes `DIR/bench.svg`): end-to-end
//! throughput per backend against the disk's own limit on the left, end-to-end latency
//! p50/p99/p99.9 per backend on the right. Backends are rows, in the report's order, with
//! the same label in both panels.
//!
//! Plotters is built without a font feature: text is measured by a rough estimate and
//! written as SVG `<text>`, which the viewer lays out with its own fonts. Labels are
//! therefore kept short and given generous room.

use std::path::Path;

use anyhow::Context as _;
use plotters::coord::ranged1d::{AsRangedCoord, DefaultFormatting, KeyPointHint, ValueFormatter};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::workload::BackendResult;
use super::Report;

const WIDTH: u32 = 1400;
const LEGEND_HEIGHT: u32 = 26;
const THROUGHPUT_COLOR: RGBColor = RGBColor(0x4c, 0x78, 0xa8);
const DISK_COLOR: RGBColor = RGBColor(0xc0, 0x39, 0x2b);
/// p50, p99, p99.9: light to dark, so the tail reads as "worse".
const PERCENTILES: [(&str, RGBColor); 3] = [
    ("p50", RGBColor(0x9e, 0xca, 0xe1)),
    ("p99", RGBColor(0x42, 0x92, 0xc6)),
    ("p99.9", RGBColor(0x08, 0x45, 0x94)),
];
/// Longest backend label, in characters, before it is shortened with `…`.
const LABEL_CHARS: usize = 30;

/// Renders `report` and writes it to `path`.
pub(crate) fn write(report: &Report, path: &Path) -> anyhow::Result<()> {
    let svg = render(report).with_context(|| format!("drawing {}", path.display()))?;
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

/// Renders `report`'s backend results as an SVG document.
fn render(report: &Report) -> anyhow::Result<String> {
    anyhow::ensure!(
        !report.results.is_empty(),
        "the report has no backend results to chart"
    );
    let rows = report.results.len();
    // Room for three latency bars per backend, and never shorter than a readable chart.
    let height = (170 + 64 * rows as u32).max(420);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let body = root.titled(&title(report), ("sans-serif", 20))?;
        let (left, right) = body.split_horizontally(WIDTH / 2);
        let labels: Vec<String> = report.results.iter().map(label).collect();
        throughput_panel(&left.margin(8, 8, 8, 16), report, &labels)?;
        latency_panel(&right.margin(8, 8, 16, 16), &report.results, &labels)?;
        root.present()?;
    }
    Ok(svg)
}

/// The workload, as the table's heading says it.
fn title(report: &Report) -> String {
    let mut title = format!(
        "sluice bench: {} messages, {} producers, {} consumers, batch {}",
        size(report.size),
        report.producers,
        report.consumers,
        report.batch
    );
    if let Some(rate) = report.rate {
        title.push_str(&format!(", open loop at {} msg/s", number(rate as f64)));
    }
    if let Some(backlog) = report.backlog {
        title.push_str(&format!(
            ", draining a backlog of {}",
            number(backlog as f64)
        ));
    }
    title
}

/// Throughput bars, one row per backend, with the disk's records/s as a dashed line.
fn throughput_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    report: &Report,
    labels: &[String],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let results = &report.results;
    let disk = report.disk.as_ref().map(|d| d.records_per_sec);
    let fastest = results
        .iter()
        .map(|r| r.messages_per_sec)
        .chain(disk)
        .fold(1.0, f64::max);
    let rows = results.len();
    // Extra room on the right for the value written after each bar.
    let x_range = 0.0..fastest * 1.35;
    let area = area.titled(
        "end-to-end throughput (msg/s, higher is better)",
        ("sans-serif", 16),
    )?;
    let (legend, plot) = area.split_vertically(LEGEND_HEIGHT);
    let mut keys = vec![(
        "messages acked per second".to_owned(),
        Key::Bar(THROUGHPUT_COLOR),
    )];
    if let Some(d) = &report.disk {
        let name = format!("disk limit: append + fdatasync per {}", d.batch);
        keys.push((name, Key::Dashed(DISK_COLOR)));
    }
    draw_legend(&legend, &keys)?;
    let row_label = |y: &f64| row_label(labels, *y);
    let value_label = |x: &f64| number(*x);
    let mut chart = ChartBuilder::on(&plot)
        .x_label_area_size(44)
        .y_label_area_size(label_area(labels))
        .build_cartesian_2d(x_range, Rows(rows))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_labels(6)
        .x_label_formatter(&value_label)
        .y_label_formatter(&row_label)
        .x_desc("msg/s")
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 13))
        .draw()?;

    // Bars, then the disk line over them, then the values over both.
    chart.draw_series(results.iter().enumerate().map(|(i, r)| {
        let top = row_top(rows, i);
        Rectangle::new(
            [(0.0, top - 0.2), (r.messages_per_sec, top - 0.8)],
            THROUGHPUT_COLOR.filled(),
        )
    }))?;
    if let Some(records) = disk {
        chart.draw_series(std::iter::once(DashedPathElement::new(
            [(records, 0.0), (records, rows as f64)],
            6,
            4,
            DISK_COLOR.stroke_width(2),
        )))?;
        // At the foot of the line, under the last bar, where no bar value is written.
        let note_style = TextStyle::from(("sans-serif", 12).into_font())
            .color(&DISK_COLOR)
            .pos(Pos::new(HPos::Right, VPos::Bottom));
        chart.draw_series(std::iter::once(Text::new(
            format!("disk: {} records/s", number(records)),
            (records - fastest * 0.01, 0.02),
            note_style,
        )))?;
    }
    let value_style =
        TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, r) in results.iter().enumerate() {
        let top = row_top(rows, i);
        let mut value = format!("{} msg/s", number(r.messages_per_sec));
        if let Some(disk) = disk {
            value.push_str(&format!(
                " ({:.0} % of disk)",
                100.0 * r.messages_per_sec / disk
            ));
        }
        // On white, so the disk line behind it does not cross the text.
        let width = value.chars().count() as i32 * 6 + 4;
        let at = (r.messages_per_sec + fastest * 0.01, top - 0.5);
        chart.draw_series(std::iter::once(
            EmptyElement::at(at)
                + Rectangle::new([(-2, -9), (width, 9)], WHITE.filled())
                + Text::new(value, (0, 0), value_style.clone()),
        ))?;
    }
    Ok(())
}

/// Grouped latency bars (p50, p99, p99.9) per backend, on a log scale when they span two
/// decades or more (on a linear one the shortest bars would be a few pixels).
fn latency_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    results: &[BackendResult],
    labels: &[String],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    // In ms; a 0 µs percentile (too fast for the histogram) is drawn as 1 µs.
    let ms: Vec<[f64; 3]> = results
        .iter()
        .map(|r| r.end_to_end_us.map(|us| us.max(1) as f64 / 1000.0))
        .collect();
    let lowest = ms.iter().flatten().copied().fold(f64::INFINITY, f64::min);
    let highest = ms.iter().flatten().copied().fold(0.0, f64::max);
    let log = highest / lowest >= 100.0;
    let area = area.titled(
        if log {
            "end-to-end latency (ms, log scale, lower is better)"
        } else {
            "end-to-end latency (ms, lower is better)"
        },
        ("sans-serif", 16),
    )?;
    let (legend, plot) = area.split_vertically(LEGEND_HEIGHT);
    let keys = PERCENTILES.map(|(name, color)| (name.to_owned(), Key::Bar(color)));
    draw_legend(&legend, &keys)?;
    if log {
        // From a whole decade, so the left edge has a label; room right of the longest bar
        // for its value.
        let low = 10f64.powf(lowest.log10().floor());
        let high = highest * 2.5;
        latency_bars(&plot, (low..high).log_scale(), low, &ms, labels)
    } else {
        latency_bars(&plot, 0.0..highest * 1.3, 0.0, &ms, labels)
    }
}

fn latency_bars<DB: DrawingBackend, X>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    x_range: X,
    base: f64,
    ms: &[[f64; 3]],
    labels: &[String],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let rows = ms.len();
    let row_label = |y: &f64| row_label(labels, *y);
    let value_label = |x: &f64| number(*x);
    let mut chart = ChartBuilder::on(area)
        .x_label_area_size(44)
        .y_label_area_size(label_area(labels))
        .build_cartesian_2d(x_range, Rows(rows))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_labels(8)
        .x_label_formatter(&value_label)
        .y_label_formatter(&row_label)
        .x_desc("ms")
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 13))
        .draw()?;
    let value_style =
        TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, row) in ms.iter().enumerate() {
        let top = row_top(rows, i);
        for (k, (&value, (_, color))) in row.iter().zip(PERCENTILES).enumerate() {
            // Three bars of 0.25 in a row of 1, between margins of 0.125.
            let bar_top = top - 0.125 - 0.25 * k as f64;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(base, bar_top - 0.02), (value, bar_top - 0.23)],
                color.filled(),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                format!(" {}", number(value)),
                (value, bar_top - 0.125),
                value_style.clone(),
            )))?;
        }
    }
    Ok(())
}

/// How a legend entry is drawn.
enum Key {
    Bar(RGBColor),
    Dashed(RGBColor),
}

/// A row of legend entries, centred in `area` (one line of text high).
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    keys: &[(String, Key)],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    const SWATCH: i32 = 14;
    const GAP: i32 = 28;
    let style =
        TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    // The viewer picks the font, so widths are estimated generously (7.5 px a character).
    let text_width = |name: &str| name.chars().count() as i32 * 15 / 2;
    let total: i32 = keys
        .iter()
        .map(|(name, _)| SWATCH + 6 + text_width(name) + GAP)
        .sum::<i32>()
        - GAP;
    let (width, height) = area.dim_in_pixel();
    let middle = height as i32 / 2;
    let mut x = (width as i32 - total).max(0) / 2;
    for (name, key) in keys {
        match key {
            Key::Bar(color) => area.draw(&Rectangle::new(
                [(x, middle - SWATCH / 2), (x + SWATCH, middle + SWATCH / 2)],
                color.filled(),
            ))?,
            Key::Dashed(color) => area.draw(&DashedPathElement::new(
                [(x + SWATCH / 2, middle - 9), (x + SWATCH / 2, middle + 9)],
                4,
                3,
                color.stroke_width(2),
            ))?,
        }
        area.draw_text(name, &style, (x + SWATCH + 6, middle))?;
        x += SWATCH + 6 + text_width(name) + GAP;
    }
    Ok(())
}

/// The backend axis: `0.0..rows`, one unit per backend, with a tick (and label) at the
/// centre of every row. (Plotters' own `f64` axis cannot take custom key points together
/// with a label formatter.)
struct Rows(usize);

impl Ranged for Rows {
    type ValueType = f64;
    type FormatOption = DefaultFormatting;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let share = value / self.0.max(1) as f64;
        limit.0 + (f64::from(limit.1 - limit.0) * share).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        (0..self.0).map(|i| row_top(self.0, i) - 0.5).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        0.0..self.0 as f64
    }
}

/// Row `i`'s upper edge: the first backend is drawn at the top.
fn row_top(rows: usize, i: usize) -> f64 {
    (rows - i) as f64
}

/// The label of the row whose centre is `y`.
fn row_label(labels: &[String], y: f64) -> String {
    let i = labels.len() as f64 - 0.5 - y;
    labels
        .get(i.round().max(0.0) as usize)
        .cloned()
        .unwrap_or_default()
}

/// Pixels for the row labels: about 7.5 per character at 13 px, plus the tick.
fn label_area(labels: &[String]) -> u32 {
    let chars = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    (chars as u32 * 15 / 2 + 16).clamp(80, 260)
}

/// `backend` and a short form of the URL: `embedded …/sluice-bench`, `rabbitmq
/// localhost:5672`, or the description a raw baseline uses for its URL.
fn label(result: &BackendResult) -> String {
    let short = short_url(&result.url);
    let label = if short == result.url {
        // Not a URL: a baseline's description, which names its client.
        short
    } else if short.is_empty() {
        result.backend.clone()
    } else {
        format!("{} {short}", result.backend)
    };
    truncate(&label, LABEL_CHARS)
}

/// The part of a URL that tells two runs apart: the host and port, or the last part of a
/// path; no scheme, credentials or query.
fn short_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once(':') else {
        return url.to_owned();
    };
    let is_scheme = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !is_scheme {
        return url.to_owned();
    }
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    if let Some(authority) = rest.strip_prefix("//") {
        let authority = authority.split('/').next().unwrap_or_default();
        return authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host)
            .to_owned();
    }
    let path = rest.trim_end_matches('/');
    match path.rsplit_once('/') {
        Some((parent, last)) if !parent.is_empty() && path.chars().count() > 20 => {
            format!("…/{last}")
        }
        _ => path.to_owned(),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(n - 1).collect();
        format!("{cut}…")
    }
}

/// `950`, `12.5k`, `1.2M`; below 10, up to three significant digits (`0.42`, `2.5`).
fn number(v: f64) -> String {
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    };
    match v.abs() {
        a if a >= 1e6 => format!("{}M", trim(format!("{:.2}", v / 1e6))),
        a if a >= 1e4 => format!("{}k", trim(format!("{:.1}", v / 1e3))),
        a if a >= 10.0 => format!("{v:.0}"),
        a if a >= 1.0 => trim(format!("{v:.1}")),
        _ => trim(format!("{v:.3}")),
    }
}

/// `1024` as `1 KiB`.
fn size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::super::disk::DiskResult;
    use super::super::workload::{histogram, BackendResult};
    use super::super::{BenchArgs, Report};
    use super::{label, number, short_url};

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    /// A result whose end-to-end percentiles are close to `e2e_us`.
    fn result(url: &str, backend: &str, messages_per_sec: f64, e2e_us: [u64; 3]) -> BackendResult {
        let mut publish = histogram();
        publish.record(500).expect("record");
        let mut end_to_end = histogram();
        // 1000 samples: 900 at p50, 9 at p99.9, the rest at p99.
        for (value, count) in [(e2e_us[0], 900), (e2e_us[1], 91), (e2e_us[2], 9)] {
            end_to_end.record_n(value, count).expect("record");
        }
        BackendResult::new(
            url.to_owned(),
            backend.to_owned(),
            (100_000, 1024, 100_000.0 / messages_per_sec),
            &publish,
            &end_to_end,
        )
    }

    fn report() -> Report {
        let cli = Cli::parse_from(["bench", "--url", "memory:", "--size", "1KiB"]);
        let mut report = Report::new(&cli.args);
        report.disk = Some(DiskResult {
            records_per_sec: 180_000.0,
            syncs_per_sec: 2_800.0,
            sync_p50_us: 300,
            sync_p99_us: 900,
            batch: 64,
        });
        report.results = vec![
            result(
                "embedded:/var/tmp/sluice-bench-chart",
                "embedded",
                95_000.0,
                [800, 4_000, 12_000],
            ),
            result("memory:", "memory", 240_000.0, [150, 900, 2_500]),
            result(
                "amqp://guest:guest@localhost:5672/%2f",
                "rabbitmq",
                21_000.0,
                [3_000, 25_000, 90_000],
            ),
        ];
        report
    }

    #[test]
    fn chart_of_a_report_names_every_backend_and_both_measures() {
        let report = report();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bench.svg");
        super::write(&report, &path).expect("the chart renders");
        let svg = std::fs::read_to_string(&path).expect("the chart was written");
        assert!(svg.starts_with("<svg"), "not an SVG document: {:.80}", svg);
        assert!(svg.trim_end().ends_with("</svg>"), "the SVG is not closed");
        for result in &report.results {
            let label = label(result);
            assert!(svg.contains(&label), "no label `{label}` in the chart");
        }
        assert!(svg.contains("msg/s"), "no throughput unit in the chart");
        assert!(svg.contains("p99"), "no latency percentile in the chart");
        assert!(svg.contains("records/s"), "no disk reference in the chart");
    }

    #[test]
    fn chart_of_a_report_without_results_is_an_error() {
        let mut report = report();
        report.results.clear();
        assert!(super::render(&report).is_err());
    }

    #[test]
    fn chart_labels_shorten_urls() {
        assert_eq!(short_url("memory:"), "");
        assert_eq!(
            short_url("amqp://guest:guest@localhost:5672/%2f"),
            "localhost:5672"
        );
        assert_eq!(short_url("embedded:/tmp/b"), "/tmp/b");
        assert_eq!(
            short_url("embedded:/var/tmp/sluice-bench-chart"),
            "…/sluice-bench-chart"
        );
        assert_eq!(
            short_url("raw lapin (same broker)"),
            "raw lapin (same broker)"
        );
        let raw = result("raw lapin (same broker)", "lapin", 1.0, [1, 2, 3]);
        assert_eq!(label(&raw), "raw lapin (same broker)");
        let memory = result("memory:", "memory", 1.0, [1, 2, 3]);
        assert_eq!(label(&memory), "memory");
        let amqp = result(
            "amqp://u:p@rabbitmq.local:5672/%2f",
            "rabbitmq",
            1.0,
            [1, 2, 3],
        );
        assert_eq!(label(&amqp), "rabbitmq rabbitmq.local:5672");
    }

    #[test]
    fn chart_numbers_are_short() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(0.42), "0.42");
        assert_eq!(number(2.5), "2.5");
        assert_eq!(number(950.0), "950");
        assert_eq!(number(12_500.0), "12.5k");
        assert_eq!(number(1_200_000.0), "1.2M");
    }
}
