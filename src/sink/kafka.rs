//! Kafka sink: forecasts and dead letters to their topics.
//!
//! Invariant: a ticket is released only after *every* record of its batch
//! was acknowledged by the broker. A failed delivery is retried (with
//! backoff) rather than dropped: losing it would lose a forecast.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::records::{forecast_records, ForecastRecord};
use super::Output;
use crate::broker::client_config;
use crate::config::PipelineConfig;
use crate::decode::DeadLetter;
use crate::error::{retryable_kafka_code, Error, Result, Unpublishable};
use crate::offsets::OffsetTracker;
use crate::telemetry;

/// The producer's settings (`sink.librdkafka` overrides them).
pub fn producer_config(cfg: &PipelineConfig) -> ClientConfig {
    let defaults = [
        ("acks", "all"),
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
        ("compression.type", "none"),
        ("message.timeout.ms", "60000"),
    ];
    client_config(&cfg.source.brokers, &defaults, &cfg.sink.librdkafka)
}

pub fn create_producer(cfg: &PipelineConfig) -> Result<FutureProducer> {
    Ok(producer_config(cfg).create()?)
}

/// What one delivered output was.
#[derive(Debug)]
pub struct Delivered {
    /// The forecast records (none for dead letters).
    pub forecasts: Vec<ForecastRecord>,
    /// From the windows' close to the last ack of their forecasts.
    pub latency: Option<Duration>,
}

/// Publishes outputs to Kafka and releases their tickets once acknowledged.
#[derive(Clone)]
pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    dead_letter_topic: String,
    source_topic: String,
    step_ms: i64,
    tracker: Arc<Mutex<OffsetTracker>>,
}

impl KafkaSink {
    /// The pipeline's sink: its producer, topics and step.
    pub fn from_config(cfg: &PipelineConfig, tracker: Arc<Mutex<OffsetTracker>>) -> Result<Self> {
        Ok(KafkaSink {
            producer: create_producer(cfg)?,
            topic: cfg.sink.topic.clone(),
            dead_letter_topic: cfg.sink.dead_letter_topic.clone(),
            source_topic: cfg.source.topic.clone(),
            step_ms: cfg.slide_ms(),
            tracker,
        })
    }

    /// Sends every record of `output`, waits for all acknowledgements, then
    /// releases the ticket. Returns the forecast records (for printing) and
    /// how long after their windows closed they were acknowledged.
    /// A record that cannot be serialized is an error (never an empty
    /// payload); its ticket is then not released, so nothing is committed
    /// past it.
    pub async fn deliver(&self, output: Output) -> Result<Delivered> {
        let (topic, records, printed): (&str, Vec<(String, String)>, Vec<ForecastRecord>) =
            match &output {
                Output::Forecasts { forecasts, .. } => {
                    let recs = forecast_records(forecasts, self.step_ms);
                    let payloads = recs
                        .iter()
                        .map(|r| {
                            serde_json::to_string(r)
                                .map(|p| (r.key.clone(), p))
                                .map_err(|e| {
                                    Error::json(format!("serializing the forecast of {}", r.key), e)
                                })
                        })
                        .collect::<Result<_>>()?;
                    (&self.topic, payloads, recs)
                }
                Output::DeadLetters { letters, .. } => (
                    &self.dead_letter_topic,
                    letters
                        .iter()
                        .map(|d| {
                            (
                                dead_letter_key(d),
                                d.to_json(&self.source_topic).to_string(),
                            )
                        })
                        .collect(),
                    Vec::new(),
                ),
            };
        let sends = records
            .iter()
            .map(|(k, v)| self.send_until_acked(topic, k, v));
        // A permanent failure of any record keeps the whole ticket pinned:
        // nothing past it is committed, and the job stops (see `stream`).
        for sent in futures::future::join_all(sends).await {
            sent?;
        }
        let mut t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        t.release(output.ticket());
        metrics::counter!(telemetry::RECORDS_PUBLISHED, "topic" => topic.to_string())
            .increment(records.len() as u64);
        let latency = match &output {
            Output::Forecasts { closed_at, .. } => {
                let l = closed_at.elapsed();
                metrics::histogram!(telemetry::FORECAST_LATENCY).record(l.as_secs_f64());
                Some(l)
            }
            Output::DeadLetters { .. } => None,
        };
        Ok(Delivered {
            forecasts: printed,
            latency,
        })
    }

    /// Sends one record until the broker acknowledges it, retrying what the
    /// crate's retry rule calls transient (broker away, queue full, timeout)
    /// with backoff. A permanent failure (record too large, not authorized,
    /// a fatal producer error) is returned: retrying it would freeze the
    /// partition's commits and grow memory without end.
    async fn send_until_acked(&self, topic: &str, key: &str, payload: &str) -> Result<()> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let rec = FutureRecord::to(topic).key(key).payload(payload);
            match self.producer.send(rec, Duration::from_secs(30)).await {
                Ok(_) => return Ok(()),
                Err((e, _)) => {
                    let transient = e.rdkafka_error_code().is_none_or(retryable_kafka_code);
                    if !transient {
                        return Err(Error::Publish(Box::new(Unpublishable {
                            topic: topic.to_string(),
                            key: key.escape_debug().take(64).collect(),
                            bytes: payload.len(),
                            source: e,
                        })));
                    }
                    metrics::counter!(telemetry::DELIVERY_RETRIES).increment(1);
                    tracing::warn!(error = %e, topic, "delivery failed; retrying (the record is kept)");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

fn dead_letter_key(d: &DeadLetter) -> String {
    format!("{}:{}", d.partition, d.offset)
}
