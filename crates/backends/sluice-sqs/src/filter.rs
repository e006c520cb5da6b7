//! Routing-key filters as SNS filter policies.
//!
//! SNS matches a `routing_key` message attribute by exact value or by prefix; it has no notion
//! of dot-separated words. So a pattern is split into what SNS can do and what is left:
//!
//! | pattern | SNS filter policy | checked again by the consumer |
//! |---|---|---|
//! | none, `#` | none (everything, messages without a key too) | no |
//! | `eu.orders` (literal words) | `{"routing_key":["eu.orders"]}` | no |
//! | `eu.#` (literal words, then `#`) | `{"routing_key":["eu",{"prefix":"eu."}]}` | no |
//! | `eu.*`, `eu.*.placed` (literal words first) | `{"routing_key":[{"prefix":"eu."}]}` | yes |
//! | `*.placed`, `#.placed` (a wildcard first) | none | yes |
//!
//! Where the consumer checks again, a received message the pattern does not match is deleted
//! without being delivered (it counts as a receive on the queue, never as a delivery). Decided
//! over rejecting such patterns: every pattern works on every backend, and SNS still drops
//! most of what does not match before it reaches the queue.

use serde_json::{json, Value};
use sluice_core::Filter;

/// The attribute filter policies match.
pub(crate) const ROUTING_KEY_ATTRIBUTE: &str = "routing_key";

/// How a subscription's filter is applied on SQS + SNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The SNS filter policy (JSON), if any.
    pub(crate) policy: Option<String>,
    /// Whether the consumer must match the pattern itself.
    pub(crate) check_on_receive: bool,
}

/// Splits `filter` into an SNS policy and a consumer-side check.
pub(crate) fn plan(filter: Option<&Filter>) -> Plan {
    let Some(filter) = filter else {
        return Plan {
            policy: None,
            check_on_receive: false,
        };
    };
    let words: Vec<&str> = filter.as_str().split('.').collect();
    let literal = words
        .iter()
        .take_while(|w| !matches!(**w, "*" | "#"))
        .count();
    let prefix = words[..literal].join(".");
    // `#.#` matches what `#` matches.
    let only_hashes = words[literal..].iter().all(|w| *w == "#") && literal < words.len();
    let rest: &[&str] = if only_hashes {
        &["#"]
    } else {
        &words[literal..]
    };
    let policy = |values: Value| Some(json!({ ROUTING_KEY_ATTRIBUTE: values }).to_string());
    match (literal, rest) {
        (0, ["#"]) => Plan {
            policy: None,
            check_on_receive: false,
        },
        (_, []) => Plan {
            policy: policy(json!([prefix])),
            check_on_receive: false,
        },
        (1.., ["#"]) => Plan {
            policy: policy(json!([prefix, { "prefix": format!("{prefix}.") }])),
            check_on_receive: false,
        },
        (0, _) => Plan {
            policy: None,
            check_on_receive: true,
        },
        (1.., _) => Plan {
            policy: policy(json!([{ "prefix": format!("{prefix}.") }])),
            check_on_receive: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pattern: &str) -> (Option<String>, bool) {
        let plan = plan(Some(&Filter::new(pattern).unwrap()));
        (plan.policy, plan.check_on_receive)
    }

    #[test]
    fn patterns_become_policies_where_sns_can_express_them() {
        assert_eq!(plan(None).policy, None);
        assert_eq!(p("#"), (None, false));
        assert_eq!(
            p("eu.orders"),
            (Some(r#"{"routing_key":["eu.orders"]}"#.into()), false)
        );
        assert_eq!(
            p("eu.#"),
            (
                Some(r#"{"routing_key":["eu",{"prefix":"eu."}]}"#.into()),
                false
            )
        );
        assert_eq!(
            p("eu.*"),
            (Some(r#"{"routing_key":[{"prefix":"eu."}]}"#.into()), true)
        );
        assert_eq!(
            p("eu.orders.#.x"),
            (
                Some(r#"{"routing_key":[{"prefix":"eu.orders."}]}"#.into()),
                true
            )
        );
        assert_eq!(
            p("eu.#.#"),
            (
                Some(r#"{"routing_key":["eu",{"prefix":"eu."}]}"#.into()),
                false
            )
        );
        assert_eq!(p("*.placed"), (None, true));
        assert_eq!(p("#.placed"), (None, true));
    }

    #[test]
    fn a_policy_never_drops_what_the_pattern_matches() {
        // Every key the reference matcher accepts passes the policy's own rule.
        let keys = [
            "eu",
            "eu.orders",
            "eu.orders.x",
            "eu.x.orders",
            "us.eu",
            "eux.a",
        ];
        for pattern in ["eu", "eu.#", "eu.*", "eu.*.orders", "eu.#.x", "eu.orders"] {
            let filter = Filter::new(pattern).unwrap();
            let plan = plan(Some(&filter));
            let policy: Value = serde_json::from_str(plan.policy.as_ref().unwrap()).unwrap();
            for key in keys.iter().filter(|k| filter.matches(Some(k))) {
                let passes = policy[ROUTING_KEY_ATTRIBUTE]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| match v {
                        Value::String(exact) => exact == key,
                        v => key.starts_with(v["prefix"].as_str().unwrap()),
                    });
                assert!(passes, "{pattern} matches {key} but its policy drops it");
            }
        }
    }
}
