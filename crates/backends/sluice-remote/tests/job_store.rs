//! The server's job store and limiter over `sluice://`: they keep their contracts, answer
//! in the connection's namespace, and what a client wrote survives the server's restart.

use std::time::Duration;

use sluice_core::{Backend, Namespace};
use sluice_remote::{RemoteBackend, RemoteOptions};
use sluice_server::{Server, ServerConfig};

fn config(dir: &std::path::Path) -> ServerConfig {
    ServerConfig::new(dir)
        .listen("127.0.0.1:0".parse().unwrap())
        .http(None)
}

async fn connect(server: &Server, namespace: Option<&str>) -> RemoteBackend {
    let namespace = namespace.map(|n| Namespace::new(n).unwrap());
    RemoteBackend::connect(
        &server.addr().to_string(),
        RemoteOptions::default().namespace(namespace),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn the_server_s_job_store_keeps_the_contract_per_namespace_and_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path())).await.unwrap();
    let plain = connect(&server, None).await;
    let team = connect(&server, Some("team-a")).await;
    sluice_testing::check_job_store(plain.job_store().unwrap()).await;
    sluice_testing::check_job_store(team.job_store().unwrap()).await;

    let (store, other) = (plain.job_store().unwrap(), team.job_store().unwrap());
    let ttl = Duration::from_secs(3600);
    let version = store
        .swap("job/kept", None, br#"{"n":1}"#, ttl)
        .await
        .unwrap()
        .unwrap();
    assert!(other.load("job/kept").await.unwrap().is_none());
    drop((store, other, plain, team));
    server.shutdown().await.unwrap();

    let server = Server::start(config(dir.path())).await.unwrap();
    let store = connect(&server, None).await.job_store().unwrap();
    let found = store.load("job/kept").await.unwrap().expect("kept");
    assert_eq!(
        (found.value.as_slice(), found.version),
        (&br#"{"n":1}"#[..], version)
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_server_s_limiter_is_shared_by_its_clients_per_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path())).await.unwrap();
    let limiter = |backend: &RemoteBackend, name: &str| {
        let backend = backend.clone();
        let name = sluice_core::SubscriptionName::new(name).unwrap();
        async move {
            backend
                .ensure_topic(
                    &sluice_core::TopicName::new("work").unwrap(),
                    &sluice_core::TopicConfig::default(),
                )
                .await
                .unwrap();
            backend
                .ensure_subscription(
                    &name,
                    &sluice_core::SubscriptionConfig::new(
                        sluice_core::TopicName::new("work").unwrap(),
                    ),
                )
                .await
                .unwrap();
            let subscriber = backend.subscribe(&name).await.unwrap();
            sluice_core::Subscriber::limiter(&subscriber).expect("sluice:// has a limiter")
        }
    };
    let (one, two) = (connect(&server, None).await, connect(&server, None).await);
    let team = connect(&server, Some("team-a")).await;
    sluice_testing::check_limiter(limiter(&one, "a").await).await;
    sluice_testing::check_flags(limiter(&two, "a").await).await;
    let rate = sluice_core::Rate {
        per_second: 0.001,
        burst: 3,
    };
    let (first, second, other) = (
        limiter(&one, "a").await,
        limiter(&two, "b").await,
        limiter(&team, "a").await,
    );
    assert_eq!(first.take("stripe", rate, 0, 2).await.unwrap().granted, 2);
    assert_eq!(
        second.take("stripe", rate, 0, 5).await.unwrap().granted,
        1,
        "another client shares the bucket"
    );
    assert_eq!(
        other.take("stripe", rate, 0, 5).await.unwrap().granted,
        3,
        "another namespace has its own"
    );
    let bad = sluice_core::Rate {
        per_second: f64::NAN,
        burst: 3,
    };
    let err = first.take("stripe", bad, 0, 1).await.unwrap_err();
    assert!(err.to_string().contains("finite"), "{err}");
    server.shutdown().await.unwrap();
}
