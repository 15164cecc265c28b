//! End to end through the real broker, side by side in one run: the bare
//! librdkafka consume rate (the limit), `kcat` when installed, `streamcast
//! run` as a user runs it, and the plain Python peer a user would write
//! instead (`scripts/bench_e2e_peer.py`).
//!
//! ```sh
//! scripts/bench_e2e          # setup, broker, release build, then this
//! ```
//!
//! For each workload a fresh topic (4 partitions) gets `E2E_EVENTS` JSON
//! events (default 2,880,000), one a minute per key, keyed by entity:
//! `{"key":"k000123","ts":"2026-01-05T00:01:00Z","value":..,"f1":..}`.
//! Workloads: 2,000 keys with hourly windows, and 100,000 keys with 5-minute
//! windows (one event a minute; hourly windows would close nothing in 30
//! events per key); 1 and 8 value fields. Every run reads the topic from the
//! beginning with a fresh consumer group; streamcast and the peer publish a
//! forecast (LSTM hidden 32, horizon 6) for every closed window.
//!
//! Figures per run: events/s from the first message read until every event
//! was read and every forecast owed acknowledged (bare consumers: to the
//! last message; kcat: its whole run, connecting included),
//! streamcast as a fraction of the bare rate and as a multiple of the peer,
//! close -> ack latency p50/p99, wall seconds from process start, CPU
//! seconds and peak RSS (GNU time). `E2E_REPS` repetitions (default 3) give
//! the median and range. `E2E_WORKLOADS` picks some (e.g. `2000x1,2000x8`),
//! `E2E_SKIP` skips runners (`peer,kcat,bare-default`); `E2E_OLD_DEFAULT=1`
//! adds a streamcast run with librdkafka's own `fetch.queue.backoff.ms`
//! (1 s), the default before streamcast set it; `E2E_DELIVERY=1` adds
//! streamcast without durable state, exactly once, and exactly once with a
//! 100 ms commit interval (close -> ack is then close -> commit: when a
//! `read_committed` reader can see the forecast).
//!
//! `E2E_PACED=100000` measures latency under a live load instead: the job
//! starts on an empty topic and 10,000 keys' events (`E2E_PACED_KEYS`)
//! arrive at that rate while it runs; it prints close -> ack p50/p99 per
//! repetition. `E2E_PACED_VARIANTS` compares jobs side by side, interleaved
//! within each repetition: `name:binary:toml` entries split by `;` (an
//! empty binary is this build's; the TOML, with `\n` for newlines, goes
//! after the `[sink]` table), e.g.
//! `old:/tmp/streamcast-main:;new::;linger1::[sink.librdkafka]\n"linger.ms" = "1"`.
//! `E2E_SHARDS=2,4` adds runners with `compute.shards` set to each
//! number (backlog workloads, interleaved with the default's one shard).
//! `E2E_EXTRA="name:toml;..."` adds runners of this build with more TOML
//! after the `[sink]` table (`\n` for newlines), e.g.
//! `nostretch:[state]\nbacklog_commit_interval = "1s"`.
//! `E2E_OLD_BIN=<path>` adds another `streamcast` binary (e.g. one built
//! from an older commit) as a runner of the backlog workloads, interleaved.
//! `E2E_LOG_DIR=<dir>` keeps each job's stderr there (with `RUST_LOG`).

// Bench code may unwrap: a failing unwrap is a failing run.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

const PARTITIONS: i32 = 4;
/// 2026-01-05T00:00:00Z.
const T0: i64 = 1_767_571_200_000;

#[derive(Debug, Clone, Copy)]
struct Workload {
    keys: usize,
    fields: usize,
    window_s: u64,
}

/// One runner's figures for one run (NaN: not measured for that runner).
#[derive(Debug, Clone)]
struct Figures {
    events_per_s: f64,
    wall_s: f64,
    cpu_s: f64,
    rss_mb: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Close -> taken by the sink (streamcast only).
    sink_p50_ms: f64,
    sink_p99_ms: f64,
    forecasts: u64,
}

