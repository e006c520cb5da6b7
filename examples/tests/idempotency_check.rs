//! The idempotency checker on a real SQLite database: it reports the message a consumer
//! without an inbox charges twice, and passes the consumer writing through the inbox.

use sluice_examples::ledger::{payment, Ledger};
use sluice_testing::{CheckError, Checker, FindingKind};

fn payments() -> Vec<sluice::Message> {
    (0..12)
        .map(|n| payment(&format!("payment-{n}"), &format!("acct-{}", n % 3), 100 + n))
        .collect()
}

#[tokio::test]
async fn the_checker_reports_the_message_a_consumer_without_an_inbox_applies_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut buggy = Ledger::without_inbox(&dir.path().join("ledger.db"))
        .await
        .unwrap();
    let messages = payments();
    for seed in 0..5 {
        let err = Checker::new()
            .seed(seed)
            .check(&mut buggy, &messages)
            .await
            .expect_err("a consumer without an inbox is not idempotent");
        let CheckError::Mismatch(finding) = err else {
            panic!("expected a finding, got {err}")
        };
        assert_eq!(finding.kind, FindingKind::DoubleEffect, "{finding}");
        assert!(
            messages.iter().any(|m| m.id() == &finding.message),
            "the finding names one of the messages: {finding}"
        );
        // The message it names was indeed delivered before: this is its duplicate.
        assert!(finding.history.len() >= 2, "{finding}");
        assert!(finding.to_string().contains(finding.message.as_str()));
    }
}

#[tokio::test]
async fn the_checker_passes_the_consumer_writing_through_the_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let mut correct = Ledger::with_inbox(&dir.path().join("ledger.db"))
        .await
        .unwrap();
    let messages = payments();
    for seed in 0..10 {
        let report = Checker::new()
            .seed(seed)
            .copies(3)
            .check(&mut correct, &messages)
            .await
            .unwrap_or_else(|e| panic!("the inbox consumer is idempotent: {e}"));
        assert!(
            report.crashes > 0,
            "crashes were tried (seed {seed}): {report}"
        );
        assert!(
            report.duplicates > 0,
            "duplicates were delivered (seed {seed})"
        );
    }
}
