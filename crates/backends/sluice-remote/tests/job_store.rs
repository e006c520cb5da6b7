//! The server's job store over `sluice://`: it keeps the job store contract, answers in the
//! connection's namespace, and what a client wrote survives the server's restart.

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
