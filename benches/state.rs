//! Durable state: what a checkpoint costs, what the changelog holds per
//! key, how long a restore takes, and how long a killed job takes to
//! forecast again. Needs the local broker.
//!
//! ```sh
//! scripts/bench_state            # setup, broker, release build, then this
//! STATE_KEYS=100000 STATE_REPS=3 cargo bench --bench state
//! ```
//!
//! 1. In process (`pipeline::Core`, LSTM hidden 32, horizon 6, the e2e
//!    model): `STATE_KEYS` keys (default 100,000) on 4 partitions get one
//!    event a minute for 28 minutes (5-minute windows: 5 closed each), each
//!    minute checkpointed. Then one more minute of events (every key's
//!    panes change, no window closes) and one that closes a window for
//!    every key: the
//!    checkpoint after each is timed (take changes + encode) and its bytes
//!    counted, by record kind (`w/` window, `m/` model, `p` partition).
//! 2. Those records are produced to a fresh compacted changelog topic and
//!    every partition restored (`state::changelog::restore`, then
//!    `Core::restore`): seconds per 100,000 keys.
//! 3. SIGKILL -> first new forecast: `streamcast run` (release) on a topic
//!    of the same shape, killed with SIGKILL once it has forecast, then a
//!    new minute of events closes a window of every key and the job is
//!    started again: seconds from the restart to the first forecast of the
//!    new window on the output topic (process start, libtorch, group join,
//!    restore, processing).
//!
//! 4. The archive journal (what following commit points costs the archive
//!    thread): `STATE_KEYS` window rows a checkpoint, 20 checkpoints, into
//!    one file that never rolls, written plain and with the journal (IPC
//!    stream + a marks line per checkpoint): seconds and journal bytes.
//!    `STATE_ONLY_ARCHIVE=1` runs only this part.
//!
//! Repeated `STATE_REPS` times (default 3): median and range.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use streamcast::decode::RawMessage;
use streamcast::offsets::OffsetTracker;
use streamcast::pipeline::Core;
use streamcast::state::{changelog, Checkpoint};

const PARTITIONS: i32 = 4;
/// 2026-01-05T00:00:00Z.
const T0: i64 = 1_767_571_200_000;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn brokers() -> String {
    env_or("STREAMCAST_BROKERS", "127.0.0.1:9092")
}

fn suffix() -> String {
    use rand::Rng;
    format!("{:08x}", rand::rng().random::<u32>())
}

fn config(name: &str, input: &str) -> streamcast::PipelineConfig {
    streamcast::PipelineConfig::parse(
        &config_text(name, input),
        std::path::Path::new("bench.toml"),
    )
    .unwrap()
}

fn config_text(name: &str, input: &str) -> String {
    format!(
        r#"name = "{name}"
[source]
brokers = "{}"
topic = "{input}"
partitions = {PARTITIONS}
[window]
size = "5m"
idle_partition_timeout = "1h"
[model]
cell = "lstm"
hidden = 32
horizon = 6
[sink]
topic = "{name}-out"
dead_letter_topic = "{name}-dlq"
partitions = {PARTITIONS}
"#,
        brokers()
    )
}

fn payload(k: usize, minute: i64) -> String {
    let ts = streamcast::time::rfc3339_ms(T0 + minute * 60_000 + 1_000);
    let v = 50.0 + (k % 97) as f64 + 10.0 * ((minute as f64) / 60.0 + k as f64).sin();
    format!("{{\"key\":\"k{k:06}\",\"ts\":\"{ts}\",\"value\":{v:.3}}}")
}

/// The minute's events of every key, as the consumer hands them over.
fn minute(keys: usize, m: i64, next: &mut [i64]) -> Vec<RawMessage> {
    (0..keys)
        .map(|k| {
            let p = (k % PARTITIONS as usize) as i32;
            let o = next[p as usize];
            next[p as usize] += 1;
            RawMessage {
                payload: Some(payload(k, m).into_bytes()),
                partition: p,
                offset: o,
                timestamp_ms: None,
            }
        })
        .collect()
}

#[derive(Default)]
struct Sizes {
    secs: f64,
    records: usize,
    bytes_w: usize,
    bytes_m: usize,
    bytes_l: usize,
    n_w: usize,
    n_m: usize,
    n_l: usize,
    /// Seconds to build the model records of every key: per-key
    /// `ModelKeyState`s encoded in format 1 (the path before format 2),
    /// and `export_encoded` (format 2, from the bulk buffers); and the
    /// live-score records (`l/`) alone.
    m_old: f64,
    m_new: f64,
    l_secs: f64,
    /// Folding every record written into the latest state, in memory:
    /// model records in format 1, in format 2.
    fold: (f64, f64),
}

