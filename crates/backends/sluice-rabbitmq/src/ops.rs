//! Operations on a subscription's queues: its counts (`stats`) and the DLQ tools (list,
//! redrive, purge).
//!
//! Invariants:
//! - Listing and redriving read the DLQ with `basic_get` and never ack what they leave: a
//!   channel closed (or a `nack` with requeue) puts every message back in its place.
//! - A redrive publishes the copy, confirmed and mandatory, before it acks the original: a
//!   crash in between duplicates a dead letter, never loses one.
//! - Counts include the retry tiers and the topic's delay tiers (`delayed`): a message
//!   waiting there is not settled.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use sluice_core::envelope::Envelope;
use sluice_core::{
    DeadLetteredMessage, Error, RedriveOptions, RedriveReport, SubscriptionName, SubscriptionStats,
};

use crate::backend::{passive, RabbitBackend};
use crate::link::{reply_code, to_error, NOT_FOUND};
use crate::names::TIERS;
use crate::wire;

impl RabbitBackend {
    /// The subscription's counts (`Backend::stats`).
    pub(crate) async fn count_stats(
        &self,
        subscription: &SubscriptionName,
    ) -> Result<SubscriptionStats, Error> {
        let config = self.existing_subscription(subscription).await?;
        let names = &self.shared.names;
        let mut queues = vec![names.queue(subscription)];
        if config.dead_letter_queue {
            queues.push(names.dead_letter(subscription));
        }
        let tiers = queues.len();
        queues.extend(TIERS.iter().map(|t| names.retry_queue(subscription, *t)));
        queues.extend(TIERS.iter().map(|t| names.delay_queue(&config.topic, *t)));
        let counts = self.count_queues(&queues).await?;
        let ready = counts[0].ok_or_else(|| Error::subscription_not_found(&queues[0]))?;
        let buffered = self
            .shared
            .buffered(subscription)
            .load(Ordering::SeqCst)
            .max(0);
        let mut stats = SubscriptionStats::default();
        stats.ready = Some(ready + buffered as u64);
        stats.dead_lettered = config.dead_letter_queue.then(|| counts[1].unwrap_or(0));
        stats.delayed = Some(counts[tiers..].iter().flatten().sum());
        Ok(stats)
    }

    /// The message count of each queue, `None` for a queue that does not exist (tier
    /// queues are declared on first use, by any process). One channel per queue, all at
    /// once: a passive declare of a missing queue closes its channel.
    async fn count_queues(&self, queues: &[String]) -> Result<Vec<Option<u64>>, Error> {
        future::try_join_all(queues.iter().map(|queue| async move {
            let channel = self.channel().await?;
            let count = match channel
                .queue_declare(queue, passive(), FieldTable::default())
                .await
            {
                Ok(q) => Some(u64::from(q.message_count())),
                Err(err) if reply_code(&err) == Some(NOT_FOUND) => None,
                Err(err) => return Err(to_error(err, &format!("counting `{queue}`"))),
            };
            if count.is_some() {
                let _ = channel.close(200, "counted").await;
            }
            Ok(count)
        }))
        .await
    }

    /// The first `limit` dead letters, left in place (`Backend::dlq_list`).
    pub(crate) async fn list_dead_letters(
        &self,
        subscription: &SubscriptionName,
        limit: usize,
    ) -> Result<Vec<DeadLetteredMessage>, Error> {
        let config = self.existing_subscription(subscription).await?;
        if !config.dead_letter_queue {
            return Ok(Vec::new());
        }
        let queue = self.shared.names.dead_letter(subscription);
        let channel = self.channel().await?;
        let mut listed = Vec::new();
        let result = async {
            while listed.len() < limit {
                let got = channel
                    .basic_get(&queue, BasicGetOptions { no_ack: false })
                    .await
                    .map_err(|err| to_error(err, &format!("reading `{queue}`")))?;
                let Some(got) = got else { break };
                let d = got.delivery;
                let decoded = wire::decode(
                    wire::Route::new(&d.exchange, &d.routing_key),
                    &d.properties,
                    d.data.into(),
                );
                listed.push(DeadLetteredMessage::new(decoded.message));
            }
            Ok::<_, Error>(())
        }
        .await;
        // Closing the channel puts every listed message back, in its place.
        let _ = channel.close(200, "listed").await;
        result.map(|()| listed)
    }

    /// Moves dead letters back to the subscription's queue (`Backend::dlq_redrive`).
    pub(crate) async fn redrive_dead_letters(
        &self,
        subscription: &SubscriptionName,
        options: &RedriveOptions,
    ) -> Result<RedriveReport, Error> {
        let config = self.existing_subscription(subscription).await?;
        let mut report = RedriveReport::default();
        report.dry_run = options.dry_run;
        if !config.dead_letter_queue {
            return Ok(report);
        }
        let names = &self.shared.names;
        let (dlq, target) = (names.dead_letter(subscription), names.queue(subscription));
        let channel = self.channel().await?;
        let pause = options
            .rate_per_second
            .map(|rate| Duration::from_secs(1) / rate.max(1));
        let result = async {
            while options.limit.is_none_or(|limit| report.moved.len() < limit) {
                let got = channel
                    .basic_get(&dlq, BasicGetOptions { no_ack: false })
                    .await
                    .map_err(|err| to_error(err, &format!("reading `{dlq}`")))?;
                let Some(got) = got else { break };
                let d = got.delivery;
                let mut message = wire::decode(
                    wire::Route::new(&d.exchange, &d.routing_key),
                    &d.properties,
                    d.data.into(),
                )
                .message;
                if !options.selects(&message) {
                    continue;
                }
                let id = message.id().to_string();
                if !options.dry_run {
                    Envelope::strip(&mut message);
                    let out = wire::encode(&message, &[])?;
                    self.shared
                        .link
                        .publish("", &target, true, &out.body, out.properties)
                        .await?;
                    channel
                        .basic_ack(d.delivery_tag, BasicAckOptions::default())
                        .await
                        .map_err(|err| to_error(err, &format!("removing from `{dlq}`")))?;
                    if let Some(pause) = pause {
                        tokio::time::sleep(pause).await;
                    }
                }
                report.moved.push(id);
            }
            Ok::<_, Error>(())
        }
        .await;
        let _ = channel
            .basic_nack(
                0,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await;
        let _ = channel.close(200, "redriven").await;
        result.map(|()| report)
    }

    /// Empties the DLQ (`Backend::dlq_purge`).
    pub(crate) async fn purge_dead_letters(
        &self,
        subscription: &SubscriptionName,
    ) -> Result<u64, Error> {
        let config = self.existing_subscription(subscription).await?;
        if !config.dead_letter_queue {
            return Ok(0);
        }
        let queue = self.shared.names.dead_letter(subscription);
        let channel = self.channel().await?;
        let purged = channel
            .queue_purge(&queue, QueuePurgeOptions::default())
            .await
            .map_err(|err| to_error(err, &format!("purging `{queue}`")));
        let _ = channel.close(200, "purged").await;
        Ok(u64::from(purged?))
    }
}
