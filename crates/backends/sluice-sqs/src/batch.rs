//! Coalescing of per-delivery verbs into SQS's batch calls: acks become
//! `DeleteMessageBatch`, retries, releases and lease extensions
//! `ChangeMessageVisibilityBatch`, ten entries at a time.
//!
//! Verbs issued together (a worker settling many deliveries) leave as one call; a lone verb
//! leaves at once, without waiting for company. Each caller gets its own entry's result.
//! Batches run concurrently, at most [`CONCURRENT_BATCHES`] per queue and kind.

use std::sync::Arc;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
};
use sluice_core::Error;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::to_error;

/// SQS's batch limit.
pub(crate) const MAX_BATCH: usize = 10;
/// Batch calls in flight per queue and kind.
const CONCURRENT_BATCHES: usize = 8;

/// Error codes of an entry whose receipt handle no longer holds the message.
const LEASE_LOST_CODES: [&str; 3] = [
    "ReceiptHandleIsInvalid",
    "MessageNotInflight",
    "AWS.SimpleQueueService.MessageNotInflight",
];

/// What a batch does to its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Delete,
    /// Visibility changes; each entry carries its timeout in seconds.
    Visibility,
}

/// Why one entry failed.
#[derive(Debug)]
pub(crate) enum EntryError {
    /// The receipt handle is stale: the lease was lost.
    LeaseLost,
    /// Anything else.
    Failed(Error),
}

struct Entry {
    receipt: String,
    seconds: i32,
    reply: oneshot::Sender<Result<(), EntryError>>,
}

/// One queue's batcher of one kind.
#[derive(Debug, Clone)]
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Entry>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("seconds", &self.seconds)
            .finish()
    }
}

impl Batcher {
    /// A batcher for `queue_url`; its task ends when every handle is dropped.
    pub(crate) fn new(client: aws_sdk_sqs::Client, queue_url: String, kind: Kind) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, queue_url, kind, rx));
        Self { tx }
    }

    /// Submits one entry and waits for its result. `seconds` is the visibility timeout for
    /// [`Kind::Visibility`] and ignored for deletes.
    pub(crate) async fn submit(&self, receipt: &str, seconds: i32) -> Result<(), EntryError> {
        let (reply, answer) = oneshot::channel();
        let entry = Entry {
            receipt: receipt.to_owned(),
            seconds,
            reply,
        };
        if self.tx.send(entry).is_err() {
            return Err(EntryError::Failed(Error::Closed(
                "the subscription's batcher",
            )));
        }
        answer.await.unwrap_or_else(|_| {
            Err(EntryError::Failed(Error::Closed(
                "the subscription's batcher",
            )))
        })
    }
}

async fn run(
    client: aws_sdk_sqs::Client,
    queue_url: String,
    kind: Kind,
    mut rx: mpsc::UnboundedReceiver<Entry>,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_BATCHES));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (client, queue_url) = (client.clone(), queue_url.clone());
        tokio::spawn(async move {
            send(&client, &queue_url, kind, batch).await;
            drop(slot);
        });
    }
}

async fn send(client: &aws_sdk_sqs::Client, queue_url: &str, kind: Kind, batch: Vec<Entry>) {
    // Entry ids are the positions in the batch.
    let outcome = match kind {
        Kind::Delete => {
            let entries = batch.iter().enumerate().map(|(i, e)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&e.receipt)
                    .build()
                    .expect("id and receipt are set")
            });
            client
                .delete_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries.collect()))
                .send()
                .await
                .map(|out| failures(out.failed()))
                .map_err(|err| to_error(err, &format!("deleting messages from `{queue_url}`")))
        }
        Kind::Visibility => {
            let entries = batch.iter().enumerate().map(|(i, e)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&e.receipt)
                    .visibility_timeout(e.seconds)
                    .build()
                    .expect("id and receipt are set")
            });
            client
                .change_message_visibility_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries.collect()))
                .send()
                .await
                .map(|out| failures(out.failed()))
                .map_err(|err| to_error(err, &format!("changing visibility in `{queue_url}`")))
        }
    };
    match outcome {
        Ok(mut failed) => {
            for (i, entry) in batch.into_iter().enumerate() {
                let result = match failed.iter().position(|(id, _, _)| *id == i) {
                    Some(at) => {
                        let (_, code, message) = failed.swap_remove(at);
                        Err(if LEASE_LOST_CODES.contains(&code.as_str()) {
                            EntryError::LeaseLost
                        } else {
                            EntryError::Failed(Error::backend(
                                format!("`{queue_url}`: {code}: {message}"),
                                false,
                            ))
                        })
                    }
                    None => Ok(()),
                };
                let _ = entry.reply.send(result);
            }
        }
        Err(err) => {
            // Error is not Clone: every entry gets an error of the same kind and text.
            let (text, retryable) = (err.to_string(), err.is_retryable());
            for entry in batch {
                let copy = if matches!(err, Error::Connection { .. }) {
                    Error::connection(text.clone(), None)
                } else {
                    Error::backend(text.clone(), retryable)
                };
                let _ = entry.reply.send(Err(EntryError::Failed(copy)));
            }
        }
    }
}

/// `(entry position, code, message)` of each failed entry.
fn failures(failed: &[aws_sdk_sqs::types::BatchResultErrorEntry]) -> Vec<(usize, String, String)> {
    failed
        .iter()
        .filter_map(|f| {
            let at = f.id().parse().ok()?;
            Some((
                at,
                f.code().to_owned(),
                f.message().unwrap_or("").to_owned(),
            ))
        })
        .collect()
}
