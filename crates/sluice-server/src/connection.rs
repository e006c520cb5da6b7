//! One client connection: TLS (if configured), preface, hello (authentication), then
//! requests answered concurrently and responses written back in whatever order they
//! complete.
//!
//! Backpressure: at most [`MAX_IN_FLIGHT`] requests of one connection run at once (verbs and
//! credit excepted: they free work rather than add it); past that the reader stops reading
//! and TCP pushes back on the client. A protocol error (bad
//! preface, unknown version, oversized or malformed frame) is answered with one
//! `ProtocolError` frame and closes this connection only.
//!
//! Limits ([`ConnectionLimits`](crate::config::ConnectionLimits)): TLS, preface and hello
//! must complete within the handshake timeout of the accept; a frame within the slow-frame
//! timeout of its first byte (`frames.rs`); a connection with nothing in flight — no
//! request, no `Consume` stream, no delivery whose lease still runs — that sends nothing for
//! the idle timeout is closed without a frame (its client reconnects on its next call). A
//! connection over the connection limits is told so after its hello (a retryable `Failed`),
//! like a refused token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use sluice_core::{Namespace, Naming};
use sluice_protocol::frame::check_preface;
use sluice_protocol::message::{Hello, Welcome, WireError};
use sluice_protocol::{Body, Frame, FrameCodec, ProtocolError, Request, PREFACE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::frames::{after, Frames};
use crate::limits::{ConnectionSlot, Refusal};
use crate::metrics::Timeout;
use crate::session::Session;
use crate::Shared;

/// Most requests of one connection answered at once.
pub(crate) const MAX_IN_FLIGHT: usize = 4096;

/// Whether an accepted connection is within the limits.
pub(crate) enum Admission {
    /// Counted: served until it ends; the slot is given back then.
    Admitted(ConnectionSlot),
    /// Over a limit: told why after its hello, then closed. The permit bounds how many
    /// refusals are under way at once.
    Refused(Refusal, OwnedSemaphorePermit),
}

/// How a connection ended.
enum End {
    /// The client left, or the server shut down.
    Closed,
    /// Nothing sent and nothing in flight for the idle timeout.
    Idle,
}

/// Why a connection was closed on the client's account (the client was told).
struct Failure {
    error: ProtocolError,
    /// Set when a timeout, not bad input, closed it.
    timeout: Option<Timeout>,
}

impl Failure {
    /// A failure to read a frame: too slow, or bad input.
    fn reading(error: ProtocolError) -> Self {
        let timeout = matches!(error, ProtocolError::TimedOut(_)).then_some(Timeout::SlowFrame);
        Self { error, timeout }
    }

    fn handshake(what: String) -> Self {
        Self {
            error: ProtocolError::TimedOut(what),
            timeout: Some(Timeout::Handshake),
        }
    }
}

impl From<ProtocolError> for Failure {
    fn from(error: ProtocolError) -> Self {
        Self {
            error,
            timeout: None,
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        ProtocolError::from(error).into()
    }
}

/// The two halves of a connection whose client said hello, and its hello.
struct Greeted<S> {
    reader: Frames<ReadHalf<S>>,
    writer: FramedWrite<WriteHalf<S>, FrameCodec>,
    hello: Hello,
}

/// Serves an accepted TCP connection: the TLS handshake first if the server speaks TLS
/// (within the handshake deadline), then [`serve`].
pub(crate) async fn accept(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    admission: Admission,
) {
    let deadline = after(shared.config.limits.handshake_timeout);
    let Some(tls) = tls else {
        return serve(stream, peer, shared, stop, deadline, admission).await;
    };
    let accepted = tokio::select! {
        accepted = tokio::time::timeout_at(deadline, tls.accept(stream)) => accepted,
        _ = stop.cancelled() => return,
    };
    match accepted {
        Ok(Ok(stream)) => serve(stream, peer, shared, stop, deadline, admission).await,
        Ok(Err(err)) => {
            shared.metrics.protocol_error();
            tracing::warn!(%peer, error = %err, "TLS handshake failed");
        }
        Err(_) => {
            let failure = Failure::handshake(format!(
                "no TLS handshake within {:?} of connecting",
                shared.config.limits.handshake_timeout
            ));
            log_failure(&shared, peer, &failure);
        }
    }
}

/// Serves one connection until the client leaves, breaks the protocol, times out, or the
/// server shuts down (then requests in flight finish and are answered before the
/// connection closes).
async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    deadline: Instant,
    admission: Admission,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // Shutdown does not wait for a handshake: the connection just closes.
    let slot = match admission {
        Admission::Admitted(slot) => slot,
        Admission::Refused(refusal, permit) => {
            let greeted = tokio::select! {
                greeted = handshake(stream, &shared, deadline) => greeted,
                _ = stop.cancelled() => Ok(None),
            };
            // Told after its hello, as a refused token is, so the client reads why.
            if let Ok(Some(Greeted { reader, writer, .. })) = greeted {
                let refused = WireError::Backend {
                    message: format!("sluice serve refused the connection: {refusal}"),
                    retryable: true,
                };
                refuse(writer, reader, Frame::new(0, Body::Failed(refused))).await;
            }
            drop(permit);
            return;
        }
    };
    shared.metrics.connection_opened();
    let greeted = tokio::select! {
        greeted = handshake(stream, &shared, deadline) => greeted,
        _ = stop.cancelled() => Ok(None),
    };
    let ended = match greeted {
        Ok(Some(greeted)) => serve_greeted(greeted, peer, &shared, stop).await,
        Ok(None) => Ok(End::Closed),
        Err(failure) => Err(failure),
    };
    match ended {
        Ok(End::Closed) => tracing::debug!(%peer, "connection closed"),
        Ok(End::Idle) => {
            shared.metrics.timed_out(Timeout::Idle);
            tracing::debug!(%peer, timeout = ?shared.config.limits.idle_timeout, "idle connection closed");
        }
        Err(failure) => log_failure(&shared, peer, &failure),
    }
    // The place is free before the connection stops counting as open.
    drop(slot);
    shared.metrics.connection_closed();
}

/// Counts a failed connection and warns about it (timeouts: at most once per address and
/// reason per interval).
fn log_failure(shared: &Shared, peer: SocketAddr, failure: &Failure) {
    let error = &failure.error;
    match failure.timeout {
        None => {
            shared.metrics.protocol_error();
            tracing::warn!(%peer, %error, "connection closed on a protocol error");
        }
        Some(timeout) => {
            shared.metrics.timed_out(timeout);
            let reason = timeout.label();
            let now = std::time::Instant::now();
            if let Some(held_back) = shared.warnings.check(peer.ip(), reason, now) {
                tracing::warn!(%peer, %error, reason, held_back, "connection closed by a timeout");
            }
        }
    }
}

/// Preface and hello, within `deadline`. `None`: the client left before its hello.
async fn handshake<S>(
    mut stream: S,
    shared: &Shared,
    deadline: Instant,
) -> Result<Option<Greeted<S>>, Failure>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let limits = &shared.config.limits;
    let mut preface = [0u8; 8];
    match tokio::time::timeout_at(deadline, stream.read_exact(&mut preface)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            return Err(Failure::handshake(format!(
                "no preface within {:?} of connecting",
                limits.handshake_timeout
            )))
        }
    }
    // Our preface goes out either way: a client of another version learns which one we speak.
    stream.write_all(&PREFACE).await?;
    let (read, write) = tokio::io::split(stream);
    let mut reader = Frames::new(
        FramedRead::new(read, FrameCodec::new(shared.config.max_frame)),
        limits.slow_frame_timeout,
    );
    // Outbound frames are bounded by what the server itself builds (a receive batch, a DLQ
    // page), not by the limit it puts on what clients send.
    let mut writer = FramedWrite::new(write, FrameCodec::new(u32::MAX as usize));
    if let Err(err) = check_preface(&preface) {
        refuse(writer, reader, fatal(&err)).await;
        return Err(err.into());
    }
    let failure = match tokio::time::timeout_at(deadline, reader.next()).await {
        Ok(Some(Ok(Frame {
            body: Body::Hello(hello),
            ..
        }))) => {
            return Ok(Some(Greeted {
                reader,
                writer,
                hello,
            }))
        }
        Ok(Some(Ok(other))) => Failure::from(ProtocolError::Unexpected(format!(
            "expected a hello first, got {:?}",
            other.body
        ))),
        Ok(Some(Err(err))) => Failure::reading(err),
        Ok(None) => return Ok(None),
        Err(_) => Failure::handshake(format!(
            "no hello within {:?} of connecting",
            limits.handshake_timeout
        )),
    };
    let _ = writer.send(fatal(&failure.error)).await;
    Err(failure)
}

