//! Model step throughput and memory (a plain `fn main`, no harness).
//!
//! ```sh
//! . scripts/env && cargo bench --bench model_step
//! ```
//!
//! 1. Memory: VmRSS before/after building a `StateStore` and registering
//!    1M keys (LSTM, 1 layer, input 4, W = 48), against
//!    `StateStore::bytes_per_slot`.
//! 2. Batched step: `StateStore::step` over every key per tick (LSTM,
//!    1 layer, 4 input features, horizon 6), hidden 32 and 64, 10k / 100k /
//!    1M keys: for the LSTM the in-place step (`Network::step_in_place`;
//!    `MODEL_STEP_CHUNK=rows` sets its keys per chunk); with
//!    `MODEL_STEP_UNFUSED=1` also `gather` -> `Network::step` -> `scatter`
//!    (what it replaced) in the same run; plus `Network::step` alone
//!    (states already gathered).
//! 3. The whole `ForecastStage::forecast` on a closed-windows batch of 10k and
//!    100k keys (one window per key): Arrow in, per-key scaling, lag
//!    inputs, waves, gather/step/scatter, history rings, seasonal-naive
//!    baseline and warm-up, Arrow out. Without lags (4 inputs, as in 2.) and
//!    with the default 12 lags (16 inputs).
//!
//! `MODEL_STEP_QUICK=1` shrinks everything to a smoke run (1k keys, one
//! repetition), e.g. of a debug build (`cargo build --bench model_step`,
//! then run the binary it names).
//!
//! `MODEL_STEP_ONLY=cells` runs only 4.: every cell side by side (RNN, LSTM,
//! GRU, the transformer with `attention_window = 24`, LSTM and GRU with
//! temporal attention over 24 windows), hidden 32, 16 inputs (value,
//! missing flag, hour of day, 12 lags), 1 layer: gather -> step -> scatter
//! over every key per tick, and the whole `ForecastStage::forecast`; keys
//! from `MODEL_STEP_KEYS` (default 10k and 100k). Then the combinations of
//! issue 15 beside their nearest plain ones: two GRU layers plain / dense,
//! each with temporal attention and with the seq2seq decoder, and the
//! transformer with output-to-output recurrence; then the seq2seq decoder
//! with temporal attention (plain and dense). `MODEL_STEP_CELLS=a,b`
//! runs only the rows of those names (exact).
//!
//! `MODEL_STEP_ONLY=close` times the model side of one live window close
//! of `MODEL_STEP_KEYS` keys (default 10,000; `bench_close`).
//!
//! `MODEL_STEP_ONLY=step` runs only 2. (no memory, no whole stage) and
//! `MODEL_STEP_KEYS=10000,100000` picks the key counts of 2. and 3.: with
//! `MODEL_STEP_THREADS=1` that is the like-for-like comparison
//! `scripts/bench_step_vs_pytorch` runs beside the peer.
//!
//! `tch::set_num_threads(2)` (`MODEL_STEP_THREADS` overrides), `tch::no_grad`;
//! the step and forecast tables are then repeated at 1 thread (the
//! pipeline's default `model.threads`), in the same run. Each row: one warm-up, then
//! `REPS` repetitions, each timing enough ticks to last ~0.3 s (at least
//! one); the median tick time is reported as key-steps/s = keys / time, with
//! the best tick time beside it and the median CPU time of this thread per
//! tick (`CPU ms`: at 1 torch thread the step runs on this thread, and CPU
//! time is less disturbed than wall time by other processes on a shared
//! box). The peer is `scripts/bench_pytorch_step.py` (same table shape).

// Test and bench code may unwrap: a failing unwrap is a failing run.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use arrow::array::RecordBatch;
use tch::{Device, Kind, Tensor};

use streamcast::config::{CellKind, PipelineConfig};
use streamcast::model::store::StateStore;
use streamcast::model::{CellShape, ForecastStage, Network};
use streamcast::window::{WindowSpec, WindowsBuilder};

const TARGET_S: f64 = 0.3;

fn quick() -> bool {
    std::env::var_os("MODEL_STEP_QUICK").is_some()
}

fn reps() -> usize {
    if quick() {
        1
    } else {
        7
    }
}
const HOUR: i64 = 3_600_000;
const T0: i64 = 1_790_000_000_000 / HOUR * HOUR;

