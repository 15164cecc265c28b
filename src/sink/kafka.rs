//! Kafka sink: forecasts and dead letters to their topics, and the
//! checkpoints of durable state.
//!
//! Invariant: a ticket is released only after *every* record of its batch
//! was acknowledged by the broker. A failed delivery is retried (with
//! backoff) rather than dropped: losing it would lose a forecast.
//!
//! How (a close of 10,000 keys is one output of 10,000 records): each
//! record is written into one reused buffer (librdkafka copies it on
//! enqueue; forecasts straight from the Arrow columns, `records::
//! ForecastJson`) and enqueued at once, with a shared [`Round`] as its
//! delivery opaque; the producer's polling thread counts the delivery
//! reports down and keeps copies of the failed records, and the output
//! waits for the count to reach zero. No future, channel or owned record
//! per message. The failed records are sent again as a new round.
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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;

use super::avro::ForecastAvro;
use super::records::{forecast_records, ForecastJson, ForecastRecord};
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

pub fn create_producer(cfg: &PipelineConfig, transactional: bool) -> Result<SinkProducer> {
    Ok(producer_config(cfg, transactional).create_with_context(AckContext)?)
}

/// What one delivered output was.
#[derive(Debug, Default)]
pub struct Delivered {
    /// The forecasts (none for dead letters).
    pub forecasts: DeliveredForecasts,
    /// The forecasts as published: (key, JSON payload), for the API's
    /// latest-forecast map; only when the API listens (`api.listen`), so
    /// that a job without it keeps no copy per record.
    pub published: Vec<(String, Arc<str>)>,
    /// From the windows' close to the last ack of their forecasts.
    pub latency: Option<Duration>,
}

/// The forecasts of a delivered output, as the batch they came in: owned
/// records are built only when asked for (printing).
#[derive(Debug, Default)]
pub struct DeliveredForecasts {
    batch: Option<RecordBatch>,
    step_ms: i64,
}

impl DeliveredForecasts {
    pub fn len(&self) -> usize {
        self.batch.as_ref().map_or(0, RecordBatch::num_rows)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The forecasts as published records.
    pub fn records(&self) -> Vec<ForecastRecord> {
        self.batch
            .as_ref()
            .map(|b| forecast_records(b, self.step_ms))
            .unwrap_or_default()
    }
}

/// Publishes outputs to Kafka and releases their tickets once acknowledged.
#[derive(Clone)]
pub struct KafkaSink {
    /// Forecasts and dead letters.
    producer: SinkProducer,
    /// Checkpoints (durable state): the same producer in exactly-once mode,
    /// a second, transactional one for at-least-once.
    txn: Option<SinkProducer>,
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
    /// The API listens: keep each forecast's JSON for its latest map.
    keep_published: bool,
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
            keep_published: cfg.api.listen.is_some(),
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
        send_until_acked(txn, &self.state_topic, true, records.len(), |i, buf| {
            let r = &records[i];
            if let Some(v) = &r.value {
                buf.extend_from_slice(v);
            }
            Ok((Some(r.partition), r.key.as_slice(), r.value.is_some()))
        })
        .await?;
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
    /// releases the ticket. Returns the forecasts (for printing) and how
    /// long after their windows closed they were acknowledged.
    /// A record that cannot be serialized is an error (never an empty
    /// payload); its ticket is then not released, so nothing is committed
    /// past it.
    pub async fn deliver(&self, output: Output) -> Result<Delivered> {
        let mut published = Vec::new();
        let (topic, n): (&str, usize) = match &output {
            Output::Forecasts { forecasts, .. } => {
                let mut json = ForecastJson::new(forecasts, self.step_ms)?;
                let n = json.len();
                if self.keep_published {
                    published.reserve(n);
                }
                // The API's latest forecasts are the JSON form (Avro or not).
                let mut keep = |json: &mut ForecastJson, i: usize, buf: &mut Vec<u8>| {
                    if self.keep_published {
                        let start = buf.len();
                        json.write(i, buf)?;
                        let p = String::from_utf8_lossy(&buf[start..]);
                        published.push((json.key(i).to_string(), Arc::from(p.as_ref())));
                    }
                    Ok::<_, Error>(())
                };
                match &self.avro {
                    None => {
                        send_until_acked(&self.producer, &self.topic, false, n, |i, buf| {
                            if self.keep_published {
                                keep(&mut json, i, buf)?;
                            } else {
                                json.write(i, buf)?;
                            }
                            Ok((None, json.key(i).as_bytes(), true))
                        })
                        .await?
                    }
                    Some(a) => {
                        let id = a.id().await?;
                        let recs = forecast_records(forecasts, self.step_ms);
                        let mut scratch = Vec::new();
                        send_until_acked(&self.producer, &self.topic, false, n, |i, buf| {
                            scratch.clear();
                            keep(&mut json, i, &mut scratch)?;
                            buf.extend_from_slice(&a.encode(id, &recs[i])?);
                            Ok((None, recs[i].key.as_bytes(), true))
                        })
                        .await?
                    }
                }
                (&self.topic, n)
            }
            Output::DeadLetters { letters, .. } => {
                let keys: Vec<String> = letters.iter().map(dead_letter_key).collect();
                let topic = &self.dead_letter_topic;
                send_until_acked(&self.producer, topic, false, letters.len(), |i, buf| {
                    serde_json::to_writer(&mut *buf, &letters[i].to_json(&self.source_topic))
                        .map_err(|e| Error::json("serializing a dead letter", e))?;
                    Ok((None, keys[i].as_bytes(), true))
                })
                .await?;
                (topic, letters.len())
            }
            Output::Accuracy(recs) => {
                let Some(topic) = &self.accuracy_topic else {
                    return Ok(Delivered::default());
                };
                send_until_acked(&self.producer, topic, false, recs.len(), |i, buf| {
                    let r = &recs[i];
                    serde_json::to_writer(&mut *buf, r).map_err(|e| {
                        Error::json(format!("serializing the accuracy of {}", r.key), e)
                    })?;
                    Ok((None, r.key.as_bytes(), true))
                })
                .await?;
                (topic, recs.len())
            }
            Output::Checkpoint(_) | Output::Abandon => {
                return Err(Error::State(
                    "a checkpoint (or its abandonment) is committed, not delivered".into(),
                ))
            }
        };
        // Reached only when every record was acknowledged: a permanent
        // failure returned above with the ticket still pinned (nothing past
        // it is committed, and the job stops, see `stream`).
        if let Some(ticket) = output.ticket() {
            let mut t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
            t.release(ticket);
        }
        metrics::counter!(telemetry::RECORDS_PUBLISHED, "topic" => topic.to_string())
            .increment(n as u64);
        match output {
            Output::Forecasts {
                closed_at,
                forecasts,
                ..
            } => {
                let l = closed_at.elapsed();
                metrics::histogram!(telemetry::FORECAST_LATENCY).record(l.as_secs_f64());
                Ok(Delivered {
                    forecasts: DeliveredForecasts {
                        batch: Some(forecasts),
                        step_ms: self.step_ms,
                    },
                    published,
                    latency: Some(l),
                })
            }
            Output::DeadLetters { .. }
            | Output::Accuracy(_)
            | Output::Checkpoint(_)
            | Output::Abandon => Ok(Delivered::default()),
        }
    }
}

/// One record of a send, its payload written into the caller's buffer:
/// (an explicit partition or none (by key), its key, whether it has a
/// payload (`false`: a tombstone)).
type Rec<'k> = (Option<i32>, &'k [u8], bool);

