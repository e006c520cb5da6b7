//! Routing-key patterns, evaluated by the engine for each subscription: `*` matches one
//! `.`-separated word, `#` zero or more. The same semantics as `sluice_core::Filter` (the
//! engine does not depend on the contract crate; the adapter validates patterns with
//! `sluice_core::Filter::new` before they reach the engine).

/// Whether `routing_key` (no key = zero words) matches `pattern`.
pub fn matches(pattern: &str, routing_key: Option<&str>) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = match routing_key {
        Some(k) if !k.is_empty() => k.split('.').collect(),
        _ => Vec::new(),
    };
    words(&pattern, &key)
}

fn words(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| words(rest, &key[skip..])),
        Some((&word, rest)) => match key.split_first() {
            Some((first, key_rest)) => (word == "*" || word == *first) && words(rest, key_rest),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn patterns_follow_topic_exchange_semantics() {
        assert!(matches("#", None));
        assert!(matches("eu.*", Some("eu.orders")));
        assert!(!matches("eu.*", Some("eu.orders.placed")));
        assert!(matches("eu.#", Some("eu")));
        assert!(matches("a.#.z", Some("a.b.c.z")));
        assert!(!matches("*", None));
    }
}
