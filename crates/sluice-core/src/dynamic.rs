//! Type-erased backends: choose one from a URL at run time.
//!
//! The traits use native `async fn`, so they are not object safe. This module wraps any
//! [`Backend`] in [`DynBackend`] (and its publisher, subscriber and delivery in the `Dyn*`
//! types), boxing each future. The `Dyn*` types implement the same traits, so everything
//! written against the traits (the runtime, the conformance suite) works on both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::capabilities::Capabilities;
use crate::config::{SubscriptionConfig, TopicConfig};
use crate::delivery::{Delivery, Subscriber, VerbError, VerbResult};
use crate::envelope::DeadLetterReason;
use crate::error::Result;
use crate::idempotency::{boxed, BoxFuture};
use crate::jobs::JobStore;
use crate::limit::LimiterStore;
use crate::message::Message;
use crate::name::{Naming, SubscriptionName, TopicName};
use crate::ops::{
    DeadLetteredMessage, RedriveOptions, RedriveReport, SubscriptionInfo, SubscriptionStats,
    TopicInfo,
};
use crate::publisher::{PublishReceipt, Publisher};

// ---- the private object-safe mirrors -------------------------------------------------

trait ErasedBackend: Send + Sync {
    fn capabilities(&self) -> &Capabilities;
    fn naming(&self) -> &Naming;
    fn publisher(&self) -> BoxFuture<'_, Result<DynPublisher>>;
    fn subscribe<'a>(&'a self, s: &'a SubscriptionName) -> BoxFuture<'a, Result<DynSubscriber>>;
    fn ensure_topic<'a>(
        &'a self,
        t: &'a TopicName,
        c: &'a TopicConfig,
    ) -> BoxFuture<'a, Result<()>>;
    fn ensure_subscription<'a>(
        &'a self,
        s: &'a SubscriptionName,
        c: &'a SubscriptionConfig,
    ) -> BoxFuture<'a, Result<()>>;
    fn describe_topic<'a>(&'a self, t: &'a TopicName) -> BoxFuture<'a, Result<TopicInfo>>;
    fn describe_subscription<'a>(
        &'a self,
        s: &'a SubscriptionName,
    ) -> BoxFuture<'a, Result<SubscriptionInfo>>;
    fn list_topics(&self) -> BoxFuture<'_, Result<Vec<TopicInfo>>>;
    fn delete_topic<'a>(&'a self, t: &'a TopicName) -> BoxFuture<'a, Result<()>>;
    fn delete_subscription<'a>(&'a self, s: &'a SubscriptionName) -> BoxFuture<'a, Result<()>>;
    fn stats<'a>(&'a self, s: &'a SubscriptionName) -> BoxFuture<'a, Result<SubscriptionStats>>;
    fn dlq_list<'a>(
        &'a self,
        s: &'a SubscriptionName,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetteredMessage>>>;
    fn dlq_redrive<'a>(
        &'a self,
        s: &'a SubscriptionName,
        o: &'a RedriveOptions,
    ) -> BoxFuture<'a, Result<RedriveReport>>;
    fn dlq_purge<'a>(&'a self, s: &'a SubscriptionName) -> BoxFuture<'a, Result<u64>>;
    fn job_store(&self) -> Option<Arc<dyn JobStore>>;
}

