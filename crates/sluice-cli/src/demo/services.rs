//! The four consuming services of the demo, and the order they consume.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice::runtime::{Context, HandlerError, HandlerResult};

use super::chance;

/// The event the order service publishes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct OrderPlaced {
    pub(crate) order_id: u64,
    pub(crate) customer: String,
    pub(crate) region: String,
    pub(crate) amount_cents: u64,
}

/// The effects the services apply, counted so the demo can reconcile them.
#[derive(Default)]
pub(crate) struct Effects {
    pub(crate) emails_sent: AtomicU64,
    /// Charges per order id: must all be exactly 1.
    pub(crate) charges: Mutex<HashMap<u64, u32>>,
    pub(crate) revenue_by_region: Mutex<HashMap<String, u64>>,
    pub(crate) shipments: AtomicU64,
    pub(crate) downstream_failures: AtomicU64,
}

/// email: sends a confirmation (fast; the subscription is rate-limited instead).
pub(crate) async fn send_email(effects: Arc<Effects>, _order: OrderPlaced) -> HandlerResult {
    tokio::time::sleep(Duration::from_millis(1)).await;
    effects.emails_sent.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// billing: charges the customer. Not naturally idempotent: the idempotency store is what
/// keeps a redelivered order from being charged twice.
pub(crate) async fn charge(effects: Arc<Effects>, order: OrderPlaced) -> HandlerResult {
    tokio::time::sleep(Duration::from_millis(20)).await;
    *effects
        .charges
        .lock()
        .expect("charges")
        .entry(order.order_id)
        .or_default() += 1;
    Ok(())
}

/// analytics: a consumer added without touching the producer (fan-out).
pub(crate) async fn record_sale(effects: Arc<Effects>, order: OrderPlaced) -> HandlerResult {
    tokio::time::sleep(Duration::from_millis(10)).await;
    *effects
        .revenue_by_region
        .lock()
        .expect("revenue")
        .entry(order.region)
        .or_default() += order.amount_cents;
    Ok(())
}

/// shipping: calls a downstream that fails 30 % of the time (decided by the seed, the order
/// and the attempt, so runs are reproducible).
pub(crate) async fn ship(
    effects: Arc<Effects>,
    seed: u64,
    order: OrderPlaced,
    ctx: Context,
) -> HandlerResult {
    tokio::time::sleep(Duration::from_millis(20)).await;
    let salt = format!("downstream-{}", ctx.attempt());
    if chance(seed, ctx.id(), &salt) < 0.30 {
        effects.downstream_failures.fetch_add(1, Ordering::Relaxed);
        return Err(HandlerError::transient(format!(
            "carrier API returned 503 for order {}",
            order.order_id
        )));
    }
    effects.shipments.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
