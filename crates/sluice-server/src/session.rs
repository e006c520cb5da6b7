//! One client connection's state and the mapping of each request onto the engine.
//!
//! Invariants: subscriber ids and delivery tokens are only valid on the connection that
//! issued them; a delivery is in the token map exactly while it is leased to this
//! connection and not settled (a failed verb puts it back). When the connection ends, its
//! subscribers are closed and its deliveries dropped: their leases run out and the engine
//! delivers them again, as for any consumer that stops answering.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{
    Backend, DeadLetterReason, Delivery, Error, PublishOutcome, Publisher, RedriveOptions,
    Subscriber, SubscriptionName, TopicName,
};
use sluice_embedded::{EmbeddedBackend, EmbeddedDelivery, EmbeddedPublisher, EmbeddedSubscriber};
use sluice_protocol::convert::{self, ms};
use sluice_protocol::message::{Published, WireDelivery, WireError};
use sluice_protocol::{Body, Frame, Request, Response, Verb};
use tokio::sync::{mpsc, Notify, OnceCell};
use tokio_util::sync::CancellationToken;

use crate::auth::{grant_name, Action, Grants};
use crate::metrics::ServerMetrics;
use crate::prefetch::Prefetched;

/// Held deliveries at which expired leases are first swept.
const SWEEP_AT: usize = 4096;

/// Longest a single receive may wait on the server (a client asking more waits again).
const MAX_WAIT: Duration = Duration::from_secs(30);

/// The result of one request.
pub(crate) type Answer = Result<Response, WireError>;

fn wire(error: &Error) -> WireError {
    convert::error_to_wire(error)
}

/// Refuses a lease past [`MAX_LEASE`](crate::MAX_LEASE).
fn check_lease(lease: Duration) -> Result<(), WireError> {
    if lease > crate::MAX_LEASE {
        return Err(WireError::Invalid {
            message: format!(
                "a lease of {lease:?} is longer than this server allows ({:?})",
                crate::MAX_LEASE
            ),
        });
    }
    Ok(())
}

fn unknown(what: &str, handle: u64) -> WireError {
    WireError::UnknownHandle {
        message: format!("{what} {handle} is not held by this connection"),
    }
}

/// How many more deliveries may be pushed to a consuming subscriber.
struct Flow {
    /// Physical name of the subscription.
    subscription: String,
    credit: Mutex<u64>,
    /// Pushed and not yet taken (returned as credit).
    untaken: Mutex<u64>,
    more: Notify,
    /// Cancelled by `CloseSubscriber` and by the end of the connection.
    stop: CancellationToken,
}

/// One connection's view of the engine.
pub(crate) struct Session {
    backend: EmbeddedBackend,
    metrics: Arc<ServerMetrics>,
    prefetched: Arc<Prefetched>,
    publisher: OnceCell<EmbeddedPublisher>,
    // std Mutexes: never held across an .await.
    subscribers: Mutex<HashMap<u64, Arc<EmbeddedSubscriber>>>,
    /// Push credit of subscribers being consumed (`Consume`).
    flows: Mutex<HashMap<u64, Arc<Flow>>>,
    deliveries: Mutex<HashMap<u64, EmbeddedDelivery>>,
    next_handle: AtomicU64,
    /// Held deliveries at which the next sweep of expired leases runs.
    sweep_at: AtomicUsize,
    max_batch: usize,
    /// What the connection's API token allows.
    grants: Arc<Grants>,
}

impl Session {
    pub(crate) fn new(
        backend: EmbeddedBackend,
        metrics: Arc<ServerMetrics>,
        prefetched: Arc<Prefetched>,
        grants: Arc<Grants>,
    ) -> Self {
        let max_batch = backend.capabilities().max_batch;
        Self {
            backend,
            metrics,
            prefetched,
            publisher: OnceCell::new(),
            subscribers: Mutex::new(HashMap::new()),
            flows: Mutex::new(HashMap::new()),
            deliveries: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            sweep_at: AtomicUsize::new(SWEEP_AT),
            max_batch,
            grants,
        }
    }

