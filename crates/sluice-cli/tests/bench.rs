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

#[test]
fn bench_with_peers_reports_nats_jetstream_and_redis_streams_measured_on_their_own_clients() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "bench",
            "--url",
            "memory:",
            "--peer",
            "nats://127.0.0.1:4222",
            "--peer",
            "redis://127.0.0.1:6379",
            "--messages",
            "2000",
            "--producers",
            "1",
            "--consumers",
            "1",
            "--batch",
            "50",
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
    let results = report["results"].as_array().expect("results");
    for peer in ["nats-jetstream", "redis-streams"] {
        let result = results
            .iter()
            .find(|r| r["backend"] == peer)
            .unwrap_or_else(|| panic!("no result for {peer} in {results:?}"));
        assert_eq!(result["messages"], 2000, "{peer} measured every message");
        assert!(
            result["messages_per_sec"].as_f64().unwrap() > 0.0,
            "{peer} has a positive throughput"
        );
    }
}

#[test]
fn bench_rejects_a_peer_it_does_not_know() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "bench",
            "--url",
            "memory:",
            "--peer",
            "amqp://127.0.0.1:5672",
        ])
        .output()
        .expect("run sluice bench");
    assert!(!out.status.success(), "an unknown peer is an error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nats://HOST:PORT") && stderr.contains("redis://HOST:PORT"),
        "the error names the peers it knows: {stderr}"
    );
}

/// Runs `sluice bench ARGS`, expecting success; returns stdout.
fn bench_ok(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run sluice bench");
    assert!(
        out.status.success(),
        "sluice bench {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The short profile over everything this machine runs — the command `docs/benchmarks.md`
/// shows, with `--short` — writes the table, the JSON and the chart. Kept under two minutes
/// (SQS on the emulator is the slowest part).
#[test]
fn bench_all_short_runs_every_backend_and_peer_and_writes_table_json_and_chart() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stdout = bench_ok(&[
        "--all",
        "--short",
        "--disk-dir",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(stdout.contains("msg/s"), "the table:\n{stdout}");
    // The HTTP data API against sluice:// on the same server build, in the same run.
    assert!(
        stdout.contains("of sluice:// throughput"),
        "the HTTP ratio:\n{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("bench.json")).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    let backends: Vec<&str> = results
        .iter()
        .filter_map(|r| r["backend"].as_str())
        .collect();
    for expected in [
        "embedded",
        "sluice",
        "http",
        "nats-jetstream",
        "redis-streams",
    ] {
        assert!(backends.contains(&expected), "{expected} in {backends:?}");
    }
    for r in results {
        assert_eq!(r["messages"], 400, "{r}");
        assert!(r["messages_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    }
    let served = results.iter().find(|r| r["backend"] == "sluice").unwrap();
    assert!(
        served["broker_cpu_seconds"].as_f64().unwrap() > 0.0,
        "the served engine's CPU time is measured: {served}"
    );
    assert!(served["broker_peak_rss_kib"].as_u64().unwrap() > 0);
    let svg = std::fs::read_to_string(out.join("bench.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("msg/s"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only the output directory is left: the engine's directories are removed"
    );
}

#[test]
fn bench_measures_for_a_duration_instead_of_a_count() {
    let stdout = bench_ok(&[
        "--url",
        "memory:",
        "--duration",
        "1s",
        "--messages",
        "200",
        "--disk-duration",
        "100ms",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let r = &report["results"][0];
    assert!(
        r["messages"].as_u64().unwrap() > 200,
        "published for a second: {r}"
    );
    assert!(r["seconds"].as_f64().unwrap() >= 1.0, "{r}");
}

#[test]
fn bench_sweep_finds_the_highest_rate_sustained() {
    let stdout = bench_ok(&[
        "--url",
        "memory:",
        "--sweep",
        "--rate",
        "4000",
        "--duration",
        "400ms",
        "--disk-duration",
        "100ms",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let sweep = &report["sweeps"][0];
    let steps = sweep["steps"].as_array().unwrap();
    assert!(steps.len() >= 2, "{sweep}");
    assert_eq!(steps[0]["offered"], 4000);
    let max = sweep["max_sustainable"]
        .as_u64()
        .expect("a rate was sustained");
    assert!(
        steps
            .iter()
            .any(|s| s["offered"] == max && s["sustained"] == true),
        "the answer is a step that kept up: {sweep}"
    );
    assert!(
        steps
            .iter()
            .all(|s| s["sustained"] == true || s["offered"].as_u64().unwrap() > max),
        "nothing above it kept up and nothing below failed: {sweep}"
    );
}

/// `--batch-handler`: the same backlog drained into PostgreSQL twice, one row per message and
/// one statement per batch; both rates and their ratio are reported, and the table dropped.
#[test]
fn bench_batch_handler_reports_both_rates_and_their_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("embedded:{}", dir.path().join("engine").display());
    let stdout = bench_ok(&[
        "--url",
        &url,
        "--batch-handler",
        "50",
        "--messages",
        "500",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    let result = &report["batch_handlers"][0];
    assert_eq!(result["messages"], 500, "{result}");
    assert_eq!(result["batch"], 50, "{result}");
    let (single, batched, ratio) = (
        result["per_message_per_sec"].as_f64().unwrap(),
        result["batched_per_sec"].as_f64().unwrap(),
        result["ratio"].as_f64().unwrap(),
    );
    assert!(single > 0.0 && batched > 0.0, "{result}");
    assert!(
        (ratio - batched / single).abs() < 1e-6 * ratio.max(1.0),
        "{result}"
    );
    assert!(
        result["mean_batch"].as_f64().unwrap() > 1.0,
        "batches formed: {result}"
    );
}
