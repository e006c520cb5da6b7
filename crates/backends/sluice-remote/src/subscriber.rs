//! [`RemoteSubscriber`]: deliveries pushed by the server (`Consume`) into a local buffer of
//! at most `prefetch`; `receive` takes from it and returns as much credit as it took.
//!
//! Invariants: the server never has more than `prefetch` deliveries pushed and not yet
//! taken, so a slow consumer holds at most that many leases it is not working on. The
//! stream lives on one connection; after a reconnect the subscriber is opened again and the
//! buffer of the dead connection is dropped (those leases died with it and run out on the
//! server). `close` gives buffered deliveries back at once (release), so they do not wait for
//! their leases to run out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{Error, Subscriber, SubscriptionConfig, SubscriptionName};
use sluice_protocol::message::WireDelivery;
use sluice_protocol::{convert, Request, Response, Verb};
use tokio::sync::{mpsc, Mutex, Notify};
use tokio::time::Instant;

use crate::delivery::RemoteDelivery;
use crate::link::{unexpected, Conn, Link, REDIAL_PAUSE};

/// A subscriber on `sluice serve`.
pub struct RemoteSubscriber {
    link: Arc<Link>,
    name: SubscriptionName,
    config: SubscriptionConfig,
    // tokio Mutex: held while a receive waits for the stream.
    stream: Mutex<Option<Stream>>,
    closed: AtomicBool,
    /// Wakes a receive waiting for deliveries when the subscriber is closed.
    closing: Notify,
}

/// The push stream of one connection.
struct Stream {
    conn: Arc<Conn>,
    subscriber: u64,
    id: u64,
    frames: mpsc::UnboundedReceiver<Result<Response, Error>>,
    /// Pushed, not yet taken: (delivery, when it arrived).
    buffered: VecDeque<(WireDelivery, std::time::Instant)>,
    /// Why the stream ended, once it has.
    ended: Option<Error>,
}

impl std::fmt::Debug for RemoteSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSubscriber")
            .field("subscription", &self.name)
            .finish_non_exhaustive()
    }
}

async fn open_on(conn: &Conn, name: &SubscriptionName) -> Result<(u64, SubscriptionConfig), Error> {
    let request = Request::OpenSubscriber {
        subscription: name.as_str().to_owned(),
    };
    match Link::call_waiting(conn, request, Duration::ZERO).await? {
        Response::Subscriber { subscriber, config } => {
            Ok((subscriber, convert::subscription_config_from_wire(&config)?))
        }
        other => Err(unexpected(other)),
    }
}

impl RemoteSubscriber {
    pub(crate) async fn open(link: Arc<Link>, name: SubscriptionName) -> Result<Self, Error> {
        let conn = link.conn().await?;
        let (subscriber, config) = open_on(&conn, &name).await?;
        let stream = Self::consume(conn, subscriber, config.prefetch)?;
        Ok(Self {
            link,
            name,
            config,
            stream: Mutex::new(Some(stream)),
            closed: AtomicBool::new(false),
            closing: Notify::new(),
        })
    }

    fn consume(conn: Arc<Conn>, subscriber: u64, prefetch: u32) -> Result<Stream, Error> {
        let (id, frames) = conn.open_stream(Request::Consume {
            subscriber,
            prefetch: prefetch.max(1),
        })?;
        Ok(Stream {
            conn,
            subscriber,
            id,
            frames,
            buffered: VecDeque::new(),
            ended: None,
        })
    }

    /// A stream on the live connection, opening the subscriber again after a reconnect.
    async fn reopen(&self) -> Result<Stream, Error> {
        let conn = self.link.conn().await?;
        let (subscriber, _) = open_on(&conn, &self.name).await?;
        Self::consume(conn, subscriber, self.config.prefetch)
    }
}

impl Subscriber for RemoteSubscriber {
    type Delivery = RemoteDelivery;

    fn subscription(&self) -> &SubscriptionName {
        &self.name
    }

