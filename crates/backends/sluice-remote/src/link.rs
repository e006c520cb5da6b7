//! The link to `sluice serve`: one multiplexed connection at a time, re-established on
//! demand after it breaks.
//!
//! Invariants: every request in flight on a connection gets exactly one answer — the
//! server's, or a retryable `Connection` error when the connection breaks first. A broken
//! connection is never reused: the next call dials again (at most once per
//! [`REDIAL_PAUSE`], so a server that is down is not hammered). Handles issued on one
//! connection (subscriber ids, delivery tokens) die with it; holders check
//! [`Conn::is_dead`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use sluice_core::Error;
use sluice_protocol::frame::check_preface;
use sluice_protocol::message::{Hello, Welcome, WireError};
use sluice_protocol::{convert, Body, Frame, FrameCodec, Request, Response, Verb, PREFACE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_util::codec::{FramedRead, FramedWrite};

/// Shortest pause between two dials after a failed one.
pub(crate) const REDIAL_PAUSE: Duration = Duration::from_millis(100);
/// How long dialing and the handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any request may go unanswered (a receive: this plus its wait).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most verbs in one `SettleBatch` frame.
const SETTLE_BATCH_MAX: usize = 1000;
/// Most bytes of dead-letter reasons and errors in one `SettleBatch` frame.
const SETTLE_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Largest frame accepted from the server.
const MAX_INBOUND_FRAME: usize = u32::MAX as usize;

/// Where and how to connect.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) addr: String,
    pub(crate) namespace: Option<String>,
    pub(crate) token: Option<String>,
    /// TLS connector and the name the server's certificate must carry.
    pub(crate) tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// A connection's byte stream: plain TCP or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}
type Stream = Box<dyn Io>;

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Response, Error>>>>;
/// Requests answered by a stream of frames (`Consume`), by request id.
type Streams = Mutex<HashMap<u64, mpsc::UnboundedSender<Result<Response, Error>>>>;

/// A verb waiting to go out in the next settle batch.
type QueuedVerb = (u64, Verb, oneshot::Sender<Result<(), Error>>);

/// One connection.
pub(crate) struct Conn {
    tx: mpsc::UnboundedSender<Frame>,
    pending: Arc<Pending>,
    streams: Arc<Streams>,
    next_id: AtomicU64,
    dead: Arc<AtomicBool>,
    addr: String,
    /// Verbs issued together leave in one `SettleBatch` frame.
    settles: Mutex<Vec<QueuedVerb>>,
}

impl Conn {
    /// Sends a request answered by a stream of frames; they arrive on the returned receiver
    /// (a connection that breaks ends it with a retryable error).
    pub(crate) fn open_stream(
        &self,
        request: Request,
    ) -> Result<(u64, mpsc::UnboundedReceiver<Result<Response, Error>>), Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.streams.lock().expect("streams lock").insert(id, tx);
        if self.is_dead()
            || self
                .tx
                .send(Frame::new(id, Body::Request(request)))
                .is_err()
        {
            self.streams.lock().expect("streams lock").remove(&id);
            return Err(lost(&self.addr));
        }
        Ok((id, rx))
    }

    /// Forgets a stream (frames still arriving for it are dropped).
    pub(crate) fn close_stream(&self, id: u64) {
        self.streams.lock().expect("streams lock").remove(&id);
    }

    /// Sends a request without waiting for its answer (`Credit` is never answered; an answer
    /// to anything else is dropped on arrival).
    pub(crate) fn send_only(&self, request: Request) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Frame::new(id, Body::Request(request)));
    }

    /// Settles a delivery, coalescing with the verbs issued at the same moment: the first
    /// verb into an empty queue schedules a flush, which runs once the caller's task yields
    /// (a `join_all` of acks queues all of them first) and sends them as one frame.
    pub(crate) async fn settle(self: &Arc<Self>, token: u64, verb: Verb) -> Result<(), Error> {
        let (done, result) = oneshot::channel();
        let first = {
            let mut queue = self.settles.lock().expect("settle lock");
            queue.push((token, verb, done));
            queue.len() == 1
        };
        if first {
            let conn = self.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                conn.flush_settles().await;
            });
        }
        result.await.unwrap_or_else(|_| Err(lost(&self.addr)))
    }

    async fn flush_settles(&self) {
        let mut queued = std::mem::take(&mut *self.settles.lock().expect("settle lock"));
        // One frame stays far below the server's frame limit: at most this many verbs and
        // this many bytes of reasons each (dead-letter reasons and errors can be long).
        while !queued.is_empty() {
            let mut bytes = 0;
            let cut = queued
                .iter()
                .position(|(_, verb, _)| {
                    bytes += match verb {
                        Verb::DeadLetter { reason, last_error } => {
                            reason.len() + last_error.as_ref().map_or(0, String::len)
                        }
                        _ => 16,
                    };
                    bytes > SETTLE_BATCH_BYTES
                })
                .map_or(queued.len(), |i| i.max(1))
                .min(SETTLE_BATCH_MAX);
            let rest = queued.split_off(cut);
            self.send_settles(queued).await;
            queued = rest;
        }
    }

    async fn send_settles(&self, queued: Vec<QueuedVerb>) {
        let (items, waiters): (Vec<_>, Vec<_>) =
            queued.into_iter().map(|(t, v, d)| ((t, v), d)).unzip();
        let n = items.len();
        match self
            .call(Request::SettleBatch { items }, REQUEST_TIMEOUT)
            .await
        {
            Ok(Response::Settled(results)) if results.len() == n => {
                for (done, result) in waiters.into_iter().zip(results) {
                    let _ = done.send(result.map_err(convert::error_from_wire));
                }
            }
            Ok(other) => {
                let message = unexpected(other).to_string();
                for done in waiters {
                    let _ = done.send(Err(Error::backend(message.clone(), false)));
                }
            }
            Err(err) => {
                let (message, retryable) = (err.to_string(), err.is_retryable());
                for done in waiters {
                    let _ = done.send(Err(if retryable {
                        Error::connection(message.clone(), None)
                    } else {
                        Error::backend(message.clone(), false)
                    }));
                }
            }
        }
    }

    /// Whether this connection broke (its handles are void).
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Sends a request and waits for its answer.
    pub(crate) async fn call(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, answer) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, done);
        // After registering: a connection that died in between has failed everything pending.
        if self.is_dead()
            || self
                .tx
                .send(Frame::new(id, Body::Request(request)))
                .is_err()
        {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(lost(&self.addr));
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(lost(&self.addr)),
            Err(_) => {
                self.pending.lock().expect("pending lock").remove(&id);
                Err(Error::Timeout(timeout))
            }
        }
    }
}

