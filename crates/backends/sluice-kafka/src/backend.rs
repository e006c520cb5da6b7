//! [`KafkaBackend`]: the connection (an admin client, one idempotent producer, the catalog),
//! the topology and the operations (stats, DLQ tools).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use sluice_core::dedup::{Claims, DedupStore};
use sluice_core::{
    tags, Backend, Capabilities, DeadLetteredMessage, Envelope, Error, Namespace, Naming,
    ObjectKind, OrderingLevel, RedriveOptions, RedriveReport, Result, StartPosition,
    SubscriptionConfig, SubscriptionInfo, SubscriptionName, SubscriptionStats, Support,
    TopicConfig, TopicInfo, TopicName,
};

use crate::catalog::{Catalog, Tags};
use crate::error::{settle, to_error};
use crate::mover::{DelayMovers, Mover};
use crate::names::{Names, MAX_DELAY, TIERS};
use crate::publisher::KafkaPublisher;
use crate::subscriber::KafkaSubscriber;
use crate::wire;

/// Largest message: Kafka's default `message.max.bytes` (1 MiB) less room for the record
/// batch, Sluice's headers and a DLQ envelope.
pub const MAX_MESSAGE_SIZE: usize = 1_000_000 - 16 * 1024;

/// How long a publisher trusts a topic configuration it read.
const TOPIC_CACHE: Duration = Duration::from_secs(5);

/// How long an admin or metadata call may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

/// What the Kafka backend can do.
pub fn capabilities() -> Capabilities {
    let mut caps = Capabilities::full("kafka");
    caps.delay = Support::Emulated;
    // Its workers take global rate limits from a store they are given (Redis).
    caps.global_rate_limits = Support::Emulated;
    caps.max_delay = Some(MAX_DELAY);
    caps.ordering = OrderingLevel::UntilRetry;
    caps.dedup_window = Support::Emulated;
    caps.max_dedup_window = None;
    caps.backlog_bounds = Support::Unsupported;
    caps.replay = true;
    caps.filter = Support::Emulated;
    caps.release_counts_as_attempt = false;
    caps.survives_restart = true;
    caps.reconnects = true;
    caps.max_message_size = MAX_MESSAGE_SIZE;
    caps.max_batch = 1000;
    caps.time_granularity = Duration::from_millis(20);
    caps
}

/// Options of a [`KafkaBackend`].
#[derive(Clone)]
#[non_exhaustive]
pub struct KafkaOptions {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Prefix of every physical name.
    pub namespace: Option<Namespace>,
    /// Partitions of a new topic (and of its tiers): the most consumers of one subscription
    /// that get work at once (3 by default).
    pub partitions: i32,
    /// Replication factor of new topics (1 by default; 3 on a production cluster).
    pub replication: i32,
    /// Consumer group session timeout: how long a crashed consumer keeps its partitions
    /// (6 s by default: the least a Kafka broker accepts by default,
    /// `group.min.session.timeout.ms`; Tansu holds a new member's first join for half of
    /// it).
    pub session_timeout: Duration,
    /// Further librdkafka settings for every client (`security.protocol`, `sasl.*`, …).
    pub client: Vec<(String, String)>,
    /// Where the emulated dedup windows keep their claims. By default an in-memory
    /// [`Claims`], so a window covers the publishers of the backends connected with these
    /// options (and their clones) in this process only; a store shared by every publisher
    /// (`sluice-redis`, `sluice-sql`) makes it cover every process, and survive restarts.
    pub dedup_store: Arc<dyn DedupStore>,
}

impl std::fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaOptions")
            .field("brokers", &self.brokers)
            .field("namespace", &self.namespace)
            .field("partitions", &self.partitions)
            .field("replication", &self.replication)
            .field("session_timeout", &self.session_timeout)
            .field("client", &self.client)
            .field("dedup_store", &format_args!("Arc<dyn DedupStore>"))
            .finish()
    }
}

