//! [`SqsBackend`]: connecting, capabilities, topology (SNS topics, SQS queues and the SNS
//! subscriptions between them), stats and the DLQ tools.
//!
//! Invariants:
//! - A subscription's DLQ exists before its queue (the queue's redrive policy names it), and
//!   the queue before its SNS subscription: a subscribed queue is complete.
//! - Sluice's configuration lives in tags on the objects (`catalog.rs`); the caches below
//!   are per handle and forgotten when an object turns out to be gone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sns::types::Tag;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use sluice_core::dedup::{Claims, DedupStore};
use sluice_core::envelope::Envelope;
use sluice_core::{
    Backend, Capabilities, DeadLetteredMessage, Error, Naming, ObjectKind, OrderingLevel,
    RedriveOptions, RedriveReport, StartPosition, SubscriptionConfig, SubscriptionInfo,
    SubscriptionName, SubscriptionStats, Support, TopicConfig, TopicInfo, TopicName,
};

use crate::batch::{Batcher, Kind, MAX_BATCH};
use crate::catalog;
use crate::error::{is_not_found, to_error};
use crate::filter::{self, Plan};
use crate::names::{arn_name, Names};
use crate::publisher::SqsPublisher;
use crate::receives::Receives;
use crate::subscriber::{system_attributes, SqsSubscriber};
use crate::wire::{self, SNS_MAX_BYTES};

/// Largest message Sluice accepts: SNS's 256 KiB less 8 KiB for Sluice's own attributes and
/// a dead-letter envelope (its reason and last error hold up to 2 KiB each).
/// A binary payload is base64-encoded on the wire and so can use about three quarters of it;
/// the encoded size is checked against SNS's limit before anything is sent.
pub const MAX_MESSAGE_SIZE: usize = SNS_MAX_BYTES - 8 * 1024;

/// The dedup window of SQS FIFO queues and SNS FIFO topics: fixed at 5 minutes.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(300);

/// Longest visibility timeout SQS accepts: 12 hours.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

/// How long queues keep messages: SQS's maximum, 14 days.
pub const RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);

/// Longest delay (publish or retry): a day less than the retention, so a message held back
/// until it is due is never dropped by the queue's retention first.
pub const MAX_DELAY: Duration = Duration::from_secs(13 * 24 * 3600);

/// How many receives above `max_attempts` the queue's native redrive policy
/// (`maxReceiveCount`) allows before SQS moves a message to the DLQ by itself: a safety net
/// behind the runtime's own dead-lettering, with room for releases and for the receives of a
/// delayed message held back in hops of 12 hours until it is due ([`MAX_DELAY`] needs 27).
pub const RECEIVE_LIMIT_MARGIN: u32 = 10 + HOLD_BACK_HOPS;

/// Hops of at most 12 hours a message delayed by [`MAX_DELAY`] takes, plus one.
const HOLD_BACK_HOPS: u32 = (MAX_DELAY.as_secs() / MAX_VISIBILITY.as_secs()) as u32 + 1;

/// What the SQS + SNS backend does natively, emulates or cannot do.
pub fn capabilities() -> Capabilities {
    let mut caps = Capabilities::full("sqs");
    caps.delay = Support::Emulated;
    // Its workers take global rate limits from a store they are given (Redis).
    caps.global_rate_limits = Support::Emulated;
    caps.max_delay = Some(MAX_DELAY);
    caps.ordering = OrderingLevel::Strict;
    caps.dedup_window = Support::Native;
    caps.max_dedup_window = Some(DEDUP_WINDOW);
    caps.fixed_dedup_window = Some(DEDUP_WINDOW);
    caps.backlog_bounds = Support::Unsupported;
    caps.replay = false;
    caps.filter = Support::Native;
    caps.release_counts_as_attempt = true;
    caps.survives_restart = true;
    caps.reconnects = true;
    caps.max_message_size = MAX_MESSAGE_SIZE;
    caps.max_batch = MAX_BATCH;
    caps.time_granularity = Duration::from_secs(1);
    caps
}

/// Options of an [`SqsBackend`].
#[derive(Clone)]
#[non_exhaustive]
pub struct SqsOptions {
    /// AWS region (`us-east-1`).
    pub region: String,
    /// Endpoint override for both SNS and SQS (a local emulator such as moto:
    /// `http://127.0.0.1:4566`). `None`: AWS's own endpoints.
    pub endpoint: Option<String>,
    /// Static credentials `(access key id, secret access key)`. `None`: the AWS credential
    /// chain (environment, profile, web identity, container, instance metadata).
    pub credentials: Option<(String, String)>,
    /// Prefix of every physical name.
    pub namespace: Option<sluice_core::Namespace>,
    /// How long one `ReceiveMessage` long-polls (whole seconds, at most 20).
    pub poll_wait: Duration,
    /// Attempts of one AWS call, the first included: the SDK retries throttling and transient
    /// errors with exponential backoff and jitter.
    pub max_call_attempts: u32,
    /// Concurrent receivers per subscriber of a FIFO (ordered) subscription, 1 by default,
    /// at most 8. Each asks for one message per call. More receivers fetch messages of
    /// different keys in parallel on AWS; keep 1 on moto, whose concurrent long polls can
    /// hand out two messages of one group at once.
    pub fifo_pollers: usize,
    /// Where this handle records the ids published within a topic's dedup window, to report
    /// a copy SQS FIFO drops as `Duplicate`. By default an in-memory [`Claims`], covering
    /// the publishers of the backends connected with these options (and their clones) in
    /// this process only; a store shared by every publisher (`sluice-redis`, `sluice-sql`)
    /// makes the reports hold across processes and restarts. (SQS drops the copies either
    /// way: the store only decides what the receipt says.)
    pub dedup_store: Arc<dyn DedupStore>,
}

