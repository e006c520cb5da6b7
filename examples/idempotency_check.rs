//! The idempotency checker (crate `sluice-testing`) on a payment consumer backed by SQLite:
//! every payment delivered three times, shuffled, with crashes mid-transaction, compared
//! with a clean run. The consumer without an inbox is caught charging a payment twice; the
//! one writing through the transactional inbox passes.
//!
//! `cargo run -p sluice-examples --example idempotency_check`
//!
//! In your own tests, implement `sluice_testing::Subject` for your handler (see
//! `examples/src/ledger.rs`) and call `Checker::new().assert_idempotent(...)`.

use sluice_examples::ledger::{payment, Ledger};
use sluice_testing::{CheckError, Checker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let messages: Vec<_> = (0..20)
        .map(|n| payment(&format!("payment-{n}"), &format!("acct-{}", n % 4), 100 + n))
        .collect();

    let mut buggy = Ledger::without_inbox(&dir.path().join("buggy.db"))
        .await
        .map_err(anyhow::Error::from_boxed)?;
    match Checker::new().seed(7).check(&mut buggy, &messages).await {
        Err(CheckError::Mismatch(finding)) => println!("without an inbox:\n{finding}\n"),
        other => anyhow::bail!("the checker should have found the double charge: {other:?}"),
    }

    let mut correct = Ledger::with_inbox(&dir.path().join("correct.db"))
        .await
        .map_err(anyhow::Error::from_boxed)?;
    let report = Checker::new()
        .seed(7)
        .check(&mut correct, &messages)
        .await?;
    println!("with the inbox: {report}");
    Ok(())
}