fn lost(addr: &str) -> Error {
    Error::connection(
        format!("the connection to sluice serve at {addr} was lost; the next call reconnects"),
        None,
    )
}

/// The link: the current connection and how to make a new one.
pub(crate) struct Link {
    target: Target,
    // tokio Mutex: held across the dial, so concurrent callers wait for one dial.
    current: tokio::sync::Mutex<Option<Arc<Conn>>>,
    last_failure: Mutex<Option<Instant>>,
    generation: AtomicU64,
    welcome: Mutex<Option<Welcome>>,
}

impl Link {
    pub(crate) fn new(target: Target) -> Self {
        Self {
            target,
            current: tokio::sync::Mutex::new(None),
            last_failure: Mutex::new(None),
            generation: AtomicU64::new(0),
            welcome: Mutex::new(None),
        }
    }

    pub(crate) fn addr(&self) -> &str {
        &self.target.addr
    }

    /// The server's welcome on the latest connection.
    pub(crate) fn welcome(&self) -> Option<Welcome> {
        self.welcome.lock().expect("welcome lock").clone()
    }

    /// The live connection, dialing a new one if there is none.
    pub(crate) async fn conn(&self) -> Result<Arc<Conn>, Error> {
        let mut current = self.current.lock().await;
        if let Some(conn) = current.as_ref().filter(|c| !c.is_dead()) {
            return Ok(conn.clone());
        }
        let since_failure = self
            .last_failure
            .lock()
            .expect("failure lock")
            .map(|at| at.elapsed());
        if let Some(elapsed) = since_failure {
            if elapsed < REDIAL_PAUSE {
                tokio::time::sleep(REDIAL_PAUSE - elapsed).await;
            }
        }
        match self.dial().await {
            Ok(conn) => {
                *self.last_failure.lock().expect("failure lock") = None;
                *current = Some(conn.clone());
                Ok(conn)
            }
            Err(err) => {
                *self.last_failure.lock().expect("failure lock") = Some(Instant::now());
                Err(err)
            }
        }
    }

    /// Sends a request on the live connection (dialing if needed).
    pub(crate) async fn call(&self, request: Request) -> Result<Response, Error> {
        self.conn().await?.call(request, REQUEST_TIMEOUT).await
    }

    /// Sends a request that may wait `wait` on the server.
    pub(crate) async fn call_waiting(
        conn: &Conn,
        request: Request,
        wait: Duration,
    ) -> Result<Response, Error> {
        conn.call(request, REQUEST_TIMEOUT + wait).await
    }