impl KafkaOptions {
    /// Options for the brokers at `brokers`, with the defaults.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            namespace: None,
            partitions: 3,
            replication: 1,
            session_timeout: Duration::from_secs(6),
            client: Vec::new(),
            dedup_store: Arc::new(Claims::default()),
        }
    }

    /// Sets [`namespace`](Self::namespace).
    #[must_use]
    pub fn namespace(mut self, namespace: Option<Namespace>) -> Self {
        self.namespace = namespace;
        self
    }

    /// Sets [`partitions`](Self::partitions).
    #[must_use]
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Sets [`replication`](Self::replication).
    #[must_use]
    pub fn replication(mut self, replication: i32) -> Self {
        self.replication = replication.max(1);
        self
    }

    /// Sets [`session_timeout`](Self::session_timeout).
    #[must_use]
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Adds a librdkafka setting for every client.
    #[must_use]
    pub fn client_setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.client.push((key.into(), value.into()));
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
    pub(crate) options: KafkaOptions,
    pub(crate) names: Names,
    pub(crate) caps: Capabilities,
    pub(crate) admin: AdminClient<DefaultClientContext>,
    pub(crate) producer: FutureProducer,
    pub(crate) catalog: Catalog,
    /// The delay mover of each topic this process runs (one per topic, shared by its
    /// subscribers here; the mover's consumer group makes it one per topic across processes).
    movers: Mutex<HashMap<String, Weak<Mover>>>,
    /// Topic configurations for publishing, with when they were read.
    topics: Mutex<HashMap<TopicName, (TopicConfig, std::time::Instant)>>,
}

impl Shared {
    /// A client configuration with the brokers and the user's settings.
    pub(crate) fn client_config(&self) -> ClientConfig {
        client_config(&self.options)
    }

    /// A consumer configuration of a group member.
    pub(crate) fn member_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        let session = self.options.session_timeout.as_millis().max(1000);
        config
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 6).max(100).to_string())
            // The rebalance timeout: how long a rebalance waits for members to rejoin. The
            // poll thread polls all the time (a revocation blocks it at most a few seconds),
            // so twice the session timeout is plenty, and a member that left mid-rebalance
            // delays the others by that much at most.
            .set("max.poll.interval.ms", (session * 2).to_string())
            .set("fetch.wait.max.ms", "100")
            .set("topic.metadata.refresh.interval.ms", "10000");
        config
    }

    /// How long a closed member waits, quiet, before it leaves its group: a heartbeat and a
    /// half.
    pub(crate) fn leave_after(&self) -> Duration {
        self.options.session_timeout / 4
    }

    /// The configuration of a topic, from the catalog.
    pub(crate) async fn topic_config(&self, topic: &TopicName) -> Result<TopicConfig> {
        match self.catalog.get(&topic_key(topic)).await? {
            Some(tags) => Ok(tags::topic_config(&tags)),
            None => Err(Error::topic_not_found(topic.as_str())),
        }
    }

    /// The configuration of a topic for publishing, from a cache: read from the catalog on a
    /// miss; an entry older than a few seconds is still used while a background read
    /// refreshes it (so a deletion by another process is seen, without stalling publishes).
    pub(crate) async fn cached_topic_config(
        self: &Arc<Self>,
        topic: &TopicName,
    ) -> Result<TopicConfig> {
        let stale = {
            let mut cache = self.topics.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get_mut(topic) {
                Some((config, at)) => {
                    let stale = at.elapsed() >= TOPIC_CACHE;
                    if stale {
                        // One refresh at a time: the next one is due a period later.
                        *at = std::time::Instant::now();
                    }
                    Some((config.clone(), stale))
                }
                None => None,
            }
        };
        match stale {
            Some((config, false)) => Ok(config),
            Some((config, true)) => {
                let (shared, topic) = (Arc::clone(self), topic.clone());
                tokio::spawn(async move {
                    match shared.topic_config(&topic).await {
                        Ok(config) => shared.remember_topic(&topic, config),
                        Err(Error::NotFound { .. }) => shared.forget_topic(&topic),
                        Err(err) => tracing::debug!(%topic, error = %err, "refreshing a topic"),
                    }
                });
                Ok(config)
            }
            None => {
                let config = self.topic_config(topic).await?;
                self.remember_topic(topic, config.clone());
                Ok(config)
            }
        }
    }

    fn remember_topic(&self, topic: &TopicName, config: TopicConfig) {
        self.topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.clone(), (config, std::time::Instant::now()));
    }

    /// Drops a topic from the publishing cache.
    pub(crate) fn forget_topic(&self, topic: &TopicName) {
        self.topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(topic);
    }

    /// The configuration of a subscription, from the catalog.
    pub(crate) async fn subscription_config(
        &self,
        subscription: &SubscriptionName,
    ) -> Result<SubscriptionConfig> {
        self.catalog
            .get(&subscription_key(subscription))
            .await?
            .map(|tags| tags::subscription_config(&tags))
            .transpose()?
            .flatten()
            .ok_or_else(|| Error::subscription_not_found(subscription.as_str()))
    }

    /// The topic's delay mover in this process, started if none runs.
    pub(crate) fn mover(self: &Arc<Self>, topic: &TopicName) -> Result<Arc<Mover>> {
        let mut movers = self.movers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mover) = movers.get(topic.as_str()).and_then(Weak::upgrade) {
            if !mover.is_stopped() {
                return Ok(mover);
            }
        }
        let mover = Arc::new(Mover::start(Arc::clone(self), topic)?);
        movers.insert(topic.to_string(), Arc::downgrade(&mover));
        Ok(mover)
    }

    /// Creates topics, leaving existing ones alone; `compact` makes them compacted.
    async fn create_topics(&self, topics: &[(String, i32)], compact: bool) -> Result<()> {
        let news: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, partitions)| {
                let new = NewTopic::new(
                    name,
                    *partitions,
                    TopicReplication::Fixed(self.options.replication),
                );
                if compact {
                    new.set("cleanup.policy", "compact")
                } else {
                    new
                }
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = self
            .admin
            .create_topics(news.iter(), &options)
            .await
            .map_err(|e| to_error(e, "creating topics"))?;
        admin_results(results, "creating", RDKafkaErrorCode::TopicAlreadyExists)
    }

    /// Deletes topics, ignoring missing ones, after stopping this process's consumers of them.
    async fn delete_topics(&self, topics: &[String]) -> Result<()> {
        crate::consumer::stop_consumers_of(&self.options.brokers, topics).await;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = self
            .admin
            .delete_topics(&names, &options)
            .await
            .map_err(|e| to_error(e, "deleting topics"))?;
        admin_results(
            results,
            "deleting",
            RDKafkaErrorCode::UnknownTopicOrPartition,
        )
    }

    /// The partition count of a physical topic.
    async fn partitions(&self, topic: String) -> Result<i32> {
        let config = self.client_config();
        blocking(move || {
            let consumer: BaseConsumer = config
                .create()
                .map_err(|e| to_error(e, "reading metadata"))?;
            let count = settle(|| {
                let metadata = consumer.fetch_metadata(Some(&topic), ADMIN_TIMEOUT)?;
                let topic = metadata.topics().first().ok_or(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ))?;
                match topic.error() {
                    Some(err) => Err(KafkaError::MetadataFetch(err.into())),
                    None if topic.partitions().is_empty() => Err(KafkaError::MetadataFetch(
                        RDKafkaErrorCode::UnknownTopicOrPartition,
                    )),
                    None => Ok(topic.partitions().len()),
                }
            })
            .map_err(|e| to_error(e, &format!("reading the metadata of `{topic}`")))?;
            Ok(i32::try_from(count).unwrap_or(i32::MAX))
        })
        .await
    }
}

