//! Hostile and forgetful connections: the server refuses connections over its limits (and
//! accepts again once one closes), closes connections too slow to say hello or to finish a
//! frame, and closes idle ones — but never a consumer waiting in a long poll or holding
//! leases. Real TCP on 127.0.0.1, small timeouts, waits on conditions with deadlines.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use sluice_core::{
    Backend, Message, Publisher, SubscriptionConfig, SubscriptionName, TopicConfig, TopicName,
};
use sluice_protocol::message::{Hello, WireError};
use sluice_protocol::{Body, Frame, FrameCodec, Request, Response, DEFAULT_MAX_FRAME, PREFACE};
use sluice_remote::{RemoteBackend, RemoteOptions};
use sluice_server::{ConnectionLimits, Server, ServerConfig};
use support::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_util::codec::Framed;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// Another loopback address, so one test can be two clients.
const OTHER_LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Longest any step of these tests may take before it counts as a failure.
const PATIENCE: Duration = Duration::from_secs(10);

type Client = Framed<TcpStream, FrameCodec>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn start(limits: ConnectionLimits) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        ServerConfig::new(dir.path())
            .listen("127.0.0.1:0".parse().unwrap())
            .http(None)
            .limits(limits),
    )
    .await
    .expect("start the server");
    (dir, server)
}

/// A TCP connection to `server` from the loopback address `from`, preface exchanged.
async fn connect(server: SocketAddr, from: IpAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(server).await.expect("connect");
    stream.write_all(&PREFACE).await.unwrap();
    let mut preface = [0u8; 8];
    stream.read_exact(&mut preface).await.unwrap();
    assert_eq!(preface, PREFACE);
    stream
}

/// A raw client after its hello: welcomed, or what the server answered instead.
async fn greet(server: SocketAddr, from: IpAddr) -> Result<Client, Body> {
    let mut client = Framed::new(connect(server, from).await, FrameCodec::default());
    let hello = Hello {
        namespace: None,
        token: None,
        client: "limits test".into(),
    };
    client
        .send(Frame::new(0, Body::Hello(hello)))
        .await
        .unwrap();
    match client.next().await {
        Some(Ok(Frame {
            body: Body::Welcome(_),
            ..
        })) => Ok(client),
        Some(Ok(other)) => Err(other.body),
        other => panic!("the server answers a hello, got {other:?}"),
    }
}

/// Sends a request and reads the next frame.
async fn ask(client: &mut Client, id: u64, request: Request) -> Body {
    client
        .send(Frame::new(id, Body::Request(request)))
        .await
        .unwrap();
    let answer = tokio::time::timeout(PATIENCE, client.next())
        .await
        .expect("an answer in time")
        .expect("an answer, not the end of the connection")
        .expect("a frame");
    assert_eq!(answer.id, id);
    answer.body
}

/// Every frame the server still sends until it closes the connection (panics if it does not
/// close it within `PATIENCE`).
async fn closed_by_server(mut client: Client) -> Vec<Body> {
    let mut bodies = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(frame)) = client.next().await {
            bodies.push(frame.body);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server closes the connection, got {bodies:?} so far"));
    bodies
}

