//! Sluice's configuration of topics and subscriptions, kept on the AWS objects themselves as
//! tags (SNS topic tags, SQS queue tags; the mapping is `sluice_core::tags`), so every process
//! sees the same configuration and nothing else needs storing.

pub(crate) use sluice_core::tags::{
    subscription_config, subscription_tags, topic_config, topic_tags,
};

/// The prefetch tag alone (ensuring a subscription with another prefetch updates it).
pub(crate) fn prefetch_tag(prefetch: u32) -> (String, String) {
    (sluice_core::tags::PREFETCH.to_owned(), prefetch.to_string())
}
