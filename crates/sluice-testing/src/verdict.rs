//! Walking the chaos run against the clean run.
//!
//! After each chaos delivery the expected state is the clean run's state after `j`
//! messages, where `j` counts the messages successfully handled so far: the clean run
//! handled them once each, in the order of their first success, so a crash, a failure or a
//! duplicate must leave the state exactly as it found it.

use std::fmt;

use crate::chaos::ChaosRun;
use crate::error::show;
use crate::{Finding, FindingKind, Outcome};

/// The first chaos delivery after which the state differs from the clean run, if any.
/// `clean` holds the clean run's state after its reset, then after each message.
pub(crate) fn first_mismatch<T: PartialEq + fmt::Debug>(
    chaos: &ChaosRun<T>,
    clean: &[T],
    seed: u64,
) -> Option<Finding> {
    let mut handled = 0;
    for (position, step) in chaos.steps.iter().enumerate() {
        let record = &step.record;
        let before = handled;
        if record.outcome == Outcome::Handled && !record.duplicate {
            handled += 1;
        }
        let expected = &clean[handled];
        if step.state == *expected {
            continue;
        }
        let kind = match &record.outcome {
            Outcome::Crashed { point } => FindingKind::CrashLeftPartialEffect {
                point: point.clone(),
            },
            Outcome::Failed { error } => FindingKind::FailureLeftPartialEffect {
                error: error.clone(),
            },
            Outcome::Handled if record.duplicate => FindingKind::DoubleEffect,
            Outcome::Handled if step.state == clean[before] => FindingKind::LostEffect,
            Outcome::Handled => FindingKind::WrongEffect,
        };
        let history = chaos.steps[..=position]
            .iter()
            .filter(|earlier| earlier.record.index == record.index)
            .map(|earlier| earlier.record.clone())
            .collect();
        return Some(Finding {
            kind,
            message: record.message.clone(),
            delivery: record.number,
            deliveries: chaos.steps.len(),
            expected: show(expected),
            actual: show(&step.state),
            seed,
            history,
        });
    }
    None
}
