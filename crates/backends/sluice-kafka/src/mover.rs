//! The delay mover of a topic: moves delayed publishes from the topic's delay tiers to the
//! topic when they are due.
//!
//! It runs in every process with a subscriber of the topic, or a publisher that sent a delayed
//! message to it, or [`KafkaBackend::move_delays`](crate::KafkaBackend::move_delays) (`sluice
//! delays`), as a member of the consumer group
//! `<topic>.delay`: Kafka gives each tier partition to one member, so each record is moved by
//! one mover however many subscriptions and processes there are (one per topic, not per
//! subscription, or each subscription would get copies). A record is completed only after the
//! topic confirmed its copy: a mover that crashes in between moves it again (at least once;
//! the subscriber's idempotency absorbs it).

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{Result, TopicName};

use crate::backend::Shared;
use crate::consumer::{Core, Entry, Sink, Spec};
use crate::publisher::produce;
use crate::wire;

/// A topic's delay mover; stops when dropped.
pub(crate) struct Mover {
    core: Arc<Core>,
    task: tokio::task::JoinHandle<()>,
}

impl Mover {
    pub(crate) fn start(shared: Arc<Shared>, topic: &TopicName) -> Result<Self> {
        let tiers = shared.names.delay_tiers(topic);
        let spec = Spec {
            brokers: shared.options.brokers.clone(),
            group: shared.names.mover_group(topic),
            topics: tiers.clone(),
            tiers: tiers.into_iter().collect(),
            filter: None,
            lease: Duration::from_secs(60),
            prefetch: 256,
            buffer: 1000,
            leave_after: shared.leave_after(),
        };
        let target = shared.names.topic(topic);
        let sink = Arc::new(ToTopic {
            shared: Arc::clone(&shared),
            target: target.clone(),
        });
        let core = Core::start(spec, shared.member_config(), Some(sink))?;
        let task = tokio::spawn(run(shared, Arc::clone(&core), target));
        Ok(Self { core, task })
    }
}

impl Mover {
    /// Stops it and waits until its group member has committed and left.
    pub(crate) async fn close(&self) {
        self.core.close_and_wait().await;
    }

    /// Whether it was stopped (a deletion of its topic): then a new one is needed.
    pub(crate) fn is_stopped(&self) -> bool {
        self.core.is_closed() || self.task.is_finished()
    }
}

impl Drop for Mover {
    fn drop(&mut self) {
        // The task ends by itself once the engine is closed (its receive fails), after
        // finishing the copies under way.
        self.core.close();
    }
}

/// What the mover does with records it cannot hand out.
struct ToTopic {
    shared: Arc<Shared>,
    target: String,
}

impl Sink for ToTopic {
    fn move_expired(&self, _entry: Entry) -> futures::future::BoxFuture<'static, bool> {
        // Stays pending: the next mover copies it.
        Box::pin(async { false })
    }

    fn dead_letter_poison(
        &self,
        _entry: Entry,
        raw: wire::Outgoing,
        reason: String,
    ) -> futures::future::BoxFuture<'static, bool> {
        // Not Sluice's record: passed on to the topic unchanged, where each subscription
        // dead-letters it with the reason.
        let (shared, target) = (Arc::clone(&self.shared), self.target.clone());
        Box::pin(async move {
            tracing::warn!(topic = %target, %reason, "an undecodable record in a delay tier goes to the topic as it is");
            produce(&shared, &target, raw).await.is_ok()
        })
    }
}

async fn run(shared: Arc<Shared>, core: Arc<Core>, target: String) {
    loop {
        let leases = match core.take(256, Duration::from_secs(1)).await {
            Ok(leases) => leases,
            Err(_) => return,
        };
        let moves = leases.into_iter().map(|lease| {
            let (shared, core, target) = (&shared, &core, &target);
            async move {
                let id = lease.entry.message.id().to_string();
                let record = wire::encode(&lease.entry.message, None);
                match produce(shared, target, record).await {
                    Ok(()) => {
                        let _ = core.ack(lease.token, &id);
                    }
                    Err(err) => {
                        tracing::warn!(topic = %target, error = %err, "moving a delayed message failed; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let _ = core.release(lease.token, &id);
                    }
                }
            }
        });
        futures::future::join_all(moves).await;
    }
}

/// Stops `movers` at once, waiting for those this was the last user of to leave their groups.
pub(crate) async fn close_all(movers: Vec<Arc<Mover>>) {
    let last: Vec<Mover> = movers.into_iter().filter_map(Arc::into_inner).collect();
    futures::future::join_all(last.iter().map(Mover::close)).await;
}

/// The delay movers of some topics, running in this process until closed or dropped (see
/// [`KafkaBackend::move_delays`](crate::KafkaBackend::move_delays)).
#[derive(Default)]
pub struct DelayMovers {
    movers: Vec<(TopicName, Arc<Mover>)>,
}

impl std::fmt::Debug for DelayMovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.movers.iter().map(|(topic, _)| topic))
            .finish()
    }
}

impl DelayMovers {
    pub(crate) fn new(movers: Vec<(TopicName, Arc<Mover>)>) -> Self {
        Self { movers }
    }

    /// The topics whose delayed messages are moved.
    pub fn topics(&self) -> impl Iterator<Item = &TopicName> {
        self.movers.iter().map(|(topic, _)| topic)
    }

    /// Stops every mover; returns once each has committed what it moved and left its group.
    pub async fn close(self) {
        close_all(self.movers.into_iter().map(|(_, mover)| mover).collect()).await;
    }
}