impl Default for Figures {
    fn default() -> Self {
        Figures {
            events_per_s: f64::NAN,
            wall_s: f64::NAN,
            cpu_s: f64::NAN,
            rss_mb: f64::NAN,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            sink_p50_ms: f64::NAN,
            sink_p99_ms: f64::NAN,
            forecasts: 0,
        }
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn brokers() -> String {
    env_or("STREAMCAST_BROKERS", "127.0.0.1:9092")
}

/// Every suffix handed out: the topics named with them are deleted by
/// [`drop_topics`] once a workload is done.
static SUFFIXES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn suffix() -> String {
    use rand::Rng;
    let s = format!("{:08x}", rand::rng().random::<u32>());
    if let Ok(mut v) = SUFFIXES.lock() {
        v.push(s.clone());
    }
    s
}

/// Deletes the topics this bench created so far (input, outputs, dead
/// letters, changelogs: every `e2e-` topic named with one of its
/// suffixes): one workload's input alone is ~3M events, and repeated runs
/// filled the local broker's disk (29 GB) before this.
fn drop_topics() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let suffixes = SUFFIXES
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default();
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers());
    let Ok(meta_client) = cfg.create::<BaseConsumer>() else {
        return;
    };
    let Ok(meta) = meta_client.fetch_metadata(None, std::time::Duration::from_secs(10)) else {
        return;
    };
    let names: Vec<String> = meta
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|n| n.starts_with("e2e-") && suffixes.iter().any(|s| n.contains(s.as_str())))
        .collect();
    if names.is_empty() {
        return;
    }
    let Ok(admin) = cfg.create::<AdminClient<DefaultClientContext>>() else {
        return;
    };
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    match rt.block_on(admin.delete_topics(&refs, &AdminOptions::new())) {
        Ok(_) => eprintln!("deleted {} topics of this run", names.len()),
        Err(e) => eprintln!("deleting this run's topics: {e}"),
    }
}

fn field_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i == 0 {
                "value".to_string()
            } else {
                format!("f{i}")
            }
        })
        .collect()
}

/// Produces the workload's events to a fresh topic; returns its name.
fn produce(w: Workload, events: usize) -> String {
    let topic = new_topic();
    let records = records(w, events);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        streamcast::broker::produce(&brokers(), &topic, records)
            .await
            .unwrap();
    });
    topic
}

/// A fresh, empty input topic.
fn new_topic() -> String {
    let topic = format!("e2e-in-{}", suffix());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        streamcast::broker::create_topics(&brokers(), &[(topic.as_str(), PARTITIONS)], 5)
            .await
            .unwrap();
    });
    topic
}

/// The workload's events, in event-time order: (key, JSON).
fn records(w: Workload, events: usize) -> Vec<(String, String)> {
    let minutes = events.div_ceil(w.keys);
    let fields = field_names(w.fields);
    let records = (0..minutes).flat_map(move |m| {
        let fields = fields.clone();
        (0..w.keys).map(move |k| {
            let key = format!("k{k:06}");
            let ts = streamcast::time::rfc3339_ms(T0 + m as i64 * 60_000);
            let mut json = format!("{{\"key\":\"{key}\",\"ts\":\"{ts}\"");
            for (j, f) in fields.iter().enumerate() {
                let v = 50.0
                    + (k % 97) as f64
                    + 10.0 * ((m as f64) * std::f64::consts::TAU / 1440.0 + (k + j) as f64).sin();
                json.push_str(&format!(",\"{f}\":{v:.3}"));
            }
            json.push('}');
            (key, json)
        })
    });
    records.take(events).collect()
}

