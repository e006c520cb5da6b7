//! The idempotency checker against toy bank subjects: one correct, the others each with one
//! classic bug the checker must name.

use std::collections::{BTreeMap, BTreeSet};

use sluice_core::{BoxError, Message, MessageId};
use sluice_testing::{CheckError, Checker, Faults, Finding, FindingKind, Outcome, Subject};

/// The bank's "database": balances and the inbox of handled message ids.
#[derive(Debug, Clone, Default, PartialEq)]
struct Tables {
    balances: BTreeMap<String, i64>,
    inbox: BTreeSet<MessageId>,
}

/// How the handler under test is written.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Handler {
    /// One transaction: inbox check and insert, debit, credit, commit. Idempotent.
    Correct,
    /// Transactional, but never looks at the inbox.
    NoInbox,
    /// Writes straight to the committed tables, with a fault point between debit and
    /// credit: no rollback.
    NoTransaction,
    /// Commits the inbox row in a transaction of its own, before the effect's.
    InboxCommittedFirst,
    /// Correct, but ignores the crash its fault point returns and commits anyway.
    IgnoresCrash,
    /// Correct, but the first delivery of this message returns an error after committing.
    FailsAfterCommit(&'static str),
    /// Correct, with no fault point.
    NoFaultPoints,
}

/// A toy bank. Its transactions work on a copy of the tables and commit by swapping it in;
/// returning early drops the copy, which is a rollback.
struct Bank {
    handler: Handler,
    committed: Tables,
    /// Handle calls so far, across runs (for injected failures).
    calls: usize,
    /// Every `n`-th handle call returns a transient error before doing anything.
    fail_every: Option<usize>,
    /// The handle call that panics (before doing anything).
    panic_on_call: Option<usize>,
    /// Messages that always fail.
    poison: Option<&'static str>,
    /// Resets so far, wrongly part of the state (for the unclean-reset test).
    resets: Option<usize>,
}

impl Bank {
    fn new(handler: Handler) -> Self {
        Self {
            handler,
            committed: Tables::default(),
            calls: 0,
            fail_every: None,
            panic_on_call: None,
            poison: None,
            resets: None,
        }
    }

    fn transfer(
        tables: &mut Tables,
        from: &str,
        to: &str,
        amount: i64,
        faults: &Faults,
    ) -> Result<(), BoxError> {
        *tables.balances.entry(from.to_owned()).or_default() -= amount;
        faults.point("after debit")?;
        *tables.balances.entry(to.to_owned()).or_default() += amount;
        Ok(())
    }
}

/// `"alice bob 10"`: alice pays bob 10.
fn parse(message: &Message) -> Result<(String, String, i64), BoxError> {
    let text = std::str::from_utf8(message.payload())?;
    let mut words = text.split(' ');
    let (Some(from), Some(to), Some(amount)) = (words.next(), words.next(), words.next()) else {
        return Err(format!("expected `from to amount`, got `{text}`").into());
    };
    Ok((from.to_owned(), to.to_owned(), amount.parse()?))
}

impl Subject for Bank {
    type State = (BTreeMap<String, i64>, Option<usize>);

    async fn reset(&mut self) -> Result<(), BoxError> {
        self.committed = Tables::default();
        if let Some(resets) = &mut self.resets {
            *resets += 1;
        }
        Ok(())
    }

