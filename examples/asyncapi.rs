//! An AsyncAPI 3.0 document of a service's topology with its typed events' payload schemas
//! (derived by `schemars`), for teams in other languages to read and generate clients from.
//! `sluice asyncapi --url URL` prints the same document without the schemas, which only the
//! Rust code that defines the events knows.
//!
//! `cargo run -p sluice-examples --example asyncapi`

use sluice::prelude::*;
use sluice::runtime::asyncapi::AsyncApi;
use sluice::runtime::Event;

/// An order was placed.
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct OrderPlaced {
    /// The order's number.
    order_id: u64,
    /// Its total, in cents.
    amount_cents: u64,
    /// Who placed it.
    customer: String,
}
impl Event for OrderPlaced {
    const TYPE: &'static str = "order.placed";
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let backend = sluice::connect("memory:").await?;
    let orders = TopicName::new("orders")?;
    backend
        .ensure_topic(&orders, &TopicConfig::default())
        .await?;
    backend
        .ensure_subscription(
            &SubscriptionName::new("billing")?,
            &SubscriptionConfig::new(orders.clone()).filter(Filter::new("order.*")?),
        )
        .await?;

    let doc = AsyncApi::from_backend(&backend)
        .await?
        .title("Shop events")
        .event::<OrderPlaced>(&orders)
        .to_json();
    println!("{}", serde_json::to_string_pretty(&doc)?);

    // What another team's generator reads: the event's payload schema on the topic's channel.
    let schema = &doc["components"]["messages"]["orders.order.placed"]["payload"];
    assert_eq!(schema["properties"]["order_id"]["type"], "integer");
    assert_eq!(
        doc["channels"]["orders"]["messages"]["order.placed"]["$ref"],
        "#/components/messages/orders.order.placed"
    );
    assert_eq!(
        doc["operations"]["receive.billing"]["x-sluice-subscription"]["filter"],
        "order.*"
    );
    Ok(())
}
