//! One client connection: preface, hello (authentication), then requests answered
//! concurrently and responses written back in whatever order they complete.
//!
//! Backpressure: at most [`MAX_IN_FLIGHT`] requests of one connection run at once (verbs and
//! credit excepted: they free work rather than add it); past that the reader stops reading
//! and TCP pushes back on the client. A protocol error (bad
//! preface, unknown version, oversized or malformed frame) is answered with one
//! `ProtocolError` frame and closes this connection only.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use sluice_core::{Namespace, Naming};
use sluice_protocol::frame::check_preface;
use sluice_protocol::message::{Hello, Welcome, WireError};
use sluice_protocol::{Body, Frame, FrameCodec, ProtocolError, Request, PREFACE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::session::Session;
use crate::Shared;

/// Most requests of one connection answered at once.
pub(crate) const MAX_IN_FLIGHT: usize = 4096;
/// How long a new connection has to send its preface and hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one connection until the client leaves, breaks the protocol, or the server shuts
/// down (then requests in flight finish and are answered before the connection closes).
pub(crate) async fn serve<S>(stream: S, peer: String, shared: Arc<Shared>, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    shared.metrics.connection_opened();
    match serve_inner(stream, &peer, &shared, stop).await {
        Ok(()) => tracing::debug!(%peer, "connection closed"),
        Err(err) => {
            shared.metrics.protocol_error();
            tracing::warn!(%peer, error = %err, "connection closed on a protocol error");
        }
    }
    shared.metrics.connection_closed();
}

async fn serve_inner<S>(
    mut stream: S,
    peer: &str,
    shared: &Arc<Shared>,
    stop: CancellationToken,
) -> Result<(), ProtocolError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let codec = FrameCodec::new(shared.config.max_frame);
    let mut preface = [0u8; 8];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut preface)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(ProtocolError::Unexpected("no preface within 10 s".into())),
    }
    // Our preface goes out either way: a client of another version learns which one we speak.
    stream.write_all(&PREFACE).await?;
    let (read, write) = tokio::io::split(stream);
    let mut reader = FramedRead::new(read, codec);
    // Outbound frames are bounded by what the server itself builds (a receive batch, a DLQ
    // page), not by the limit it puts on what clients send.
    let mut writer = FramedWrite::new(write, FrameCodec::new(u32::MAX as usize));
    if let Err(err) = check_preface(&preface) {
        refuse(writer, reader, fatal(&err)).await;
        return Err(err);
    }
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next()).await {
        Ok(Some(Ok(Frame {
            body: Body::Hello(hello),
            ..
        }))) => hello,
        Ok(Some(Ok(other))) => {
            let err =
                ProtocolError::Unexpected(format!("expected a hello first, got {:?}", other.body));
            let _ = writer.send(fatal(&err)).await;
            return Err(err);
        }
        Ok(Some(Err(err))) => {
            let _ = writer.send(fatal(&err)).await;
            return Err(err);
        }
        Ok(None) => return Ok(()),
        Err(_) => return Err(ProtocolError::Unexpected("no hello within 10 s".into())),
    };
    let session = match admit(&hello, shared) {
        Ok(session) => Arc::new(session),
        Err(refusal) => {
            tracing::warn!(%peer, client = %hello.client, "connection refused: {refusal:?}");
            refuse(writer, reader, Frame::new(0, Body::Failed(refusal))).await;
            return Ok(());
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
    let result = loop {
        let frame = tokio::select! {
            frame = reader.next() => frame,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            _ = stop.cancelled() => break Ok(()),
            _ = write_failed.cancelled() => break Ok(()),
        };
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
                } else {
                    tokio::select! {
                        permit = permits.clone().acquire_owned() => Some(permit.expect("never closed")),
                        _ = stop.cancelled() => break Ok(()),
                    }
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
                break Err(ProtocolError::Unexpected(format!(
                    "a client may only send requests after the hello, got {:?}",
                    other.body
                )));
            }
            Some(Err(err)) => break Err(err),
            None => break Ok(()),
        }
        while tasks.try_join_next().is_some() {}
    };
    if let Err(err) = &result {
        let _ = tx.send(fatal(err));
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
async fn refuse<R, W>(
    mut writer: FramedWrite<W, FrameCodec>,
    reader: FramedRead<R, FrameCodec>,
    last: Frame,
) where
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
    if !shared.config.auth.accepts(hello.token.as_deref()) {
        return Err(WireError::Unauthorized {
            message: if hello.token.is_some() {
                "the API token is not valid".into()
            } else {
                "this server requires an API token (`?token=` in the sluice:// URL, or SLUICE_TOKEN)".into()
            },
        });
    }
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
    ))
}

fn fatal(err: &ProtocolError) -> Frame {
    Frame::new(0, Body::ProtocolError(err.to_string()))
}
