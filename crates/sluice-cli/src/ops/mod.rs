//! The operations commands: `topics`, `stats`, `publish`, `tail`, `consume`, `dlq`, `delays`. Each works
//! against any backend URL (`--url`, `SLUICE_URL` or the config file; `embedded:./sluice-data`
//! by default),
//! prints a table by default and JSON with `--json`, and names the URL and the operation in
//! every error.

pub(crate) mod asyncapi;
pub(crate) mod check;
pub(crate) mod consume;
pub(crate) mod control;
pub(crate) mod delays;
pub(crate) mod dlq;
pub(crate) mod jobs;
pub(crate) mod outbox;
pub(crate) mod publish;
pub(crate) mod stats;
pub(crate) mod table;
pub(crate) mod tail;
pub(crate) mod topics;

use anyhow::Context;
use sluice::{DynBackend, Message};

/// Where the backend URL of a command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// `--url` or `SLUICE_URL`.
    Given,
    /// The `url` of a config file.
    Config,
    /// Nothing named one: `embedded:./sluice-data`.
    Default,
}

/// The URL used when neither `--url`, `SLUICE_URL` nor a config file names one.
pub(crate) const DEFAULT_URL: &str = "embedded:./sluice-data";

/// Where to connect and how to print: every operations command takes these.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Target {
    /// Backend URL: `embedded:DIR`, `sluice://HOST:PORT`, `amqp://…`, `sqs://…`,
    /// `kafka://…`. Without it: `url` in the config file (`$SLUICE_CONFIG`, else
    /// `./sluice.toml`, else `~/.config/sluice/config.toml`), else `embedded:./sluice-data`.
    #[arg(long = "url", env = "SLUICE_URL", global = true)]
    given: Option<String>,
    /// Print JSON (one document, or one line per message for streams) instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// The URL and where it came from, resolved once.
    #[arg(skip)]
    resolved: std::sync::OnceLock<Result<(String, Source), String>>,
}

impl Target {
    fn resolve(&self) -> &Result<(String, Source), String> {
        self.resolved.get_or_init(|| {
            if let Some(url) = &self.given {
                return Ok((url.clone(), Source::Given));
            }
            match crate::config::url() {
                Ok(Some(url)) => Ok((url, Source::Config)),
                Ok(None) => Ok((DEFAULT_URL.to_owned(), Source::Default)),
                Err(err) => Err(format!("{err:#}")),
            }
        })
    }

    /// The backend URL.
    pub(crate) fn url(&self) -> &str {
        match self.resolve() {
            Ok((url, _)) => url,
            Err(_) => DEFAULT_URL,
        }
    }

    /// Connects, naming the URL if that fails. An embedded directory that did not exist is
    /// created, and said so on stderr (a forgotten `--url` otherwise lists nothing, silently).
    pub(crate) async fn connect(&self) -> anyhow::Result<DynBackend> {
        let (url, source) = match self.resolve() {
            Ok((url, source)) => (url.as_str(), *source),
            Err(err) => anyhow::bail!("{err}"),
        };
        let new_directory = sluice::BackendUrl::parse(url)
            .ok()
            .and_then(|parsed| match parsed.kind {
                sluice::BackendKind::Embedded { path, .. } => Some(path),
                _ => None,
            })
            .filter(|path| !path.exists());
        let backend = sluice::connect(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        if let Some(path) = new_directory {
            let why = match source {
                Source::Given => "",
                Source::Config => " (the URL of the config file)",
                Source::Default => {
                    " (no --url, SLUICE_URL or config file named a backend: this is the default)"
                }
            };
            eprintln!(
                "note: created a new, empty embedded data directory {}{why}",
                path.display()
            );
        }
        Ok(backend)
    }

    /// Context for an operation's error: what failed, where.
    pub(crate) fn failed(&self, operation: impl std::fmt::Display) -> String {
        format!("{operation} on {}", self.url())
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
