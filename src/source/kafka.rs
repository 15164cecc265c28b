//! Kafka source: a consumer that only moves bytes.
//!
//! A `StreamConsumer` with auto-commit on and `enable.auto.offset.store`
//! off. The job stores offsets itself from the `OffsetTracker`'s commit points
//! (rust-rdkafka's `at_least_once` pattern), so a committed offset never
//! passes an input whose forecast is not yet acknowledged. The consumer loop
//! only moves bytes: payloads are copied out and handed to the compute thread
//! in batches; it never decodes or computes.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;

use crate::broker::client_config;
use crate::config::PipelineConfig;
use crate::decode::RawMessage;
use crate::error::Result;

/// The consumer's settings (`source.librdkafka` overrides them).
pub fn consumer_config(cfg: &PipelineConfig) -> ClientConfig {
    let group = cfg.group_id();
    let defaults = [
        ("group.id", group.as_str()),
        ("enable.auto.commit", "true"),
        ("auto.commit.interval.ms", "1000"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        // A restarted job rejoins quickly after a crash of the old member.
        ("session.timeout.ms", "10000"),
        ("heartbeat.interval.ms", "1000"),
        ("enable.partition.eof", "false"),
        // librdkafka >= 2.1 postpones a partition's next fetch by this
        // (default 1 s) once its local queue is full; a job that drains the
        // queue in big batches then waits instead of reading. 1 ms measured
        // 7x faster end to end (BENCHMARKS.md, end to end).
        ("fetch.queue.backoff.ms", "1"),
    ];
    client_config(&cfg.source.brokers, &defaults, &cfg.source.librdkafka)
}

pub fn create_consumer(cfg: &PipelineConfig) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = consumer_config(cfg).create()?;
    consumer.subscribe(&[&cfg.source.topic])?;
    Ok(consumer)
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
    next: &HashMap<i32, i64>,
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
            #[allow(unsafe_code)]
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
pub fn caught_up(consumer: &StreamConsumer, topic: &str, next: &HashMap<i32, i64>) -> bool {
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
