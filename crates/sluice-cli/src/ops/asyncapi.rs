//! `sluice asyncapi`: prints the AsyncAPI 3.0 document of a backend's topology (topics,
//! subscriptions with their filters, dead-letter queues, the reserved headers), for teams in
//! other languages to read and to generate clients from.

use anyhow::Context;
use sluice::runtime::asyncapi::AsyncApi;
use sluice::Backend;

use super::Target;

/// Arguments of `sluice asyncapi`.
#[derive(Debug, clap::Args)]
pub(crate) struct AsyncApiArgs {
    #[command(flatten)]
    target: Target,
    /// The document's title.
    #[arg(long, default_value = "Sluice topology")]
    title: String,
}

pub(crate) async fn run(args: AsyncApiArgs) -> anyhow::Result<()> {
    let target = &args.target;
    let backend = target.connect().await?;
    let doc = AsyncApi::from_backend(&backend)
        .await
        .with_context(|| target.failed("reading the topology"))?
        .title(args.title)
        // Not the URL: it may hold a token or a password, and this document is shared.
        .description(format!(
            "The topics and subscriptions of a Sluice backend ({}).",
            backend.capabilities().backend
        ));
    println!("{}", serde_json::to_string_pretty(&doc.to_json())?);
    Ok(())
}