    /// `Forbidden` unless the token allows `action` on the object with this full name.
    fn allow(&self, action: Action, what: &str, physical: &str) -> Result<(), WireError> {
        self.grants
            .check(action, what, physical)
            .map_err(|e| wire(&e))
    }

    /// `Forbidden` unless the token may manage the topic or subscription with this name
    /// (`Grants::check_manage`: `admin`, or one of `actions` on it).
    fn allow_manage(&self, actions: &[Action], what: &str, name: &str) -> Result<(), WireError> {
        self.grants
            .check_manage(actions, what, &grant_name(self.backend.naming(), name))
            .map_err(|e| wire(&e))
    }

    fn allow_topic(&self, action: Action, what: &str, topic: &TopicName) -> Result<(), WireError> {
        self.allow(
            action,
            what,
            &grant_name(self.backend.naming(), topic.as_str()),
        )
    }

    fn allow_subscription(&self, what: &str, name: &SubscriptionName) -> Result<(), WireError> {
        self.allow(
            Action::Consume,
            what,
            &grant_name(self.backend.naming(), name.as_str()),
        )
    }

    fn handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    /// Closes every subscriber (pending receives return) and forgets every delivery.
    pub(crate) async fn end(&self) {
        let flows: Vec<_> = self
            .flows
            .lock()
            .expect("session lock")
            .keys()
            .copied()
            .collect();
        for subscriber in flows {
            self.stop_flow(subscriber);
        }
        let subscribers: Vec<_> = self
            .subscribers
            .lock()
            .expect("session lock")
            .drain()
            .map(|(_, s)| s)
            .collect();
        for subscriber in subscribers {
            let _ = subscriber.close().await;
        }
        let held = std::mem::take(&mut *self.deliveries.lock().expect("session lock"));
        if !held.is_empty() {
            tracing::debug!(
                deliveries = held.len(),
                "connection ended holding leases; they will run out and be redelivered"
            );
        }
    }

    /// Whether the connection holds a delivery whose lease still runs: its consumer is at
    /// work, so the connection is not idle however long it stays silent.
    pub(crate) fn holds_leases(&self) -> bool {
        let now = std::time::Instant::now();
        self.deliveries
            .lock()
            .expect("session lock")
            .values()
            .any(|d| d.lease_deadline() > now)
    }

