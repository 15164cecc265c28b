//! The library's error type, by domain, and the crate's one retry rule.
//!
//! Invariant: nothing a user sends (an event, a pipeline file, a Parquet file)
//! produces a panic; it produces one of these. [`Error::is_retryable`] (and
//! [`retryable_kafka_code`] for the codes librdkafka reports per topic or
//! per message) separate the transient (a broker that is not up yet) from
//! the fatal (a bad config); every retry loop in the crate asks them.

use std::path::PathBuf;

use rdkafka::types::RDKafkaErrorCode;

/// Everything that can go wrong in streamcast, grouped by where it happened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A pipeline file is unreadable or invalid. Always names file and field.
    #[error("{file}: field `{field}`: {message}")]
    Config {
        file: PathBuf,
        field: String,
        message: String,
    },
    /// A Kafka client error. Converted through `From`, which redacts the
    /// value of a secret option that librdkafka refused.
    #[error("kafka: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
    /// The cluster refused the connection for a reason retrying cannot
    /// fix: authentication (SASL) or the TLS handshake failed.
    #[error("kafka: {0}")]
    Refused(String),
    /// The broker refused to create a topic.
    #[error("kafka: cannot create topic {topic}: {code}")]
    TopicAdmin {
        topic: String,
        code: RDKafkaErrorCode,
    },
    /// A record the broker will never take (too large, not authorized, a
    /// fatal producer error): the job stops rather than retry it forever.
    #[error("kafka: cannot publish {0}")]
    Publish(Box<Unpublishable>),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("polars: {0}")]
    Polars(#[from] polars::error::PolarsError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A model artifact or spec that does not fit the pipeline (or is invalid).
    #[error("model: {0}")]
    Model(String),
    /// Training has nothing, or too little, to learn from.
    #[error("training: {0}")]
    Training(String),
    /// Durable state cannot be read, written or committed (changelog,
    /// transactions).
    #[error("state: {0}")]
    State(String),
    /// An offline evaluation cannot run (unknown model, unusable input).
    #[error("eval: {0}")]
    Eval(String),
    /// The metrics endpoint cannot be served.
    #[error("telemetry: {0}")]
    Telemetry(String),
    /// The schema registry cannot be reached, or refused a request (Avro
    /// formats; "no such schema id" is an answer, not this error).
    #[error("schema registry: {0}")]
    Registry(String),
    /// The brokers could not be reached within the bounded retries.
    #[error("{0}")]
    Unreachable(String),
    /// A stage's channel closed: the stage after it stopped (shutdown or crash).
    #[error("pipeline stage `{0}` stopped")]
    StageStopped(&'static str),
    /// A thread of the job panicked (a bug: please report it).
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
}

/// What could not be published, and why.
#[derive(Debug, thiserror::Error)]
#[error("a {bytes}-byte record (key {key:?}) to {topic}: {source}")]
pub struct Unpublishable {
    pub topic: String,
    /// The record's key, escaped and cut to 64 characters.
    pub key: String,
    pub bytes: usize,
    #[source]
    pub source: rdkafka::error::KafkaError,
}

impl From<rdkafka::error::KafkaError> for Error {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        use rdkafka::error::KafkaError as K;
        match e {
            // Its message carries the value: never print a secret one.
            K::ClientConfig(code, desc, key, value) if crate::secrets::is_secret_key(&key) => {
                let desc = if value.is_empty() {
                    desc
                } else {
                    desc.replace(&value, crate::secrets::REDACTED)
                };
                Error::Kafka(K::ClientConfig(
                    code,
                    desc,
                    key,
                    crate::secrets::REDACTED.to_string(),
                ))
            }
            e => Error::Kafka(e),
        }
    }
}

impl Error {
    pub fn config(
        file: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Config {
            file: file.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            context: context.into(),
            source,
        }
    }

    /// True when trying again later may succeed (broker down, queue full).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kafka(e) => e.rdkafka_error_code().is_some_and(retryable_kafka_code),
            Error::TopicAdmin { code, .. } => retryable_kafka_code(*code),
            Error::Io { .. } | Error::Unreachable(_) => true,
            _ => false,
        }
    }
}

/// The crate's retry rule for librdkafka's codes: true for the transient
/// (the broker or its leader is not there yet, a queue is full, a request
/// timed out), false for the permanent (authorization, a record too large,
/// an invalid config).
pub fn retryable_kafka_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::QueueFull
            | C::RequestTimedOut
            | C::OperationTimedOut
            | C::NetworkException
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::NotController
            | C::NotCoordinator
            | C::CoordinatorLoadInProgress
            | C::MessageTimedOut
            | C::TimedOutQueue
            | C::Resolve
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::KafkaStorageError
    )
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_tells_transient_from_permanent() {
        assert!(retryable_kafka_code(RDKafkaErrorCode::AllBrokersDown));
        assert!(!retryable_kafka_code(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(!retryable_kafka_code(
            RDKafkaErrorCode::TopicAuthorizationFailed
        ));
        let admin = |code| Error::TopicAdmin {
            topic: "t".into(),
            code,
        };
        assert!(admin(RDKafkaErrorCode::LeaderNotAvailable).is_retryable());
        assert!(!admin(RDKafkaErrorCode::InvalidReplicationFactor).is_retryable());
        assert!(!Error::config("p.toml", "name", "empty").is_retryable());
    }

    /// librdkafka's refusal of an option repeats its value: not for secrets.
    #[test]
    fn a_refused_secret_option_is_not_printed() {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaConfRes;
        let refused = |key: &str| {
            Error::from(KafkaError::ClientConfig(
                RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
                "Invalid value \"hunter2\" for configuration property".into(),
                key.into(),
                "hunter2".into(),
            ))
            .to_string()
        };
        let msg = refused("sasl.password");
        assert!(
            !msg.contains("hunter2") && msg.contains("sasl.password"),
            "{msg}"
        );
        assert!(
            refused("linger.ms").contains("hunter2"),
            "other values are shown"
        );
        let refused = Error::Refused("SASL authentication error".into());
        assert!(!refused.is_retryable());
    }
}
