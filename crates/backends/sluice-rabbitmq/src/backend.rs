//! [`RabbitBackend`]: connecting, capabilities, topology (through the catalog), stats and
//! the DLQ tools.
//!
//! Invariants:
//! - Every topology change happens inside a catalog [`Session`], and the physical objects
//!   are declared before the record is written: a recorded object exists.
//! - Declaring an existing object with other arguments (`PRECONDITION_FAILED`) is
//!   [`Error::Conflict`] naming the object; the catalog catches Sluice's own differences
//!   first and names the field.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use sluice_core::dedup::{Claims, DedupStore};
use sluice_core::{
    Backend, Capabilities, DeadLetteredMessage, Error, Naming, ObjectKind, OrderingLevel,
    RedriveOptions, RedriveReport, StartPosition, SubscriptionConfig, SubscriptionInfo,
    SubscriptionName, SubscriptionStats, Support, TopicConfig, TopicInfo, TopicName,
};

use crate::catalog::{Session, SubscriptionRecord, TopicRecord};
use crate::link::{reply_code, reply_text, to_error, Link, PRECONDITION_FAILED};
use crate::names::{Names, MAX_DELAY, TIERS};
use crate::publisher::RabbitPublisher;
use crate::subscriber::RabbitSubscriber;
use crate::wire;

/// Largest message Sluice accepts (payload, headers and keys), far below RabbitMQ's own
/// limit (128 MiB on 3.10) so quorum queues stay responsive.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// How many attempts above `max_attempts` the native `x-delivery-limit` safety net allows.
pub const DELIVERY_LIMIT_MARGIN: u32 = 10;

/// What the RabbitMQ backend does natively, emulates or cannot do.
pub fn capabilities() -> Capabilities {
    let mut caps = Capabilities::full("rabbitmq");
    caps.delay = Support::Emulated;
    // Its workers take global rate limits from a store they are given (Redis).
    caps.global_rate_limits = Support::Emulated;
    caps.max_delay = Some(MAX_DELAY);
    caps.ordering = OrderingLevel::None;
    caps.dedup_window = Support::Emulated;
    caps.max_dedup_window = None;
    caps.backlog_bounds = Support::Unsupported;
    caps.replay = false;
    caps.filter = Support::Native;
    caps.release_counts_as_attempt = true;
    caps.survives_restart = true;
    caps.reconnects = true;
    caps.max_message_size = MAX_MESSAGE_SIZE;
    caps.max_batch = 1000;
    caps.time_granularity = TIERS[0];
    caps
}

/// Options of a [`RabbitBackend`].
#[derive(Clone)]
#[non_exhaustive]
pub struct RabbitOptions {
    /// Prefix of every physical name.
    pub namespace: Option<sluice_core::Namespace>,
    /// Publish with the `mandatory` flag: a message that no subscription's binding matches
    /// fails with an "unroutable" error instead of being dropped by the broker.
    pub unroutable_is_error: bool,
    /// Where the emulated dedup windows keep their claims. By default an in-memory
    /// [`Claims`], so a window covers the publishers of the backends connected with these
    /// options (and their clones) in this process only; a store shared by every publisher
    /// (`sluice-redis`, `sluice-sql`) makes it cover every process, and survive restarts.
    pub dedup_store: Arc<dyn DedupStore>,
}

impl Default for RabbitOptions {
    fn default() -> Self {
        Self {
            namespace: None,
            unroutable_is_error: false,
            dedup_store: Arc::new(Claims::default()),
        }
    }
}

impl std::fmt::Debug for RabbitOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitOptions")
            .field("namespace", &self.namespace)
            .field("unroutable_is_error", &self.unroutable_is_error)
            .field("dedup_store", &format_args!("Arc<dyn DedupStore>"))
            .finish()
    }
}

impl RabbitOptions {
    /// Sets the namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: Option<sluice_core::Namespace>) -> Self {
        self.namespace = namespace;
        self
    }

    /// Makes unroutable publishes an error.
    #[must_use]
    pub fn unroutable_is_error(mut self, enabled: bool) -> Self {
        self.unroutable_is_error = enabled;
        self
    }

    /// Sets [`dedup_store`](Self::dedup_store).
    #[must_use]
    pub fn dedup_store(mut self, store: Arc<dyn DedupStore>) -> Self {
        self.dedup_store = store;
        self
    }
}

