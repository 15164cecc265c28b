//! The library's error type, by domain.
//!
//! Invariant: nothing a user sends (an event, a pipeline file, a Parquet file)
//! produces a panic; it produces one of these. `is_retryable` separates the
//! transient (a broker that is not up yet) from the fatal (a bad config).

use std::path::PathBuf;

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
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("model: {0}")]
    Model(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The brokers could not be reached within the bounded retries.
    #[error("{0}")]
    Unreachable(String),
    /// A stage's channel closed: the stage after it stopped (shutdown or crash).
    #[error("pipeline stage `{0}` stopped")]
    StageStopped(&'static str),
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

    /// True when trying again later may succeed (broker down, queue full).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kafka(e) => e
                .rdkafka_error_code()
                .map(|c| {
                    use rdkafka::types::RDKafkaErrorCode as C;
                    matches!(
                        c,
                        C::BrokerTransportFailure
                            | C::AllBrokersDown
                            | C::QueueFull
                            | C::RequestTimedOut
                            | C::OperationTimedOut
                            | C::NetworkException
                            | C::LeaderNotAvailable
                            | C::NotLeaderForPartition
                            | C::NotCoordinator
                            | C::CoordinatorLoadInProgress
                    )
                })
                .unwrap_or(false),
            Error::Io { .. } | Error::Unreachable(_) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
