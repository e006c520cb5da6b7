//! `sluice outbox` end to end: events written by an application into an SQLite outbox are
//! relayed by the command to an embedded directory, in order, and the lag goes to zero.

use std::process::Command;
use std::time::Duration;

use sluice::prelude::*;
use sluice::sql::Outbox;

fn sluice(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .expect("run sluice");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_command_publishes_the_outbox_in_order_and_status_shows_the_lag() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let url = format!("embedded:{}", data.display());
    let database = format!("sqlite:{}", dir.path().join("app.db").display());

    // The application: a topic with a subscription, and three events in its outbox.
    let orders = TopicName::new("orders").unwrap();
    let shipping = SubscriptionName::new("shipping").unwrap();
    {
        let backend = sluice::embedded::EmbeddedBackend::open(&data)
            .await
            .unwrap();
        backend
            .ensure_topic(&orders, &TopicConfig::default())
            .await
            .unwrap();
        backend
            .ensure_subscription(&shipping, &SubscriptionConfig::new(orders.clone()))
            .await
            .unwrap();
        backend.close().await.unwrap();
    }
    let pool = sluice::sql::sqlite::open(dir.path().join("app.db"))
        .await
        .unwrap();
    for n in 1..=3 {
        let mut tx = pool.begin().await.unwrap();
        let event = Message::builder(format!("order {n}"))
            .id(format!("order-{n}-placed"))
            .build()
            .unwrap();
        Outbox::enqueue(&mut tx, &orders, &event).await.unwrap();
        tx.commit().await.unwrap();
    }
    pool.close().await;

    let (ok, out, err) = sluice(&["outbox", "status", "--database", &database, "--json"]);
    assert!(ok, "{out}{err}");
    let lag: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(lag["unsent"], 3, "{out}");

    let (ok, out, err) = sluice(&[
        "outbox",
        "relay",
        "--once",
        "--database",
        &database,
        "--url",
        &url,
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("relayed 3"), "{out}");

    let (ok, out, err) = sluice(&["outbox", "status", "--database", &database]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("unsent 0"), "{out}");

    let backend = sluice::connect(&url).await.unwrap();
    let subscriber = backend.subscribe(&shipping).await.unwrap();
    let got = subscriber
        .receive(10, Duration::from_secs(5))
        .await
        .unwrap();
    let ids: Vec<_> = got
        .iter()
        .map(|d| d.message().id().as_str().to_owned())
        .collect();
    assert_eq!(ids, ["order-1-placed", "order-2-placed", "order-3-placed"]);
}

#[test]
fn a_database_url_of_another_kind_is_a_clear_error() {
    let (ok, _out, err) = sluice(&["outbox", "status", "--database", "mysql://x"]);
    assert!(!ok);
    assert!(
        err.contains("--database must be postgres://… or sqlite:PATH"),
        "{err}"
    );
}
