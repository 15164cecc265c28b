//! Kafka sink: forecasts and dead letters to their topics, and the
//! checkpoints of durable state.
//!
//! Invariant: a ticket is released only after *every* record of its batch
//! was acknowledged by the broker. A failed delivery is retried (with
//! backoff) rather than dropped: losing it would lose a forecast.
//!
//! Checkpoints ([`KafkaSink::commit`]; the caller first waits for every
//! output before it): the state records and the input offsets are committed
//! in one Kafka transaction (the offsets join it with the consumer group's
//! metadata, KIP-447: a member of an older generation is fenced). A
//! checkpoint taken in a generation that has since been lost is aborted,
//! never committed in part: its transaction may hold forecasts of the lost
//! partitions, and those must not become visible without their offsets.
//! So the changelog and the committed offsets always agree, even when a
//! crash tears a checkpoint's writes. The transactional producer's id is
//! `<group>-<instance>`, stable across restarts, so a restarted instance
//! aborts what its predecessor left open.
//! - At least once: forecasts and dead letters go through a plain producer
//!   (visible at once); a crash re-publishes those since the last checkpoint
//!   (equal values: the replay starts from the checkpoint's state).
//! - Exactly once: one transactional producer carries everything, so
//!   forecasts become visible to `read_committed` readers at the commit.
//!
//! A transaction that must be aborted stops the job: nothing of it is
//! visible, and the next start resumes from the last commit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::avro::ForecastAvro;
use super::records::{forecast_records, ForecastRecord};
use super::Output;
use crate::broker::{blocking, client_config, Connection};
use crate::config::{Delivery, PipelineConfig};
use crate::decode::DeadLetter;
use crate::error::{retryable_kafka_code, Error, Result, Unpublishable};
use crate::offsets::OffsetTracker;
use crate::source::kafka::{Assignment, Source};
use crate::state::Checkpoint;
use crate::telemetry;

/// The producer's settings (`sink.librdkafka` overrides them);
/// `transactional` for the producer that commits checkpoints.
pub fn producer_config(cfg: &PipelineConfig, transactional: bool) -> ClientConfig {
    let defaults = [
        ("acks", "all"),
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
        ("compression.type", "none"),
        ("message.timeout.ms", "60000"),
    ];
    let mut c = client_config(&Connection::of(cfg), &defaults, &cfg.sink.librdkafka);
    if transactional {
        c.set("transactional.id", transactional_id(cfg));

        // A crashed instance's open transaction blocks read_committed
        // readers until it times out (or its successor, with the same
        // id, starts): keep that short.
        if !cfg.sink.librdkafka.contains_key("transaction.timeout.ms") {
            c.set("transaction.timeout.ms", "20000");
            // librdkafka requires message.timeout.ms <= transaction.timeout.ms.
            if !cfg.sink.librdkafka.contains_key("message.timeout.ms") {
                c.set("message.timeout.ms", "20000");
            }
        }
    }
    c
}

/// The transactional producer's id: stable per instance, so a restarted
/// instance fences (and aborts) its predecessor's transaction.
pub fn transactional_id(cfg: &PipelineConfig) -> String {
    format!("{}-{}", cfg.group_id(), cfg.instance())
}

pub fn create_producer(cfg: &PipelineConfig, transactional: bool) -> Result<FutureProducer> {
    Ok(producer_config(cfg, transactional).create()?)
}

/// What one delivered output was.
#[derive(Debug)]
pub struct Delivered {
    /// The forecast records (none for dead letters).
    pub forecasts: Vec<ForecastRecord>,
    /// The forecasts as published: (key, JSON payload), for the API's
    /// latest-forecast map (serialized once, for the broker and the API).
    pub published: Vec<(String, Arc<str>)>,
    /// From the windows' close to the last ack of their forecasts.
    pub latency: Option<Duration>,
}

/// A record to publish: its key and JSON payload.
type Payload = (String, Arc<str>);

