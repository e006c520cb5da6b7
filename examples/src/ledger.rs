//! A payment ledger on SQLite, as the idempotency checker sees it: a [`Subject`] whose
//! handler credits an account and writes a ledger line in one transaction — through the
//! transactional inbox ([`Ledger::with_inbox`]) or, the deliberate bug, without it
//! ([`Ledger::without_inbox`]).
//!
//! Used by `examples/idempotency_check.rs` and `tests/idempotency_check.rs`.

use std::collections::BTreeMap;
use std::path::Path;

use sluice::sql::sqlx::{self, SqlitePool};
use sluice::sql::Inbox;
use sluice::{BoxError, Message};
use sluice_testing::{Faults, Subject};

/// The subscription the ledger's inbox rows are recorded under.
pub const SUBSCRIPTION: &str = "payments";

/// A payment message: `account:cents`, with a business id.
pub fn payment(id: &str, account: &str, cents: i64) -> Message {
    Message::builder(format!("{account}:{cents}"))
        .id(id)
        .build()
        .expect("a valid message")
}

/// The payment consumer under test.
pub struct Ledger {
    pool: SqlitePool,
    inbox: bool,
}

/// Balances per account, and ledger lines per message id.
pub type LedgerState = (BTreeMap<String, i64>, BTreeMap<String, i64>);

impl Ledger {
    async fn open(path: &Path, inbox: bool) -> Result<Self, BoxError> {
        let pool = sluice::sql::sqlite::open(path).await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS accounts (account TEXT PRIMARY KEY, balance INTEGER NOT NULL);\
             CREATE TABLE IF NOT EXISTS ledger (message_id TEXT NOT NULL, account TEXT NOT NULL, cents INTEGER NOT NULL);",
        )
        .execute(&pool)
        .await?;
        Ok(Self { pool, inbox })
    }

    /// The correct consumer: the inbox row, the credit and the ledger line commit together.
    pub async fn with_inbox(path: &Path) -> Result<Self, BoxError> {
        Self::open(path, true).await
    }

    /// The buggy consumer: the same writes in one transaction, but no inbox row, so a
    /// duplicate delivery credits the account again.
    pub async fn without_inbox(path: &Path) -> Result<Self, BoxError> {
        Self::open(path, false).await
    }
}

impl Subject for Ledger {
    type State = LedgerState;

    async fn reset(&mut self) -> Result<(), BoxError> {
        sqlx::raw_sql("DELETE FROM accounts; DELETE FROM ledger; DELETE FROM sluice_inbox;")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn handle(&mut self, message: &Message, faults: &Faults) -> Result<(), BoxError> {
        let text = std::str::from_utf8(message.payload())?;
        let (account, cents) = text.split_once(':').ok_or("payload is not account:cents")?;
        let cents: i64 = cents.parse()?;
        let mut tx = self.pool.begin().await?;
        if self.inbox && !Inbox::record(&mut tx, SUBSCRIPTION, message.id().as_str()).await? {
            return Ok(()); // handled before: skip (the transaction rolls back)
        }
        faults.point("after the inbox row")?;
        sqlx::query(
            "INSERT INTO accounts (account, balance) VALUES ($1, $2) \
             ON CONFLICT (account) DO UPDATE SET balance = accounts.balance + excluded.balance",
        )
        .bind(account)
        .bind(cents)
        .execute(&mut *tx)
        .await?;
        faults.point("after the credit")?;
        sqlx::query("INSERT INTO ledger (message_id, account, cents) VALUES ($1, $2, $3)")
            .bind(message.id().as_str())
            .bind(account)
            .bind(cents)
            .execute(&mut *tx)
            .await?;
        faults.point("before the commit")?;
        tx.commit().await?;
        Ok(())
    }

    async fn state(&mut self) -> Result<LedgerState, BoxError> {
        let balances = sqlx::query_as::<_, (String, i64)>("SELECT account, balance FROM accounts")
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect();
        let lines = sqlx::query_as::<_, (String, i64)>(
            "SELECT message_id, count(*) FROM ledger GROUP BY message_id",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        Ok((balances, lines))
    }
}