/// Produces `records` to `topic` at about `rate` events/s (in slices of
/// 20 ms, each sent then waited out), as a live source would; returns the
/// rate achieved (first send to the last acknowledgement).
fn produce_paced(topic: &str, records: &[(String, String)], rate: f64) -> f64 {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let slice = Duration::from_millis(20);
    let per_slice = ((rate * slice.as_secs_f64()).ceil() as usize).max(1);
    let t0 = Instant::now();
    for (i, chunk) in records.chunks(per_slice).enumerate() {
        for (key, json) in chunk {
            loop {
                match producer.send(BaseRecord::to(topic).key(key).payload(json)) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        producer.poll(Duration::from_millis(5));
                    }
                    Err((e, _)) => panic!("producing to {topic}: {e}"),
                }
            }
        }
        producer.poll(Duration::ZERO);
        if let Some(wait) = (slice * (i as u32 + 1)).checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    records.len() as f64 / t0.elapsed().as_secs_f64()
}

/// Latency under a live load: streamcast starts on an empty topic, then
/// the workload's events arrive at `rate` events/s. Close -> ack is then
/// what a user of a live stream sees (no backlog to batch up).
fn run_paced(
    w: Workload,
    records: &[(String, String)],
    rate: f64,
    dir: &Path,
    v: &Variant,
) -> (Figures, f64) {
    let topic = new_topic();
    let dir = dir.to_path_buf();
    let t = topic.clone();
    let (bin, extra) = (v.bin.clone(), v.extra.clone());
    let job = std::thread::spawn(move || run_streamcast_with(&bin, &t, w, &dir, "", &extra, "8s"));
    // Let the job subscribe before the first event (its idle clock starts
    // with the first message).
    std::thread::sleep(Duration::from_secs(2));
    let achieved = produce_paced(&topic, records, rate);
    (job.join().unwrap(), achieved)
}

/// A consumer loop that reads every message and drops it: the limit.
/// `tuned` sets `fetch.queue.backoff.ms = 1` (as streamcast does).
fn bare_consume(topic: &str, events: usize, tuned: bool) -> Figures {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers())
        .set("group.id", format!("e2e-bare-{}", suffix()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    if tuned {
        cfg.set("fetch.queue.backoff.ms", "1");
    }
    let consumer: BaseConsumer = cfg.create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let (mut n, mut bytes) = (0usize, 0usize);
    let mut eof = HashSet::new();
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                n += 1;
                bytes += rdkafka::Message::payload(&m).map_or(0, <[u8]>::len);
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => {}
            Some(Err(e)) => panic!("bare consumer: {e}"),
            None => {}
        }
        if n >= events && eof.len() as i32 >= PARTITIONS {
            break;
        }
    }
    assert_eq!(n, events, "bare consumer read {n} of {events}");
    let secs = first.map_or(f64::NAN, |f| f.elapsed().as_secs_f64());
    let _ = bytes;
    Figures {
        events_per_s: n as f64 / secs,
        wall_s: secs,
        ..Figures::default()
    }
}

/// `kcat` reading the topic to its end, if installed.
fn kcat(topic: &str, events: usize) -> Option<Figures> {
    let t = Instant::now();
    let out = Command::new("kcat")
        .args([
            "-C",
            "-b",
            &brokers(),
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
        ])
        .args(["-f", "x"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let secs = t.elapsed().as_secs_f64();
    let n = out.stdout.iter().filter(|b| **b == b'x').count();
    assert_eq!(n, events, "kcat read {n} of {events}");
    Some(Figures {
        events_per_s: n as f64 / secs,
        wall_s: secs,
        ..Figures::default()
    })
}

/// Runs `cmd` under GNU time; returns stdout and (wall, cpu, peak RSS MB).
fn timed(cmd: Command) -> (String, f64, f64, f64) {
    let tf = std::env::temp_dir().join(format!("e2e-time-{}", suffix()));
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%e %U %S %M")
        .arg("-o")
        .arg(&tf)
        .arg(program)
        .args(args)
        .stderr(Stdio::null());
    // `E2E_LOG_DIR`: keep each run's stderr (its logs, e.g. with RUST_LOG).
    if let Ok(d) = std::env::var("E2E_LOG_DIR") {
        let f = std::fs::File::create(Path::new(&d).join(format!("run-{}.log", suffix()))).unwrap();
        timed.stderr(f);
    }
    let out = timed.output().expect("running under /usr/bin/time");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stdout)
    );
    let t = std::fs::read_to_string(&tf).unwrap();
    let _ = std::fs::remove_file(&tf);
    let v: Vec<f64> = t
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        v[0],
        v[1] + v[2],
        v[3] / 1024.0,
    )
}

