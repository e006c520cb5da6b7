//! One delivery's task: through its key's gate (a worker with a [`KeyLimit`]), then the
//! pipeline ([`super::process`]), and back to waiting when the handler says the downstream
//! is rate limiting.
//!
//! A delivery waiting its turn gives its concurrency slot back (the worker goes on pulling
//! other keys' messages) and has its lease kept alive; it takes a slot again to run. At
//! shutdown a waiting delivery is released at once: it never started.
//!
//! [`KeyLimit`]: crate::KeyLimit

use std::sync::Arc;

use sluice_core::Delivery;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::gate::{Entered, Gate};
use super::process::{self, Throttled};
use super::settle::{self, Verb};
use super::Pipeline;
use crate::handler::Handler;
use crate::lease::{keep_alive, Renewal};
use crate::metrics::Labels;
use crate::observe::OutcomeKind;

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

/// Runs `delivery`, received with `slot`, to its verb.
pub(crate) async fn run<D: Delivery, H: Handler>(
    shared: Arc<Shared<H>>,
    mut delivery: D,
    slot: OwnedSemaphorePermit,
) {
    let pipeline = &*shared.pipeline;
    let key = shared
        .gate
        .as_ref()
        .and_then(|gate| gate.key_of(delivery.message()));
    let mut slot = Some(slot);
    // Told to wait by the downstream: back at the front of its key's queue.
    let mut front = false;
    loop {
        let mut pass = None;
        if let (Some(gate), Some(key)) = (&shared.gate, &key) {
            match gate.enter(key, front).await {
                Entered::Pass(p) => pass = Some(p),
                Entered::Queued(ticket) => {
                    if !front && gate.full() && delivery.attempt() < pipeline.max_attempts {
                        let after = gate.defer(key, ticket);
                        let labels = Labels::of(&delivery);
                        let _in_flight = process::InFlight::start(pipeline, labels);
                        let kind = OutcomeKind::Deferred { after };
                        return settle::settle(pipeline, delivery, Verb::Retry(after), kind).await;
                    }
                    slot = None;
                    let parked = gate.parked();
                    let turn = tokio::select! {
                        biased;
                        _ = shared.stop.cancelled() => None,
                        p = gate.wait(key, ticket) => Some(p),
                        _ = hold(pipeline, &mut delivery) => unreachable!("hold never completes"),
                    };
                    drop(parked);
                    match turn {
                        Some(p) => pass = Some(p),
                        None => {
                            gate.leave(key, ticket);
                            return settle::release_unhandled(pipeline, delivery).await;
                        }
                    }
                }
            }
        }
        // A slot to run in, like every other delivery.
        let running = match slot.take() {
            Some(s) => s,
            None => {
                let taken = tokio::select! {
                    biased;
                    _ = shared.stop.cancelled() => None,
                    s = shared.slots.clone().acquire_owned() => Some(s.expect("slots never close")),
                    _ = hold(pipeline, &mut delivery) => unreachable!("hold never completes"),
                };
                match taken {
                    Some(s) => s,
                    None => return settle::release_unhandled(pipeline, delivery).await,
                }
            }
        };
        let Some(Throttled {
            delivery: back,
            after,
        }) = process::process(pipeline, delivery, shared.hard_stop.clone()).await
        else {
            return;
        };
        delivery = back;
        drop(pass);
        drop(running);
        let until = Instant::now() + after;
        match (&shared.gate, &key) {
            (Some(gate), Some(key)) => {
                gate.block(key, until);
                front = true;
            }
            _ => {
                // No key to park: the whole worker waits.
                pipeline.pause_until(until);
                let waited = tokio::select! {
                    biased;
                    _ = shared.stop.cancelled() => false,
                    _ = tokio::time::sleep_until(until) => true,
                    _ = hold(pipeline, &mut delivery) => unreachable!("hold never completes"),
                };
                if !waited {
                    return settle::release_unhandled(pipeline, delivery).await;
                }
            }
        }
    }
}

/// Keeps a waiting delivery's lease alive. Never completes.
async fn hold<D: Delivery, H>(pipeline: &Pipeline<H>, delivery: &mut D) {
    let labels = Labels::of(delivery);
    let renewal = Renewal {
        lease: pipeline.lease,
        claim: None,
        labels: &labels,
        stats: &pipeline.stats,
    };
    keep_alive(delivery, renewal).await;
}
