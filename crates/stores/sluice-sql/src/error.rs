//! sqlx errors as Sluice's: a database that cannot be reached is a retryable connection
//! error; anything else names the operation that failed.

use sluice_core::Error;

/// Maps a sqlx error of `operation` (e.g. "claiming an idempotency key") on `db`.
pub(crate) fn db_error(db: &'static str, operation: &str, err: sqlx::Error) -> Error {
    let retryable = matches!(
        err,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
    );
    if retryable {
        return Error::connection(
            format!("{db} while {operation}: {err}"),
            Some(Box::new(err)),
        );
    }
    let message = match &err {
        sqlx::Error::Database(e) if e.message().contains("sluice_") => format!(
            "{db} while {operation}: {err} (did you run sluice_sql::migrate on this database?)"
        ),
        _ => format!("{db} while {operation}: {err}"),
    };
    Error::Backend {
        message,
        // Serialization failures and deadlocks go away when tried again.
        retryable: matches!(&err, sqlx::Error::Database(e)
            if matches!(e.code().as_deref(), Some("40001" | "40P01" | "5" | "6"))),
        source: Some(Box::new(err)),
    }
}
