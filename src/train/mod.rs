//! Training: one global network across keys (as DeepAR and the M4 winner
//! ES-RNN), with per-key scaling, on batches prepared by polars (`prep`).
//!
//! - Adam (lr, weight decay), loss MSE / MAE on the scaled targets.
//! - Truncated backpropagation through time: a sample's `L` steps run in
//!   chunks of `tbptt` steps; the state is detached between chunks and each
//!   chunk's loss is backpropagated on its own, so no gradient ever flows
//!   more than `tbptt` steps back.
//! - Gradient clipping by global norm; the norm before clipping is reported.
//! - Early stopping on validation loss (the held-out tail of every key);
//!   the best weights are kept.
//! - A NaN or exploding loss stops training and marks the run diverged:
//!   a diverged model is never promoted.
//! - Seeded: the same data, options and seed give the same model on CPU.
//!
//! libtorch runs on the calling thread: call from a plain thread, never a
//! tokio worker.

pub mod prep;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::nn::OptimizerConfig;
use tch::{nn, Kind, Tensor};

use crate::config::{Head, PipelineConfig};
use crate::error::{Error, Result};
use crate::model::{artifact, ModelSpec, Network};
pub use prep::{prepare, PrepSpec, Prepared};

/// Training options (the `[train]` table of a pipeline file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training samples at most.
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    /// Samples per batch.
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Adam learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Adam weight decay (L2).
    #[serde(default)]
    pub weight_decay: f64,
    /// Loss on the scaled targets: "mse" or "mae".
    #[serde(default = "d_loss")]
    pub loss: String,
    /// Windows of context per sample.
    #[serde(default = "d_context")]
    pub context: i64,
    /// Origins between consecutive samples of a key.
    #[serde(default = "d_stride")]
    pub stride: i64,
    /// Truncation length of backpropagation through time, in windows.
    #[serde(default = "d_tbptt")]
    pub tbptt: i64,
    /// Clip the global gradient norm to this (0 = no clipping).
    #[serde(default = "d_clip")]
    pub clip_norm: f64,
    /// Steps at the start of each sample left out of the loss (cold state).
    #[serde(default = "d_burn")]
    pub burn_in: i64,
    /// Windows at the end of every key held out for validation (>= horizon).
    #[serde(default)]
    pub val_windows: Option<i64>,
    /// Stop after this many epochs without a better validation loss.
    #[serde(default = "d_patience")]
    pub patience: usize,
    /// Dropout between stacked layers during training.
    #[serde(default)]
    pub dropout: f64,
    /// Seed for initialisation and shuffling.
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// libtorch threads while training (1 is fastest for small models on
    /// a shared machine; see BENCHMARKS.md).
    #[serde(default = "d_threads")]
    pub threads: i32,
    /// Stop after this many seconds (the best model so far is kept).
    #[serde(default)]
    pub max_seconds: Option<f64>,
}

fn d_epochs() -> usize {
    20
}
fn d_batch() -> usize {
    128
}
fn d_lr() -> f64 {
    3e-3
}
fn d_loss() -> String {
    "mse".into()
}
fn d_context() -> i64 {
    96
}
fn d_stride() -> i64 {
    12
}
fn d_tbptt() -> i64 {
    48
}
fn d_clip() -> f64 {
    1.0
}
fn d_burn() -> i64 {
    24
}
fn d_patience() -> usize {
    4
}
fn d_seed() -> u64 {
    7
}
fn d_threads() -> i32 {
    // One: the ops of these small recurrent nets are too small to split, and
    // with two OpenMP threads on a busy 2-core machine every op's barrier
    // waits on a descheduled thread — measured 85x slower (BENCHMARKS.md).
    1
}

impl Default for TrainConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

/// Set when the process is shutting down: running trainings stop at the
/// next batch and report `cancelled` (a cancelled run is never promoted).
/// libtorch must not be mid-computation on another thread while the
/// process exits, so the job asks, then waits for the trainer to return.
static CANCEL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn request_cancel() {
    CANCEL.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn cancelled() -> bool {
    CANCEL.load(std::sync::atomic::Ordering::SeqCst)
}

/// What one training run did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    /// Stopped early because the process is shutting down.
    #[serde(default)]
    pub cancelled: bool,
    pub epochs: usize,
    pub best_epoch: usize,
    pub train_loss: Vec<f64>,
    pub val_loss: Vec<f64>,
    /// Validation loss of a network that outputs zeros (seasonal naive for
    /// the residual head): the bar to clear.
    pub baseline_val_loss: f64,
    pub best_val_loss: f64,
    /// Largest global gradient norm seen before clipping, and after.
    pub max_grad_norm: f64,
    pub max_clipped_norm: f64,
    pub samples_per_sec: f64,
    pub seconds: f64,
    pub diverged: bool,
}

