//! Kafka source: a consumer that only moves bytes.
//!
//! Assignment (see [`Assignment`]): the consumer's context records which
//! partitions it owns and since which rebalance generation. On revocation
//! it first asks the job to checkpoint (state and offsets of the partitions
//! still owned are committed together), then lets them go. Messages that a
//! batch gathered before a partition was (re)assigned are dropped: the owner
//! re-reads them from the committed offset, with the state that goes with it.
//!
//! A `StreamConsumer` with auto-commit on and `enable.auto.offset.store`
//! off. The job stores offsets itself from the `OffsetTracker`'s commit points
//! (rust-rdkafka's `at_least_once` pattern), so a committed offset never
//! passes an input whose forecast is not yet acknowledged. The consumer loop
//! only moves bytes: payloads are copied out and handed to the compute thread
//! in batches; it never decodes or computes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;

use crate::broker::{client_config, Connection};
use crate::config::PipelineConfig;
use crate::decode::RawMessage;
use crate::error::Result;

/// The job's consumer, with the context that tracks its assignment.
pub type Source = StreamConsumer<SourceContext>;

/// What a revocation asks of the job before the partitions go: checkpoint
/// now and return once it is committed; or, when the assignment was *lost*
/// (`true`: the session timed out, another member may own them already),
/// drop their uncommitted work without committing anything.
pub type OnRevoke = Box<dyn Fn(&[i32], bool) + Send + Sync>;

/// The partitions this consumer owns, each with the rebalance generation it
/// was assigned in. Shared by the consumer's context (writes), the consumer
/// loop (drops stale messages) and the sink (commits only owned partitions).
#[derive(Default)]
pub struct Assignment {
    generation: AtomicU64,
    owned: Mutex<BTreeMap<i32, u64>>,
    on_revoke: Mutex<Option<OnRevoke>>,
}

impl std::fmt::Debug for Assignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assignment")
            .field("owned", &self.owned())
            .finish()
    }
}

impl Assignment {
    /// The current generation (bumped by every assignment and revocation).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Owned partitions and the generation each was assigned in.
    pub fn owned(&self) -> BTreeMap<i32, u64> {
        self.owned.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Sets (or clears, at shutdown) what a revocation asks of the job.
    pub fn set_on_revoke(&self, f: Option<OnRevoke>) {
        if let Ok(mut g) = self.on_revoke.lock() {
            *g = f;
        }
    }

    fn assigned(&self, partitions: &[i32]) {
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if let Ok(mut o) = self.owned.lock() {
            partitions.iter().for_each(|&p| {
                o.insert(p, g);
            });
        }
    }

    fn revoked(&self, partitions: &[i32], lost: bool) {
        if let Ok(f) = self.on_revoke.lock() {
            if let Some(f) = f.as_ref() {
                f(partitions, lost);
            }
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut o) = self.owned.lock() {
            partitions.iter().for_each(|p| {
                o.remove(p);
            });
        }
    }
}

/// The consumer's context: keeps [`Assignment`] in step with rebalances.
pub struct SourceContext {
    topic: String,
    assignment: Arc<Assignment>,
}

impl ClientContext for SourceContext {
    /// librdkafka's global errors (all brokers down, ...), once per 10 s:
    /// it retries on its own, and the job reports what matters (commits,
    /// deliveries) where it happens.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        static GLOBAL: crate::telemetry::Throttle =
            crate::telemetry::Throttle::new(Duration::from_secs(10));
        if let Some(suppressed) = GLOBAL.pass() {
            tracing::warn!(%error, reason, suppressed, "Kafka client error; librdkafka retries");
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = partitions_of(tpl, &self.topic);
            let lost = consumer.assignment_lost();
            if lost {
                tracing::warn!(partitions = ?parts, "assignment lost (the group session expired): their work since the last checkpoint is dropped and redone from it");
            } else {
                tracing::info!(partitions = ?parts, "partitions revoked: checkpointing them before they go");
            }
            self.assignment.revoked(&parts, lost);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = partitions_of(tpl, &self.topic);
            tracing::info!(partitions = ?parts, "partitions assigned");
            self.assignment.assigned(&parts);
        }
    }
}

fn partitions_of(tpl: &rdkafka::TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition())
        .collect()
}

