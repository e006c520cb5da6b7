//! What operators see of a worker and say to it, through the flags of its limiter
//! (`LimiterStore::set_flag`): `sluice pause SUBSCRIPTION` sets `pause:<subscription>` and every
//! worker of the subscription stops pulling within [`CONTROL_EVERY`] (in-flight deliveries
//! finish); `sluice resume` removes it. A worker with a circuit breaker writes its state
//! to `circuit:<subscription>:<worker>` for `sluice stats`, kept alive while it runs.
//!
//! A worker whose backend keeps no limiter and that was given none does neither (it has
//! nothing every operator reaches); one whose limiter keeps no flags (the SQL limiter)
//! says so once at debug level and stops asking.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::limit::{circuit_flags, pause_flag, LimiterStore};

use crate::breaker::Breaker;

/// How often a worker reads its pause flag (and writes its circuit state).
pub const CONTROL_EVERY: Duration = Duration::from_secs(2);

/// How long a worker's circuit state stays listed after its last write.
const CIRCUIT_TTL: Duration = Duration::from_secs(30);

pub(crate) struct Control {
    pub(crate) store: Arc<dyn LimiterStore>,
    pub(crate) subscription: String,
    pub(crate) worker: String,
    pub(crate) breaker: Option<Arc<Breaker>>,
    /// Set while an operator's pause is in force.
    pub(crate) paused: AtomicBool,
}

impl Control {
    /// Reads the pause flag and writes the circuit state every [`CONTROL_EVERY`], until
    /// dropped (aborted).
    pub(crate) async fn run(&self) {
        loop {
            tokio::time::sleep(CONTROL_EVERY).await;
            if !self.refresh().await {
                return;
            }
        }
    }

    /// Reads the pause flag and writes the circuit state once; `false`: the limiter keeps
    /// no flags (nothing more to do).
    pub(crate) async fn refresh(&self) -> bool {
        let key = pause_flag(&self.subscription);
        let circuit = format!("{}{}", circuit_flags(&self.subscription), self.worker);
        {
            match self.store.flags(&key).await {
                Ok(found) => {
                    let paused = found.iter().any(|(k, _)| *k == key);
                    if self.paused.swap(paused, Ordering::Relaxed) != paused {
                        if paused {
                            tracing::info!(subscription = %self.subscription, "paused by an operator: nothing is pulled until `sluice resume`");
                        } else {
                            tracing::info!(subscription = %self.subscription, "resumed by an operator");
                        }
                    }
                }
                Err(sluice_core::Error::Unsupported(why)) => {
                    tracing::debug!(subscription = %self.subscription, %why, "the limiter keeps no flags: no operator pause, no circuit state in `sluice stats`");
                    return false;
                }
                Err(err) => {
                    tracing::warn!(subscription = %self.subscription, %err, "could not read the pause flag");
                }
            }
            if let Some(breaker) = &self.breaker {
                let state = breaker.state().name();
                if let Err(err) = self
                    .store
                    .set_flag(&circuit, Some(state), Some(CIRCUIT_TTL))
                    .await
                {
                    tracing::debug!(subscription = %self.subscription, %err, "could not write the circuit state");
                }
            }
        }
        true
    }

    /// Whether an operator's pause is in force.
    pub(crate) fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Removes this worker's circuit state (it stopped).
    pub(crate) async fn forget(&self) {
        if self.breaker.is_some() {
            let circuit = format!("{}{}", circuit_flags(&self.subscription), self.worker);
            let _ = self.store.set_flag(&circuit, None, None).await;
        }
    }
}

/// Reads the pause flag once (before the first pull) and, when the store keeps flags, starts
/// the task that follows it while the worker runs (aborted when dropped).
pub(crate) async fn start(control: Option<Arc<Control>>) -> Option<super::slots::AbortOnDrop> {
    let control = control?;
    if !control.refresh().await {
        return None;
    }
    Some(super::slots::AbortOnDrop(tokio::spawn(async move {
        control.run().await;
    })))
}