/// Builds the `PrepSpec` of a pipeline with these training options.
pub fn prep_spec(cfg: &PipelineConfig, t: &TrainConfig) -> PrepSpec {
    let spec = crate::window::WindowSpec::from_config(cfg);
    PrepSpec {
        recur: cfg.model.output_recurrence.then(|| {
            cfg.model
                .quantiles
                .iter()
                .position(|q| *q == 0.5)
                .unwrap_or(0) as i64
                * cfg.model.horizon
        }),
        quantiles: cfg.model.quantiles.clone(),
        key: "key".into(),
        value_fields: cfg.decode.value_fields.clone(),
        covariates: spec.covariate_names(),
        lags: cfg.lags(),
        horizon: cfg.model.horizon,
        season: cfg.model.season_windows as i64,
        head: cfg.model.head,
        context: t.context,
        stride: t.stride,
        val_windows: t
            .val_windows
            .unwrap_or(cfg.model.horizon * 2)
            .max(cfg.model.horizon),
        time_range: None,
        warmup: cfg.model.warmup_windows as i64,
    }
}

/// The loss of a batch: MSE, MAE, or (with quantiles) the pinball loss
/// averaged over quantiles.
#[derive(Debug, Clone)]
pub enum Loss {
    Mse,
    Mae,
    Pinball(Vec<f64>),
}

impl Loss {
    pub fn of(t: &TrainConfig, quantiles: &[f64]) -> Self {
        if !quantiles.is_empty() {
            Loss::Pinball(quantiles.to_vec())
        } else if t.loss == "mae" {
            Loss::Mae
        } else {
            Loss::Mse
        }
    }
}

/// Sum of the loss over masked terms, and the number of terms.
/// `pred: [B, T, Q*H]` (quantile-major), `y: [B, T, H]`, `mask: [B, T]`.
fn masked_loss(pred: &Tensor, y: &Tensor, mask: &Tensor, loss: &Loss) -> (Tensor, Tensor) {
    let m = mask.to_kind(Kind::Float).unsqueeze(2);
    let h = y.size()[2];
    let per = match loss {
        Loss::Mse => (pred - y).square(),
        Loss::Mae => (pred - y).abs(),
        Loss::Pinball(qs) => {
            let nq = qs.len() as i64;
            let q = Tensor::from_slice(qs)
                .to_kind(Kind::Float)
                .repeat_interleave_self_int(h, Some(0), None::<i64>);
            let e = y.repeat([1, 1, nq]) - pred; // y - p
            let q = q.view([1, 1, -1]);
            (&e * &q).maximum(&(&e * (q - 1.0)))
        }
    };
    let total = (per * &m).sum(Kind::Float);
    let count = m.sum(Kind::Float) * pred.size()[2] as f64;
    (total, count)
}

/// Runs the network over a batch in TBPTT chunks (libtorch's sequence
/// kernels within a chunk, the state detached between chunks). With
/// `train`, backpropagates each chunk on its own. Returns (sum of loss,
/// count of terms).
#[cfg(test)]
fn run_batch(
    net: &Network,
    b: &prep::Batch,
    tbptt: i64,
    loss: &Loss,
    dropout: f64,
    train: bool,
) -> (f64, f64) {
    run_batch_with(net, b, tbptt, loss, dropout, train, None)
}