/// Publishes outputs to Kafka and releases their tickets once acknowledged.
#[derive(Clone)]
pub struct KafkaSink {
    /// Forecasts and dead letters.
    producer: FutureProducer,
    /// Checkpoints (durable state): the same producer in exactly-once mode,
    /// a second, transactional one for at-least-once.
    txn: Option<FutureProducer>,
    topic: String,
    dead_letter_topic: String,
    accuracy_topic: Option<String>,
    source_topic: String,
    step_ms: i64,
    tracker: Arc<Mutex<OffsetTracker>>,
    state_topic: String,
    input_topic: String,
    max_in_flight_bytes: usize,
    /// `sink.format = "avro"`: forecasts in the wire format (dead letters
    /// and accuracy records stay JSON).
    avro: Option<Arc<ForecastAvro>>,
}

impl KafkaSink {
    /// The pipeline's sink: its producer, topics and step.
    pub fn from_config(cfg: &PipelineConfig, tracker: Arc<Mutex<OffsetTracker>>) -> Result<Self> {
        let exactly_once = cfg.delivery == Delivery::ExactlyOnce;
        let producer = create_producer(cfg, exactly_once)?;
        let txn = match (cfg.state.enabled, exactly_once) {
            (false, _) => None,
            (true, true) => Some(producer.clone()),
            (true, false) => Some(create_producer(cfg, true)?),
        };
        Ok(KafkaSink {
            producer,
            txn,
            topic: cfg.sink.topic.clone(),
            dead_letter_topic: cfg.sink.dead_letter_topic.clone(),
            accuracy_topic: cfg.sink.accuracy_topic.clone(),
            source_topic: cfg.source.topic.clone(),
            step_ms: cfg.slide_ms(),
            tracker,
            state_topic: cfg.state_topic(),
            input_topic: cfg.source.topic.clone(),
            max_in_flight_bytes: cfg.sink.max_in_flight_bytes,
            avro: ForecastAvro::from_config(cfg)?.map(Arc::new),
        })
    }

    /// Avro forecasts: registers their schema (once; later calls return
    /// the id at once). Call at start so that a registry that is away or
    /// refuses the schema stops the job before it consumes anything.
    pub async fn prepare(&self) -> Result<()> {
        if let Some(a) = &self.avro {
            a.id().await?;
        }
        Ok(())
    }

    /// `sink.max_in_flight_bytes`.
    pub fn max_in_flight_bytes(&self) -> usize {
        self.max_in_flight_bytes
    }

    /// Durable state: registers the transactional id (aborting whatever a
    /// previous instance of the same name left open) and opens the first
    /// transaction. Blocking; call before consuming.
    pub fn begin(&self) -> Result<()> {
        let Some(txn) = &self.txn else {
            return Ok(());
        };
        txn.init_transactions(Duration::from_secs(60))
            .map_err(|e| Error::State(format!("initialising transactions: {e}")))?;
        txn.begin_transaction()
            .map_err(|e| Error::State(format!("beginning a transaction: {e}")))
    }

    /// Abandons the open transaction (a lost assignment): nothing since the
    /// last checkpoint becomes visible (exactly once) and no state of it is
    /// committed; a new transaction begins. Call only once every output
    /// before it is acknowledged. Aborting an empty transaction is harmless
    /// (the loss may already have aborted it at a stale checkpoint).
    pub fn abandon(&self) -> Result<()> {
        let Some(txn) = &self.txn else {
            return Ok(());
        };
        blocking(|| {
            txn.abort_transaction(Duration::from_secs(30))
                .and_then(|()| txn.begin_transaction())
                .map_err(|e| {
                    Error::State(format!(
                        "abandoning the transaction after a lost assignment: {e}"
                    ))
                })
        })
    }

