//! [`EmbeddedBackend`]: opens the engine on a data directory and maps topology, stats and
//! the DLQ tools onto it. Topology checks use the contract's own `difference`, so conflicts
//! name fields exactly as on every other backend.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{
    Backend, Capabilities, DeadLetteredMessage, Error, Naming, ObjectKind, RedriveOptions,
    RedriveReport, SubscriptionConfig, SubscriptionInfo, SubscriptionName, SubscriptionStats,
    TopicConfig, TopicInfo, TopicName,
};
use sluice_engine::commit::SyncMode;
use sluice_engine::engine::{Engine, EngineOptions};
use tokio::sync::Notify;

use crate::bridge::completion;
use crate::convert::{self, error};
use crate::publisher::EmbeddedPublisher;
use crate::subscriber::EmbeddedSubscriber;

/// Largest message accepted (payload plus headers and keys).
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// What the embedded backend can do: everything, natively and durably, in this process.
pub fn capabilities() -> Capabilities {
    let mut caps = Capabilities::full("embedded");
    caps.survives_restart = true;
    // In-process: there is no connection to lose (`sluice serve` + `sluice://` has one).
    caps.reconnects = false;
    caps.max_message_size = MAX_MESSAGE_SIZE;
    caps.max_batch = 1000;
    caps
}

/// Options of an embedded backend.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EmbeddedOptions {
    /// Durability: `Always` (fsync before confirming; the default), `Interval`, `Never`.
    pub sync: SyncMode,
    /// Prefix of every physical name.
    pub naming: Naming,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            sync: SyncMode::Always,
            naming: Naming::default(),
        }
    }
}

impl EmbeddedOptions {
    /// Sets the sync mode.
    #[must_use]
    pub fn sync(mut self, sync: SyncMode) -> Self {
        self.sync = sync;
        self
    }
    /// Sets the naming (namespace).
    #[must_use]
    pub fn naming(mut self, naming: Naming) -> Self {
        self.naming = naming;
        self
    }
}

pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) capabilities: Capabilities,
    pub(crate) naming: Naming,
    /// Woken by the engine after every durable change: receivers re-check.
    pub(crate) notify: Arc<Notify>,
    /// Shared by every view of one engine: holder ids are unique per engine.
    next_holder: Arc<AtomicU64>,
    /// Global rate limits' buckets, shared by every view of one engine.
    limits: Arc<sluice_core::MemoryLimiter>,
    path: PathBuf,
    /// Acks, retries and releases issued about now, settled together (shared by every
    /// view of one engine, so the verbs of all of `sluice serve`'s connections join).
    pub(crate) settler: Arc<crate::settle::Settler>,
    /// Deliveries read ahead and not handed out, per subscription (shared by every view).
    pub(crate) buffered: Arc<crate::ahead::Buffered>,
}

impl Shared {
    /// The prefix of this view's keys and limits in the engine: `<namespace>:`, or `:`, so
    /// no namespace reaches another's, the default one included.
    pub(crate) fn key_prefix(&self) -> Arc<str> {
        let namespace = self.naming.namespace().map(|ns| ns.as_str());
        format!("{}:", namespace.unwrap_or_default()).into()
    }

    /// The engine's limiter under this view's namespace.
    pub(crate) fn limiter(&self) -> crate::limits::EngineLimiter {
        crate::limits::EngineLimiter::new(self.limits.clone(), self.key_prefix())
    }

    pub(crate) fn holder(&self) -> u64 {
        self.next_holder.fetch_add(1, Ordering::Relaxed)
    }
    pub(crate) fn topic(&self, topic: &TopicName) -> String {
        self.naming.topic(topic)
    }
    pub(crate) fn subscription(&self, subscription: &SubscriptionName) -> String {
        self.naming.subscription(subscription)
    }
    /// The name a physical name had before the namespace was prefixed (the physical name
    /// itself if it has no such prefix).
    pub(crate) fn logical<'a>(&self, physical: &'a str) -> &'a str {
        self.naming.strip_namespace(physical).unwrap_or(physical)
    }
}