impl<B: Backend> ErasedBackend for B {
    fn capabilities(&self) -> &Capabilities {
        Backend::capabilities(self)
    }
    fn naming(&self) -> &Naming {
        Backend::naming(self)
    }
    fn publisher(&self) -> BoxFuture<'_, Result<DynPublisher>> {
        boxed(async move { Ok(DynPublisher::new(Backend::publisher(self).await?)) })
    }
    fn subscribe<'a>(&'a self, s: &'a SubscriptionName) -> BoxFuture<'a, Result<DynSubscriber>> {
        boxed(async move { Ok(DynSubscriber::new(Backend::subscribe(self, s).await?)) })
    }
    fn ensure_topic<'a>(
        &'a self,
        t: &'a TopicName,
        c: &'a TopicConfig,
    ) -> BoxFuture<'a, Result<()>> {
        boxed(Backend::ensure_topic(self, t, c))
    }
    fn ensure_subscription<'a>(
        &'a self,
        s: &'a SubscriptionName,
        c: &'a SubscriptionConfig,
    ) -> BoxFuture<'a, Result<()>> {
        boxed(Backend::ensure_subscription(self, s, c))
    }
    fn describe_topic<'a>(&'a self, t: &'a TopicName) -> BoxFuture<'a, Result<TopicInfo>> {
        boxed(Backend::describe_topic(self, t))
    }
    fn describe_subscription<'a>(
        &'a self,
        s: &'a SubscriptionName,
    ) -> BoxFuture<'a, Result<SubscriptionInfo>> {
        boxed(Backend::describe_subscription(self, s))
    }
    fn list_topics(&self) -> BoxFuture<'_, Result<Vec<TopicInfo>>> {
        boxed(Backend::list_topics(self))
    }
    fn delete_topic<'a>(&'a self, t: &'a TopicName) -> BoxFuture<'a, Result<()>> {
        boxed(Backend::delete_topic(self, t))
    }
    fn delete_subscription<'a>(&'a self, s: &'a SubscriptionName) -> BoxFuture<'a, Result<()>> {
        boxed(Backend::delete_subscription(self, s))
    }
    fn stats<'a>(&'a self, s: &'a SubscriptionName) -> BoxFuture<'a, Result<SubscriptionStats>> {
        boxed(Backend::stats(self, s))
    }
    fn dlq_list<'a>(
        &'a self,
        s: &'a SubscriptionName,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetteredMessage>>> {
        boxed(Backend::dlq_list(self, s, limit))
    }
    fn dlq_redrive<'a>(
        &'a self,
        s: &'a SubscriptionName,
        o: &'a RedriveOptions,
    ) -> BoxFuture<'a, Result<RedriveReport>> {
        boxed(Backend::dlq_redrive(self, s, o))
    }
    fn dlq_purge<'a>(&'a self, s: &'a SubscriptionName) -> BoxFuture<'a, Result<u64>> {
        boxed(Backend::dlq_purge(self, s))
    }
    fn job_store(&self) -> Option<Arc<dyn JobStore>> {
        Backend::job_store(self)
    }
}

trait ErasedPublisher: Send + Sync {
    fn publish<'a>(&'a self, t: &'a TopicName, m: Message)
        -> BoxFuture<'a, Result<PublishReceipt>>;
    fn publish_batch<'a>(
        &'a self,
        t: &'a TopicName,
        m: Vec<Message>,
    ) -> BoxFuture<'a, Vec<Result<PublishReceipt>>>;
    fn close(&self) -> BoxFuture<'_, Result<()>>;
}

impl<P: Publisher> ErasedPublisher for P {
    fn publish<'a>(
        &'a self,
        t: &'a TopicName,
        m: Message,
    ) -> BoxFuture<'a, Result<PublishReceipt>> {
        boxed(Publisher::publish(self, t, m))
    }
    fn publish_batch<'a>(
        &'a self,
        t: &'a TopicName,
        m: Vec<Message>,
    ) -> BoxFuture<'a, Vec<Result<PublishReceipt>>> {
        boxed(Publisher::publish_batch(self, t, m))
    }
    fn close(&self) -> BoxFuture<'_, Result<()>> {
        boxed(Publisher::close(self))
    }
}

