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
//! - A catalog that becomes empty is deleted with its queue, so a namespace whose topics
//!   were all deleted leaves nothing behind.
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
    /// Its subscriptions, in creation order.
    pub(crate) subscriptions: Vec<String>,
}

impl TopicRecord {
    pub(crate) fn new(config: &TopicConfig) -> Self {
        Self {
            dedup_window_ms: config.dedup_window.map(|w| w.as_millis() as u64),
            subscriptions: Vec::new(),
        }
    }

    pub(crate) fn config(&self) -> TopicConfig {
        let mut config = TopicConfig::default();
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
    pub(crate) channel: Channel,
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
        let channel = loop {
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
        let mut session = Session {
            catalog: Catalog::default(),
            channel,
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
            .channel
            .queue_declare(&names.catalog(), durable, catalog_arguments())
            .await
            .map_err(|err| to_error(err, "declaring the topology catalog"))?;
        let record = session
            .channel
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
            self.channel
                .queue_delete(&self.names.catalog(), QueueDeleteOptions::default())
                .await
                .map_err(|err| to_error(err, "removing the empty topology catalog"))?;
            self.tag = None;
        } else if changed {
            use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
            self.channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|err| to_error(err, "writing the topology catalog"))?;
            let body = serde_json::to_vec(&self.catalog).expect("the catalog serialises");
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            let confirm = self
                .channel
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
                self.channel
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
        self.done = true;
        finish(
            self.channel.clone(),
            self.tag.take(),
            self.names.catalog_lock(),
        )
        .await;
    }
}

async fn finish(channel: Channel, tag: Option<u64>, lock: String) {
    // Best effort: a failure here means the channel died, which releases both anyway.
    if let Some(tag) = tag {
        let requeue = BasicRejectOptions { requeue: true };
        let _ = channel.basic_reject(tag, requeue).await;
    }
    let _ = channel
        .queue_delete(&lock, QueueDeleteOptions::default())
        .await;
    let _ = channel.close(200, "done").await;
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if !self.done {
            let (channel, tag, lock) = (
                self.channel.clone(),
                self.tag.take(),
                self.names.catalog_lock(),
            );
            tokio::spawn(finish(channel, tag, lock));
        }
    }
}
