//! Sources: Kafka (streaming) and Parquet (backfill) -> raw input batches.
//!
//! Kafka: a `StreamConsumer` with auto-commit on and `enable.auto.offset.store`
//! off. The job stores offsets itself from the `OffsetTracker`'s commit points
//! (rust-rdkafka's `at_least_once` pattern), so a committed offset never
//! passes an input whose forecast is not yet acknowledged. The consumer loop
//! only moves bytes: payloads are copied out and handed to the compute thread
//! in batches; it never decodes or computes.
//!
//! Parquet: typed columns are mapped onto the decode stage's events schema
//! (key, time, values), with the same validation: a row with a null key, a
//! bad time or a non-finite value becomes a dead letter, not an error.

use std::path::Path;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::{cast, concat_batches, sort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{PipelineConfig, TimeFormat};
use crate::decode::{events_schema, parse_time, DeadLetter, EventsBuilder, RawMessage, RawTime};
use crate::error::{Error, Result};

fn base_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c.set("client.id", "streamcast");
    c
}

pub fn consumer_config(cfg: &PipelineConfig) -> ClientConfig {
    let mut c = base_config(&cfg.source.brokers);
    c.set("group.id", cfg.group_id())
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A restarted job rejoins quickly after a crash of the old member.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("enable.partition.eof", "false");
    for (k, v) in &cfg.source.librdkafka {
        c.set(k, v);
    }
    c
}

pub fn producer_config(cfg: &PipelineConfig) -> ClientConfig {
    let mut c = base_config(&cfg.source.brokers);
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "none")
        .set("message.timeout.ms", "60000");
    for (k, v) in &cfg.sink.librdkafka {
        c.set(k, v);
    }
    c
}

pub fn create_consumer(cfg: &PipelineConfig) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = consumer_config(cfg).create()?;
    consumer.subscribe(&[&cfg.source.topic])?;
    Ok(consumer)
}

pub fn create_producer(cfg: &PipelineConfig) -> Result<FutureProducer> {
    Ok(producer_config(cfg).create()?)
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
    let admin: AdminClient<DefaultClientContext> = base_config(brokers).create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, parts)| NewTopic::new(name, *parts, TopicReplication::Fixed(1)))
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
                        Err((name, code)) if is_transient(code) => {
                            retry = true;
                            last_err = format!("topic {name}: {code}");
                        }
                        Err((name, code)) => {
                            return Err(Error::Model(format!(
                                "cannot create topic {name}: {code}"
                            )));
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

fn is_transient(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::NotController
            | RDKafkaErrorCode::LeaderNotAvailable
    )
}

/// Waits for the next message, then gathers more until `max` or `wait` has
/// passed. Returns an empty batch if nothing arrives within `idle`.
pub async fn next_batch(
    consumer: &StreamConsumer,
    max: usize,
    wait: Duration,
    idle: Duration,
) -> Result<Vec<RawMessage>> {
    let mut out = Vec::new();
    let first = match tokio::time::timeout(idle, consumer.recv()).await {
        Err(_) => return Ok(out),
        Ok(m) => m?,
    };
    out.push(raw(&first));
    let deadline = tokio::time::Instant::now() + wait;
    while out.len() < max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => break,
            Ok(Ok(m)) => out.push(raw(&m)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                break;
            }
        }
    }
    Ok(out)
}

fn raw<M: Message>(m: &M) -> RawMessage {
    RawMessage {
        payload: m.payload().map(|p| p.to_vec()),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
    }
}

/// Assigned partitions that still have unread messages on the broker, from
/// librdkafka's cached high watermarks (a local lookup, no network call).
/// `next` maps a partition to the offset after the last message read.
/// A partition with a backlog is not idle, however long it has been since
/// its last message was processed.
pub fn backlogged_partitions(
    consumer: &StreamConsumer,
    topic: &str,
    next: &std::collections::HashMap<i32, i64>,
) -> Vec<i32> {
    let Ok(ctopic) = std::ffi::CString::new(topic) else {
        return Vec::new();
    };
    let ptr = consumer.client().native_ptr();
    next.iter()
        .filter(|(&p, &n)| {
            let (mut low, mut high) = (-1i64, -1i64);
            // SAFETY: `ptr` is the live client handle of `consumer`, which
            // outlives this call; the function only reads librdkafka's cached
            // watermarks into the two out-parameters.
            let err = unsafe {
                rdkafka::bindings::rd_kafka_get_watermark_offsets(
                    ptr,
                    ctopic.as_ptr(),
                    p,
                    &mut low,
                    &mut high,
                )
            };
            err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high > n
        })
        .map(|(&p, _)| p)
        .collect()
}

/// True when partitions are assigned and none has unread messages: each
/// one's position (the offset after the last message read, else its
/// committed offset) has reached the broker's high watermark. Makes network
/// calls: call it from a blocking context, and only when the job looks idle.
pub fn caught_up(
    consumer: &StreamConsumer,
    topic: &str,
    next: &std::collections::HashMap<i32, i64>,
) -> bool {
    let assigned = assigned_partitions(consumer, topic);
    if assigned.is_empty() {
        return false;
    }
    let committed = consumer.committed(Duration::from_secs(5)).ok();
    assigned.iter().all(|&p| {
        let Ok((_, high)) = consumer.fetch_watermarks(topic, p, Duration::from_secs(5)) else {
            return false;
        };
        let pos = next.get(&p).copied().or_else(|| {
            committed
                .as_ref()
                .and_then(|c| match c.find_partition(topic, p).map(|e| e.offset()) {
                    Some(rdkafka::Offset::Offset(o)) => Some(o),
                    _ => None,
                })
        });
        // Nothing read and nothing committed: caught up only if the partition is empty.
        pos.map_or(high <= 0, |pos| pos >= high)
    })
}