async fn serve_greeted<S>(
    greeted: Greeted<S>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    stop: CancellationToken,
) -> Result<End, Failure>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Greeted {
        mut reader,
        mut writer,
        hello,
    } = greeted;
    let session = match admit(&hello, shared) {
        Ok(session) => Arc::new(session),
        Err(refusal) => {
            tracing::warn!(%peer, client = %hello.client, "connection refused: {refusal:?}");
            refuse(writer, reader, Frame::new(0, Body::Failed(refusal))).await;
            return Ok(End::Closed);
        }
    };
    writer
        .send(Frame::new(
            0,
            Body::Welcome(Welcome {
                server: format!("sluice {}", env!("CARGO_PKG_VERSION")),
                max_message_size: sluice_embedded::MAX_MESSAGE_SIZE as u64,
                max_frame: shared.config.max_frame as u64,
                max_batch: 1000,
            }),
        ))
        .await?;
    tracing::debug!(%peer, client = %hello.client, namespace = ?hello.namespace, "client connected");

    let (tx, rx) = mpsc::unbounded_channel::<Frame>();
    // The writer ending early (the socket failed) ends the connection: answers could never
    // reach the client.
    let write_failed = CancellationToken::new();
    let write_task = {
        let write_failed = write_failed.clone();
        tokio::spawn(async move {
            sluice_protocol::io::write_loop(writer, rx).await;
            write_failed.cancel();
        })
    };
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    // Idle: nothing received and nothing in flight since `last_activity`. The timer is
    // checked lazily (moved on when it fires) rather than reset on every frame.
    let idle_timeout = shared.config.limits.idle_timeout;
    let mut last_activity = Instant::now();
    let idle = tokio::time::sleep_until(after(idle_timeout));
    tokio::pin!(idle);
    let result = loop {
        let frame = tokio::select! {
            frame = reader.next() => frame,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                last_activity = Instant::now();
                continue;
            }
            () = &mut idle, if tasks.is_empty() => {
                let quiet_until = last_activity.checked_add(idle_timeout);
                match quiet_until {
                    Some(at) if at > Instant::now() => idle.as_mut().reset(at),
                    // A consumer at work on its deliveries is not idle, however silent.
                    _ if session.holds_leases() => {
                        last_activity = Instant::now();
                        idle.as_mut().reset(after(idle_timeout));
                    }
                    None => idle.as_mut().reset(after(idle_timeout)),
                    Some(_) => break Ok(End::Idle),
                }
                continue;
            }
            _ = stop.cancelled() => break Ok(End::Closed),
            _ = write_failed.cancelled() => break Ok(End::Closed),
        };
        last_activity = Instant::now();
        match frame {
            // Credit and verbs never wait for a permit: they are what frees the work that
            // holds the permits (consumers making room for blocked publishes, say).
            Some(Ok(Frame {
                body: Body::Request(Request::Credit { subscriber, n }),
                ..
            })) => {
                session.credit(subscriber, n);
            }
            Some(Ok(Frame {
                id,
                body:
                    Body::Request(Request::Consume {
                        subscriber,
                        prefetch,
                    }),
            })) => {
                shared.metrics.request(&Request::Consume {
                    subscriber,
                    prefetch,
                });
                let (session, tx) = (session.clone(), tx.clone());
                // A stream, not a request: it holds no permit while it runs.
                tasks.spawn(async move { session.consume(id, subscriber, prefetch, tx).await });
            }
            Some(Ok(Frame {
                id,
                body: Body::Request(request),
            })) => {
                let permit = if matches!(
                    request,
                    Request::Settle { .. } | Request::SettleBatch { .. }
                ) {
                    None
                } else if let Ok(permit) = permits.clone().try_acquire_owned() {
                    Some(permit)
                } else {
                    let permit = tokio::select! {
                        permit = permits.clone().acquire_owned() => permit.expect("never closed"),
                        _ = stop.cancelled() => break Ok(End::Closed),
                    };
                    // The server did not read while it waited, so neither could the client
                    // send: the frame under way gets its full time again.
                    reader.restart_clock();
                    Some(permit)
                };
                let session = session.clone();
                let tx = tx.clone();
                let metrics = shared.metrics.clone();
                tasks.spawn(async move {
                    metrics.request(&request);
                    let body = match session.answer(request).await {
                        Ok(response) => Body::Response(response),
                        Err(error) => Body::Failed(error),
                    };
                    let _ = tx.send(Frame::new(id, body));
                    drop(permit);
                });
            }
            Some(Ok(other)) => {
                break Err(Failure::from(ProtocolError::Unexpected(format!(
                    "a client may only send requests after the hello, got {:?}",
                    other.body
                ))));
            }
            Some(Err(err)) => break Err(Failure::reading(err)),
            None => break Ok(End::Closed),
        }
        while tasks.try_join_next().is_some() {}
    };
    if let Err(failure) = &result {
        let _ = tx.send(fatal(&failure.error));
    }
    // Closing the subscribers makes long-poll receives return; publishes in flight finish
    // and are answered (or, if the client is gone, their answers are dropped).
    session.end().await;
    while tasks.join_next().await.is_some() {}
    drop(tx);
    let _ = write_task.await;
    // After an error, and at shutdown, drain what the client still sends, so the answers
    // and the error just written are not lost to a TCP reset.
    if result.is_err() || stop.is_cancelled() {
        linger(reader.into_inner()).await;
    }
    result
}