    /// Answers one request.
    pub(crate) async fn answer(&self, request: Request) -> Answer {
        match request {
            Request::Ping => Ok(Response::Pong),
            Request::Publish { topic, messages } => self.publish(&topic, messages).await,
            Request::OpenSubscriber { subscription } => {
                let name = convert::subscription(&subscription).map_err(|e| wire(&e))?;
                self.allow_subscription("consume from subscription", &name)?;
                let subscriber = self.backend.subscribe(&name).await.map_err(|e| wire(&e))?;
                let config = convert::subscription_config_to_wire(subscriber.config());
                let id = self.handle();
                self.subscribers
                    .lock()
                    .expect("session lock")
                    .insert(id, Arc::new(subscriber));
                Ok(Response::Subscriber {
                    subscriber: id,
                    config,
                })
            }
            Request::Receive {
                subscriber,
                max,
                wait_ms,
            } => self.receive(subscriber, max, wait_ms).await,
            Request::CloseSubscriber { subscriber } => {
                let removed = self
                    .subscribers
                    .lock()
                    .expect("session lock")
                    .remove(&subscriber);
                self.stop_flow(subscriber);
                if let Some(s) = removed {
                    s.close().await.map_err(|e| wire(&e))?;
                }
                Ok(Response::Done)
            }
            Request::Settle { token, verb } => self.settle(token, verb).await,
            Request::SettleBatch { items } => {
                let settles = items
                    .into_iter()
                    .map(|(token, verb)| async move { self.settle(token, verb).await.map(|_| ()) });
                Ok(Response::Settled(futures::future::join_all(settles).await))
            }
            Request::ExtendLease { token, lease_ms } => {
                check_lease(Duration::from_millis(lease_ms))?;
                let mut delivery = self.take(token)?;
                let result = delivery.extend_lease(Duration::from_millis(lease_ms)).await;
                self.put_back(token, delivery);
                result.map_err(|e| wire(&e))?;
                Ok(Response::Done)
            }
            Request::Consume { .. } | Request::Credit { .. } => Err(WireError::Invalid {
                message: "Consume and Credit are handled by the connection".into(),
            }),
            request @ (Request::JobLoad { .. }
            | Request::JobSwap { .. }
            | Request::JobRemove { .. }
            | Request::JobScan { .. }) => crate::job_requests::answer(&self.backend, request).await,
            Request::FlagSet { key, value, ttl_ms } => {
                // Workers write their circuit states; pausing a subscription is an operator's.
                if key.starts_with(&sluice_core::limit::pause_flag("")) {
                    self.allow(Action::Admin, "pause or resume a subscription", "")?;
                }
                crate::limit_requests::set_flag(&self.backend, &key, value.as_deref(), ttl_ms).await
            }
            Request::FlagList { prefix } => {
                crate::limit_requests::flags(&self.backend, &prefix).await
            }
            Request::SlotsTake {
                name,
                holder,
                max,
                hold,
                want,
                ttl_ms,
            } => {
                crate::limit_requests::slots(&self.backend, &name, &holder, max, hold, want, ttl_ms)
                    .await
            }
            Request::LimitTake {
                name,
                per_second,
                burst,
                give_back,
                want,
            } => {
                crate::limit_requests::take(
                    &self.backend,
                    &name,
                    per_second,
                    burst,
                    give_back,
                    want,
                )
                .await
            }
            other => self.topology(other).await,
        }
    }

    async fn publish(
        &self,
        topic: &str,
        messages: Vec<sluice_protocol::message::WireMessage>,
    ) -> Answer {
        let topic = convert::topic(topic).map_err(|e| wire(&e))?;
        self.allow_topic(Action::Publish, "publish to topic", &topic)?;
        let publisher = self
            .publisher
            .get_or_try_init(|| self.backend.publisher())
            .await
            .map_err(|e| wire(&e))?;
        let mut decoded = Vec::with_capacity(messages.len());
        let mut invalid = Vec::new();
        for (i, m) in messages.into_iter().enumerate() {
            match convert::message_from_wire(m) {
                Ok(m) => decoded.push(m),
                Err(e) => invalid.push((i, wire(&e))),
            }
        }
        let mut results: Vec<Result<Published, WireError>> = publisher
            .publish_batch(&topic, decoded)
            .await
            .into_iter()
            .map(|r| {
                r.map(|receipt| Published {
                    id: receipt.id.as_str().to_owned(),
                    fresh: receipt.outcome == PublishOutcome::Published,
                })
                .map_err(|e| wire(&e))
            })
            .collect();
        for (i, err) in invalid {
            results.insert(i, Err(err));
        }
        let fresh = results
            .iter()
            .filter(|r| matches!(r, Ok(p) if p.fresh))
            .count();
        self.metrics
            .published(&self.backend.naming().topic(&topic), fresh as u64);
        Ok(Response::Published(results))
    }