/// Checks the per-topic results of an admin call, where `fine` (the topic already exists, or
/// is already gone) is not an error.
fn admin_results(
    results: Vec<rdkafka::admin::TopicResult>,
    doing: &str,
    fine: RDKafkaErrorCode,
) -> Result<()> {
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, code)) if code == fine => {}
            Err((name, code)) => {
                return Err(Error::backend(
                    format!("{doing} Kafka topic `{name}`: {code}"),
                    false,
                ))
            }
        }
    }
    Ok(())
}

/// Runs blocking client calls off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::backend(format!("a blocking Kafka call failed: {e}"), true))?
}

fn client_config(options: &KafkaOptions) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &options.brokers)
        .set("client.id", "sluice")
        .set("log_level", "3");
    for (key, value) in &options.client {
        config.set(key, value);
    }
    config
}

fn topic_key(topic: &TopicName) -> String {
    format!("topic/{topic}")
}

fn subscription_key(subscription: &SubscriptionName) -> String {
    format!("subscription/{subscription}")
}

/// Sluice on Apache Kafka. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct KafkaBackend {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for KafkaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBackend")
            .field("brokers", &self.shared.options.brokers)
            .field("namespace", &self.shared.options.namespace)
            .finish_non_exhaustive()
    }
}

impl KafkaBackend {
    /// Runs the delay movers of `topics` in this process until the returned handle is
    /// closed or dropped: each moves the topic's delayed messages to it when they are due.
    ///
    /// Every subscriber of a topic runs its mover, and so does every publisher that sent a
    /// delayed message to it; a deployment whose consumers are not Sluice's and whose
    /// publishers do not stay up (a cron job, `sluice publish --delay`) runs this instead
    /// (`sluice delays`). Movers of one topic share a consumer group: however many run, each
    /// record is moved by one of them.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a topic that does not exist; [`Error::Backend`] when a
    /// consumer cannot start.
    pub async fn move_delays(&self, topics: &[TopicName]) -> Result<DelayMovers> {
        let mut movers = Vec::with_capacity(topics.len());
        for topic in topics {
            self.shared.topic_config(topic).await?;
            movers.push((topic.clone(), self.shared.mover(topic)?));
        }
        Ok(DelayMovers::new(movers))
    }

