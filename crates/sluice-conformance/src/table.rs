//! The capability table: one column per backend, one row per capability, and the scenarios
//! each backend skips because of them. `docs/capabilities.md` is generated from it.

use std::fmt::Write;
use std::time::Duration;

use sluice_core::{Capabilities, OrderingLevel, Support};

use crate::scenarios::{skip_reason, SCENARIOS};

fn support(value: Support) -> &'static str {
    match value {
        Support::Native => "native",
        Support::Emulated => "emulated",
        Support::Unsupported => "no",
    }
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

fn ordering(level: OrderingLevel) -> &'static str {
    match level {
        OrderingLevel::Strict => "strict",
        OrderingLevel::UntilRetry => "until retry",
        OrderingLevel::None => "none",
    }
}

/// A duration in its largest whole unit (`15 min`, `1 s`, `250 ms`).
fn duration(d: Duration) -> String {
    let units = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "min"),
        (1_000, "s"),
        (1, "ms"),
    ];
    let ms = d.as_millis();
    if ms == 0 {
        return format!("{} µs", d.as_micros());
    }
    for (size, unit) in units {
        if ms % size == 0 {
            return format!("{} {unit}", ms / size);
        }
    }
    unreachable!("every duration is a whole number of milliseconds or less")
}

fn limit(d: Option<Duration>) -> String {
    d.map_or_else(|| "unbounded".to_owned(), duration)
}

/// A size in its largest whole binary unit (`1 MiB`, `256 KiB`, `1000 B`).
fn bytes(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

/// One row: a capability's label and how each backend renders it.
type Row = (&'static str, fn(&Capabilities) -> String);

const ROWS: &[Row] = &[
    ("delayed publish", |c| support(c.delay).to_owned()),
    ("max delay", |c| limit(c.max_delay)),
    ("ordering per key", |c| ordering(c.ordering).to_owned()),
    ("dedup window", |c| support(c.dedup_window).to_owned()),
    ("max dedup window", |c| match c.fixed_dedup_window {
        Some(fixed) => format!("{} (fixed)", duration(fixed)),
        None => limit(c.max_dedup_window),
    }),
    ("backlog bounds (block / reject)", |c| {
        support(c.backlog_bounds).to_owned()
    }),
    ("replay (start earliest / at)", |c| {
        yes_no(c.replay).to_owned()
    }),
    ("routing-key filter", |c| support(c.filter).to_owned()),
    ("release counts as attempt", |c| {
        yes_no(c.release_counts_as_attempt).to_owned()
    }),
    ("survives broker restart", |c| {
        yes_no(c.survives_restart).to_owned()
    }),
    ("reconnects", |c| yes_no(c.reconnects).to_owned()),
    ("max message size", |c| bytes(c.max_message_size)),
    ("max batch", |c| c.max_batch.to_string()),
    ("time granularity", |c| duration(c.time_granularity)),
    ("global limits (rate, concurrency)", |c| {
        match c.global_rate_limits {
            Support::Native => "native".to_owned(),
            Support::Emulated => "store (Redis, SQL)".to_owned(),
            Support::Unsupported => "no".to_owned(),
        }
    }),
];

/// Renders the capabilities of some backends as a markdown table (one column per backend),
/// followed by the conformance scenarios each one skips because of its capabilities.
/// Scenarios skipped because a harness lacks a hook (proxy, restart) are not listed: they
/// depend on the test setup, not the backend.
pub fn capability_table(caps: &[Capabilities]) -> String {
    let mut out = String::new();
    let _ = write!(out, "| capability |");
    for c in caps {
        let _ = write!(out, " {} |", c.backend);
    }
    let _ = write!(out, "\n|---|");
    for _ in caps {
        let _ = write!(out, "---|");
    }
    out.push('\n');
    for (label, render) in ROWS {
        let _ = write!(out, "| {label} |");
        for c in caps {
            let _ = write!(out, " {} |", render(c));
        }
        out.push('\n');
    }

    out.push_str("\nConformance scenarios skipped because of these capabilities:\n\n");
    for c in caps {
        let skipped: Vec<String> = SCENARIOS
            .iter()
            .filter_map(|s| skip_reason(s, c).map(|reason| format!("`{s}` ({reason})")))
            .collect();
        let list = if skipped.is_empty() {
            "none".to_owned()
        } else {
            skipped.join("; ")
        };
        let _ = writeln!(out, "- **{}**: {list}", c.backend);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_column_per_backend_and_lists_skips() {
        let full = Capabilities::full("reference");
        let mut small = Capabilities::full("small");
        small.delay = Support::Unsupported;
        small.backlog_bounds = Support::Unsupported;
        small.ordering = OrderingLevel::UntilRetry;
        small.max_message_size = 256 * 1024;
        small.time_granularity = Duration::from_secs(1);
        let table = capability_table(&[full, small]);
        assert!(table.starts_with("| capability | reference | small |\n|---|---|---|\n"));
        assert!(
            table.contains("| delayed publish | native | no |"),
            "{table}"
        );
        assert!(table.contains("| ordering per key | strict | until retry |"));
        assert!(
            table.contains("| backlog bounds (block / reject) | native | no |"),
            "{table}"
        );
        assert!(
            table.contains(
                "`backlog_bound_rejects_or_blocks_when_full` (backlog bounds are unsupported)"
            ),
            "{table}"
        );
        assert!(table.contains("| max message size | 1 MiB | 256 KiB |"));
        assert!(table.contains("| time granularity | 1 ms | 1 s |"));
        assert!(table.contains("- **reference**: none"), "{table}");
        assert!(
            table.contains("`delayed_publish_not_delivered_early`"),
            "{table}"
        );
    }

    #[test]
    fn durations_use_their_largest_whole_unit() {
        assert_eq!(duration(Duration::from_secs(900)), "15 min");
        assert_eq!(duration(Duration::from_millis(1500)), "1500 ms");
        assert_eq!(duration(Duration::from_secs(14 * 86_400)), "14 d");
    }
}
