//! What every scenario starts from: a connected backend, a publisher, unique names, and the
//! cleanup at the end.

use std::fmt::Display;
use std::io::Write;
use std::sync::Mutex;

use sluice_core::{
    Backend, Capabilities, Message, PublishOutcome, PublishReceipt, Publisher, SubscriptionConfig,
    SubscriptionName, TopicConfig, TopicName,
};

use crate::harness::{Harness, Timing};
use crate::scenarios::skip_reason;
use crate::wait::Must;

/// The publisher type of a harness's backend.
pub type PublisherOf<H> = <<H as Harness>::Backend as Backend>::Publisher;
/// The subscriber type of a harness's backend.
pub type SubscriberOf<H> = <<H as Harness>::Backend as Backend>::Subscriber;
/// The delivery type of a harness's backend.
pub type DeliveryOf<H> = <SubscriberOf<H> as sluice_core::Subscriber>::Delivery;

/// How a scenario ended (a failure is a panic, with a message saying what went wrong).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Outcome {
    /// Every assertion held.
    Passed,
    /// The backend does not offer what the scenario tests; the reason was printed.
    Skipped(String),
}

/// Prints `SKIPPED <backend>::<scenario>: <reason>` straight to the process's stderr (not
/// through `eprintln!`, which the test harness captures), so a skip is always visible.
pub fn report_skip(backend: &str, scenario: &str, reason: impl Display) -> Outcome {
    let reason = reason.to_string();
    let line = format!("SKIPPED {backend}::{scenario}: {reason}\n");
    // Nothing sensible to do if stderr is gone.
    let _ = std::io::stderr().write_all(line.as_bytes());
    Outcome::Skipped(reason)
}

/// A unique prefix for the names one scenario run creates: `<scenario>-<10 hex>`, with the
/// scenario name cut so that every name fits the 48-character limit.
fn unique_prefix(scenario: &str) -> String {
    let uuid = uuid::Uuid::now_v7().simple().to_string();
    // The last hex digits of a UUIDv7 are random.
    let random = &uuid[uuid.len() - 10..];
    let short: String = scenario.chars().take(18).collect();
    format!("{}-{random}", short.trim_end_matches('_'))
}

/// A connected backend and a publisher for one scenario, with unique names and cleanup.
pub struct Fixture<'h, H: Harness> {
    harness: &'h H,
    scenario: &'static str,
    prefix: String,
    topics: Mutex<Vec<TopicName>>,
    /// The backend under test.
    pub backend: H::Backend,
    /// A publisher of that backend.
    pub publisher: PublisherOf<H>,
    /// The harness's durations.
    pub timing: Timing,
}

impl<'h, H: Harness> Fixture<'h, H> {
    /// Connects and makes a publisher; fails the scenario if either fails.
    pub async fn new(harness: &'h H, scenario: &'static str) -> Self {
        let backend = harness.connect().await.must("connecting to the backend");
        Self::with_backend(harness, scenario, backend).await
    }

    /// Like [`new`](Self::new), with a backend the scenario connected itself.
    pub async fn with_backend(harness: &'h H, scenario: &'static str, backend: H::Backend) -> Self {
        let publisher = backend.publisher().await.must("creating a publisher");
        Self {
            harness,
            scenario,
            prefix: unique_prefix(scenario),
            topics: Mutex::new(Vec::new()),
            backend,
            publisher,
            timing: harness.timing(),
        }
    }

