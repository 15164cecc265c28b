//! The connection to the Kafka cluster shared by every client of the job:
//! [`Connection`] (the brokers and the pipeline's `[kafka]` table: options
//! every client gets, security included, and the replication factor),
//! client settings built from it, topic administration (create what a
//! pipeline needs, with bounded retries under the crate's retry rule; a
//! connection the cluster refuses, for failed authentication or TLS, is an
//! error at once), and a plain keyed producer for generated data and tests.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{LibrdkafkaOptions, PipelineConfig};
use crate::error::{retryable_kafka_code, Error, Result};

/// How to reach the cluster: the brokers, the librdkafka options every
/// client of the job shares (`[kafka.librdkafka]`: security settings and
/// the like) and the replication factor of the topics it creates. Every
/// Kafka client streamcast makes starts from one. Debug output redacts
/// secret values.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Bootstrap servers.
    pub brokers: String,
    /// Options applied to every client (before the client's own).
    pub options: LibrdkafkaOptions,
    /// Replication factor of the topics created through it.
    pub replication_factor: i32,
}

impl Connection {
    /// The pipeline's connection: `source.brokers` and the `[kafka]` table.
    pub fn of(cfg: &PipelineConfig) -> Self {
        Connection {
            brokers: cfg.source.brokers.clone(),
            options: cfg.kafka.librdkafka.clone(),
            replication_factor: cfg.kafka.replication_factor,
        }
    }

    /// Brokers only: no shared options, replication factor 1 (the local
    /// broker of tests and tools).
    pub fn plain(brokers: impl Into<String>) -> Self {
        Connection {
            brokers: brokers.into(),
            options: LibrdkafkaOptions::default(),
            replication_factor: 1,
        }
    }

    /// The settings every client shares: the brokers, streamcast's client
    /// id, then the shared options.
    /// Whether the clients speak TLS (`security.protocol` SSL or SASL_SSL).
    pub fn speaks_tls(&self) -> bool {
        self.options
            .0
            .get("security.protocol")
            .is_some_and(|p| p.to_ascii_uppercase().ends_with("SSL"))
    }

    pub fn base_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("client.id", "streamcast");
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }
}

impl From<&Connection> for Connection {
    fn from(c: &Connection) -> Self {
        c.clone()
    }
}
impl From<&PipelineConfig> for Connection {
    fn from(cfg: &PipelineConfig) -> Self {
        Connection::of(cfg)
    }
}
impl From<&str> for Connection {
    fn from(brokers: &str) -> Self {
        Connection::plain(brokers)
    }
}
impl From<&String> for Connection {
    fn from(brokers: &String) -> Self {
        Connection::plain(brokers.as_str())
    }
}
impl From<String> for Connection {
    fn from(brokers: String) -> Self {
        Connection::plain(brokers)
    }
}

/// A client's settings: the shared ones ([`Connection::base_config`]),
/// then `defaults` (the job's choices for this client), then the user's
/// `passthrough` options for this client from the pipeline file
/// (`[source.librdkafka]` or `[sink.librdkafka]`), which win.
pub fn client_config(
    kafka: &Connection,
    defaults: &[(&str, &str)],
    passthrough: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = kafka.base_config();
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in passthrough {
        c.set(k, v);
    }
    c
}

/// Creates the topics a pipeline uses when they do not exist, retrying
/// while the brokers cannot be reached. Fails with a clear message after
/// `source.connect_attempts` tries, and at once when the cluster refuses
/// the connection (authentication or TLS).
pub async fn ensure_topics(cfg: &PipelineConfig) -> Result<()> {
    let mut topics = vec![
        (cfg.source.topic.as_str(), cfg.source.partitions),
        (cfg.sink.topic.as_str(), cfg.sink.partitions),
        (cfg.sink.dead_letter_topic.as_str(), cfg.sink.partitions),
    ];
    if let Some(t) = &cfg.sink.accuracy_topic {
        topics.push((t.as_str(), cfg.sink.partitions));
    }
    create_topics(cfg, &topics, cfg.source.connect_attempts).await
}

/// Creates topics (ignoring "already exists"), trying `attempts` times.
pub async fn create_topics(
    kafka: impl Into<Connection>,
    topics: &[(&str, i32)],
    attempts: u32,
) -> Result<()> {
    let with: Vec<TopicSpec<'_>> = topics.iter().map(|(t, p)| (*t, *p, &[][..])).collect();
    create_topics_with(kafka, &with, attempts).await
}

/// A topic to create: name, partitions, configs.
pub type TopicSpec<'a> = (&'a str, i32, &'a [(&'a str, &'a str)]);

