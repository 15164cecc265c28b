//! The connection to the Kafka cluster shared by every client of the job:
//! base client settings, topic administration (create what a pipeline
//! needs, with bounded retries under the crate's retry rule), and a plain
//! keyed producer for generated data and tests.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::PipelineConfig;
use crate::error::{retryable_kafka_code, Error, Result};

/// A client's settings: the shared ones, then `defaults` (the job's
/// choices), then the user's `passthrough` options from the pipeline file,
/// which win.
pub fn client_config(
    brokers: &str,
    defaults: &[(&str, &str)],
    passthrough: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = base_config(brokers);
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in passthrough {
        c.set(k, v);
    }
    c
}

/// The settings every client of the job shares.
pub fn base_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c.set("client.id", "streamcast");
    c
}

/// Creates the topics a pipeline uses when they do not exist, retrying
/// while the brokers cannot be reached. Fails with a clear message after
/// `source.connect_attempts` tries.
pub async fn ensure_topics(cfg: &PipelineConfig) -> Result<()> {
    let topics = [
        (cfg.source.topic.as_str(), cfg.source.partitions),
        (cfg.sink.topic.as_str(), cfg.sink.partitions),
        (cfg.sink.dead_letter_topic.as_str(), cfg.sink.partitions),
    ];
    create_topics(&cfg.source.brokers, &topics, cfg.source.connect_attempts).await
}

/// Creates topics (ignoring "already exists"), trying `attempts` times.
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)], attempts: u32) -> Result<()> {
    let with: Vec<TopicSpec<'_>> = topics.iter().map(|(t, p)| (*t, *p, &[][..])).collect();
    create_topics_with(brokers, &with, attempts).await
}

/// A topic to create: name, partitions, configs.
pub type TopicSpec<'a> = (&'a str, i32, &'a [(&'a str, &'a str)]);

/// [`create_topics`] with topic configs (e.g. `cleanup.policy = compact`).
pub async fn create_topics_with(
    brokers: &str,
    topics: &[TopicSpec<'_>],
    attempts: u32,
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(brokers).create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, parts, configs)| {
            configs.iter().fold(
                NewTopic::new(name, *parts, TopicReplication::Fixed(1)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(5)));
    let mut backoff = Duration::from_millis(500);
    let mut last_err = String::new();
    for attempt in 1..=attempts.max(1) {
        match admin.create_topics(&new, &opts).await {
            Ok(results) => {
                let mut retry = false;
                for r in results {
                    match r {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((name, code)) if retryable_kafka_code(code) => {
                            retry = true;
                            last_err = format!("topic {name}: {code}");
                        }
                        Err((name, code)) => {
                            return Err(Error::TopicAdmin { topic: name, code });
                        }
                    }
                }
                if !retry {
                    return Ok(());
                }
            }
            Err(e) => last_err = e.to_string(),
        }
        tracing::warn!(attempt, brokers, error = %last_err, "Kafka not reachable yet; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(8));
    }
    Err(Error::Unreachable(format!(
        "cannot reach Kafka brokers at {brokers} after {attempts} attempts (last error: {last_err}); \
         is the broker running? (scripts/kafka up)"
    )))
}

/// Runs blocking client calls from async code: off the worker on the
/// multi-threaded runtime (the job's), directly elsewhere.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Partition count of `topic` (an error when it does not exist).
pub fn partition_count(brokers: &str, topic: &str) -> Result<i32> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = base_config(brokers).create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    md.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .filter(|n| *n > 0)
        .ok_or_else(|| Error::State(format!("topic {topic} has no partitions (does it exist?)")))
}

/// Produces JSON payloads keyed by entity to a topic and waits for every
/// acknowledgement. Keyed, so each key's events stay in order in one partition.
pub async fn produce(
    brokers: &str,
    topic: &str,
    records: impl IntoIterator<Item = (String, String)>,
) -> Result<u64> {
    let producer: FutureProducer = base_config(brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()?;
    let mut pending = Vec::with_capacity(10_000);
    let mut n = 0u64;
    for (key, payload) in records {
        let record = || FutureRecord::to(topic).key(&key).payload(&payload);
        let fut = match producer.send_result(record()) {
            Ok(f) => f,
            Err(_) => {
                // Queue full: let it drain, then try once more.
                for f in pending.drain(..) {
                    let _ = f.await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                producer.send_result(record()).map_err(|(e, _)| e)?
            }
        };
        pending.push(fut);
        n += 1;
        if pending.len() >= 10_000 {
            for f in pending.drain(..) {
                match f.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(e.into()),
                    Err(_) => return Err(Error::StageStopped("producer")),
                }
            }
        }
    }
    for f in pending {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e.into()),
            Err(_) => return Err(Error::StageStopped("producer")),
        }
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(n)
}