fn sizes(cp: &Checkpoint, secs: f64) -> Sizes {
    let mut s = Sizes {
        secs,
        records: cp.records.len(),
        ..Default::default()
    };
    for r in &cp.records {
        let b = r.key.len() + r.value.as_ref().map_or(0, |v| v.len());
        if r.key.starts_with(b"w/") {
            s.bytes_w += b;
            s.n_w += 1;
        } else if r.key.starts_with(b"m/") {
            s.bytes_m += b;
            s.n_m += 1;
        } else if r.key.starts_with(b"l/") {
            s.bytes_l += b;
            s.n_l += 1;
        }
    }
    s
}

/// Times the parts of a closing checkpoint on every live key (see
/// [`Sizes`]): model records both ways, live-score records.
fn breakdown(core: &Core, s: &mut Sizes) {
    use streamcast::state;
    let store = core.model().store();
    let mut keys: Vec<Arc<str>> = store.keys().cloned().collect();
    keys.sort_unstable();
    let version = core.model().version();
    let t = Instant::now();
    let old: usize = store
        .export(&keys, version)
        .unwrap()
        .iter()
        .map(|(_, st)| state::encode(st).unwrap().len())
        .sum();
    s.m_old = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let new: usize = store
        .export_encoded(&keys, version)
        .unwrap()
        .iter()
        .map(|(_, v)| v.len())
        .sum();
    s.m_new = t.elapsed().as_secs_f64();
    eprintln!("model record bytes of all keys: format 1 {old}, format 2 {new}");
    if let Some(sc) = core.scorer() {
        let sc = sc.lock().unwrap();
        let t = Instant::now();
        let n: usize = keys
            .iter()
            .filter_map(|k| sc.export(k))
            .map(|l| {
                let l = state::LiveKeyState {
                    score: Some(l),
                    choice: None,
                };
                state::encode_live(&l).unwrap().len()
            })
            .sum();
        s.l_secs = t.elapsed().as_secs_f64();
        let v1: usize = keys
            .iter()
            .filter_map(|k| sc.export(k))
            .map(|l| {
                let l = state::LiveKeyState {
                    score: Some(l),
                    choice: None,
                };
                state::encode(&l).unwrap().len()
            })
            .sum();
        eprintln!("live record bytes of all keys: format 1 {v1}, format 2 {n}");
    }
}

fn median_range(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return "-".into();
    }
    format!("{:.3} ({:.3}–{:.3})", s[s.len() / 2], s[0], s[s.len() - 1])
}

fn in_process(keys: usize) -> (Sizes, Sizes, f64, usize) {
    let cfg = config(&format!("bench-state-{}", suffix()), "unused");
    let mut core = Core::new(&cfg, Arc::new(Mutex::new(OffsetTracker::new()))).unwrap();
    core.enable_state_tracking();
    let parts: Vec<i32> = (0..PARTITIONS).collect();
    core.assign(&parts, 0);
    let mut next = vec![0i64; PARTITIONS as usize];
    let epochs: Vec<(i32, u64)> = parts.iter().map(|&p| (p, 1)).collect();
    let mut all = Vec::new();
    for m in 0..28 {
        core.on_messages(&minute(keys, m, &mut next), 0).unwrap();
        all.extend(core.checkpoint(epochs.clone()).unwrap().records);
    }
    // Panes change, nothing closes ([25, 30) closes at 30:00).
    core.on_messages(&minute(keys, 28, &mut next), 0).unwrap();
    let t = Instant::now();
    let cp = core.checkpoint(epochs.clone()).unwrap();
    let panes_only = sizes(&cp, t.elapsed().as_secs_f64());
    all.extend(cp.records);
    // Minute 30 closes [25, 30) for every key.
    core.on_messages(&minute(keys, 30, &mut next), 0).unwrap();
    let t = Instant::now();
    let cp = core.checkpoint(epochs.clone()).unwrap();
    let mut closing = sizes(&cp, t.elapsed().as_secs_f64());
    if env_or("STATE_SKIP_BREAKDOWN", "").is_empty() {
        breakdown(&core, &mut closing);
    }
    all.extend(cp.records);
    // Restore through the broker.
    let topic = cfg.state_topic();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        streamcast::broker::create_topics(
            &brokers(),
            &[(cfg.source.topic.as_str(), PARTITIONS)],
            5,
        )
        .await
        .unwrap();
        changelog::ensure_topic(&cfg).await.unwrap();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .unwrap();
        for chunk in all.chunks(50_000) {
            let sends = chunk.iter().map(|r| {
                let mut rec = FutureRecord::<[u8], [u8]>::to(&topic)
                    .key(&r.key)
                    .partition(r.partition);
                if let Some(v) = &r.value {
                    rec = rec.payload(v);
                }
                producer.send(rec, Duration::from_secs(30))
            });
            for s in futures::future::join_all(sends).await {
                s.unwrap();
            }
        }
    });
    let mut fresh = Core::new(&cfg, Arc::new(Mutex::new(OffsetTracker::new()))).unwrap();
    let t = Instant::now();
    let mut restored = 0;
    let mut core_secs = 0.0;
    for p in 0..PARTITIONS {
        let r = changelog::restore(&cfg, p).unwrap();
        restored += r.windows.len();
        let t = Instant::now();
        fresh.restore(&r, 0).unwrap();
        core_secs += t.elapsed().as_secs_f64();
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!("restore: {secs:.2} s, of which Core::restore {core_secs:.2} s");
    if env_or("STATE_SKIP_BREAKDOWN", "").is_empty() {
        closing.fold = fold_times(&all);
    }
    (panes_only, closing, secs, restored)
}