    async fn handle(&mut self, message: &Message, faults: &Faults) -> Result<(), BoxError> {
        self.calls += 1;
        if self.fail_every.is_some_and(|n| self.calls % n == 0) {
            return Err("connection reset".into());
        }
        if self.panic_on_call == Some(self.calls) {
            panic!("injected panic");
        }
        if self.poison == Some(message.id().as_str()) {
            return Err("cannot parse the payload".into());
        }
        let (from, to, amount) = parse(message)?;
        let id = message.id().clone();
        // A round trip to the "database": the handler really suspends, holding `faults`.
        tokio::task::yield_now().await;
        match self.handler {
            Handler::Correct | Handler::FailsAfterCommit(_) | Handler::NoFaultPoints => {
                let mut tx = self.committed.clone();
                if !tx.inbox.insert(id) {
                    return Ok(());
                }
                let no_points = Faults::none();
                let faults = if self.handler == Handler::NoFaultPoints {
                    &no_points
                } else {
                    faults
                };
                faults.point("after inbox insert")?;
                Self::transfer(&mut tx, &from, &to, amount, faults)?;
                faults.point("before commit")?;
                self.committed = tx;
                if let Handler::FailsAfterCommit(failing) = self.handler {
                    if failing == message.id().as_str() {
                        return Err("ack timed out".into());
                    }
                }
            }
            Handler::NoInbox => {
                let mut tx = self.committed.clone();
                Self::transfer(&mut tx, &from, &to, amount, faults)?;
                faults.point("before commit")?;
                self.committed = tx;
            }
            Handler::NoTransaction => {
                if self.committed.inbox.contains(&id) {
                    return Ok(());
                }
                Self::transfer(&mut self.committed, &from, &to, amount, faults)?;
                self.committed.inbox.insert(id);
            }
            Handler::InboxCommittedFirst => {
                if !self.committed.inbox.insert(id) {
                    return Ok(());
                }
                let mut tx = self.committed.clone();
                Self::transfer(&mut tx, &from, &to, amount, faults)?;
                faults.point("before commit")?;
                self.committed = tx;
            }
            Handler::IgnoresCrash => {
                let mut tx = self.committed.clone();
                if !tx.inbox.insert(id) {
                    return Ok(());
                }
                let _ = Self::transfer(&mut tx, &from, &to, amount, faults);
                self.committed = tx;
            }
        }
        Ok(())
    }

    async fn state(&mut self) -> Result<Self::State, BoxError> {
        Ok((self.committed.balances.clone(), self.resets))
    }
}

fn transfers() -> Vec<Message> {
    [
        "alice bob 10",
        "bob carol 4",
        "carol alice 7",
        "alice carol 1",
        "bob alice 3",
        "carol bob 2",
    ]
    .iter()
    .enumerate()
    .map(|(i, payload)| {
        Message::builder(payload.to_string())
            .id(format!("transfer-{}", i + 1))
            .build()
            .unwrap()
    })
    .collect()
}

async fn finding(checker: &Checker, bank: &mut Bank, messages: &[Message]) -> Finding {
    match checker.check(bank, messages).await {
        Err(CheckError::Mismatch(finding)) => *finding,
        other => panic!("expected a finding, got {other:?}"),
    }
}

