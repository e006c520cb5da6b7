//! `sluice serve` with a certificate: the protocol and the admin API speak TLS only, a client
//! trusting the CA connects, others fail with a clear error.

use std::time::Duration;

use sluice_core::{
    Backend, Delivery, Message, Publisher, Subscriber, SubscriptionConfig, SubscriptionName,
    TopicConfig, TopicName,
};
use sluice_remote::{RemoteBackend, RemoteOptions};
use sluice_server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A self-signed certificate for `localhost`, written as PEM files in `dir`.
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[tokio::test]
async fn with_a_certificate_clients_trusting_it_round_trip_over_tls_and_others_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let server = Server::start(
        ServerConfig::new(dir.path().join("data"))
            .listen("127.0.0.1:0".parse().unwrap())
            .http(Some("127.0.0.1:0".parse().unwrap()))
            .tls(&cert, &key),
    )
    .await
    .expect("start with TLS");
    let addr = format!("localhost:{}", server.addr().port());

    let client = RemoteBackend::connect(&addr, RemoteOptions::default().tls(Some(cert.clone())))
        .await
        .expect("a client trusting the certificate connects");
    let topic = TopicName::new("secure").unwrap();
    let sub = SubscriptionName::new("reader").unwrap();
    client
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    client
        .ensure_subscription(&sub, &SubscriptionConfig::new(topic.clone()))
        .await
        .unwrap();
    let publisher = client.publisher().await.unwrap();
    publisher
        .publish(&topic, Message::builder(&b"over tls"[..]).build().unwrap())
        .await
        .unwrap();
    let subscriber = client.subscribe(&sub).await.unwrap();
    let got = subscriber.receive(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got[0].message().payload().as_ref(), b"over tls");
    got.into_iter().next().unwrap().ack().await.unwrap();

    // A plain client cannot talk to it.
    let plain = tokio::time::timeout(
        Duration::from_secs(15),
        RemoteBackend::connect(&addr, RemoteOptions::default()),
    )
    .await
    .expect("a plain client gives up in time");
    assert!(plain.is_err(), "a plain client must not get through");
    // A TLS client that does not trust the certificate is told why.
    let other_dir = tempfile::tempdir().unwrap();
    let (other_ca, _) = certificate(other_dir.path());
    let err = RemoteBackend::connect(&addr, RemoteOptions::default().tls(Some(other_ca)))
        .await
        .expect_err("an untrusted certificate");
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");

    // The admin API answers over HTTPS, even while another peer sits on a connection
    // without ever starting its handshake.
    let _silent = tokio::net::TcpStream::connect(server.http_addr().unwrap())
        .await
        .unwrap();
    let connector = sluice_protocol::tls::connector(Some(&cert)).unwrap();
    let tcp = tokio::net::TcpStream::connect(server.http_addr().unwrap())
        .await
        .unwrap();
    let mut https = tokio::time::timeout(
        Duration::from_secs(3),
        connector.connect(sluice_protocol::tls::server_name("localhost").unwrap(), tcp),
    )
    .await
    .expect("a silent peer does not hold up the handshake")
    .expect("HTTPS handshake");
    https
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = https.read_to_string(&mut answer).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("\"status\":\"ok\""),
        "{answer}"
    );
    server.shutdown().await.unwrap();
}