fn refusal(body: &Body) -> &str {
    match body {
        Body::Failed(WireError::Backend {
            message,
            retryable: true,
        }) => message,
        other => panic!("expected a retryable refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn given_64_connections_announcing_16_mib_and_sending_1_kib_then_the_slow_frame_timeout_closes_each(
) {
    let (_dir, server) = start(ConnectionLimits::default().slow_frame_timeout(ms(200))).await;
    let mut clients = Vec::new();
    for _ in 0..64 {
        let mut client = greet(server.addr(), LOCALHOST).await.expect("welcomed");
        let stream = client.get_mut();
        stream
            .write_all(&(DEFAULT_MAX_FRAME as u32).to_le_bytes())
            .await
            .unwrap();
        stream.write_all(&[0u8; 1024]).await.unwrap();
        clients.push(client);
    }
    for (i, client) in clients.into_iter().enumerate() {
        let bodies = closed_by_server(client).await;
        assert!(
            matches!(
                bodies.last(),
                Some(Body::ProtocolError(message))
                    if message.contains("a frame of 16777216 bytes did not complete within 200ms")
            ),
            "connection {i} is told its frame was too slow: {bodies:?}"
        );
    }
    eventually(PATIENCE, "every slow connection counted and closed", || {
        let m = server.metrics();
        m.timed_out_slow_frame == 64 && m.connections_open == 0
    })
    .await;
    assert_eq!(
        server.metrics().protocol_errors,
        0,
        "a timeout is counted as one, not as bad input"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn given_frames_that_each_arrive_within_the_slow_frame_timeout_then_the_connection_lives_on_past_it(
) {
    let (_dir, server) = start(ConnectionLimits::default().slow_frame_timeout(ms(300))).await;
    let mut client = greet(server.addr(), LOCALHOST).await.expect("welcomed");
    let mut ping = bytes::BytesMut::new();
    tokio_util::codec::Encoder::encode(
        &mut FrameCodec::default(),
        Frame::new(7, Body::Request(Request::Ping)),
        &mut ping,
    )
    .unwrap();
    let started = Instant::now();
    // Each frame in two parts 100 ms apart: the connection lives well past 300 ms, each
    // frame within it.
    for _ in 0..6 {
        let stream = client.get_mut();
        stream.write_all(&ping[..3]).await.unwrap();
        tokio::time::sleep(ms(100)).await;
        stream.write_all(&ping[3..]).await.unwrap();
        let answer = tokio::time::timeout(PATIENCE, client.next())
            .await
            .expect("an answer in time");
        assert!(
            matches!(
                answer,
                Some(Ok(Frame {
                    body: Body::Response(Response::Pong),
                    ..
                }))
            ),
            "a frame in time is answered: {answer:?}"
        );
    }
    assert!(started.elapsed() > ms(600));
    assert_eq!(server.metrics().timed_out_slow_frame, 0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn given_a_client_silent_after_connecting_then_the_handshake_timeout_closes_it() {
    let (_dir, server) = start(ConnectionLimits::default().handshake_timeout(ms(200))).await;
    // No hello after the preface: told why, then closed.
    let no_hello = Framed::new(
        connect(server.addr(), LOCALHOST).await,
        FrameCodec::default(),
    );
    let bodies = closed_by_server(no_hello).await;
    assert!(
        matches!(
            bodies.last(),
            Some(Body::ProtocolError(message)) if message.contains("no hello within 200ms")
        ),
        "{bodies:?}"
    );
    // Not even a preface: closed without a word (it never learnt the protocol).
    let mut silent = TcpStream::connect(server.addr()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, silent.read_to_end(&mut got))
        .await
        .expect("closed by the handshake timeout")
        .unwrap();
    assert!(
        got.is_empty(),
        "nothing is sent before the preface: {got:?}"
    );
    eventually(PATIENCE, "both counted as handshake timeouts", || {
        server.metrics().timed_out_handshake == 2
    })
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn given_the_connection_limits_when_one_more_arrives_then_it_is_refused_until_one_closes() {
    let (_dir, server) = start(
        ConnectionLimits::default()
            .max_connections(3)
            .max_connections_per_address(2),
    )
    .await;
    let addr = server.addr();
    let first = greet(addr, LOCALHOST).await.expect("1st from 127.0.0.1");
    let _second = greet(addr, LOCALHOST).await.expect("2nd from 127.0.0.1");
    let refused = greet(addr, LOCALHOST)
        .await
        .expect_err("a 3rd from 127.0.0.1 is over the per-address limit");
    assert!(
        refusal(&refused).contains("too many connections from 127.0.0.1: 2 are open"),
        "{refused:?}"
    );
    let _third = greet(addr, OTHER_LOCALHOST)
        .await
        .expect("another address is still welcome");
    let refused = greet(addr, OTHER_LOCALHOST)
        .await
        .expect_err("a 4th in all is over the total limit");
    assert!(
        refusal(&refused).contains("too many connections: 3 are open"),
        "{refused:?}"
    );
    // The client library hears a retryable refusal.
    let err = RemoteBackend::connect(&addr.to_string(), RemoteOptions::default())
        .await
        .expect_err("the remote backend is refused too");
    assert!(
        err.is_retryable(),
        "a refusal over the limits is worth retrying: {err}"
    );
    assert!(err.to_string().contains("too many connections"), "{err}");

    drop(first);
    eventually(
        PATIENCE,
        "the closed connection is no longer counted",
        || server.metrics().connections_open == 2,
    )
    .await;
    let _again = greet(addr, LOCALHOST)
        .await
        .expect("after one closed, a connection from 127.0.0.1 is welcome again");
    assert_eq!(server.metrics().connections_refused, 3);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn given_an_idle_timeout_then_a_silent_connection_is_closed_but_a_long_poll_or_a_lease_holder_is_not(
) {
    let idle_timeout = ms(200);
    let (_dir, server) = start(ConnectionLimits::default().idle_timeout(idle_timeout)).await;
    let addr = server.addr();
    {
        let setup = RemoteBackend::connect(&addr.to_string(), RemoteOptions::default())
            .await
            .unwrap();
        let topic = TopicName::new("idle").unwrap();
        setup
            .ensure_topic(&topic, &TopicConfig::default())
            .await
            .unwrap();
        setup
            .ensure_subscription(
                &SubscriptionName::new("workers").unwrap(),
                &SubscriptionConfig::new(topic.clone()).lease(Duration::from_secs(60)),
            )
            .await
            .unwrap();
        let publisher = setup.publisher().await.unwrap();
        publisher
            .publish(&topic, Message::builder(&b"job"[..]).build().unwrap())
            .await
            .unwrap();
    }
    // A worker that takes the one message and then works on it in silence.
    let mut holder = greet(addr, LOCALHOST).await.expect("welcomed");
    let Body::Response(Response::Subscriber { subscriber, .. }) = ask(
        &mut holder,
        1,
        Request::OpenSubscriber {
            subscription: "workers".into(),
        },
    )
    .await
    else {
        panic!("a subscriber")
    };
    let Body::Response(Response::Deliveries(held)) = ask(
        &mut holder,
        2,
        Request::Receive {
            subscriber,
            max: 1,
            wait_ms: 5000,
        },
    )
    .await
    else {
        panic!("deliveries")
    };
    assert_eq!(held.len(), 1, "the worker holds the message");

    // A consumer that waits for more in a long poll, far longer than the idle timeout.
    let mut waiter = greet(addr, LOCALHOST).await.expect("welcomed");
    let Body::Response(Response::Subscriber { subscriber, .. }) = ask(
        &mut waiter,
        1,
        Request::OpenSubscriber {
            subscription: "workers".into(),
        },
    )
    .await
    else {
        panic!("a subscriber")
    };
    let long_poll = Request::Receive {
        subscriber,
        max: 1,
        wait_ms: 1500,
    };
    waiter
        .send(Frame::new(2, Body::Request(long_poll)))
        .await
        .unwrap();

    // A connection that says hello and nothing more.
    // (Timed from before the hello: the server's clock starts after it, never before.)
    let hello_sent = Instant::now();
    let idle = greet(addr, LOCALHOST).await.expect("welcomed");
    let bodies = closed_by_server(idle).await;
    assert!(
        hello_sent.elapsed() >= idle_timeout,
        "closed after the idle timeout, not before"
    );
    assert!(
        bodies.is_empty(),
        "an idle connection is closed without a frame: {bodies:?}"
    );

    // The long poll runs its full course and is answered; the connection lives on.
    let answer = tokio::time::timeout(PATIENCE, waiter.next())
        .await
        .expect("the long poll ends in time")
        .expect("answered, not closed")
        .expect("a frame");
    assert!(
        matches!(answer.body, Body::Response(Response::Deliveries(ref d)) if d.is_empty()),
        "the long poll returns empty: {answer:?}"
    );
    assert!(matches!(
        ask(&mut waiter, 3, Request::Ping).await,
        Body::Response(Response::Pong)
    ));
    // The worker was silent for the whole long poll (well past the idle timeout) and holds
    // a lease: still open.
    assert!(
        matches!(
            ask(&mut holder, 3, Request::Ping).await,
            Body::Response(Response::Pong)
        ),
        "a connection holding a lease is not idle"
    );
    // With nothing in flight and no lease, the consumer's connection is idle in turn.
    let bodies = closed_by_server(waiter).await;
    assert!(bodies.is_empty(), "{bodies:?}");
    eventually(PATIENCE, "both idle connections counted", || {
        server.metrics().timed_out_idle >= 2
    })
    .await;
    server.shutdown().await.unwrap();
}