    async fn receive(&self, subscriber: u64, max: u32, wait_ms: u64) -> Answer {
        let sub = self
            .subscribers
            .lock()
            .expect("session lock")
            .get(&subscriber)
            .cloned()
            .ok_or_else(|| unknown("subscriber", subscriber))?;
        let max = (max as usize).clamp(1, self.max_batch);
        let wait = Duration::from_millis(wait_ms).min(MAX_WAIT);
        let leased = sub.receive(max, wait).await.map_err(|e| wire(&e))?;
        let now = std::time::Instant::now();
        let mut out = Vec::with_capacity(leased.len());
        let mut held = self.deliveries.lock().expect("session lock");
        for delivery in leased {
            let token = self.handle();
            out.push(WireDelivery {
                token,
                message: convert::message_to_wire(delivery.message().clone()),
                attempt: delivery.attempt(),
                lease_ms: ms(delivery.lease_deadline().saturating_duration_since(now)),
                topic: delivery.topic().as_str().to_owned(),
            });
            held.insert(token, delivery);
        }
        // A client may drop a delivery without settling it (it comes back when its lease runs
        // out): forget such leases now and then, so a long-lived connection holds no more than
        // its live ones.
        // Amortised: the next sweep waits until the map has doubled since this one.
        if held.len() >= self.sweep_at.load(Ordering::Relaxed) {
            held.retain(|_, d| d.lease_deadline() > now);
            self.sweep_at
                .store((held.len() * 2).max(SWEEP_AT), Ordering::Relaxed);
        }
        Ok(Response::Deliveries(out))
    }

    /// The push stream of `subscriber`, if it has one.
    fn flow(&self, subscriber: u64) -> Option<Arc<Flow>> {
        self.flows
            .lock()
            .expect("session lock")
            .get(&subscriber)
            .cloned()
    }

    /// Ends the push stream of `subscriber`, if it has one.
    fn stop_flow(&self, subscriber: u64) {
        let flow = self.flow(subscriber);
        if let Some(flow) = flow {
            flow.stop.cancel();
        }
    }

    /// Grants `n` more pushes to a consuming subscriber (unknown ids are ignored: its stream
    /// may just have ended).
    pub(crate) fn credit(&self, subscriber: u64, n: u32) {
        let flow = self.flow(subscriber);
        if let Some(flow) = flow {
            let n = {
                let mut untaken = flow.untaken.lock().expect("flow lock");
                let n = u64::from(n).min(*untaken);
                *untaken -= n;
                n
            };
            self.prefetched.remove(&flow.subscription, n);
            *flow.credit.lock().expect("flow lock") += n;
            flow.more.notify_one();
        }
    }

    /// Pushes deliveries of `subscriber` as frames with id `id` while credit lasts, until
    /// the subscriber is closed or the connection ends. The engine separately caps what one
    /// subscriber holds unsettled at the subscription's prefetch.
    pub(crate) async fn consume(
        &self,
        id: u64,
        subscriber: u64,
        prefetch: u32,
        out: mpsc::UnboundedSender<Frame>,
    ) {
        let physical = {
            let subs = self.subscribers.lock().expect("session lock");
            subs.get(&subscriber)
                .map(|s| self.backend.naming().subscription(s.subscription()))
        };
        let Some(physical) = physical else {
            let _ = out.send(Frame::new(
                id,
                Body::Failed(unknown("subscriber", subscriber)),
            ));
            return;
        };
        let flow = Arc::new(Flow {
            subscription: physical,
            credit: Mutex::new(u64::from(prefetch.max(1))),
            untaken: Mutex::new(0),
            more: Notify::new(),
            stop: CancellationToken::new(),
        });
        self.flows
            .lock()
            .expect("session lock")
            .insert(subscriber, flow.clone());
        let end = loop {
            // Wait for credit (registering for the wake-up before looking).
            let credit = loop {
                let more = flow.more.notified();
                tokio::pin!(more);
                more.as_mut().enable();
                let credit = *flow.credit.lock().expect("flow lock");
                if credit > 0 {
                    break credit;
                }
                if out.is_closed() || flow.stop.is_cancelled() {
                    break 0;
                }
                tokio::select! {
                    _ = more => {}
                    _ = flow.stop.cancelled() => {}
                }
            };
            if credit == 0 {
                // Stopped while waiting for credit: end the stream as a closed subscriber's.
                break flow.stop.is_cancelled().then(|| WireError::Closed {
                    what: "subscriber".into(),
                });
            }
            let max = u32::try_from(credit).unwrap_or(u32::MAX);
            // Closing the subscriber (CloseSubscriber, or the connection's end) makes this
            // return `Closed` within its wait; it is never dropped half-way, so no lease is
            // taken and forgotten.
            match self.receive(subscriber, max, 1000).await {
                Ok(Response::Deliveries(batch)) if batch.is_empty() => {
                    if out.is_closed() {
                        break None;
                    }
                }
                Ok(Response::Deliveries(batch)) => {
                    let n = batch.len() as u64;
                    *flow.credit.lock().expect("flow lock") -= n;
                    *flow.untaken.lock().expect("flow lock") += n;
                    self.prefetched.add(&flow.subscription, n);
                    if out
                        .send(Frame::new(id, Body::Response(Response::Deliveries(batch))))
                        .is_err()
                    {
                        break None;
                    }
                }
                Ok(other) => {
                    break Some(WireError::Backend {
                        message: format!("unexpected receive result {other:?}"),
                        retryable: false,
                    })
                }
                Err(err) => break Some(err),
            }
        };
        self.flows.lock().expect("session lock").remove(&subscriber);
        let untaken = std::mem::take(&mut *flow.untaken.lock().expect("flow lock"));
        self.prefetched.remove(&flow.subscription, untaken);
        if let Some(err) = end {
            let _ = out.send(Frame::new(id, Body::Failed(err)));
        }
    }

