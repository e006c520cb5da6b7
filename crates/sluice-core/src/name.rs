//! Names of topics, subscriptions and namespaces, and the one function that derives every
//! physical name (queues, exchanges, DLQs, retry tiers) from them.
//!
//! Invariant: a validated name matches `[a-z0-9_-]{1,48}` (namespaces `{1,12}`), so every
//! physical name derived here fits every backend: SQS allows 80 characters without dots
//! (with `.fifo` at the end), Kafka 249, RabbitMQ 255 bytes.

use std::fmt;
use std::time::Duration;

use crate::error::NameError;

/// Longest topic or subscription name.
pub const MAX_NAME_LEN: usize = 48;
/// Longest namespace.
pub const MAX_NAMESPACE_LEN: usize = 12;

fn validate(kind: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if let Some(character) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
    {
        return Err(NameError::InvalidCharacter {
            kind,
            name: name.to_owned(),
            character,
        });
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            kind,
            name: name.to_owned(),
            len: name.len(),
            max,
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl $ty {
            /// Validates `name` (`[a-z0-9_-]`, see the module docs) and wraps it.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                validate($kind, &name, $max)?;
                Ok(Self(name))
            }

            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
    };
}

name_type!(
    /// A validated topic name: `[a-z0-9_-]`, 1 to 48 characters.
    TopicName,
    "topic",
    MAX_NAME_LEN
);
name_type!(
    /// A validated subscription name: `[a-z0-9_-]`, 1 to 48 characters, unique in its
    /// namespace (the same name on another topic is an error).
    SubscriptionName,
    "subscription",
    MAX_NAME_LEN
);
name_type!(
    /// A validated namespace: `[a-z0-9_-]`, 1 to 12 characters, prefixed to every physical
    /// name so several environments (`dev`, `staging`) can share one broker.
    Namespace,
    "namespace",
    MAX_NAMESPACE_LEN
);

/// Derives every physical name a backend creates. Backends never build names by hand.
///
/// With namespace `dev` and separator `.`:
///
/// | object | physical name |
/// |---|---|
/// | topic `orders` | `dev.orders` |
/// | subscription `billing` | `dev.billing` |
/// | its DLQ | `dev.billing.dlq` |
/// | its retry tier for 5 s | `dev.billing.retry.5s` |
/// | delay tier of topic `orders` for 1 m | `dev.orders.delay.1m` |
///
/// Backends that refuse dots in names (SQS) use the separator `-`. Because names never
/// contain `.`, the `.`-separated forms cannot collide; with `-` the suffixes (`-dlq`,
/// `-retry-5s`) are reserved: a subscription must not be named `x-dlq` on such a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    namespace: Option<Namespace>,
    separator: char,
}

impl Default for Naming {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Naming {
    /// Naming with an optional namespace and the separator `.`.
    pub fn new(namespace: Option<Namespace>) -> Self {
        Self {
            namespace,
            separator: '.',
        }
    }

    /// The same naming with another separator (`-` for backends that refuse dots).
    pub fn with_separator(mut self, separator: char) -> Self {
        self.separator = separator;
        self
    }

    /// The namespace, if any.
    pub fn namespace(&self) -> Option<&Namespace> {
        self.namespace.as_ref()
    }

