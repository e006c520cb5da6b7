//! One delivery's task: through its key's gate (a worker with a [`KeyLimit`]), then the
//! pipeline ([`super::process`]), and back to waiting when the handler says the downstream
//! is rate limiting.
//!
//! A delivery waiting its turn gives its handler slot (and its place under an adaptive
//! limit) back, so the worker goes on pulling other keys' messages, and has its lease kept
//! alive; it takes them again to run. At shutdown a waiting delivery is released at once: it
//! never started. One whose lease is lost while it waits is dropped (the broker delivers it
//! again).
//!
//! [`KeyLimit`]: crate::KeyLimit

use std::sync::Arc;
use std::time::Duration;

use sluice_core::Delivery;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::gate::{Gate, Ticket};
use super::process::{self, Throttled};
use super::settle::{self, Verb};
use super::slots::Slot;
use super::Pipeline;
use crate::adaptive::Claim;
use crate::handler::Handler;
use crate::lease::{extend_until_lost, LeaseExtension, Renewal};
use crate::metrics::Labels;
use crate::observe::OutcomeKind;

/// The longest a `rate_limited` answer parks a key (or the worker).
const MAX_THROTTLE: Duration = Duration::from_secs(24 * 3600);

/// What a delivery task shares with the worker.
pub(crate) struct Shared<H> {
    pub(crate) pipeline: Arc<Pipeline<H>>,
    pub(crate) gate: Option<Arc<Gate>>,
    pub(crate) slots: Arc<Semaphore>,
    /// The worker's shutdown: waiting deliveries are released.
    pub(crate) stop: CancellationToken,
    /// The end of the grace period: running handlers are abandoned.
    pub(crate) hard_stop: CancellationToken,
}

/// A delivery's place in its key's queue, taken by the pull loop in the broker's order.
pub(crate) struct Place {
    pub(crate) key: String,
    pub(crate) ticket: Ticket,
}

/// How a wait ended.
enum Waited<T> {
    Got(T),
    Stopped,
    LeaseLost,
}

/// Runs `delivery`, received with `slot` (and `claim`, under an adaptive limit; `global`, a
/// global concurrency bound's slot), to its verb.
pub(crate) async fn run<D: Delivery, H: Handler>(
    shared: Arc<Shared<H>>,
    mut delivery: D,
    slot: OwnedSemaphorePermit,
    mut place: Option<Place>,
    mut claim: Option<Claim>,
    mut global: Option<Slot>,
) {
    let pipeline = &*shared.pipeline;
    let mut slot = Some(slot);
    // Told to wait by the downstream: not deferred, whatever the worker holds.
    let mut again = false;
    let mut first = true;
    loop {
        let mut pass = None;
        if let (Some(gate), Some(Place { key, ticket })) = (&shared.gate, &place) {
            match gate.try_turn(key, *ticket).await {
                Ok(p) => pass = Some(p),
                Err(_) => {
                    // A deferral spends an attempt: never a delivery's last.
                    let last = delivery.attempt() >= pipeline.max_attempts;
                    let Some(parked) = gate.park(again || last) else {
                        let after = gate.defer(key, *ticket);
                        let labels = Labels::of(&delivery);
                        let _in_flight = process::InFlight::start(pipeline, labels);
                        let kind = OutcomeKind::Deferred { after };
                        return settle::settle(pipeline, delivery, Verb::Retry(after), kind).await;
                    };
                    slot = None;
                    claim = None;
                    if let Some(global) = &mut global {
                        global.give_back().await;
                    }
                    let turn = wait(&shared, &mut delivery, gate.wait(key, *ticket)).await;
                    drop(parked);
                    match turn {
                        Waited::Got(p) => pass = Some(p),
                        Waited::Stopped => {
                            gate.leave(key, *ticket);
                            return settle::release_unhandled(pipeline, delivery).await;
                        }
                        Waited::LeaseLost => {
                            gate.leave(key, *ticket);
                            return;
                        }
                    }
                }
            }
        }
        // A global slot given back while waiting, taken again first (holding no handler
        // slot meanwhile), then a handler slot (and a place under the adaptive limit).
        if let Some(global) = &mut global {
            match wait(&shared, &mut delivery, global.take()).await {
                Waited::Got(()) => {}
                Waited::Stopped => return settle::release_unhandled(pipeline, delivery).await,
                Waited::LeaseLost => return,
            }
        }
        let running = match slot.take() {
            Some(s) => s,
            None => {
                match wait(&shared, &mut delivery, shared.slots.clone().acquire_owned()).await {
                    Waited::Got(s) => s.expect("slots never close"),
                    Waited::Stopped => return settle::release_unhandled(pipeline, delivery).await,
                    Waited::LeaseLost => return,
                }
            }
        };
        if claim.is_none() {
            claim = pipeline.adaptive.as_ref().and_then(|a| a.claim(1).pop());
        }
        let Some(Throttled {
            delivery: back,
            after,
        }) = process::process(pipeline, delivery, shared.hard_stop.clone(), first).await
        else {
            return;
        };
        first = false;
        delivery = back;
        let until = Instant::now() + after.clamp(Duration::from_millis(1), MAX_THROTTLE);
        match (&shared.gate, &mut place) {
            (Some(gate), Some(place)) => {
                // Blocked before its pass is given back: nothing of the key slips in between.
                gate.block(&place.key, until);
                drop(pass);
                place.ticket = gate.ticket(&place.key, Some(place.ticket));
                again = true;
                drop(running);
            }
            _ => {
                drop(pass);
                drop(running);
                claim = None;
                if let Some(global) = &mut global {
                    global.give_back().await;
                }
                // No key to park: the whole worker waits (as long as any 429 says).
                pipeline.pause_until(until);
                let paused = async {
                    while let Some(until) = pipeline.paused() {
                        tokio::time::sleep_until(until).await;
                    }
                };
                match wait(&shared, &mut delivery, paused).await {
                    Waited::Got(()) => {}
                    Waited::Stopped => return settle::release_unhandled(pipeline, delivery).await,
                    Waited::LeaseLost => return,
                }
            }
        }
    }
}

/// Waits for `what` while keeping the delivery's lease alive; stopped by the worker's
/// shutdown or the lease's loss.
async fn wait<D: Delivery, H, T>(
    shared: &Shared<H>,
    delivery: &mut D,
    what: impl std::future::Future<Output = T>,
) -> Waited<T> {
    tokio::select! {
        biased;
        _ = shared.stop.cancelled() => Waited::Stopped,
        got = what => Waited::Got(got),
        () = hold(&shared.pipeline, delivery) => Waited::LeaseLost,
    }
}

/// Keeps a waiting delivery's lease alive (unless lease extension is off); returns when the
/// lease is lost.
async fn hold<D: Delivery, H>(pipeline: &Pipeline<H>, delivery: &mut D) {
    if pipeline.lease_extension == LeaseExtension::Off {
        tokio::time::sleep_until(Instant::from_std(delivery.lease_deadline())).await;
        tracing::debug!(id = %delivery.message().id(), "the lease of a waiting delivery ran out (lease extension is off)");
        return;
    }
    let labels = Labels::of(delivery);
    let renewal = Renewal {
        lease: pipeline.lease,
        claim: None,
        labels: &labels,
        stats: &pipeline.stats,
    };
    extend_until_lost(delivery, renewal).await;
}
