//! The chaos run: every message delivered `copies` times in shuffled order, some deliveries
//! crashed at a fault point, the state read after each delivery. A batch subject gets the
//! shuffled deliveries in batches of random size (up to its maximum), and the state is read
//! after each batch.
//!
//! Invariants:
//! - Every draw comes from the one seeded generator, in delivery order, so a deterministic
//!   subject and the same seed give the same run.
//! - A delivery that crashes or fails was not acked: the message is delivered again at a
//!   random later position, as a broker does after a lease runs out. Each of the `copies`
//!   deliveries thus ends with one that is handled (the crash draw never exceeds
//!   `crash_rate < 1`), unless the message fails more than `max_failures` times.

use std::collections::VecDeque;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::Rng;
use sluice_core::{BoxError, Message};

use crate::run::{self, Attempt, Handles};
use crate::{CheckError, DeliveryRecord, Faults, Outcome};

/// The chaos run's settings.
pub(crate) struct Plan<'a> {
    pub(crate) copies: usize,
    pub(crate) crash_rate: f64,
    pub(crate) max_failures: usize,
    /// Fault points each message reached in the counting run, by message index.
    pub(crate) points: &'a [usize],
}

/// One delivery of the chaos run and the state after it: after its batch, on the batch's
/// last delivery (the state between two deliveries of one batch is never seen).
pub(crate) struct Step<T> {
    pub(crate) record: DeliveryRecord,
    pub(crate) state: Option<T>,
}

/// A message that failed more than `max_failures` times; the run stopped there.
pub(crate) struct GaveUp {
    pub(crate) index: usize,
    pub(crate) failures: usize,
    pub(crate) error: BoxError,
}

/// What the chaos run saw.
pub(crate) struct ChaosRun<T> {
    /// The state right after the reset.
    pub(crate) initial: T,
    pub(crate) steps: Vec<Step<T>>,
    pub(crate) gave_up: Option<GaveUp>,
}

impl<T> ChaosRun<T> {
    /// Message indexes in the order of their first successful delivery: the clean run's order.
    pub(crate) fn first_success_order(&self) -> Vec<usize> {
        self.steps
            .iter()
            .filter(|step| step.record.outcome == Outcome::Handled && !step.record.duplicate)
            .map(|step| step.record.index)
            .collect()
    }
}

pub(crate) async fn chaos_run<S: Handles>(
    subject: &mut S,
    messages: &[Message],
    plan: &Plan<'_>,
    rng: &mut SmallRng,
) -> Result<ChaosRun<S::State>, CheckError> {
    let mut schedule: Vec<usize> = (0..messages.len())
        .flat_map(|index| std::iter::repeat_n(index, plan.copies))
        .collect();
    schedule.shuffle(rng);
    let mut queue = VecDeque::from(schedule);

    run::reset(subject).await?;
    let mut run = ChaosRun {
        initial: run::state(subject).await?,
        steps: Vec::with_capacity(queue.len()),
        gave_up: None,
    };
    let mut handled = vec![false; messages.len()];
    let mut failures = vec![0; messages.len()];
    // Fault points a batch of each size reached when it did not crash: a batch reaches fewer
    // than the sum of its messages' counts (those include the per-batch points once each).
    let mut reached_by_size: std::collections::HashMap<usize, usize> = Default::default();

    while !queue.is_empty() {
        let size = match subject.max_batch().min(queue.len()) {
            1 => 1,
            max => rng.gen_range(1..=max),
        };
        let indexes: Vec<usize> = queue.drain(..size).collect();
        let batch: Vec<Message> = indexes.iter().map(|&i| messages[i].clone()).collect();
        let summed = indexes.iter().map(|&i| plan.points[i]).sum::<usize>();
        let points = match size {
            1 => summed,
            _ => reached_by_size
                .get(&size)
                .copied()
                .unwrap_or(summed)
                .min(summed),
        };
        let crash_at = match points {
            0 => None,
            points => rng
                .gen_bool(plan.crash_rate)
                .then(|| rng.gen_range(1..=points)),
        };
        let faults = Faults::crashing_at(crash_at);
        let attempts = subject.deliver(&batch, &faults).await;
        if size > 1 && faults.crashed_at().is_none() && faults.reached() > 0 {
            reached_by_size.insert(size, faults.reached());
        }
        let mut state = Some(run::state(subject).await?);
        let last = indexes.len() - 1;
        for (position, (index, attempt)) in indexes.into_iter().zip(attempts).enumerate() {
            let duplicate = handled[index];
            let outcome = match attempt {
                Attempt::Handled => {
                    handled[index] = true;
                    Outcome::Handled
                }
                Attempt::Crashed { point } => Outcome::Crashed { point },
                Attempt::Failed(error) => {
                    failures[index] += 1;
                    let outcome = Outcome::Failed {
                        error: error.to_string(),
                    };
                    if failures[index] > plan.max_failures && run.gave_up.is_none() {
                        run.gave_up = Some(GaveUp {
                            index,
                            failures: failures[index],
                            error,
                        });
                    }
                    outcome
                }
            };
            if outcome != Outcome::Handled {
                // Not acked: the broker delivers it again, later.
                queue.insert(rng.gen_range(0..=queue.len()), index);
            }
            run.steps.push(Step {
                record: DeliveryRecord {
                    number: run.steps.len() + 1,
                    message: messages[index].id().clone(),
                    index,
                    duplicate,
                    outcome,
                },
                state: if position == last { state.take() } else { None },
            });
        }
        if run.gave_up.is_some() {
            break;
        }
    }
    Ok(run)
}
