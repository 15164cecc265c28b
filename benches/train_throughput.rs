//! Training data preparation and training speed (a plain `fn main`, no harness).
//!
//! ```sh
//! . scripts/env && cargo bench --bench train_throughput
//! $STREAMCAST_VENV/bin/python scripts/bench_pytorch_train.py   # the PyTorch peer of (b)
//! ```
//!
//! The pipeline (as a file would configure it): hourly tumbling windows, one
//! value field, quickstart covariates (hour-of-day order 2, day-of-week order
//! 1), GRU 1 layer hidden 64, horizon 24, lags 24, season 24, warm-up 24,
//! residual head; training batch 128, context 96, tbptt 48, stride 12,
//! burn-in 24, MSE, Adam lr 3e-3, clip 1.0, 2 threads. Network inputs:
//! 1 scaled value + 1 missing flag + 6 covariates + 24 lags = 32; outputs 24.
//!
//! (a) `train::prepare` with `train::prep_spec` of that pipeline over an
//!     archive of 10,000 keys x 1,000 hourly windows = 10,000,000 rows,
//!     written as the archive writes it: the windows schema
//!     (`WindowSpec::windows_schema`), rows in emission order (window_end,
//!     key), 100 Parquet files of 100,000 rows (the default `roll_rows`).
//!     Generated once into a temp dir (not timed); `prepare` is timed
//!     end to end (scan, sort, per-key expressions, tensors), `PREP_REPS`
//!     runs, median. Peak RSS (VmHWM) is reported after the first run.
//! (b) `train::train` on prepared data of 128 keys x 640 windows, which
//!     gives exactly 40 origins per key at stride 12, i.e. 5,120 training
//!     samples = 40 batches of 128 in one epoch. One warm-up run, then
//!     `TRAIN_REPS` runs from a fresh network (same seed), median. `train`
//!     also computes the baseline loss once and the validation loss twice
//!     (before and after the epoch; one batch of 128 keys each): the table
//!     gives `TrainReport::samples_per_sec` (everything included) and the
//!     training loop alone (those passes, timed separately, subtracted).
//!
//! (c) With `TRAIN_BENCH_ONLY=c` only: one training pass of a batch of 64
//!     samples x 240 windows (GRU hidden 64, horizon 48, 168 lags) through
//!     the sequence kernels vs the step loop that output-to-hidden
//!     recurrence needs vs output-to-output (kernels + an output loop), and
//!     two layers plain / skip / dense, 3 runs each, mean
//!     (`PROBE_THREADS` libtorch threads, default 1).
//! (d) With `TRAIN_BENCH_ONLY=d` only: no measurement; draws the gradient
//!     reports (`[train] grad_report`) in `GRAD_DIR` as
//!     `grad_decay_{init,trained}.svg` (see BENCHMARKS.md).
//!
//! `TRAIN_BENCH_QUICK=1` shrinks (a) to 100 keys and (b) to one run;
//! `TRAIN_BENCH_PREP_KEYS` sets the keys of (a); `TRAIN_BENCH_ONLY=a` or `=b`
//! runs one part; `PREP_REPS` / `TRAIN_REPS` set the runs;
//! `RUST_LOG=streamcast::train=debug` prints the phases of each `prepare`.

// Test and bench code may unwrap: a failing unwrap is a failing run.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    UInt32Array,
};
use parquet::arrow::ArrowWriter;
use tch::Device;

use streamcast::model::{ModelSpec, Network};
use streamcast::train;
use streamcast::window::{covariates, WindowSpec};

const HOUR: i64 = 3_600_000;
/// 2026-01-05T00:00:00Z, a Monday.
const T0: i64 = 1_767_571_200_000;