    /// The harness.
    pub fn harness(&self) -> &'h H {
        self.harness
    }

    /// The backend's capabilities.
    pub fn caps(&self) -> &Capabilities {
        self.backend.capabilities()
    }

    /// `Some(Skipped)` (printed) if the backend's capabilities exclude this scenario.
    pub fn gate(&self) -> Option<Outcome> {
        if let Some(defect) = self.harness.known_defect(self.scenario) {
            return Some(self.skip(format!("open defect: {defect}")));
        }
        skip_reason(self.scenario, self.caps()).map(|reason| self.skip(reason))
    }

    /// Skips the scenario, printing why.
    pub fn skip(&self, reason: impl Display) -> Outcome {
        report_skip(self.harness.name(), self.scenario, reason)
    }

    /// Skips one part of the scenario (the rest still runs), printing why.
    pub fn skip_part(&self, part: &str, reason: impl Display) {
        let scenario = format!("{}[{part}]", self.scenario);
        let _ = report_skip(self.harness.name(), &scenario, reason);
    }

    /// A unique topic name (not created). `label` is `[a-z0-9_-]`, at most 16 characters.
    pub fn topic_name(&self, label: &str) -> TopicName {
        TopicName::new(self.name(label)).must("building a topic name")
    }

    /// A unique subscription name (not created).
    pub fn subscription_name(&self, label: &str) -> SubscriptionName {
        SubscriptionName::new(self.name(label)).must("building a subscription name")
    }

    fn name(&self, label: &str) -> String {
        assert!(label.len() <= 16, "label `{label}` is longer than 16");
        format!("{}-{label}", self.prefix)
    }

    /// Creates a unique topic with the default configuration.
    pub async fn topic(&self, label: &str) -> TopicName {
        self.topic_with(label, TopicConfig::default()).await
    }

    /// Creates a unique topic with `config`; it is deleted by [`finish`](Self::finish).
    pub async fn topic_with(&self, label: &str, config: TopicConfig) -> TopicName {
        let topic = self.topic_name(label);
        self.backend
            .ensure_topic(&topic, &config)
            .await
            .must("ensuring a topic");
        self.topics.lock().unwrap().push(topic.clone());
        topic
    }

    /// Creates a unique subscription of `topic` with the default configuration and
    /// subscribes to it.
    pub async fn subscribe(&self, topic: &TopicName, label: &str) -> SubscriberOf<H> {
        let config = SubscriptionConfig::new(topic.clone());
        self.subscribe_with(label, config).await.1
    }

    /// Creates a unique subscription with `config` and subscribes to it.
    pub async fn subscribe_with(
        &self,
        label: &str,
        config: SubscriptionConfig,
    ) -> (SubscriptionName, SubscriberOf<H>) {
        let name = self.subscription_name(label);
        self.backend
            .ensure_subscription(&name, &config)
            .await
            .must("ensuring a subscription");
        let subscriber = self.backend.subscribe(&name).await.must("subscribing");
        (name, subscriber)
    }

    /// A message whose payload is `label` (scenarios identify deliveries by it).
    pub fn message(&self, label: &str) -> Message {
        Message::builder(label.to_owned().into_bytes())
            .build()
            .must("building a message")
    }

    /// Publishes and expects the message to be stored (not dropped as a duplicate).
    #[track_caller]
    pub fn publish<'a>(
        &'a self,
        topic: &'a TopicName,
        message: Message,
    ) -> impl std::future::Future<Output = PublishReceipt> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let id = message.id().clone();
            let receipt = self
                .publisher
                .publish(topic, message)
                .await
                .unwrap_or_else(|err| panic!("publishing {id}: {err} (at {caller})"));
            assert_eq!(receipt.id, id, "the receipt names the published id");
            assert_eq!(
                receipt.outcome,
                PublishOutcome::Published,
                "publishing {id}"
            );
            receipt
        }
    }

    /// Publishes one message per label, in order.
    pub async fn publish_labels(&self, topic: &TopicName, labels: &[&str]) {
        for label in labels {
            self.publish(topic, self.message(label)).await;
        }
    }

    /// Deletes the topics the scenario created (best effort: the assertions are done) and
    /// reports success.
    pub async fn finish(self) -> Outcome {
        let topics = std::mem::take(&mut *self.topics.lock().unwrap());
        for topic in topics {
            let _ = self.backend.delete_topic(&topic).await;
        }
        Outcome::Passed
    }
}