/// `run_batch`; with `recur = Some(i)`, output recurrence: the inputs' last
/// column is replaced, step by step, by output column `i` of the previous
/// step (the fed-back one-step output), so the chunk runs one step at a time.
fn run_batch_with(
    net: &Network,
    b: &prep::Batch,
    tbptt: i64,
    loss: &Loss,
    dropout: f64,
    train: bool,
    recur: Option<i64>,
) -> (f64, f64) {
    let bsz = b.x.size()[0];
    let l = b.x.size()[1];
    let n_in = b.x.size()[2];
    let (mut h, mut c) = net.zero_state(bsz);
    let mut prev = Tensor::zeros([bsz, 1], (Kind::Float, b.x.device()));
    let (mut sum, mut count) = (0.0, 0.0);
    let mut t0 = 0;
    while t0 < l {
        let len = tbptt.max(1).min(l - t0);
        h = h.detach();
        c = c.map(|c| c.detach());
        prev = prev.detach();
        let pred = match recur {
            None => {
                let (pred, hn, cn) =
                    net.forward_seq(&b.x.narrow(1, t0, len), &h, c.as_ref(), dropout, train);
                h = hn;
                c = cn;
                pred
            }
            Some(col) => {
                let mut preds = Vec::with_capacity(len as usize);
                for t in t0..t0 + len {
                    let x = Tensor::cat(
                        &[
                            b.x.select(1, t).narrow(1, 0, n_in - 1),
                            prev.shallow_clone(),
                        ],
                        1,
                    );
                    let (y, hn, cn) =
                        net.step(&x, &h, c.as_ref(), if train { dropout } else { 0.0 });
                    prev = y.narrow(1, col, 1);
                    h = hn;
                    c = cn;
                    preds.push(y);
                }
                Tensor::stack(&preds, 1)
            }
        };
        let (s, n) = masked_loss(
            &pred,
            &b.y.narrow(1, t0, len),
            &b.loss_mask.narrow(1, t0, len),
            loss,
        );
        let n_f = f64::try_from(&n).unwrap_or(0.0);
        if train && n_f > 0.0 {
            // Normalised per chunk by the batch's terms so chunks weigh alike.
            (&s / n_f.max(1.0)).backward();
        }
        sum += f64::try_from(&s.detach()).unwrap_or(f64::NAN);
        count += n_f;
        t0 += len;
    }
    (sum, count)
}

/// Global gradient norm of the trainable variables; scales them to `max`
/// when above it (max <= 0: no clipping). Returns the norm before clipping.
pub fn clip_global_norm(vs: &nn::VarStore, max: f64) -> f64 {
    let vars = vs.trainable_variables();
    let mut sq = 0.0;
    for v in &vars {
        let g = v.grad();
        if g.defined() {
            sq += f64::try_from(&g.square().sum(Kind::Double)).unwrap_or(f64::NAN);
        }
    }
    let norm = sq.sqrt();
    if max > 0.0 && norm > max {
        let factor = max / (norm + 1e-12);
        tch::no_grad(|| {
            for v in &vars {
                let mut g = v.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(factor);
                }
            }
        });
    }
    norm
}

/// Global gradient norm without changing anything.
pub fn grad_norm(vs: &nn::VarStore) -> f64 {
    clip_global_norm(vs, 0.0)
}

/// Validation loss of `net` on the prepared holdout (mean per term).
pub fn validation_loss(net: &Network, data: &Prepared, cfg: &TrainConfig) -> f64 {
    let loss = Loss::of(cfg, &data.quantiles);
    tch::no_grad(|| {
        let (mut s, mut n) = (0.0, 0.0);
        for chunk in data.val_ends.chunks(cfg.batch_size.max(1)) {
            let b = data.batch(chunk, &data.val_origin, cfg.burn_in.min(data.context - 1));
            let (cs, cn) = run_batch_with(net, &b, data.context, &loss, 0.0, false, data.recur);
            s += cs;
            n += cn;
        }
        if n > 0.0 {
            s / n
        } else {
            f64::NAN
        }
    })
}

/// Validation loss of a network that outputs zeros: the bar to clear.
pub fn baseline_loss(data: &Prepared, cfg: &TrainConfig) -> f64 {
    let loss = Loss::of(cfg, &data.quantiles);
    let nq = data.quantiles.len().max(1) as i64;
    let (mut s, mut n) = (0.0, 0.0);
    for chunk in data.val_ends.chunks(cfg.batch_size.max(1)) {
        let b = data.batch(chunk, &data.val_origin, cfg.burn_in.min(data.context - 1));
        // Zero output scores the targets' own size; in these units the
        // baseline is `y - baseline` for the direct head, `y` for residual.
        let zero = (b.y.zeros_like() + (&b.y - &b.baseline)).repeat([1, 1, nq]);
        let (cs, cn) = masked_loss(&zero, &b.y, &b.loss_mask, &loss);
        s += f64::try_from(&cs).unwrap_or(f64::NAN);
        n += f64::try_from(&cn).unwrap_or(0.0);
    }
    if n > 0.0 {
        s / n
    } else {
        f64::NAN
    }
}