    /// Publishes a checkpoint (see the module docs). Call only once every
    /// output before it is acknowledged. Returns whether it was committed:
    /// a checkpoint of a partition whose assignment was lost since (its
    /// generation is gone) is aborted instead, with everything since the
    /// previous one. Its forecasts must not become visible without the
    /// offsets that say they are done, and those offsets can no longer be
    /// committed; the compute thread, told of the loss, restarts every
    /// partition from its last committed checkpoint.
    pub async fn commit(
        &self,
        cp: Checkpoint,
        consumer: &Source,
        assignment: &Assignment,
    ) -> Result<bool> {
        let t0 = std::time::Instant::now();
        let Some(txn) = &self.txn else {
            return Err(Error::State(
                "a checkpoint without durable state (state.enabled = false)".into(),
            ));
        };
        let owned = assignment.owned();
        let gone: Vec<i32> = cp
            .epochs
            .iter()
            .filter(|&&(p, g)| owned.get(&p) != Some(&g))
            .map(|&(p, _)| p)
            .collect();
        if !gone.is_empty() {
            tracing::warn!(partitions = ?gone, checkpoint = cp.id, "a checkpoint of partitions no longer owned (assignment lost): aborting it; they restart from the last committed checkpoint");
            self.abandon()?;
            return Ok(false);
        }
        let records = &cp.records;
        let bytes: usize = records
            .iter()
            .map(|r| r.key.len() + r.value.as_ref().map_or(0, |v| v.len()))
            .sum();
        let sends = records.iter().map(|r| {
            self.send_bytes_until_acked(
                txn,
                &self.state_topic,
                Some(r.partition),
                &r.key,
                r.value.as_deref(),
            )
        });
        for sent in futures::future::join_all(sends).await {
            sent?;
        }
        let mut tpl = TopicPartitionList::new();
        for &(p, o) in &cp.offsets {
            tpl.add_partition_offset(&self.input_topic, p, Offset::Offset(o))?;
        }
        commit_transaction(txn, &tpl, consumer)?;
        metrics::counter!(telemetry::CHECKPOINTS).increment(1);
        metrics::counter!(telemetry::STATE_RECORDS).increment(records.len() as u64);
        metrics::counter!(telemetry::STATE_BYTES).increment(bytes as u64);
        metrics::histogram!(telemetry::CHECKPOINT_SECONDS).record(t0.elapsed().as_secs_f64());
        if let Some(done) = cp.done {
            let _ = done.try_send(());
        }
        Ok(true)
    }

