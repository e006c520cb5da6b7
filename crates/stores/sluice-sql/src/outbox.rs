//! The transactional outbox and its relay.
//!
//! A producer writes its events into `sluice_outbox` in the same transaction as its business
//! data ([`Outbox::enqueue`]): both commit or neither does, so no event is lost when the
//! process dies between the two writes, and no event of a rolled-back change leaves. The
//! [`Relay`] then publishes the rows in `seq` order to any Sluice backend and marks them
//! sent. It is at least once: a relay killed after publishing and before marking publishes
//! those rows again on its next run, with the same message ids, so a consumer's idempotency
//! (or the topic's dedup window) removes the repeats.
//!
//! One relay runs at a time per database (a PostgreSQL advisory lock, SQLite's write lock),
//! so the order holds with several relays started for availability. Rows are published in
//! `seq` order; two producer transactions that commit in the other order than they took their
//! `seq` can be published in commit order, which no consumer could tell apart anyway.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sluice_core::{Error, Message, MessageId, MessageParts, Publisher, Result, TopicName};
use sqlx::{Pool, Transaction};
use tokio_util::sync::CancellationToken;

use crate::dialect::{OutboxRow, SqlDatabase};
use crate::error::db_error;
use crate::store::millis;

/// Writes messages into the outbox table. Cheap to clone.
pub struct Outbox<DB: SqlDatabase> {
    pool: Pool<DB>,
}

impl<DB: SqlDatabase> Clone for Outbox<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
        }
    }
}

impl<DB: SqlDatabase> std::fmt::Debug for Outbox<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("database", &<DB as sqlx::Database>::NAME)
            .finish_non_exhaustive()
    }
}

/// How far the relay is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLag {
    /// Rows not yet published.
    pub unsent: u64,
    /// Rows set aside because they can never be published (undecodable, too large, an
    /// invalid name): `sluice_outbox.error` says why; `UPDATE sluice_outbox SET parked_at =
    /// NULL, error = NULL WHERE seq = …` sends one again after a fix.
    pub parked: u64,
    /// Age of the oldest unsent row (database clock); `None` when nothing waits.
    pub oldest: Option<Duration>,
}

fn epoch_millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or_default()
}

impl<DB: SqlDatabase> Outbox<DB> {
    /// The outbox on `pool`. Needs Sluice's tables: call [`migrate`](crate::migrate) once.
    pub fn new(pool: Pool<DB>) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// Writes `message` for `topic` in the caller's transaction; returns its `seq`. The
    /// message id is kept: give business ids (`order-42-placed`) so a repeat is recognised.
    pub async fn enqueue(
        tx: &mut Transaction<'static, DB>,
        topic: &TopicName,
        message: &Message,
    ) -> Result<i64> {
        let headers = serde_json::to_string(message.headers())
            .map_err(|e| Error::backend(format!("encoding headers for the outbox: {e}"), false))?;
        let row = OutboxRow {
            seq: 0,
            topic: topic.as_str().to_owned(),
            message_id: message.id().as_str().to_owned(),
            message_type: message.message_type().map(str::to_owned),
            routing_key: message.routing_key().map(str::to_owned),
            ordering_key: message.ordering_key().map(str::to_owned),
            content_type: message.content_type().map(str::to_owned),
            headers,
            payload: message.payload().to_vec(),
            deliver_at: message.deliver_at().map(epoch_millis),
            created_at: 0,
        };
        DB::outbox_insert(&mut **tx, &row).await.map_err(|e| {
            db_error(
                <DB as sqlx::Database>::NAME,
                &format!("writing {} to the outbox", row.message_id),
                e,
            )
        })
    }

    /// How far the relay is behind.
    pub async fn lag(&self) -> Result<OutboxLag> {
        let row = DB::outbox_lag(&self.pool)
            .await
            .map_err(|e| db_error(<DB as sqlx::Database>::NAME, "reading the outbox lag", e))?;
        Ok(OutboxLag {
            unsent: u64::try_from(row.unsent).unwrap_or_default(),
            parked: u64::try_from(row.parked).unwrap_or_default(),
            oldest: row
                .oldest_created_at
                .map(|at| Duration::from_millis(u64::try_from(row.now - at).unwrap_or_default())),
        })
    }

