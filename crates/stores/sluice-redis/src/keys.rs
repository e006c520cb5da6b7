//! The key layout, the one place keys and `SCAN` patterns are built.
//!
//! | key | value | expires |
//! |---|---|---|
//! | `<prefix>:idem:<subscription>:<message id>` | `claim:<token>` or `done` | with the claim's lease, or the done marker's TTL |
//! | `<prefix>:dedup:<topic>:<message id>` | `pending:<token>` or `done` | with the pending time, or at the end of the dedup window |
//! | `<prefix>:job:<job store key>` | a hash: `val` (JSON), `ver` | with the entry's TTL |
//! | `<prefix>:jobs-version` | the job store's version counter | never |
//! | `<prefix>:jobs-recent` | sorted set of job store keys by version, for `scan` | never (members of expired entries are dropped as scans meet them) |
//! | `<prefix>:limit:<name>` | a hash: `tokens`, `at` (a global rate limit's bucket) | once a full bucket would have refilled, plus 1 s |
//!
//! Invariant: the segment between two `:` never holds a `:` itself, so the keys of one topic
//! never match another topic's pattern. Subscription names (`[a-z0-9_-]`) and the topic names
//! backends pass (physical names, `[a-z0-9_.-]`) are written as they are; a topic holding
//! `:` or `%` has those two percent-escaped. The message id is the last segment and is
//! written as it is. Glob characters in `SCAN MATCH` patterns are escaped with `\`.

use std::borrow::Cow;
use std::time::Duration;

use sluice_core::IdempotencyKey;

/// The longest expiry written, in milliseconds (about 146 million years): far beyond any
/// TTL in use, and far from the overflow Redis refuses (`invalid expire time`).
const MAX_MILLIS: u64 = (i64::MAX / 2) as u64;

/// Key of an idempotency claim or done marker.
pub(crate) fn idempotency(prefix: &str, key: &IdempotencyKey) -> String {
    format!(
        "{prefix}:idem:{}:{}",
        segment(key.subscription.as_str()),
        key.id
    )
}

/// Key of a global rate limit's bucket.
pub(crate) fn limit(prefix: &str, name: &str) -> String {
    format!("{prefix}:limit:{}", segment(name))
}

/// Key of the flow-control flags (a hash: flag → `<expiry in ms of TIME, 0: none>|<value>`).
pub(crate) fn flags(prefix: &str) -> String {
    format!("{prefix}:flags")
}

/// Key of a global concurrency bound's holders (a hash holder → slots; its `:until` sorted
/// set holder → lease end).
pub(crate) fn slots(prefix: &str, name: &str) -> String {
    format!("{prefix}:slots:{}", segment(name))
}

/// Key of a dedup claim.
pub(crate) fn dedup(prefix: &str, topic: &str, id: &str) -> String {
    format!("{prefix}:dedup:{}:{id}", segment(topic))
}

/// `SCAN MATCH` pattern of every dedup claim of `topic`.
pub(crate) fn dedup_pattern(prefix: &str, topic: &str) -> String {
    let literal = format!("{prefix}:dedup:{}:", segment(topic));
    let mut pattern = String::with_capacity(literal.len() + 8);
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

/// The prefix of every job store entry: the entry's own key follows it as it is (the last
/// segment, like a message id).
pub(crate) fn jobs_entry_prefix(prefix: &str) -> String {
    format!("{prefix}:job:")
}

/// The job store's version counter.
pub(crate) fn jobs_version(prefix: &str) -> String {
    format!("{prefix}:jobs-version")
}

/// The job store's keys, newest write first.
pub(crate) fn jobs_recent(prefix: &str) -> String {
    format!("{prefix}:jobs-recent")
}

/// A key segment with `%` and `:` percent-escaped (unchanged for every valid name).
fn segment(name: &str) -> Cow<'_, str> {
    if !name.contains([':', '%']) {
        return Cow::Borrowed(name);
    }
    Cow::Owned(name.replace('%', "%25").replace(':', "%3A"))
}

/// A duration as Redis expiry milliseconds: rounded up, at least 1 (`PX 0` is refused),
/// at most [`MAX_MILLIS`].
pub(crate) fn millis(duration: Duration) -> u64 {
    let nanos = duration.as_nanos();
    let millis = nanos.div_ceil(1_000_000);
    u64::try_from(millis)
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_MILLIS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::{MessageId, SubscriptionName};

    #[test]
    fn keys_follow_the_documented_layout() {
        let key = IdempotencyKey {
            subscription: SubscriptionName::new("billing").unwrap(),
            id: MessageId::new("order:42").unwrap(),
        };
        assert_eq!(idempotency("sluice", &key), "sluice:idem:billing:order:42");
        assert_eq!(
            dedup("sluice", "dev.orders", "a"),
            "sluice:dedup:dev.orders:a"
        );
        assert_eq!(
            dedup_pattern("sluice", "dev.orders"),
            "sluice:dedup:dev.orders:*"
        );
    }

    #[test]
    fn a_topic_with_a_colon_cannot_match_another_topics_pattern() {
        assert_eq!(dedup("p", "a:b", "c"), "p:dedup:a%3Ab:c");
        assert_eq!(dedup("p", "a%3Ab", "c"), "p:dedup:a%253Ab:c");
        assert_eq!(dedup_pattern("p", "a"), "p:dedup:a:*");
    }

    #[test]
    fn glob_characters_in_the_prefix_and_topic_are_escaped() {
        assert_eq!(
            dedup_pattern("app*[1]", "t?\\"),
            "app\\*\\[1\\]:dedup:t\\?\\\\:*"
        );
    }

    #[test]
    fn expiries_are_whole_milliseconds_rounded_up_and_never_zero() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::from_millis(300)), 300);
        assert_eq!(millis(Duration::MAX), MAX_MILLIS);
    }
}