/// What every handle of one backend shares.
pub(crate) struct Shared {
    pub(crate) link: Link,
    pub(crate) names: Names,
    pub(crate) caps: Capabilities,
    pub(crate) options: RabbitOptions,
    catalog_lock: tokio::sync::Mutex<()>,
    // std Mutexes below: held for a map operation, never across an .await.
    topics: Mutex<HashMap<String, Option<Duration>>>,
    tiers: Mutex<HashSet<String>>,
    buffered: Mutex<HashMap<String, Arc<AtomicI64>>>,
}

/// Sluice on RabbitMQ. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct RabbitBackend {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for RabbitBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBackend")
            .field("namespace", &self.shared.options.namespace)
            .finish_non_exhaustive()
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

pub(crate) fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    }
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.as_bytes().to_vec().into())
}

/// A declare's error: a conflict naming the object, or what lapin said.
fn declare_error(err: lapin::Error, kind: ObjectKind, name: &str, object: &str) -> Error {
    if reply_code(&err) == Some(PRECONDITION_FAILED) {
        Error::Conflict {
            kind,
            name: name.to_owned(),
            difference: format!(
                "RabbitMQ object `{object}` exists with other arguments: {}",
                reply_text(&err)
            ),
        }
    } else {
        to_error(err, &format!("declaring `{object}`"))
    }
}

impl Shared {
    pub(crate) async fn session(&self) -> Result<Session<'_>, Error> {
        Session::open(&self.link, &self.names, &self.catalog_lock).await
    }

    /// The topic's dedup window, from the cache or the catalog; `NotFound` if it does not
    /// exist.
    pub(crate) async fn topic_window(&self, topic: &TopicName) -> Result<Option<Duration>, Error> {
        if let Some(window) = self.topics.lock().expect("topics").get(topic.as_str()) {
            return Ok(*window);
        }
        let session = self.session().await?;
        let record = session.catalog.topics.get(topic.as_str()).cloned();
        session.release().await;
        let record = record.ok_or_else(|| Error::topic_not_found(topic.as_str()))?;
        let window = record.config().dedup_window;
        self.topics
            .lock()
            .expect("topics")
            .insert(topic.as_str().to_owned(), window);
        Ok(window)
    }

    /// Forgets a topic the broker says is gone: its cached configuration and its dedup
    /// claims.
    pub(crate) async fn forget_topic(&self, topic: &TopicName) {
        self.uncache_topic(topic.as_str());
        self.forget_claims(topic).await;
    }

    /// Drops the cached configuration of a topic (after a failed publish: the next one
    /// reads the catalog again, and finds out whether the topic still exists).
    pub(crate) fn uncache_topic(&self, topic: &str) {
        self.topics.lock().expect("topics").remove(topic);
    }

    /// Declares a tier queue once per handle.
    async fn declare_tier(
        &self,
        queue: &str,
        tier: Duration,
        dead_letter_exchange: &str,
        dead_letter_routing_key: Option<&str>,
        bind: Option<(&str, &str)>,
    ) -> Result<(), Error> {
        if self.tiers.lock().expect("tiers").contains(queue) {
            return Ok(());
        }
        let channel = self.link.channel().await?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(tier.as_millis() as i64),
        );
        arguments.insert(
            "x-dead-letter-exchange".into(),
            string(dead_letter_exchange),
        );
        if let Some(key) = dead_letter_routing_key {
            arguments.insert("x-dead-letter-routing-key".into(), string(key));
        }
        let result = async {
            channel
                .queue_declare(queue, durable(), arguments)
                .await
                .map_err(|err| to_error(err, &format!("declaring the tier queue `{queue}`")))?;
            if let Some((exchange, label)) = bind {
                let mut match_tier = FieldTable::default();
                match_tier.insert("x-match".into(), string("all"));
                match_tier.insert(wire::DELAY_TIER.into(), string(label));
                channel
                    .queue_bind(queue, exchange, "", QueueBindOptions::default(), match_tier)
                    .await
                    .map_err(|err| to_error(err, &format!("binding `{queue}`")))?;
            }
            Ok::<_, Error>(())
        }
        .await;
        let _ = channel.close(200, "declared").await;
        result?;
        self.tiers.lock().expect("tiers").insert(queue.to_owned());
        Ok(())
    }

    /// The retry-tier queue of `subscription` for `tier`, declared.
    pub(crate) async fn retry_tier(
        &self,
        subscription: &SubscriptionName,
        tier: Duration,
    ) -> Result<String, Error> {
        let queue = self.names.retry_queue(subscription, tier);
        let target = self.names.queue(subscription);
        self.declare_tier(&queue, tier, "", Some(&target), None)
            .await?;
        Ok(queue)
    }

    /// The delay-tier queue of `topic` for `tier`, declared and bound to the topic's delay
    /// exchange; returns the tier's label (the `sluice-delay` header that routes to it).
    pub(crate) async fn delay_tier(
        &self,
        topic: &TopicName,
        tier: Duration,
    ) -> Result<String, Error> {
        let queue = self.names.delay_queue(topic, tier);
        let label = sluice_core::name::tier_label(tier);
        let exchange = self.names.delay_exchange(topic);
        let target = self.names.exchange(topic);
        self.declare_tier(&queue, tier, &target, None, Some((&exchange, &label)))
            .await?;
        Ok(label)
    }

    /// The counter of deliveries prefetched by this handle's subscribers and not yet
    /// received by the application.
    pub(crate) fn buffered(&self, subscription: &SubscriptionName) -> Arc<AtomicI64> {
        Arc::clone(
            self.buffered
                .lock()
                .expect("buffered")
                .entry(subscription.as_str().to_owned())
                .or_default(),
        )
    }

    fn forget_tiers(&self, prefix: &str) {
        self.tiers
            .lock()
            .expect("tiers")
            .retain(|queue| !queue.starts_with(prefix));
    }
}