/// Trains `net` in place on `data`; keeps the weights of the best
/// validation epoch.
pub fn train(net: &mut Network, data: &Prepared, cfg: &TrainConfig) -> Result<TrainReport> {
    if data.train_ends.is_empty() {
        return Err(Error::Model(format!(
            "not enough history to train: every key needs more than {} windows (validation) + {} (horizon)",
            cfg.val_windows.unwrap_or(0),
            net.horizon
        )));
    }
    tch::set_num_threads(cfg.threads);
    // Only dropout draws from libtorch's generator here (initial weights were
    // drawn under the seeding lock in `Network::new`).
    drop(crate::model::seed_global(cfg.seed as i64));
    let started = Instant::now();
    let mut opt = nn::Adam::default()
        .wd(cfg.weight_decay)
        .build(&net.vs, cfg.lr)?;
    let burn = cfg.burn_in.min(data.context - 1);
    let loss = Loss::of(cfg, &data.quantiles);
    let baseline = baseline_loss(data, cfg);
    let mut best = validation_loss(net, data, cfg);
    let mut best_weights = snapshot(&net.vs);
    let mut report = TrainReport {
        cancelled: false,
        epochs: 0,
        best_epoch: 0,
        train_loss: Vec::new(),
        val_loss: Vec::new(),
        baseline_val_loss: baseline,
        best_val_loss: best,
        max_grad_norm: 0.0,
        max_clipped_norm: 0.0,
        samples_per_sec: 0.0,
        seconds: 0.0,
        diverged: false,
    };
    let bar = progress(cfg.epochs as u64);
    let mut since_best = 0;
    let mut samples = 0usize;
    'epochs: for epoch in 1..=cfg.epochs {
        let ends = data.shuffled_train_ends(cfg.seed.wrapping_add(epoch as u64));
        let (mut s, mut n) = (0.0, 0.0);
        for chunk in ends.chunks(cfg.batch_size.max(1)) {
            let b = data.batch(chunk, &data.train_origin, burn);
            opt.zero_grad();
            let (cs, cn) = run_batch_with(net, &b, cfg.tbptt, &loss, cfg.dropout, true, data.recur);
            let norm = clip_global_norm(&net.vs, cfg.clip_norm);
            report.max_grad_norm = report.max_grad_norm.max(norm);
            let clipped = if cfg.clip_norm > 0.0 {
                norm.min(cfg.clip_norm)
            } else {
                norm
            };
            report.max_clipped_norm = report.max_clipped_norm.max(clipped);
            if !cs.is_finite() || !norm.is_finite() {
                report.diverged = true;
                tracing::warn!(epoch, "training diverged (non-finite loss or gradient); keeping the best weights so far");
                break 'epochs;
            }
            opt.step();
            s += cs;
            n += cn;
            samples += chunk.len();
            if cfg
                .max_seconds
                .is_some_and(|m| started.elapsed().as_secs_f64() > m)
            {
                break;
            }
            if cancelled() {
                report.cancelled = true;
                break 'epochs;
            }
        }
        let train_loss = s / n.max(1.0);
        let val = validation_loss(net, data, cfg);
        report.epochs = epoch;
        report.train_loss.push(train_loss);
        report.val_loss.push(val);
        if !val.is_finite() {
            report.diverged = true;
            break;
        }
        if val < best || !best.is_finite() {
            best = val;
            report.best_epoch = epoch;
            best_weights = snapshot(&net.vs);
            since_best = 0;
        } else {
            since_best += 1;
        }
        let sps = samples as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(epoch as u64);
        bar.set_message(format!(
            "train {train_loss:.4}  val {val:.4}  (baseline {baseline:.4})  {sps:.0} samples/s"
        ));
        if !bar.is_hidden() {
        } else {
            tracing::info!(
                epoch,
                train_loss,
                val_loss = val,
                baseline_val_loss = baseline,
                samples_per_sec = sps,
                "epoch"
            );
        }
        if since_best >= cfg.patience
            || cfg
                .max_seconds
                .is_some_and(|m| started.elapsed().as_secs_f64() > m)
        {
            break;
        }
    }
    bar.finish_and_clear();
    restore(&mut net.vs, &best_weights);
    report.best_val_loss = best;
    report.seconds = started.elapsed().as_secs_f64();
    report.samples_per_sec = samples as f64 / report.seconds.max(1e-9);
    Ok(report)
}