/// The embedded backend: a cheap-to-clone handle on an open engine.
#[derive(Clone)]
pub struct EmbeddedBackend {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for EmbeddedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBackend")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedBackend {
    /// Opens (creating if needed) the data directory at `path` with the default options.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with(path, EmbeddedOptions::default()).await
    }

    /// Opens the data directory at `path`.
    pub async fn open_with(
        path: impl AsRef<Path>,
        options: EmbeddedOptions,
    ) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let engine_options = EngineOptions::default().sync(options.sync);
        let open_path = path.clone();
        let engine = tokio::task::spawn_blocking(move || Engine::open(&open_path, engine_options))
            .await
            .map_err(|e| Error::backend(format!("opening the engine panicked: {e}"), false))?
            .map_err(error)?;
        let notify = Arc::new(Notify::new());
        let wake = notify.clone();
        engine.set_listener(Arc::new(move || wake.notify_waiters()));
        Ok(Self {
            shared: Arc::new(Shared {
                engine,
                capabilities: capabilities(),
                // The engine's names are path components (`[a-z0-9_-]`): no dots.
                naming: options.naming.with_separator('-'),
                notify,
                next_holder: Arc::new(AtomicU64::new(1)),
                limits: Arc::default(),
                path,
                settler: Default::default(),
                buffered: Default::default(),
            }),
        })
    }

    /// Flushes, checkpoints and closes the engine, releasing the directory's lock. Handles
    /// still held fail with `Closed` afterwards.
    pub async fn close(&self) -> Result<(), Error> {
        let engine = self.shared.engine.clone();
        tokio::task::spawn_blocking(move || engine.close())
            .await
            .map_err(|e| Error::backend(format!("closing the engine panicked: {e}"), false))?
            .map_err(error)
    }

    /// Another view of the same open engine under another naming (namespace): what
    /// `sluice serve` gives each connection. Clones share the directory, its lock and its
    /// wake-ups; closing any view closes the engine.
    pub fn with_naming(&self, naming: Naming) -> Self {
        let shared = &self.shared;
        Self {
            shared: Arc::new(Shared {
                engine: shared.engine.clone(),
                capabilities: shared.capabilities.clone(),
                naming: naming.with_separator('-'),
                notify: shared.notify.clone(),
                next_holder: shared.next_holder.clone(),
                limits: shared.limits.clone(),
                path: shared.path.clone(),
                settler: shared.settler.clone(),
                buffered: shared.buffered.clone(),
            }),
        }
    }

    /// The engine's limiter under this view's namespace: where global rate limits of workers
    /// on this engine keep their buckets (what `sluice serve` hands out tokens from).
    pub fn limiter(&self) -> Arc<dyn sluice_core::LimiterStore> {
        Arc::new(self.shared.limiter())
    }

    /// The engine's job store under this view's namespace ([`Backend::job_store`], typed).
    pub fn engine_job_store(&self) -> crate::jobs::EngineJobStore {
        crate::jobs::EngineJobStore::new(self.shared.engine.clone(), self.shared.key_prefix())
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The topic a physical name stands for, if it is in this backend's namespace.
    fn logical_topic(&self, physical: &str) -> Option<TopicName> {
        TopicName::new(self.shared.naming.strip_namespace(physical)?).ok()
    }

    /// The subscription a physical name stands for, if it is in this backend's namespace.
    fn logical_subscription(&self, physical: &str) -> Option<SubscriptionName> {
        SubscriptionName::new(self.shared.naming.strip_namespace(physical)?).ok()
    }

    fn topic_info(
        &self,
        name: TopicName,
        options: &sluice_engine::catalog::TopicOptions,
        subs: &[String],
    ) -> TopicInfo {
        TopicInfo::new(
            name,
            convert::topic_config(options),
            subs.iter()
                .filter_map(|s| self.logical_subscription(s))
                .collect(),
        )
    }
}

impl Backend for EmbeddedBackend {
    type Publisher = EmbeddedPublisher;
    type Subscriber = EmbeddedSubscriber;

    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    fn naming(&self) -> &Naming {
        &self.shared.naming
    }

    async fn publisher(&self) -> Result<EmbeddedPublisher, Error> {
        Ok(EmbeddedPublisher::new(self.shared.clone()))
    }

    async fn subscribe(
        &self,
        subscription: &SubscriptionName,
    ) -> Result<EmbeddedSubscriber, Error> {
        let entry = self
            .shared
            .engine
            .subscription(&self.shared.subscription(subscription))
            .map_err(error)?;
        let mut config = convert::subscription_config(&entry)?;
        if let Some(topic) = self.logical_topic(&entry.topic) {
            config.topic = topic;
        }
        Ok(EmbeddedSubscriber::new(
            self.shared.clone(),
            subscription.clone(),
            config,
        ))
    }

    async fn ensure_topic(&self, topic: &TopicName, config: &TopicConfig) -> Result<(), Error> {
        let physical = self.shared.topic(topic);
        match self
            .shared
            .engine
            .create_topic(&physical, convert::topic_options(config)?)
            .map_err(error)?
        {
            None => Ok(()),
            Some(existing) => match convert::topic_config(&existing).difference(config) {
                None => Ok(()),
                Some(difference) => Err(Error::Conflict {
                    kind: ObjectKind::Topic,
                    name: topic.to_string(),
                    difference,
                }),
            },
        }
    }

    async fn ensure_subscription(
        &self,
        subscription: &SubscriptionName,
        config: &SubscriptionConfig,
    ) -> Result<(), Error> {
        let physical = self.shared.subscription(subscription);
        let mut options = convert::subscription_options(config);
        options.topic = self.shared.topic(&config.topic);
        let Some(existing) = self
            .shared
            .engine
            .create_subscription(&physical, options)
            .map_err(error)?
        else {
            return Ok(());
        };
        let mut existing_config = convert::subscription_config(&existing)?;
        existing_config.topic = self
            .logical_topic(&existing.topic)
            .unwrap_or_else(|| existing_config.topic.clone());
        if let Some(difference) = existing_config.difference(config) {
            return Err(Error::Conflict {
                kind: ObjectKind::Subscription,
                name: subscription.to_string(),
                difference,
            });
        }
        if existing.prefetch != config.prefetch {
            self.shared
                .engine
                .set_prefetch(&physical, config.prefetch)
                .map_err(error)?;
        }
        Ok(())
    }