impl std::fmt::Debug for SqsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsOptions")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            // The secret access key stays out of logs.
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(id, _)| (id, "<redacted>")),
            )
            .field("namespace", &self.namespace)
            .field("poll_wait", &self.poll_wait)
            .field("max_call_attempts", &self.max_call_attempts)
            .field("fifo_pollers", &self.fifo_pollers)
            .field("dedup_store", &format_args!("Arc<dyn DedupStore>"))
            .finish()
    }
}

impl SqsOptions {
    /// Options for `region` with the defaults: AWS's endpoints, the credential chain, 20 s
    /// long polls, 8 attempts per call.
    pub fn new(region: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            endpoint: None,
            credentials: None,
            namespace: None,
            poll_wait: Duration::from_secs(20),
            max_call_attempts: 8,
            fifo_pollers: 1,
            dedup_store: Arc::new(Claims::default()),
        }
    }

    /// Sets the endpoint override.
    #[must_use]
    pub fn endpoint(mut self, endpoint: Option<String>) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// Sets static credentials.
    #[must_use]
    pub fn credentials(mut self, access_key_id: &str, secret_access_key: &str) -> Self {
        self.credentials = Some((access_key_id.to_owned(), secret_access_key.to_owned()));
        self
    }

    /// Sets the namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: Option<sluice_core::Namespace>) -> Self {
        self.namespace = namespace;
        self
    }

    /// Sets the number of receivers per FIFO subscriber (1 to 8).
    #[must_use]
    pub fn fifo_pollers(mut self, pollers: usize) -> Self {
        self.fifo_pollers = pollers.clamp(1, 8);
        self
    }

    /// Sets the long-poll wait (rounded up to whole seconds, capped at 20).
    #[must_use]
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.poll_wait = wait;
        self
    }

    /// Sets [`dedup_store`](Self::dedup_store).
    #[must_use]
    pub fn dedup_store(mut self, store: Arc<dyn DedupStore>) -> Self {
        self.dedup_store = store;
        self
    }
}

/// A topic as this handle knows it.
#[derive(Debug, Clone)]
pub(crate) struct TopicState {
    pub(crate) name: TopicName,
    pub(crate) arn: String,
    pub(crate) fifo: bool,
    pub(crate) config: TopicConfig,
}

/// A subscription as this handle knows it.
#[derive(Debug)]
pub(crate) struct SubscriptionState {
    pub(crate) name: SubscriptionName,
    pub(crate) config: SubscriptionConfig,
    pub(crate) fifo: bool,
    pub(crate) queue_url: String,
    pub(crate) dlq_url: Option<String>,
    pub(crate) plan: Plan,
    pub(crate) deletes: Batcher,
    pub(crate) visibility: Batcher,
}

/// What every handle of one backend shares.
pub(crate) struct Shared {
    pub(crate) sqs: aws_sdk_sqs::Client,
    pub(crate) sns: aws_sdk_sns::Client,
    pub(crate) names: Names,
    pub(crate) caps: Capabilities,
    pub(crate) options: SqsOptions,
    // std Mutexes: held for a map operation, never across an .await.
    topics: Mutex<HashMap<String, Arc<TopicState>>>,
    subscriptions: Mutex<HashMap<String, Arc<SubscriptionState>>>,
    buffered: Mutex<HashMap<String, Arc<AtomicI64>>>,
    /// The newest receive of each message a delivery holds, across every subscriber of
    /// this handle (a verb with a stale receipt fails early).
    pub(crate) receives: Arc<Receives>,
}

/// Sluice on Amazon SQS + SNS. Cheap to clone: clones share the AWS clients.
#[derive(Clone)]
pub struct SqsBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SqsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsBackend")
            .field("region", &self.shared.options.region)
            .field("endpoint", &self.shared.options.endpoint)
            .field("namespace", &self.shared.options.namespace)
            .finish_non_exhaustive()
    }
}

