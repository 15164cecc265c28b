//! The changelog topic: creating it, and reading a partition's state back.
//!
//! Writing is the sink's job (records go through the job's producer, so in
//! exactly-once mode they share the forecasts' transaction); this room only
//! owns the topic's shape and the restore.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::RestoredPartition;
use crate::broker::{client_config, create_topics_with, partition_count};
use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::telemetry;

/// Creates the changelog topic (compacted, one partition per input
/// partition) when it does not exist, and checks an existing one has
/// enough partitions. Call after the input topic exists.
pub async fn ensure_topic(cfg: &PipelineConfig) -> Result<()> {
    let brokers = crate::broker::Connection::of(cfg);
    let (b, input) = (brokers.clone(), cfg.source.topic.clone());
    let parts = tokio::task::spawn_blocking(move || partition_count(&b, &input))
        .await
        .map_err(|_| Error::Panicked("metadata"))??;
    let topic = cfg.state_topic();
    let configs: &[(&str, &str)] = &[
        ("cleanup.policy", "compact"),
        // Compact soon after a segment rolls: restore reads what is left.
        ("min.cleanable.dirty.ratio", "0.1"),
        ("segment.ms", "600000"),
    ];
    create_topics_with(
        &brokers,
        &[(topic.as_str(), parts, configs)],
        cfg.source.connect_attempts,
    )
    .await?;
    let t = topic.clone();
    let have = tokio::task::spawn_blocking(move || partition_count(&brokers, &t))
        .await
        .map_err(|_| Error::Panicked("metadata"))??;
    if have < parts {
        return Err(Error::State(format!(
            "the state topic {topic} has {have} partitions but the input {} has {parts}; \
             partition k of the input keeps its state in partition k of the state topic. \
             Add partitions to {topic} (kafka-topics --alter --partitions {parts})",
            cfg.source.topic
        )));
    }
    Ok(())
}

fn at_end(consumer: &BaseConsumer, topic: &str, partition: i32, high: i64) -> bool {
    let Ok(tpl) = consumer.position() else {
        return false;
    };
    tpl.find_partition(topic, partition)
        .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= high))
}

/// Reads one changelog partition from its beginning to its end (committed
/// records only) and folds it into the partition's latest state. Blocking:
/// call it on the compute thread, never on a tokio worker.
pub fn restore(cfg: &PipelineConfig, partition: i32) -> Result<RestoredPartition> {
    let t0 = Instant::now();
    let topic = cfg.state_topic();
    let consumer: BaseConsumer = client_config(
        &crate::broker::Connection::of(cfg),
        &[
            ("group.id", &format!("{}-restore", cfg.group_id())),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
            ("isolation.level", "read_committed"),
            ("auto.offset.reset", "earliest"),
        ],
        &cfg.source.librdkafka,
    )
    .create()?;
    let (low, high) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(30))?;
    if high <= low {
        return Ok(RestoredPartition {
            partition,
            ..Default::default()
        });
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, partition, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let deadline = Instant::now() + cfg.state.restore_timeout;
    let mut last_note = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let key = m.key().unwrap_or_default().to_vec();
                records.push((key, m.payload().map(|p| p.to_vec())));
                if m.offset() + 1 >= high {
                    break;
                }
                continue; // more to read: no need to ask for the position
            }
            Some(Err(e)) => {
                let retry = e.rdkafka_error_code().is_none_or(|c| {
                    c != RDKafkaErrorCode::TopicAuthorizationFailed
                        && crate::error::retryable_kafka_code(c)
                });
                if !retry {
                    return Err(e.into());
                }
                tracing::warn!(error = %e, partition, "restoring state: retrying");
            }
            None => {}
        }
        // Read committed: transaction markers and aborted records are never
        // handed out, so the end shows as the position reaching `high`.
        if at_end(&consumer, &topic, partition, high) {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::State(format!(
                "restoring partition {partition} of {topic} took longer than state.restore_timeout ({:?}); read {} records",
                cfg.state.restore_timeout,
                records.len()
            )));
        }
        if last_note.elapsed() > Duration::from_secs(5) {
            tracing::info!(
                partition,
                records = records.len(),
                of = high - low,
                "restoring state"
            );
            last_note = Instant::now();
        }
    }
    let r = RestoredPartition::from_records(
        partition,
        records.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
    )?;
    metrics::histogram!(telemetry::STATE_RESTORE_SECONDS).record(t0.elapsed().as_secs_f64());
    tracing::info!(
        partition,
        keys = r.windows.len().max(r.models.len()),
        records = r.records,
        bytes = r.bytes,
        ms = t0.elapsed().as_millis() as u64,
        "state restored"
    );
    Ok(r)
}
