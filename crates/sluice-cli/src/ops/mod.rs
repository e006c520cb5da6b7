//! The operations commands: `topics`, `stats`, `publish`, `tail`, `consume`, `dlq`, `delays`. Each works
//! against any backend URL (`--url` or `SLUICE_URL`; `embedded:./sluice-data` by default),
//! prints a table by default and JSON with `--json`, and names the URL and the operation in
//! every error.

pub(crate) mod check;
pub(crate) mod consume;
pub(crate) mod delays;
pub(crate) mod dlq;
pub(crate) mod outbox;
pub(crate) mod publish;
pub(crate) mod stats;
pub(crate) mod table;
pub(crate) mod tail;
pub(crate) mod topics;

use anyhow::Context;
use sluice::{DynBackend, Message};

/// Where to connect and how to print: every operations command takes these.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Target {
    /// Backend URL: `embedded:DIR`, `sluice://HOST:PORT`, `amqp://…`.
    #[arg(
        long,
        env = "SLUICE_URL",
        default_value = "embedded:./sluice-data",
        global = true
    )]
    pub(crate) url: String,
    /// Print JSON (one document, or one line per message for streams) instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

impl Target {
    /// Connects, naming the URL if that fails.
    pub(crate) async fn connect(&self) -> anyhow::Result<DynBackend> {
        sluice::connect(&self.url)
            .await
            .with_context(|| format!("connecting to {}", self.url))
    }

    /// Context for an operation's error: what failed, where.
    pub(crate) fn failed(&self, operation: impl std::fmt::Display) -> String {
        format!("{operation} on {}", self.url)
    }
}

/// A message as one JSON object (payload as text, invalid UTF-8 replaced; `published_at` in
/// RFC 3339 with milliseconds).
pub(crate) fn message_json(message: &Message, attempt: Option<u32>) -> serde_json::Value {
    serde_json::json!({
        "id": message.id().as_str(),
        "type": message.message_type(),
        "routing_key": message.routing_key(),
        "ordering_key": message.ordering_key(),
        "headers": message.headers(),
        "content_type": message.content_type(),
        "published_at": message.published_at().map(sluice::envelope::format_time),
        "payload": String::from_utf8_lossy(message.payload()),
        "attempt": attempt,
    })
}

/// A message as one human line: id, keys, then the payload (cut at 200 characters).
pub(crate) fn message_line(message: &Message, attempt: Option<u32>) -> String {
    let mut line = message.id().to_string();
    if let Some(key) = message.routing_key() {
        line += &format!("  key={key}");
    }
    if let Some(attempt) = attempt.filter(|a| *a > 1) {
        line += &format!("  attempt={attempt}");
    }
    let payload = String::from_utf8_lossy(message.payload());
    let cut: String = payload.chars().take(200).collect();
    let more = if cut.len() < payload.len() { "…" } else { "" };
    format!("{line}  {cut}{more}")
}
