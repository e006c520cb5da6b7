//! The idempotency checker against toy batch handlers: the correct one (one transaction per
//! batch, the inbox checked inside it) passes; one that checks the inbox against what was
//! committed before the batch applies a second copy in the same batch twice, and one that
//! commits the messages before a failed one keeps a failed message's writes.

use std::collections::{BTreeMap, BTreeSet};

use sluice_core::{BoxError, Message, MessageId};
use sluice_testing::{BatchSubject, CheckError, Checker, Faults, FindingKind};

#[derive(Debug, Clone, Default, PartialEq)]
struct Tables {
    balances: BTreeMap<String, i64>,
    inbox: BTreeSet<MessageId>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Bug {
    None,
    /// Looks duplicates up in the tables as committed before the batch.
    InboxReadBeforeTheBatch,
    /// Reports a failed message but keeps its writes in the committed transaction.
    KeepsFailedWrites,
}

struct BatchBank {
    bug: Bug,
    committed: Tables,
    /// Carol's messages that failed since the last reset.
    failed: BTreeSet<MessageId>,
}

/// `"alice 10"`: alice is credited 10.
fn credit(message: &Message) -> (String, i64) {
    let text = std::str::from_utf8(message.payload()).unwrap();
    let (who, amount) = text.split_once(' ').unwrap();
    (who.to_owned(), amount.parse().unwrap())
}

impl BatchSubject for BatchBank {
    type State = Tables;

    async fn reset(&mut self) -> Result<(), BoxError> {
        self.committed = Tables::default();
        self.failed.clear();
        Ok(())
    }

    async fn handle_batch(
        &mut self,
        messages: &[Message],
        faults: &Faults,
    ) -> Result<Vec<Result<(), BoxError>>, BoxError> {
        let mut tx = self.committed.clone();
        let mut results = Vec::new();
        for message in messages {
            let seen = match self.bug {
                Bug::InboxReadBeforeTheBatch => self.committed.inbox.contains(message.id()),
                _ => tx.inbox.contains(message.id()),
            };
            if seen {
                results.push(Ok(()));
                continue;
            }
            let (who, amount) = credit(message);
            // Carol's bank is down the first time one of her credits comes in a batch of
            // several (never in the clean runs, which hand over one message at a time).
            let fails =
                who == "carol" && messages.len() > 1 && self.failed.insert(message.id().clone());
            if fails && self.bug != Bug::KeepsFailedWrites {
                results.push(Err("carol's bank is down".into()));
                continue;
            }
            *tx.balances.entry(who).or_default() += amount;
            if fails {
                results.push(Err("carol's bank is down".into()));
                continue;
            }
            tx.inbox.insert(message.id().clone());
            faults.point("after a message")?;
            results.push(Ok(()));
        }
        faults.point("before commit")?;
        self.committed = tx;
        Ok(results)
    }

    async fn state(&mut self) -> Result<Tables, BoxError> {
        Ok(self.committed.clone())
    }
}

fn credits() -> Vec<Message> {
    [
        "alice 10", "bob 4", "carol 7", "alice 1", "bob 3", "carol 2", "dave 5", "erin 6",
    ]
    .iter()
    .enumerate()
    .map(|(i, payload)| {
        Message::builder(payload.to_string())
            .id(format!("credit-{i}"))
            .build()
            .unwrap()
    })
    .collect()
}

fn bank(bug: Bug) -> BatchBank {
    BatchBank {
        bug,
        committed: Tables::default(),
        failed: BTreeSet::new(),
    }
}

#[tokio::test]
async fn a_batch_handler_checking_the_inbox_in_its_transaction_passes_under_many_seeds() {
    let (mut crashes, mut failures, mut duplicates) = (0, 0, 0);
    for seed in 0..50 {
        let report = Checker::new()
            .seed(seed)
            .max_batch(5)
            .assert_idempotent_batches(&mut bank(Bug::None), &credits())
            .await;
        crashes += report.crashes;
        failures += report.failures;
        duplicates += report.duplicates;
    }
    assert!(
        crashes > 0 && failures > 0 && duplicates > 0,
        "crashes {crashes}, failures {failures}, duplicates {duplicates}"
    );
}

/// The first finding over seeds 0 to 49 for a bank with `bug`.
async fn first_finding(bug: Bug, max_batch: usize) -> Option<Box<sluice_testing::Finding>> {
    for seed in 0..50 {
        match Checker::new()
            .seed(seed)
            .max_batch(max_batch)
            .check_batches(&mut bank(bug), &credits())
            .await
        {
            Err(CheckError::Mismatch(finding)) => return Some(finding),
            Ok(_) => continue,
            Err(other) => panic!("{other}"),
        }
    }
    None
}

#[tokio::test]
async fn a_second_copy_in_the_same_batch_applied_twice_is_a_double_effect() {
    let finding = first_finding(Bug::InboxReadBeforeTheBatch, 8)
        .await
        .expect("some seed puts two copies in one batch");
    assert_eq!(finding.kind, FindingKind::DoubleEffect, "{finding}");
}

#[tokio::test]
async fn a_failed_message_whose_writes_were_committed_is_a_partial_effect() {
    let finding = first_finding(Bug::KeepsFailedWrites, 4)
        .await
        .expect("carol fails in some batch");
    assert!(
        matches!(finding.kind, FindingKind::FailureLeftPartialEffect { .. }),
        "{finding}"
    );
    assert!(
        ["credit-2", "credit-5"].contains(&finding.message.as_str()),
        "carol's credits: {finding}"
    );
}
