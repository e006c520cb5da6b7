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
//! One relay runs at a time per outbox table (a lease row renewed every round), so the order
//! holds with several relays started for availability; no transaction stays open while
//! messages are published. Rows are published in
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

/// What a relay did so far (shared with the caller through [`Relay::stats`]).
#[derive(Debug, Default)]
pub struct RelayStats {
    published: AtomicU64,
    parked: AtomicU64,
    batches: AtomicU64,
    errors: AtomicU64,
}

impl RelayStats {
    /// Rows published and marked sent.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
    /// Rows parked because they can never be published.
    pub fn parked(&self) -> u64 {
        self.parked.load(Ordering::Relaxed)
    }
    /// Batches settled.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
    /// Rounds that failed (database or broker) and were tried again.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// What one [`Relay::relay_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Round {
    /// Rows published and marked sent.
    pub published: usize,
    /// Rows parked (see [`OutboxLag::parked`]).
    pub parked: usize,
    /// Another relay holds the lease: nothing was done.
    pub held_elsewhere: bool,
}

impl Round {
    /// Rows this round settled, published or parked.
    pub fn settled(&self) -> usize {
        self.published + self.parked
    }
}

/// Largest batch: keeps the statement marking a batch sent under the databases' limits.
const MAX_BATCH: usize = 10_000;

/// Publishes the outbox's rows, in order, to a Sluice backend. Run it with
/// [`run`](Self::run) (in the application, or as `sluice outbox relay`).
///
/// One relay works at a time per outbox table: each round takes or renews a lease row
/// (`sluice_outbox_relay`) in a short statement; a relay that dies lets go when the lease
/// runs out. No transaction is open while messages are published, so a slow broker never
/// holds the database's locks (SQLite's write lock in particular).
pub struct Relay<DB: SqlDatabase, P: Publisher> {
    outbox: Outbox<DB>,
    publisher: P,
    owner: String,
    batch: usize,
    poll: Duration,
    lease: Duration,
    max_backoff: Duration,
    keep_sent: Duration,
    stats: Arc<RelayStats>,
}

impl<DB: SqlDatabase, P: Publisher> std::fmt::Debug for Relay<DB, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("database", &<DB as sqlx::Database>::NAME)
            .field("owner", &self.owner)
            .field("batch", &self.batch)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

impl<DB: SqlDatabase, P: Publisher> Relay<DB, P> {
    /// A relay from `outbox` to `publisher`: batches of 100, polling every 100 ms when idle,
    /// a 30 s lease, sent rows kept an hour.
    pub fn new(outbox: Outbox<DB>, publisher: P) -> Self {
        Self {
            outbox,
            publisher,
            owner: uuid::Uuid::now_v7().to_string(),
            batch: 100,
            poll: Duration::from_millis(100),
            lease: Duration::from_secs(30),
            max_backoff: Duration::from_secs(30),
            keep_sent: Duration::from_secs(3600),
            stats: Arc::default(),
        }
    }

    /// Rows per batch (published in order, then marked together); at most 10 000.
    #[must_use]
    pub fn batch(mut self, rows: usize) -> Self {
        self.batch = rows.clamp(1, MAX_BATCH);
        self
    }

    /// How often an idle relay looks for new rows.
    #[must_use]
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// How long the relay's lease lasts without a renewal: longer than one batch takes to
    /// publish (else a second relay may start on the same rows: repeats, and the order
    /// between the two relays' batches is lost). A relay that died blocks the others this
    /// long.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
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

    fn failed(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        move |e| db_error(<DB as sqlx::Database>::NAME, operation, e)
    }

    /// Publishes one batch and settles it. A row that can never be published (undecodable,
    /// refused as invalid or too large) is parked with the reason and the batch goes on. On
    /// any other publish error the rows published before it are marked, the rest stay for
    /// the next round, and the error is returned.
    pub async fn relay_once(&self) -> Result<Round> {
        let pool = &self.outbox.pool;
        if !DB::relay_lease(pool, &self.owner, millis(self.lease).max(1))
            .await
            .map_err(Self::failed("taking the relay lease"))?
        {
            return Ok(Round {
                held_elsewhere: true,
                ..Round::default()
            });
        }
        let rows = DB::outbox_fetch(pool, i64::try_from(self.batch).unwrap_or(i64::MAX))
            .await
            .map_err(Self::failed("reading the outbox"))?;
        let mut sent = Vec::with_capacity(rows.len());
        let mut parked = Vec::new();
        let mut failure = None;
        // Decode every row; one that cannot be a message is parked with the reason.
        let mut ready = Vec::with_capacity(rows.len());
        for row in rows {
            let seq = row.seq;
            match row_message(row) {
                Ok((topic, message)) => ready.push((seq, topic, message)),
                Err(err) => parked.push((seq, err)),
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
            let count = seqs.len();
            let receipts = self.publisher.publish_batch(&topic, messages).await;
            if receipts.len() != count {
                failure = Some(Error::backend(
                    format!(
                        "publishing to {topic} returned {} results for {count} messages",
                        receipts.len()
                    ),
                    true,
                ));
            }
            for (seq, receipt) in seqs.into_iter().zip(receipts) {
                match receipt {
                    Ok(_) => sent.push(seq),
                    // Invalid or too large for this backend: it never will be published.
                    Err(err @ (Error::Message(_) | Error::Name(_))) => parked.push((seq, err)),
                    Err(err) => {
                        failure = Some(err);
                        break 'runs;
                    }
                }
            }
            if failure.is_some() {
                break;
            }
        }
        for (seq, err) in &parked {
            tracing::error!(seq, error = %err, "outbox row parked: it cannot be published");
        }
        let parked: Vec<(i64, String)> = parked
            .into_iter()
            .map(|(seq, err)| (seq, err.to_string()))
            .collect();
        if !sent.is_empty() || !parked.is_empty() {
            DB::outbox_settle(pool, &sent, &parked)
                .await
                .map_err(Self::failed("marking outbox rows sent"))?;
            self.stats
                .published
                .fetch_add(sent.len() as u64, Ordering::Relaxed);
            self.stats
                .parked
                .fetch_add(parked.len() as u64, Ordering::Relaxed);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(Round {
                published: sent.len(),
                parked: parked.len(),
                held_elsewhere: false,
            }),
        }
    }

    /// Relays until `shutdown`: full batches back to back, then a poll every interval;
    /// failures are logged and tried again with backoff (the broker or database may be
    /// away), never dropped. Sent rows older than [`keep_sent`](Self::keep_sent) are removed
    /// about once a minute. The lease is given back on shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = self.poll;
        let mut last_purge = tokio::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let wait = match self.relay_once().await {
                Ok(round) if round.settled() >= self.batch => {
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
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        if let Err(err) = DB::relay_unlease(&self.outbox.pool, &self.owner).await {
            tracing::warn!(error = %err, "giving back the relay lease failed (it expires)");
        }
    }
}