/// Sends `n` records (`next(i, buf)` writes record `i`'s payload into
/// `buf`, a buffer reused for every record: librdkafka copies it) until the
/// broker acknowledged every one, retrying what the crate's retry rule
/// calls transient (broker away, queue full, timeout) with backoff. A
/// permanent failure (record too large, not authorized, a fatal producer
/// error) is returned: retrying it would freeze the partition's commits and
/// grow memory without end. `explicit`: the records name their partition
/// (a retry goes to the same one).
async fn send_until_acked<'k>(
    producer: &SinkProducer,
    topic: &str,
    explicit: bool,
    n: usize,
    mut next: impl FnMut(usize, &mut Vec<u8>) -> Result<Rec<'k>>,
) -> Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut failed = send_round(producer, topic, explicit, n, &mut next, &mut buf).await?;
    let mut backoff = Duration::from_millis(100);
    while let Some(first) = failed.first() {
        metrics::counter!(telemetry::DELIVERY_RETRIES).increment(failed.len() as u64);
        tracing::warn!(error = %first.error, topic, records = failed.len(), "delivery failed; retrying (the records are kept)");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
        let again = std::mem::take(&mut failed);
        let mut resend = |i: usize, buf: &mut Vec<u8>| -> Result<Rec<'_>> {
            let f: &Failed = &again[i];
            if let Some(p) = &f.payload {
                buf.extend_from_slice(p);
            }
            Ok((f.partition, &f.key, f.payload.is_some()))
        };
        failed = send_round(
            producer,
            topic,
            explicit,
            again.len(),
            &mut resend,
            &mut buf,
        )
        .await?;
    }
    Ok(())
}