#[tokio::test]
async fn a_handler_without_dedup_is_reported_with_the_duplicated_message() {
    let messages = vec![Message::builder("alice bob 10")
        .id("transfer-1")
        .build()
        .unwrap()];
    let checker = Checker::new().seed(5).copies(2).crash_rate(0.0);

    let finding = finding(&checker, &mut Bank::new(Handler::NoInbox), &messages).await;

    assert_eq!(finding.kind, FindingKind::DoubleEffect);
    assert_eq!(finding.message.as_str(), "transfer-1");
    assert_eq!(
        (finding.delivery, finding.deliveries, finding.seed),
        (2, 2, 5)
    );
    assert_eq!(finding.expected, r#"({"alice": -10, "bob": 10}, None)"#);
    assert_eq!(finding.actual, r#"({"alice": -20, "bob": 20}, None)"#);
    let text = finding.to_string();
    for part in [
        "`transfer-1`",
        "double effect",
        "delivery 2 of 2",
        "seed 5",
        "#1 handled, #2 handled (duplicate)",
    ] {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
}

#[tokio::test]
async fn a_handler_without_dedup_is_reported_among_many_messages() {
    let messages = transfers();
    for seed in 0..20 {
        let finding = finding(
            &Checker::new().seed(seed),
            &mut Bank::new(Handler::NoInbox),
            &messages,
        )
        .await;

        assert_eq!(
            finding.kind,
            FindingKind::DoubleEffect,
            "seed {seed}: {finding}"
        );
        let last = finding.history.last().unwrap();
        assert!(
            last.duplicate && last.outcome == Outcome::Handled,
            "seed {seed}: {finding}"
        );
        assert_eq!(last.message, finding.message);
        assert!(
            finding
                .history
                .iter()
                .filter(|r| r.outcome == Outcome::Handled)
                .count()
                == 2,
            "the first duplicate that is handled is the finding; seed {seed}: {finding}"
        );
    }
}

#[tokio::test]
async fn a_transactional_handler_with_an_inbox_passes_under_many_seeds() {
    let messages = transfers();
    let mut crashed_points = BTreeSet::new();
    for seed in 0..200 {
        let mut bank = Bank::new(Handler::Correct);
        let report = match Checker::new()
            .seed(seed)
            .crash_rate(0.5)
            .check(&mut bank, &messages)
            .await
        {
            Ok(report) => report,
            Err(err) => panic!("seed {seed}: {err}"),
        };

        assert_eq!(report.messages, 6);
        assert_eq!(report.fault_points, 6 * 3, "three points per message");
        assert_eq!(report.deliveries, 6 * 3 + report.crashes);
        assert!(report.duplicates >= 6 * 2, "seed {seed}: {report}");
        for record in &report.history {
            if let Outcome::Crashed { point } = &record.outcome {
                crashed_points.insert(point.clone());
            }
        }
        let (balances, _) = bank.state().await.unwrap();
        assert_eq!(balances.values().sum::<i64>(), 0, "money is conserved");
    }
    assert_eq!(
        crashed_points,
        BTreeSet::from(["after inbox insert", "after debit", "before commit"].map(String::from)),
        "every fault point was crashed at least once over the seeds"
    );
}

#[tokio::test]
async fn a_handler_that_writes_outside_a_transaction_is_reported_as_a_partial_effect() {
    let messages = transfers();
    for seed in 0..20 {
        let mut bank = Bank::new(Handler::NoTransaction);
        let finding = finding(
            &Checker::new().seed(seed).crash_rate(0.5),
            &mut bank,
            &messages,
        )
        .await;

        assert_eq!(
            finding.kind,
            FindingKind::CrashLeftPartialEffect {
                point: "after debit".into()
            },
            "seed {seed}: {finding}"
        );
        let last = finding.history.last().unwrap();
        assert_eq!(
            last.outcome,
            Outcome::Crashed {
                point: "after debit".into()
            }
        );
        assert!(finding
            .to_string()
            .contains("the transaction did not roll back"));
    }
}

#[tokio::test]
async fn an_inbox_committed_before_the_effect_is_reported_as_a_lost_effect() {
    let messages = transfers();
    for seed in 0..20 {
        let mut bank = Bank::new(Handler::InboxCommittedFirst);
        let finding = finding(
            &Checker::new().seed(seed).crash_rate(0.5),
            &mut bank,
            &messages,
        )
        .await;

        assert_eq!(
            finding.kind,
            FindingKind::LostEffect,
            "seed {seed}: {finding}"
        );
        assert!(
            finding
                .history
                .iter()
                .any(|r| matches!(r.outcome, Outcome::Crashed { .. })),
            "an earlier delivery of the message crashed; seed {seed}: {finding}"
        );
    }
}

#[tokio::test]
async fn a_handler_that_swallows_the_crash_still_counts_as_crashed() {
    let messages = transfers();
    let finding = finding(
        &Checker::new().seed(3).crash_rate(0.5),
        &mut Bank::new(Handler::IgnoresCrash),
        &messages,
    )
    .await;

    assert_eq!(
        finding.kind,
        FindingKind::CrashLeftPartialEffect {
            point: "after debit".into()
        },
        "{finding}"
    );
}

#[tokio::test]
async fn a_failure_after_the_commit_is_reported_as_a_partial_effect() {
    let messages = transfers();
    let finding = finding(
        &Checker::new().seed(1).crash_rate(0.0),
        &mut Bank::new(Handler::FailsAfterCommit("transfer-2")),
        &messages,
    )
    .await;

    assert_eq!(
        finding.kind,
        FindingKind::FailureLeftPartialEffect {
            error: "ack timed out".into()
        },
        "{finding}"
    );
}

#[tokio::test]
async fn transient_failures_and_panics_are_delivered_again() {
    let messages = transfers();
    let mut bank = Bank::new(Handler::Correct);
    bank.fail_every = Some(5);
    bank.panic_on_call = Some(14);

    let report = Checker::new()
        .seed(9)
        .max_failures(10)
        .check(&mut bank, &messages)
        .await
        .unwrap();

    assert!(report.failures >= 3, "{report}");
    assert!(
        report.history.iter().any(|r| r.outcome
            == Outcome::Failed {
                error: "the handler panicked: injected panic".into()
            }),
        "{report:#?}"
    );
}

#[tokio::test]
async fn a_message_that_keeps_failing_stops_the_check_and_is_named() {
    let messages = transfers();
    let mut bank = Bank::new(Handler::Correct);
    bank.poison = Some("transfer-3");

    let err = Checker::new()
        .seed(2)
        .max_failures(2)
        .check(&mut bank, &messages)
        .await
        .unwrap_err();

    match &err {
        CheckError::Handler {
            message,
            failures,
            seed,
            ..
        } => {
            assert_eq!((message.as_str(), *failures, *seed), ("transfer-3", 3, 2));
        }
        other => panic!("expected a handler error, got {other:?}"),
    }
    assert!(
        err.to_string().contains("cannot parse the payload"),
        "{err}"
    );
}

#[tokio::test]
async fn the_same_seed_gives_the_same_schedule() {
    let messages = transfers();
    let run = |seed| {
        let messages = messages.clone();
        async move {
            let checker = Checker::new().seed(seed).crash_rate(0.4);
            let report = checker
                .check(&mut Bank::new(Handler::Correct), &messages)
                .await
                .unwrap();
            let finding =
                finding(&checker, &mut Bank::new(Handler::NoTransaction), &messages).await;
            (report, finding)
        }
    };

    let (first, first_finding) = run(42).await;
    let (again, again_finding) = run(42).await;
    let (other, _) = run(43).await;

    assert_eq!(first, again);
    assert_eq!(first_finding, again_finding);
    assert_ne!(
        first.history, other.history,
        "another seed, another schedule"
    );
}

#[tokio::test]
async fn a_reset_that_leaves_state_behind_is_reported() {
    let mut bank = Bank::new(Handler::Correct);
    bank.resets = Some(0);

    let err = Checker::new()
        .seed(1)
        .check(&mut bank, &transfers())
        .await
        .unwrap_err();

    assert!(matches!(err, CheckError::UncleanReset { .. }), "{err}");
}

#[tokio::test]
async fn a_handler_without_fault_points_passes_and_the_report_says_so() {
    let report = Checker::new()
        .seed(1)
        .check(&mut Bank::new(Handler::NoFaultPoints), &transfers())
        .await
        .unwrap();

    assert_eq!((report.fault_points, report.crashes), (0, 0));
    assert!(
        report.to_string().contains("no crash was tested"),
        "{report}"
    );
}

#[tokio::test]
async fn no_messages_pass_trivially() {
    let report = Checker::new()
        .check(&mut Bank::new(Handler::NoInbox), &[])
        .await
        .unwrap();

    assert_eq!((report.messages, report.deliveries), (0, 0));
}

#[tokio::test]
#[should_panic(expected = "idempotency check failed on message `transfer-1`")]
async fn assert_idempotent_panics_with_the_finding() {
    let messages = vec![Message::builder("alice bob 10")
        .id("transfer-1")
        .build()
        .unwrap()];
    sluice_testing::assert_idempotent(&mut Bank::new(Handler::NoInbox), &messages).await;
}

#[test]
fn the_check_future_is_send() {
    fn assert_send<T: Send>(_: T) {}
    let mut bank = Bank::new(Handler::Correct);
    let checker = Checker::new();
    assert_send(checker.check(&mut bank, &[]));
}