trait ErasedSubscriber: Send + Sync {
    fn subscription(&self) -> &SubscriptionName;
    fn config(&self) -> &SubscriptionConfig;
    fn receive(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<DynDelivery>>>;
    fn close(&self) -> BoxFuture<'_, Result<()>>;
    fn limiter(&self) -> Option<Arc<dyn LimiterStore>>;
}

impl<S: Subscriber> ErasedSubscriber for S {
    fn limiter(&self) -> Option<Arc<dyn LimiterStore>> {
        Subscriber::limiter(self)
    }
    fn subscription(&self) -> &SubscriptionName {
        Subscriber::subscription(self)
    }
    fn config(&self) -> &SubscriptionConfig {
        Subscriber::config(self)
    }
    fn receive(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<DynDelivery>>> {
        boxed(async move {
            let deliveries = Subscriber::receive(self, max, wait).await?;
            Ok(deliveries.into_iter().map(DynDelivery::new).collect())
        })
    }
    fn close(&self) -> BoxFuture<'_, Result<()>> {
        boxed(Subscriber::close(self))
    }
}

type ErasedVerb =
    BoxFuture<'static, std::result::Result<(), (crate::Error, Box<dyn ErasedDelivery>)>>;

trait ErasedDelivery: Send + Sync {
    fn message(&self) -> &Message;
    fn attempt(&self) -> u32;
    fn lease_deadline(&self) -> Instant;
    fn topic(&self) -> &TopicName;
    fn subscription(&self) -> &SubscriptionName;
    fn ack(self: Box<Self>) -> ErasedVerb;
    fn retry(self: Box<Self>, after: Duration) -> ErasedVerb;
    fn release(self: Box<Self>) -> ErasedVerb;
    fn dead_letter(self: Box<Self>, reason: DeadLetterReason) -> ErasedVerb;
    fn extend_lease(&mut self, lease: Duration) -> BoxFuture<'_, Result<()>>;
}

fn erase_verb<D: Delivery>(
    verb: impl std::future::Future<Output = VerbResult<D>> + Send + 'static,
) -> ErasedVerb {
    boxed(async move {
        verb.await
            .map_err(|e| (e.error, Box::new(e.delivery) as Box<dyn ErasedDelivery>))
    })
}

impl<D: Delivery> ErasedDelivery for D {
    fn message(&self) -> &Message {
        Delivery::message(self)
    }
    fn attempt(&self) -> u32 {
        Delivery::attempt(self)
    }
    fn lease_deadline(&self) -> Instant {
        Delivery::lease_deadline(self)
    }
    fn topic(&self) -> &TopicName {
        Delivery::topic(self)
    }
    fn subscription(&self) -> &SubscriptionName {
        Delivery::subscription(self)
    }
    fn ack(self: Box<Self>) -> ErasedVerb {
        erase_verb(Delivery::ack(*self))
    }
    fn retry(self: Box<Self>, after: Duration) -> ErasedVerb {
        erase_verb(Delivery::retry(*self, after))
    }
    fn release(self: Box<Self>) -> ErasedVerb {
        erase_verb(Delivery::release(*self))
    }
    fn dead_letter(self: Box<Self>, reason: DeadLetterReason) -> ErasedVerb {
        erase_verb(Delivery::dead_letter(*self, reason))
    }
    fn extend_lease(&mut self, lease: Duration) -> BoxFuture<'_, Result<()>> {
        boxed(Delivery::extend_lease(self, lease))
    }
}

// ---- the public wrappers -----------------------------------------------------------

/// Any backend, chosen at run time. Cheap to clone.
#[derive(Clone)]
pub struct DynBackend(Arc<dyn ErasedBackend>);

impl std::fmt::Debug for DynBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DynBackend")
            .field(&self.0.capabilities().backend)
            .finish()
    }
}

impl DynBackend {
    /// Erases a backend.
    pub fn new<B: Backend>(backend: B) -> Self {
        Self(Arc::new(backend))
    }
}

/// Any backend's publisher. Cheap to clone.
#[derive(Clone)]
pub struct DynPublisher(Arc<dyn ErasedPublisher>);

impl DynPublisher {
    /// Erases a publisher.
    pub fn new<P: Publisher>(publisher: P) -> Self {
        Self(Arc::new(publisher))
    }
}

/// Any backend's subscriber. Cheap to clone.
#[derive(Clone)]
pub struct DynSubscriber(Arc<dyn ErasedSubscriber>);

impl DynSubscriber {
    /// Erases a subscriber.
    pub fn new<S: Subscriber>(subscriber: S) -> Self {
        Self(Arc::new(subscriber))
    }
}

/// Any backend's delivery.
pub struct DynDelivery(Box<dyn ErasedDelivery>);

impl DynDelivery {
    /// Erases a delivery.
    pub fn new<D: Delivery>(delivery: D) -> Self {
        Self(Box::new(delivery))
    }
}

impl std::fmt::Debug for DynDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynDelivery")
            .field("id", self.0.message().id())
            .field("attempt", &self.0.attempt())
            .finish()
    }
}

