//! Walking the chaos run against the clean run.
//!
//! After each chaos delivery (after each batch, for a batch subject) the expected state is
//! the clean run's state after `j` messages, where `j` counts the messages successfully
//! handled so far: the clean run handled them once each, in the order of their first
//! success, so a crash, a failure or a duplicate must leave the state exactly as it found
//! it. A batch's finding names the first delivery of the batch that explains it.

use std::fmt;

use crate::chaos::ChaosRun;
use crate::error::show;
use crate::{DeliveryRecord, Finding, FindingKind, Outcome};

/// The first chaos delivery after which the state differs from the clean run, if any.
/// `clean` holds the clean run's state after its reset, then after each message.
pub(crate) fn first_mismatch<T: PartialEq + fmt::Debug>(
    chaos: &ChaosRun<T>,
    clean: &[T],
    seed: u64,
) -> Option<Finding> {
    let mut handled = 0;
    // Where the current batch began, and the successes before it.
    let (mut batch_start, mut before) = (0, 0);
    for (position, step) in chaos.steps.iter().enumerate() {
        let record = &step.record;
        if record.outcome == Outcome::Handled && !record.duplicate {
            handled += 1;
        }
        let Some(state) = &step.state else {
            continue;
        };
        let batch = &chaos.steps[batch_start..=position];
        let before_batch = before;
        (batch_start, before) = (position + 1, handled);
        let expected = &clean[handled];
        if state == expected {
            continue;
        }
        let first = |keep: &dyn Fn(&DeliveryRecord) -> bool| {
            batch.iter().map(|s| &s.record).find(|r| keep(r))
        };
        let new_success = |r: &DeliveryRecord| r.outcome == Outcome::Handled && !r.duplicate;
        let (kind, blamed) =
            if let Some(r) = first(&new_success).filter(|_| *state == clean[before_batch]) {
                (FindingKind::LostEffect, r)
            } else if let Some(r) = first(&|r| matches!(r.outcome, Outcome::Crashed { .. })) {
                let Outcome::Crashed { point } = &r.outcome else {
                    unreachable!()
                };
                (
                    FindingKind::CrashLeftPartialEffect {
                        point: point.clone(),
                    },
                    r,
                )
            } else if let Some(r) = first(&|r| matches!(r.outcome, Outcome::Failed { .. })) {
                let Outcome::Failed { error } = &r.outcome else {
                    unreachable!()
                };
                (
                    FindingKind::FailureLeftPartialEffect {
                        error: error.clone(),
                    },
                    r,
                )
            } else if let Some(r) = first(&|r| r.outcome == Outcome::Handled && r.duplicate) {
                (FindingKind::DoubleEffect, r)
            } else {
                (
                    FindingKind::WrongEffect,
                    first(&new_success).unwrap_or(record),
                )
            };
        let history = chaos.steps[..=position]
            .iter()
            .filter(|earlier| earlier.record.index == blamed.index)
            .map(|earlier| earlier.record.clone())
            .collect();
        return Some(Finding {
            kind,
            message: blamed.message.clone(),
            delivery: blamed.number,
            deliveries: chaos.steps.len(),
            expected: show(expected),
            actual: show(state),
            seed,
            history,
        });
    }
    None
}
