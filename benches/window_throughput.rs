//! Window stage throughput (a plain `fn main`, no harness).
//!
//! ```sh
//! . scripts/env && cargo bench --bench window_throughput
//! ```
//!
//! Setup (one row per case): per-key metrics, every key sends one event per
//! second of event time (at a fixed millisecond offset within the second
//! per key, keys in a scrambled order within each second), tumbling
//! 1-minute windows, mean, ffill, allowed lateness 5 s, calendar covariates
//! as the quickstart (hour-of-day order 2, day-of-week order 1). Keys are
//! spread over 8 partitions (offsets increase per partition). Messages come
//! in batches of 10,000 (the default `source.max_batch`); the watermark
//! advances with the events, so every key's windows close as event time
//! crosses each minute (+5 s) and are built as an Arrow batch.
//!
//! - 10 keys: 600,000 s of event time = 6,000,000 events, 99,990 windows.
//! - 100,000 keys: 126 s of event time = 12,600,000 events (one minute of
//!   event time is 6M events), 200,000 windows (two closings of all keys).
//!
//! Two paths per case:
//! - `decode+window`: `decode::Decoder::decode` on JSON payloads
//!   (`{"key":"key-000042","ts":"2026-09-21T08:00:01.042Z","value":12.345,...}`,
//!   RFC 3339 times, the default format) built as `RawMessage`s outside the
//!   timed sections, then `window::WindowStage::process`.
//! - `window`: `WindowStage::process` alone on events `RecordBatch`es built
//!   up front (`decode::EventsBuilder`, the decoder's own output format).
//!
//! Inputs are built in chunks of 1,000,000 events (100 batches) between
//! timed sections, so memory stays small whatever the event count; only
//! `decode` and `process` calls are timed. Each case runs `REPS` times from
//! a fresh stage; the table shows the median run's events/s and the best.
//! Everything runs on one thread (the window stage is single-threaded by
//! design), so the figures are per core.
//!
//! `WINDOW_BENCH_QUICK=1` shrinks everything to a smoke run;
//! `WINDOW_BENCH_REPS` sets the runs per case; `WINDOW_BENCH_ONLY=path:fields:keys`
//! (e.g. `window:1:100000`, any part may be `*`) runs only matching cases
//! (handy under `perf record`).

// Test and bench code may unwrap: a failing unwrap is a failing run.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use arrow::array::RecordBatch;
use chrono::{DateTime, SecondsFormat};

use streamcast::config::PipelineConfig;
use streamcast::decode::{Decoder, RawMessage};
use streamcast::schema::{events_schema, EventsBuilder};
use streamcast::window::{WindowSpec, WindowStage};

const BATCH: usize = 10_000;
const CHUNK_BATCHES: usize = 100;
const PARTITIONS: usize = 8;
/// 2026-09-21T08:00:00Z, a Monday.
const T0_MS: i64 = 1_790_064_000_000;