fn progress(n: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(n);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} epoch {pos}/{len} [{bar:20}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

fn snapshot(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect()
}

fn restore(vs: &mut nn::VarStore, w: &BTreeMap<String, Tensor>) {
    tch::no_grad(|| {
        for (k, mut v) in vs.variables() {
            if let Some(src) = w.get(&k) {
                v.copy_(src);
            }
        }
    });
}

/// A trained model ready to save: network, spec (with metrics) and report.
pub struct Trained {
    pub net: Network,
    pub spec: ModelSpec,
    pub report: TrainReport,
}

/// Trains a fresh network for a pipeline on window Parquet files.
pub fn train_from_windows(
    cfg: &PipelineConfig,
    t: &TrainConfig,
    windows: &[PathBuf],
    init: Option<&Network>,
) -> Result<Trained> {
    let data = prepare(windows, &prep_spec(cfg, t))?;
    train_prepared(cfg, t, &data, init)
}

/// Trains on prepared data, from `init`'s weights when given (fine-tuning
/// the champion), else from a fresh seeded initialisation.
pub fn train_prepared(
    cfg: &PipelineConfig,
    t: &TrainConfig,
    data: &Prepared,
    init: Option<&Network>,
) -> Result<Trained> {
    let mut spec = ModelSpec::untrained(cfg);
    let device = crate::model::device_for(&cfg.model.device);
    let mut net = Network::for_spec(&spec, device, t.seed as i64);
    if let Some(src) = init {
        net.vs.copy(&src.vs)?;
    }
    let report = train(&mut net, data, t)?;
    spec.version = format!(
        "{:?}-{}-{:08x}",
        spec.shape.kind,
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        (report.best_val_loss.to_bits() ^ t.seed) as u32
    )
    .to_lowercase();
    spec.trained_on = Some(data.time_range);
    // JSON holds no NaN: a non-finite metric is left out (the report keeps it).
    for (k, v) in [
        ("val_loss", report.best_val_loss),
        ("baseline_val_loss", report.baseline_val_loss),
        ("epochs", report.epochs as f64),
    ] {
        if v.is_finite() {
            spec.metrics.insert(k.into(), v);
        }
    }
    spec.seed = t.seed as i64;
    if matches!(cfg.model.head, Head::Residual | Head::Direct) {
        spec.head = cfg.model.head;
    }
    Ok(Trained { net, spec, report })
}

/// Saves a trained model under `dir/<version>/`.
pub fn save(trained: &Trained, dir: &std::path::Path) -> Result<PathBuf> {
    let out = dir.join(&trained.spec.version);
    artifact::save(&trained.net, &trained.spec, &out)?;
    let report =
        serde_json::to_string_pretty(&trained.report).map_err(|e| Error::Model(e.to_string()))?;
    std::fs::write(out.join("train_report.json"), report)
        .map_err(|e| Error::io(format!("writing {}", out.display()), e))?;
    Ok(out)
}

/// Runs events (schema of `decode::events_schema`) through the pipeline's
/// own window stage, closing every window up to the newest event time minus
/// the allowed lateness (as a backfill does). The batches have the archive's
/// schema.
pub fn windows_from_events(
    cfg: &PipelineConfig,
    events: &arrow::array::RecordBatch,
) -> Vec<arrow::array::RecordBatch> {
    windows_from_events_until(cfg, events, None)
}

/// As `windows_from_events`, then, for a bounded input known to be complete,
/// closes every window ending at or before `final_watermark_ms`.
pub fn windows_from_events_until(
    cfg: &PipelineConfig,
    events: &arrow::array::RecordBatch,
    final_watermark_ms: Option<i64>,
) -> Vec<arrow::array::RecordBatch> {
    let mut stage = crate::window::WindowStage::new(crate::window::WindowSpec::from_config(cfg));
    let mut out = Vec::new();
    let chunk = 65_536;
    let mut off = 0;
    while off < events.num_rows() {
        let len = chunk.min(events.num_rows() - off);
        if let Some(w) = stage.process(&events.slice(off, len), 0).windows {
            out.push(w);
        }
        off += len;
    }
    if let Some(wm) = final_watermark_ms {
        if let Some(w) = stage.finish(wm, 0).windows {
            out.push(w);
        }
    }
    out
}

/// Writes window batches to one Parquet file (the archive's format).
pub fn write_windows(
    batches: &[arrow::array::RecordBatch],
    schema: arrow::datatypes::SchemaRef,
    path: &std::path::Path,
) -> Result<()> {
    let file = std::fs::File::create(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None)?;
    for b in batches {
        w.write(b)?;
    }
    w.close()?;
    Ok(())
}

#[cfg(test)]
mod tests;