    /// Connects to the brokers: checks that they answer, and creates the namespace's catalog
    /// topic if it is missing.
    ///
    /// # Errors
    /// [`Error::Connection`] when no broker answers within 15 s.
    pub async fn connect(options: KafkaOptions) -> Result<Self> {
        let config = client_config(&options);
        let admin: AdminClient<DefaultClientContext> = config
            .create()
            .map_err(|e| to_error(e, "creating the admin client"))?;
        let producer: FutureProducer = config
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("compression.type", "none")
            .set("delivery.timeout.ms", "30000")
            .set("partitioner", "murmur2_random")
            .set("message.max.bytes", "1048576")
            .create()
            .map_err(|e| to_error(e, "creating the producer"))?;
        let names = Names::new(Naming::new(options.namespace.clone()));
        let brokers = options.brokers.clone();
        let probe = config.clone();
        blocking(move || {
            let consumer: BaseConsumer = probe
                .create()
                .map_err(|e| to_error(e, "creating a client"))?;
            consumer
                .fetch_metadata(None, ADMIN_TIMEOUT)
                .map_err(|e| {
                    Error::connection(
                        format!("no Kafka broker answers at {brokers}: {e}"),
                        Some(Box::new(e)),
                    )
                })
                .map(drop)
        })
        .await?;
        let catalog_topic = names.catalog();
        let catalog = Catalog::open(&config, catalog_topic.clone(), producer.clone())?;
        let shared = Arc::new(Shared {
            options,
            names,
            caps: capabilities(),
            admin,
            producer,
            catalog,
            movers: Mutex::new(HashMap::new()),
            topics: Mutex::new(HashMap::new()),
        });
        shared.create_topics(&[(catalog_topic, 1)], true).await?;
        Ok(Self { shared })
    }

    /// The options it was connected with.
    pub fn options(&self) -> &KafkaOptions {
        &self.shared.options
    }

    /// The physical topics of a subscription: its retry tiers and, if it has one, its DLQ.
    fn subscription_topics(
        &self,
        subscription: &SubscriptionName,
        config: &SubscriptionConfig,
    ) -> Vec<String> {
        let names = &self.shared.names;
        let mut topics = names.retry_tiers(subscription);
        if config.dead_letter_queue {
            topics.push(names.dlq(subscription));
        }
        topics
    }

