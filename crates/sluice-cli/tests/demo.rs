//! `sluice demo` end to end: the binary runs the scenario and its books reconcile, on the
//! embedded engine, in memory, and on every broker CI runs (RabbitMQ, Kafka, SQS on moto);
//! `serve.rs` runs it against `sluice serve`.

use std::process::Command;

/// Runs `sluice demo` on the embedded engine in a directory of its own.
fn demo(args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    demo_on(&format!("embedded:{}", dir.path().display()), args)
}

/// `sluice COMMAND --url URL`, with credentials for the moto emulator of
/// `scripts/services-up` (any do).
fn sluice(command: &[&str], url: &str) -> Command {
    let mut sluice = Command::new(env!("CARGO_BIN_EXE_sluice"));
    sluice
        .args(command)
        .args(["--url", url])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test");
    sluice
}

/// Runs `sluice demo` on `url`.
fn demo_on(url: &str, args: &[&str]) -> (bool, String) {
    let out = sluice(&["demo"], url)
        .args(args)
        .output()
        .expect("run sluice demo");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_demo_reconciles_every_subscription_and_charges_each_order_once() {
    let (ok, out) = demo(&[
        "--orders",
        "300",
        "--rate",
        "3000",
        "--email-rate",
        "300",
        "--seed",
        "7",
    ]);
    assert!(ok, "demo failed:\n{out}");
    for name in ["email", "billing", "analytics", "shipping"] {
        assert!(
            out.contains(&format!("ok   {name}: 301 published")),
            "{name} does not reconcile:\n{out}"
        );
    }
    assert!(
        out.contains("ok   billing: 300 orders charged exactly once"),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
    assert!(
        out.contains("backlog over time"),
        "the summary charts the backlog:\n{out}"
    );
    for name in ["email", "billing", "analytics", "shipping"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("  {name} ")) && l.contains("drained at")),
            "the chart has a drained row for {name}:\n{out}"
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_workload() {
    let published = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("burst done"))
            .map(|l| {
                l.split_once(": ")
                    .map(|(_, rest)| rest.to_owned())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    };
    let (ok1, a) = demo(&[
        "--orders",
        "100",
        "--rate",
        "5000",
        "--email-rate",
        "1000",
        "--seed",
        "3",
    ]);
    let (ok2, b) = demo(&[
        "--orders",
        "100",
        "--rate",
        "5000",
        "--email-rate",
        "1000",
        "--seed",
        "3",
    ]);
    assert!(ok1 && ok2, "{a}\n{b}");
    assert!(!published(&a).is_empty());
    assert_eq!(
        published(&a),
        published(&b),
        "published and dropped-duplicate counts depend only on the seed"
    );
}

#[test]
fn an_unreachable_backend_is_a_clear_error() {
    // Nothing listens on port 1: the CLI has every backend, so the error is the connection's.
    let (ok, out) = demo_on("kafka://127.0.0.1:1", &[]);
    assert!(!ok);
    assert!(
        out.contains("no Kafka broker answers at 127.0.0.1:1"),
        "{out}"
    );
}

#[test]
fn the_demo_reconciles_on_the_memory_backend_too() {
    let (ok, out) = demo_on(
        "memory:",
        &["--orders", "100", "--rate", "2000", "--email-rate", "500"],
    );
    assert!(ok, "demo failed:\n{out}");
    assert!(out.contains("memory backend"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

/// A namespace of this run's own, so a demo on a shared broker never meets another run's
/// topics (the demo removes its `orders` topic when it starts).
fn fresh_namespace() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_nanos();
    format!("d{}", nanos % 10_000_000_000)
}

/// Runs the demo on a broker and checks that every subscription reconciles.
fn demo_reconciles_on(url: &str) {
    let (ok, out) = demo_on(
        url,
        &[
            "--orders",
            "100",
            "--rate",
            "2000",
            "--email-rate",
            "500",
            "--duration",
            "120s",
        ],
    );
    assert!(ok, "demo on {url} failed:\n{out}");
    for name in ["email", "billing", "analytics", "shipping"] {
        assert!(
            out.contains(&format!("ok   {name}: 101 published")),
            "{name} does not reconcile on {url}:\n{out}"
        );
    }
    assert!(!out.contains("FAIL"), "{out}");
    // Quiet by default: the client libraries' own log lines stay out of a run that works.
    for noise in ["pinky_swear", "rdkafka", "lapin", "WARN", "ERROR"] {
        assert!(
            !out.contains(noise),
            "`{noise}` on a run that worked:\n{out}"
        );
    }
    // Leave nothing behind on the shared broker.
    let removed = sluice(&["topics", "delete", "orders"], url)
        .output()
        .expect("run sluice topics delete");
    assert!(removed.status.success(), "{removed:?}");
}

#[test]
fn the_demo_reconciles_on_rabbitmq() {
    // Retries wait in retry-tier queues there: the drain must count them (it once stopped
    // early and reported 18 acked of 21 every time).
    demo_reconciles_on(&format!(
        "amqp://guest:guest@127.0.0.1:5672/%2f?namespace={}",
        fresh_namespace()
    ));
}

#[test]
fn the_demo_reconciles_on_kafka() {
    demo_reconciles_on(&format!(
        "kafka://127.0.0.1:9092?namespace={}",
        fresh_namespace()
    ));
}

#[test]
fn the_demo_reconciles_on_sqs() {
    demo_reconciles_on(&format!(
        "sqs://us-east-1?endpoint=http://127.0.0.1:4566&namespace={}",
        fresh_namespace()
    ));
}