    async fn dial(&self) -> Result<Arc<Conn>, Error> {
        let addr = &self.target.addr;
        let unreachable = |what: String| {
            Error::connection(
                format!("cannot connect to sluice serve at {addr}: {what} (is `sluice serve` running there?)"),
                None,
            )
        };
        let handshake = async {
            let tcp = TcpStream::connect(addr.as_str())
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let mut stream: Stream = match &self.target.tls {
                None => Box::new(tcp),
                Some((connector, name)) => Box::new(
                    connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| unreachable(format!("TLS handshake failed ({e})")))?,
                ),
            };
            stream
                .write_all(&PREFACE)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let mut preface = [0u8; 8];
            stream
                .read_exact(&mut preface)
                .await
                .map_err(|e| unreachable(format!("no answer to the preface ({e})")))?;
            check_preface(&preface).map_err(|e| {
                Error::backend(
                    format!("sluice serve at {addr} cannot talk to this client: {e}"),
                    false,
                )
            })?;
            let (read, write) = tokio::io::split(stream);
            let mut reader = FramedRead::new(read, FrameCodec::new(MAX_INBOUND_FRAME));
            let mut writer = FramedWrite::new(write, FrameCodec::new(MAX_INBOUND_FRAME));
            let hello = Hello {
                namespace: self.target.namespace.clone(),
                token: self.target.token.clone(),
                client: format!("sluice-remote {}", env!("CARGO_PKG_VERSION")),
            };
            writer
                .send(Frame::new(0, Body::Hello(hello)))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            match reader.next().await {
                Some(Ok(Frame {
                    body: Body::Welcome(welcome),
                    ..
                })) => Ok((reader, writer, welcome)),
                Some(Ok(Frame {
                    body: Body::Failed(WireError::Unauthorized { message }),
                    ..
                })) => Err(Error::backend(
                    format!("sluice serve at {addr} refused the connection: {message}"),
                    false,
                )),
                Some(Ok(Frame {
                    body: Body::Failed(err),
                    ..
                })) => Err(convert::error_from_wire(err)),
                Some(Ok(Frame {
                    body: Body::ProtocolError(message),
                    ..
                })) => Err(Error::backend(
                    format!("sluice serve at {addr} reported a protocol error: {message}"),
                    false,
                )),
                Some(Ok(other)) => Err(Error::backend(
                    format!(
                        "sluice serve at {addr} answered the hello with {:?}",
                        other.body
                    ),
                    false,
                )),
                Some(Err(e)) => Err(unreachable(e.to_string())),
                None => Err(unreachable(
                    "the server closed the connection during the handshake".into(),
                )),
            }
        };
        let (reader, writer, welcome) =
            tokio::time::timeout(CONNECT_TIMEOUT, handshake)
                .await
                .map_err(|_| unreachable(format!("no handshake within {CONNECT_TIMEOUT:?}")))??;
        *self.welcome.lock().expect("welcome lock") = Some(welcome);
        let (tx, rx) = mpsc::unbounded_channel();
        let pending: Arc<Pending> = Arc::default();
        let streams: Arc<Streams> = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        {
            // A socket that fails for writing ends the connection as one that fails for
            // reading does: nothing waits for answers that can never come.
            let (pending, streams, dead, addr) =
                (pending.clone(), streams.clone(), dead.clone(), addr.clone());
            tokio::spawn(async move {
                sluice_protocol::io::write_loop(writer, rx).await;
                end(&pending, &streams, &dead, &addr);
            });
        }
        tokio::spawn(read_loop(
            reader,
            pending.clone(),
            streams.clone(),
            dead.clone(),
            addr.clone(),
        ));
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(%addr, generation, "connected to sluice serve");
        Ok(Arc::new(Conn {
            tx,
            pending,
            streams,
            next_id: AtomicU64::new(1),
            dead,
            addr: addr.clone(),
            settles: Mutex::new(Vec::new()),
        }))
    }
}

/// Hands each answer to its caller; on the end of the connection, fails everything pending.
async fn read_loop(
    mut reader: FramedRead<tokio::io::ReadHalf<Stream>, FrameCodec>,
    pending: Arc<Pending>,
    streams: Arc<Streams>,
    dead: Arc<AtomicBool>,
    addr: String,
) {
    while let Some(frame) = reader.next().await {
        let (id, result) = match frame {
            Ok(Frame {
                id,
                body: Body::Response(response),
            }) => (id, Ok(response)),
            Ok(Frame {
                id,
                body: Body::Failed(error),
            }) => (id, Err(convert::error_from_wire(error))),
            Ok(Frame {
                body: Body::ProtocolError(message),
                ..
            }) => {
                tracing::warn!(%addr, %message, "sluice serve closed the connection on a protocol error");
                break;
            }
            Ok(other) => {
                tracing::warn!(%addr, body = ?other.body, "unexpected frame from sluice serve; reconnecting");
                break;
            }
            Err(err) => {
                tracing::warn!(%addr, error = %err, "reading from sluice serve failed; reconnecting");
                break;
            }
        };
        let waiter = pending.lock().expect("pending lock").remove(&id);
        match waiter {
            Some(done) => {
                let _ = done.send(result);
            }
            None => {
                let stream = streams.lock().expect("streams lock").get(&id).cloned();
                if let Some(stream) = stream {
                    let _ = stream.send(result);
                }
            }
        }
    }
    end(&pending, &streams, &dead, &addr);
}

/// Marks a connection dead and fails every request and stream waiting on it.
fn end(pending: &Pending, streams: &Streams, dead: &AtomicBool, addr: &str) {
    dead.store(true, Ordering::Release);
    let ended: Vec<_> = streams.lock().expect("streams lock").drain().collect();
    for (_, stream) in ended {
        let _ = stream.send(Err(lost(addr)));
    }
    let failed: Vec<_> = pending.lock().expect("pending lock").drain().collect();
    for (_, done) in failed {
        let _ = done.send(Err(lost(addr)));
    }
}

/// A response of an unexpected kind: the server broke the protocol.
pub(crate) fn unexpected(response: Response) -> Error {
    Error::backend(
        format!("sluice serve answered with an unexpected response: {response:?}"),
        false,
    )
}