/// The number after `label` on the summary line that starts with it.
fn summary_value(out: &str, label: &str, nth: usize) -> Option<f64> {
    let line = out.lines().find(|l| l.starts_with(label))?;
    line[label.len()..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|s| !s.is_empty())
        .nth(nth)?
        .parse()
        .ok()
}

fn streamcast_bin() -> PathBuf {
    if let Ok(p) = std::env::var("STREAMCAST_BIN") {
        return PathBuf::from(p);
    }
    // benches run from target/release/deps; the binary is in target/release.
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .unwrap()
        .join("streamcast")
}

/// Runs `streamcast run` of `bin` on `topic`: `top` is TOML before the
/// first table (e.g. `delivery`), `extra` after `[sink]`.
fn run_streamcast_with(
    bin: &Path,
    topic: &str,
    w: Workload,
    dir: &Path,
    top: &str,
    extra: &str,
    idle: &str,
) -> Figures {
    let s = suffix();
    let fields: Vec<String> = field_names(w.fields)
        .iter()
        .map(|f| format!("{f:?}"))
        .collect();
    let pipeline = dir.join(format!("e2e-{s}.toml"));
    std::fs::write(
        &pipeline,
        format!(
            r#"{top}
name = "e2e-{s}"
[source]
topic = "{topic}"
group_id = "e2e-{s}"
partitions = {PARTITIONS}
[decode]
value_fields = [{}]
[window]
size = "{}s"
idle_partition_timeout = "1s"
[model]
cell = "lstm"
hidden = 32
horizon = 6
[sink]
topic = "e2e-out-{s}"
dead_letter_topic = "e2e-dlq-{s}"
partitions = {PARTITIONS}
{extra}
"#,
            fields.join(", "),
            w.window_s
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg(&pipeline)
        .args(["--exit-when-idle", idle]);
    cmd.current_dir(dir);
    let (out, wall, cpu, rss) = timed(cmd);
    let events = summary_value(&out, "events windowed", 0).unwrap_or(f64::NAN);
    let first = summary_value(&out, "first message read", 0).unwrap_or(f64::NAN);
    // Done when every event was read and every forecast owed was acked.
    let last = summary_value(&out, "last forecast acked", 0)
        .unwrap_or(f64::NAN)
        .max(summary_value(&out, "last message read", 0).unwrap_or(f64::NAN));
    let forecasts = summary_value(&out, "forecasts (model)", 0).unwrap_or(0.0)
        + summary_value(&out, "forecasts (baseline)", 0).unwrap_or(0.0);
    Figures {
        events_per_s: events / (last - first),
        wall_s: wall,
        cpu_s: cpu,
        rss_mb: rss,
        p50_ms: summary_value(&out, "close -> ack (ms)", 1).unwrap_or(f64::NAN),
        p99_ms: summary_value(&out, "close -> ack (ms)", 3).unwrap_or(f64::NAN),
        sink_p50_ms: summary_value(&out, "close -> sink (ms)", 1).unwrap_or(f64::NAN),
        sink_p99_ms: summary_value(&out, "close -> sink (ms)", 3).unwrap_or(f64::NAN),
        forecasts: forecasts as u64,
    }
}

fn run_peer(topic: &str, w: Workload) -> Option<Figures> {
    let venv = std::env::var("STREAMCAST_VENV").ok()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_e2e_peer.py");
    let mut cmd = Command::new(Path::new(&venv).join("bin/python"));
    cmd.arg(script)
        .args(["--brokers", &brokers(), "--topic", topic])
        .args(["--out-topic", &format!("e2e-peer-out-{}", suffix())])
        .args(["--window", &w.window_s.to_string()])
        .args(["--fields", &field_names(w.fields).join(",")])
        .args(["--hidden", "32", "--horizon", "6", "--idle-exit", "3"]);
    let (out, wall, cpu, rss) = timed(cmd);
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
    Some(Figures {
        events_per_s: f("events_per_s"),
        wall_s: wall,
        cpu_s: cpu,
        rss_mb: rss,
        p50_ms: f("latency_p50_ms"),
        p99_ms: f("latency_p99_ms"),
        forecasts: f("forecasts_acked") as u64,
        ..Figures::default()
    })
}

fn median_range(v: &[f64]) -> String {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return "-".into();
    }
    s.sort_by(f64::total_cmp);
    let med = s[s.len() / 2];
    let fmt = |x: f64| {
        if x >= 100_000.0 {
            format!("{:.0}k", x / 1000.0)
        } else if x >= 10.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.2}")
        }
    };
    if s.len() == 1 {
        fmt(med)
    } else {
        format!("{} ({}-{})", fmt(med), fmt(s[0]), fmt(s[s.len() - 1]))
    }
}