    /// Removes rows sent more than `older_than` ago; returns how many.
    pub async fn purge_sent(&self, older_than: Duration) -> Result<u64> {
        DB::outbox_purge_sent(&self.pool, millis(older_than))
            .await
            .map_err(|e| db_error(<DB as sqlx::Database>::NAME, "removing sent outbox rows", e))
    }
}

/// Turns a row back into the message that was written.
fn row_message(row: OutboxRow) -> Result<(TopicName, Message)> {
    let topic = TopicName::new(row.topic)?;
    let headers: BTreeMap<String, String> = serde_json::from_str(&row.headers).map_err(|e| {
        Error::backend(
            format!("outbox row {} has undecodable headers: {e}", row.seq),
            false,
        )
    })?;
    let deliver_at = row
        .deliver_at
        .map(|ms| UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or_default()));
    let mut parts = MessageParts::default();
    parts.id = Some(MessageId::new(row.message_id)?);
    parts.message_type = row.message_type;
    parts.routing_key = row.routing_key;
    parts.ordering_key = row.ordering_key;
    parts.headers = headers;
    parts.content_type = row.content_type;
    parts.payload = Bytes::from(row.payload);
    parts.deliver_at = deliver_at;
    Ok((topic, Message::from_parts(parts)))
}

/// What a relay did so far (shared with its [`RelayHandle`]).
#[derive(Debug, Default)]
pub struct RelayStats {
    published: AtomicU64,
    batches: AtomicU64,
    errors: AtomicU64,
}

impl RelayStats {
    /// Rows published and marked sent.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
    /// Batches committed.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
    /// Rounds that failed (database or broker) and were tried again.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// Publishes the outbox's rows, in order, to a Sluice backend. Run it with
/// [`run`](Self::run) (in the application, or as `sluice outbox relay`).
pub struct Relay<DB: SqlDatabase, P: Publisher> {
    outbox: Outbox<DB>,
    publisher: P,
    batch: usize,
    poll: Duration,
    max_backoff: Duration,
    keep_sent: Duration,
    stats: Arc<RelayStats>,
}

impl<DB: SqlDatabase, P: Publisher> std::fmt::Debug for Relay<DB, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("database", &<DB as sqlx::Database>::NAME)
            .field("batch", &self.batch)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

impl<DB: SqlDatabase, P: Publisher> Relay<DB, P> {
    /// A relay from `outbox` to `publisher`: batches of 100, polling every 100 ms when idle,
    /// sent rows kept an hour.
    pub fn new(outbox: Outbox<DB>, publisher: P) -> Self {
        Self {
            outbox,
            publisher,
            batch: 100,
            poll: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            keep_sent: Duration::from_secs(3600),
            stats: Arc::default(),
        }
    }

    /// Rows per batch (one transaction, published in order).
    #[must_use]
    pub fn batch(mut self, rows: usize) -> Self {
        self.batch = rows.max(1);
        self
    }

    /// How often an idle relay looks for new rows.
    #[must_use]
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// Longest wait between tries after a failure (backoff doubles from the poll interval).
    #[must_use]
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// How long sent rows stay before the relay removes them (for inspection).
    #[must_use]
    pub fn keep_sent(mut self, keep: Duration) -> Self {
        self.keep_sent = keep;
        self
    }

