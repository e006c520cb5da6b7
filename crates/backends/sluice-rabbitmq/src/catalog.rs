//! The topology catalog: the configuration of every topic and subscription of a namespace,
//! kept in RabbitMQ itself, because AMQP can declare objects but not read their arguments
//! back (that needs the management plugin, which Sluice does not require).
//!
//! The catalog is one JSON message in a durable classic queue (`<ns>.sluice.catalog`,
//! `x-max-length` 1). A [`Session`] reads it with `basic.get` (no auto-ack) while owning the
//! exclusive queue `<ns>.sluice.catalog-lock`: only one connection can own it at a time,
//! and the broker drops it when its owner's connection dies, so a crashed process never
//! leaves the catalog locked. Within one process a mutex serialises sessions.
//!
//! Invariants:
//! - The lock and the catalog record live on a channel of their own: a broker error on the
//!   session's work channel (a conflicting declaration) cannot strand the lock.
//! - A catalog that becomes empty is deleted with its queue, and a session that found none
//!   deletes the queue it declared to look, so a namespace whose topics were all deleted, or
//!   that was only looked at, leaves nothing behind.
//! - A change is published (confirmed) before the old record is acked: a crash in between
//!   leaves the old or the new record, never none.
//! - Physical objects are declared inside the session that records them, so two processes
//!   ensuring the same subscription agree on its configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicRejectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use sluice_core::{Error, Filter, SubscriptionConfig, TopicConfig, TopicName};
use tokio::sync::MutexGuard;
use tokio::time::Instant;

use crate::link::{reply_code, to_error, Link, RESOURCE_LOCKED};
use crate::names::Names;

/// How long a session waits for another process to release the catalog.
const LOCK_WAIT: Duration = Duration::from_secs(15);

/// A topic's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TopicRecord {
    /// Dedup window, in milliseconds.
    pub(crate) dedup_window_ms: Option<u64>,
    /// Per-key ordering asked for (recorded; RabbitMQ's ordering level is `none`).
    #[serde(default)]
    pub(crate) ordered: bool,
    /// Its subscriptions, in creation order.
    pub(crate) subscriptions: Vec<String>,
}

impl TopicRecord {
    pub(crate) fn new(config: &TopicConfig) -> Self {
        Self {
            dedup_window_ms: config.dedup_window.map(|w| w.as_millis() as u64),
            ordered: config.ordered,
            subscriptions: Vec::new(),
        }
    }

    pub(crate) fn config(&self) -> TopicConfig {
        let mut config = TopicConfig::default().ordered(self.ordered);
        if let Some(ms) = self.dedup_window_ms {
            config = config.dedup_window(Duration::from_millis(ms));
        }
        config
    }
}

/// A subscription's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SubscriptionRecord {
    pub(crate) topic: String,
    pub(crate) filter: Option<String>,
    pub(crate) lease_ms: u64,
    pub(crate) max_attempts: u32,
    pub(crate) dead_letter_queue: bool,
    pub(crate) prefetch: u32,
}

impl SubscriptionRecord {
    pub(crate) fn new(config: &SubscriptionConfig) -> Self {
        Self {
            topic: config.topic.as_str().to_owned(),
            filter: config.filter.as_ref().map(|f| f.as_str().to_owned()),
            lease_ms: config.lease.as_millis() as u64,
            max_attempts: config.max_attempts,
            dead_letter_queue: config.dead_letter_queue,
            prefetch: config.prefetch,
        }
    }

    pub(crate) fn config(&self) -> Result<SubscriptionConfig, Error> {
        let mut config = SubscriptionConfig::new(TopicName::new(self.topic.clone())?)
            .lease(Duration::from_millis(self.lease_ms))
            .max_attempts(self.max_attempts)
            .dead_letter_queue(self.dead_letter_queue)
            .prefetch(self.prefetch);
        if let Some(filter) = &self.filter {
            config = config.filter(Filter::new(filter.clone())?);
        }
        Ok(config)
    }
}

/// Every topic and subscription of a namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Catalog {
    pub(crate) topics: BTreeMap<String, TopicRecord>,
    pub(crate) subscriptions: BTreeMap<String, SubscriptionRecord>,
}

/// The catalog, read under the lock; [`commit`](Self::commit) or
/// [`release`](Self::release) ends it (dropping it releases the lock in the background).
pub(crate) struct Session<'a> {
    pub(crate) catalog: Catalog,
    /// The channel for the session's physical declarations and deletions: a broker error
    /// closes it, never the lock's channel.
    pub(crate) channel: Channel,
    /// The channel that owns the lock and holds the catalog record.
    lock: Channel,
    names: &'a Names,
    tag: Option<u64>,
    done: bool,
    _local: MutexGuard<'a, ()>,
}

