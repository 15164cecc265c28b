//! Helpers: broker address, random topics, NAB data, producing and reading.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub fn brokers() -> String {
    std::env::var("STREAMCAST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn rand_suffix() -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("{n:016x}")
}

/// The shared data directory; panics with where it looked when absent.
pub fn data_dir() -> PathBuf {
    let candidates: Vec<PathBuf> = std::env::var("STREAMCAST_DATA")
        .map(|d| vec![PathBuf::from(d)])
        .unwrap_or_default()
        .into_iter()
        .chain([Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")])
        .collect();
    for c in &candidates {
        if c.join("nab").is_dir() {
            return c.clone();
        }
    }
    panic!(
        "test data not found: looked in {:?} (set STREAMCAST_DATA to the folder holding nab/ and m4/)",
        candidates
    );
}

/// One event of a NAB file.
#[derive(Debug, Clone)]
pub struct NabEvent {
    pub key: String,
    pub ts_text: String,
    pub ts_ms: i64,
    pub value: f64,
}

/// Reads every NAB CSV in a folder, one key per file, merged in time order
/// (as a live stream would deliver them).
pub fn nab_events(dir: &Path) -> Vec<NabEvent> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    let mut all = Vec::new();
    for f in files {
        let key = f.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.lines().skip(1) {
            let Some((ts, v)) = line.split_once(',') else {
                continue;
            };
            let ts_ms = chrono::NaiveDateTime::parse_from_str(ts.trim(), "%Y-%m-%d %H:%M:%S")
                .unwrap_or_else(|e| panic!("{}: bad time {ts:?}: {e}", f.display()))
                .and_utc()
                .timestamp_millis();
            all.push(NabEvent {
                key: key.clone(),
                ts_text: ts.trim().to_string(),
                ts_ms,
                value: v.trim().parse().unwrap(),
            });
        }
    }
    all.sort_by(|a, b| a.ts_ms.cmp(&b.ts_ms).then_with(|| a.key.cmp(&b.key)));
    all
}

pub fn event_json(e: &NabEvent) -> String {
    serde_json::json!({"key": e.key, "ts": e.ts_text, "value": e.value}).to_string()
}

pub fn produce(topic: &str, records: Vec<(String, String)>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = records.len() as u64;
    let sent = rt
        .block_on(streamcast::broker::produce(&brokers(), topic, records))
        .expect("producing test events");
    assert_eq!(sent, n);
}

pub fn create_topics(topics: &[(&str, i32)]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(streamcast::broker::create_topics(&brokers(), topics, 5))
        .expect("creating topics (is the broker up? scripts/kafka up)");
}

/// Reads a topic from the beginning until `done(records)` holds and nothing
/// new arrived for `quiet`, or `limit` passes. Returns (key, payload) pairs.
pub fn read_topic(
    topic: &str,
    quiet: Duration,
    limit: Duration,
    mut done: impl FnMut(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let text = |r: &[(String, Vec<u8>)]| -> Vec<(String, String)> {
        r.iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).to_string()))
            .collect()
    };
    text(&read_topic_bytes(topic, quiet, limit, |r| done(&text(r))))
}

/// A consumer of its own group assigned every partition of `topic` from
/// the beginning, and those partitions.
fn reader_from_beginning(topic: &str) -> (BaseConsumer, Vec<i32>) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("it-reader-{}", rand_suffix()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    (consumer, partitions)
}

/// Reads a topic that nothing writes to any more, from the beginning to
/// the high watermark of every partition (or until `limit`): unlike a
/// quiet period, a slow broker on a loaded machine cannot end it early.
pub fn read_topic_to_end(topic: &str, limit: Duration) -> Vec<(String, String)> {
    let (consumer, partitions) = reader_from_beginning(topic);
    let high: Vec<(i32, i64)> = partitions
        .into_iter()
        .map(|p| {
            let (_, h) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (p, h)
        })
        .collect();
    let start = Instant::now();
    let mut out = Vec::new();
    let at_end = |c: &BaseConsumer| {
        let pos = c.position().unwrap();
        high.iter().all(|&(p, h)| {
            h == 0
                || matches!(pos.find_partition(topic, p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= h)
        })
    };
    while start.elapsed() < limit && !at_end(&consumer) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let k = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
                let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
                out.push((k, v));
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// [`read_topic`] with the payloads as bytes (binary formats such as Avro).
pub fn read_topic_bytes(
    topic: &str,
    quiet: Duration,
    limit: Duration,
    mut done: impl FnMut(&[(String, Vec<u8>)]) -> bool,
) -> Vec<(String, Vec<u8>)> {
    let (consumer, _) = reader_from_beginning(topic);
    let start = Instant::now();
    let mut last_new = Instant::now();
    let mut out = Vec::new();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let k = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
                out.push((k, m.payload().unwrap_or_default().to_vec()));
                last_new = Instant::now();
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
        if last_new.elapsed() >= quiet && done(&out) {
            return out;
        }
        if start.elapsed() >= limit {
            return out;
        }
    }
}

/// Writes a pipeline file for a test and returns its path.
pub fn pipeline_file(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, body).unwrap();
    p
}

/// A pipeline file for a job reading `topic` (with `partitions`) in its own
/// group, hourly windows, partitions idle after 1 s, publishing to
/// `<name>-out` / `dlq`; `extra` is more TOML merged in.
pub fn job_pipeline(
    dir: &Path,
    name: &str,
    topic: &str,
    partitions: i32,
    dlq: &str,
    extra: &str,
) -> PathBuf {
    let base = streamcast::testkit::pipeline_toml(&format!(
        r#"
name = "{name}"
[source]
topic = "{topic}"
group_id = "{name}"
partitions = {partitions}
[window]
idle_partition_timeout = "1s"
[sink]
topic = "{name}-out"
dead_letter_topic = "{dlq}"
partitions = {partitions}
"#
    ));
    let merged = streamcast::testkit::merge_toml(&base, extra);
    pipeline_file(dir, name, &merged)
}

pub fn streamcast_bin() -> &'static str {
    env!("CARGO_BIN_EXE_streamcast")
}

/// Counts of a multiset, for readable assertion messages.
pub fn histogram<T: Ord + Clone>(items: impl IntoIterator<Item = T>) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}
