//! Sluice's configuration of a namespace's topics and subscriptions, kept in Kafka itself: a
//! one-partition catalog topic (`<namespace>._sluice.catalog`, compacted where the broker
//! supports it) with one record per object. The key is `topic/<name>` or
//! `subscription/<name>`, the value a JSON object of the configuration's tags
//! (`sluice_core::tags`), an empty value deletes (a tombstone). The latest record of a key
//! wins, so any process reads the same configuration back.
//!
//! Two processes ensuring the same object at the same moment both write; the later record
//! wins. Since both describe a configuration that was checked against the catalog, the worst
//! case is the one Kafka itself has with concurrent `CreateTopics`: one of them learns of the
//! other's configuration on its next read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use sluice_core::{Error, Result};

use crate::error::{settle, to_error};

/// A catalog entry: the tags of one object.
pub(crate) type Tags = HashMap<String, String>;

/// How long reading the catalog to its end may take.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// The catalog topic, read incrementally: each read fetches only what was appended since.
pub(crate) struct Catalog {
    topic: String,
    producer: FutureProducer,
    reader: Arc<Mutex<Reader>>,
}

struct Reader {
    consumer: BaseConsumer,
    topic: String,
    /// The next offset to read.
    next: i64,
    entries: HashMap<String, Tags>,
}

impl Catalog {
    /// Opens the catalog at `topic` (which must exist), reading with `config`'s brokers.
    pub(crate) fn open(
        config: &ClientConfig,
        topic: String,
        producer: FutureProducer,
    ) -> Result<Self> {
        let consumer: BaseConsumer = config
            .clone()
            // librdkafka wants a group even for assigned partitions; it never joins or commits.
            .set("group.id", "sluice-catalog-reader")
            // Reads wait for the end the broker reported: do not let a fetch idle long.
            .set("fetch.wait.max.ms", "10")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(|e| to_error(e, "creating the catalog reader"))?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topic, 0, Offset::Beginning)
            .map_err(|e| to_error(e, "reading the catalog"))?;
        consumer
            .assign(&list)
            .map_err(|e| to_error(e, "reading the catalog"))?;
        Ok(Self {
            reader: Arc::new(Mutex::new(Reader {
                consumer,
                topic: topic.clone(),
                next: 0,
                entries: HashMap::new(),
            })),
            topic,
            producer,
        })
    }

    /// Every entry whose key starts with `prefix`, read up to the catalog's current end.
    pub(crate) async fn read(&self, prefix: &str) -> Result<Vec<(String, Tags)>> {
        let reader = Arc::clone(&self.reader);
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut reader = reader.lock().unwrap_or_else(|e| e.into_inner());
            reader.catch_up()?;
            let mut found: Vec<(String, Tags)> = reader
                .entries
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_owned(), v.clone())))
                .collect();
            found.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(found)
        })
        .await
        .map_err(|e| Error::backend(format!("reading the catalog: {e}"), true))?
    }

    /// The entry at `key`, read up to the catalog's current end.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Tags>> {
        Ok(self
            .read(key)
            .await?
            .into_iter()
            .find(|(rest, _)| rest.is_empty())
            .map(|(_, tags)| tags))
    }

    /// Writes (or, with `None`, deletes) the entry at `key`, confirmed by the broker.
    pub(crate) async fn put(&self, key: &str, tags: Option<&Tags>) -> Result<()> {
        let value = match tags {
            Some(tags) => serde_json::to_vec(tags)
                .map_err(|e| Error::backend(format!("encoding the catalog entry: {e}"), false))?,
            None => Vec::new(),
        };
        let mut record = FutureRecord::to(&self.topic).key(key).partition(0);
        if tags.is_some() {
            record = record.payload(&value);
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| to_error(e, &format!("writing `{key}` to the catalog")))?;
        Ok(())
    }
}

impl Reader {
    /// Reads from `next` to the partition's end as it is now.
    fn catch_up(&mut self) -> Result<()> {
        let (low, high) = settle(|| self.consumer.fetch_watermarks(&self.topic, 0, READ_TIMEOUT))
            .map_err(|e| to_error(e, "reading the catalog"))?;
        if self.next < low {
            self.next = low;
        }
        let deadline = Instant::now() + READ_TIMEOUT;
        while self.next < high {
            if Instant::now() >= deadline {
                return Err(Error::Timeout(READ_TIMEOUT));
            }
            let Some(record) = self.consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let record = record.map_err(|e| to_error(e, "reading the catalog"))?;
            if record.offset() < self.next {
                continue;
            }
            self.next = record.offset() + 1;
            let Some(key) = record.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            match record.payload().filter(|v| !v.is_empty()) {
                Some(value) => match serde_json::from_slice::<Tags>(value) {
                    Ok(tags) => {
                        self.entries.insert(key.to_owned(), tags);
                    }
                    Err(err) => {
                        tracing::warn!(key, error = %err, "unreadable catalog entry skipped")
                    }
                },
                None => {
                    self.entries.remove(key);
                }
            }
        }
        Ok(())
    }
}
