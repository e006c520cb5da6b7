//! [`MemoryBackend`]: the handle, its capabilities and the [`Backend`] operations.
//!
//! Invariants:
//! - All state sits behind one `std::sync::Mutex`. It is a std mutex, not tokio's, because
//!   no `.await` is ever held across it: every operation locks, changes the state
//!   synchronously and unlocks (see [`MemoryBackend::with_state`]). Waiting (receive, the
//!   redrive rate limit) happens outside the lock.
//! - Time is read *after* taking the lock, so operations see time in lock order and the
//!   topic logs stay sorted by publish time.

use std::sync::{Arc, Mutex};

use sluice_core::{
    Backend, Capabilities, DeadLetteredMessage, Naming, RedriveOptions, RedriveReport, Result,
    SubscriptionConfig, SubscriptionInfo, SubscriptionName, SubscriptionStats, TopicConfig,
    TopicInfo, TopicName,
};
use tokio::time::Instant;

use crate::clock::Clock;
use crate::publisher::MemoryPublisher;
use crate::state::State;
use crate::subscriber::MemorySubscriber;

/// Largest message the memory backend accepts (payload plus headers and keys): 1 MiB.
pub const MAX_MESSAGE_SIZE: usize = 1024 * 1024;
/// Largest batch for publish and receive.
pub const MAX_BATCH: usize = 1000;

/// Sluice's in-process reference backend (URL `memory:`).
///
/// A cheap, cloneable handle: clones share the same topics and subscriptions. Nothing
/// survives the process; everything else in the model is implemented exactly (see the
/// crate docs).
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    capabilities: Capabilities,
    naming: Naming,
    clock: Clock,
    // std Mutex: no .await is held across it (see the module docs).
    state: Mutex<State>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty backend without namespace. Its clock starts now, on tokio's clock (create it
    /// inside the runtime when tests pause time).
    pub fn new() -> Self {
        Self::with_naming(Naming::default())
    }

    /// An empty backend with this naming (namespace). The memory backend keeps no physical
    /// objects, so the naming is only reported, for tools that print physical names.
    pub fn with_naming(naming: Naming) -> Self {
        Self {
            shared: Arc::new(Shared {
                capabilities: capabilities(),
                naming,
                clock: Clock::new(),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Runs `f` on the state under the lock, with the current time read after locking.
    /// `f` is synchronous, so no `.await` can be held across the lock.
    pub(crate) fn with_state<T>(&self, f: impl FnOnce(&mut State, Instant, &Clock) -> T) -> T {
        let mut state = self
            .shared
            .state
            .lock()
            .expect("memory backend state poisoned by an earlier panic");
        let clock = &self.shared.clock;
        f(&mut state, clock.now(), clock)
    }
}

/// The memory backend's capabilities: everything native and exact, nothing durable.
pub fn capabilities() -> Capabilities {
    let mut capabilities = Capabilities::full("memory");
    capabilities.survives_restart = false;
    capabilities.reconnects = false;
    // Global rate limits: workers are given a limiter (a `MemoryLimiter` in one process).
    capabilities.global_rate_limits = sluice_core::Support::Emulated;
    capabilities.max_message_size = MAX_MESSAGE_SIZE;
    capabilities.max_batch = MAX_BATCH;
    capabilities
}

impl Backend for MemoryBackend {
    type Publisher = MemoryPublisher;
    type Subscriber = MemorySubscriber;

    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    fn naming(&self) -> &Naming {
        &self.shared.naming
    }

    async fn publisher(&self) -> Result<MemoryPublisher> {
        Ok(MemoryPublisher::new(self.clone()))
    }

    async fn subscribe(&self, subscription: &SubscriptionName) -> Result<MemorySubscriber> {
        MemorySubscriber::new(self.clone(), subscription)
    }

    async fn ensure_topic(&self, topic: &TopicName, config: &TopicConfig) -> Result<()> {
        self.with_state(|state, _, _| state.ensure_topic(topic, config))
    }

    async fn ensure_subscription(
        &self,
        subscription: &SubscriptionName,
        config: &SubscriptionConfig,
    ) -> Result<()> {
        self.with_state(|state, now, _| state.ensure_subscription(subscription, config, now))
    }

    async fn describe_topic(&self, topic: &TopicName) -> Result<TopicInfo> {
        self.with_state(|state, _, _| state.describe_topic(topic))
    }

    async fn describe_subscription(
        &self,
        subscription: &SubscriptionName,
    ) -> Result<SubscriptionInfo> {
        self.with_state(|state, _, _| {
            let found = state.subscription(subscription)?;
            Ok(SubscriptionInfo::new(
                subscription.clone(),
                found.config.clone(),
            ))
        })
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        Ok(self.with_state(|state, _, _| state.list_topics()))
    }

    async fn delete_topic(&self, topic: &TopicName) -> Result<()> {
        self.with_state(|state, _, _| state.delete_topic(topic))
    }

    async fn delete_subscription(&self, subscription: &SubscriptionName) -> Result<()> {
        self.with_state(|state, _, _| state.delete_subscription(subscription))
    }

    async fn stats(&self, subscription: &SubscriptionName) -> Result<SubscriptionStats> {
        self.with_state(|state, now, clock| Ok(state.subscription(subscription)?.stats(now, clock)))
    }

    async fn dlq_list(
        &self,
        subscription: &SubscriptionName,
        limit: usize,
    ) -> Result<Vec<DeadLetteredMessage>> {
        self.with_state(|state, _, _| Ok(state.subscription(subscription)?.dlq_list(limit)))
    }

    async fn dlq_redrive(
        &self,
        subscription: &SubscriptionName,
        options: &RedriveOptions,
    ) -> Result<RedriveReport> {
        let (incarnation, selected) = self.with_state(|state, _, _| {
            let found = state.subscription(subscription)?;
            Ok::<_, sluice_core::Error>((found.id, found.dlq_select(options)))
        })?;
        let mut report = RedriveReport::default();
        report.dry_run = options.dry_run;
        if options.dry_run {
            report.moved = selected.into_iter().map(|(_, id)| id).collect();
            return Ok(report);
        }
        // The rate limit waits between moves, outside the lock.
        let mut pace = options.rate_per_second.map(|rate| {
            let mut interval =
                tokio::time::interval(std::time::Duration::from_secs(1) / rate.max(1));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        for (position, id) in selected {
            if let Some(interval) = pace.as_mut() {
                interval.tick().await;
            }
            let moved = self.with_state(|state, now, _| {
                let found = state.incarnation(subscription, incarnation)?;
                Ok::<_, sluice_core::Error>(found.redrive(position, now))
            })?;
            if moved {
                report.moved.push(id);
            }
        }
        Ok(report)
    }

    async fn dlq_purge(&self, subscription: &SubscriptionName) -> Result<u64> {
        self.with_state(|state, _, _| Ok(state.subscription(subscription)?.dlq_purge()))
    }
}
