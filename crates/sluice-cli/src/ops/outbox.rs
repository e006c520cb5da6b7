//! `sluice outbox relay|status|migrate --database URL`: the transactional outbox's relay as a
//! process of its own, its lag, and Sluice's tables. The database is PostgreSQL
//! (`postgres://…`) or an SQLite file (`sqlite:PATH`); the backend is `--url` as everywhere.

use std::time::Duration;

use anyhow::Context;
use sluice::sql::sqlx::{self, Pool};
use sluice::sql::{Outbox, OutboxLag, Relay, SqlDatabase};
use sluice::Backend;

use super::Target;

/// Arguments of `sluice outbox`.
#[derive(Debug, clap::Args)]
pub(crate) struct OutboxArgs {
    #[command(subcommand)]
    command: OutboxCommand,
}

#[derive(Debug, clap::Subcommand)]
enum OutboxCommand {
    /// Publishes the outbox's rows, in order, to the backend, until interrupted (or, with
    /// `--once`, until the outbox is empty). Safe to run twice: one relays at a time.
    Relay(RelayArgs),
    /// Shows how far the relay is behind: unsent rows and the age of the oldest.
    Status(DatabaseArgs),
    /// Creates or upgrades Sluice's tables (outbox, inbox, idempotency, dedup).
    Migrate(DatabaseArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct DatabaseArgs {
    #[command(flatten)]
    target: Target,
    /// The database holding the outbox: `postgres://USER@HOST:PORT/DB` or `sqlite:PATH`.
    #[arg(long, env = "SLUICE_DATABASE_URL")]
    database: String,
}

#[derive(Debug, clap::Args)]
struct RelayArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    /// Rows per batch (one transaction).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// How often an idle relay looks for new rows.
    #[arg(long, default_value = "100ms", value_parser = crate::duration::parse)]
    poll: Duration,
    /// How often to print the lag.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    report_every: Duration,
    /// Relay what is there, then exit.
    #[arg(long)]
    once: bool,
}

/// Runs `sluice outbox`.
pub(crate) async fn run(args: OutboxArgs) -> anyhow::Result<()> {
    let db = match &args.command {
        OutboxCommand::Relay(r) => &r.db,
        OutboxCommand::Status(d) | OutboxCommand::Migrate(d) => d,
    };
    let url = db.database.clone();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        with_pool(pool, args.command).await
    } else if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.trim_start_matches("//");
        let pool = sluice::sql::sqlite::open(path)
            .await
            .with_context(|| format!("opening {url}"))?;
        with_pool(pool, args.command).await
    } else {
        anyhow::bail!("--database must be postgres://… or sqlite:PATH, not `{url}`")
    }
}

async fn with_pool<DB: SqlDatabase>(pool: Pool<DB>, command: OutboxCommand) -> anyhow::Result<()> {
    match command {
        OutboxCommand::Migrate(d) => {
            let applied = sluice::sql::migrate(&pool)
                .await
                .with_context(|| format!("migrating {}", d.database))?;
            if applied.is_empty() {
                println!("Sluice's tables are up to date");
            } else {
                println!("applied migrations {applied:?}");
            }
            Ok(())
        }
        OutboxCommand::Status(d) => {
            let outbox = Outbox::new(pool);
            let lag = outbox
                .lag()
                .await
                .with_context(|| format!("reading the outbox of {}", d.database))?;
            print_lag(&lag, d.target.json);
            Ok(())
        }
        OutboxCommand::Relay(r) => relay(pool, r).await,
    }
}

fn print_lag(lag: &OutboxLag, json: bool) {
    let oldest_ms = lag.oldest.map(|d| d.as_millis() as u64);
    if json {
        println!(
            "{}",
            serde_json::json!({ "unsent": lag.unsent, "parked": lag.parked, "oldest_ms": oldest_ms })
        );
    } else {
        let oldest = lag.oldest.map_or_else(
            || "–".to_owned(),
            |d| humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string(),
        );
        println!(
            "unsent {}, oldest {oldest}, parked {}",
            lag.unsent, lag.parked
        );
    }
}

async fn relay<DB: SqlDatabase>(pool: Pool<DB>, args: RelayArgs) -> anyhow::Result<()> {
    let target = &args.db.target;
    sluice::sql::migrate(&pool)
        .await
        .with_context(|| format!("migrating {}", args.db.database))?;
    let backend = target.connect().await?;
    let publisher = backend
        .publisher()
        .await
        .with_context(|| target.failed("opening a publisher"))?;
    let outbox = Outbox::new(pool);
    let relay = Relay::new(outbox.clone(), publisher)
        .batch(args.batch)
        .poll_interval(args.poll);
    let stats = relay.stats();
    if args.once {
        let mut total = 0;
        loop {
            let round = relay
                .relay_once()
                .await
                .with_context(|| target.failed("relaying the outbox"))?;
            if round.held_elsewhere {
                anyhow::bail!(
                    "another relay holds the outbox of {} (it gives its lease back when it \
                     stops, or the lease runs out if it died); relayed {total}",
                    args.db.database
                );
            }
            total += round.published;
            if round.settled() == 0 {
                // Nothing waits (parked rows are not waiting: `status` shows them).
                break;
            }
        }
        println!("relayed {total}");
        return Ok(());
    }
    let shutdown = sluice::runtime::shutdown_on_signals();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    let mut report = tokio::time::interval(args.report_every);
    report.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = report.tick() => {
                match outbox.lag().await {
                    Ok(lag) => {
                        print!("relayed {}, errors {}; ", stats.published(), stats.errors());
                        print_lag(&lag, target.json);
                    }
                    Err(err) => eprintln!("warning: reading the outbox lag: {err}"),
                }
            }
        }
    }
    running.await.context("the relay stopped")?;
    println!("relayed {}", stats.published());
    Ok(())
}