/// Seconds to fold every record written (in memory, no broker) into the
/// partitions' latest state, as written (model records in format 2) and
/// with the model records transcoded to format 1 (as before).
fn fold_times(all: &[streamcast::state::StateRecord]) -> (f64, f64) {
    use streamcast::state::{self, RestoredPartition};
    /// Key, value, partition.
    type Rec = (Vec<u8>, Option<Vec<u8>>, i32);
    let fold = |recs: &[Rec]| {
        let t = Instant::now();
        for p in 0..PARTITIONS {
            let r = RestoredPartition::from_records(
                p,
                recs.iter()
                    .filter(|r| r.2 == p)
                    .map(|r| (r.0.as_slice(), r.1.as_deref())),
            )
            .unwrap();
            std::hint::black_box(r);
        }
        t.elapsed().as_secs_f64()
    };
    let v2: Vec<_> = all
        .iter()
        .map(|r| (r.key.clone(), r.value.clone(), r.partition))
        .collect();
    let new = fold(&v2);
    drop(v2);
    let v1: Vec<_> = all
        .iter()
        .map(|r| {
            let v = match &r.value {
                Some(v) if r.key.starts_with(b"m/") => {
                    Some(state::encode(&state::decode_model(v).unwrap()).unwrap())
                }
                v => v.clone(),
            };
            (r.key.clone(), v, r.partition)
        })
        .collect();
    let old = fold(&v1);
    (old, new)
}

/// Changelog records the in-process part writes (uncompacted): per key one
/// window record per checkpointed minute (30), one model record per
/// closed window (6), plus partition clocks.
fn n_records(keys: usize) -> usize {
    keys * 36
}

fn streamcast_bin() -> std::path::PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("release/streamcast")
}

