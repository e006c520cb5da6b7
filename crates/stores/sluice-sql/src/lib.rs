//! Sluice on SQL databases — PostgreSQL and SQLite through sqlx: the three standard ways to
//! make consumers safe against duplicate delivery, durable and shared between processes.
//!
//! | item | what it gives |
//! |---|---|
//! | [`SqlStore`] | the durable [`IdempotencyStore`](sluice_core::IdempotencyStore) (`Worker::idempotency`), [`DedupStore`](sluice_core::DedupStore) (a broker backend's emulated dedup window) and [`JobStore`](sluice_core::JobStore) (job status, cancellations and unique jobs: `Jobs::job_store`) |
//! | [`Inbox`] | the transactional inbox: the handler's writes and the inbox row commit together, then the ack — exactly-once effects; for batch handlers too, one transaction per batch |
//! | [`Outbox`], [`Relay`] | the transactional outbox: events written with the business data, published in order by a relay |
//! | [`migrate`] | creates Sluice's tables (`migrations/` in this crate, versioned in `sluice_schema_migrations`) |
//! | [`sqlite`] | opening an SQLite file the way these need it (WAL, busy timeout): the embedded, serverless store |
//!
//! # Example: an idempotent payment consumer
//!
//! ```no_run
//! # async fn example(backend: sluice_core::DynBackend) -> Result<(), Box<dyn std::error::Error>> {
//! use sluice_core::{Backend, SubscriptionName};
//! use sluice_runtime::{CancellationToken, Worker};
//! use sluice_sql::Inbox;
//!
//! #[derive(serde::Deserialize)]
//! struct PaymentRequested { account: String, cents: i64 }
//!
//! let pool = sqlx::PgPool::connect("postgres://127.0.0.1/test").await?;
//! sluice_sql::migrate(&pool).await?;
//! let inbox = Inbox::new(pool);
//! let handler = inbox.json_handler(|p: PaymentRequested, mut tx, _ctx| async move {
//!     sqlx::query("UPDATE accounts SET balance = balance - $1 WHERE id = $2")
//!         .bind(p.cents)
//!         .bind(&p.account)
//!         .execute(&mut *tx)
//!         .await?;
//!     Ok(tx) // Sluice commits it with the inbox row, then acks
//! });
//! let subscriber = backend.subscribe(&SubscriptionName::new("payments")?).await?;
//! Worker::builder(subscriber, handler).build().run(CancellationToken::new()).await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! | file | what lives there |
//! |---|---|
//! | `dialect.rs` | [`SqlDatabase`]: every statement, written once for both databases by a macro |
//! | `store.rs` | [`SqlStore`] |
//! | `inbox/` | [`Inbox`], [`InboxHandler`]; `batch.rs`: the batch form, [`InboxBatchHandler`] (one transaction for a batch's rows and writes) |
//! | `outbox.rs` | [`Outbox`], [`Relay`] |
//! | `jobs.rs` | [`SqlStore`] as the job store, and its statements |
//! | `limits.rs` | [`SqlStore`] as the limiter of global rate limits and concurrency bounds |
//! | `error.rs` | sqlx errors as Sluice's (connection problems are retryable) |
//! | `migrations/{postgres,sqlite}/` | the schema, one file per version |

mod dialect;
mod error;
mod inbox;
mod jobs;
mod limits;
mod outbox;
mod store;

pub use dialect::{OutboxRow, SqlDatabase};
pub use inbox::{Inbox, InboxBatchHandler, InboxBatchResult, InboxHandler};
pub use jobs::JobSql;
pub use limits::LimitSql;
pub use outbox::{Outbox, OutboxLag, Relay, RelayStats, Round};
/// The sqlx this crate is built on (pools and transactions in its API are sqlx's).
pub use sqlx;
pub use store::SqlStore;

/// Creates or upgrades Sluice's tables (`sluice_idempotency`, `sluice_dedup`, `sluice_inbox`,
/// `sluice_outbox`, `sluice_jobs`, `sluice_limits`, `sluice_slots`, `sluice_slot_bounds`) on
/// the pool's database; returns the versions applied now (empty when up
/// to date). Safe to call from every process at start-up: concurrent callers wait for each
/// other (PostgreSQL) or find the tables made (SQLite). Versions are kept in Sluice's own
/// table, `sluice_schema_migrations`, so they never mix with the application's migrations.
pub async fn migrate<DB: SqlDatabase>(pool: &sqlx::Pool<DB>) -> sluice_core::Result<Vec<i64>> {
    DB::apply_migrations(pool).await.map_err(|e| {
        error::db_error(
            <DB as sqlx::Database>::NAME,
            "applying Sluice's migrations",
            e,
        )
    })
}

/// SQLite as the embedded, serverless store: one file next to the engine's directory or
/// anywhere else, shared by the processes of one machine.
#[cfg(feature = "sqlite")]
pub mod sqlite {
    use std::path::Path;
    use std::time::Duration;

    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };

    /// Opens (creating if missing) the SQLite file at `path` in WAL mode with a 10 s busy
    /// timeout, `synchronous = FULL` (a committed inbox row survives a power cut), and runs
    /// [`migrate`](crate::migrate).
    pub async fn open(path: impl AsRef<Path>) -> sluice_core::Result<sqlx::SqlitePool> {
        let options = SqliteConnectOptions::new()
            .filename(path.as_ref())
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| {
                crate::error::db_error("SQLite", &format!("opening {}", path.as_ref().display()), e)
            })?;
        crate::migrate(&pool).await?;
        Ok(pool)
    }
}