/// [`create_topics`] with topic configs (e.g. `cleanup.policy = compact`),
/// each with the connection's replication factor.
pub async fn create_topics_with(
    kafka: impl Into<Connection>,
    topics: &[TopicSpec<'_>],
    attempts: u32,
) -> Result<()> {
    let kafka: Connection = kafka.into();
    let brokers = kafka.brokers.as_str();
    let admin: AdminClient<DefaultClientContext> = kafka.base_config().create()?;
    let replication = kafka.replication_factor;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, parts, configs)| {
            configs.iter().fold(
                NewTopic::new(name, *parts, TopicReplication::Fixed(replication)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(5)));
    let mut backoff = Duration::from_millis(500);
    let mut last_err = String::new();
    let mut closed_at_first_request = 0;
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
        // The admin client does not report why it cannot connect: ask a
        // probe, and stop at once when retrying cannot help.
        let k = kafka.clone();
        let probe = blocking(move || probe(&k, Duration::from_secs(2)));
        if let Some(why) = probe.refused {
            return Err(refused_error(&kafka, &why));
        }
        // A listener that expects TLS accepts the TCP connection and then
        // closes it at the client's first (plaintext) request. A broker
        // that is away refuses the connection instead; one that is starting
        // may close early once, so this takes two probes in a row.
        let closed_at_hello = probe
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("APIVERSION_QUERY") && e.contains("Disconnected"));
        closed_at_first_request = if closed_at_hello {
            closed_at_first_request + 1
        } else {
            0
        };
        if closed_at_first_request >= 2 && !kafka.speaks_tls() {
            return Err(refused_error(
                &kafka,
                "it closed every connection at the client's first request, as a TLS listener does \
                 to a plaintext client: set security.protocol to SSL or SASL_SSL (the client \
                 speaks plaintext)",
            ));
        }
        if let Some(why) = probe.last_error {
            last_err = format!("{last_err}; {why}");
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

/// The error of a connection the cluster refused (see [`probe`]).
fn refused_error(kafka: &Connection, why: &str) -> Error {
    Error::Refused(format!(
        "the Kafka cluster at {} refused the connection: {why}. Check the security settings \
         in [kafka.librdkafka] (security.protocol, sasl.mechanism, sasl.username, \
         sasl.password, ssl.ca.location)",
        kafka.brokers
    ))
}

/// What a connection probe saw (see [`probe`]).
#[derive(Debug, Default)]
pub struct Probed {
    /// Why the cluster refused the connection, when retrying cannot fix
    /// it: failed authentication (SASL) or TLS handshake.
    pub refused: Option<String>,
    /// The last other error librdkafka reported (a broker that does not
    /// answer, a listener of another protocol, ...).
    pub last_error: Option<String>,
}

/// Collects librdkafka's error events for [`probe`].
#[derive(Default)]
struct ProbeContext(Mutex<Probed>);

impl ClientContext for ProbeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        let Ok(mut p) = self.0.lock() else {
            return;
        };
        match code {
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL) => {
                p.refused.get_or_insert_with(|| reason.to_string());
            }
            // "1/1 brokers are down" says less than the error before it.
            Some(RDKafkaErrorCode::AllBrokersDown) if p.last_error.is_some() => {}
            _ => p.last_error = Some(reason.to_string()),
        }
    }

    /// librdkafka reports some connection failures only as log lines
    /// (facility `FAIL`, e.g. a listener that speaks another protocol):
    /// keep the last one. The caller reports what matters, so the probe
    /// itself logs at debug.
    fn log(&self, _: RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(fac, "librdkafka (connection probe): {log_message}");
        if fac == "FAIL" {
            if let Ok(mut p) = self.0.lock() {
                p.last_error = Some(log_message.to_string());
            }
        }
    }
}

impl ProducerContext for ProbeContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// Connects with a short-lived client for at most `wait` (less when it
/// gets metadata or is refused) and says what went wrong, if anything.
/// Blocking.
pub fn probe(kafka: &Connection, wait: Duration) -> Probed {
    let client: BaseProducer<ProbeContext> = match kafka
        .base_config()
        .create_with_context(ProbeContext::default())
    {
        Ok(c) => c,
        Err(e) => {
            return Probed {
                last_error: Some(Error::from(e).to_string()),
                ..Probed::default()
            }
        }
    };
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ok = client
            .client()
            .fetch_metadata(None, left.min(Duration::from_millis(500)))
            .is_ok();
        // Hands librdkafka's error events to the context.
        client.poll(Duration::ZERO);
        let refused = client.context().0.lock().is_ok_and(|p| p.refused.is_some());
        if refused || ok || Instant::now() >= deadline {
            let mut p = client
                .context()
                .0
                .lock()
                .map(|mut p| std::mem::take(&mut *p))
                .unwrap_or_default();
            if ok {
                p.last_error = None;
            }
            return p;
        }
    }
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
pub fn partition_count(kafka: impl Into<Connection>, topic: &str) -> Result<i32> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = kafka.into().base_config().create()?;
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
    kafka: impl Into<Connection>,
    topic: &str,
    records: impl IntoIterator<Item = (String, String)>,
) -> Result<u64> {
    let producer: FutureProducer = kafka
        .into()
        .base_config()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The cargo features that secured clusters need are in the build.
    #[test]
    fn librdkafka_is_built_with_tls_sasl_scram_and_zstd() {
        let native = ClientConfig::new().create_native_config().unwrap();
        let features = native.get("builtin.features").unwrap();
        for f in [
            "ssl",
            "sasl_plain",
            "sasl_scram",
            "sasl_oauthbearer",
            "zstd",
        ] {
            assert!(features.split(',').any(|x| x == f), "no {f} in {features}");
        }
    }

    #[test]
    fn every_client_gets_the_shared_options_then_its_own() {
        let mut kafka = Connection::plain("b:9094");
        kafka.options = [("security.protocol", "SASL_SSL"), ("linger.ms", "7")]
            .into_iter()
            .collect();
        let own: BTreeMap<String, String> = [("linger.ms".to_string(), "9".to_string())].into();
        let c = client_config(&kafka, &[("acks", "all")], &own);
        assert_eq!(c.get("bootstrap.servers"), Some("b:9094"));
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("linger.ms"), Some("9"));
        kafka
            .options
            .insert("sasl.password".into(), "hunter2".into());
        let debug = format!("{kafka:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("***"),
            "{debug}"
        );
    }
}
