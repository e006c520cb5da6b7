//! [`Checker`]: the settings of an idempotency check, and the check itself.

use rand::rngs::SmallRng;
use rand::SeedableRng;
use sluice_core::Message;

use crate::chaos::{self, Plan};
use crate::error::show;
use crate::run::{clean_run, Handles, Many, One};
use crate::{verdict, BatchSubject, CheckError, Outcome, Report, Subject};

/// The environment variable that sets the seed of checks that do not set one.
pub const SEED_VAR: &str = "SLUICE_CHECK_SEED";

/// Checks that a [`Subject`]'s handler is idempotent and crash-safe: delivering each
/// message several times, in shuffled order, with crashes, leaves the same state as
/// handling each once.
///
/// A check makes three runs, each after [`Subject::reset`]:
///
/// 1. A **counting run** handles every message once, in the given order, with no fault, and
///    counts the fault points each reaches.
/// 2. The **chaos run** delivers every message [`copies`](Self::copies) times, shuffled. A
///    share [`crash_rate`](Self::crash_rate) of the deliveries crashes at a fault point
///    drawn from those the message reached in the counting run. A crashed or failed delivery
///    was not acked, so it is delivered again at a random later position. The state is read
///    after every delivery.
/// 3. The **clean run** handles every message once, with no fault, in the order of their
///    first successful delivery in the chaos run, reading the state after each.
///
/// Then after every chaos delivery the state must equal the clean run's state after as many
/// messages as had succeeded so far; the first delivery where it does not is the
/// [`Finding`](crate::Finding).
///
/// Everything random is drawn from one seed: a deterministic subject with the same seed and
/// messages gives the same run, on the same version of this crate.
#[derive(Debug, Clone)]
#[must_use]
pub struct Checker {
    copies: usize,
    crash_rate: f64,
    seed: Option<u64>,
    max_failures: usize,
    max_batch: usize,
}

impl Default for Checker {
    fn default() -> Self {
        Self {
            copies: 3,
            crash_rate: 0.3,
            seed: None,
            max_failures: 3,
            max_batch: 8,
        }
    }
}

impl Checker {
    /// A checker with the defaults: 3 copies, crash rate 0.3, at most 3 failures per
    /// message, the seed from `SLUICE_CHECK_SEED` or random.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times the chaos run delivers each message (crashed and failed deliveries
    /// are delivered again on top). Default 3.
    ///
    /// # Panics
    ///
    /// If `copies` is 0.
    pub fn copies(mut self, copies: usize) -> Self {
        assert!(copies >= 1, "copies must be at least 1");
        self.copies = copies;
        self
    }