async fn delete_queues(channel: &Channel, queues: &[String]) {
    for queue in queues {
        // Deleting a missing queue is not an error on RabbitMQ 3.x.
        let _ = channel
            .queue_delete(queue, QueueDeleteOptions::default())
            .await;
    }
}

impl RabbitBackend {
    /// Connects to `uri` (`amqp://USER:PASS@HOST:PORT/VHOST`).
    pub async fn connect(uri: &str, options: RabbitOptions) -> Result<Self, Error> {
        let link = Link::connect(uri).await?;
        Ok(Self {
            shared: Arc::new(Shared {
                link,
                names: Names::new(Naming::new(options.namespace.clone())),
                caps: capabilities(),
                options,
                catalog_lock: tokio::sync::Mutex::new(()),
                topics: Mutex::default(),
                tiers: Mutex::default(),
                buffered: Mutex::default(),
            }),
        })
    }

    /// How many times this handle reconnected after losing its connection.
    pub fn reconnections(&self) -> u64 {
        self.shared.link.connections().saturating_sub(1)
    }

    async fn declare_subscription(
        &self,
        channel: &Channel,
        name: &SubscriptionName,
        config: &SubscriptionConfig,
    ) -> Result<(), Error> {
        let names = &self.shared.names;
        let queue = names.queue(name);
        let dead_letter = names.dead_letter(name);
        let conflict =
            |err, object: &str| declare_error(err, ObjectKind::Subscription, name.as_str(), object);
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), string("quorum"));
        if config.dead_letter_queue {
            arguments.insert("x-dead-letter-exchange".into(), string(""));
            arguments.insert("x-dead-letter-routing-key".into(), string(&dead_letter));
            let limit = config.max_attempts.saturating_add(DELIVERY_LIMIT_MARGIN);
            arguments.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(limit.into()),
            );
        }
        channel
            .queue_declare(&queue, durable(), arguments)
            .await
            .map_err(|err| conflict(err, &queue))?;
        // The DLQ after the queue: a queue that conflicts leaves nothing behind.
        if config.dead_letter_queue {
            channel
                .queue_declare(&dead_letter, durable(), FieldTable::default())
                .await
                .map_err(|err| conflict(err, &dead_letter))?;
        }
        let pattern = config.filter.as_ref().map_or("#", |f| f.as_str());
        channel
            .queue_bind(
                &queue,
                &names.exchange(&config.topic),
                pattern,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|err| to_error(err, &format!("binding `{queue}`")))?;
        Ok(())
    }

    pub(crate) async fn existing_subscription(
        &self,
        subscription: &SubscriptionName,
    ) -> Result<SubscriptionConfig, Error> {
        let session = self.shared.session().await?;
        let record = session
            .catalog
            .subscriptions
            .get(subscription.as_str())
            .cloned();
        session.release().await;
        record
            .ok_or_else(|| Error::subscription_not_found(subscription.as_str()))?
            .config()
    }

    /// A fresh channel for one operation that may fail on a missing queue.
    pub(crate) async fn channel(&self) -> Result<Channel, Error> {
        self.shared.link.channel().await
    }
}

