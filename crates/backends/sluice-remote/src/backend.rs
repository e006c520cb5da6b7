//! [`RemoteBackend`]: the contract over the network, each call one request to `sluice serve`.

use std::sync::Arc;

use sluice_core::{
    Backend, Capabilities, DeadLetteredMessage, Error, Namespace, Naming, RedriveOptions,
    RedriveReport, SubscriptionConfig, SubscriptionInfo, SubscriptionName, SubscriptionStats,
    TopicConfig, TopicInfo, TopicName,
};
use sluice_protocol::{convert, Request, Response};

use crate::link::{unexpected, Link, Target};
use crate::publisher::RemotePublisher;
use crate::subscriber::RemoteSubscriber;

/// Options of a remote backend.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RemoteOptions {
    /// Namespace every name is prefixed with (on the server).
    pub namespace: Option<Namespace>,
    /// API token, if the server requires one (default: the `SLUICE_TOKEN` variable).
    pub token: Option<String>,
    /// Speak TLS; `Some(Some(ca))` trusts the CA certificates in that PEM file instead of
    /// the system's roots.
    pub tls: Option<Option<std::path::PathBuf>>,
}

impl RemoteOptions {
    /// Sets the namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: Option<Namespace>) -> Self {
        self.namespace = namespace;
        self
    }

    /// Sets the API token.
    #[must_use]
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Speaks TLS, trusting the CA certificates in `ca` (PEM), or the system's roots.
    #[must_use]
    pub fn tls(mut self, ca: Option<std::path::PathBuf>) -> Self {
        self.tls = Some(ca);
        self
    }
}

/// What the remote backend can do: what the engine does, plus reconnecting.
pub fn capabilities(max_message_size: usize) -> Capabilities {
    let mut caps = Capabilities::full("sluice");
    caps.survives_restart = true;
    caps.reconnects = true;
    caps.max_message_size = max_message_size;
    caps.max_batch = 1000;
    caps
}

/// The `sluice://` backend: a cheap-to-clone handle on one multiplexed connection to
/// `sluice serve`, re-established by itself when it breaks.
#[derive(Clone)]
pub struct RemoteBackend {
    pub(crate) link: Arc<Link>,
    capabilities: Arc<Capabilities>,
    naming: Naming,
}

impl std::fmt::Debug for RemoteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBackend")
            .field("addr", &self.link.addr())
            .finish_non_exhaustive()
    }
}

impl RemoteBackend {
    /// Connects to `sluice serve` at `addr` (`HOST:PORT`). Fails at once if the server cannot
    /// be reached or refuses the client; later breaks are healed by reconnecting.
    pub async fn connect(addr: &str, options: RemoteOptions) -> Result<Self, Error> {
        let token = options
            .token
            .or_else(|| std::env::var("SLUICE_TOKEN").ok().filter(|t| !t.is_empty()));
        let tls = match &options.tls {
            Some(ca) => {
                let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let connector = sluice_protocol::tls::connector(ca.as_deref())
                    .map_err(|e| Error::backend(e.to_string(), false))?;
                let name = sluice_protocol::tls::server_name(host)
                    .map_err(|e| Error::backend(e.to_string(), false))?;
                Some((connector, name))
            }
            None => None,
        };
        let link = Arc::new(Link::new(Target {
            addr: addr.to_owned(),
            namespace: options.namespace.as_ref().map(|n| n.as_str().to_owned()),
            token,
            tls,
        }));
        link.conn().await?;
        let max_message_size = link
            .welcome()
            .map(|w| usize::try_from(w.max_message_size).unwrap_or(usize::MAX))
            .unwrap_or(1024 * 1024);
        Ok(Self {
            link,
            capabilities: Arc::new(capabilities(max_message_size)),
            naming: Naming::new(options.namespace).with_separator('-'),
        })
    }

    async fn call(&self, request: Request) -> Result<Response, Error> {
        self.link.call(request).await
    }

