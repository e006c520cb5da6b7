//! [`RemoteSubscriber`]: long-poll receives on a server-side subscriber, re-opened on the new
//! connection after a reconnect.
//!
//! Flow control is pull-based: a receive asks for at most `max` deliveries and the server
//! answers as soon as it has any (or the wait runs out), so a consumer never holds more than
//! it asked for; `prefetch` is the most a worker asks for at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{Error, Subscriber, SubscriptionConfig, SubscriptionName};
use sluice_protocol::{convert, Request, Response};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::delivery::RemoteDelivery;
use crate::link::{unexpected, Conn, Link, REDIAL_PAUSE};

/// A subscriber on `sluice serve`.
pub struct RemoteSubscriber {
    link: Arc<Link>,
    name: SubscriptionName,
    config: SubscriptionConfig,
    /// The connection and the server-side subscriber id on it.
    open: Mutex<Option<(Arc<Conn>, u64)>>,
    closed: AtomicBool,
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
        let (id, config) = open_on(&conn, &name).await?;
        Ok(Self {
            link,
            name,
            config,
            open: Mutex::new(Some((conn, id))),
            closed: AtomicBool::new(false),
        })
    }

    /// The live connection and this subscriber's id on it, re-opening after a reconnect.
    async fn current(&self) -> Result<(Arc<Conn>, u64), Error> {
        let mut open = self.open.lock().await;
        if let Some((conn, id)) = open.as_ref().filter(|(c, _)| !c.is_dead()) {
            return Ok((conn.clone(), *id));
        }
        let conn = self.link.conn().await?;
        let (id, _) = open_on(&conn, &self.name).await?;
        *open = Some((conn.clone(), id));
        Ok((conn, id))
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
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::Closed("subscriber"));
            }
            // While the server is unreachable, keep trying for as long as the caller waits.
            let (conn, id) = match self.current().await {
                Ok(open) => open,
                Err(err) if err.is_retryable() && Instant::now() + REDIAL_PAUSE < deadline => {
                    tokio::time::sleep(REDIAL_PAUSE).await;
                    continue;
                }
                Err(err) => return Err(err),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let request = Request::Receive {
                subscriber: id,
                max: u32::try_from(max.max(1)).unwrap_or(u32::MAX),
                wait_ms: convert::ms(left),
            };
            match Link::call_waiting(&conn, request, left).await {
                Ok(Response::Deliveries(deliveries)) => {
                    let now = std::time::Instant::now();
                    return deliveries
                        .into_iter()
                        .map(|d| RemoteDelivery::new(conn.clone(), self.name.clone(), d, now))
                        .collect();
                }
                Ok(other) => return Err(unexpected(other)),
                Err(err)
                    if err.is_retryable()
                        && conn.is_dead()
                        && Instant::now() + REDIAL_PAUSE < deadline =>
                {
                    continue
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn close(&self) -> Result<(), Error> {
        self.closed.store(true, Ordering::Release);
        let open = self.open.lock().await.take();
        if let Some((conn, id)) = open {
            if !conn.is_dead() {
                // Best effort: a dead connection took the server-side subscriber with it.
                let _ = Link::call_waiting(
                    &conn,
                    Request::CloseSubscriber { subscriber: id },
                    Duration::ZERO,
                )
                .await;
            }
        }
        Ok(())
    }
}