impl Backend for RabbitBackend {
    type Publisher = RabbitPublisher;
    type Subscriber = RabbitSubscriber;

    fn capabilities(&self) -> &Capabilities {
        &self.shared.caps
    }

    fn naming(&self) -> &Naming {
        self.shared.names.naming()
    }

    async fn publisher(&self) -> Result<RabbitPublisher, Error> {
        Ok(RabbitPublisher::new(Arc::clone(&self.shared)))
    }

    async fn subscribe(&self, subscription: &SubscriptionName) -> Result<RabbitSubscriber, Error> {
        let config = self.existing_subscription(subscription).await?;
        RabbitSubscriber::start(Arc::clone(&self.shared), subscription.clone(), config).await
    }

    async fn ensure_topic(&self, topic: &TopicName, config: &TopicConfig) -> Result<(), Error> {
        if config.backlog_bound.is_some() {
            return Err(Error::Unsupported(
                "topic backlog bounds on RabbitMQ (see docs/rabbitmq.md)".into(),
            ));
        }
        let mut session = self.shared.session().await?;
        let existing = session.catalog.topics.get(topic.as_str()).cloned();
        if let Some(existing) = &existing {
            if let Some(difference) = existing.config().difference(config) {
                session.release().await;
                return Err(Error::Conflict {
                    kind: ObjectKind::Topic,
                    name: topic.as_str().to_owned(),
                    difference,
                });
            }
        }
        let exchange_options = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let names = &self.shared.names;
        for (name, kind) in [
            (names.exchange(topic), ExchangeKind::Topic),
            (names.delay_exchange(topic), ExchangeKind::Headers),
        ] {
            session
                .channel
                .exchange_declare(&name, kind, exchange_options, FieldTable::default())
                .await
                .map_err(|err| declare_error(err, ObjectKind::Topic, topic.as_str(), &name))?;
        }
        if existing.is_none() {
            session
                .catalog
                .topics
                .insert(topic.as_str().to_owned(), TopicRecord::new(config));
        }
        session.commit(existing.is_none()).await?;
        self.shared.uncache_topic(topic.as_str());
        if existing.is_none() && config.dedup_window.is_some() {
            // A topic created again under an old name starts with an empty window. An
            // existing topic keeps its claims: other publishers (other processes, with a
            // shared dedup store) rely on them.
            self.shared.forget_claims(topic).await;
        }
        Ok(())
    }

    async fn ensure_subscription(
        &self,
        subscription: &SubscriptionName,
        config: &SubscriptionConfig,
    ) -> Result<(), Error> {
        let mut session = self.shared.session().await?;
        if !session.catalog.topics.contains_key(config.topic.as_str()) {
            session.release().await;
            return Err(Error::topic_not_found(config.topic.as_str()));
        }
        let name = subscription.as_str().to_owned();
        if let Some(existing) = session.catalog.subscriptions.get(&name).cloned() {
            if let Some(difference) = existing.config()?.difference(config) {
                session.release().await;
                return Err(Error::Conflict {
                    kind: ObjectKind::Subscription,
                    name,
                    difference,
                });
            }
            let channel = session.channel.clone();
            self.declare_subscription(&channel, subscription, config)
                .await?;
            let changed = existing.prefetch != config.prefetch;
            if changed {
                session
                    .catalog
                    .subscriptions
                    .insert(name, SubscriptionRecord::new(config));
            }
            return session.commit(changed).await;
        }
        if !matches!(config.start, StartPosition::Latest) {
            session.release().await;
            return Err(Error::Unsupported(
                "start positions other than `latest` on RabbitMQ: a queue holds only what \
                 was published after it was bound"
                    .into(),
            ));
        }
        let channel = session.channel.clone();
        self.declare_subscription(&channel, subscription, config)
            .await?;
        session
            .catalog
            .subscriptions
            .insert(name.clone(), SubscriptionRecord::new(config));
        if let Some(topic) = session.catalog.topics.get_mut(config.topic.as_str()) {
            topic.subscriptions.push(name);
        }
        session.commit(true).await
    }

