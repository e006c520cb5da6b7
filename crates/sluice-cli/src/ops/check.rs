//! `sluice check --data DIR` and `sluice repair --data DIR`: offline verification and salvage
//! of an embedded data directory (`docs/durability.md`, "Damage on disk").

use std::path::PathBuf;

use anyhow::Context;
use sluice_engine::check::{CheckReport, Severity};

/// Arguments of `sluice check`.
#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// The data directory (of `embedded:DIR` or `sluice serve --data DIR`); it must not be
    /// open in another process.
    #[arg(long, default_value = "./sluice-data")]
    data: PathBuf,
    /// Prints the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `sluice repair`.
#[derive(Debug, clap::Args)]
pub(crate) struct RepairArgs {
    /// The data directory; it must not be open in another process. Copy it aside first.
    #[arg(long, default_value = "./sluice-data")]
    data: PathBuf,
}

fn json(report: &CheckReport) -> serde_json::Value {
    serde_json::json!({
        "dir": report.dir,
        "logs": report.logs,
        "segments": report.segments,
        "records": report.records,
        "clean": report.is_clean(),
        "damaged": report.is_damaged(),
        "findings": report.findings.iter().map(|f| serde_json::json!({
            "severity": match f.severity { Severity::Damage => "damage", _ => "recoverable" },
            "file": f.file,
            "position": f.position,
            "problem": f.problem,
        })).collect::<Vec<_>>(),
    })
}

/// Runs `sluice check`: exit status 0 when nothing needs a repair, 2 when damage was found.
pub(crate) fn check(args: CheckArgs) -> anyhow::Result<()> {
    let report = sluice_engine::check::check(&args.data)
        .with_context(|| format!("checking {}", args.data.display()))?;
    if args.json {
        println!("{}", json(&report));
    } else {
        println!("{report}");
    }
    if report.is_damaged() {
        std::process::exit(2);
    }
    Ok(())
}

/// Runs `sluice repair`.
pub(crate) fn repair(args: RepairArgs) -> anyhow::Result<()> {
    let report = sluice_engine::check::repair(&args.data)
        .with_context(|| format!("repairing {}", args.data.display()))?;
    println!("{report}");
    Ok(())
}