    /// Commits the start position of a new subscription for its group.
    async fn pin_start(
        &self,
        subscription: &SubscriptionName,
        config: &SubscriptionConfig,
    ) -> Result<()> {
        let topic = self.shared.names.topic(&config.topic);
        let partitions = self.shared.partitions(topic.clone()).await?;
        let mut client = self.shared.client_config();
        client
            .set("group.id", self.shared.names.group(subscription))
            .set("enable.auto.commit", "false");
        let start = config.start;
        blocking(move || {
            let consumer: BaseConsumer = client
                .clone()
                .create()
                .map_err(|e| to_error(e, "creating a client"))?;
            let mut list = TopicPartitionList::new();
            for partition in 0..partitions {
                let (low, high) =
                    settle(|| consumer.fetch_watermarks(&topic, partition, ADMIN_TIMEOUT))
                        .map_err(|e| to_error(e, &format!("reading the offsets of `{topic}`")))?;
                let offset = match start {
                    StartPosition::Earliest => low,
                    // The end as reported, then checked by reading (Tansu's can lag).
                    StartPosition::Latest => {
                        first_at_or_after(&client, &topic, partition, high, i64::MAX)?
                    }
                    StartPosition::At(_) => high,
                };
                list.add_partition_offset(&topic, partition, Offset::Offset(offset))
                    .map_err(|e| to_error(e, "pinning the start position"))?;
            }
            if let StartPosition::At(at) = start {
                let ms = at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                let mut times = TopicPartitionList::new();
                for partition in 0..partitions {
                    times
                        .add_partition_offset(
                            &topic,
                            partition,
                            Offset::Offset(i64::try_from(ms).unwrap_or(i64::MAX)),
                        )
                        .map_err(|e| to_error(e, "pinning the start position"))?;
                }
                let found = consumer
                    .offsets_for_times(times, ADMIN_TIMEOUT)
                    .map_err(|e| to_error(e, "finding offsets for the start time"))?;
                for element in found.elements() {
                    // No record at or after the time: the end, already in `list`.
                    if let Offset::Offset(offset) = element.offset() {
                        let partition = element.partition();
                        let ms = i64::try_from(ms).unwrap_or(i64::MAX);
                        let offset = first_at_or_after(&client, &topic, partition, offset, ms)?;
                        list.set_partition_offset(&topic, partition, Offset::Offset(offset))
                            .map_err(|e| to_error(e, "pinning the start position"))?;
                    }
                }
            }
            consumer
                .commit(&list, CommitMode::Sync)
                .map_err(|e| to_error(e, "committing the start position"))
        })
        .await
    }

    /// The DLQ's records from the read position to its end (`limit` at most).
    async fn dlq_read(&self, subscription: &SubscriptionName, limit: usize) -> Result<DlqSnapshot> {
        let config = self.shared.subscription_config(subscription).await?;
        if !config.dead_letter_queue {
            return Ok(DlqSnapshot::default());
        }
        let topic = self.shared.names.dlq(subscription);
        let mut client = self.shared.client_config();
        client
            .set("group.id", self.shared.names.dlq(subscription))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        blocking(move || dlq_snapshot(client, topic, limit)).await
    }

    /// Moves the DLQ's read position to `to`.
    async fn dlq_commit(&self, subscription: &SubscriptionName, to: i64) -> Result<()> {
        let topic = self.shared.names.dlq(subscription);
        let mut client = self.shared.client_config();
        client
            .set("group.id", self.shared.names.dlq(subscription))
            .set("enable.auto.commit", "false");
        blocking(move || {
            let consumer: BaseConsumer = client
                .create()
                .map_err(|e| to_error(e, "creating a client"))?;
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&topic, 0, Offset::Offset(to))
                .map_err(|e| to_error(e, "moving the DLQ's position"))?;
            consumer
                .commit(&list, CommitMode::Sync)
                .map_err(|e| to_error(e, "moving the DLQ's position"))
        })
        .await
    }
}

/// The first offset at or after `from` whose record's timestamp is at least `ms`, or the
/// partition's end. `OffsetsForTimes` should answer exactly that; Tansu answers earlier
/// offsets (and its watermarks can lag), so the answer is checked by reading from it up to
/// the end the fetch itself reports (one record on a broker that answers right).
fn first_at_or_after(
    client: &ClientConfig,
    topic: &str,
    partition: i32,
    from: i64,
    ms: i64,
) -> Result<i64> {
    let reader: BaseConsumer = client
        .clone()
        .set("enable.partition.eof", "true")
        .create()
        .map_err(|e| to_error(e, "creating a client"))?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(|e| to_error(e, "reading the start position"))?;
    reader
        .assign(&list)
        .map_err(|e| to_error(e, "reading the start position"))?;
    let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
    let mut next = from;
    while std::time::Instant::now() < deadline {
        match reader.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(next),
            Some(Err(err)) => return Err(to_error(err, "reading the start position")),
            Some(Ok(record)) => {
                if record.timestamp().to_millis().is_none_or(|t| t >= ms) {
                    return Ok(record.offset());
                }
                next = record.offset() + 1;
            }
        }
    }
    Err(Error::Timeout(ADMIN_TIMEOUT))
}

