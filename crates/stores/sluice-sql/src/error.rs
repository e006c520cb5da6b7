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
        retryable: matches!(&err, sqlx::Error::Database(e) if transient(db, e.code().as_deref())),
        source: Some(Box::new(err)),
    }
}

/// Codes that go away when tried again: PostgreSQL's serialization failures, deadlocks,
/// lost connections and shutdowns (classes 08, 57P0x); SQLite's BUSY and LOCKED with their
/// extended codes (the low byte is the primary code).
fn transient(db: &str, code: Option<&str>) -> bool {
    let Some(code) = code else { return false };
    if db == "SQLite" {
        return code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
    }
    matches!(code, "40001" | "40P01" | "57P01" | "57P02" | "57P03") || code.starts_with("08")
}

#[cfg(test)]
mod tests {
    use super::transient;

    #[test]
    fn busy_locked_serialization_and_lost_connections_are_transient() {
        for code in ["5", "6", "517", "261", "262", "773"] {
            assert!(transient("SQLite", Some(code)), "{code}");
        }
        for code in ["40001", "40P01", "57P01", "08006"] {
            assert!(transient("PostgreSQL", Some(code)), "{code}");
        }
        for code in ["19", "2067"] {
            assert!(!transient("SQLite", Some(code)), "{code}");
        }
        for code in ["23505", "42P01"] {
            assert!(!transient("PostgreSQL", Some(code)), "{code}");
        }
        assert!(!transient("PostgreSQL", None));
    }
}