    fn config(&self) -> &SubscriptionConfig {
        &self.config
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<RemoteDelivery>, Error> {
        let deadline = Instant::now() + wait;
        let mut slot = self.stream.lock().await;
        loop {
            // Registered before looking, so a `close` in between still wakes the wait below.
            let closing = self.closing.notified();
            tokio::pin!(closing);
            closing.as_mut().enable();
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::Closed("subscriber"));
            }
            // A stream that ended hands out what it buffered first (those leases are still
            // held, unless its connection died); then a new one is opened.
            let spent = slot
                .as_ref()
                .is_some_and(|s| s.conn.is_dead() || (s.ended.is_some() && s.buffered.is_empty()));
            if spent {
                if let Some(old) = slot.take() {
                    if !old.conn.is_dead() {
                        // The server ended this stream; make sure its subscriber is gone too
                        // (answered, and the answer ignored: nothing waits for it).
                        old.conn.close_stream(old.id);
                        old.conn.send_only(Request::CloseSubscriber {
                            subscriber: old.subscriber,
                        });
                    }
                    if let Some(err) = old.ended {
                        if !reopens(&err) {
                            return Err(err);
                        }
                    }
                }
            }
            let stream = match slot.as_mut() {
                Some(stream) => stream,
                None => match self.reopen().await {
                    Ok(stream) => slot.insert(stream),
                    // While the server is unreachable, keep trying for as long as the caller waits.
                    Err(err) if err.is_retryable() && Instant::now() + REDIAL_PAUSE < deadline => {
                        tokio::time::sleep(REDIAL_PAUSE).await;
                        continue;
                    }
                    Err(err) => return Err(err),
                },
            };
            // Everything already pushed, without waiting.
            while let Ok(frame) = stream.frames.try_recv() {
                stream.take(frame);
            }
            if !stream.buffered.is_empty() {
                let n = max.max(1).min(stream.buffered.len());
                let taken: Vec<_> = stream.buffered.drain(..n).collect();
                if stream.ended.is_none() {
                    stream.conn.send_only(Request::Credit {
                        subscriber: stream.subscriber,
                        n: n as u32,
                    });
                }
                // A delivery whose lease ran out while buffered is already the server's
                // again (it will come back): handing it out would only produce LeaseLost.
                let now = std::time::Instant::now();
                let live: Vec<_> = taken
                    .into_iter()
                    .filter(|(wire, at)| *at + Duration::from_millis(wire.lease_ms) > now)
                    .map(|(wire, at)| {
                        RemoteDelivery::new(stream.conn.clone(), self.name.clone(), wire, at)
                    })
                    .collect::<Result<_, _>>()?;
                if !live.is_empty() {
                    return Ok(live);
                }
                continue;
            }
            if stream.ended.is_some() {
                if Instant::now() + REDIAL_PAUSE >= deadline {
                    return Ok(Vec::new());
                }
                continue;
            }
            tokio::select! {
                frame = tokio::time::timeout_at(deadline, stream.frames.recv()) => match frame {
                    Err(_) => return Ok(Vec::new()),
                    Ok(Some(frame)) => stream.take(frame),
                    Ok(None) => stream.ended = Some(Error::connection("the delivery stream ended", None)),
                },
                _ = &mut closing => {}
            }
        }
    }

    async fn close(&self) -> Result<(), Error> {
        self.closed.store(true, Ordering::Release);
        self.closing.notify_waiters();
        let stream = self.stream.lock().await.take();
        let Some(mut stream) = stream else {
            return Ok(());
        };
        if stream.conn.is_dead() {
            stream.conn.close_stream(stream.id);
            return Ok(());
        }
        // The server closes its subscriber first, which ends the stream; what it pushed until
        // then is taken in, and all of it given back now rather than when its leases run out.
        let close = Request::CloseSubscriber {
            subscriber: stream.subscriber,
        };
        let _ = Link::call_waiting(&stream.conn, close, Duration::ZERO).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while stream.ended.is_none() {
                match stream.frames.recv().await {
                    Some(frame) => stream.take(frame),
                    None => break,
                }
            }
        })
        .await;
        stream.conn.close_stream(stream.id);
        let releases = stream
            .buffered
            .drain(..)
            .map(|(wire, _)| stream.conn.settle(wire.token, Verb::Release));
        futures::future::join_all(releases).await;
        Ok(())
    }

    /// The server's limiter: global rate limits are shared by every client of the server.
    fn limiter(&self) -> Option<Arc<dyn sluice_core::LimiterStore>> {
        Some(Arc::new(crate::limits::RemoteLimiter::new(
            self.link.clone(),
        )))
    }
}

/// Whether an error that ended a delivery stream means "open a new one" — the server closed
/// our subscriber (a shutdown or restart does), or the connection broke — rather than a
/// failure to report (the subscription was deleted, …).
fn reopens(err: &Error) -> bool {
    err.is_retryable() || matches!(err, Error::Closed(_))
}

impl Stream {
    /// Takes one frame of the stream: deliveries into the buffer; anything else ends it.
    fn take(&mut self, frame: Result<Response, Error>) {
        match frame {
            Ok(Response::Deliveries(batch)) => {
                let now = std::time::Instant::now();
                self.buffered.extend(batch.into_iter().map(|d| (d, now)));
            }
            Ok(other) => self.ended = Some(unexpected(other)),
            Err(err) => self.ended = Some(err),
        }
    }
}