/// Records of `topics` past the group's committed offsets (from the start where it committed
/// none): what the subscription has not settled yet, ready, in flight and delayed together.
fn unsettled(client: &ClientConfig, topics: &[String]) -> Result<u64> {
    let consumer: BaseConsumer = client
        .create()
        .map_err(|e| to_error(e, "creating a client"))?;
    let mut list = TopicPartitionList::new();
    let mut marks = HashMap::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
            .map_err(|e| to_error(e, &format!("reading the metadata of `{topic}`")))?;
        for t in metadata.topics() {
            for p in t.partitions() {
                list.add_partition(topic, p.id());
                let range = consumer
                    .fetch_watermarks(topic, p.id(), ADMIN_TIMEOUT)
                    .map_err(|e| to_error(e, &format!("reading the offsets of `{topic}`")))?;
                marks.insert((topic.clone(), p.id()), range);
            }
        }
    }
    let committed = consumer
        .committed_offsets(list, ADMIN_TIMEOUT)
        .map_err(|e| to_error(e, "reading the group's positions"))?;
    let mut total = 0u64;
    for element in committed.elements() {
        let Some((low, high)) = marks.get(&(element.topic().to_owned(), element.partition()))
        else {
            continue;
        };
        let start = match element.offset() {
            Offset::Offset(o) => o.max(*low),
            _ => *low,
        };
        total += u64::try_from(high - start).unwrap_or(0);
    }
    Ok(total)
}

/// What a DLQ holds past its read position.
#[derive(Debug, Default)]
struct DlqSnapshot {
    /// Where reading started.
    start: i64,
    /// The end when it was read.
    end: i64,
    /// The records read, as messages, with their raw record for re-appending.
    messages: Vec<wire::Outgoing>,
}

fn dlq_snapshot(client: ClientConfig, topic: String, limit: usize) -> Result<DlqSnapshot> {
    let consumer: BaseConsumer = client
        .create()
        .map_err(|e| to_error(e, "creating a client"))?;
    let (low, high) = settle(|| consumer.fetch_watermarks(&topic, 0, ADMIN_TIMEOUT))
        .map_err(|e| to_error(e, &format!("reading the offsets of `{topic}`")))?;
    let mut asked = TopicPartitionList::new();
    asked.add_partition(&topic, 0);
    let committed = consumer
        .committed_offsets(asked, ADMIN_TIMEOUT)
        .map_err(|e| to_error(e, "reading the DLQ's position"))?;
    let start = committed
        .elements()
        .first()
        .and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
        .unwrap_or(low)
        .max(low);
    let mut snapshot = DlqSnapshot {
        start,
        end: high,
        messages: Vec::new(),
    };
    if start >= high || limit == 0 {
        return Ok(snapshot);
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&topic, 0, Offset::Offset(start))
        .map_err(|e| to_error(e, "reading the DLQ"))?;
    consumer
        .assign(&list)
        .map_err(|e| to_error(e, "reading the DLQ"))?;
    let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
    let mut next = start;
    while next < high && snapshot.messages.len() < limit {
        if std::time::Instant::now() >= deadline {
            return Err(Error::Timeout(ADMIN_TIMEOUT));
        }
        let Some(record) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let record = record.map_err(|e| to_error(e, "reading the DLQ"))?;
        next = record.offset() + 1;
        snapshot.messages.push(wire::Outgoing::from_record(&record));
    }
    Ok(snapshot)
}

impl Backend for KafkaBackend {
    type Publisher = KafkaPublisher;
    type Subscriber = KafkaSubscriber;

    fn capabilities(&self) -> &Capabilities {
        &self.shared.caps
    }

    fn naming(&self) -> &Naming {
        self.shared.names.naming()
    }

    async fn publisher(&self) -> Result<KafkaPublisher> {
        Ok(KafkaPublisher::new(Arc::clone(&self.shared)))
    }

    async fn subscribe(&self, subscription: &SubscriptionName) -> Result<KafkaSubscriber> {
        let config = self.shared.subscription_config(subscription).await?;
        KafkaSubscriber::start(Arc::clone(&self.shared), subscription.clone(), config)
    }

    async fn ensure_topic(&self, topic: &TopicName, config: &TopicConfig) -> Result<()> {
        if config.backlog_bound.is_some() {
            return Err(Error::Unsupported(
                "backlog bounds: a Kafka topic is bounded by its retention, not by a count"
                    .to_owned(),
            ));
        }
        let shared = &self.shared;
        if let Some(tags) = shared.catalog.get(&topic_key(topic)).await? {
            let existing = tags::topic_config(&tags);
            return match existing.difference(config) {
                Some(difference) => Err(Error::Conflict {
                    kind: ObjectKind::Topic,
                    name: topic.to_string(),
                    difference,
                }),
                None => Ok(()),
            };
        }
        let partitions = shared.options.partitions;
        let mut topics = vec![(shared.names.topic(topic), partitions)];
        topics.extend(
            shared
                .names
                .delay_tiers(topic)
                .into_iter()
                .map(|t| (t, partitions)),
        );
        shared.create_topics(&topics, false).await?;
        let tags: Tags = tags::topic_tags(config).into_iter().collect();
        shared.catalog.put(&topic_key(topic), Some(&tags)).await
    }