fn rss_kb() -> i64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(-1)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// CPU time of the calling thread, in seconds (`/proc/thread-self/schedstat`,
/// nanoseconds on the CPU): at 1 torch thread the step runs on this thread,
/// so its CPU time per tick is less disturbed than the wall time by other
/// processes on a shared box (the peer reports `time.thread_time()`).
fn thread_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |ns| ns / 1e9)
}

/// Times `f` (one tick): warm-up, calibration, `REPS` repetitions.
/// Returns (median, best, median CPU) seconds per tick.
/// Where the step benches run: `MODEL_STEP_DEVICE=cuda` on a machine with a
/// GPU (`scripts/bench_gpu`), else the CPU.
fn bench_device() -> Device {
    match std::env::var("MODEL_STEP_DEVICE").as_deref() {
        Ok("cuda") => {
            assert!(
                tch::Cuda::is_available(),
                "MODEL_STEP_DEVICE=cuda but libtorch sees no CUDA device"
            );
            Device::Cuda(0)
        }
        _ => Device::Cpu,
    }
}

/// Waits for queued GPU work, so a tick's time includes its kernels (CUDA
/// launches are asynchronous); nothing on the CPU.
fn sync() {
    if let Device::Cuda(i) = bench_device() {
        tch::Cuda::synchronize(i as i64);
    }
}

fn time_ticks(mut f: impl FnMut()) -> (f64, f64, f64) {
    let t = Instant::now();
    f();
    sync();
    let one = t.elapsed().as_secs_f64().max(1e-6);
    let ticks = ((TARGET_S / one) as usize).max(1);
    let mut per = Vec::with_capacity(reps());
    let mut cpu = Vec::with_capacity(reps());
    for _ in 0..reps() {
        let (t, c) = (Instant::now(), thread_cpu_s());
        for _ in 0..ticks {
            f();
        }
        sync();
        per.push(t.elapsed().as_secs_f64() / ticks as f64);
        cpu.push((thread_cpu_s() - c) / ticks as f64);
    }
    let best = per.iter().copied().fold(f64::INFINITY, f64::min);
    (median(&mut per), best, median(&mut cpu))
}

fn row(what: &str, hidden: i64, keys: usize, (med, best, cpu): (f64, f64, f64)) {
    println!(
        "| {what:<28} | {hidden:>6} | {keys:>9} | {:>13.3} | {:>9.3} | {:>9.3} | {:>10.3} |",
        keys as f64 / med / 1e6,
        med * 1e3,
        best * 1e3,
        cpu * 1e3
    );
}

fn header() {
    println!(
        "| {:<28} | {:>6} | {:>9} | {:>13} | {:>9} | {:>9} | {:>10} |",
        "what", "hidden", "keys", "M key-steps/s", "ms/tick", "best ms", "CPU ms"
    );
    println!(
        "|{}|{}:|{}:|{}:|{}:|{}:|{}:|",
        "-".repeat(30),
        "-".repeat(7),
        "-".repeat(10),
        "-".repeat(14),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(11)
    );
}

fn lstm(hidden: i64) -> Network {
    let shape = CellShape::recurrent(CellKind::Lstm, 4, hidden, 1);
    Network::new(shape, 6, bench_device(), 42)
}

fn key(i: usize) -> String {
    format!("key-{i:07}")
}

/// A store with `n` registered keys; returns it and their slots.
fn store_with(net: &Network, n: usize) -> (StateStore, Vec<i64>) {
    let mut store = StateStore::new(net, 1, 48, 0, false);
    let slots = (0..n).map(|i| store.slot(&key(i))).collect();
    (store, slots)
}

/// The bench pipeline: hourly windows, hour-of-day covariates, LSTM;
/// `lags` target lags as extra inputs (the default is one season, 12).
fn pipeline(hidden: i64, lags: u32) -> PipelineConfig {
    pipeline_with(hidden, lags, "cell = \"lstm\"")
}

/// [`pipeline`] with other `[model]` lines for the cell.
fn pipeline_with(hidden: i64, lags: u32, cell: &str) -> PipelineConfig {
    let text = format!(
        r#"
[window]
size = "1h"
[window.covariates]
hour_of_day = 1
[model]
{cell}
hidden = {hidden}
lags = {lags}
"#
    );
    streamcast::testkit::pipeline(&text)
}

/// Closed windows of `n` keys for window `t` (sorted by key, as the window stage emits).
fn windows(spec: &WindowSpec, n: usize, t: usize) -> RecordBatch {
    let end = T0 + (t as i64 + 1) * HOUR;
    let start = end - spec.size_ms;
    let mut b = WindowsBuilder::new(spec, n);
    for i in 0..n {
        let v = 50.0
            + (i % 97) as f64
            + 10.0 * ((t as f64) * std::f64::consts::FRAC_PI_6 + i as f64).sin();
        b.push(&key(i), start, 12, false, &[v]);
    }
    b.finish()
}