    /// The delivery of `token`. A token this connection does not hold (any more) is a lost
    /// lease: settled already, or swept after its lease ran out. The id is left empty: the
    /// client knows it.
    fn take(&self, token: u64) -> Result<EmbeddedDelivery, WireError> {
        self.deliveries
            .lock()
            .expect("session lock")
            .remove(&token)
            .ok_or(WireError::LeaseLost { id: String::new() })
    }

    fn put_back(&self, token: u64, delivery: EmbeddedDelivery) {
        self.deliveries
            .lock()
            .expect("session lock")
            .insert(token, delivery);
    }

    async fn settle(&self, token: u64, verb: Verb) -> Answer {
        let delivery = self.take(token)?;
        let subscription = self.backend.naming().subscription(delivery.subscription());
        let name = match verb {
            Verb::Ack => "ack",
            Verb::Retry { .. } => "retry",
            Verb::Release => "release",
            Verb::DeadLetter { .. } => "dead_letter",
        };
        let result = match verb {
            Verb::Ack => delivery.ack().await,
            Verb::Retry { after_ms } => delivery.retry(Duration::from_millis(after_ms)).await,
            Verb::Release => delivery.release().await,
            Verb::DeadLetter { reason, last_error } => {
                let mut reason = DeadLetterReason::new(reason);
                reason.last_error = last_error;
                delivery.dead_letter(reason).await
            }
        };
        match result {
            Ok(()) => {
                self.metrics.settled(&subscription, name);
                Ok(Response::Done)
            }
            Err(failed) => {
                let error = wire(&failed.error);
                // Handed back: the client may try again (unless the lease is gone anyway).
                if !matches!(error, WireError::LeaseLost { .. }) {
                    self.put_back(token, failed.delivery);
                }
                Err(error)
            }
        }
    }