    async fn ensure_subscription(
        &self,
        subscription: &SubscriptionName,
        config: &SubscriptionConfig,
    ) -> Result<()> {
        let shared = &self.shared;
        shared.topic_config(&config.topic).await?;
        let key = subscription_key(subscription);
        if let Some(tags) = shared.catalog.get(&key).await? {
            let existing = tags::subscription_config(&tags)?.ok_or_else(|| {
                Error::backend(
                    format!("the catalog entry of `{subscription}` has no topic"),
                    false,
                )
            })?;
            if let Some(difference) = existing.difference(config) {
                return Err(Error::Conflict {
                    kind: ObjectKind::Subscription,
                    name: subscription.to_string(),
                    difference,
                });
            }
            if existing.prefetch != config.prefetch {
                shared
                    .catalog
                    .put(&key, Some(&tags::subscription_tags(config)))
                    .await?;
            }
            return Ok(());
        }
        let partitions = shared.partitions(shared.names.topic(&config.topic)).await?;
        let topics: Vec<(String, i32)> = self
            .subscription_topics(subscription, config)
            .into_iter()
            .map(|t| {
                let dlq = t == shared.names.dlq(subscription);
                (t, if dlq { 1 } else { partitions.max(1) })
            })
            .collect();
        shared.create_topics(&topics, false).await?;
        self.pin_start(subscription, config).await?;
        shared
            .catalog
            .put(&key, Some(&tags::subscription_tags(config)))
            .await
    }

    async fn describe_topic(&self, topic: &TopicName) -> Result<TopicInfo> {
        let config = self.shared.topic_config(topic).await?;
        let subscriptions = self
            .shared
            .catalog
            .read("subscription/")
            .await?
            .into_iter()
            .filter_map(|(name, tags)| {
                let config = tags::subscription_config(&tags).ok()??;
                (config.topic == *topic).then(|| SubscriptionName::new(name).ok())?
            })
            .collect();
        Ok(TopicInfo::new(topic.clone(), config, subscriptions))
    }