/// Partitions of `topic` currently assigned to this consumer.
pub fn assigned_partitions(consumer: &StreamConsumer, topic: &str) -> Vec<i32> {
    consumer
        .assignment()
        .map(|tpl| {
            tpl.elements()
                .iter()
                .filter(|e| e.topic() == topic)
                .map(|e| e.partition())
                .collect()
        })
        .unwrap_or_default()
}

/// Reads events from Parquet files into one events batch sorted by event
/// time (a backfill replays history in time order, as it happened), plus the
/// rows that could not be used. Offsets are row numbers across the files.
pub fn read_parquet_events(
    cfg: &PipelineConfig,
    paths: &[impl AsRef<Path>],
) -> Result<(RecordBatch, Vec<DeadLetter>)> {
    let d = &cfg.decode;
    let schema = events_schema(&d.value_fields);
    let mut parts = Vec::new();
    let mut dead = Vec::new();
    let mut row_base = 0i64;
    for path in paths {
        let path = path.as_ref();
        let file = std::fs::File::open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)?
            .with_batch_size(65_536)
            .build()?;
        for batch in reader {
            let batch = batch?;
            let (events, mut bad) = typed_events(cfg, &batch, row_base, path)?;
            row_base += batch.num_rows() as i64;
            parts.push(events);
            dead.append(&mut bad);
        }
    }
    let all = concat_batches(&schema, &parts)?;
    let order = sort_to_indices(all.column(1), None, None)?;
    Ok((take_record_batch(&all, &order)?, dead))
}

fn typed_events(
    cfg: &PipelineConfig,
    batch: &RecordBatch,
    row_base: i64,
    path: &Path,
) -> Result<(RecordBatch, Vec<DeadLetter>)> {
    let d = &cfg.decode;
    let col = |name: &str| -> Result<ArrayRef> {
        batch.column_by_name(name).cloned().ok_or_else(|| {
            Error::config(
                path,
                name,
                format!("column `{name}` is missing from the Parquet file"),
            )
        })
    };
    let key = cast(&col(&d.key_field)?, &DataType::Utf8)?;
    let key = key.as_string::<i32>();
    let ts = time_column(&col(&d.time_field)?, d.time_format)?;
    let values: Vec<ArrayRef> = d
        .value_fields
        .iter()
        .map(|f| Ok(cast(&col(f)?, &DataType::Float64)?))
        .collect::<Result<_>>()?;
    let values: Vec<_> = values
        .iter()
        .map(|v| v.as_primitive::<Float64Type>())
        .collect();
    let mut out = EventsBuilder::new(events_schema(&d.value_fields), batch.num_rows());
    let mut dead = Vec::new();
    let mut row = vec![0.0; values.len()];
    for i in 0..batch.num_rows() {
        let offset = row_base + i as i64;
        let reason = if key.is_null(i) {
            Some(format!("missing field `{}`", d.key_field))
        } else if let Err(e) = &ts[i] {
            Some(format!(
                "unparsable timestamp in field `{}`: {e}",
                d.time_field
            ))
        } else {
            let mut r = None;
            for (j, v) in values.iter().enumerate() {
                if v.is_null(i) {
                    r = Some(format!("missing field `{}`", d.value_fields[j]));
                    break;
                }
                row[j] = v.value(i);
                if !row[j].is_finite() {
                    r = Some(format!(
                        "non-finite value {} in field `{}`",
                        row[j], d.value_fields[j]
                    ));
                    break;
                }
            }
            r
        };
        match (reason, &ts[i]) {
            (None, Ok(t)) => out.push(key.value(i), *t, 0, offset, &row),
            (reason, _) => dead.push(DeadLetter {
                reason: reason.unwrap_or_default(),
                partition: 0,
                offset,
                payload: format!("{}:row {offset}", path.display()).into_bytes(),
            }),
        }
    }
    Ok((out.finish(), dead))
}

/// Event times of a Parquet column in ms; per-row errors kept for dead letters.
fn time_column(a: &ArrayRef, fmt: TimeFormat) -> Result<Vec<std::result::Result<i64, String>>> {
    let n = a.len();
    let nulls = |i: usize| a.is_null(i);
    Ok(match a.data_type() {
        DataType::Timestamp(unit, _) => {
            let v = cast(a, &DataType::Int64)?;
            let v = v.as_primitive::<Int64Type>();
            let div = match unit {
                TimeUnit::Second => -1000,
                TimeUnit::Millisecond => 1,
                TimeUnit::Microsecond => 1000,
                TimeUnit::Nanosecond => 1_000_000,
            };
            (0..n)
                .map(|i| {
                    if nulls(i) {
                        Err("null".to_string())
                    } else if div < 0 {
                        Ok(v.value(i) * 1000)
                    } else {
                        Ok(v.value(i).div_euclid(div))
                    }
                })
                .collect()
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let v = cast(a, &DataType::Utf8)?;
            let v = v.as_string::<i32>();
            (0..n)
                .map(|i| {
                    if nulls(i) {
                        Err("null".to_string())
                    } else {
                        parse_time(&RawTime::Text(v.value(i).to_string()), fmt)
                    }
                })
                .collect()
        }
        _ => {
            let v = cast(a, &DataType::Float64)?;
            let v = v.as_primitive::<Float64Type>();
            (0..n)
                .map(|i| {
                    if nulls(i) {
                        Err("null".to_string())
                    } else {
                        parse_time(&RawTime::Number(v.value(i)), fmt)
                    }
                })
                .collect()
        }
    })
}
