//! Choosing a backend from a URL at run time.

use sluice_core::{BackendKind, BackendUrl, DynBackend, Error, UrlError};

/// Connects to the backend a URL names (see [`BackendUrl`] for the schemes) and returns it
/// type-erased. Backends not compiled into this build fail with
/// [`UrlError::NotAvailable`], naming the cargo feature that would enable them.
///
/// `embedded:PATH` opens Sluice's durable engine on the directory `PATH` (created if needed;
/// `embedded:` alone is `./sluice-data`); one process at a time may open a directory.
/// `sluice://HOST:PORT` connects to `sluice serve` (the `remote` feature, on by default).
/// `amqp://…` connects to RabbitMQ (the `rabbitmq` feature).
/// `sqs://REGION[?endpoint=URL]` connects to SQS + SNS (the `sqs` feature), with the AWS
/// credential chain (environment variables, profile, instance role).
/// `kafka://HOST:PORT[,HOST:PORT]` connects to Apache Kafka (the `kafka` feature).
/// `memory:` creates a new, empty in-process backend on every call. Either way, share the
/// returned handle (it is cheap to clone) between the producers and consumers that should
/// meet.
pub async fn connect(url: &str) -> Result<DynBackend, Error> {
    let url = BackendUrl::parse(url)?;
    #[cfg(any(feature = "memory", feature = "embedded"))]
    let naming = sluice_core::Naming::new(url.namespace.clone());
    match url.kind {
        #[cfg(feature = "memory")]
        BackendKind::Memory => Ok(DynBackend::new(sluice_memory::MemoryBackend::with_naming(
            naming,
        ))),
        #[cfg(not(feature = "memory"))]
        BackendKind::Memory => Err(not_available("memory", "memory")),
        #[cfg(feature = "embedded")]
        BackendKind::Embedded { path, sync } => {
            // The URL parser already checked the value.
            let sync = sync
                .as_deref()
                .and_then(|s| s.parse().ok())
                .unwrap_or(sluice_embedded::SyncMode::Always);
            let options = sluice_embedded::EmbeddedOptions::default()
                .naming(naming)
                .sync(sync);
            Ok(DynBackend::new(
                sluice_embedded::EmbeddedBackend::open_with(path, options).await?,
            ))
        }
        #[cfg(not(feature = "embedded"))]
        BackendKind::Embedded { .. } => Err(not_available("embedded", "embedded")),
        #[cfg(feature = "remote")]
        BackendKind::Remote {
            host,
            port,
            token,
            tls,
            ca,
        } => {
            let mut options = sluice_remote::RemoteOptions::default()
                .namespace(url.namespace)
                .token(token);
            if tls {
                options = options.tls(ca);
            }
            Ok(DynBackend::new(
                sluice_remote::RemoteBackend::connect(&format!("{host}:{port}"), options).await?,
            ))
        }
        #[cfg(not(feature = "remote"))]
        BackendKind::Remote { .. } => Err(not_available("sluice", "remote")),
        #[cfg(feature = "rabbitmq")]
        BackendKind::Amqp { uri } => {
            let options = sluice_rabbitmq::RabbitOptions::default().namespace(url.namespace);
            Ok(DynBackend::new(
                sluice_rabbitmq::RabbitBackend::connect(&uri, options).await?,
            ))
        }
        #[cfg(not(feature = "rabbitmq"))]
        BackendKind::Amqp { .. } => Err(not_available("amqp", "rabbitmq")),
        #[cfg(feature = "sqs")]
        BackendKind::Sqs { region, endpoint } => {
            let options = sluice_sqs::SqsOptions::new(region)
                .endpoint(endpoint)
                .namespace(url.namespace);
            Ok(DynBackend::new(
                sluice_sqs::SqsBackend::connect(options).await?,
            ))
        }
        #[cfg(not(feature = "sqs"))]
        BackendKind::Sqs { .. } => Err(not_available("sqs", "sqs")),
        #[cfg(feature = "kafka")]
        BackendKind::Kafka { brokers } => {
            let options =
                sluice_kafka::KafkaOptions::new(brokers.join(",")).namespace(url.namespace);
            Ok(DynBackend::new(
                sluice_kafka::KafkaBackend::connect(options).await?,
            ))
        }
        #[cfg(not(feature = "kafka"))]
        BackendKind::Kafka { .. } => Err(not_available("kafka", "kafka")),
        _ => Err(not_available("unknown", "unknown")),
    }
}

fn not_available(scheme: &'static str, feature: &'static str) -> Error {
    UrlError::NotAvailable { scheme, feature }.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::Backend;

    #[tokio::test]
    async fn memory_urls_connect_and_other_schemes_say_they_are_not_in_this_build() {
        let backend = connect("memory:?namespace=dev").await.unwrap();
        assert_eq!(backend.capabilities().backend, "memory");
        assert_eq!(backend.naming().namespace().unwrap().as_str(), "dev");
        #[cfg(not(feature = "kafka"))]
        {
            let err = connect("kafka://127.0.0.1:9092").await.unwrap_err();
            assert!(
                err.to_string().contains("not available in this build"),
                "{err}"
            );
        }
        let dir = std::env::temp_dir().join(format!("sluice-connect-{}", std::process::id()));
        let backend = connect(&format!("embedded:{}", dir.display()))
            .await
            .unwrap();
        assert_eq!(backend.capabilities().backend, "embedded");
        drop(backend);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(connect("ftp://x").await.is_err());
    }
}