/// Whole seconds, rounded up, as SQS wants them (capped at `max`).
pub(crate) fn whole_seconds(d: Duration, max: Duration) -> i32 {
    let d = d.min(max);
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

impl Shared {
    /// The count of deliveries this handle's subscribers received from SQS and have not
    /// handed to the application yet.
    pub(crate) fn buffered(&self, subscription: &SubscriptionName) -> Arc<AtomicI64> {
        Arc::clone(
            self.buffered
                .lock()
                .expect("buffered")
                .entry(subscription.to_string())
                .or_default(),
        )
    }

    /// The topic, from the cache or from SNS; `NotFound` if it does not exist.
    pub(crate) async fn topic(&self, topic: &TopicName) -> Result<Arc<TopicState>, Error> {
        if let Some(state) = self.topics.lock().expect("topics").get(topic.as_str()) {
            return Ok(Arc::clone(state));
        }
        let found = self.find_topic(topic).await?;
        let state = found.ok_or_else(|| Error::topic_not_found(topic.as_str()))?;
        let state = Arc::new(state);
        self.topics
            .lock()
            .expect("topics")
            .insert(topic.as_str().to_owned(), Arc::clone(&state));
        Ok(state)
    }

    /// Forgets a topic (deleted, or found missing by a publish), its dedup claims too; a
    /// failure to drop those is logged (they then end with their window).
    pub(crate) async fn forget_topic(&self, topic: &TopicName) {
        self.uncache_topic(topic.as_str());
        let store = &self.options.dedup_store;
        if let Err(err) = store.forget_topic(&self.dedup_topic(topic)).await {
            tracing::warn!(%topic, %err, "could not drop the dedup claims of the topic; they end with their window");
        }
    }

    /// Drops the cached state of a topic, so the next use reads it from SNS.
    pub(crate) fn uncache_topic(&self, topic: &str) {
        self.topics.lock().expect("topics").remove(topic);
    }

    /// Every Sluice topic of this namespace: `(logical name, ARN, FIFO)`.
    async fn topic_arns(&self) -> Result<Vec<(TopicName, String, bool)>, Error> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .sns
                .list_topics()
                .set_next_token(token)
                .send()
                .await
                .map_err(|err| to_error(err, "listing SNS topics"))?;
            for topic in page.topics() {
                let Some(arn) = topic.topic_arn() else {
                    continue;
                };
                if let Some((name, fifo)) = self.names.topic_of(arn_name(arn)) {
                    out.push((name, arn.to_owned(), fifo));
                }
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    async fn topic_state(
        &self,
        name: TopicName,
        arn: String,
        fifo: bool,
    ) -> Result<TopicState, Error> {
        let tags = self
            .sns
            .list_tags_for_resource()
            .resource_arn(&arn)
            .send()
            .await
            .map_err(|err| to_error(err, &format!("reading the tags of `{arn}`")))?;
        let tags: HashMap<String, String> = tags
            .tags()
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect();
        Ok(TopicState {
            name,
            arn,
            fifo,
            config: catalog::topic_config(&tags),
        })
    }

    async fn find_topic(&self, topic: &TopicName) -> Result<Option<TopicState>, Error> {
        let found = self
            .topic_arns()
            .await?
            .into_iter()
            .find(|(name, _, _)| name == topic);
        match found {
            Some((name, arn, fifo)) => Ok(Some(self.topic_state(name, arn, fifo).await?)),
            None => Ok(None),
        }
    }

    /// The URL of a queue, or `None` if it does not exist.
    async fn queue_url(&self, queue: &str) -> Result<Option<String>, Error> {
        match self.sqs.get_queue_url().queue_name(queue).send().await {
            Ok(out) => Ok(out.queue_url().map(str::to_owned)),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(to_error(err, &format!("looking up queue `{queue}`"))),
        }
    }

    async fn queue_arn(&self, url: &str) -> Result<String, Error> {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|err| to_error(err, &format!("reading the ARN of `{url}`")))?;
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| Error::backend(format!("`{url}` has no QueueArn attribute"), false))
    }

    /// The subscription's queue, from the cache or from SQS; `NotFound` if it does not exist.
    pub(crate) async fn subscription(
        &self,
        subscription: &SubscriptionName,
    ) -> Result<Arc<SubscriptionState>, Error> {
        if let Some(state) = self
            .subscriptions
            .lock()
            .expect("subscriptions")
            .get(subscription.as_str())
        {
            return Ok(Arc::clone(state));
        }
        let state = self
            .find_subscription(subscription)
            .await?
            .ok_or_else(|| Error::subscription_not_found(subscription.as_str()))?;
        let state = Arc::new(state);
        self.subscriptions
            .lock()
            .expect("subscriptions")
            .insert(subscription.as_str().to_owned(), Arc::clone(&state));
        Ok(state)
    }

    fn forget_subscription(&self, subscription: &str) {
        self.subscriptions
            .lock()
            .expect("subscriptions")
            .remove(subscription);
    }

    async fn find_subscription(
        &self,
        subscription: &SubscriptionName,
    ) -> Result<Option<SubscriptionState>, Error> {
        for fifo in [false, true] {
            let queue = self.names.queue(subscription, fifo);
            let Some(url) = self.queue_url(&queue).await? else {
                continue;
            };
            let tags = self
                .sqs
                .list_queue_tags()
                .queue_url(&url)
                .send()
                .await
                .map_err(|err| to_error(err, &format!("reading the tags of `{queue}`")))?;
            let tags = tags.tags().cloned().unwrap_or_default();
            let Some(config) = catalog::subscription_config(&tags)? else {
                return Err(Error::Conflict {
                    kind: ObjectKind::Subscription,
                    name: subscription.to_string(),
                    difference: format!(
                        "the SQS queue `{queue}` exists but is not a Sluice subscription (no \
                         sluice:topic tag)"
                    ),
                });
            };
            let dlq_url = if config.dead_letter_queue {
                self.queue_url(&self.names.dead_letter(subscription, fifo))
                    .await?
            } else {
                None
            };
            return Ok(Some(self.subscription_state(
                subscription,
                config,
                fifo,
                url,
                dlq_url,
            )));
        }
        Ok(None)
    }

    fn subscription_state(
        &self,
        subscription: &SubscriptionName,
        config: SubscriptionConfig,
        fifo: bool,
        queue_url: String,
        dlq_url: Option<String>,
    ) -> SubscriptionState {
        SubscriptionState {
            name: subscription.clone(),
            plan: filter::plan(config.filter.as_ref()),
            config,
            fifo,
            deletes: Batcher::new(self.sqs.clone(), queue_url.clone(), Kind::Delete),
            visibility: Batcher::new(self.sqs.clone(), queue_url.clone(), Kind::Visibility),
            queue_url,
            dlq_url,
        }
    }

    /// Sends one message straight to a queue (DLQ moves, redrives, re-sent delays).
    pub(crate) async fn send_to_queue(
        &self,
        queue_url: &str,
        fifo: bool,
        message: &sluice_core::Message,
        attempt: Option<u32>,
    ) -> Result<(), Error> {
        let out = wire::encode(message, attempt)?;
        let mut request = self
            .sqs
            .send_message()
            .queue_url(queue_url)
            .message_body(out.body)
            .set_message_attributes(Some(crate::publisher::sqs_attributes(&out.attributes)));
        if fifo {
            let group = message.ordering_key().unwrap_or(message.id().as_str());
            request = request
                .message_group_id(wire::group_id(group))
                .message_deduplication_id(uuid::Uuid::now_v7().simple().to_string());
        }
        request
            .send()
            .await
            .map(|_| ())
            .map_err(|err| to_error(err, &format!("sending to `{queue_url}`")))
    }

    /// Receives up to ten messages of a queue for the DLQ tools (hidden for `hide`).
    async fn receive_raw(
        &self,
        queue_url: &str,
        max: usize,
        hide: Duration,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>, Error> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
            .visibility_timeout(whole_seconds(hide, MAX_VISIBILITY))
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .set_message_system_attribute_names(Some(system_attributes()))
            .send()
            .await
            .map_err(|err| to_error(err, &format!("receiving from `{queue_url}`")))?;
        Ok(out.messages().to_vec())
    }

    /// Makes messages received by the DLQ tools visible again at once.
    async fn unhide(&self, queue_url: &str, receipts: Vec<String>) {
        let batcher = Batcher::new(self.sqs.clone(), queue_url.to_owned(), Kind::Visibility);
        let results =
            futures::future::join_all(receipts.iter().map(|r| batcher.submit(r, 0))).await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            tracing::warn!(queue = queue_url, failed, "could not make listed messages visible again; they reappear when their visibility timeout ends");
        }
    }
}