fn main() {
    let events: usize = env_or("E2E_EVENTS", "2880000").parse().unwrap();
    let reps: usize = env_or("E2E_REPS", "3").parse().unwrap();
    let skip = env_or("E2E_SKIP", "");
    let all = [
        Workload {
            keys: 2000,
            fields: 1,
            window_s: 3600,
        },
        Workload {
            keys: 2000,
            fields: 8,
            window_s: 3600,
        },
        Workload {
            keys: 100_000,
            fields: 1,
            window_s: 300,
        },
    ];
    let wanted = env_or("E2E_WORKLOADS", "");
    let dir = tempfile::tempdir().unwrap();
    if let Ok(rate) = std::env::var("E2E_PACED") {
        paced(rate.parse().unwrap(), events, reps, dir.path());
        return;
    }
    println!(
        "\n# e2e: {events} events per topic, {PARTITIONS} partitions, {reps} reps; streamcast {}",
        streamcast_bin().display()
    );
    for w in all {
        let name = format!("{}x{}", w.keys, w.fields);
        if !wanted.is_empty() && !wanted.split(',').any(|x| x == name) {
            continue;
        }
        let topic = produce(w, events);
        eprintln!("produced {events} events to {topic}");
        let mut rows: BTreeMap<String, Vec<Figures>> = BTreeMap::new();
        for rep in 0..reps {
            // Interleaved, so drift of the shared machine hits every runner.
            let mut run = |name: &str, f: Option<Figures>| {
                if let Some(f) = f {
                    eprintln!("  rep {rep} {name}: {:.0} events/s", f.events_per_s);
                    rows.entry(name.to_string()).or_default().push(f);
                }
            };
            run(
                "bare librdkafka (fetch.queue.backoff.ms=1)",
                Some(bare_consume(&topic, events, true)),
            );
            if !skip.contains("bare-default") {
                run(
                    "bare librdkafka (defaults)",
                    Some(bare_consume(&topic, events, false)),
                );
            }
            if !skip.contains("kcat") {
                run("kcat", kcat(&topic, events));
            }
            // The streamcast jobs: (runner, binary, top-level TOML, TOML
            // after `[sink]`), started in an order rotated by one each
            // repetition, so that no runner always follows the same one
            // (the broker compacts the previous jobs' changelogs meanwhile).
            let here = streamcast_bin();
            let mut jobs: Vec<(String, PathBuf, String, String)> = vec![(
                "streamcast run".into(),
                here.clone(),
                String::new(),
                String::new(),
            )];
            if std::env::var_os("E2E_DELIVERY").is_some() {
                let variants = [
                    ("streamcast run (state off)", "", "[state]\nenabled = false"),
                    (
                        "streamcast run (exactly once)",
                        "delivery = \"exactly_once\"",
                        "",
                    ),
                    (
                        "streamcast run (exactly once, commit 100ms)",
                        "delivery = \"exactly_once\"",
                        "[state]\ncommit_interval = \"100ms\"",
                    ),
                ];
                for (name, top, extra) in variants {
                    jobs.push((name.into(), here.clone(), top.into(), extra.into()));
                }
            }
            for n in env_or("E2E_SHARDS", "")
                .split(',')
                .filter(|n| !n.is_empty())
            {
                jobs.push((
                    format!("streamcast run (compute.shards = {n})"),
                    here.clone(),
                    String::new(),
                    format!("[compute]\nshards = {n}"),
                ));
            }
            // `E2E_EXTRA="name:toml;..."`: more runners of this build, each
            // with TOML after the `[sink]` table (`\n` for newlines).
            for v in env_or("E2E_EXTRA", "")
                .split(';')
                .filter(|v| !v.trim().is_empty())
            {
                let (name, extra) = v.split_once(':').unwrap_or((v, ""));
                jobs.push((
                    format!("streamcast run ({})", name.trim()),
                    here.clone(),
                    String::new(),
                    extra.replace("\\n", "\n"),
                ));
            }
            if let Ok(bin) = std::env::var("E2E_OLD_BIN") {
                jobs.push((
                    "streamcast run (E2E_OLD_BIN, before)".into(),
                    PathBuf::from(bin),
                    String::new(),
                    String::new(),
                ));
            }
            if std::env::var_os("E2E_OLD_DEFAULT").is_some() {
                jobs.push((
                    "streamcast run (librdkafka's default fetch.queue.backoff.ms)".into(),
                    here.clone(),
                    String::new(),
                    "[source.librdkafka]\n\"fetch.queue.backoff.ms\" = \"1000\"".into(),
                ));
            }
            let k = jobs.len();
            jobs.rotate_left(rep % k);
            for (name, bin, top, extra) in &jobs {
                run(
                    name,
                    Some(run_streamcast_with(
                        bin,
                        &topic,
                        w,
                        dir.path(),
                        top,
                        extra,
                        "3s",
                    )),
                );
            }
            if !skip.contains("peer") {
                run("python peer", run_peer(&topic, w));
            }
        }
        let col = |name: &str, f: fn(&Figures) -> f64| {
            rows.get(name)
                .map(|v| v.iter().map(f).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let limit = col("bare librdkafka (fetch.queue.backoff.ms=1)", |f| {
            f.events_per_s
        });
        let ours = col("streamcast run", |f| f.events_per_s);
        let peer = col("python peer", |f| f.events_per_s);
        let ratio =
            |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x / y).collect() };
        println!(
            "\n## {} keys, {} value field(s), {}s windows\n",
            w.keys, w.fields, w.window_s
        );
        println!("| runner | events/s | wall s | CPU s | peak RSS MB | close->ack p50 ms | p99 ms | forecasts |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for (name, v) in &rows {
            let c = |f: fn(&Figures) -> f64| median_range(&v.iter().map(f).collect::<Vec<_>>());
            println!(
                "| {name} | {} | {} | {} | {} | {} | {} | {} |",
                c(|f| f.events_per_s),
                c(|f| f.wall_s),
                c(|f| f.cpu_s),
                c(|f| f.rss_mb),
                c(|f| f.p50_ms),
                c(|f| f.p99_ms),
                v.first().map_or(0, |f| f.forecasts)
            );
        }
        println!(
            "\nstreamcast / bare limit (same rep): {}; streamcast / python peer: {}",
            median_range(&ratio(&ours, &limit)),
            median_range(&ratio(&ours, &peer))
        );
        let before = col("streamcast run (E2E_OLD_BIN, before)", |f| f.events_per_s);
        if !before.is_empty() {
            println!(
                "streamcast / E2E_OLD_BIN (same rep): {}; E2E_OLD_BIN / bare limit (same rep): {}",
                median_range(&ratio(&ours, &before)),
                median_range(&ratio(&before, &limit))
            );
        }
        let eos = col("streamcast run (exactly once)", |f| f.events_per_s);
        if !eos.is_empty() {
            let off = col("streamcast run (state off)", |f| f.events_per_s);
            println!(
                "exactly once / at least once (same rep): {}; at least once with state / state off: {}",
                median_range(&ratio(&eos, &ours)),
                median_range(&ratio(&ours, &off))
            );
        }
        drop_topics();
    }
}

