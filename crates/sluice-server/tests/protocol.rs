//! Bad input over the wire: each gets a clear protocol error and closes only its own
//! connection, while a well-behaved client on the same server keeps working. And tokens:
//! a server with tokens admits only clients that present one.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use sluice_core::{Backend, Message, Publisher, TopicConfig, TopicName};
use sluice_protocol::message::{Hello, WireError};
use sluice_protocol::{Body, Frame, FrameCodec, Request, PREFACE};
use sluice_remote::{RemoteBackend, RemoteOptions};
use sluice_server::{Auth, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

async fn start(dir: &std::path::Path, auth: Auth) -> Server {
    Server::start(
        ServerConfig::new(dir)
            .listen("127.0.0.1:0".parse().unwrap())
            .http(None)
            .auth(auth)
            .max_frame(64 * 1024),
    )
    .await
    .expect("start the server")
}

fn frame(body: Body) -> Vec<u8> {
    let mut buf = BytesMut::new();
    FrameCodec::default()
        .encode(Frame::new(1, body), &mut buf)
        .unwrap();
    buf.to_vec()
}

fn hello() -> Vec<u8> {
    frame(Body::Hello(Hello {
        namespace: None,
        token: None,
        client: "protocol test".into(),
    }))
}

/// Sends `bytes` on a fresh connection (then half-closes it) and returns every frame the
/// server sent before closing, after checking the server's preface.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<Body> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let _ = stream.shutdown().await;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the server closes the connection within 10 s")
        .expect("read");
    assert!(
        out.len() >= 8,
        "the server answers with its preface, got {out:?}"
    );
    assert_eq!(
        &out[..8],
        &PREFACE[..],
        "the server's preface names its version"
    );
    let mut buf = BytesMut::from(&out[8..]);
    let mut codec = FrameCodec::new(u32::MAX as usize);
    let mut bodies = Vec::new();
    while let Some(frame) = codec.decode(&mut buf).expect("the server's frames decode") {
        bodies.push(frame.body);
    }
    bodies
}

fn protocol_error(bodies: &[Body]) -> &str {
    match bodies.last() {
        Some(Body::ProtocolError(message)) => message,
        other => panic!("expected a protocol error as the last frame, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_protocol_error_and_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Auth::open()).await;
    let addr = server.addr();
    let good = RemoteBackend::connect(&addr.to_string(), RemoteOptions::default())
        .await
        .expect("a good client connects");
    let topic = TopicName::new("orders").unwrap();
    good.ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    let publisher = good.publisher().await.unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "not a Sluice connection",
        ),
        (
            "an unknown version",
            b"SLUICE\0\x09".to_vec(),
            "unsupported protocol version 9",
        ),
        (
            "an oversized frame",
            [&PREFACE[..], &hello(), &u32::MAX.to_le_bytes()].concat(),
            "exceeds the limit of 65536 bytes",
        ),
        (
            "a malformed frame",
            [
                &PREFACE[..],
                &hello(),
                &[4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
            ]
            .concat(),
            "malformed frame",
        ),
        (
            "a truncated frame",
            [&PREFACE[..], &hello(), &[100, 0, 0, 0, 1, 2, 3]].concat(),
            "",
        ),
        (
            "a request before the hello",
            [&PREFACE[..], &frame(Body::Request(Request::Ping))].concat(),
            "expected a hello first",
        ),
    ];
    for (what, bytes, expected) in cases {
        let bodies = exchange(addr, &bytes).await;
        if expected.is_empty() {
            // Truncated: the peer went away mid-frame; nothing to answer, the connection ends.
            assert!(
                matches!(bodies.first(), Some(Body::Welcome(_))),
                "{what}: welcomed, then closed: {bodies:?}"
            );
        } else {
            let message = protocol_error(&bodies);
            assert!(
                message.contains(expected),
                "{what}: `{message}` should say `{expected}`"
            );
        }
        // The good client is unaffected.
        publisher
            .publish(
                &topic,
                Message::builder(what.as_bytes().to_vec()).build().unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("after {what}, the good client still publishes: {e}"));
    }
    assert!(
        server.metrics().protocol_errors >= 5,
        "protocol errors are counted: {:?}",
        server.metrics()
    );
    assert_eq!(good.list_topics().await.unwrap().len(), 1);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_tokens_only_clients_presenting_one_are_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Auth::tokens(["s3cret"])).await;
    let addr = server.addr().to_string();
    let err = RemoteBackend::connect(&addr, RemoteOptions::default().token(None))
        .await
        .expect_err("no token");
    assert!(err.to_string().contains("requires an API token"), "{err}");
    assert!(
        !err.is_retryable(),
        "a refusal is not worth retrying: {err}"
    );
    let err = RemoteBackend::connect(&addr, RemoteOptions::default().token(Some("guess".into())))
        .await
        .expect_err("wrong token");
    assert!(err.to_string().contains("not valid"), "{err}");
    let ok = RemoteBackend::connect(&addr, RemoteOptions::default().token(Some("s3cret".into())))
        .await
        .expect("the right token is admitted");
    assert!(ok.list_topics().await.unwrap().is_empty());
    let refused = exchange(
        server.addr(),
        &[
            &PREFACE[..],
            &hello(),
            &frame(Body::Request(Request::ListTopics)),
        ]
        .concat(),
    )
    .await;
    assert!(
        matches!(
            refused.first(),
            Some(Body::Failed(WireError::Unauthorized { .. }))
        ),
        "a hello without a token is refused before any request runs: {refused:?}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_tokens_a_non_loopback_address_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let err = Server::start(
        ServerConfig::new(dir.path())
            .listen("0.0.0.0:0".parse().unwrap())
            .http(None),
    )
    .await
    .expect_err("an open server on every interface");
    assert!(err.to_string().contains("without API tokens"), "{err}");
}

