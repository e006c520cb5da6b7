//! The raw lapin baseline for `amqp://` URLs: the same workload as [`super::workload`]
//! written directly on lapin, with the settings Sluice uses — a durable topic exchange, a
//! durable quorum queue bound with `#`, persistent messages, publisher confirms (one
//! confirm-mode channel per producer, a batch sent then its confirms awaited), consumers with
//! manual acks (one per message) and a prefetch of four batches. What Sluice adds on top
//! (its wire mapping, client-side leases, the catalog) is the difference between the two.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

use super::workload::{histogram, merged, share, timed_batches, BackendResult};
use super::BenchArgs;

const HEADER: &str = "bench-t";

/// Runs the workload on raw lapin against the broker of `url` (an `amqp://` URL).
pub(crate) async fn run(url: &str, args: &BenchArgs) -> anyhow::Result<BackendResult> {
    // The AMQP URI without Sluice's own `?namespace=` parameter.
    let uri = match sluice::BackendUrl::parse(url)?.kind {
        sluice::BackendKind::Amqp { uri } => uri,
        _ => anyhow::bail!("{url} is not an amqp:// URL"),
    };
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let connection = Arc::new(Connection::connect(&uri, properties).await?);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!("bench-raw-{nanos:08x}");
    let setup = connection.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    setup
        .exchange_declare(&name, ExchangeKind::Topic, durable, FieldTable::default())
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let queue_options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    setup.queue_declare(&name, queue_options, arguments).await?;
    setup
        .queue_bind(
            &name,
            &name,
            "#",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let origin = Instant::now();
    let warmup = (args.messages / 10).max(args.batch as u64);
    round(&connection, &name, args, warmup, origin).await?;
    let total = args.messages;
    let (publish, end_to_end, seconds) = round(&connection, &name, args, total, origin).await?;

    let _ = setup
        .queue_delete(&name, QueueDeleteOptions::default())
        .await;
    let _ = setup
        .exchange_delete(&name, ExchangeDeleteOptions::default())
        .await;
    let _ = connection.close(200, "done").await;
    Ok(BackendResult::new(
        "raw lapin (same broker)".to_owned(),
        "lapin".to_owned(),
        (total, args.size, seconds),
        &publish,
        &end_to_end,
    ))
}

async fn round(
    connection: &Arc<Connection>,
    name: &str,
    args: &BenchArgs,
    total: u64,
    origin: Instant,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>, f64)> {
    let started = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for _ in 0..args.consumers.max(1) {
        let channel = connection.create_channel().await?;
        let prefetch = u16::try_from(args.batch * 4).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                name,
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let acked = Arc::clone(&acked);
        consumers.push(tokio::spawn(consume(
            channel, consumer, total, acked, origin,
        )));
    }
    let payload = bytes::Bytes::from(vec![b'x'; args.size]);
    let producer_count = args.producers.max(1) as u64;
    let mut producers = Vec::new();
    for p in 0..producer_count {
        let share = share(total, producer_count, p);
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let (name, payload, batch) = (name.to_owned(), payload.clone(), args.batch);
        producers.push(tokio::spawn(async move {
            timed_batches(share, batch, origin, |n, t: String| {
                let (channel, name, payload) = (channel.clone(), name.clone(), payload.clone());
                async move {
                    let mut headers = FieldTable::default();
                    headers.insert(HEADER.into(), AMQPValue::LongString(t.into()));
                    let mut confirms = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        let properties = BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_headers(headers.clone());
                        let options = BasicPublishOptions::default();
                        confirms.push(
                            channel
                                .basic_publish(&name, "", options, &payload, properties)
                                .await?,
                        );
                    }
                    for confirm in join_all(confirms).await {
                        anyhow::ensure!(confirm?.is_ack(), "the broker nacked a publish");
                    }
                    Ok(())
                }
            })
            .await
        }));
    }
    let publish = merged(producers).await?;
    let end_to_end = merged(consumers).await?;
    Ok((publish, end_to_end, started.elapsed().as_secs_f64()))
}

async fn consume(
    channel: lapin::Channel,
    mut consumer: lapin::Consumer,
    total: u64,
    acked: Arc<AtomicU64>,
    origin: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = histogram();
    while acked.load(Ordering::Relaxed) < total {
        let next = tokio::time::timeout(Duration::from_millis(50), consumer.next()).await;
        let Ok(Some(delivery)) = next else { continue };
        let delivery = delivery?;
        let now = origin.elapsed().as_micros() as u64;
        let sent = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(HEADER).cloned());
        if let Some(AMQPValue::LongString(t)) = sent {
            if let Ok(t) = String::from_utf8_lossy(t.as_bytes()).parse::<u64>() {
                latency.record(now.saturating_sub(t))?;
            }
        }
        channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
            .await?;
        acked.fetch_add(1, Ordering::Relaxed);
    }
    let _ = channel.close(200, "done").await;
    Ok(latency)
}
