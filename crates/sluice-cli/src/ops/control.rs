//! `sluice pause SUBSCRIPTION` / `sluice resume SUBSCRIPTION`: an operator stops every worker
//! of a subscription pulling (in-flight deliveries finish), then lets them go on. The pause
//! is a flag in the limiter the workers share: `sluice serve`'s (over `sluice://`), or the
//! Redis given with `--limiter` (RabbitMQ, SQS, Kafka). Workers read it every 2 s.

use std::sync::Arc;

use anyhow::Context;
use sluice::{Backend, DynBackend, LimiterStore, Subscriber, SubscriptionName};

use super::Target;

/// Arguments of `sluice pause` and `sluice resume`.
#[derive(Debug, clap::Args)]
pub(crate) struct ControlArgs {
    #[command(flatten)]
    target: Target,
    /// The subscription.
    subscription: String,
    /// The limiter the workers share when the backend keeps none (RabbitMQ, SQS, Kafka):
    /// `redis://HOST:PORT`.
    #[arg(long)]
    limiter: Option<String>,
}

/// The limiter every worker of the backend shares: `--limiter`'s, or the backend's own
/// (`sluice serve`'s, read through a subscriber of `any`). `None`: there is none (an
/// embedded engine opened by this command is its own process: workers elsewhere cannot
/// share its memory).
pub(crate) async fn shared_limiter(
    target: &Target,
    backend: &DynBackend,
    limiter: Option<&str>,
    any: Option<&SubscriptionName>,
) -> anyhow::Result<Option<Arc<dyn LimiterStore>>> {
    if let Some(url) = limiter {
        let store = sluice::redis::RedisStore::connect(url)
            .await
            .with_context(|| format!("connecting to the limiter {url}"))?;
        return Ok(Some(Arc::new(store)));
    }
    if !target.url().starts_with("sluice://") {
        return Ok(None);
    }
    let Some(any) = any else {
        return Ok(None);
    };
    let subscriber = backend
        .subscribe(any)
        .await
        .with_context(|| target.failed(format!("opening `{any}`")))?;
    let limiter = subscriber.limiter();
    let _ = subscriber.close().await;
    Ok(limiter)
}

pub(crate) async fn run(args: ControlArgs, pause: bool) -> anyhow::Result<()> {
    let target = &args.target;
    let backend = target.connect().await?;
    let name = SubscriptionName::new(args.subscription.clone())?;
    // A name that does not exist is an error, not a flag nobody reads.
    backend
        .stats(&name)
        .await
        .with_context(|| target.failed(format!("reading `{name}`")))?;
    let limiter = shared_limiter(target, &backend, args.limiter.as_deref(), Some(&name))
        .await?
        .with_context(|| {
            format!(
                "`{}` keeps no limiter the workers share: pause and resume go through \
                 `sluice serve` (sluice://HOST:PORT) or, on RabbitMQ, SQS and Kafka, the Redis \
                 named with --limiter redis://HOST:PORT (the one the workers were given)",
                target.url()
            )
        })?;
    let flag = sluice::limit::pause_flag(name.as_str());
    let value = pause.then(|| {
        format!(
            "paused at {}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        )
    });
    limiter
        .set_flag(&flag, value.as_deref(), None)
        .await
        .with_context(|| target.failed(format!("setting the pause of `{name}`")))?;
    if target.json {
        println!(
            "{}",
            serde_json::json!({"subscription": name.as_str(), "paused": pause})
        );
    } else if pause {
        println!(
            "paused `{name}`: its workers stop pulling within {:?} and a receive's poll wait (in-flight deliveries finish); `sluice resume {name}` lets them go on",
            sluice::runtime::CONTROL_EVERY
        );
    } else {
        println!(
            "resumed `{name}`: its workers pull again within {:?}",
            sluice::runtime::CONTROL_EVERY
        );
    }
    Ok(())
}
