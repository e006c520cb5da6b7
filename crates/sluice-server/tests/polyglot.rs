//! Sluice from another language: a Python script using only its standard library
//! (`examples/polyglot/python/sluice_http.py`) publishes, receives and settles through the
//! HTTP data API of a real server, while a Rust `Worker` on `sluice://` consumes what Python
//! published and publishes what Python then consumes. CloudEvents keep every attribute both
//! ways.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::{cloudevents, Backend, Message, Publisher, SubscriptionName, TopicName};
use sluice_remote::{RemoteBackend, RemoteOptions};
use sluice_runtime::{raw_handler, Context, Worker};
use sluice_server::{Auth, Server, ServerConfig};
use tokio_util::sync::CancellationToken;

fn python(phase: &str, url: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/polyglot/interop.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([phase, url])
        .output()
        .expect("python3 runs (it is on every machine the tests run on)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "interop.py {phase} failed:\n{stdout}\n{stderr}"
    );
    println!("interop.py {phase}: {stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_a_rust_worker_exchange_messages_and_cloudevents() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        ServerConfig::new(dir.path())
            .listen("127.0.0.1:0".parse().unwrap())
            .http(Some("127.0.0.1:0".parse().unwrap()))
            .auth(Auth::open()),
    )
    .await
    .unwrap();
    let url = format!("http://{}", server.http_addr().unwrap());
    tokio::task::spawn_blocking({
        let url = url.clone();
        move || python("publish", &url)
    })
    .await
    .unwrap();

    // A Rust worker on sluice:// gets what Python published, every attribute kept.
    let client = RemoteBackend::connect(&server.addr().to_string(), RemoteOptions::default())
        .await
        .unwrap();
    let seen: Arc<Mutex<Vec<Message>>> = Arc::default();
    let worker = Worker::builder(
        client
            .subscribe(&SubscriptionName::new("rust-orders").unwrap())
            .await
            .unwrap(),
        raw_handler({
            let seen = seen.clone();
            move |_payload, ctx: Context| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(ctx.message().clone());
                    Ok(())
                }
            }
        }),
    )
    .build();
    let stop = CancellationToken::new();
    let running = worker.spawn(stop.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the worker got {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let stats = running.await.unwrap();
    assert_eq!(stats.acked, 4, "{stats:?}");
    let mut seen = std::mem::take(&mut *seen.lock().unwrap());
    // Handled concurrently: in id order here.
    seen.sort_by(|a, b| a.id().as_str().cmp(b.id().as_str()));
    let ids: Vec<&str> = seen.iter().map(|m| m.id().as_str()).collect();
    assert_eq!(ids, ["ce-1", "ce-2", "py-1", "py-2"]);
    let py1 = &seen[2];
    assert_eq!(py1.message_type(), Some("order.placed"));
    assert_eq!(py1.header("tenant"), Some("acme"));
    assert_eq!(py1.ordering_key(), Some("customer-7"));
    assert_eq!(py1.routing_key(), Some("order.placed.eu"));
    assert_eq!(py1.content_type(), Some("application/json"));
    let payload: serde_json::Value = serde_json::from_slice(py1.payload()).unwrap();
    assert_eq!(
        payload,
        serde_json::json!({"order": 1, "items": ["a", "b"]})
    );
    assert_eq!(seen[3].payload().as_ref(), b"hello from python");
    let event = &seen[0];
    assert_eq!(event.message_type(), Some("com.example.order.placed"));
    assert_eq!(cloudevents::source(event), Some("/py/shop"));
    assert_eq!(cloudevents::subject(event), Some("order-42"));
    assert_eq!(cloudevents::time(event), Some("2026-12-07T10:00:00Z"));
    assert_eq!(event.header("tenant"), Some("acme"));
    assert_eq!(event.content_type(), Some("application/json"));
    let data: serde_json::Value = serde_json::from_slice(event.payload()).unwrap();
    assert_eq!(data, serde_json::json!({"order": 42, "total": 12.5}));
    let blob = &seen[1];
    assert_eq!(blob.payload().as_ref(), &[0, 1, 2, 255]);
    assert_eq!(blob.content_type(), Some("application/octet-stream"));
    assert_eq!(cloudevents::subject(blob), Some("café"));

    // Rust publishes; Python consumes, settles and reads CloudEvents.
    let publisher = client.publisher().await.unwrap();
    let orders = TopicName::new("orders").unwrap();
    let invoice = Message::json_builder(r#"{"invoice": 7}"#)
        .id("rust-1")
        .message_type("com.example.invoice.issued")
        .header(cloudevents::SOURCE, "/rust/billing")
        .header(cloudevents::SUBJECT, "invoice-7")
        .build()
        .unwrap();
    let text = Message::builder("plain text from rust")
        .id("rust-2")
        .content_type("text/plain")
        .build()
        .unwrap();
    for m in [invoice, text] {
        publisher.publish(&orders, m).await.unwrap();
    }
    tokio::task::spawn_blocking(move || python("consume", &url))
        .await
        .unwrap();
    server.shutdown().await.unwrap();
}

/// Runs `program script URL` from the repository's root; panics with its output if it fails.
fn run_example(program: &str, script: &str, url: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(program)
        .arg(root.join(script))
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("running {program} {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The examples a user copies (`examples/polyglot/`) run against a real server as written:
/// the Python one always, the Node.js one where Node is installed (it is on the machines the
/// test command runs on; elsewhere the test says it was not run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_and_where_installed_the_node_example_run_against_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        ServerConfig::new(dir.path())
            .listen("127.0.0.1:0".parse().unwrap())
            .http(Some("127.0.0.1:0".parse().unwrap())),
    )
    .await
    .unwrap();
    let url = format!("http://{}", server.http_addr().unwrap());
    let python = tokio::task::spawn_blocking({
        let url = url.clone();
        move || run_example("python3", "examples/polyglot/python/example.py", &url)
    })
    .await
    .unwrap();
    assert!(
        python.contains("3 orders handled (one after a retry), 1 dead-lettered"),
        "{python}"
    );
    // Node is a second language, not a requirement of the test machine.
    if Command::new("node").arg("--version").output().is_ok() {
        let node = tokio::task::spawn_blocking(move || {
            run_example("node", "examples/polyglot/node/example.mjs", &url)
        })
        .await
        .unwrap();
        assert!(node.contains("3 orders handled, 1 dead-lettered"), "{node}");
        let dlq = server
            .backend()
            .dlq_list(&SubscriptionName::new("node-billing").unwrap(), 10)
            .await
            .unwrap();
        assert_eq!(dlq.len(), 1);
    } else {
        println!("node is not installed: the Node.js example was not run");
    }
    let dlq = server
        .backend()
        .dlq_list(&SubscriptionName::new("py-example-billing").unwrap(), 10)
        .await
        .unwrap();
    assert_eq!(dlq.len(), 1);
    server.shutdown().await.unwrap();
}
