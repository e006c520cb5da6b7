//! `sluice bench` runs a workload end to end and reports it as JSON.

use std::process::Command;

#[test]
fn bench_reports_throughput_latency_and_the_disk_baseline_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "bench",
            "--url",
            "memory:",
            "--messages",
            "2000",
            "--batch",
            "16",
            "--disk-duration",
            "200ms",
            "--json",
        ])
        .arg("--disk-dir")
        .arg(dir.path())
        .output()
        .expect("run sluice bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let result = &report["results"][0];
    assert_eq!(result["backend"], "memory");
    assert_eq!(result["messages"], 2000);
    assert!(result["messages_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(
        result["end_to_end_us"].as_array().unwrap().len(),
        3,
        "p50, p99, p99.9"
    );
    assert!(report["disk"]["records_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(report["disk"]["batch"], 16);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the disk baseline cleans up its file"
    );
}
