//! The HTTP listener's connections: counted in all and per client address with the same
//! limits as the `sluice://` listener (`ConnectionLimits`, a budget of their own, so a flood
//! on one listener does not starve the other), and, with TLS, handshaken in their own
//! tasks.
//!
//! A connection over a limit is answered `503` with the JSON error `too_many_connections`
//! and closed; the refusal is logged at most once per address, reason and minute.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::limits::{ConnectionCounter, ConnectionSlot};
use crate::Shared;

/// A connection and its place in the count, given back when the connection is dropped.
pub(crate) struct Counted<S> {
    inner: S,
    _slot: ConnectionSlot,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 108\r\n\r\n{\"error\":\"this server holds its maximum of HTTP connections; try again later\",\"code\":\"too_many_connections\"}";

/// Answers a refused connection, closes its write side and reads what the client still
/// sends for up to a second: closing a socket with unread input resets the connection,
/// which can destroy the answer before the client reads it.
async fn refuse(mut stream: TcpStream, permit: OwnedSemaphorePermit) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(REFUSED).await;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    drop(permit);
}

/// Accepts the next TCP connection within the limits; those over them are answered 503 and
/// closed. `None` once `stop` is cancelled.
async fn accept_counted(
    listener: &TcpListener,
    counter: &Arc<ConnectionCounter>,
    shared: &Shared,
    stop: Option<&CancellationToken>,
) -> Option<(TcpStream, ConnectionSlot, SocketAddr)> {
    let refusing = &shared.http_refusing;
    loop {
        let accepted = match stop {
            Some(stop) => tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.cancelled() => return None,
            },
            None => listener.accept().await,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %err, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match counter.acquire(peer.ip()) {
            Ok(slot) => return Some((stream, slot, peer)),
            Err(refusal) => {
                shared.metrics.connection_refused();
                if let Some(held_back) =
                    shared
                        .warnings
                        .check(peer.ip(), refusal.reason(), Instant::now())
                {
                    tracing::warn!(%peer, reason = refusal.reason(), held_back, "HTTP connection refused: {refusal}");
                }
                // Told why by a task of its own, at most MAX_REFUSING at once; past that,
                // closed without a word (a flood must not cost more tasks than that).
                if let Ok(permit) = refusing.clone().try_acquire_owned() {
                    tokio::spawn(refuse(stream, permit));
                }
            }
        }
    }
}

/// HTTP: counted TCP connections.
pub(crate) struct CountedListener {
    listener: TcpListener,
    counter: Arc<ConnectionCounter>,
    shared: Arc<Shared>,
}

impl CountedListener {
    pub(crate) fn new(
        listener: TcpListener,
        counter: Arc<ConnectionCounter>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            listener,
            counter,
            shared,
        }
    }
}

impl axum::serve::Listener for CountedListener {
    type Io = Counted<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Some((stream, slot, peer)) =
                accept_counted(&self.listener, &self.counter, &self.shared, None).await
            {
                let _ = stream.set_nodelay(true);
                return (
                    Counted {
                        inner: stream,
                        _slot: slot,
                    },
                    peer,
                );
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// HTTPS: counted TCP connections that completed a TLS handshake. Handshakes run in their
/// own tasks, so a peer that connects and stays silent holds up nobody else; failed ones
/// are logged and skipped.
pub(crate) struct TlsListener {
    local_addr: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(Counted<TlsStream>, SocketAddr)>,
}

impl TlsListener {
    pub(crate) fn new(
        listener: TcpListener,
        tls: TlsAcceptor,
        counter: Arc<ConnectionCounter>,
        shared: Arc<Shared>,
        stop: CancellationToken,
    ) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (done, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while let Some((stream, slot, peer)) =
                accept_counted(&listener, &counter, &shared, Some(&stop)).await
            {
                let (tls, done) = (tls.clone(), done.clone());
                tokio::spawn(async move {
                    let handshake = tls.accept(stream);
                    match tokio::time::timeout(Duration::from_secs(10), handshake).await {
                        Ok(Ok(stream)) => {
                            let counted = Counted {
                                inner: stream,
                                _slot: slot,
                            };
                            let _ = done.send((counted, peer)).await;
                        }
                        Ok(Err(err)) => {
                            tracing::warn!(%peer, error = %err, "HTTPS handshake failed")
                        }
                        Err(_) => tracing::warn!(%peer, "no HTTPS handshake within 10 s"),
                    }
                });
            }
        });
        Ok(Self { local_addr, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Counted<TlsStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The acceptor stopped (shutdown): wait for axum's graceful shutdown to end us.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refusal_is_a_complete_http_answer_with_a_json_body() {
        let text = std::str::from_utf8(super::REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["code"], "too_many_connections");
    }
}
