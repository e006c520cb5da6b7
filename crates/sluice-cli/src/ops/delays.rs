//! `sluice delays`: runs the delay movers of Kafka topics, for deployments where no Sluice
//! subscriber or long-lived Sluice publisher of a topic runs (`docs/kafka.md`, "Delayed
//! messages"). The other backends' brokers deliver delayed messages by themselves.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context};
use sluice::kafka::{DelayMovers, KafkaBackend, KafkaOptions};
use sluice::{Backend, BackendKind, BackendUrl, TopicName};

use super::Target;

/// How often the topic list is read again when no topic was named.
const RELIST_EVERY: Duration = Duration::from_secs(30);

/// Arguments of `sluice delays`.
#[derive(Debug, clap::Args)]
pub(crate) struct DelaysArgs {
    #[command(flatten)]
    target: Target,
    /// Topics whose delayed messages to move (default: every topic, new ones included).
    topics: Vec<String>,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = crate::duration::parse)]
    duration: Option<Duration>,
}

pub(crate) async fn run(args: DelaysArgs) -> anyhow::Result<()> {
    let target = &args.target;
    let url = BackendUrl::parse(target.url())?;
    let BackendKind::Kafka { brokers } = &url.kind else {
        bail!(
            "{} delivers delayed messages by itself: only Kafka needs `sluice delays`",
            url.kind.scheme()
        );
    };
    let options = KafkaOptions::new(brokers.join(",")).namespace(url.namespace.clone());
    let backend = KafkaBackend::connect(options)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let named: Vec<TopicName> = args
        .topics
        .iter()
        .map(TopicName::new)
        .collect::<Result<_, _>>()?;
    let stop = async {
        match args.duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    let mut running: Vec<DelayMovers> = Vec::new();
    let mut moved: BTreeSet<TopicName> = BTreeSet::new();
    loop {
        let topics = if named.is_empty() {
            let listed = backend
                .list_topics()
                .await
                .with_context(|| target.failed("listing topics"))?;
            listed.into_iter().map(|t| t.name).collect()
        } else {
            named.clone()
        };
        let new: Vec<TopicName> = topics.into_iter().filter(|t| !moved.contains(t)).collect();
        if !new.is_empty() {
            let movers = backend
                .move_delays(&new)
                .await
                .with_context(|| target.failed("starting the delay movers"))?;
            for topic in movers.topics() {
                eprintln!("moving the delayed messages of `{topic}`");
            }
            moved.extend(new);
            running.push(movers);
        }
        if !named.is_empty() {
            (&mut stop).await;
            break;
        }
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(RELIST_EVERY) => {}
        }
    }
    futures::future::join_all(running.into_iter().map(DelayMovers::close)).await;
    eprintln!("stopped: every delay mover committed and left its group");
    Ok(())
}
