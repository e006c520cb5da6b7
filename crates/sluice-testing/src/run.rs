//! One delivery, and the clean runs: every message handled once, in a given order, with no
//! fault.

use std::any::Any;
use std::future::{poll_fn, Future};
use std::panic::{self, AssertUnwindSafe};
use std::pin::pin;
use std::task::Poll;

use sluice_core::{BoxError, Message};

use crate::{BatchSubject, CheckError, Crash, Faults, Subject};

/// How one delivery ended.
pub(crate) enum Attempt {
    /// The handler returned `Ok` and no point crashed.
    Handled,
    /// A fault point crashed, whatever the handler returned afterwards.
    Crashed { point: String },
    /// The handler returned an error that was not a crash, or panicked.
    Failed(BoxError),
}

impl Attempt {
    /// The failure as an error, for [`CheckError::Handler`].
    pub(crate) fn into_error(self) -> Option<BoxError> {
        match self {
            Self::Handled => None,
            Self::Crashed { point } => Some(Box::new(Crash::at(point))),
            Self::Failed(error) => Some(error),
        }
    }
}

/// A panic in the handler, as an error.
#[derive(Debug, thiserror::Error)]
#[error("the handler panicked: {0}")]
struct Panicked(String);

/// What the runs need of a subject: a [`Subject`] (one message per delivery) or a
/// [`BatchSubject`] (a batch).
pub(crate) trait Handles: Send {
    type State: PartialEq + std::fmt::Debug + Send;
    /// The largest batch the chaos run hands over.
    fn max_batch(&self) -> usize;
    fn reset(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send;
    fn state(&mut self) -> impl Future<Output = Result<Self::State, BoxError>> + Send;
    /// Runs one delivery of `messages` (one, unless a batch subject): one attempt each.
    fn deliver(
        &mut self,
        messages: &[Message],
        faults: &Faults,
    ) -> impl Future<Output = Vec<Attempt>> + Send;
}

/// A [`Subject`], one message at a time.
pub(crate) struct One<'a, S>(pub(crate) &'a mut S);

impl<S: Subject> Handles for One<'_, S> {
    type State = S::State;
    fn max_batch(&self) -> usize {
        1
    }
    fn reset(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send {
        self.0.reset()
    }
    fn state(&mut self) -> impl Future<Output = Result<S::State, BoxError>> + Send {
        self.0.state()
    }
    async fn deliver(&mut self, messages: &[Message], faults: &Faults) -> Vec<Attempt> {
        let mut attempts = Vec::with_capacity(messages.len());
        for message in messages {
            attempts.push(deliver(self.0, message, faults).await);
        }
        attempts
    }
}

/// A [`BatchSubject`], batches of up to `max` messages.
pub(crate) struct Many<'a, B> {
    pub(crate) subject: &'a mut B,
    pub(crate) max: usize,
}

impl<B: BatchSubject> Handles for Many<'_, B> {
    type State = B::State;
    fn max_batch(&self) -> usize {
        self.max
    }
    fn reset(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send {
        self.subject.reset()
    }
    fn state(&mut self) -> impl Future<Output = Result<B::State, BoxError>> + Send {
        self.subject.state()
    }
    async fn deliver(&mut self, messages: &[Message], faults: &Faults) -> Vec<Attempt> {
        let result = catch_unwind(self.subject.handle_batch(messages, faults)).await;
        let all = |attempt: &dyn Fn() -> Attempt| messages.iter().map(|_| attempt()).collect();
        if let Some(point) = faults.crashed_at() {
            return all(&|| Attempt::Crashed {
                point: point.to_owned(),
            });
        }
        let text = match result {
            Ok(Ok(results)) if results.len() == messages.len() => {
                return results
                    .into_iter()
                    .map(|r| match r {
                        Ok(()) => Attempt::Handled,
                        Err(error) => Attempt::Failed(error),
                    })
                    .collect();
            }
            Ok(Ok(results)) => format!(
                "the batch handler returned {} results for {} messages",
                results.len(),
                messages.len()
            ),
            Ok(Err(error)) => format!("the batch failed: {error}"),
            Err(panic) => Panicked(panic).to_string(),
        };
        all(&|| Attempt::Failed(text.clone().into()))
    }
}

/// Runs one delivery. A crash is recognised by `faults`, not by the returned error, so a
/// handler that wraps or swallows the [`Crash`] still counts as crashed.
pub(crate) async fn deliver<S: Subject>(
    subject: &mut S,
    message: &Message,
    faults: &Faults,
) -> Attempt {
    let result = catch_unwind(subject.handle(message, faults)).await;
    if let Some(point) = faults.crashed_at() {
        return Attempt::Crashed {
            point: point.to_owned(),
        };
    }
    match result {
        Ok(Ok(())) => Attempt::Handled,
        Ok(Err(error)) => Attempt::Failed(error),
        Err(panic) => Attempt::Failed(Box::new(Panicked(panic))),
    }
}

/// Polls `future`, turning a panic into `Err(its message)`. The future is dropped after a
/// panic, never polled again; the subject it borrowed is used afterwards as a runtime would
/// after catching a handler's panic.
async fn catch_unwind<F: Future>(future: F) -> Result<F::Output, String> {
    let mut future = pin!(future);
    poll_fn(
        |cx| match panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        },
    )
    .await
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// Resets the subject, returning [`CheckError::Subject`] on failure.
pub(crate) async fn reset<S: Handles>(subject: &mut S) -> Result<(), CheckError> {
    subject.reset().await.map_err(|source| CheckError::Subject {
        operation: "reset",
        source,
    })
}

/// Reads the subject's state, returning [`CheckError::Subject`] on failure.
pub(crate) async fn state<S: Handles>(subject: &mut S) -> Result<S::State, CheckError> {
    subject.state().await.map_err(|source| CheckError::Subject {
        operation: "state",
        source,
    })
}

/// What a clean run saw.
pub(crate) struct CleanRun<T> {
    /// The state after the reset, then after each message (when snapshots were asked for).
    pub(crate) states: Vec<T>,
    /// Fault points each message reached, in run order.
    pub(crate) points: Vec<usize>,
}

/// Resets, then handles each message of `order` once with no fault. A failing message is
/// retried at once, up to `max_failures` times.
pub(crate) async fn clean_run<S: Handles>(
    subject: &mut S,
    messages: &[Message],
    order: &[usize],
    max_failures: usize,
    seed: u64,
    snapshots: bool,
) -> Result<CleanRun<S::State>, CheckError> {
    let mut run = CleanRun {
        states: Vec::with_capacity(if snapshots { order.len() + 1 } else { 0 }),
        points: Vec::with_capacity(order.len()),
    };
    reset(subject).await?;
    if snapshots {
        run.states.push(state(subject).await?);
    }
    for &index in order {
        let message = &messages[index];
        let mut failures = 0;
        loop {
            let faults = Faults::none();
            let attempt = subject
                .deliver(std::slice::from_ref(message), &faults)
                .await
                .pop()
                .expect("one attempt per message");
            let Some(error) = attempt.into_error() else {
                run.points.push(faults.reached());
                break;
            };
            failures += 1;
            if failures > max_failures {
                return Err(CheckError::Handler {
                    message: message.id().clone(),
                    failures,
                    seed,
                    source: error,
                });
            }
        }
        if snapshots {
            run.states.push(state(subject).await?);
        }
    }
    Ok(run)
}