/// The consumer's settings (`source.librdkafka` overrides them).
pub fn consumer_config(cfg: &PipelineConfig) -> ClientConfig {
    let group = cfg.group_id();
    // With durable state only checkpoints commit (state and offsets
    // together); without it librdkafka commits the stored commit points.
    let auto_commit = if cfg.state.enabled { "false" } else { "true" };
    let defaults = [
        ("group.id", group.as_str()),
        // A rebalance moves only the partitions that must move.
        ("partition.assignment.strategy", "cooperative-sticky"),
        ("isolation.level", "read_committed"),
        ("enable.auto.commit", auto_commit),
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
    let mut c = client_config(&Connection::of(cfg), &defaults, &BTreeMap::new());
    if cfg.state.enabled && cfg.state.static_membership {
        // Static membership: a restarted instance (same name) takes its
        // partitions back at once, without a rebalance and without waiting
        // for the old member's session to time out. An instance that stops
        // for good hands its partitions on after `session.timeout.ms`.
        c.set("group.instance.id", format!("{group}-{}", cfg.instance()));
    }
    for (k, v) in &cfg.source.librdkafka {
        c.set(k, v);
    }
    c
}

pub fn create_consumer(cfg: &PipelineConfig) -> Result<(Source, Arc<Assignment>)> {
    let assignment = Arc::new(Assignment::default());
    let ctx = SourceContext {
        topic: cfg.source.topic.clone(),
        assignment: assignment.clone(),
    };
    let consumer: Source = consumer_config(cfg).create_with_context(ctx)?;
    consumer.subscribe(&[&cfg.source.topic])?;
    Ok((consumer, assignment))
}

/// Waits for the next message, then gathers more until `max` or `wait` has
/// passed. Returns an empty batch if nothing arrives within `idle`.
/// Messages of a partition that was revoked, or assigned again, after they
/// were received are dropped (see the module docs).
pub async fn next_batch(
    consumer: &Source,
    assignment: &Assignment,
    max: usize,
    wait: Duration,
    idle: Duration,
) -> Result<Vec<RawMessage>> {
    let mut out = Vec::new();
    // The generation each message was received in, when it changed mid-batch.
    let start = assignment.generation();
    let mut received_in: Vec<u64> = Vec::new();
    // One message stream for the whole batch, and a timer only when the
    // queue is empty: `recv` per message registered a waker and a
    // `timeout_at` armed a timer (a clock read) for every message, ~20% of
    // the consumer loop's time at 100k keys (BENCHMARKS.md, issue 12).
    let mut stream = consumer.stream();
    let first = match tokio::time::timeout(idle, stream.next()).await {
        Err(_) => return Ok(out),
        Ok(Some(m)) => m?,
        Ok(None) => return Ok(out),
    };
    out.push(raw(&first));
    received_in.push(assignment.generation());
    let deadline = tokio::time::Instant::now() + wait;
    while out.len() < max {
        let next = match stream.next().now_or_never() {
            Some(m) => Ok(m),
            None => tokio::time::timeout_at(deadline, stream.next()).await,
        };
        match next {
            Err(_) | Ok(None) => break,
            Ok(Some(Ok(m))) => {
                out.push(raw(&m));
                received_in.push(assignment.generation());
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "consumer error");
                break;
            }
        }
    }
    if assignment.generation() != start || received_in.last() != Some(&start) {
        let owned = assignment.owned();
        let before = out.len();
        let mut gens = received_in.into_iter();
        out.retain(|m| {
            let got = gens.next().unwrap_or(0);
            owned.get(&m.partition).is_some_and(|&since| since <= got)
        });
        if out.len() < before {
            tracing::info!(
                dropped = before - out.len(),
                "dropped messages read before a rebalance; their new owner reads them again"
            );
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
pub fn backlogged_partitions(consumer: &Source, topic: &str, next: &HashMap<i32, i64>) -> Vec<i32> {
    next.iter()
        .filter(|(&p, &n)| cached_high_watermark(consumer, topic, p).is_some_and(|high| high > n))
        .map(|(&p, _)| p)
        .collect()
}

/// The high watermark of a partition from librdkafka's cache (a local
/// lookup, no network call); None until the client has one.
pub fn cached_high_watermark(consumer: &Source, topic: &str, partition: i32) -> Option<i64> {
    let ctopic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the pointer is the live client handle of `consumer`, which
    // outlives this call; the function only reads librdkafka's cached
    // watermarks into the two out-parameters.
    #[allow(unsafe_code)]
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            ctopic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

/// True when partitions are assigned and no partition of the topic has
/// unread messages: each one's position (for ours the offset after the last
/// message read; else the group's committed offset) has reached the
/// broker's high watermark. Makes network
/// calls: call it from a blocking context, and only when the job looks idle.
pub fn caught_up(consumer: &Source, topic: &str, next: &HashMap<i32, i64>) -> bool {
    let assigned = assigned_partitions(consumer, topic);
    if assigned.is_empty() {
        return false;
    }
    // Every partition of the topic, not only ours: one still held by
    // another member (e.g. a killed predecessor whose session has not
    // expired) is caught up only once the group has committed its end.
    let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return false;
    };
    let all: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for &p in &all {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(5)).ok();
    all.iter().all(|&p| {
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

/// The group's committed offsets of every input partition (those with
/// none are left out). Blocking.
pub fn committed_offsets(cfg: &PipelineConfig) -> Result<BTreeMap<i32, i64>> {
    let topic = &cfg.source.topic;
    let kafka = Connection::of(cfg);
    let parts = crate::broker::partition_count(&kafka, topic)?;
    let group = cfg.group_id();
    let c: BaseConsumer = client_config(
        &kafka,
        &[
            ("group.id", group.as_str()),
            ("enable.auto.commit", "false"),
        ],
        &cfg.source.librdkafka,
    )
    .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(30))?;
    Ok(got
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// Partitions of `topic` currently assigned to this consumer.
pub fn assigned_partitions(consumer: &Source, topic: &str) -> Vec<i32> {
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