    async fn describe_topic(&self, topic: &TopicName) -> Result<TopicInfo, Error> {
        let session = self.shared.session().await?;
        let record = session.catalog.topics.get(topic.as_str()).cloned();
        session.release().await;
        let record = record.ok_or_else(|| Error::topic_not_found(topic.as_str()))?;
        let subscriptions = record
            .subscriptions
            .iter()
            .map(|s| SubscriptionName::new(s.clone()))
            .collect::<Result<_, _>>()?;
        Ok(TopicInfo::new(
            topic.clone(),
            record.config(),
            subscriptions,
        ))
    }

    async fn describe_subscription(
        &self,
        subscription: &SubscriptionName,
    ) -> Result<SubscriptionInfo, Error> {
        let config = self.existing_subscription(subscription).await?;
        Ok(SubscriptionInfo::new(subscription.clone(), config))
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>, Error> {
        let session = self.shared.session().await?;
        let topics = session.catalog.topics.clone();
        session.release().await;
        topics
            .into_iter()
            .map(|(name, record)| {
                let subscriptions = record
                    .subscriptions
                    .iter()
                    .map(|s| SubscriptionName::new(s.clone()))
                    .collect::<Result<_, _>>()?;
                Ok(TopicInfo::new(
                    TopicName::new(name)?,
                    record.config(),
                    subscriptions,
                ))
            })
            .collect()
    }

    async fn delete_topic(&self, topic: &TopicName) -> Result<(), Error> {
        let mut session = self.shared.session().await?;
        let Some(record) = session.catalog.topics.remove(topic.as_str()) else {
            session.release().await;
            return Err(Error::topic_not_found(topic.as_str()));
        };
        let names = &self.shared.names;
        let mut queues = Vec::new();
        for name in &record.subscriptions {
            session.catalog.subscriptions.remove(name);
            let subscription = SubscriptionName::new(name.clone())?;
            queues.extend(subscription_queues(names, &subscription));
            self.shared.forget_tiers(&names.queue(&subscription));
        }
        queues.extend(TIERS.iter().map(|tier| names.delay_queue(topic, *tier)));
        let channel = session.channel.clone();
        delete_queues(&channel, &queues).await;
        for exchange in [names.delay_exchange(topic), names.exchange(topic)] {
            channel
                .exchange_delete(&exchange, ExchangeDeleteOptions::default())
                .await
                .map_err(|err| to_error(err, &format!("deleting `{exchange}`")))?;
        }
        self.shared.uncache_topic(topic.as_str());
        self.shared.forget_tiers(&names.exchange(topic));
        let committed = session.commit(true).await;
        if record.config().dedup_window.is_some() {
            // After the commit: the topology lock is not held while the store is walked.
            self.shared.forget_claims(topic).await;
        }
        committed
    }

    async fn delete_subscription(&self, subscription: &SubscriptionName) -> Result<(), Error> {
        let mut session = self.shared.session().await?;
        let Some(record) = session.catalog.subscriptions.remove(subscription.as_str()) else {
            session.release().await;
            return Err(Error::subscription_not_found(subscription.as_str()));
        };
        if let Some(topic) = session.catalog.topics.get_mut(&record.topic) {
            topic.subscriptions.retain(|s| s != subscription.as_str());
        }
        let names = &self.shared.names;
        let channel = session.channel.clone();
        delete_queues(&channel, &subscription_queues(names, subscription)).await;
        self.shared.forget_tiers(&names.queue(subscription));
        session.commit(true).await
    }

    async fn stats(&self, subscription: &SubscriptionName) -> Result<SubscriptionStats, Error> {
        self.count_stats(subscription).await
    }

    async fn dlq_list(
        &self,
        subscription: &SubscriptionName,
        limit: usize,
    ) -> Result<Vec<DeadLetteredMessage>, Error> {
        self.list_dead_letters(subscription, limit).await
    }

    async fn dlq_redrive(
        &self,
        subscription: &SubscriptionName,
        options: &RedriveOptions,
    ) -> Result<RedriveReport, Error> {
        self.redrive_dead_letters(subscription, options).await
    }

    async fn dlq_purge(&self, subscription: &SubscriptionName) -> Result<u64, Error> {
        self.purge_dead_letters(subscription).await
    }
}

/// Every queue a subscription owns: its queue, its DLQ, its retry tiers.
fn subscription_queues(names: &Names, subscription: &SubscriptionName) -> Vec<String> {
    let mut queues = vec![names.queue(subscription), names.dead_letter(subscription)];
    queues.extend(
        TIERS
            .iter()
            .map(|tier| names.retry_queue(subscription, *tier)),
    );
    queues
}