fn quick() -> bool {
    std::env::var_os("TRAIN_BENCH_QUICK").is_some()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn status_kb(field: &str) -> i64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(-1)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

const PIPELINE: &str = r#"
[window]
size = "1h"
[window.covariates]
hour_of_day = 2
day_of_week = 1
[model]
cell = "gru"
head = "residual"
hidden = 64
layers = 1
horizon = 24
lags = 24
season_windows = 24
warmup_windows = 24
seed = 42
[train]
epochs = 1
batch_size = 128
lr = 0.003
loss = "mse"
context = 96
stride = 12
tbptt = 48
burn_in = 24
clip_norm = 1.0
patience = 100
seed = 7
threads = 2
"#;

/// A deterministic value in [0, 1).
fn noise(k: usize, w: usize) -> f64 {
    let mut x = (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (w as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    (x % 1_000_000) as f64 / 1e6
}

/// Hourly windows of `keys` keys, `windows` per key, as the window stage
/// emits them (sorted by window_end, then key): one batch per window index.
fn window_batch(spec: &WindowSpec, names: &[String], w: usize) -> RecordBatch {
    let n = names.len();
    let start = T0 + w as i64 * HOUR;
    let starts = vec![start; n];
    let hod = (w % 24) as f64;
    let values: Float64Array = (0..n)
        .map(|k| {
            let level = 20.0 + (k % 50) as f64;
            let phase = (k % 24) as f64;
            Some(
                level * (1.0 + 0.3 * (2.0 * std::f64::consts::PI * (hod + phase) / 24.0).sin())
                    + 3.0 * noise(k, w),
            )
        })
        .collect();
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(names.iter())),
        Arc::new(TimestampMillisecondArray::from(starts.clone()).with_timezone("UTC")),
        Arc::new(TimestampMillisecondArray::from(vec![start + HOUR; n]).with_timezone("UTC")),
        Arc::new(UInt32Array::from(vec![12u32; n])),
        Arc::new(BooleanArray::from(vec![false; n])),
        Arc::new(values),
    ];
    cols.extend(covariates(&spec.covariates, &starts));
    RecordBatch::try_new(spec.windows_schema(), cols).expect("windows batch matches its schema")
}

/// Writes the archive: `files` Parquet files of `windows / files` windows each.
fn write_archive(
    dir: &Path,
    spec: &WindowSpec,
    keys: usize,
    windows: usize,
    files: usize,
) -> Vec<PathBuf> {
    let names: Vec<String> = (0..keys).map(|k| format!("key-{k:06}")).collect();
    let per_file = windows.div_ceil(files);
    let mut paths = Vec::new();
    let mut w = 0;
    while w < windows {
        let path = dir.join(format!("windows-{:04}.parquet", paths.len()));
        let mut wr = ArrowWriter::try_new(
            std::fs::File::create(&path).expect("create parquet"),
            spec.windows_schema(),
            None,
        )
        .expect("writer");
        for w in w..(w + per_file).min(windows) {
            wr.write(&window_batch(spec, &names, w))
                .expect("write batch");
        }
        wr.close().expect("close parquet");
        paths.push(path);
        w += per_file;
    }
    paths
}

fn dir_bytes(paths: &[PathBuf]) -> u64 {
    paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn main() {
    // `RUST_LOG=streamcast::train=debug` prints the preparation's phases.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let cfg = streamcast::testkit::pipeline(PIPELINE);
    let tcfg = cfg.train.clone();
    let spec = WindowSpec::from_config(&cfg);
    let pspec = train::prep_spec(&cfg, &tcfg);
    let mspec = ModelSpec::untrained(&cfg);
    println!(
        "\n# train_throughput: network input {} ({} features), hidden {}, horizon {}; loadavg at start {}",
        mspec.shape.input,
        mspec.features.len(),
        mspec.shape.hidden,
        mspec.horizon,
        loadavg()
    );

    let only = std::env::var("TRAIN_BENCH_ONLY").unwrap_or_default();
    if only == "d" {
        grad_decay_plot();
        return;
    }
    if only == "c" {
        step_kernel_bench();
        return;
    }
    if only != "b" {
        prep_bench(&spec, &pspec, &mspec);
    }
    if only != "a" {
        train_bench(&spec, &pspec, &mspec, &tcfg);
    }
}

/// (d) Plots the gradient reports (`[train] grad_report`) found in
/// `GRAD_DIR`, named `<cell>-clip.csv` / `<cell>-noclip.csv`, into
/// `GRAD_DIR/grad_decay_init.svg` (at initialisation, one curve per cell)
/// and `GRAD_DIR/grad_decay_trained.svg` (after training, with clipping
/// solid and without dashed): the ratio || dL/dh_{T-k} || / || dL/dh_{T-1} ||.
fn grad_decay_plot() {
    use streamcast::eval::plot::{plot_grad_decay, Curve};
    let dir = PathBuf::from(std::env::var("GRAD_DIR").unwrap_or_else(|_| ".".into()));
    let cells = ["rnn", "irnn", "lstm", "gru"];
    let read = |file: &Path, phase: &str| -> Option<Vec<f64>> {
        let text = std::fs::read_to_string(file).ok()?;
        Some(
            text.lines()
                .filter_map(|l| l.strip_prefix(phase)?.strip_prefix(','))
                .filter_map(|l| l.split(',').nth(2)?.parse::<f64>().ok())
                .collect(),
        )
    };
    let (mut init, mut trained) = (Vec::new(), Vec::new());
    for (i, cell) in cells.iter().enumerate() {
        for clip in ["clip", "noclip"] {
            let file = dir.join(format!("{cell}-{clip}.csv"));
            let Some(after) = read(&file, "trained") else {
                continue;
            };
            if clip == "clip" {
                if let Some(before) = read(&file, "init") {
                    init.push(Curve {
                        label: cell.to_string(),
                        values: before,
                        dashed: false,
                        color: i,
                    });
                }
            }
            let label = format!(
                "{cell}, {}",
                if clip == "clip" {
                    "clip_norm 1"
                } else {
                    "no clipping"
                }
            );
            trained.push(Curve {
                label,
                values: after,
                dashed: clip == "noclip",
                color: i,
            });
        }
    }
    let y = "log10 ratio to lag 1";
    plot_grad_decay(
        &init,
        "|| dL_T / dh_(T-k) || at initialisation (M4 Hourly)",
        y,
        &dir.join("grad_decay_init.svg"),
    )
    .unwrap();
    plot_grad_decay(
        &trained,
        "|| dL_T / dh_(T-k) || after training (M4 Hourly)",
        y,
        &dir.join("grad_decay_trained.svg"),
    )
    .unwrap();
    for c in init.iter().chain(&trained) {
        let at = |k: usize| c.values.get(k - 1).copied().unwrap_or(f64::NAN);
        println!(
            "| {} | {:.2e} | {:.2e} | {:.2e} | {:.2e} |",
            c.label,
            at(5),
            at(10),
            at(24),
            at(48)
        );
    }
}

/// Where (b) trains: `TRAIN_BENCH_DEVICE=cuda` on a machine with a GPU (the
/// prepared data stays in host memory; `train` moves each batch), else the CPU.
fn bench_device() -> Device {
    match std::env::var("TRAIN_BENCH_DEVICE").as_deref() {
        Ok("cuda") => {
            assert!(
                tch::Cuda::is_available(),
                "TRAIN_BENCH_DEVICE=cuda but libtorch sees no CUDA device"
            );
            Device::Cuda(0)
        }
        _ => Device::Cpu,
    }
}

/// (c) Sequence kernels vs the step loop, one training pass of a batch.
fn step_kernel_bench() {
    use tch::{Kind, Tensor};
    let threads = env_usize("PROBE_THREADS", 1) as i32;
    tch::set_num_threads(threads);
    println!("\n(c) one training pass of 64 x 240 windows, GRU hidden 64, horizon 48; torch threads {threads}\n");
    println!("| path | ms per batch (mean of 3) |\n|---|---:|");
    let opts = (Kind::Float, Device::Cpu);
    let base =
        "[model]\ncell = \"gru\"\nhidden = 64\nhorizon = 48\nlags = 168\nseason_windows = 24";
    for (name, extra, recur) in [
        ("sequence kernel", "", None),
        (
            "step loop (output-to-hidden recurrence)",
            "output_recurrence = \"hidden\"",
            Some(0i64),
        ),
        (
            "sequence kernel + output loop (output-to-output)",
            "output_recurrence = \"output\"",
            Some(0i64),
        ),
        ("2 layers, plain (one kernel call)", "layers = 2", None),
        (
            "2 layers, skip (a kernel call per layer)",
            "layers = 2\nconnections = \"skip\"",
            None,
        ),
        (
            "2 layers, dense (a kernel call per layer)",
            "layers = 2\nconnections = \"dense\"",
            None,
        ),
    ] {
        let cfg = streamcast::testkit::pipeline(&format!("{base}\n{extra}"));
        let spec = ModelSpec::untrained(&cfg);
        let net = Network::for_spec(&spec, Device::Cpu, 1);
        let b = train::prep::Batch {
            x: Tensor::randn([64, 240, spec.shape.input], opts),
            y: Tensor::randn([64, 240, 48], opts),
            baseline: Tensor::zeros([64, 240, 48], opts),
            loss_mask: Tensor::ones([64, 240], (Kind::Bool, Device::Cpu)),
            valid: Tensor::ones([64, 240], (Kind::Bool, Device::Cpu)),
        };
        let t = Instant::now();
        for _ in 0..3 {
            train::run_batch(&net, &b, 48, &train::Loss::Mae, 0.0, true, recur);
        }
        println!(
            "| {name} | {:.1} |",
            t.elapsed().as_secs_f64() * 1000.0 / 3.0
        );
    }
}

/// (a) polars preparation of the archive.
fn prep_bench(spec: &WindowSpec, pspec: &train::PrepSpec, mspec: &ModelSpec) {
    let (keys, windows) = (
        env_usize("TRAIN_BENCH_PREP_KEYS", if quick() { 100 } else { 10_000 }),
        1000,
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let t = Instant::now();
    let paths = write_archive(tmp.path(), spec, keys, windows, 100);
    let rows = keys * windows;
    println!(
        "\n(a) archive: {keys} keys x {windows} windows = {rows} rows in {} Parquet files, {:.1} MB, generated in {:.1} s (not timed)\n",
        paths.len(),
        dir_bytes(&paths) as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    println!(
        "| {:<34} | {:>10} | {:>9} | {:>9} | {:>12} | {:>13} |",
        "what", "rows", "median s", "best s", "M rows/s", "peak RSS MB"
    );
    println!(
        "|{}|{}:|{}:|{}:|{}:|{}:|",
        "-".repeat(36),
        "-".repeat(11),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(13),
        "-".repeat(14)
    );
    let reps = env_usize("PREP_REPS", if quick() { 1 } else { 3 });
    let rss0 = status_kb("VmRSS:");
    let mut secs = Vec::new();
    let mut peak_mb = 0.0;
    for i in 0..reps {
        let t = Instant::now();
        let data = train::prepare(&paths, pspec).expect("prepare");
        secs.push(t.elapsed().as_secs_f64());
        if i == 0 {
            peak_mb = status_kb("VmHWM:") as f64 / 1024.0;
            assert_eq!(data.inputs.size(), vec![rows as i64, mspec.shape.input]);
            eprintln!(
                "  prepared: inputs {:?}, targets {:?}, {} keys, {} train samples, {} val samples (RSS before {} MB)",
                data.inputs.size(),
                data.targets.size(),
                data.keys.len(),
                data.train_ends.len(),
                data.val_ends.len(),
                rss0 / 1024
            );
        }
        drop(data);
    }
    let best = secs.iter().copied().fold(f64::INFINITY, f64::min);
    let med = median(&mut secs);
    println!(
        "| {:<34} | {rows:>10} | {med:>9.2} | {best:>9.2} | {:>12.3} | {peak_mb:>13.0} |",
        "train::prepare (polars + tensors)",
        rows as f64 / med / 1e6
    );
    drop(tmp);
}

/// (b) training speed.
fn train_bench(
    spec: &WindowSpec,
    pspec: &train::PrepSpec,
    mspec: &ModelSpec,
    tcfg: &streamcast::config::TrainConfig,
) {
    let (tkeys, twindows) = (128, 640);
    let tmp = tempfile::tempdir().expect("temp dir");
    let paths = write_archive(tmp.path(), spec, tkeys, twindows, 1);
    let data = train::prepare(&paths, pspec).expect("prepare");
    let samples = data.train_ends.len();
    let batches = samples.div_ceil(tcfg.batch_size);
    println!(
        "\n(b) train::train: {tkeys} keys x {twindows} windows -> {samples} training samples = {batches} batches of {} \
         (context {}, tbptt {}), {} val samples, {} threads\n",
        tcfg.batch_size,
        tcfg.context,
        tcfg.tbptt,
        data.val_ends.len(),
        tcfg.threads
    );
    let reps = env_usize("TRAIN_REPS", if quick() { 1 } else { 5 });
    let mut wall = Vec::new();
    let mut reported = Vec::new();
    let mut loop_only = Vec::new();
    for i in 0..=reps {
        let mut net = Network::new(mspec.shape, mspec.horizon, bench_device(), mspec.seed);
        let t = Instant::now();
        let rep = train::train(&mut net, &data, tcfg).expect("train");
        let w = t.elapsed().as_secs_f64();
        // The passes `train` makes besides the training loop, timed alone.
        let t = Instant::now();
        let _ = train::baseline_loss(&data, tcfg);
        let _ = train::validation_loss(&net, &data, tcfg);
        let _ = train::validation_loss(&net, &data, tcfg);
        let extra = t.elapsed().as_secs_f64();
        if i == 0 {
            eprintln!(
                "  warm-up run: {:.2} s, {:.0} samples/s, train loss {:?}",
                w, rep.samples_per_sec, rep.train_loss
            );
            continue;
        }
        wall.push(w);
        reported.push(rep.samples_per_sec);
        loop_only.push(samples as f64 / (w - extra));
    }
    println!(
        "| {:<40} | {:>8} | {:>9} | {:>12} | {:>9} |",
        "what", "batches", "median s", "samples/s", "best"
    );
    println!(
        "|{}|{}:|{}:|{}:|{}:|",
        "-".repeat(42),
        "-".repeat(9),
        "-".repeat(10),
        "-".repeat(13),
        "-".repeat(10)
    );
    let best_rep = reported.iter().copied().fold(0.0, f64::max);
    let best_loop = loop_only.iter().copied().fold(0.0, f64::max);
    println!(
        "| {:<40} | {batches:>8} | {:>9.2} | {:>12.0} | {best_rep:>9.0} |",
        "train::train (TrainReport::samples_per_sec)",
        median(&mut wall),
        median(&mut reported)
    );
    println!(
        "| {:<40} | {batches:>8} | {:>9} | {:>12.0} | {best_loop:>9.0} |",
        "  training loop only (val/baseline out)",
        "",
        median(&mut loop_only)
    );
    println!(
        "\n(median of {reps} runs after one warm-up; loadavg at end {})",
        loadavg()
    );
}