    async fn describe_subscription(
        &self,
        subscription: &SubscriptionName,
    ) -> Result<SubscriptionInfo> {
        let config = self.shared.subscription_config(subscription).await?;
        Ok(SubscriptionInfo::new(subscription.clone(), config))
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let mut out = Vec::new();
        for (name, _) in self.shared.catalog.read("topic/").await? {
            let Ok(topic) = TopicName::new(name) else {
                continue;
            };
            match self.describe_topic(&topic).await {
                Ok(info) => out.push(info),
                Err(Error::NotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(out)
    }

    async fn delete_topic(&self, topic: &TopicName) -> Result<()> {
        let info = self.describe_topic(topic).await?;
        for subscription in &info.subscriptions {
            match self.delete_subscription(subscription).await {
                Ok(()) | Err(Error::NotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        let shared = &self.shared;
        shared.catalog.put(&topic_key(topic), None).await?;
        shared.forget_topic(topic);
        let mut topics = vec![shared.names.topic(topic)];
        topics.extend(shared.names.delay_tiers(topic));
        shared.delete_topics(&topics).await?;
        if info.config.dedup_window.is_some() {
            let store = &shared.options.dedup_store;
            if let Err(err) = store.forget_topic(&shared.dedup_topic(topic)).await {
                // The topic is gone; failing its deletion now would leave the mover's group.
                tracing::warn!(%topic, %err, "could not drop the dedup claims of the topic; they end with their window");
            }
        }
        // The delay mover's offsets go too, or a topic made again under the name would start
        // its delay tiers at the old positions.
        let group = shared.names.mover_group(topic);
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        if let Err(err) = shared
            .admin
            .delete_groups(&[group.as_str()], &options)
            .await
        {
            tracing::debug!(%topic, error = %err, "deleting the delay mover's group");
        }
        Ok(())
    }

    async fn delete_subscription(&self, subscription: &SubscriptionName) -> Result<()> {
        self.shared.subscription_config(subscription).await?;
        let shared = &self.shared;
        shared
            .catalog
            .put(&subscription_key(subscription), None)
            .await?;
        let mut topics = shared.names.retry_tiers(subscription);
        topics.push(shared.names.dlq(subscription));
        shared.delete_topics(&topics).await?;
        let groups = [
            shared.names.group(subscription),
            shared.names.dlq(subscription),
        ];
        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        // A group with members left (a subscriber still running) cannot be deleted; its
        // offsets go with the broker's offset retention.
        if let Err(err) = shared.admin.delete_groups(&groups, &options).await {
            tracing::debug!(%subscription, error = %err, "deleting consumer groups");
        }
        Ok(())
    }

    async fn stats(&self, subscription: &SubscriptionName) -> Result<SubscriptionStats> {
        let config = self.shared.subscription_config(subscription).await?;
        let names = &self.shared.names;
        let mut topics = vec![names.topic(&config.topic)];
        topics.extend(names.retry_tiers(subscription));
        let mut client = self.shared.client_config();
        client
            .set("group.id", names.group(subscription))
            .set("enable.auto.commit", "false");
        let pending = blocking(move || unsettled(&client, &topics)).await?;
        // Delayed publishes wait in the topic's delay tiers until its mover group moves them.
        let mut movers = self.shared.client_config();
        movers
            .set("group.id", names.mover_group(&config.topic))
            .set("enable.auto.commit", "false");
        let tiers = names.delay_tiers(&config.topic);
        let delayed = blocking(move || unsettled(&movers, &tiers)).await?;
        let snapshot = self.dlq_read(subscription, 0).await?;
        let mut stats = SubscriptionStats::default();
        stats.unsettled = Some(pending);
        stats.delayed = Some(delayed);
        stats.dead_lettered = Some(u64::try_from(snapshot.end - snapshot.start).unwrap_or(0));
        Ok(stats)
    }

    async fn dlq_list(
        &self,
        subscription: &SubscriptionName,
        limit: usize,
    ) -> Result<Vec<DeadLetteredMessage>> {
        let snapshot = self.dlq_read(subscription, limit).await?;
        snapshot
            .messages
            .into_iter()
            .map(|record| record.decode().map(|m| DeadLetteredMessage::new(m.message)))
            .collect::<std::result::Result<_, _>>()
            .map_err(|reason| Error::backend(format!("an undecodable DLQ record: {reason}"), false))
    }

    async fn dlq_redrive(
        &self,
        subscription: &SubscriptionName,
        options: &RedriveOptions,
    ) -> Result<RedriveReport> {
        let snapshot = self.dlq_read(subscription, usize::MAX).await?;
        let mut report = RedriveReport::default();
        report.dry_run = options.dry_run;
        let limit = options.limit.unwrap_or(usize::MAX);
        let mut chosen = Vec::new();
        let mut kept = Vec::new();
        for record in snapshot.messages {
            let Ok(incoming) = record.decode() else {
                kept.push(record);
                continue;
            };
            if chosen.len() < limit && options.selects(&incoming.message) {
                report.moved.push(incoming.message.id().to_string());
                chosen.push(incoming.message);
            } else {
                kept.push(record);
            }
        }
        if options.dry_run || chosen.is_empty() {
            return Ok(report);
        }
        let shared = &self.shared;
        let retry = shared.names.retry_tier(subscription, TIERS[0]);
        let dlq = shared.names.dlq(subscription);
        let pause = options
            .rate_per_second
            .map(|rate| Duration::from_secs(1) / rate.max(1));
        for mut message in chosen {
            Envelope::strip(&mut message);
            message.set_deliver_at(None);
            crate::publisher::produce(shared, &retry, wire::encode(&message, None)).await?;
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
        }
        // The records not moved are appended again, so the read position can pass them all.
        for record in kept {
            crate::publisher::produce(shared, &dlq, record).await?;
        }
        self.dlq_commit(subscription, snapshot.end).await?;
        Ok(report)
    }

    async fn dlq_purge(&self, subscription: &SubscriptionName) -> Result<u64> {
        let snapshot = self.dlq_read(subscription, 0).await?;
        if snapshot.end > snapshot.start {
            self.dlq_commit(subscription, snapshot.end).await?;
        }
        Ok(u64::try_from(snapshot.end - snapshot.start).unwrap_or(0))
    }
}