    /// Sends every record of `output`, waits for all acknowledgements, then
    /// releases the ticket. Returns the forecast records (for printing) and
    /// how long after their windows closed they were acknowledged.
    /// A record that cannot be serialized is an error (never an empty
    /// payload); its ticket is then not released, so nothing is committed
    /// past it.
    pub async fn deliver(&self, output: Output) -> Result<Delivered> {
        // Avro forecasts: the bytes sent, in `records`' order (`records`
        // keeps the JSON form for the API's latest forecasts).
        let mut wire: Option<Vec<Vec<u8>>> = None;
        let (topic, records, printed): (&str, Vec<Payload>, Vec<ForecastRecord>) = match &output {
            Output::Forecasts { forecasts, .. } => {
                let recs = forecast_records(forecasts, self.step_ms);
                if let Some(a) = &self.avro {
                    let id = a.id().await?;
                    wire = Some(
                        recs.iter()
                            .map(|r| a.encode(id, r))
                            .collect::<Result<_>>()?,
                    );
                }
                let payloads = recs
                    .iter()
                    .map(|r| {
                        serde_json::to_string(r)
                            .map(|p| (r.key.clone(), Arc::from(p)))
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
                            Arc::from(d.to_json(&self.source_topic).to_string()),
                        )
                    })
                    .collect(),
                Vec::new(),
            ),
            Output::Accuracy(recs) => {
                let Some(topic) = &self.accuracy_topic else {
                    return Ok(Delivered {
                        forecasts: Vec::new(),
                        published: Vec::new(),
                        latency: None,
                    });
                };
                let payloads = recs
                    .iter()
                    .map(|r| {
                        serde_json::to_string(r)
                            .map(|p| (r.key.to_string(), Arc::from(p)))
                            .map_err(|e| {
                                Error::json(format!("serializing the accuracy of {}", r.key), e)
                            })
                    })
                    .collect::<Result<_>>()?;
                (topic, payloads, Vec::new())
            }
            Output::Checkpoint(_) | Output::Abandon => {
                return Err(Error::State(
                    "a checkpoint (or its abandonment) is committed, not delivered".into(),
                ))
            }
        };
        let payloads: Vec<&[u8]> = match &wire {
            Some(w) => w.iter().map(Vec::as_slice).collect(),
            None => records.iter().map(|(_, v)| v.as_bytes()).collect(),
        };
        let sends = records.iter().zip(payloads).map(|((k, _), bytes)| {
            self.send_bytes_until_acked(&self.producer, topic, None, k.as_bytes(), Some(bytes))
        });
        let is_forecasts = matches!(output, Output::Forecasts { .. });
        // A permanent failure of any record keeps the whole ticket pinned:
        // nothing past it is committed, and the job stops (see `stream`).
        for sent in futures::future::join_all(sends).await {
            sent?;
        }
        if let Some(ticket) = output.ticket() {
            let mut t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
            t.release(ticket);
        }
        metrics::counter!(telemetry::RECORDS_PUBLISHED, "topic" => topic.to_string())
            .increment(records.len() as u64);
        let latency = match &output {
            Output::Forecasts { closed_at, .. } => {
                let l = closed_at.elapsed();
                metrics::histogram!(telemetry::FORECAST_LATENCY).record(l.as_secs_f64());
                Some(l)
            }
            Output::DeadLetters { .. }
            | Output::Accuracy(_)
            | Output::Checkpoint(_)
            | Output::Abandon => None,
        };
        Ok(Delivered {
            forecasts: printed,
            published: if is_forecasts { records } else { Vec::new() },
            latency,
        })
    }

    /// Sends one record until the broker acknowledges it, retrying what the
    /// crate's retry rule calls transient (broker away, queue full, timeout)
    /// with backoff. A permanent failure (record too large, not authorized,
    /// a fatal producer error) is returned: retrying it would freeze the
    /// partition's commits and grow memory without end. To an explicit
    /// partition when given; `payload = None` is a tombstone.
    async fn send_bytes_until_acked(
        &self,
        producer: &FutureProducer,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
    ) -> Result<()> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut rec = FutureRecord::<[u8], [u8]>::to(topic).key(key);
            if let Some(p) = payload {
                rec = rec.payload(p);
            }
            if let Some(p) = partition {
                rec = rec.partition(p);
            }
            match producer.send(rec, Duration::from_secs(30)).await {
                Ok(_) => return Ok(()),
                Err((e, _)) => {
                    let transient = e.rdkafka_error_code().is_none_or(retryable_kafka_code);
                    if !transient {
                        return Err(Error::Publish(Box::new(Unpublishable {
                            topic: topic.to_string(),
                            key: String::from_utf8_lossy(key)
                                .escape_debug()
                                .take(64)
                                .collect(),
                            bytes: payload.map_or(0, |p| p.len()),
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

/// Adds the offsets to the open transaction, commits it, opens the next.
fn commit_transaction(
    txn: &FutureProducer,
    tpl: &TopicPartitionList,
    consumer: &Source,
) -> Result<()> {
    let fail = |what: &str, e: rdkafka::error::KafkaError| -> Error {
        let abortable =
            matches!(&e, rdkafka::error::KafkaError::Transaction(r) if r.txn_requires_abort());
        if abortable {
            let _ = txn.abort_transaction(Duration::from_secs(30));
        }
        let fenced = e.rdkafka_error_code().is_some_and(|c| {
            matches!(
                c,
                RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch
            )
        });
        Error::State(format!(
            "{what} failed ({e}); the transaction is {}; the next start resumes from the last committed checkpoint{}",
            if abortable { "aborted" } else { "not committed" },
            if fenced {
                " (fenced: another instance runs with the same transactional id; give each live instance its own --instance name)"
            } else {
                ""
            }
        ))
    };
    blocking(|| -> Result<()> {
        if tpl.count() > 0 {
            let meta = consumer.group_metadata().ok_or_else(|| {
                Error::State("the consumer has no group metadata (not in a group?)".into())
            })?;
            txn.send_offsets_to_transaction(tpl, &meta, Duration::from_secs(30))
                .map_err(|e| fail("adding the offsets to the transaction", e))?;
        }
        txn.commit_transaction(Duration::from_secs(60))
            .map_err(|e| fail("committing the transaction", e))?;
        txn.begin_transaction()
            .map_err(|e| fail("beginning a transaction", e))
    })
}

fn dead_letter_key(d: &DeadLetter) -> String {
    format!("{}:{}", d.partition, d.offset)
}
