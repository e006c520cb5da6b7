//! The demo's books: every outcome by unique message id, per subscription, and the checks
//! that they reconcile (published = acked + dead-lettered; each charge applied once).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use sluice::runtime::{Observer, Outcome, OutcomeKind, StatsSnapshot};

/// Unique ids per outcome for one subscription.
#[derive(Debug, Default, Clone)]
pub(crate) struct Books {
    pub(crate) acked: BTreeSet<String>,
    pub(crate) dead_lettered: BTreeSet<String>,
}

/// Collects worker events into [`Books`].
#[derive(Clone, Default)]
pub(crate) struct Ledger(Arc<Mutex<BTreeMap<String, Books>>>);

impl Observer for Ledger {
    fn on_outcome(&self, event: &Outcome) {
        let mut books = self.0.lock().expect("ledger");
        let entry = books.entry(event.subscription.clone()).or_default();
        match &event.kind {
            OutcomeKind::Acked => {
                entry.acked.insert(event.id.clone());
            }
            OutcomeKind::DeadLettered { .. } => {
                entry.dead_lettered.insert(event.id.clone());
            }
            _ => {}
        }
    }
}

impl Books {
    /// Whether every id of `published` has been acked or dead-lettered.
    pub(crate) fn settles(&self, published: &BTreeSet<String>) -> bool {
        published
            .iter()
            .all(|id| self.acked.contains(id) || self.dead_lettered.contains(id))
    }
}

impl Ledger {
    pub(crate) fn books(&self, subscription: &str) -> Books {
        self.0
            .lock()
            .expect("ledger")
            .get(subscription)
            .cloned()
            .unwrap_or_default()
    }
}

/// One row of the summary table.
pub(crate) struct Row {
    pub(crate) subscription: String,
    pub(crate) stats: StatsSnapshot,
    pub(crate) effects: String,
    pub(crate) peak_backlog: u64,
}

/// Prints the summary table.
pub(crate) fn print_table(published: usize, rows: &[Row]) {
    println!(
        "{:<10} {:>9} {:>9} {:>7} {:>7} {:>10} {:>13} {:>12}  effects applied",
        "subscr.",
        "published",
        "delivered",
        "acked",
        "retried",
        "dup skip",
        "dead-lettered",
        "peak backlog"
    );
    for row in rows {
        let s = &row.stats;
        println!(
            "{:<10} {:>9} {:>9} {:>7} {:>7} {:>10} {:>13} {:>12}  {}",
            row.subscription,
            published,
            s.delivered,
            s.acked,
            s.retried,
            s.duplicates_skipped,
            s.dead_lettered,
            row.peak_backlog,
            row.effects
        );
    }
}