/// A received SQS message's body and attributes as Sluice reads them.
pub(crate) fn decode_raw(raw: &aws_sdk_sqs::types::Message) -> Result<wire::Incoming, String> {
    let attributes: HashMap<String, String> = raw
        .message_attributes()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    wire::decode(raw.body().unwrap_or(""), &attributes, raw.message_id())
}

/// A system attribute of a received message, as a number.
pub(crate) fn system_number(
    raw: &aws_sdk_sqs::types::Message,
    name: MessageSystemAttributeName,
) -> Option<u64> {
    raw.attributes()?.get(&name)?.parse().ok()
}

/// The AWS SDK configuration Sluice's clients use for `options`: region, endpoint,
/// credentials, rustls on *ring*, the retry and timeout settings. Public so tools beside
/// Sluice (the benchmark's raw baseline, tests reading queues directly) talk to AWS the
/// same way.
pub async fn sdk_config(options: &SqsOptions) -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let retry = RetryConfig::standard()
        .with_max_attempts(options.max_call_attempts.max(1))
        .with_initial_backoff(Duration::from_millis(50))
        .with_max_backoff(Duration::from_secs(5));
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        // A long poll answers after up to 20 s.
        .operation_attempt_timeout(Duration::from_secs(35))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(options.region.clone()))
        .http_client(http)
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(endpoint) = &options.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some((key, secret)) = &options.credentials {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            key, secret, None, None, "sluice",
        ));
    }
    loader.load().await
}

impl SqsBackend {
    /// Connects (builds the SNS and SQS clients; AWS is first called by the first operation).
    pub async fn connect(options: SqsOptions) -> Result<Self, Error> {
        let config = sdk_config(&options).await;
        Ok(Self {
            shared: Arc::new(Shared {
                sqs: aws_sdk_sqs::Client::new(&config),
                sns: aws_sdk_sns::Client::new(&config),
                names: Names::new(Naming::new(options.namespace.clone())),
                caps: capabilities(),
                options,
                topics: Mutex::default(),
                subscriptions: Mutex::default(),
                buffered: Mutex::default(),
                receives: Arc::default(),
            }),
        })
    }

