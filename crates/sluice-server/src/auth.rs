//! Who may connect, and what each API token may do: [`Auth`] (the tokens) and [`Grants`]
//! (one token's permissions), for both `sluice://` and the HTTP API.
//!
//! A tokens file holds one token per line, optionally followed by its grants:
//!
//! ```text
//! # token            grants (none: everything)
//! ops-4b1c…          admin
//! billing-9f2e…      consume:billing consume:orders
//! shop-77aa…         publish:orders-*,payments
//! ```
//!
//! | grant | allows |
//! |---|---|
//! | `all` (or no grant at all) | everything |
//! | `publish:PATTERNS` | publishing to topics matching a pattern; creating and describing them |
//! | `consume:PATTERNS` | receiving from and settling on subscriptions matching a pattern, their stats; creating one needs its topic to match too |
//! | `admin` | everything else: listing, deleting, the DLQ tools, the admin API, `/metrics`, pausing and resuming subscriptions; creating, describing and reading the counts of any topic or subscription (never publishing or consuming) |
//!
//! Patterns are comma-separated; `*` matches any run of characters but `.`. They are matched
//! against the full name, namespace included: the namespace's dot must be written
//! (`staging.orders-*`, `*.orders`), so `orders-*` never reaches into a namespace. The coordination requests every
//! worker makes (global rate limits and concurrency slots, reading flags and writing circuit
//! states, the job store) are open to every valid token.

use std::path::Path;
use std::sync::Arc;

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish to (or create, describe) a topic.
    Publish,
    /// Receive from (or settle on, describe) a subscription, or subscribe to a topic.
    Consume,
    /// Anything else: list, delete, DLQ tools, the admin API.
    Admin,
}

impl Action {
    /// The grant's keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Consume => "consume",
            Action::Admin => "admin",
        }
    }
}

/// One token's permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    admin: bool,
    publish: Vec<String>,
    consume: Vec<String>,
}

impl Grants {
    /// Everything (a token without grants, or a server without tokens).
    pub fn all() -> Self {
        // Outside any namespace, and in every namespace.
        let every = vec!["*".to_owned(), "*.*".to_owned()];
        Self {
            admin: true,
            publish: every.clone(),
            consume: every,
        }
    }

    /// Nothing yet: add with [`admin`](Self::admin), [`publish`](Self::publish),
    /// [`consume`](Self::consume).
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds the admin grant.
    #[must_use]
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }

    /// Adds publishing to topics matching `pattern`.
    #[must_use]
    pub fn publish(mut self, pattern: impl Into<String>) -> Self {
        self.publish.push(pattern.into());
        self
    }

    /// Adds consuming from subscriptions (and topics) matching `pattern`.
    #[must_use]
    pub fn consume(mut self, pattern: impl Into<String>) -> Self {
        self.consume.push(pattern.into());
        self
    }

    /// Whether `action` is allowed on the object with this full (physical) name; `Admin`
    /// ignores the name.
    pub fn allows(&self, action: Action, name: &str) -> bool {
        let patterns = match action {
            Action::Admin => return self.admin,
            Action::Publish => &self.publish,
            Action::Consume => &self.consume,
        };
        patterns.iter().any(|p| matches(p, name))
    }

    /// `Ok` if `action` is allowed on `name` (a full name; `Admin` ignores it), else the
    /// contract's `Forbidden` error naming what was refused and the grant that would allow
    /// it. `what` says what the request does ("publish to topic", "delete").
    pub fn check(&self, action: Action, what: &str, name: &str) -> Result<(), sluice_core::Error> {
        if self.allows(action, name) {
            return Ok(());
        }
        Err(sluice_core::Error::Forbidden(match action {
            Action::Admin => {
                format!("this API token may not {what}: it needs the `admin` grant")
            }
            _ => format!(
                "this API token may not {what} `{name}`: it needs a `{}:` grant matching it",
                action.as_str()
            ),
        }))
    }

    /// `Ok` if the token may manage (create, describe, read the counts of) the object with
    /// this full name: with `admin`, or with one of `actions` on it; else the `Forbidden`
    /// error of the first action. Managing never reaches the object's data.
    pub fn check_manage(
        &self,
        actions: &[Action],
        what: &str,
        name: &str,
    ) -> Result<(), sluice_core::Error> {
        if self.admin || actions.iter().any(|a| self.allows(*a, name)) {
            return Ok(());
        }
        self.check(
            actions.first().copied().unwrap_or(Action::Admin),
            what,
            name,
        )
    }

    /// Parses grants as written after a token in a tokens file.
    pub fn parse<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut grants = Self::none();
        let mut any = false;
        for word in words {
            any = true;
            let (kind, patterns) = word.split_once(':').unwrap_or((word, ""));
            let list = || {
                let list: Vec<String> = patterns
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect();
                if list.is_empty() {
                    Err(format!("`{kind}` needs patterns, as in `{kind}:orders-*`"))
                } else {
                    Ok(list)
                }
            };
            match kind {
                "all" if patterns.is_empty() => grants = Self::all(),
                "admin" if patterns.is_empty() => grants.admin = true,
                "publish" => grants.publish.extend(list()?),
                "consume" => grants.consume.extend(list()?),
                _ => {
                    return Err(format!(
                        "unknown grant `{word}` (grants are `all`, `admin`, `publish:PATTERNS`, `consume:PATTERNS`)"
                    ))
                }
            }
        }
        Ok(if any { grants } else { Self::all() })
    }
}