impl Backend for DynBackend {
    type Publisher = DynPublisher;
    type Subscriber = DynSubscriber;
    fn capabilities(&self) -> &Capabilities {
        self.0.capabilities()
    }
    fn naming(&self) -> &Naming {
        self.0.naming()
    }
    async fn publisher(&self) -> Result<DynPublisher> {
        self.0.publisher().await
    }
    async fn subscribe(&self, s: &SubscriptionName) -> Result<DynSubscriber> {
        self.0.subscribe(s).await
    }
    async fn ensure_topic(&self, t: &TopicName, c: &TopicConfig) -> Result<()> {
        self.0.ensure_topic(t, c).await
    }
    async fn ensure_subscription(
        &self,
        s: &SubscriptionName,
        c: &SubscriptionConfig,
    ) -> Result<()> {
        self.0.ensure_subscription(s, c).await
    }
    async fn describe_topic(&self, t: &TopicName) -> Result<TopicInfo> {
        self.0.describe_topic(t).await
    }
    async fn describe_subscription(&self, s: &SubscriptionName) -> Result<SubscriptionInfo> {
        self.0.describe_subscription(s).await
    }
    async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        self.0.list_topics().await
    }
    async fn delete_topic(&self, t: &TopicName) -> Result<()> {
        self.0.delete_topic(t).await
    }
    async fn delete_subscription(&self, s: &SubscriptionName) -> Result<()> {
        self.0.delete_subscription(s).await
    }
    async fn stats(&self, s: &SubscriptionName) -> Result<SubscriptionStats> {
        self.0.stats(s).await
    }
    async fn dlq_list(
        &self,
        s: &SubscriptionName,
        limit: usize,
    ) -> Result<Vec<DeadLetteredMessage>> {
        self.0.dlq_list(s, limit).await
    }
    async fn dlq_redrive(&self, s: &SubscriptionName, o: &RedriveOptions) -> Result<RedriveReport> {
        self.0.dlq_redrive(s, o).await
    }
    async fn dlq_purge(&self, s: &SubscriptionName) -> Result<u64> {
        self.0.dlq_purge(s).await
    }
    fn job_store(&self) -> Option<Arc<dyn JobStore>> {
        self.0.job_store()
    }
}

impl Publisher for DynPublisher {
    async fn publish(&self, t: &TopicName, m: Message) -> Result<PublishReceipt> {
        self.0.publish(t, m).await
    }
    async fn publish_batch(&self, t: &TopicName, m: Vec<Message>) -> Vec<Result<PublishReceipt>> {
        self.0.publish_batch(t, m).await
    }
    async fn close(&self) -> Result<()> {
        self.0.close().await
    }
}

impl Subscriber for DynSubscriber {
    type Delivery = DynDelivery;
    fn subscription(&self) -> &SubscriptionName {
        self.0.subscription()
    }
    fn config(&self) -> &SubscriptionConfig {
        self.0.config()
    }
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<DynDelivery>> {
        self.0.receive(max, wait).await
    }
    async fn close(&self) -> Result<()> {
        self.0.close().await
    }
    fn limiter(&self) -> Option<Arc<dyn LimiterStore>> {
        self.0.limiter()
    }
}

fn unerase(
    r: std::result::Result<(), (crate::Error, Box<dyn ErasedDelivery>)>,
) -> VerbResult<DynDelivery> {
    r.map_err(|(error, d)| VerbError::new(error, DynDelivery(d)))
}

impl Delivery for DynDelivery {
    fn message(&self) -> &Message {
        self.0.message()
    }
    fn attempt(&self) -> u32 {
        self.0.attempt()
    }
    fn lease_deadline(&self) -> Instant {
        self.0.lease_deadline()
    }
    fn topic(&self) -> &TopicName {
        self.0.topic()
    }
    fn subscription(&self) -> &SubscriptionName {
        self.0.subscription()
    }
    async fn ack(self) -> VerbResult<Self> {
        unerase(self.0.ack().await)
    }
    async fn retry(self, after: Duration) -> VerbResult<Self> {
        unerase(self.0.retry(after).await)
    }
    async fn release(self) -> VerbResult<Self> {
        unerase(self.0.release().await)
    }
    async fn dead_letter(self, reason: DeadLetterReason) -> VerbResult<Self> {
        unerase(self.0.dead_letter(reason).await)
    }
    async fn extend_lease(&mut self, lease: Duration) -> Result<()> {
        self.0.extend_lease(lease).await
    }
}

// Compile-time checks: the erased layer is object safe, and every wrapper is `Send + Sync`
// so it can cross tasks.
const _: () = {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_all() {
        assert_send_sync::<DynBackend>();
        assert_send_sync::<DynPublisher>();
        assert_send_sync::<DynSubscriber>();
        assert_send_sync::<DynDelivery>();
        let _: Option<&dyn ErasedBackend> = None;
        let _: Option<&dyn ErasedDelivery> = None;
    }
    let _ = assert_all;
};