fn catalog_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    arguments
}

impl<'a> Session<'a> {
    /// Takes the lock and reads the catalog.
    pub(crate) async fn open(
        link: &Link,
        names: &'a Names,
        local: &'a tokio::sync::Mutex<()>,
    ) -> Result<Session<'a>, Error> {
        let guard = local.lock().await;
        let give_up = Instant::now() + LOCK_WAIT;
        let lock = loop {
            let channel = link.channel().await?;
            let declared = channel
                .queue_declare(
                    &names.catalog_lock(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match declared {
                Ok(_) => break channel,
                Err(err) if reply_code(&err) == Some(RESOURCE_LOCKED) => {
                    if Instant::now() >= give_up {
                        return Err(Error::Timeout(LOCK_WAIT));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(err) => return Err(to_error(err, "locking the topology catalog")),
            }
        };
        let channel = link.channel().await?;
        let mut session = Session {
            catalog: Catalog::default(),
            channel,
            lock,
            names,
            tag: None,
            done: false,
            _local: guard,
        };
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        session
            .lock
            .queue_declare(&names.catalog(), durable, catalog_arguments())
            .await
            .map_err(|err| to_error(err, "declaring the topology catalog"))?;
        let record = session
            .lock
            .basic_get(&names.catalog(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|err| to_error(err, "reading the topology catalog"))?;
        if let Some(record) = record {
            session.tag = Some(record.delivery.delivery_tag);
            session.catalog = serde_json::from_slice(&record.delivery.data).map_err(|err| {
                Error::backend(format!("the topology catalog is unreadable: {err}"), false)
            })?;
        }
        Ok(session)
    }

    /// Writes the catalog (if `changed`) and releases the lock.
    pub(crate) async fn commit(mut self, changed: bool) -> Result<(), Error> {
        if changed && self.catalog == Catalog::default() {
            // Nothing left in the namespace: remove the catalog queue rather than keep an
            // empty record (the next session declares it again).
            self.lock
                .queue_delete(&self.names.catalog(), QueueDeleteOptions::default())
                .await
                .map_err(|err| to_error(err, "removing the empty topology catalog"))?;
            self.tag = None;
        } else if changed {
            use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
            self.lock
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|err| to_error(err, "writing the topology catalog"))?;
            let body = serde_json::to_vec(&self.catalog).expect("the catalog serialises");
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            let confirm = self
                .lock
                .basic_publish(
                    "",
                    &self.names.catalog(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .map_err(|err| to_error(err, "writing the topology catalog"))?;
            crate::link::confirmed(confirm, "", &self.names.catalog()).await?;
            if let Some(tag) = self.tag.take() {
                self.lock
                    .basic_ack(tag, BasicAckOptions::default())
                    .await
                    .map_err(|err| to_error(err, "writing the topology catalog"))?;
            }
        }
        self.release().await;
        Ok(())
    }

    /// Releases the lock without changing the catalog.
    pub(crate) async fn release(mut self) {
        if self.tag.is_none() && self.catalog == Catalog::default() {
            // A namespace with nothing in it: the catalog queue this session declared to
            // read it goes again, so a read-only command (`sluice topics`) leaves nothing
            // behind. Still under the lock, so no record can arrive in between; best effort
            // on the work channel, which nothing needs after this.
            let _ = self
                .channel
                .queue_delete(
                    &self.names.catalog(),
                    QueueDeleteOptions {
                        if_empty: true,
                        ..QueueDeleteOptions::default()
                    },
                )
                .await;
        }
        self.done = true;
        finish(
            self.channel.clone(),
            self.lock.clone(),
            self.tag.take(),
            self.names.catalog_lock(),
        )
        .await;
    }
}

async fn finish(work: Channel, lock: Channel, tag: Option<u64>, lock_queue: String) {
    // Best effort: the work channel may have been closed by a broker error already.
    let _ = work.close(200, "done").await;
    // A failure here means the lock's channel died with its connection, which releases
    // both the record and the lock anyway.
    if let Some(tag) = tag {
        let requeue = BasicRejectOptions { requeue: true };
        let _ = lock.basic_reject(tag, requeue).await;
    }
    let _ = lock
        .queue_delete(&lock_queue, QueueDeleteOptions::default())
        .await;
    let _ = lock.close(200, "done").await;
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if !self.done {
            let (work, lock, tag, lock_queue) = (
                self.channel.clone(),
                self.lock.clone(),
                self.tag.take(),
                self.names.catalog_lock(),
            );
            tokio::spawn(finish(work, lock, tag, lock_queue));
        }
    }
}