/// A client in another language would speak the frames directly: the pull path (`Receive`)
/// and single `Settle`s work as `docs/protocol.md` says, and a settled token is forgotten.
#[tokio::test]
async fn a_raw_client_pulls_with_receive_and_settles_with_single_verbs() {
    use futures::{SinkExt, StreamExt};
    use sluice_core::{SubscriptionConfig, SubscriptionName};
    use sluice_protocol::{Response, Verb};

    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Auth::open()).await;
    let setup = RemoteBackend::connect(&server.addr().to_string(), RemoteOptions::default())
        .await
        .unwrap();
    let topic = TopicName::new("raw").unwrap();
    setup
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    setup
        .ensure_subscription(
            &SubscriptionName::new("puller").unwrap(),
            &SubscriptionConfig::new(topic.clone()),
        )
        .await
        .unwrap();
    let publisher = setup.publisher().await.unwrap();
    publisher
        .publish(
            &topic,
            Message::builder(&b"pulled"[..]).id("m-1").build().unwrap(),
        )
        .await
        .unwrap();

    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream.write_all(&PREFACE).await.unwrap();
    let mut preface = [0u8; 8];
    stream.read_exact(&mut preface).await.unwrap();
    assert_eq!(preface, PREFACE);
    let mut framed = tokio_util::codec::Framed::new(stream, FrameCodec::default());
    let hello = Body::Hello(Hello {
        namespace: None,
        token: None,
        client: "raw".into(),
    });
    framed.send(Frame::new(0, hello)).await.unwrap();
    assert!(matches!(
        framed.next().await,
        Some(Ok(Frame {
            body: Body::Welcome(_),
            ..
        }))
    ));
    let mut ask = async |id: u64, request: Request| -> Body {
        framed
            .send(Frame::new(id, Body::Request(request)))
            .await
            .unwrap();
        let answer = framed.next().await.expect("an answer").expect("a frame");
        assert_eq!(answer.id, id, "answers carry their request's id");
        answer.body
    };
    let Body::Response(Response::Subscriber { subscriber, .. }) = ask(
        1,
        Request::OpenSubscriber {
            subscription: "puller".into(),
        },
    )
    .await
    else {
        panic!("OpenSubscriber answers with a subscriber id")
    };
    let Body::Response(Response::Deliveries(got)) = ask(
        2,
        Request::Receive {
            subscriber,
            max: 10,
            wait_ms: 2000,
        },
    )
    .await
    else {
        panic!("Receive answers with deliveries")
    };
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].message.id.as_str(), got[0].attempt), ("m-1", 1));
    assert_eq!(got[0].message.payload, b"pulled");
    let token = got[0].token;
    let settle = || Request::Settle {
        token,
        verb: Verb::Ack,
    };
    assert!(matches!(
        ask(3, settle()).await,
        Body::Response(Response::Done)
    ));
    assert!(
        matches!(
            ask(4, settle()).await,
            Body::Failed(WireError::LeaseLost { .. })
        ),
        "a settled token is no longer held: its lease is lost"
    );
    let stats = setup
        .stats(&SubscriptionName::new("puller").unwrap())
        .await
        .unwrap();
    assert_eq!((stats.ready, stats.in_flight), (Some(0), Some(0)));
    server.shutdown().await.unwrap();
}