    /// The inverse of [`topic`](Self::topic) and [`subscription`](Self::subscription): the
    /// logical name inside a physical one, or `None` if `physical` is not in this namespace.
    pub fn strip_namespace<'a>(&self, physical: &'a str) -> Option<&'a str> {
        match &self.namespace {
            Some(ns) => physical
                .strip_prefix(ns.as_str())?
                .strip_prefix(self.separator),
            None => Some(physical),
        }
    }

    fn join(&self, parts: &[&str]) -> String {
        let mut out = String::new();
        if let Some(ns) = &self.namespace {
            out.push_str(ns.as_str());
            out.push(self.separator);
        }
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                out.push(self.separator);
            }
            out.push_str(part);
        }
        out
    }

    /// Physical name of a topic (exchange, SNS topic, Kafka topic, log directory).
    pub fn topic(&self, topic: &TopicName) -> String {
        self.join(&[topic.as_str()])
    }

    /// Physical name of a subscription (queue, consumer group).
    pub fn subscription(&self, subscription: &SubscriptionName) -> String {
        self.join(&[subscription.as_str()])
    }

    /// Physical name of a subscription's dead-letter queue.
    pub fn dead_letter(&self, subscription: &SubscriptionName) -> String {
        self.join(&[subscription.as_str(), "dlq"])
    }

    /// Physical name of a subscription's retry tier for `delay`. Backends use whole-second
    /// tiers (labels of at most 6 characters), which keeps every name within SQS's 80.
    pub fn retry_tier(&self, subscription: &SubscriptionName, delay: Duration) -> String {
        self.join(&[subscription.as_str(), "retry", &tier_label(delay)])
    }

    /// Physical name of a topic's delay tier for `delay` (delayed publishes).
    pub fn delay_tier(&self, topic: &TopicName, delay: Duration) -> String {
        self.join(&[topic.as_str(), "delay", &tier_label(delay)])
    }
}

/// A short label for a tier delay: `250ms`, `5s`, `10m`, `2h`, `3d` (the largest unit that
/// divides it exactly).
pub fn tier_label(delay: Duration) -> String {
    let ms = delay.as_millis();
    const UNITS: [(u128, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    for (size, unit) in UNITS {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_are_accepted() {
        assert!(TopicName::new("orders").is_ok());
        assert!(TopicName::new("order_events-v2").is_ok());
        assert!(TopicName::new("a".repeat(48)).is_ok());
    }

    #[test]
    fn invalid_names_get_an_error_naming_the_problem() {
        assert_eq!(TopicName::new(""), Err(NameError::Empty { kind: "topic" }));
        let err = TopicName::new("Orders").unwrap_err();
        assert!(err.to_string().contains("`O`"), "{err}");
        let err = SubscriptionName::new("a.b").unwrap_err();
        assert!(matches!(
            err,
            NameError::InvalidCharacter { character: '.', .. }
        ));
        let err = TopicName::new("a".repeat(49)).unwrap_err();
        assert!(err.to_string().contains("limit is 48"), "{err}");
        assert!(Namespace::new("a".repeat(13)).is_err());
    }

    #[test]
    fn physical_names_carry_the_namespace_and_fit_sqs() {
        let ns = Naming::new(Some(Namespace::new("staging").unwrap()));
        let sub = SubscriptionName::new("billing").unwrap();
        assert_eq!(ns.subscription(&sub), "staging.billing");
        assert_eq!(ns.dead_letter(&sub), "staging.billing.dlq");
        assert_eq!(
            ns.retry_tier(&sub, Duration::from_secs(300)),
            "staging.billing.retry.5m"
        );
        let sqs = Naming::new(Some(Namespace::new("a".repeat(12)).unwrap())).with_separator('-');
        let long = SubscriptionName::new("s".repeat(48)).unwrap();
        let name = sqs.retry_tier(&long, Duration::from_secs(43_199)) + ".fifo";
        assert!(name.len() <= 80, "{name} is {} long", name.len());
        assert!(!name.trim_end_matches(".fifo").contains('.'));
    }

    #[test]
    fn strip_namespace_inverts_the_physical_name() {
        let ns = Naming::new(Some(Namespace::new("dev").unwrap())).with_separator('-');
        let topic = TopicName::new("orders").unwrap();
        assert_eq!(ns.strip_namespace(&ns.topic(&topic)), Some("orders"));
        assert_eq!(ns.strip_namespace("prod-orders"), None, "another namespace");
        assert_eq!(Naming::default().strip_namespace("orders"), Some("orders"));
    }

    #[test]
    fn tier_labels_use_the_largest_exact_unit() {
        assert_eq!(tier_label(Duration::from_millis(250)), "250ms");
        assert_eq!(tier_label(Duration::from_secs(5)), "5s");
        assert_eq!(tier_label(Duration::from_secs(90)), "90s");
        assert_eq!(tier_label(Duration::from_secs(7200)), "2h");
    }
}