fn main() {
    let threads: i32 = std::env::var("MODEL_STEP_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    tch::set_num_threads(threads);
    let _guard = tch::no_grad_guard();
    println!(
        "# model_step: LSTM, 1 layer, input 4, horizon 6, W = 48; torch threads {}; {} cpus; loadavg {}; median of {} reps",
        tch::get_num_threads(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        reps()
    );
    let (step_keys, fc_keys, n_mem): (Vec<usize>, Vec<usize>, usize) = if quick() {
        (vec![1_000], vec![1_000], 10_000)
    } else {
        (
            vec![10_000, 100_000, 1_000_000],
            vec![10_000, 100_000],
            1_000_000,
        )
    };
    let keys_env: Option<Vec<usize>> = std::env::var("MODEL_STEP_KEYS")
        .ok()
        .map(|v| v.split(',').filter_map(|k| k.trim().parse().ok()).collect());
    let (step_keys, fc_keys) = match keys_env {
        Some(k) => (k.clone(), k),
        None => (step_keys, fc_keys),
    };
    if std::env::var("MODEL_STEP_ONLY").is_ok_and(|v| v == "close") {
        let n = std::env::var("MODEL_STEP_KEYS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000);
        bench_close(n);
        return;
    }
    let only_step = std::env::var("MODEL_STEP_ONLY").is_ok_and(|v| v == "step");
    if std::env::var("MODEL_STEP_ONLY").is_ok_and(|v| v == "cells") {
        let keys = std::env::var("MODEL_STEP_KEYS")
            .ok()
            .map(|v| v.split(',').filter_map(|k| k.trim().parse().ok()).collect())
            .unwrap_or_else(|| {
                if quick() {
                    vec![1_000]
                } else {
                    vec![10_000, 100_000]
                }
            });
        bench_cells(&keys);
        return;
    }

    // 1. Memory per key, in a fresh process (before anything else allocates).
    if !only_step {
        println!("\n## Resident memory per key ({n_mem} keys)\n");
        println!("| hidden | bytes_per_slot | slots allocated | VmRSS delta | RSS per key |");
        println!("|-------:|---------------:|----------------:|------------:|------------:|");
        for hidden in [32, 64] {
            let net = lstm(hidden);
            let before = rss_kb();
            let (store, _) = store_with(&net, n_mem);
            let after = rss_kb();
            let cap = (n_mem as u64).next_power_of_two(); // capacity doubles from 64
            println!(
                "| {hidden:>6} | {:>14} | {cap:>15} | {:>8.1} MiB | {:>9.0} B |",
                store.bytes_per_slot(),
                (after - before) as f64 / 1024.0,
                (after - before) as f64 * 1024.0 / n_mem as f64
            );
            drop(store);
        }
    }

    // 2. Batched step, 3. the whole stage: at the requested threads, then
    // (same run) at 1 thread, the pipeline's default `model.threads`.
    let mut runs = vec![threads];
    if threads != 1 {
        runs.push(1);
    }
    for th in runs {
        tch::set_num_threads(th);
        println!("\n## Batched step (gather -> Network::step -> scatter), all keys every tick; torch threads {th}\n");
        header();
        for hidden in [32, 64] {
            for &n in &step_keys {
                bench_step(hidden, n, th == threads);
            }
        }
        if only_step {
            continue;
        }
        println!("\n## ForecastStage::forecast on a closed-windows batch (one window per key; median of 23 calls); torch threads {th}\n");
        header();
        for lags in [0, 12] {
            for hidden in [32, 64] {
                for &n in &fc_keys {
                    bench_forecast(hidden, lags, n);
                }
            }
        }
        println!("\n# loadavg {}", loadavg());
    }
}

/// gather -> step -> scatter over `n` keys; with `step_only`, also the step
/// alone on already-gathered states.
fn bench_step(hidden: i64, n: usize, step_only: bool) {
    let net = lstm(hidden);
    let (mut store, slots) = store_with(&net, n);
    let ids: Vec<i64> = slots.clone();
    let slots = Tensor::from_slice(&slots).to_device(bench_device());
    let x = Tensor::randn([n as i64, 4], (Kind::Float, bench_device()));
    let chunk = std::env::var("MODEL_STEP_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok());
    store.set_fused_step(true, chunk);
    let r = time_ticks(|| {
        let _y = store.step(&net, &ids, &slots, &x);
    });
    row("StateStore::step (in place)", hidden, n, r);
    if std::env::var_os("MODEL_STEP_UNFUSED").is_some() {
        store.set_fused_step(false, None);
        let r = time_ticks(|| {
            let _y = store.step(&net, &ids, &slots, &x);
        });
        row("gather+step+scatter", hidden, n, r);
    }
    if step_only {
        let (h, c) = store.gather(&slots);
        let r = time_ticks(|| {
            let _ = net.step(&x, &h, c.as_ref(), 0.0);
        });
        row("Network::step only", hidden, n, r);
    }
}

/// `MODEL_STEP_ONLY=close`: the model-side work of one window close of `n`
/// keys in the live path, with the pipeline of `benches/e2e.rs`'s paced run
/// (hourly windows, LSTM hidden 32, horizon 6, the default lags and
/// scoring): `ForecastStage::forecast` on the closed windows, the scorer's
/// `observe` of them (`score.enabled` is the default), and the checkpoint
/// export of the `n` changed keys' model state (`take_changes`, on the same
/// compute thread at the next checkpoint). 23 closes after a first that
/// registers the keys; median and range in ms per close. With the in-place
/// step and without it (`ForecastStage::set_fused_step(false)`).
fn bench_close(n: usize) {
    let cfg = streamcast::testkit::pipeline(
        "[window]\nsize = \"3600s\"\n[model]\ncell = \"lstm\"\nhidden = 32\nhorizon = 6\n",
    );
    let spec = WindowSpec::from_config(&cfg);
    let batches: Vec<RecordBatch> = (0..24).map(|t| windows(&spec, n, t)).collect();
    println!(
        "\n## One close of {n} keys, model side (median (min-max) ms of 23 closes); torch threads {}; loadavg {}\n",
        tch::get_num_threads(),
        loadavg()
    );
    println!("| step | forecast | score observe | checkpoint export | sum |");
    println!("|---|---:|---:|---:|---:|");
    for fused in [true, false] {
        let mut fc = ForecastStage::from_config(&cfg).expect("forecaster");
        fc.set_fused_step(fused);
        fc.enable_state_tracking();
        let mut scorer = streamcast::score::Scorer::for_pipeline(&cfg, &cfg.model.quantiles, None);
        let out = fc.forecast(&batches[0]).expect("forecast");
        let _ = scorer.observe(&batches[0], out);
        fc.take_changes().expect("changes");
        let (mut tf, mut ts, mut tc, mut sum) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for b in &batches[1..] {
            let t0 = Instant::now();
            let out = fc.forecast(b).expect("forecast");
            let t1 = Instant::now();
            let out = scorer.observe(b, out);
            let _ = scorer.take_records();
            let t2 = Instant::now();
            let ch = fc.take_changes().expect("changes");
            let t3 = Instant::now();
            assert_eq!((out.num_rows(), ch.len()), (n, n));
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
            tf.push(ms(t0, t1));
            ts.push(ms(t1, t2));
            tc.push(ms(t2, t3));
            sum.push(ms(t0, t3));
        }
        let f = |v: &mut Vec<f64>| {
            let (lo, hi) = (
                v.iter().copied().fold(f64::INFINITY, f64::min),
                v.iter().copied().fold(0.0, f64::max),
            );
            format!("{:.1} ({lo:.1}-{hi:.1})", median(v))
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            if fused {
                "in place"
            } else {
                "gather+step+scatter"
            },
            f(&mut tf),
            f(&mut ts),
            f(&mut tc),
            f(&mut sum)
        );
    }
}

/// `ForecastStage::forecast` on 23 successive closed-windows batches of `n` keys.
fn bench_forecast(hidden: i64, lags: u32, n: usize) {
    let cfg = pipeline(hidden, lags);
    let spec = WindowSpec::from_config(&cfg);
    let mut fc = ForecastStage::from_config(&cfg).expect("forecaster");
    let batches: Vec<RecordBatch> = (0..24).map(|t| windows(&spec, n, t)).collect();
    // The first batch registers the keys; not timed.
    fc.forecast(&batches[0]).expect("forecast");
    let mut per = Vec::new();
    for b in &batches[1..] {
        let t0 = Instant::now();
        let out = fc.forecast(b).expect("forecast");
        per.push(t0.elapsed().as_secs_f64());
        assert_eq!(out.num_rows(), n);
    }
    let best = per.iter().copied().fold(f64::INFINITY, f64::min);
    let what = format!("ForecastStage::forecast, {} in", fc.network().shape.input);
    row(&what, hidden, n, (median(&mut per), best, f64::NAN));
}

/// The cells side by side (see the header, 4.).
const CELL_VARIANTS: [(&str, &str); 15] = [
    ("rnn", "cell = \"rnn\""),
    ("lstm", "cell = \"lstm\""),
    ("gru", "cell = \"gru\""),
    (
        "transformer W=24",
        "cell = \"transformer\"\nattention_window = 24",
    ),
    (
        "lstm+attention W=24",
        "cell = \"lstm\"\nattention = true\nattention_window = 24",
    ),
    (
        "gru+attention W=24",
        "cell = \"gru\"\nattention = true\nattention_window = 24",
    ),
    ("gru L=2", "cell = \"gru\"\nlayers = 2"),
    (
        "gru L=2 dense",
        "cell = \"gru\"\nlayers = 2\nconnections = \"dense\"",
    ),
    (
        "gru L=2 attention W=24",
        "cell = \"gru\"\nlayers = 2\nattention = true\nattention_window = 24",
    ),
    (
        "gru L=2 dense+attention W=24",
        "cell = \"gru\"\nlayers = 2\nconnections = \"dense\"\nattention = true\nattention_window = 24",
    ),
    (
        "gru L=2 seq2seq",
        "cell = \"gru\"\nlayers = 2\ndecoder = \"seq2seq\"",
    ),
    (
        "gru L=2 dense+seq2seq",
        "cell = \"gru\"\nlayers = 2\nconnections = \"dense\"\ndecoder = \"seq2seq\"",
    ),
    (
        "gru L=2 seq2seq+attention W=24",
        "cell = \"gru\"\nlayers = 2\ndecoder = \"seq2seq\"\nattention = true\nattention_window = 24",
    ),
    (
        "gru L=2 dense+seq2seq+attention W=24",
        "cell = \"gru\"\nlayers = 2\nconnections = \"dense\"\ndecoder = \"seq2seq\"\nattention = true\nattention_window = 24",
    ),
    (
        "transformer W=24 output-to-output",
        "cell = \"transformer\"\nattention_window = 24\noutput_recurrence = \"output\"",
    ),
];

fn bench_cells(keys: &[usize]) {
    println!(
        "\n## Cells side by side: hidden 32, 16 inputs (17 with output recurrence), 1 layer unless named; torch threads {}\n",
        tch::get_num_threads()
    );
    println!("| cell | state floats/key | keys | step M key-steps/s | step ms/tick | stage M key-steps/s | stage ms/call |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let only: Option<Vec<String>> = std::env::var("MODEL_STEP_CELLS")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    for (name, lines) in CELL_VARIANTS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|s| s == name)) {
            continue;
        }
        let cfg = pipeline_with(32, 12, lines);
        for &n in keys {
            let mut fc = ForecastStage::from_config(&cfg).expect("forecaster");
            let net = fc.network();
            let ((hr, hw), c) = net.state_dims();
            let floats = hr * hw + c.map_or(0, |(r, w)| r * w);
            let mut store = StateStore::new(net, 1, 48, 12, false);
            let slots: Vec<i64> = (0..n).map(|i| store.slot(&key(i))).collect();
            let ids = slots.clone();
            let slots = Tensor::from_slice(&slots);
            let x = Tensor::randn([n as i64, net.shape.input], (Kind::Float, Device::Cpu));
            let (med, _, _) = time_ticks(|| {
                let _y = store.step(net, &ids, &slots, &x);
            });
            drop(store);
            let spec = WindowSpec::from_config(&cfg);
            let batches: Vec<RecordBatch> = (0..12).map(|t| windows(&spec, n, t)).collect();
            fc.forecast(&batches[0]).expect("forecast");
            let mut per = Vec::new();
            for b in &batches[1..] {
                let t0 = Instant::now();
                fc.forecast(b).expect("forecast");
                per.push(t0.elapsed().as_secs_f64());
            }
            let stage = median(&mut per);
            println!(
                "| {name} | {floats} | {n} | {:.3} | {:.2} | {:.3} | {:.2} |",
                n as f64 / med / 1e6,
                med * 1e3,
                n as f64 / stage / 1e6,
                stage * 1e3
            );
        }
    }
    println!("\n# loadavg {}", loadavg());
}