/// Enqueues `n` records, all sharing one [`Round`] as their delivery
/// opaque (no allocation or future per record), and waits until the
/// broker answered for each. Returns the transiently failed ones, with
/// their bytes, to send again; the first permanent failure is an error.
async fn send_round<'k>(
    producer: &SinkProducer,
    topic: &str,
    explicit: bool,
    n: usize,
    next: &mut impl FnMut(usize, &mut Vec<u8>) -> Result<Rec<'k>>,
    buf: &mut Vec<u8>,
) -> Result<Vec<Failed>> {
    let round = Arc::new(Round {
        explicit,
        ..Round::default()
    });
    let mut failed = Vec::new();
    let t0 = std::time::Instant::now();
    for i in 0..n {
        buf.clear();
        let (partition, key, has_payload) = next(i, buf)?;
        round.pending.fetch_add(1, Ordering::AcqRel);
        let mut rec = BaseRecord::with_opaque_to(topic, round.clone()).key(key);
        if has_payload {
            rec = rec.payload(buf.as_slice());
        }
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                // librdkafka's queue is full (`queue.buffering.max.*`):
                // wait for acks to make room, as the future producer did.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, r)) => {
                    drop(r);
                    round.answered();
                    failed.push(Failed {
                        error,
                        partition,
                        key: key.to_vec(),
                        payload: has_payload.then(|| buf.clone()),
                    });
                    break;
                }
            }
        }
    }
    let enqueued = t0.elapsed();
    round.all_answered().await;
    // Where a delivery's time goes: writing and enqueueing vs the acks.
    tracing::debug!(
        topic,
        records = n,
        enqueue_ms = enqueued.as_secs_f64() * 1e3,
        answered_ms = t0.elapsed().as_secs_f64() * 1e3,
        "send round answered"
    );
    failed.append(&mut lock(&round.failed));
    if let Some(f) = failed.iter().find(|f| !transient(&f.error)) {
        return Err(Error::Publish(Box::new(Unpublishable {
            topic: topic.to_string(),
            key: String::from_utf8_lossy(&f.key)
                .escape_debug()
                .take(64)
                .collect(),
            bytes: f.payload.as_ref().map_or(0, Vec::len),
            source: f.error.clone(),
        })));
    }
    Ok(failed)
}

/// The crate's retry rule on a produce error (no code: transient, as a
/// cancelled delivery).
fn transient(e: &KafkaError) -> bool {
    e.rdkafka_error_code().is_none_or(retryable_kafka_code)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The delivery opaque of one send round, shared by its records: counts
/// the records the broker has not answered for yet and keeps the failed
/// ones (with copies of their bytes) for a retry or an error.
#[derive(Default)]
pub struct Round {
    pending: AtomicUsize,
    failed: Mutex<Vec<Failed>>,
    /// The round's records name their partition.
    explicit: bool,
    done: Notify,
}

impl Round {
    /// One record answered (acked or failed).
    fn answered(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Stores a permit when nobody waits yet: no wake-up is lost.
            self.done.notify_one();
        }
    }

    async fn all_answered(&self) {
        while self.pending.load(Ordering::Acquire) > 0 {
            self.done.notified().await;
        }
    }
}

/// A record the broker refused or that timed out.
struct Failed {
    error: KafkaError,
    partition: Option<i32>,
    key: Vec<u8>,
    payload: Option<Vec<u8>>,
}

/// The sink's producer context: a delivery report answers for its record
/// in the record's [`Round`].
pub struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<Round>;

    fn delivery(&self, result: &DeliveryResult<'_>, round: Arc<Round>) {
        if let Err((error, m)) = result {
            let f = Failed {
                error: error.clone(),
                partition: round.explicit.then(|| m.partition()),
                key: m.key().map(<[u8]>::to_vec).unwrap_or_default(),
                payload: m.payload().map(<[u8]>::to_vec),
            };
            lock(&round.failed).push(f);
        }
        round.answered();
    }
}

/// The sink's producer: librdkafka's own polling thread runs the delivery
/// reports (a [`Round`] per send, not a future per record).
pub type SinkProducer = ThreadedProducer<AckContext>;

/// Adds the offsets to the open transaction, commits it, opens the next.
fn commit_transaction(
    txn: &SinkProducer,
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// The output waits until every record of its round was answered, and
    /// an answer that comes before the wait starts is not lost.
    #[test]
    fn a_round_is_done_only_when_every_record_is_answered() {
        let round = Round::default();
        round.pending.fetch_add(3, Ordering::AcqRel);
        round.answered();
        assert!(round.all_answered().now_or_never().is_none(), "2 pending");
        round.answered();
        assert!(round.all_answered().now_or_never().is_none(), "1 pending");
        // The last answer before anyone waits: the permit is kept.
        round.answered();
        assert!(round.all_answered().now_or_never().is_some());
        // A new record in the same round makes it pending again.
        round.pending.fetch_add(1, Ordering::AcqRel);
        assert!(round.all_answered().now_or_never().is_none());
        round.answered();
        assert!(round.all_answered().now_or_never().is_some());
    }

    #[test]
    fn only_coded_permanent_errors_are_not_retried() {
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert!(!transient(&too_large));
        assert!(transient(&timed_out));
        assert!(transient(&KafkaError::Canceled));
    }
}