    async fn topology(&self, request: Request) -> Answer {
        let b = &self.backend;
        let w = |e: Error| wire(&e);
        Ok(match request {
            Request::EnsureTopic { topic, config } => {
                let topic = convert::topic(&topic).map_err(w)?;
                self.allow_manage(&[Action::Publish], "create topic", topic.as_str())?;
                b.ensure_topic(&topic, &convert::topic_config_from_wire(&config))
                    .await
                    .map_err(w)?;
                Response::Done
            }
            Request::EnsureSubscription {
                subscription,
                config,
            } => {
                let name = convert::subscription(&subscription).map_err(w)?;
                let config = convert::subscription_config_from_wire(&config).map_err(w)?;
                check_lease(config.lease)?;
                self.allow_manage(&[Action::Consume], "create subscription", name.as_str())?;
                self.allow_manage(
                    &[Action::Consume],
                    "subscribe to topic",
                    config.topic.as_str(),
                )?;
                b.ensure_subscription(&name, &config).await.map_err(w)?;
                Response::Done
            }
            Request::DescribeTopic { topic } => {
                let topic = convert::topic(&topic).map_err(w)?;
                self.allow_manage(
                    &[Action::Publish, Action::Consume],
                    "describe topic",
                    topic.as_str(),
                )?;
                let info = b.describe_topic(&topic).await.map_err(w)?;
                Response::Topic(convert::topic_info_to_wire(&info))
            }
            Request::DescribeSubscription { subscription } => {
                let name = convert::subscription(&subscription).map_err(w)?;
                self.allow_manage(&[Action::Consume], "describe subscription", name.as_str())?;
                let info = b.describe_subscription(&name).await.map_err(w)?;
                Response::Subscription {
                    name: info.name.as_str().to_owned(),
                    config: convert::subscription_config_to_wire(&info.config),
                }
            }
            Request::ListTopics => {
                self.allow(Action::Admin, "list topics", "")?;
                Response::Topics(
                    b.list_topics()
                        .await
                        .map_err(w)?
                        .iter()
                        .map(convert::topic_info_to_wire)
                        .collect(),
                )
            }
            Request::DeleteTopic { topic } => {
                self.allow(Action::Admin, "delete a topic", "")?;
                let topic = convert::topic(&topic).map_err(w)?;
                let info = b.describe_topic(&topic).await.ok();
                b.delete_topic(&topic).await.map_err(w)?;
                self.metrics.forget_topic(&b.naming().topic(&topic));
                for sub in info.map(|i| i.subscriptions).unwrap_or_default() {
                    self.metrics
                        .forget_subscription(&b.naming().subscription(&sub));
                }
                Response::Done
            }
            Request::DeleteSubscription { subscription } => {
                self.allow(Action::Admin, "delete a subscription", "")?;
                let name = convert::subscription(&subscription).map_err(w)?;
                b.delete_subscription(&name).await.map_err(w)?;
                self.metrics
                    .forget_subscription(&b.naming().subscription(&name));
                Response::Done
            }
            Request::Stats { subscription } => {
                let name = convert::subscription(&subscription).map_err(w)?;
                self.allow_manage(
                    &[Action::Consume],
                    "read the stats of subscription",
                    name.as_str(),
                )?;
                let stats = self.prefetched.stats(b, &name).await.map_err(w)?;
                Response::Stats(convert::stats_to_wire(&stats))
            }
            Request::DlqList {
                subscription,
                limit,
            } => {
                self.allow(Action::Admin, "read a dead-letter queue", "")?;
                let name = convert::subscription(&subscription).map_err(w)?;
                let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                Response::DeadLettered(
                    b.dlq_list(&name, limit)
                        .await
                        .map_err(w)?
                        .into_iter()
                        .map(|d| convert::message_to_wire(d.message))
                        .collect(),
                )
            }
            Request::DlqRedrive {
                subscription,
                ids,
                limit,
                dry_run,
                rate_per_second,
            } => {
                self.allow(Action::Admin, "redrive a dead-letter queue", "")?;
                let name = convert::subscription(&subscription).map_err(w)?;
                let mut options = RedriveOptions::all().ids(ids).dry_run(dry_run);
                if let Some(limit) = limit {
                    options = options.limit(usize::try_from(limit).unwrap_or(usize::MAX));
                }
                if let Some(rate) = rate_per_second {
                    options = options.rate_per_second(rate);
                }
                let report = b.dlq_redrive(&name, &options).await.map_err(w)?;
                Response::Redriven {
                    moved: report.moved,
                    dry_run: report.dry_run,
                }
            }
            Request::DlqPurge { subscription } => {
                self.allow(Action::Admin, "purge a dead-letter queue", "")?;
                let name = convert::subscription(&subscription).map_err(w)?;
                Response::Purged(b.dlq_purge(&name).await.map_err(w)?)
            }
            other => {
                return Err(WireError::Invalid {
                    message: format!("request {other:?} is not a topology request"),
                })
            }
        })
    }
}