    async fn create_queue(
        &self,
        name: &str,
        fifo: bool,
        mut attributes: HashMap<QueueAttributeName, String>,
        tags: HashMap<String, String>,
        subscription: &SubscriptionName,
    ) -> Result<String, Error> {
        attributes.insert(
            QueueAttributeName::MessageRetentionPeriod,
            RETENTION.as_secs().to_string(),
        );
        if fifo {
            attributes.insert(QueueAttributeName::FifoQueue, "true".into());
        }
        let out = self
            .shared
            .sqs
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(attributes))
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|err| match crate::error::code(&err) {
                Some("QueueAlreadyExists" | "QueueNameExists") => Error::Conflict {
                    kind: ObjectKind::Subscription,
                    name: subscription.to_string(),
                    difference: format!("the SQS queue `{name}` exists with other attributes"),
                },
                _ => to_error(err, &format!("creating queue `{name}`")),
            })?;
        out.queue_url()
            .map(str::to_owned)
            .ok_or_else(|| Error::backend(format!("creating `{name}` returned no URL"), false))
    }

    /// The SNS subscription ARN that delivers `topic` to `queue_arn`, if any.
    async fn sns_subscription(
        &self,
        topic_arn: &str,
        queue_arn: &str,
    ) -> Result<Option<String>, Error> {
        Ok(self
            .sns_subscriptions(topic_arn)
            .await?
            .into_iter()
            .find(|(_, endpoint)| endpoint == queue_arn)
            .map(|(arn, _)| arn))
    }

    /// `(subscription ARN, endpoint)` of every SQS subscription of a topic.
    async fn sns_subscriptions(&self, topic_arn: &str) -> Result<Vec<(String, String)>, Error> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .shared
                .sns
                .list_subscriptions_by_topic()
                .topic_arn(topic_arn)
                .set_next_token(token)
                .send()
                .await
                .map_err(|err| to_error(err, &format!("listing subscriptions of `{topic_arn}`")))?;
            for s in page.subscriptions() {
                if s.protocol() == Some("sqs") {
                    if let (Some(arn), Some(endpoint)) = (s.subscription_arn(), s.endpoint()) {
                        out.push((arn.to_owned(), endpoint.to_owned()));
                    }
                }
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    async fn subscribe_queue(
        &self,
        topic: &TopicState,
        queue_url: &str,
        plan: &Plan,
    ) -> Result<(), Error> {
        let queue_arn = self.shared.queue_arn(queue_url).await?;
        // On AWS a queue accepts SNS's deliveries only when its policy allows them.
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "sluice-sns-delivery",
                "Effect": "Allow",
                "Principal": { "Service": "sns.amazonaws.com" },
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": { "ArnEquals": { "aws:SourceArn": topic.arn } }
            }]
        });
        self.shared
            .sqs
            .set_queue_attributes()
            .queue_url(queue_url)
            .attributes(QueueAttributeName::Policy, policy.to_string())
            .send()
            .await
            .map_err(|err| to_error(err, &format!("allowing SNS to deliver to `{queue_url}`")))?;
        let mut request = self
            .shared
            .sns
            .subscribe()
            .topic_arn(&topic.arn)
            .protocol("sqs")
            .endpoint(&queue_arn)
            .return_subscription_arn(true)
            .attributes("RawMessageDelivery", "true");
        if let Some(policy) = &plan.policy {
            request = request.attributes("FilterPolicy", policy);
        }
        request.send().await.map_err(|err| {
            to_error(
                err,
                &format!("subscribing `{queue_arn}` to `{}`", topic.arn),
            )
        })?;
        Ok(())
    }

    async fn delete_queue(&self, url: &str) -> Result<(), Error> {
        match self.shared.sqs.delete_queue().queue_url(url).send().await {
            Ok(_) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(to_error(err, &format!("deleting queue `{url}`"))),
        }
    }

    /// Deletes a subscription's SNS subscription (when its topic is known), queue and DLQ.
    async fn remove_subscription(
        &self,
        state: &SubscriptionState,
        topic: Option<&TopicState>,
    ) -> Result<(), Error> {
        if let Some(topic) = topic {
            let queue_arn = self.shared.queue_arn(&state.queue_url).await?;
            if let Some(arn) = self.sns_subscription(&topic.arn, &queue_arn).await? {
                self.shared
                    .sns
                    .unsubscribe()
                    .subscription_arn(&arn)
                    .send()
                    .await
                    .map_err(|err| to_error(err, &format!("unsubscribing `{arn}`")))?;
            }
        }
        self.delete_queue(&state.queue_url).await?;
        if let Some(dlq) = &state.dlq_url {
            self.delete_queue(dlq).await?;
        }
        self.shared.forget_subscription(state.name.as_str());
        Ok(())
    }

    /// The subscriptions of a topic (queues subscribed to it that are this namespace's).
    async fn topic_subscriptions(
        &self,
        topic: &TopicState,
    ) -> Result<Vec<SubscriptionName>, Error> {
        let mut names = Vec::new();
        for (_, endpoint) in self.sns_subscriptions(&topic.arn).await? {
            let queue = arn_name(&endpoint);
            let base = queue
                .strip_suffix(crate::names::FIFO_SUFFIX)
                .unwrap_or(queue);
            if let Some(name) = self.shared.names.naming().strip_namespace(base) {
                if let Ok(name) = SubscriptionName::new(name) {
                    names.push(name);
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn dlq_of<'a>(&self, state: &'a SubscriptionState) -> Option<&'a str> {
        state.dlq_url.as_deref()
    }
}

impl Backend for SqsBackend {
    type Publisher = SqsPublisher;
    type Subscriber = SqsSubscriber;

    fn capabilities(&self) -> &Capabilities {
        &self.shared.caps
    }

    fn naming(&self) -> &Naming {
        self.shared.names.naming()
    }

    async fn publisher(&self) -> Result<SqsPublisher, Error> {
        Ok(SqsPublisher::new(Arc::clone(&self.shared)))
    }

    async fn subscribe(&self, subscription: &SubscriptionName) -> Result<SqsSubscriber, Error> {
        let state = self.shared.subscription(subscription).await?;
        Ok(SqsSubscriber::start(Arc::clone(&self.shared), state))
    }

    async fn ensure_topic(&self, topic: &TopicName, config: &TopicConfig) -> Result<(), Error> {
        if config.backlog_bound.is_some() {
            return Err(Error::Unsupported(
                "topic backlog bounds on SQS + SNS (see docs/sqs.md)".into(),
            ));
        }
        if let Some(existing) = self.shared.find_topic(topic).await? {
            if let Some(difference) = existing.config.difference(config) {
                return Err(Error::Conflict {
                    kind: ObjectKind::Topic,
                    name: topic.to_string(),
                    difference,
                });
            }
            return Ok(());
        }
        if let Some(window) = config.dedup_window {
            if window != DEDUP_WINDOW {
                return Err(Error::Unsupported(format!(
                    "a dedup window of {} on SQS + SNS: FIFO topics deduplicate for exactly 5 \
                     minutes (ask for `dedup_window(5m)`)",
                    humanize(window)
                )));
            }
        }
        let fifo = config.ordered || config.dedup_window.is_some();
        let name = self.shared.names.topic(topic, fifo);
        let tags = catalog::topic_tags(config)
            .into_iter()
            .map(|(k, v)| {
                Tag::builder()
                    .key(k)
                    .value(v)
                    .build()
                    .expect("key and value")
            })
            .collect();
        let mut request = self
            .shared
            .sns
            .create_topic()
            .name(&name)
            .set_tags(Some(tags));
        if fifo {
            request = request
                .attributes("FifoTopic", "true")
                .attributes("ContentBasedDeduplication", "false");
        }
        let out = request
            .send()
            .await
            .map_err(|err| to_error(err, &format!("creating SNS topic `{name}`")))?;
        let arn = out
            .topic_arn()
            .ok_or_else(|| Error::backend(format!("creating `{name}` returned no ARN"), false))?;
        let state = TopicState {
            name: topic.clone(),
            arn: arn.to_owned(),
            fifo,
            config: config.clone(),
        };
        self.shared
            .topics
            .lock()
            .expect("topics")
            .insert(topic.to_string(), Arc::new(state));
        Ok(())
    }

    async fn ensure_subscription(
        &self,
        subscription: &SubscriptionName,
        config: &SubscriptionConfig,
    ) -> Result<(), Error> {
        // Read the topic afresh (another process may have deleted it), keeping the dedup
        // claims of this handle.
        self.shared.uncache_topic(config.topic.as_str());
        let topic = self.shared.topic(&config.topic).await?;
        self.shared.forget_subscription(subscription.as_str());
        if let Some(existing) = self.shared.find_subscription(subscription).await? {
            if let Some(difference) = existing.config.difference(config) {
                return Err(Error::Conflict {
                    kind: ObjectKind::Subscription,
                    name: subscription.to_string(),
                    difference,
                });
            }
            if existing.config.prefetch != config.prefetch {
                let (key, value) = catalog::prefetch_tag(config.prefetch);
                self.shared
                    .sqs
                    .tag_queue()
                    .queue_url(&existing.queue_url)
                    .tags(key, value)
                    .send()
                    .await
                    .map_err(|err| to_error(err, "updating the prefetch tag"))?;
            }
            // A process that stopped between creating the queue and subscribing it left a
            // queue without its SNS subscription: finish the job.
            let queue_arn = self.shared.queue_arn(&existing.queue_url).await?;
            if self
                .sns_subscription(&topic.arn, &queue_arn)
                .await?
                .is_none()
            {
                self.subscribe_queue(&topic, &existing.queue_url, &existing.plan)
                    .await?;
            }
            return Ok(());
        }
        if !matches!(config.start, StartPosition::Latest) {
            return Err(Error::Unsupported(
                "start positions other than `latest` on SQS + SNS: a queue holds only what was \
                 published after it was subscribed"
                    .into(),
            ));
        }
        let plan = filter::plan(config.filter.as_ref());
        let fifo = topic.fifo;
        let mut attributes = HashMap::from([(
            QueueAttributeName::VisibilityTimeout,
            whole_seconds(config.lease, MAX_VISIBILITY).to_string(),
        )]);
        let mut dlq_url = None;
        if config.dead_letter_queue {
            let dlq = self.shared.names.dead_letter(subscription, fifo);
            let url = self
                .create_queue(&dlq, fifo, HashMap::new(), HashMap::new(), subscription)
                .await?;
            let dlq_arn = self.shared.queue_arn(&url).await?;
            let limit = config.max_attempts.saturating_add(RECEIVE_LIMIT_MARGIN);
            let redrive = serde_json::json!({
                "deadLetterTargetArn": dlq_arn,
                "maxReceiveCount": limit.to_string(),
            });
            attributes.insert(QueueAttributeName::RedrivePolicy, redrive.to_string());
            dlq_url = Some(url);
        }
        let queue = self.shared.names.queue(subscription, fifo);
        let tags = catalog::subscription_tags(config);
        let queue_url = self
            .create_queue(&queue, fifo, attributes, tags, subscription)
            .await?;
        self.subscribe_queue(&topic, &queue_url, &plan).await?;
        let state =
            self.shared
                .subscription_state(subscription, config.clone(), fifo, queue_url, dlq_url);
        self.shared
            .subscriptions
            .lock()
            .expect("subscriptions")
            .insert(subscription.to_string(), Arc::new(state));
        Ok(())
    }

    async fn describe_topic(&self, topic: &TopicName) -> Result<TopicInfo, Error> {
        let state = self
            .shared
            .find_topic(topic)
            .await?
            .ok_or_else(|| Error::topic_not_found(topic.as_str()))?;
        let subscriptions = self.topic_subscriptions(&state).await?;
        Ok(TopicInfo::new(
            topic.clone(),
            state.config.clone(),
            subscriptions,
        ))
    }

    async fn describe_subscription(
        &self,
        subscription: &SubscriptionName,
    ) -> Result<SubscriptionInfo, Error> {
        let state = self
            .shared
            .find_subscription(subscription)
            .await?
            .ok_or_else(|| Error::subscription_not_found(subscription.as_str()))?;
        Ok(SubscriptionInfo::new(
            subscription.clone(),
            state.config.clone(),
        ))
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>, Error> {
        let mut out = Vec::new();
        for (name, arn, fifo) in self.shared.topic_arns().await? {
            let state = self.shared.topic_state(name.clone(), arn, fifo).await?;
            let subscriptions = self.topic_subscriptions(&state).await?;
            out.push(TopicInfo::new(name, state.config, subscriptions));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete_topic(&self, topic: &TopicName) -> Result<(), Error> {
        let state = self
            .shared
            .find_topic(topic)
            .await?
            .ok_or_else(|| Error::topic_not_found(topic.as_str()))?;
        for name in self.topic_subscriptions(&state).await? {
            self.shared.forget_subscription(name.as_str());
            if let Some(sub) = self.shared.find_subscription(&name).await? {
                self.remove_subscription(&sub, Some(&state)).await?;
            }
        }
        self.shared
            .sns
            .delete_topic()
            .topic_arn(&state.arn)
            .send()
            .await
            .map_err(|err| to_error(err, &format!("deleting SNS topic `{}`", state.arn)))?;
        self.shared.forget_topic(topic).await;
        Ok(())
    }

    async fn delete_subscription(&self, subscription: &SubscriptionName) -> Result<(), Error> {
        self.shared.forget_subscription(subscription.as_str());
        let state = self
            .shared
            .find_subscription(subscription)
            .await?
            .ok_or_else(|| Error::subscription_not_found(subscription.as_str()))?;
        let topic = self.shared.find_topic(&state.config.topic).await?;
        self.remove_subscription(&state, topic.as_ref()).await
    }

    async fn stats(&self, subscription: &SubscriptionName) -> Result<SubscriptionStats, Error> {
        let state = self.shared.subscription(subscription).await?;
        let counts = |url: String| {
            let sqs = self.shared.sqs.clone();
            async move {
                let out = sqs
                    .get_queue_attributes()
                    .queue_url(&url)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
                    .send()
                    .await;
                let out = match out {
                    Ok(out) => out,
                    Err(err) if is_not_found(&err) => {
                        return Err(Error::subscription_not_found(url));
                    }
                    Err(err) => return Err(to_error(err, &format!("counting `{url}`"))),
                };
                let get = |name: QueueAttributeName| -> u64 {
                    out.attributes()
                        .and_then(|a| a.get(&name))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                Ok::<_, Error>((
                    get(QueueAttributeName::ApproximateNumberOfMessages),
                    get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
                    get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
                ))
            }
        };
        let (visible, hidden, delayed) =
            counts(state.queue_url.clone()).await.inspect_err(|_| {
                self.shared.forget_subscription(subscription.as_str());
            })?;
        let buffered = self
            .shared
            .buffered(subscription)
            .load(Ordering::SeqCst)
            .max(0) as u64;
        let mut stats = SubscriptionStats::default();
        // Received by this handle's pollers but not yet handed out: ready, as on `sluice://`.
        stats.ready = Some(visible + buffered.min(hidden));
        stats.in_flight = Some(hidden.saturating_sub(buffered));
        stats.delayed = Some(delayed);
        if let Some(dlq) = self.dlq_of(&state) {
            let (visible, hidden, delayed) = counts(dlq.to_owned()).await?;
            stats.dead_lettered = Some(visible + hidden + delayed);
        }
        Ok(stats)
    }

    async fn dlq_list(
        &self,
        subscription: &SubscriptionName,
        limit: usize,
    ) -> Result<Vec<DeadLetteredMessage>, Error> {
        let state = self.shared.subscription(subscription).await?;
        let Some(dlq) = self.dlq_of(&state) else {
            return Ok(Vec::new());
        };
        let mut listed = Vec::new();
        let mut receipts = Vec::new();
        let result = async {
            while listed.len() < limit {
                let batch = self
                    .shared
                    .receive_raw(dlq, limit - listed.len(), Duration::from_secs(60))
                    .await?;
                if batch.is_empty() {
                    break;
                }
                for raw in batch {
                    receipts.extend(raw.receipt_handle().map(str::to_owned));
                    let sent = system_number(&raw, MessageSystemAttributeName::SentTimestamp);
                    match decode_raw(&raw) {
                        Ok(incoming) => {
                            listed.push((sent, DeadLetteredMessage::new(incoming.message)))
                        }
                        Err(reason) => {
                            tracing::warn!(queue = dlq, %reason, "undecodable message in a DLQ")
                        }
                    }
                }
            }
            Ok::<_, Error>(())
        }
        .await;
        self.shared.unhide(dlq, receipts).await;
        result?;
        listed.sort_by_key(|(sent, _)| *sent);
        Ok(listed.into_iter().map(|(_, m)| m).collect())
    }

    async fn dlq_redrive(
        &self,
        subscription: &SubscriptionName,
        options: &RedriveOptions,
    ) -> Result<RedriveReport, Error> {
        let state = self.shared.subscription(subscription).await?;
        let mut report = RedriveReport::default();
        report.dry_run = options.dry_run;
        let Some(dlq) = self.dlq_of(&state) else {
            return Ok(report);
        };
        let pause = options
            .rate_per_second
            .map(|rate| Duration::from_secs(1) / rate.max(1));
        let mut skipped = Vec::new();
        let deletes = Batcher::new(self.shared.sqs.clone(), dlq.to_owned(), Kind::Delete);
        let result = async {
            'outer: loop {
                let batch = self
                    .shared
                    .receive_raw(dlq, MAX_BATCH, Duration::from_secs(120))
                    .await?;
                if batch.is_empty() {
                    break;
                }
                let mut rest_of_batch = batch.into_iter();
                while let Some(raw) = rest_of_batch.next() {
                    let receipt = raw.receipt_handle().unwrap_or_default().to_owned();
                    let limit_reached = options.limit.is_some_and(|l| report.moved.len() >= l);
                    let message = match decode_raw(&raw) {
                        Ok(incoming) if !limit_reached && options.selects(&incoming.message) => {
                            incoming.message
                        }
                        _ => {
                            skipped.push(receipt);
                            if limit_reached {
                                skipped.extend(
                                    rest_of_batch
                                        .by_ref()
                                        .filter_map(|m| m.receipt_handle().map(str::to_owned)),
                                );
                                break 'outer;
                            }
                            continue;
                        }
                    };
                    let id = message.id().to_string();
                    if options.dry_run {
                        skipped.push(receipt);
                    } else {
                        let mut message = message;
                        Envelope::strip(&mut message);
                        self.shared
                            .send_to_queue(&state.queue_url, state.fifo, &message, None)
                            .await?;
                        deletes.submit(&receipt, 0).await.map_err(|err| match err {
                            crate::batch::EntryError::LeaseLost => Error::backend(
                                format!("redriving `{id}`: its receipt in `{dlq}` expired"),
                                true,
                            ),
                            crate::batch::EntryError::Failed(err) => err,
                        })?;
                        if let Some(pause) = pause {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    report.moved.push(id);
                }
                if options.limit.is_some_and(|l| report.moved.len() >= l) {
                    break;
                }
            }
            Ok::<_, Error>(())
        }
        .await;
        self.shared.unhide(dlq, skipped).await;
        result.map(|()| report)
    }

    async fn dlq_purge(&self, subscription: &SubscriptionName) -> Result<u64, Error> {
        let state = self.shared.subscription(subscription).await?;
        let Some(dlq) = self.dlq_of(&state) else {
            return Ok(0);
        };
        // Receive and delete rather than PurgeQueue: an exact count, and no 60-second limit
        // between purges.
        let deletes = Batcher::new(self.shared.sqs.clone(), dlq.to_owned(), Kind::Delete);
        let mut purged = 0;
        loop {
            let batch = self
                .shared
                .receive_raw(dlq, MAX_BATCH, Duration::from_secs(60))
                .await?;
            if batch.is_empty() {
                return Ok(purged);
            }
            let receipts: Vec<String> = batch
                .iter()
                .filter_map(|m| m.receipt_handle().map(str::to_owned))
                .collect();
            let results =
                futures::future::join_all(receipts.iter().map(|r| deletes.submit(r, 0))).await;
            purged += results.iter().filter(|r| r.is_ok()).count() as u64;
        }
    }
}

fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() == 0 && secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{d:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up_and_stop_at_the_cap() {
        assert_eq!(whole_seconds(Duration::from_millis(1), MAX_VISIBILITY), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2), MAX_VISIBILITY), 2);
        assert_eq!(
            whole_seconds(Duration::from_millis(2001), MAX_VISIBILITY),
            3
        );
        assert_eq!(
            whole_seconds(Duration::from_secs(86_400), MAX_VISIBILITY),
            43_200
        );
        assert_eq!(whole_seconds(Duration::ZERO, MAX_VISIBILITY), 0);
    }
}
