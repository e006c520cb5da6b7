//! Routing-key filters: the patterns a subscription uses to select messages.
//!
//! A routing key is a list of words separated by `.`. In a pattern, `*` matches exactly one
//! word and `#` matches zero or more words (AMQP topic-exchange semantics). A message without
//! a routing key has zero words: only patterns made of `#` match it.

use std::fmt;

use crate::error::Error;

/// A validated routing-key pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Filter {
    pattern: String,
}

impl Filter {
    /// Validates a pattern: non-empty words separated by `.`, where `*` and `#` stand alone.
    pub fn new(pattern: impl Into<String>) -> Result<Self, Error> {
        let pattern = pattern.into();
        let invalid = |reason| Error::InvalidFilter {
            pattern: pattern.clone(),
            reason,
        };
        if pattern.is_empty() {
            return Err(invalid(
                "it is empty (omit the filter to receive everything)",
            ));
        }
        if pattern.len() > 255 {
            return Err(invalid("it is longer than 255 bytes"));
        }
        for word in pattern.split('.') {
            if word.is_empty() {
                return Err(invalid(
                    "it has an empty word (`..`, or a leading or trailing `.`)",
                ));
            }
            if word.len() > 1 && (word.contains('*') || word.contains('#')) {
                return Err(invalid("`*` and `#` must stand alone between dots"));
            }
        }
        Ok(Self { pattern })
    }

    /// The filter that matches every message (`#`).
    pub fn all() -> Self {
        Self {
            pattern: "#".into(),
        }
    }

    /// The pattern as a string.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether a message with this routing key matches.
    pub fn matches(&self, routing_key: Option<&str>) -> bool {
        let pattern: Vec<&str> = self.pattern.split('.').collect();
        let key: Vec<&str> = match routing_key {
            Some(k) if !k.is_empty() => k.split('.').collect(),
            _ => Vec::new(),
        };
        matches_words(&pattern, &key)
    }
}

fn matches_words(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| matches_words(rest, &key[skip..])),
        Some((&word, rest)) => match key.split_first() {
            Some((first, key_rest)) => {
                (word == "*" || word == *first) && matches_words(rest, key_rest)
            }
            None => false,
        },
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, key: Option<&str>) -> bool {
        Filter::new(pattern).unwrap().matches(key)
    }

    #[test]
    fn star_matches_exactly_one_word() {
        assert!(m("eu.*", Some("eu.orders")));
        assert!(!m("eu.*", Some("eu")));
        assert!(!m("eu.*", Some("eu.orders.placed")));
        assert!(m("*.orders", Some("us.orders")));
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        assert!(m("#", None));
        assert!(m("#", Some("a.b.c")));
        assert!(m("eu.#", Some("eu")));
        assert!(m("eu.#", Some("eu.orders.placed")));
        assert!(m("#.placed", Some("eu.orders.placed")));
        assert!(!m("eu.#", Some("us.orders")));
        assert!(m("a.#.z", Some("a.z")));
        assert!(m("a.#.z", Some("a.b.c.z")));
    }

    #[test]
    fn a_message_without_routing_key_only_matches_hash() {
        assert!(!m("*", None));
        assert!(!m("orders", None));
        assert!(m("#.#", None));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        assert!(Filter::new("").is_err());
        assert!(Filter::new("eu..orders").is_err());
        assert!(Filter::new("eu.or*").is_err());
        assert!(Filter::new(".eu").is_err());
    }
}
