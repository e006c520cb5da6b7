//! Physical names: core's naming function with the separator `-` (SQS refuses dots), plus
//! `.fifo` for the FIFO topics and queues of ordered topics or topics with a dedup window.
//!
//! With namespace `dev`: topic `orders` is the SNS topic `dev-orders` (`dev-orders.fifo`),
//! subscription `billing` the SQS queue `dev-billing` and its DLQ `dev-billing-dlq`
//! (each with `.fifo` when the topic is FIFO). The longest name — a 12-character namespace, a
//! 48-character subscription, `-dlq` and `.fifo` — is 70 characters, within SQS's 80.

use sluice_core::{Naming, SubscriptionName, TopicName};

/// The suffix SQS and SNS require on FIFO names.
pub const FIFO_SUFFIX: &str = ".fifo";

/// Names of one backend handle.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    naming: Naming,
}

impl Names {
    pub(crate) fn new(naming: Naming) -> Self {
        Self {
            naming: naming.with_separator('-'),
        }
    }

    pub(crate) fn naming(&self) -> &Naming {
        &self.naming
    }

    fn fifo(mut name: String, fifo: bool) -> String {
        if fifo {
            name.push_str(FIFO_SUFFIX);
        }
        name
    }

    /// The SNS topic's name.
    pub(crate) fn topic(&self, topic: &TopicName, fifo: bool) -> String {
        Self::fifo(self.naming.topic(topic), fifo)
    }

    /// The SQS queue's name.
    pub(crate) fn queue(&self, subscription: &SubscriptionName, fifo: bool) -> String {
        Self::fifo(self.naming.subscription(subscription), fifo)
    }

    /// The DLQ's name.
    pub(crate) fn dead_letter(&self, subscription: &SubscriptionName, fifo: bool) -> String {
        Self::fifo(self.naming.dead_letter(subscription), fifo)
    }

    /// The logical topic name inside an SNS topic name of this namespace, with whether it is
    /// FIFO; `None` for topics that are not Sluice's in this namespace.
    pub(crate) fn topic_of(&self, physical: &str) -> Option<(TopicName, bool)> {
        let (base, fifo) = match physical.strip_suffix(FIFO_SUFFIX) {
            Some(base) => (base, true),
            None => (physical, false),
        };
        let name = self.naming.strip_namespace(base)?;
        TopicName::new(name).ok().map(|topic| (topic, fifo))
    }
}

/// The last part of an ARN (`arn:aws:sns:REGION:ACCOUNT:NAME` → `NAME`).
pub(crate) fn arn_name(arn: &str) -> &str {
    arn.rsplit(':').next().unwrap_or(arn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::Namespace;

    #[test]
    fn names_use_dashes_and_fifo_suffixes_and_fit_sqs() {
        let names = Names::new(Naming::new(Some(Namespace::new("dev").unwrap())));
        let topic = TopicName::new("orders").unwrap();
        let sub = SubscriptionName::new("billing").unwrap();
        assert_eq!(names.topic(&topic, false), "dev-orders");
        assert_eq!(names.topic(&topic, true), "dev-orders.fifo");
        assert_eq!(names.queue(&sub, false), "dev-billing");
        assert_eq!(names.dead_letter(&sub, true), "dev-billing-dlq.fifo");
        assert_eq!(
            names.topic_of("dev-orders.fifo"),
            Some((topic.clone(), true))
        );
        assert_eq!(names.topic_of("dev-orders"), Some((topic, false)));
        assert_eq!(names.topic_of("prod-orders"), None);

        let long = Names::new(Naming::new(Some(Namespace::new("a".repeat(12)).unwrap())));
        let sub = SubscriptionName::new("s".repeat(48)).unwrap();
        assert!(long.dead_letter(&sub, true).len() <= 80);
        assert_eq!(
            arn_name("arn:aws:sns:us-east-1:123:dev-orders"),
            "dev-orders"
        );
    }
}