fn quick() -> bool {
    std::env::var_os("WINDOW_BENCH_QUICK").is_some()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn field_names(nf: usize) -> Vec<String> {
    (0..nf)
        .map(|j| {
            if j == 0 {
                "value".to_string()
            } else {
                format!("f{j}")
            }
        })
        .collect()
}

fn pipeline(nf: usize) -> PipelineConfig {
    let fields = field_names(nf)
        .iter()
        .map(|f| format!("{f:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"
[decode]
time_format = "rfc3339"
value_fields = [{fields}]
[window]
size = "1m"
allowed_lateness = "5s"
aggregation = "mean"
fill = "ffill"
[window.covariates]
hour_of_day = 2
day_of_week = 1
"#
    );
    streamcast::testkit::pipeline(&text)
}

/// The workload: event `g` (0-based, in arrival order).
struct Workload {
    keys: usize,
    events: usize,
    names: Vec<String>,
    offsets: [i64; PARTITIONS],
}

struct Event {
    key: usize,
    ts_ms: i64,
    partition: i32,
    offset: i64,
}

impl Workload {
    fn new(keys: usize, seconds: usize) -> Self {
        Workload {
            keys,
            events: keys * seconds,
            names: (0..keys).map(|k| format!("key-{k:06}")).collect(),
            offsets: [0; PARTITIONS],
        }
    }

    fn event(&mut self, g: usize) -> Event {
        let (s, i) = (g / self.keys, g % self.keys);
        // A scrambled (bijective) key order within each second.
        let key = (i * 7919 + s * 104_729) % self.keys;
        let p = key % PARTITIONS;
        let offset = self.offsets[p];
        self.offsets[p] += 1;
        Event {
            key,
            ts_ms: T0_MS + s as i64 * 1000 + (key as i64 * 37) % 1000,
            partition: p as i32,
            offset,
        }
    }
}

/// A deterministic value in [0, 100) with three decimals.
fn value(g: usize, j: usize) -> f64 {
    let mut x = (g as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (j as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    (x % 100_000) as f64 / 1000.0
}

fn json_chunk(w: &mut Workload, fields: &[String], from: usize, n: usize) -> Vec<Vec<RawMessage>> {
    let mut out = Vec::with_capacity(n.div_ceil(BATCH));
    let mut batch = Vec::with_capacity(BATCH);
    for g in from..from + n {
        let e = w.event(g);
        let ts = DateTime::from_timestamp_millis(e.ts_ms)
            .expect("ts in range")
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut s = format!(r#"{{"key":"{}","ts":"{ts}""#, w.names[e.key]);
        for (j, f) in fields.iter().enumerate() {
            s.push_str(&format!(r#","{f}":{:.3}"#, value(g, j)));
        }
        s.push('}');
        batch.push(RawMessage {
            payload: Some(s.into_bytes()),
            partition: e.partition,
            offset: e.offset,
            timestamp_ms: Some(e.ts_ms),
        });
        if batch.len() == BATCH {
            out.push(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
        }
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

fn events_chunk(w: &mut Workload, fields: &[String], from: usize, n: usize) -> Vec<RecordBatch> {
    let schema = events_schema(fields);
    let mut out = Vec::with_capacity(n.div_ceil(BATCH));
    let mut vals = vec![0.0; fields.len()];
    let mut g = from;
    while g < from + n {
        let len = BATCH.min(from + n - g);
        let mut b = EventsBuilder::new(schema.clone(), len);
        for g in g..g + len {
            let e = w.event(g);
            for (j, v) in vals.iter_mut().enumerate() {
                *v = value(g, j);
            }
            b.push(&w.names[e.key], e.ts_ms, e.partition, e.offset, &vals);
        }
        out.push(b.finish());
        g += len;
    }
    out
}

#[derive(Default, Clone)]
struct Run {
    decode_s: f64,
    window_s: f64,
    windows: usize,
    max_batch_s: f64,
    /// Time of the `process` calls that closed windows.
    closing_s: f64,
    closing_calls: usize,
}

impl Run {
    fn total(&self) -> f64 {
        self.decode_s + self.window_s
    }
}

fn run_once(nf: usize, keys: usize, seconds: usize, decode: bool) -> (usize, Run) {
    let cfg = pipeline(nf);
    let fields = cfg.decode.value_fields.clone();
    let decoder = Decoder::new(&cfg.decode);
    let mut stage = WindowStage::new(WindowSpec::from_config(&cfg));
    let mut w = Workload::new(keys, seconds);
    let total = w.events;
    let chunk = BATCH * CHUNK_BATCHES;
    let mut r = Run::default();
    let mut g = 0;
    while g < total {
        let n = chunk.min(total - g);
        if decode {
            for msgs in json_chunk(&mut w, &fields, g, n) {
                let now = msgs[0].timestamp_ms.unwrap_or(0);
                let t0 = Instant::now();
                let d = decoder.decode(&msgs);
                let t1 = Instant::now();
                let closed = stage.process(&d.events, now);
                let t2 = Instant::now();
                assert!(d.dead_letters.is_empty() && closed.late.is_empty());
                account(
                    &mut r,
                    &closed,
                    (t1 - t0).as_secs_f64(),
                    (t2 - t1).as_secs_f64(),
                );
                drop((d, closed));
            }
        } else {
            for ev in events_chunk(&mut w, &fields, g, n) {
                let now = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(
                    ev.column(1),
                )
                .value(0);
                let t1 = Instant::now();
                let closed = stage.process(&ev, now);
                let t2 = Instant::now();
                assert!(closed.late.is_empty());
                account(&mut r, &closed, 0.0, (t2 - t1).as_secs_f64());
                drop(closed);
            }
        }
        g += n;
    }
    (total, r)
}

fn account(r: &mut Run, closed: &streamcast::window::Closed, dec: f64, win: f64) {
    r.decode_s += dec;
    r.window_s += win;
    r.max_batch_s = r.max_batch_s.max(dec + win);
    if let Some(b) = &closed.windows {
        r.windows += b.num_rows();
        r.closing_s += win;
        r.closing_calls += 1;
    }
}

/// Whether `WINDOW_BENCH_ONLY` (path:fields:keys, `*` = any) selects this case.
fn selected(path: &str, nf: usize, keys: usize) -> bool {
    let Ok(only) = std::env::var("WINDOW_BENCH_ONLY") else {
        return true;
    };
    let want: Vec<&str> = only.split(':').collect();
    let have = [path.to_string(), nf.to_string(), keys.to_string()];
    want.iter().zip(&have).all(|(w, h)| *w == "*" || *w == h)
}

fn main() {
    let reps: usize = std::env::var("WINDOW_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick() { 1 } else { 3 });
    // (keys, seconds of event time)
    let sizes: Vec<(usize, usize)> = if quick() {
        vec![(10, 6_000), (100_000, 3)]
    } else {
        vec![(10, 600_000), (100_000, 126)]
    };
    println!(
        "\n# window_throughput: batches of {BATCH}, tumbling 1m windows, 1 event/s/key, {PARTITIONS} partitions, \
         median of {reps} runs, single thread; loadavg at start {}\n",
        loadavg()
    );
    println!(
        "| {:<13} | {:>6} | {:>7} | {:>10} | {:>8} | {:>10} | {:>10} | {:>12} | {:>12} | {:>9} |",
        "path",
        "fields",
        "keys",
        "events",
        "windows",
        "M ev/s",
        "best M/s",
        "decode share",
        "closing ms",
        "max batch"
    );
    println!(
        "|{}|{}:|{}:|{}:|{}:|{}:|{}:|{}:|{}:|{}:|",
        "-".repeat(15),
        "-".repeat(7),
        "-".repeat(8),
        "-".repeat(11),
        "-".repeat(9),
        "-".repeat(11),
        "-".repeat(11),
        "-".repeat(13),
        "-".repeat(13),
        "-".repeat(10)
    );
    for decode in [false, true] {
        for nf in [1, 8] {
            for &(keys, seconds) in &sizes {
                let path = if decode { "decode+window" } else { "window" };
                if !selected(path, nf, keys) {
                    continue;
                }
                let mut runs: Vec<(usize, Run)> = (0..reps)
                    .map(|_| run_once(nf, keys, seconds, decode))
                    .collect();
                runs.sort_by(|a, b| a.1.total().total_cmp(&b.1.total()));
                let (events, med) = runs[runs.len() / 2].clone();
                let best = &runs[0].1;
                let share = if decode {
                    format!("{:.0}%", 100.0 * med.decode_s / med.total())
                } else {
                    "-".into()
                };
                let closing = if med.closing_calls > 0 {
                    med.closing_s * 1e3 / med.closing_calls as f64
                } else {
                    0.0
                };
                println!(
                    "| {path:<13} | {nf:>6} | {keys:>7} | {events:>10} | {:>8} | {:>10.3} | {:>10.3} | {share:>12} | {:>12.2} | {:>6.1} ms |",
                    med.windows,
                    events as f64 / med.total() / 1e6,
                    events as f64 / best.total() / 1e6,
                    closing,
                    med.max_batch_s * 1e3,
                );
            }
        }
    }
    println!("\n(closing ms: mean time of a `process` call that closed windows, its 10k events included; loadavg at end {})", loadavg());
}