/// One job of the paced comparison (`E2E_PACED_VARIANTS`).
#[derive(Debug, Clone)]
struct Variant {
    name: String,
    bin: PathBuf,
    extra: String,
}

fn variants() -> Vec<Variant> {
    let spec = env_or("E2E_PACED_VARIANTS", "streamcast::");
    spec.split(';')
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            let mut parts = v.trim().splitn(3, ':');
            let name = parts.next().unwrap_or("streamcast").to_string();
            let bin = match parts.next().unwrap_or("") {
                "" => streamcast_bin(),
                b => PathBuf::from(b),
            };
            let extra = parts.next().unwrap_or("").replace("\\n", "\n");
            Variant { name, bin, extra }
        })
        .collect()
}

/// The 1-minute load average now (the box is shared: noted per figure).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// `E2E_PACED=<events/s>`: the latency target's workload (10,000 keys,
/// `E2E_PACED_KEYS`, one field, hourly windows, an event a minute per key)
/// arriving at that rate into a running job, `reps` times, each variant
/// once per repetition (interleaved, so load swings hit them alike).
fn paced(rate: f64, events: usize, reps: usize, dir: &Path) {
    let keys: usize = env_or("E2E_PACED_KEYS", "10000").parse().unwrap();
    let w = Workload {
        keys,
        fields: 1,
        window_s: 3600,
    };
    let variants = variants();
    println!(
        "\n# e2e paced: {events} events at {rate} events/s, {keys} keys, 1 field, hourly windows, {reps} reps; variants {:?}\n",
        variants
            .iter()
            .map(|v| format!("{}={} {:?}", v.name, v.bin.display(), v.extra))
            .collect::<Vec<_>>()
    );
    println!("| rep | variant | produced events/s | forecasts | close->ack p50 ms | p99 ms | close->sink p50 ms | p99 ms | CPU s | peak RSS MB | load avg (1 min, after) |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let records = records(w, events);
    let mut figs: Vec<Vec<Figures>> = vec![Vec::new(); variants.len()];
    let mut loads: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for rep in 0..reps {
        for (vi, v) in variants.iter().enumerate() {
            let (f, achieved) = run_paced(w, &records, rate, dir, v);
            let load = load_average();
            println!(
                "| {rep} | {} | {achieved:.0} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} | {load:.1} |",
                v.name, f.forecasts, f.p50_ms, f.p99_ms, f.sink_p50_ms, f.sink_p99_ms, f.cpu_s, f.rss_mb
            );
            figs[vi].push(f);
            loads[vi].push(load);
        }
    }
    println!("\n| variant | close->ack p50 ms | p99 ms | close->sink p50 ms | p99 ms | CPU s | load avg |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (vi, v) in variants.iter().enumerate() {
        let col =
            |g: fn(&Figures) -> f64| median_range(&figs[vi].iter().map(g).collect::<Vec<_>>());
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            v.name,
            col(|f| f.p50_ms),
            col(|f| f.p99_ms),
            col(|f| f.sink_p50_ms),
            col(|f| f.sink_p99_ms),
            col(|f| f.cpu_s),
            median_range(&loads[vi])
        );
    }
    drop_topics();
}
