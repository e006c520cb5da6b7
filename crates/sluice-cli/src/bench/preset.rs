//! `--all` and `--short`: one command for every backend and peer this machine runs, and a
//! small profile that keeps the tool exercised by the test command.
//!
//! `--all` adds Sluice's engine in-process (`embedded:`) and served (`serve:` over
//! `sluice://` and `serve-http:` through the HTTP data API, started by the bench) in a fresh directory under the disk-baseline directory, then every broker and
//! peer that answers on its default loopback port: RabbitMQ (5672), Kafka (9092), the
//! SQS/SNS emulator or LocalStack (4566), NATS JetStream (4222), Redis (6379). What is not
//! found is named and skipped.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use super::{BenchArgs, Peer};

fn answers(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .is_ok_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok())
}

/// Adds every available backend and peer to `args` (keeping those given explicitly), with
/// Sluice's own directories under `dir`; returns one line per backend or peer found or
/// skipped.
pub(crate) fn discover(args: &mut BenchArgs, dir: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    let except = args.except.clone();
    let left_out = |url: &str| {
        except
            .iter()
            .any(|e| url.starts_with(&format!("{}:", e.trim())))
    };
    let embedded = format!("embedded:{}", dir.join("embedded").display());
    let served = format!("serve:{}", dir.join("served").display());
    let served_http = format!("serve-http:{}", dir.join("served-http").display());
    for url in [embedded, served, served_http] {
        if left_out(&url) {
            notes.push(format!("left out {url} (--except)"));
            continue;
        }
        notes.push(format!("found {url}"));
        args.urls.push(url);
    }
    let brokers = [
        (
            "127.0.0.1:5672",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "RabbitMQ",
        ),
        ("127.0.0.1:9092", "kafka://127.0.0.1:9092", "Kafka"),
        (
            "127.0.0.1:4566",
            "sqs://us-east-1?endpoint=http://127.0.0.1:4566",
            "SQS + SNS (emulator)",
        ),
    ];
    for (addr, url, name) in brokers {
        if args.urls.iter().any(|u| u == url) {
            continue;
        }
        if left_out(url) {
            notes.push(format!("left out {name} (--except)"));
        } else if answers(addr) {
            notes.push(format!("found {name}: {url}"));
            args.urls.push(url.to_owned());
        } else {
            notes.push(format!("skipped {name}: nothing answers on {addr}"));
        }
    }
    let peers = [
        ("127.0.0.1:4222", "nats://127.0.0.1:4222", "NATS JetStream"),
        ("127.0.0.1:6379", "redis://127.0.0.1:6379", "Redis Streams"),
    ];
    for (addr, url, name) in peers {
        if left_out(url) {
            notes.push(format!("left out peer {name} (--except)"));
        } else if answers(addr) {
            notes.push(format!("found peer {name}: {url}"));
            if let Ok(peer) = Peer::parse(url) {
                args.peers.push(peer);
            }
        } else {
            notes.push(format!("skipped peer {name}: nothing answers on {addr}"));
        }
    }
    notes
}

/// The short profile: few messages, one producer and one consumer, small batches, a short
/// disk baseline — minutes of wall time at most for every backend, for tests and a first
/// look. Figures from it are not for comparing.
pub(crate) fn short(args: &mut BenchArgs) {
    args.messages = 400;
    args.duration = None;
    args.producers = 1;
    args.consumers = 1;
    args.batch = 20;
    args.disk_duration = Duration::from_millis(200);
}
