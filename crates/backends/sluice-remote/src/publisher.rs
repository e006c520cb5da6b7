//! [`RemotePublisher`]: publishes with confirms; a batch goes out as frames of at most
//! `max_batch` messages and 4 MiB each, one after the other (so order is kept).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sluice_core::{
    Capabilities, Error, Message, MessageId, PublishOutcome, PublishReceipt, Publisher, TopicName,
};
use sluice_protocol::{convert, Request, Response};
use tokio::sync::RwLock;

use crate::link::{unexpected, Link};

/// Bytes of messages per publish frame.
const FRAME_BUDGET: usize = 4 * 1024 * 1024;

/// A publisher on `sluice serve`. Safe to share; `close` waits for publishes in flight.
pub struct RemotePublisher {
    link: Arc<Link>,
    capabilities: Arc<Capabilities>,
    closed: AtomicBool,
    /// Publishes hold a read guard while in flight; `close` takes the write guard.
    in_flight: RwLock<()>,
}

impl std::fmt::Debug for RemotePublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePublisher")
            .field("addr", &self.link.addr())
            .finish_non_exhaustive()
    }
}

impl RemotePublisher {
    pub(crate) fn new(link: Arc<Link>, capabilities: Arc<Capabilities>) -> Self {
        Self {
            link,
            capabilities,
            closed: AtomicBool::new(false),
            in_flight: RwLock::new(()),
        }
    }

    async fn send(
        &self,
        topic: &TopicName,
        messages: Vec<Message>,
    ) -> Vec<Result<PublishReceipt, Error>> {
        let n = messages.len();
        let request = Request::Publish {
            topic: topic.as_str().to_owned(),
            messages: messages.into_iter().map(convert::message_to_wire).collect(),
        };
        let whole = match self.link.call(request).await {
            Ok(Response::Published(results)) if results.len() == n => {
                return results
                    .into_iter()
                    .map(|r| match r {
                        Ok(p) => Ok(PublishReceipt::new(
                            MessageId::new(p.id)?,
                            if p.fresh {
                                PublishOutcome::Published
                            } else {
                                PublishOutcome::Duplicate
                            },
                        )),
                        Err(e) => Err(convert::error_from_wire(e)),
                    })
                    .collect();
            }
            Ok(other) => unexpected(other),
            Err(e) => e,
        };
        // The request failed as a whole: every message gets that error, of the same kind
        // (a missing topic stays NotFound, a lost connection stays retryable).
        let mut results: Vec<_> = (1..n).map(|_| Err(convert::error_copy(&whole))).collect();
        results.push(Err(whole));
        results
    }
}

impl Publisher for RemotePublisher {
    async fn publish(&self, topic: &TopicName, message: Message) -> Result<PublishReceipt, Error> {
        self.publish_batch(topic, vec![message])
            .await
            .pop()
            .unwrap_or_else(|| Err(Error::backend("no result for a publish", false)))
    }

    async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<Message>,
    ) -> Vec<Result<PublishReceipt, Error>> {
        let _guard = self.in_flight.read().await;
        if self.closed.load(Ordering::Acquire) {
            return messages
                .iter()
                .map(|_| Err(Error::Closed("publisher")))
                .collect();
        }
        // Too-large messages fail here, exactly as on a local backend; the rest go out in
        // frames, all in flight at once.
        let max = self.capabilities.max_message_size;
        let mut slots: Vec<Option<Result<PublishReceipt, Error>>> =
            Vec::with_capacity(messages.len());
        let mut chunks: Vec<(Vec<usize>, Vec<Message>)> = vec![(Vec::new(), Vec::new())];
        let mut bytes = 0;
        for (i, message) in messages.into_iter().enumerate() {
            if let Err(e) = message.check_size(max) {
                slots.push(Some(Err(e.into())));
                continue;
            }
            slots.push(None);
            let size = message.size();
            let full = chunks.last().is_some_and(|(_, batch)| {
                !batch.is_empty()
                    && (batch.len() >= self.capabilities.max_batch || bytes + size > FRAME_BUDGET)
            });
            if full {
                chunks.push((Vec::new(), Vec::new()));
                bytes = 0;
            }
            let (idx, batch) = chunks.last_mut().expect("one chunk");
            idx.push(i);
            batch.push(message);
            bytes += size;
        }
        // One chunk after the other: the server stores a frame's messages in order, and
        // chunks in flight together could be stored out of order (ordering keys).
        for (idx, batch) in chunks.into_iter().filter(|(idx, _)| !idx.is_empty()) {
            let results = self.send(topic, batch).await;
            for (i, result) in idx.into_iter().zip(results) {
                slots[i] = Some(result);
            }
        }
        slots
            .into_iter()
            .map(|s| s.unwrap_or_else(|| Err(Error::backend("no result for a publish", false))))
            .collect()
    }

    async fn close(&self) -> Result<(), Error> {
        self.closed.store(true, Ordering::Release);
        // Waits until every publish in flight has its answer.
        let _all = self.in_flight.write().await;
        Ok(())
    }
}