    async fn done(&self, request: Request) -> Result<(), Error> {
        match self.call(request).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

fn topic(t: &TopicName) -> String {
    t.as_str().to_owned()
}

fn sub(s: &SubscriptionName) -> String {
    s.as_str().to_owned()
}

impl Backend for RemoteBackend {
    type Publisher = RemotePublisher;
    type Subscriber = RemoteSubscriber;

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn naming(&self) -> &Naming {
        &self.naming
    }

    async fn publisher(&self) -> Result<RemotePublisher, Error> {
        Ok(RemotePublisher::new(
            self.link.clone(),
            self.capabilities.clone(),
        ))
    }

    async fn subscribe(&self, subscription: &SubscriptionName) -> Result<RemoteSubscriber, Error> {
        RemoteSubscriber::open(self.link.clone(), subscription.clone()).await
    }

    async fn ensure_topic(&self, t: &TopicName, config: &TopicConfig) -> Result<(), Error> {
        self.done(Request::EnsureTopic {
            topic: topic(t),
            config: convert::topic_config_to_wire(config),
        })
        .await
    }

    async fn ensure_subscription(
        &self,
        s: &SubscriptionName,
        config: &SubscriptionConfig,
    ) -> Result<(), Error> {
        self.done(Request::EnsureSubscription {
            subscription: sub(s),
            config: convert::subscription_config_to_wire(config),
        })
        .await
    }

    async fn describe_topic(&self, t: &TopicName) -> Result<TopicInfo, Error> {
        match self
            .call(Request::DescribeTopic { topic: topic(t) })
            .await?
        {
            Response::Topic(info) => convert::topic_info_from_wire(&info),
            other => Err(unexpected(other)),
        }
    }

    async fn describe_subscription(&self, s: &SubscriptionName) -> Result<SubscriptionInfo, Error> {
        match self
            .call(Request::DescribeSubscription {
                subscription: sub(s),
            })
            .await?
        {
            Response::Subscription { name, config } => Ok(SubscriptionInfo::new(
                convert::subscription(&name)?,
                convert::subscription_config_from_wire(&config)?,
            )),
            other => Err(unexpected(other)),
        }
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>, Error> {
        match self.call(Request::ListTopics).await? {
            Response::Topics(topics) => topics.iter().map(convert::topic_info_from_wire).collect(),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_topic(&self, t: &TopicName) -> Result<(), Error> {
        self.done(Request::DeleteTopic { topic: topic(t) }).await
    }

    async fn delete_subscription(&self, s: &SubscriptionName) -> Result<(), Error> {
        self.done(Request::DeleteSubscription {
            subscription: sub(s),
        })
        .await
    }

    async fn stats(&self, s: &SubscriptionName) -> Result<SubscriptionStats, Error> {
        match self
            .call(Request::Stats {
                subscription: sub(s),
            })
            .await?
        {
            Response::Stats(stats) => Ok(convert::stats_from_wire(&stats)),
            other => Err(unexpected(other)),
        }
    }

    async fn dlq_list(
        &self,
        s: &SubscriptionName,
        limit: usize,
    ) -> Result<Vec<DeadLetteredMessage>, Error> {
        match self
            .call(Request::DlqList {
                subscription: sub(s),
                limit: limit as u64,
            })
            .await?
        {
            Response::DeadLettered(messages) => messages
                .into_iter()
                .map(|m| convert::message_from_wire(m).map(DeadLetteredMessage::new))
                .collect(),
            other => Err(unexpected(other)),
        }
    }

    async fn dlq_redrive(
        &self,
        s: &SubscriptionName,
        options: &RedriveOptions,
    ) -> Result<RedriveReport, Error> {
        match self
            .call(Request::DlqRedrive {
                subscription: sub(s),
                ids: options.ids.clone(),
                limit: options.limit.map(|l| l as u64),
                dry_run: options.dry_run,
                rate_per_second: options.rate_per_second,
            })
            .await?
        {
            Response::Redriven { moved, dry_run } => {
                let mut report = RedriveReport::default();
                report.moved = moved;
                report.dry_run = dry_run;
                Ok(report)
            }
            other => Err(unexpected(other)),
        }
    }

    async fn dlq_purge(&self, s: &SubscriptionName) -> Result<u64, Error> {
        match self
            .call(Request::DlqPurge {
                subscription: sub(s),
            })
            .await?
        {
            Response::Purged(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// The server's own job store, in this connection's namespace: job status,
    /// cancellations and schedules are durable in the server's data directory, where its
    /// dashboard reads them.
    fn job_store(&self) -> Option<Arc<dyn sluice_core::JobStore>> {
        Some(Arc::new(crate::jobs::RemoteJobStore::new(
            self.link.clone(),
        )))
    }
}