    /// The share of deliveries crashed at a fault point, in `0.0..1.0`. Default 0.3.
    ///
    /// # Panics
    ///
    /// If `rate` is not in `0.0..1.0` (at 1.0 no delivery would ever succeed).
    pub fn crash_rate(mut self, rate: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&rate),
            "crash_rate must be in 0.0..1.0, got {rate}"
        );
        self.crash_rate = rate;
        self
    }

    /// The seed of the schedule. Without it, the seed comes from the environment variable
    /// `SLUICE_CHECK_SEED` when that is set, else it is random; either way every report,
    /// finding and error names it, so a failure replays. A seed set here takes precedence
    /// over the variable (a test looping over seeds stays a loop over seeds).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// How many times one message may fail (its handler returns an error that is not a
    /// crash, or panics) before the check gives up with [`CheckError::Handler`]. A failed
    /// delivery is delivered again later, like a crashed one. Default 3.
    pub fn max_failures(mut self, max_failures: usize) -> Self {
        self.max_failures = max_failures;
        self
    }

    /// The largest batch [`check_batches`](Self::check_batches)' chaos run hands a
    /// [`BatchSubject`]: each batch holds 1 to `max` of the shuffled deliveries. Default 8.
    ///
    /// # Panics
    ///
    /// If `max` is 0.
    pub fn max_batch(mut self, max: usize) -> Self {
        assert!(max >= 1, "max_batch must be at least 1");
        self.max_batch = max;
        self
    }

    /// Checks `subject` with `messages`; see [`Checker`] for the runs it makes.
    ///
    /// Messages are told apart by their position in `messages`, not by id. The seed is
    /// printed to stderr first (the test harness shows it when the test fails), so even a
    /// panicking subject can be replayed.
    ///
    /// Afterwards the subject holds the clean run's state: every message handled once, in
    /// the order of its first success in the chaos run.
    ///
    /// # Errors
    ///
    /// [`CheckError::Mismatch`] with the first delivery whose effect differed;
    /// [`CheckError::Handler`] when a message kept failing; [`CheckError::Subject`] when
    /// `reset` or `state` failed; [`CheckError::UncleanReset`]; [`CheckError::InvalidSeed`].
    pub async fn check<S: Subject>(
        &self,
        subject: &mut S,
        messages: &[Message],
    ) -> Result<Report, CheckError> {
        self.run(&mut One(subject), messages).await
    }

    /// [`check`](Self::check) for a batch handler: the chaos run hands the deliveries to the
    /// [`BatchSubject`] in batches of 1 to [`max_batch`](Self::max_batch) (a batch may hold
    /// two copies of a message, or a message already handled); a crash fails the whole batch;
    /// the state is read after each batch. The counting and clean runs hand it one message at
    /// a time.
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check). A finding names the first delivery of the batch that
    /// explains the difference.
    pub async fn check_batches<B: BatchSubject>(
        &self,
        subject: &mut B,
        messages: &[Message],
    ) -> Result<Report, CheckError> {
        let mut many = Many {
            subject,
            max: self.max_batch,
        };
        self.run(&mut many, messages).await
    }

    /// Like [`check_batches`](Self::check_batches), but panics with the finding or error.
    ///
    /// # Panics
    ///
    /// When [`check_batches`](Self::check_batches) returns an error.
    pub async fn assert_idempotent_batches<B: BatchSubject>(
        &self,
        subject: &mut B,
        messages: &[Message],
    ) -> Report {
        match self.check_batches(subject, messages).await {
            Ok(report) => report,
            Err(err) => panic!("{err}"),
        }
    }

    async fn run<H: Handles>(
        &self,
        subject: &mut H,
        messages: &[Message],
    ) -> Result<Report, CheckError> {
        let seed = match self.seed {
            Some(seed) => seed,
            None => seed_from_env(std::env::var(SEED_VAR).ok().as_deref())?,
        };
        eprintln!(
            "sluice-testing: idempotency check of {} message(s), seed {seed} \
             (SLUICE_CHECK_SEED={seed} replays it)",
            messages.len()
        );
        let mut rng = SmallRng::seed_from_u64(seed);

        let input_order: Vec<usize> = (0..messages.len()).collect();
        let counting = clean_run(
            subject,
            messages,
            &input_order,
            self.max_failures,
            seed,
            false,
        )
        .await?;
        let plan = Plan {
            copies: self.copies,
            crash_rate: self.crash_rate,
            max_failures: self.max_failures,
            points: &counting.points,
        };
        let chaos = chaos::chaos_run(subject, messages, &plan, &mut rng).await?;
        let order = chaos.first_success_order();
        let clean = clean_run(subject, messages, &order, self.max_failures, seed, true).await?;

        if chaos.initial != clean.states[0] {
            return Err(CheckError::UncleanReset {
                first: show(&chaos.initial),
                second: show(&clean.states[0]),
            });
        }
        if let Some(finding) = verdict::first_mismatch(&chaos, &clean.states, seed) {
            return Err(CheckError::Mismatch(Box::new(finding)));
        }
        if let Some(gave_up) = chaos.gave_up {
            return Err(CheckError::Handler {
                message: messages[gave_up.index].id().clone(),
                failures: gave_up.failures,
                seed,
                source: gave_up.error,
            });
        }

        let history: Vec<_> = chaos.steps.into_iter().map(|step| step.record).collect();
        let count =
            |keep: fn(&Outcome) -> bool| history.iter().filter(|r| keep(&r.outcome)).count();
        Ok(Report {
            seed,
            messages: messages.len(),
            deliveries: history.len(),
            duplicates: history.iter().filter(|record| record.duplicate).count(),
            crashes: count(|outcome| matches!(outcome, Outcome::Crashed { .. })),
            failures: count(|outcome| matches!(outcome, Outcome::Failed { .. })),
            fault_points: counting.points.iter().sum(),
            history,
        })
    }

    /// Like [`check`](Self::check), but panics with the finding or error, for use directly
    /// in a test.
    ///
    /// # Panics
    ///
    /// When [`check`](Self::check) returns an error; the message names the message, the
    /// delivery, the seed and the expected and actual states.
    pub async fn assert_idempotent<S: Subject>(
        &self,
        subject: &mut S,
        messages: &[Message],
    ) -> Report {
        match self.check(subject, messages).await {
            Ok(report) => report,
            Err(err) => panic!("{err}"),
        }
    }
}

/// The seed from `SLUICE_CHECK_SEED`'s value, or a random one when it is unset.
fn seed_from_env(value: Option<&str>) -> Result<u64, CheckError> {
    match value {
        None => Ok(rand::random()),
        Some(value) => value
            .trim()
            .parse()
            .map_err(|_| CheckError::InvalidSeed(value.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_comes_from_the_variable_when_it_is_set() {
        assert_eq!(seed_from_env(Some("42")).unwrap(), 42);
        assert_eq!(seed_from_env(Some(" 7\n")).unwrap(), 7);
        let err = seed_from_env(Some("forty-two")).unwrap_err();
        assert!(err.to_string().contains("`forty-two`"), "{err}");
        assert!(seed_from_env(None).is_ok());
    }

    #[test]
    #[should_panic(expected = "copies must be at least 1")]
    fn zero_copies_are_refused() {
        let _ = Checker::new().copies(0);
    }

    #[test]
    #[should_panic(expected = "crash_rate must be in 0.0..1.0")]
    fn a_crash_rate_of_one_is_refused() {
        let _ = Checker::new().crash_rate(1.0);
    }

    #[test]
    #[should_panic(expected = "crash_rate must be in 0.0..1.0")]
    fn a_nan_crash_rate_is_refused() {
        let _ = Checker::new().crash_rate(f64::NAN);
    }
}