    /// Its counters, readable while it runs.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Publishes one batch and marks it sent; returns how many rows it settled, published or
    /// parked (0 when nothing waits or another relay holds the lock). A row that can never
    /// be published (undecodable, refused as invalid or too large) is parked with the reason
    /// and the batch goes on. On any other publish error the rows published before it are
    /// marked, the rest stay for the next round, and the error is returned.
    pub async fn relay_once(&self) -> Result<usize> {
        let name = <DB as sqlx::Database>::NAME;
        let mut tx = self
            .outbox
            .pool
            .begin()
            .await
            .map_err(|e| db_error(name, "beginning a relay transaction", e))?;
        if !DB::outbox_lock(&mut tx)
            .await
            .map_err(|e| db_error(name, "taking the relay lock", e))?
        {
            return Ok(0);
        }
        let rows = DB::outbox_fetch(&mut tx, i64::try_from(self.batch).unwrap_or(i64::MAX))
            .await
            .map_err(|e| db_error(name, "reading the outbox", e))?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut sent = Vec::with_capacity(rows.len());
        let mut parked = 0;
        let mut failure = None;
        // Decode every row; one that cannot be a message is parked with the reason.
        let mut ready = Vec::with_capacity(rows.len());
        for row in rows {
            let seq = row.seq;
            match row_message(row) {
                Ok((topic, message)) => ready.push((seq, topic, message)),
                Err(err) => {
                    self.park(&mut tx, seq, &err).await?;
                    parked += 1;
                }
            }
        }
        // Runs of one topic go out as one batch; runs are published one after another.
        let mut ready = ready.into_iter().peekable();
        'runs: while let Some((seq, topic, message)) = ready.next() {
            let mut seqs = vec![seq];
            let mut messages = vec![message];
            while let Some((seq, _, message)) = ready.next_if(|(_, t, _)| *t == topic) {
                seqs.push(seq);
                messages.push(message);
            }
            let receipts = self.publisher.publish_batch(&topic, messages).await;
            for (seq, receipt) in seqs.into_iter().zip(receipts) {
                match receipt {
                    Ok(_) => sent.push(seq),
                    // Invalid or too large for this backend: it never will be published.
                    Err(err @ (Error::Message(_) | Error::Name(_))) => {
                        self.park(&mut tx, seq, &err).await?;
                        parked += 1;
                    }
                    Err(err) => {
                        failure = Some(err);
                        break 'runs;
                    }
                }
            }
        }
        DB::outbox_mark_sent(&mut tx, &sent)
            .await
            .map_err(|e| db_error(name, "marking outbox rows sent", e))?;
        tx.commit()
            .await
            .map_err(|e| db_error(name, "committing a relay batch", e))?;
        self.stats
            .published
            .fetch_add(sent.len() as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        match failure {
            Some(err) => Err(err),
            None => Ok(sent.len() + parked),
        }
    }

    /// Sets a row aside that can never be published, with the reason (logged too).
    async fn park(&self, tx: &mut Transaction<'static, DB>, seq: i64, err: &Error) -> Result<()> {
        tracing::error!(seq, error = %err, "outbox row parked: it cannot be published");
        DB::outbox_park(tx, seq, &err.to_string())
            .await
            .map_err(|e| db_error(<DB as sqlx::Database>::NAME, "parking an outbox row", e))
    }

    /// Relays until `shutdown`: full batches back to back, then a poll every interval;
    /// failures are logged and tried again with backoff (the broker or database may be
    /// away), never dropped. Sent rows older than [`keep_sent`](Self::keep_sent) are removed
    /// about once a minute.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = self.poll;
        let mut last_purge = tokio::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let wait = match self.relay_once().await {
                Ok(n) if n >= self.batch => {
                    backoff = self.poll;
                    Duration::ZERO
                }
                Ok(_) => {
                    backoff = self.poll;
                    self.poll
                }
                Err(err) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %err, retry_in = ?backoff, "outbox relay round failed");
                    let wait = backoff;
                    backoff = (backoff * 2).min(self.max_backoff);
                    wait
                }
            };
            if last_purge.elapsed() >= Duration::from_secs(60) {
                last_purge = tokio::time::Instant::now();
                if let Err(err) = self.outbox.purge_sent(self.keep_sent).await {
                    tracing::warn!(error = %err, "removing sent outbox rows failed");
                }
            }
            if !wait.is_zero() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