    async fn describe_topic(&self, topic: &TopicName) -> Result<TopicInfo, Error> {
        let (options, subs) = self
            .shared
            .engine
            .topic(&self.shared.topic(topic))
            .map_err(error)?;
        Ok(self.topic_info(topic.clone(), &options, &subs))
    }

    async fn describe_subscription(
        &self,
        subscription: &SubscriptionName,
    ) -> Result<SubscriptionInfo, Error> {
        let options = self
            .shared
            .engine
            .subscription(&self.shared.subscription(subscription))
            .map_err(error)?;
        let mut config = convert::subscription_config(&options)?;
        if let Some(topic) = self.logical_topic(&options.topic) {
            config.topic = topic;
        }
        Ok(SubscriptionInfo::new(subscription.clone(), config))
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>, Error> {
        Ok(self
            .shared
            .engine
            .topics()
            .into_iter()
            .filter_map(|(name, options, subs)| {
                Some(self.topic_info(self.logical_topic(&name)?, &options, &subs))
            })
            .collect())
    }

    async fn delete_topic(&self, topic: &TopicName) -> Result<(), Error> {
        let engine = self.shared.engine.clone();
        let name = self.shared.topic(topic);
        tokio::task::spawn_blocking(move || engine.delete_topic(&name))
            .await
            .map_err(|e| Error::backend(e.to_string(), false))?
            .map_err(error)
    }

    async fn delete_subscription(&self, subscription: &SubscriptionName) -> Result<(), Error> {
        let engine = self.shared.engine.clone();
        let name = self.shared.subscription(subscription);
        tokio::task::spawn_blocking(move || engine.delete_subscription(&name))
            .await
            .map_err(|e| Error::backend(e.to_string(), false))?
            .map_err(error)
    }

    async fn stats(&self, subscription: &SubscriptionName) -> Result<SubscriptionStats, Error> {
        let physical = self.shared.subscription(subscription);
        let s = self.shared.engine.stats(&physical).map_err(error)?;
        // Read ahead and not handed out: leased, but no handler holds them yet.
        let buffered = self.shared.buffered.of(&physical).min(s.in_flight);
        let mut stats = SubscriptionStats::default();
        stats.ready = Some(s.ready + buffered);
        stats.in_flight = Some(s.in_flight - buffered);
        stats.delayed = Some(s.delayed);
        stats.dead_lettered = Some(s.dead_lettered);
        stats.oldest_age = s.oldest_published_ms.map(|at| {
            let now = convert::to_ms(Some(std::time::SystemTime::now()));
            Duration::from_millis(now.saturating_sub(at))
        });
        Ok(stats)
    }

    async fn dlq_list(
        &self,
        subscription: &SubscriptionName,
        limit: usize,
    ) -> Result<Vec<DeadLetteredMessage>, Error> {
        let records = self
            .shared
            .engine
            .dlq_list(&self.shared.subscription(subscription), limit)
            .map_err(error)?;
        Ok(records
            .into_iter()
            .map(|r| DeadLetteredMessage::new(convert::from_record(r)))
            .collect())
    }

    async fn dlq_redrive(
        &self,
        subscription: &SubscriptionName,
        options: &RedriveOptions,
    ) -> Result<RedriveReport, Error> {
        let name = self.shared.subscription(subscription);
        let candidates: Vec<String> = self
            .shared
            .engine
            .dlq_list(&name, usize::MAX)
            .map_err(error)?
            .into_iter()
            .map(|r| r.id)
            .filter(|id| options.ids.is_empty() || options.ids.contains(id))
            .take(options.limit.unwrap_or(usize::MAX))
            .collect();
        let mut report = RedriveReport::default();
        report.dry_run = options.dry_run;
        if options.dry_run {
            report.moved = candidates;
            return Ok(report);
        }
        let pause = options
            .rate_per_second
            .map(|rate| Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
        for id in candidates {
            let (done, moved) = completion();
            self.shared.engine.dlq_redrive(&name, &id, done);
            if moved.await? {
                report.moved.push(id);
            }
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
        }
        Ok(report)
    }

    async fn dlq_purge(&self, subscription: &SubscriptionName) -> Result<u64, Error> {
        let (done, purged) = completion();
        self.shared
            .engine
            .dlq_purge(&self.shared.subscription(subscription), done);
        purged.await
    }

    /// The engine's keyed store, under this view's namespace: job status, cancellations
    /// and schedules are durable in the data directory.
    fn job_store(&self) -> Option<Arc<dyn sluice_core::JobStore>> {
        Some(Arc::new(self.engine_job_store()))
    }
}