/// Seconds from restarting a SIGKILLed job to its first forecast of a
/// window that closed while it was down.
fn kill_to_forecast(keys: usize) -> f64 {
    let s = suffix();
    let input = format!("bench-state-in-{s}");
    let name = format!("bench-state-{s}");
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("p.toml");
    let text = format!(
        "{}\n[state]\ncommit_interval = \"1s\"\n",
        config_text(&name, &input)
    );
    std::fs::write(&pipeline, text).unwrap();
    let produce = |from: i64, to: i64| {
        let recs: Vec<(String, String)> = (from..to)
            .flat_map(|m| (0..keys).map(move |k| (format!("k{k:06}"), payload(k, m))))
            .collect();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            streamcast::broker::create_topics(&brokers(), &[(input.as_str(), PARTITIONS)], 5)
                .await
                .unwrap();
            streamcast::broker::produce(&brokers(), &input, recs)
                .await
                .unwrap();
        });
    };
    produce(0, 31);
    let spawn = || {
        Command::new(streamcast_bin())
            .arg("run")
            .arg(&pipeline)
            .args(["--instance", "bench"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let out = format!("{name}-out");
    let mut job = spawn();
    // Forecasting: windows up to minute 30 closed (6 per key) and committed.
    wait_for_window(&out, T0 + 30 * 60_000, Duration::from_secs(600));
    std::thread::sleep(Duration::from_secs(2)); // a checkpoint after them
    job.kill().unwrap();
    let _ = job.wait();
    produce(35, 36); // closes [30, 35) of every key
    let t = Instant::now();
    let mut job = spawn();
    wait_for_window(&out, T0 + 35 * 60_000, Duration::from_secs(600));
    let secs = t.elapsed().as_secs_f64();
    job.kill().unwrap();
    let _ = job.wait();
    secs
}

/// Waits until `topic` holds a forecast whose window ends at `end_ms`.
fn wait_for_window(topic: &str, end_ms: i64, limit: Duration) {
    let needle = format!("\"window_end_ms\":{end_ms}");
    let start = Instant::now();
    while start.elapsed() < limit {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", format!("bench-reader-{}", suffix()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        if let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            let mut tpl = TopicPartitionList::new();
            for p in md
                .topics()
                .first()
                .map(|t| t.partitions())
                .unwrap_or_default()
            {
                let (_, high) = c
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                    .unwrap_or((0, 0));
                tpl.add_partition_offset(topic, p.id(), Offset::Offset((high - 2000).max(0)))
                    .unwrap();
            }
            if tpl.count() > 0 {
                c.assign(&tpl).unwrap();
                let until = Instant::now() + Duration::from_millis(300);
                while Instant::now() < until {
                    if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                        if m.payload()
                            .is_some_and(|p| String::from_utf8_lossy(p).contains(&needle))
                        {
                            return;
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no forecast for window end {end_ms} on {topic} within {limit:?}");
}

/// One repetition: checkpoint sizes (panes only, closing), restore seconds,
/// keys restored, SIGKILL -> forecast seconds.
type Rep = (Sizes, Sizes, f64, usize, f64);

/// Part 4: seconds to write 20 checkpoints of `keys` window rows into one
/// archive file (then seal it), plain and following commit points with the
/// journal; and the journal's bytes at its largest.
fn archive_cost(keys: usize) -> (f64, f64, u64) {
    use arrow::array::{
        BooleanArray, Float64Array, StringArray, TimestampMillisecondArray, UInt32Array,
    };
    use arrow::record_batch::RecordBatch;
    use streamcast::archive::{ArchiveWriter, CommitPoints};
    let schema = streamcast::schema::windows_schema(&["value".to_string()], &[]);
    let batch = |cp: i64| {
        let ts = |off: i64| {
            Arc::new(
                TimestampMillisecondArray::from(vec![cp * 300_000 + off; keys])
                    .with_timezone("UTC"),
            )
        };
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..keys).map(|k| format!("k{k:07}")),
                )),
                ts(0),
                ts(300_000),
                Arc::new(UInt32Array::from(vec![5u32; keys])),
                Arc::new(BooleanArray::from(vec![true; keys])),
                Arc::new(Float64Array::from_iter_values(
                    (0..keys).map(|k| k as f64 * 0.5 + cp as f64),
                )),
            ],
        )
        .unwrap()
    };
    let batches: Vec<RecordBatch> = (0..20).map(batch).collect();
    let cfg = streamcast::config::ArchiveConfig {
        enabled: true,
        dir: None,
        roll_rows: usize::MAX,
        roll_interval: Duration::from_secs(1 << 30),
        retention_age: Duration::from_secs(1 << 40),
        retention_bytes: u64::MAX,
    };
    let run = |journal: bool| -> (f64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let mut w =
            ArchiveWriter::new(dir.path().to_path_buf(), schema.clone(), cfg.clone()).unwrap();
        let points = CommitPoints::default();
        if journal {
            w.follow(points.clone(), &Default::default()).unwrap();
        }
        let t = Instant::now();
        let mut biggest = 0;
        for (i, b) in batches.iter().enumerate() {
            w.write(b).unwrap();
            if journal {
                w.mark(i as u64 + 1, &[(0, (i as i64 + 1) * keys as i64)], false)
                    .unwrap();
                biggest = dir_bytes(dir.path(), "journal");
            }
        }
        if journal {
            w.mark(99, &[(0, 1 << 40)], true).unwrap();
            points.store(99, std::sync::atomic::Ordering::SeqCst);
            w.publish().unwrap();
        } else {
            w.roll().unwrap();
        }
        (t.elapsed().as_secs_f64(), biggest)
    };
    let (plain, _) = run(false);
    let (journalled, bytes) = run(true);
    (plain, journalled, bytes)
}

/// Bytes of the files under `dir` with extension `ext`.
fn dir_bytes(dir: &std::path::Path, ext: &str) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == ext) {
                total += e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    total
}

