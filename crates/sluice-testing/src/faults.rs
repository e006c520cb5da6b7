//! Fault points: the places where a handler lets the checker crash it.
//!
//! Invariants: a [`Faults`] belongs to one delivery; it crashes at most one point (the
//! `crash_at`-th one reached), and once it has crashed every later point crashes too (a
//! crashed process runs nothing more), so a handler that swallows a [`Crash`] cannot go on
//! and commit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The fault points of one delivery, handed to [`Subject::handle`](crate::Subject::handle).
///
/// Call [`point`](Self::point) at every place where a crash could happen **inside the
/// handler's transaction** (after a write, before the commit) and propagate its error with
/// `?`. When the checker has chosen that point, it returns [`Crash`]: the handler returns it,
/// its transaction is dropped (rolled back), exactly as when the process dies there.
///
/// A point after the commit is not needed: a crash between commit and ack is what every
/// duplicate delivery already tests (the ack was lost). Placed there anyway, its crash keeps
/// the committed effect, and the checker reports it as a partial effect.
///
/// Outside the checker, pass [`Faults::none`]: its points never crash.
#[derive(Debug, Default)]
pub struct Faults {
    /// The point (1-based, counted in this delivery) that crashes; `None`: no point does.
    crash_at: Option<usize>,
    /// Points reached so far.
    reached: AtomicUsize,
    /// The name of the point that crashed, once one has.
    crashed_at: OnceLock<String>,
}

impl Faults {
    /// Fault points that never crash (for calling a handler outside the checker).
    pub fn none() -> Self {
        Self::default()
    }

    /// Fault points that crash at the `crash_at`-th point reached (1-based).
    pub(crate) fn crashing_at(crash_at: Option<usize>) -> Self {
        Self {
            crash_at,
            ..Self::default()
        }
    }

    /// A place where the handler may crash, named for the report (`"after debit"`).
    ///
    /// Returns `Err(Crash)` when the checker crashes the handler here, and at every point
    /// after that; propagate it with `?` (it converts into
    /// [`BoxError`](sluice_core::BoxError)). Returns `Ok(())` otherwise.
    pub fn point(&self, name: &str) -> Result<(), Crash> {
        if let Some(point) = self.crashed_at.get() {
            // Already crashed: a dead process reaches no further point.
            return Err(Crash::at(point.as_str()));
        }
        let reached = self.reached.fetch_add(1, Ordering::Relaxed) + 1;
        if self.crash_at == Some(reached) {
            let point = self.crashed_at.get_or_init(|| name.to_owned());
            return Err(Crash::at(point.as_str()));
        }
        Ok(())
    }

    /// How many points were reached (the crashing one included).
    pub(crate) fn reached(&self) -> usize {
        self.reached.load(Ordering::Relaxed)
    }

    /// The name of the point that crashed, if one did.
    pub(crate) fn crashed_at(&self) -> Option<&str> {
        self.crashed_at.get().map(String::as_str)
    }
}

/// The error [`Faults::point`] returns where the checker crashes the handler: a simulated
/// process crash. Propagate it; the checker recognises the crash by its [`Faults`], so
/// wrapping it in another error is fine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("simulated crash at fault point `{point}`")]
pub struct Crash {
    point: String,
}

impl Crash {
    pub(crate) fn at(point: impl Into<String>) -> Self {
        Self {
            point: point.into(),
        }
    }

    /// The name of the fault point that crashed.
    pub fn point(&self) -> &str {
        &self.point
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_point_crashes_without_a_planned_crash() {
        let faults = Faults::none();
        for _ in 0..5 {
            assert_eq!(faults.point("write"), Ok(()));
        }
        assert_eq!(faults.reached(), 5);
        assert_eq!(faults.crashed_at(), None);
    }

    #[test]
    fn the_planned_point_crashes_and_every_later_point_too() {
        let faults = Faults::crashing_at(Some(2));
        assert_eq!(faults.point("after debit"), Ok(()));
        let crash = faults.point("after credit").unwrap_err();
        assert_eq!(crash.point(), "after credit");
        assert_eq!(
            crash.to_string(),
            "simulated crash at fault point `after credit`"
        );
        let again = faults.point("before commit").unwrap_err();
        assert_eq!(
            again.point(),
            "after credit",
            "a crashed handler stays dead"
        );
        assert_eq!(faults.crashed_at(), Some("after credit"));
    }

    #[test]
    fn a_crash_converts_into_a_box_error() {
        fn handler(faults: &Faults) -> Result<(), sluice_core::BoxError> {
            faults.point("only")?;
            Ok(())
        }
        let err = handler(&Faults::crashing_at(Some(1))).unwrap_err();
        assert!(err.downcast_ref::<Crash>().is_some(), "{err}");
    }
}