/// Sends a last frame, closes the write side and lingers (see [`linger`]).
async fn refuse<R, W>(mut writer: FramedWrite<W, FrameCodec>, reader: Frames<R>, last: Frame)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _ = writer.send(last).await;
    let _ = SinkExt::<Frame>::close(&mut writer).await;
    linger(reader.into_inner()).await;
}

/// Reads and discards what the peer still sends, until it closes or a second passes.
/// Closing a socket with unread input makes the kernel reset the connection, which can
/// destroy the error frame before the peer reads it; draining first lets it arrive.
async fn linger<R: AsyncRead + Unpin>(mut reader: R) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The connection's session if the hello is acceptable, or why not.
fn admit(hello: &Hello, shared: &Shared) -> Result<Session, WireError> {
    let Some(grants) = shared.config.auth.admit(hello.token.as_deref()) else {
        return Err(WireError::Unauthorized {
            message: if hello.token.is_some() {
                "the API token is not valid".into()
            } else {
                "this server requires an API token (`?token=` in the sluice:// URL, or SLUICE_TOKEN)".into()
            },
        });
    };
    let namespace = match &hello.namespace {
        Some(ns) => Some(Namespace::new(ns.clone()).map_err(|e| WireError::Invalid {
            message: e.to_string(),
        })?),
        None => None,
    };
    Ok(Session::new(
        shared.backend.with_naming(Naming::new(namespace)),
        shared.metrics.clone(),
        shared.prefetched.clone(),
        grants,
    ))
}

fn fatal(err: &ProtocolError) -> Frame {
    Frame::new(0, Body::ProtocolError(err.to_string()))
}