fn archive_table(keys: usize, reps: usize) {
    let runs: Vec<(f64, f64, u64)> = (0..reps).map(|_| archive_cost(keys)).collect();
    let rows = 20.0 * keys as f64;
    let col = |f: &dyn Fn(&(f64, f64, u64)) -> f64| -> Vec<f64> { runs.iter().map(f).collect() };
    println!(
        "\n# archive writer: 20 checkpoints of {keys} window rows into one file; {reps} reps\n"
    );
    println!("| figure | median (range) |");
    println!("|---|---:|");
    println!(
        "| plain: M rows/s | {} |",
        median_range(&col(&|r| rows / r.0 / 1e6))
    );
    println!(
        "| with the journal: M rows/s | {} |",
        median_range(&col(&|r| rows / r.1 / 1e6))
    );
    println!(
        "| journal / plain time | {} |",
        median_range(&col(&|r| r.1 / r.0))
    );
    println!(
        "| journal bytes per row (before sealing) | {:.1} |",
        runs[0].2 as f64 / rows
    );
}

fn main() {
    let keys: usize = env_or("STATE_KEYS", "100000").parse().unwrap();
    let reps: usize = env_or("STATE_REPS", "3").parse().unwrap();
    tch::set_num_threads(1);
    if !env_or("STATE_ONLY_ARCHIVE", "").is_empty() {
        archive_table(keys, reps);
        return;
    }
    let mut rows: Vec<Rep> = Vec::new();
    for rep in 0..reps {
        let (a, b, restore, n) = in_process(keys);
        let kill = if env_or("STATE_SKIP_KILL", "").is_empty() {
            kill_to_forecast(keys)
        } else {
            f64::NAN
        };
        eprintln!(
            "rep {rep}: changelog records read by the restore: {}",
            n_records(keys)
        );
        eprintln!("rep {rep}: checkpoint {:.3}s/{:.3}s, restore {restore:.2}s ({n} keys), kill->forecast {kill:.1}s", a.secs, b.secs);
        rows.push((a, b, restore, n, kill));
    }
    let col = |f: &dyn Fn(&Rep) -> f64| -> Vec<f64> { rows.iter().map(f).collect() };
    let per_key = |bytes: usize, n: usize| bytes as f64 / n.max(1) as f64;
    println!("\n# state: {keys} keys, {PARTITIONS} partitions, LSTM hidden 32, horizon 6, 5-minute windows; {reps} reps\n");
    println!("| figure | median (range) |");
    println!("|---|---:|");
    println!(
        "| checkpoint, panes changed only (s) | {} |",
        median_range(&col(&|r| r.0.secs))
    );
    println!(
        "| records / bytes per key, panes only (`w/`) | {} / {:.0} |",
        rows[0].0.records,
        per_key(rows[0].0.bytes_w, rows[0].0.n_w)
    );
    println!(
        "| checkpoint, a window closed for every key (s) | {} |",
        median_range(&col(&|r| r.1.secs))
    );
    println!(
        "| bytes per key then: `w/` + `m/` | {:.0} + {:.0} |",
        per_key(rows[0].1.bytes_w, rows[0].1.n_w),
        per_key(rows[0].1.bytes_m, rows[0].1.n_m)
    );
    println!(
        "| `l/` (live scores) bytes per key then | {:.0} |",
        per_key(rows[0].1.bytes_l, rows[0].1.n_l)
    );
    println!(
        "| model records of every key, per-key structs + format 1 (s) | {} |",
        median_range(&col(&|r| r.1.m_old))
    );
    println!(
        "| model records of every key, bulk + format 2 (s) | {} |",
        median_range(&col(&|r| r.1.m_new))
    );
    println!(
        "| live-score records of every key (s) | {} |",
        median_range(&col(&|r| r.1.l_secs))
    );
    println!(
        "| restore's fold of every record, in memory, model records in format 1 (s) | {} |",
        median_range(&col(&|r| r.1.fold.0))
    );
    println!(
        "| the same, model records in format 2 (s) | {} |",
        median_range(&col(&|r| r.1.fold.1))
    );
    println!(
        "| restore, all partitions (s per 100k keys) | {} |",
        median_range(&col(&|r| r.2 * 100_000.0 / r.3.max(1) as f64))
    );
    println!(
        "| SIGKILL -> first forecast of a new window (s) | {} |",
        median_range(&col(&|r| r.4))
    );
    archive_table(keys, reps);
}