/// The name grants are matched against: `NAMESPACE.name` in a namespace, else `name`,
/// whatever separator the backend puts in its physical names (the engine's is `-`, which
/// names may hold: matching physical names would let `orders-*` reach into a namespace).
pub fn grant_name(naming: &sluice_core::Naming, name: &str) -> String {
    match naming.namespace() {
        Some(ns) => format!("{}.{name}", ns.as_str()),
        None => name.to_owned(),
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters other than
/// `.`: names never hold a dot, so the only one in a full name separates the namespace, and
/// `orders-*` cannot match `orders-prod.payments` (namespace `orders-prod`).
fn matches(pattern: &str, name: &str) -> bool {
    let (patterns, names): (Vec<&str>, Vec<&str>) =
        (pattern.split('.').collect(), name.split('.').collect());
    patterns.len() == names.len() && patterns.iter().zip(&names).all(|(p, n)| matches_part(p, n))
}

/// [`matches`] within one dot-free part.
fn matches_part(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Who may connect, and with which [`Grants`].
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Vec<(String, Arc<Grants>)>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens themselves.
        f.debug_struct("Auth")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

/// A tokens file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct TokensError {
    /// Line number, from 1.
    pub line: usize,
    /// What is wrong (never the token itself).
    pub reason: String,
}

impl Auth {
    /// No tokens: any client that can reach the (loopback) listener, with every grant.
    pub fn open() -> Self {
        Self::default()
    }

    /// Clients must present one of these tokens; each may do everything.
    pub fn tokens(tokens: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let mut auth = Self::default();
        for token in tokens {
            auth = auth.token(token, Grants::all());
        }
        auth
    }

    /// Adds a token with these grants (an empty token is ignored).
    #[must_use]
    pub fn token(mut self, token: impl Into<String>, grants: Grants) -> Self {
        let token = token.into();
        if !token.is_empty() {
            self.tokens.push((token, Arc::new(grants)));
        }
        self
    }

    /// Parses a tokens file's text: one token per line with its grants, blank lines and `#`
    /// comments ignored.
    pub fn parse(text: &str) -> Result<Self, TokensError> {
        let mut auth = Self::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.split_once('#').map_or(line, |(l, _)| l).trim();
            let mut words = line.split_whitespace();
            let Some(token) = words.next() else { continue };
            let grants = Grants::parse(words).map_err(|reason| TokensError {
                line: i + 1,
                reason,
            })?;
            auth = auth.token(token, grants);
        }
        Ok(auth)
    }

    /// Reads a tokens file (see [`parse`](Self::parse)).
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        Self::parse(&std::fs::read_to_string(path)?)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Adds the tokens of another `Auth`.
    #[must_use]
    pub fn merge(mut self, other: Auth) -> Self {
        self.tokens.extend(other.tokens);
        self
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no token is configured (anyone on the listener is admitted).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether any token is required.
    pub fn required(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Whether a client presenting `token` is admitted.
    pub fn accepts(&self, token: Option<&str>) -> bool {
        self.admit(token).is_some()
    }

    /// The grants of a client presenting `token`, or `None` if it is not admitted.
    pub fn admit(&self, token: Option<&str>) -> Option<Arc<Grants>> {
        if self.tokens.is_empty() {
            return Some(Arc::new(Grants::all()));
        }
        // Compare every token in full: the time taken does not say how much matched.
        let token = token?;
        let mut found = None;
        for (t, grants) in &self.tokens {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) && found.is_none() {
                found = Some(grants.clone());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_tokens_everyone_is_admitted_with_tokens_only_holders() {
        assert!(Auth::open().accepts(None));
        let auth = Auth::tokens(["s3cret", "other"]);
        assert!(auth.accepts(Some("other")));
        assert!(!auth.accepts(Some("s3cre")));
        assert!(!auth.accepts(None));
    }

    #[test]
    fn patterns_match_with_stars_anywhere() {
        assert!(matches("*", ""));
        assert!(matches("orders-*", "orders-eu"));
        assert!(matches("orders-*", "orders-"));
        assert!(!matches("orders-*", "orders"));
        assert!(!matches("orders-*", "payments"));
        assert!(matches("*.orders", "staging.orders"));
        assert!(!matches("*.orders", "staging.orders2"));
        assert!(matches("a*b*c", "abc"));
        assert!(matches("a*b*c", "aXbYbZc"));
        assert!(!matches("a*b*c", "aXcYb"));
        assert!(!matches("ab*ba", "aba"));
        assert!(matches("orders", "orders"));
        assert!(!matches("orders", "orders-eu"));
        // A star never crosses the namespace separator.
        assert!(!matches("orders-*", "orders-prod.payments"));
        assert!(!matches("*", "staging.orders"));
        assert!(matches("staging.orders-*", "staging.orders-eu"));
        assert!(matches("*.orders", "prod.orders"));
        assert!(!matches("staging.*", "staging"));
        assert!(Grants::all().allows(Action::Publish, "staging.orders"));
        assert!(Grants::all().allows(Action::Consume, "orders"));
    }

    #[test]
    fn a_tokens_file_gives_each_token_its_grants() {
        let auth = Auth::parse(
            "# comment\n\nfull\nops admin # trailing\nshop publish:orders-*,payments\nbill consume:billing consume:orders\n",
        )
        .unwrap();
        assert_eq!(auth.len(), 4);
        let full = auth.admit(Some("full")).unwrap();
        assert!(full.allows(Action::Admin, "") && full.allows(Action::Publish, "x"));
        let ops = auth.admit(Some("ops")).unwrap();
        assert!(ops.allows(Action::Admin, "") && !ops.allows(Action::Publish, "orders"));
        let shop = auth.admit(Some("shop")).unwrap();
        assert!(shop.allows(Action::Publish, "orders-eu"));
        assert!(shop.allows(Action::Publish, "payments"));
        assert!(!shop.allows(Action::Publish, "orders"));
        assert!(!shop.allows(Action::Consume, "orders-eu"));
        assert!(!shop.allows(Action::Admin, ""));
        let bill = auth.admit(Some("bill")).unwrap();
        assert!(bill.allows(Action::Consume, "billing") && bill.allows(Action::Consume, "orders"));
        assert!(!bill.allows(Action::Consume, "payments"));
    }

    #[test]
    fn a_bad_grant_is_refused_with_its_line_and_never_the_token() {
        let err = Auth::parse("good\nsecret-token publsh:orders\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.reason.contains("publsh:orders"), "{err}");
        assert!(!err.to_string().contains("secret-token"), "{err}");
        let err = Auth::parse("t consume:\n").unwrap_err();
        assert!(err.reason.contains("needs patterns"), "{err}");
        let err = Auth::parse("t admin:x\n").unwrap_err();
        assert!(err.reason.contains("unknown grant"), "{err}");
    }
}
