//! What a passed check reports: counts, the seed, and every delivery of the chaos run.

use std::fmt;

use sluice_core::MessageId;

/// The summary of a check that found nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// The seed the schedule was drawn from; [`Checker::seed`](crate::Checker::seed) or
    /// `SLUICE_CHECK_SEED` replays it.
    pub seed: u64,
    /// Messages checked.
    pub messages: usize,
    /// Deliveries in the chaos run.
    pub deliveries: usize,
    /// Deliveries of a message that had already been handled successfully.
    pub duplicates: usize,
    /// Deliveries crashed at a fault point.
    pub crashes: usize,
    /// Deliveries whose handler returned an error that was not a crash, or panicked.
    pub failures: usize,
    /// Fault points the handler reached when every message was handled once: the places a
    /// crash could be injected. Zero means no crash was tested.
    pub fault_points: usize,
    /// Every delivery of the chaos run, in order.
    pub history: Vec<DeliveryRecord>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "idempotency check passed: {} messages, {} deliveries ({} duplicates, {} crashes, \
             {} failures), seed {}",
            self.messages, self.deliveries, self.duplicates, self.crashes, self.failures, self.seed
        )?;
        if self.fault_points == 0 && self.messages > 0 {
            f.write_str(
                "; the handler reached no fault point, so no crash was tested \
                 (call `Faults::point` inside its transaction)",
            )?;
        }
        Ok(())
    }
}

/// One delivery of the chaos run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryRecord {
    /// Its position in the chaos run, from 1.
    pub number: usize,
    /// The message delivered.
    pub message: MessageId,
    /// The message's index in the slice given to [`Checker::check`](crate::Checker::check).
    pub index: usize,
    /// Whether an earlier delivery of the message had already been handled successfully.
    pub duplicate: bool,
    /// How the handler ended.
    pub outcome: Outcome,
}

impl fmt::Display for DeliveryRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} {}", self.number, self.outcome)?;
        if self.duplicate {
            f.write_str(" (duplicate)")?;
        }
        Ok(())
    }
}

/// How the handler ended one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// It returned `Ok`: the delivery was acked.
    Handled,
    /// The checker crashed it at a fault point; the message was delivered again later.
    Crashed {
        /// The fault point's name.
        point: String,
    },
    /// It returned an error that was not a crash, or panicked; the message was delivered
    /// again later.
    Failed {
        /// The error, as displayed.
        error: String,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Handled => f.write_str("handled"),
            Self::Crashed { point } => write!(f, "crashed at `{point}`"),
            Self::Failed { error } => write!(f, "failed ({error})"),
        }
    }
}
