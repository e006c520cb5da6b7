//! A loopback TCP proxy that can cut every connection: how the suite simulates a connection
//! loss without touching the broker.
//!
//! Each accepted connection is forwarded to the target by its own task in one [`JoinSet`];
//! cutting means aborting those tasks and waiting for them to end, which drops (and so
//! closes) both sockets of each connection. The listener keeps accepting, so a client that reconnects gets through.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// State shared by the proxy handle and its accept loop.
#[derive(Default)]
struct Shared {
    // std Mutex: held only to spawn or abort tasks, never across an `.await`.
    connections: Mutex<JoinSet<()>>,
    accepted: AtomicUsize,
    paused: AtomicBool,
}

impl Shared {
    /// Aborts every connection task (their sockets close as the tasks are dropped).
    fn abort_all(&self) {
        self.connections.lock().unwrap().abort_all();
    }

    /// Aborts every connection task and waits until each one is gone, so that both sockets
    /// of every connection are closed when it returns.
    async fn cut_all(&self) {
        let mut cut = std::mem::take(&mut *self.connections.lock().unwrap());
        cut.abort_all();
        while cut.join_next().await.is_some() {}
    }
}

/// A TCP proxy on `127.0.0.1:0` forwarding to one target.
///
/// Dropping it stops the listener and closes every connection.
pub struct TcpProxy {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    accept_loop: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on an ephemeral loopback port and forwards each connection to `target`.
    /// Must be called within a tokio runtime.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accept_loop = tokio::spawn(accept(listener, target, Arc::clone(&shared)));
        Ok(Self {
            addr,
            target,
            shared,
            accept_loop,
        })
    }

    /// The address clients connect to instead of the target's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// How many connections were accepted so far (refused ones included).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Closes every open connection and returns once they are closed; new ones are still
    /// accepted and forwarded.
    pub async fn cut_all(&self) {
        self.shared.cut_all().await;
    }

    /// Closes every open connection and closes new ones at once, as if the broker were
    /// down, until [`resume`](Self::resume).
    pub async fn pause(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
        self.shared.cut_all().await;
    }

    /// Forwards new connections again after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
        self.shared.abort_all();
    }
}

impl std::fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpProxy")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("accepted", &self.accepted())
            .finish()
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of file descriptors or similar: keep serving the ones that come.
            tokio::task::yield_now().await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.paused.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let mut connections = shared.connections.lock().unwrap();
        while connections.try_join_next().is_some() {}
        connections.spawn(forward(client, target));
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // Ends when either side closes or fails; both sockets are dropped then.
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut reader, mut writer) = socket.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, text: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(text).await?;
        let mut buf = vec![0; text.len()];
        stream.read_exact(&mut buf).await?;
        Ok(buf)
    }

    #[tokio::test]
    async fn forwards_then_cuts_then_accepts_new_connections() {
        let proxy = TcpProxy::start(echo_server().await).await.unwrap();
        let mut first = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut first, b"hello").await.unwrap(), b"hello");

        proxy.cut_all().await;
        let mut buf = [0u8; 1];
        let read = first.read(&mut buf).await;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a cut connection reads EOF or an error, got {read:?}"
        );

        let mut second = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut second, b"again").await.unwrap(), b"again");
        assert_eq!(proxy.accepted(), 2);
    }

    #[tokio::test]
    async fn paused_proxy_closes_new_connections_until_resumed() {
        let proxy = TcpProxy::start(echo_server().await).await.unwrap();
        proxy.pause().await;
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        let read = refused.read(&mut buf).await;
        assert!(matches!(read, Ok(0) | Err(_)), "got {read:?}");

        proxy.resume();
        let mut ok = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut ok, b"back").await.unwrap(), b"back");
    }
}
