//! Flow control: a global rate limit is one bucket, whichever connection takes from it.

use sluice_core::limit::Rate;
use sluice_core::{Backend, Subscriber, SubscriptionConfig};

use crate::fixture::{Fixture, Outcome};
use crate::harness::Harness;
use crate::wait::Must;

/// Two connections' subscribers take tokens of one limit: the second sees what the first
/// took (the backend keeps one bucket), never its own full burst. Tokens refill at 0.001/s,
/// so none does during the scenario.
pub async fn global_rate_limit_is_one_bucket_across_connections<H: Harness>(h: &H) -> Outcome {
    let f = Fixture::new(h, "global_rate_limit_is_one_bucket_across_connections").await;
    if let Some(skip) = f.gate() {
        return skip;
    }
    let topic = f.topic("limited").await;
    let first = f.subscribe(&topic, "first").await;
    let (second_name, _) = f
        .subscribe_with("second", SubscriptionConfig::new(topic.clone()))
        .await;
    let other = h.connect().await.must("connecting a second time");
    let second = other
        .subscribe(&second_name)
        .await
        .must("subscribing on the second connection");
    let (one, two) = (
        first
            .limiter()
            .expect("a backend declaring native global rate limits has a limiter"),
        second
            .limiter()
            .expect("a backend declaring native global rate limits has a limiter"),
    );
    let name = topic.as_str();
    let rate = Rate {
        per_second: 0.001,
        burst: 5,
    };
    let take = |limiter: &std::sync::Arc<dyn sluice_core::LimiterStore>, want| {
        let limiter = limiter.clone();
        async move {
            limiter
                .take(name, rate, 0, want)
                .await
                .must("taking tokens")
                .granted
        }
    };
    assert_eq!(take(&one, 3).await, 3, "a new limit starts with its burst");
    assert_eq!(
        take(&two, 5).await,
        2,
        "the second connection shares the first's bucket"
    );
    assert_eq!(take(&one, 1).await, 0, "the burst is spent for both");
    let _ = first.close().await;
    let _ = second.close().await;
    f.finish().await
}
