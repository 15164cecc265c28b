//! Training: one global network across keys (as DeepAR and the M4 winner
//! ES-RNN), with per-key scaling, on batches prepared by polars (`prep`).
//!
//! - Adam (lr, weight decay), loss MSE / MAE on the scaled targets.
//! - Truncated backpropagation through time: a sample's `L` steps run in
//!   chunks of `tbptt` steps; the state is detached between chunks and each
//!   chunk's loss is backpropagated on its own, so no gradient ever flows
//!   more than `tbptt` steps back.
//! - Gradient clipping by global norm; the norm before clipping is reported,
//!   and how many optimizer steps were clipped. With `[train] grad_report`,
//!   how d loss / d h decays over the lags (`grad_decay`) before and after.
//! - Early stopping on validation loss (the held-out tail of every key);
//!   the best weights are kept.
//! - A NaN or exploding loss stops training and marks the run diverged:
//!   a diverged model is never promoted.
//! - Seeded: the same data, options and seed give the same model on CPU.
//!
//! libtorch runs on the calling thread: call from a plain thread, never a
//! tokio worker.

mod loss;
pub mod prep;
#[cfg(test)]
mod prep_reference;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::nn::OptimizerConfig;
use tch::{nn, Kind, Tensor};

use crate::config::{Head, PipelineConfig, TrainConfig};
use crate::error::{Error, Result};
use crate::model::{ModelSpec, Network};
use loss::masked_loss;
pub use loss::Loss;
pub use prep::{prepare, PrepSpec, Prepared};

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
    /// Optimizer steps taken, and how many of them had their gradient
    /// clipped (global norm above `clip_norm`).
    #[serde(default)]
    pub steps: usize,
    #[serde(default)]
    pub clipped_steps: usize,
}

/// Builds the `PrepSpec` of a pipeline with these training options.
pub fn prep_spec(cfg: &PipelineConfig, t: &TrainConfig) -> PrepSpec {
    let spec = crate::window::WindowSpec::from_config(cfg);
    PrepSpec {
        recur: cfg.model.output_recurrence.enabled().then(|| {
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
        hybrid: cfg
            .model
            .hybrid
            .as_ref()
            .map(|h| (crate::model::hybrid::params_of(h), h.mode)),
        scaler_decay: crate::model::artifact::Scaler::of_config(&cfg.model).decay(),
    }
}

/// Runs the network over a batch in TBPTT chunks (libtorch's sequence
/// kernels within a chunk, the state detached between chunks). With
/// `train`, backpropagates each chunk on its own. Returns (sum of loss,
/// count of terms). With `recur = Some(i)`, output recurrence: the inputs'
/// last column is replaced, step by step, by output column `i` of the
/// previous step (the fed-back one-step output): output-to-hidden runs the
/// chunk one step at a time; output-to-output runs the cells with the
/// sequence kernels and only the output layer step by step
/// (`Network::forward_seq_fed`).
#[allow(clippy::too_many_arguments)]
pub fn run_batch(
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
            Some(col) if net.feeds_output() => {
                let (pred, hn, cn, p) = net.forward_seq_fed(
                    &b.x.narrow(1, t0, len),
                    &h,
                    c.as_ref(),
                    &prev,
                    col,
                    dropout,
                    train,
                );
                h = hn;
                c = cn;
                prev = p;
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
            let b = data.batch_on(
                chunk,
                &data.val_origin,
                cfg.burn_in.min(data.context - 1),
                net.vs.device(),
            );
            let (cs, cn) = run_batch(net, &b, data.context, &loss, 0.0, false, data.recur);
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
        return Err(Error::Training(format!(
            "not enough history to train: every key needs more than {} windows (validation) + {} (horizon)",
            cfg.val_windows.unwrap_or(0),
            net.horizon
        )));
    }
    tch::set_num_threads(cfg.threads);
    // Only dropout draws from libtorch's generator here (initial weights were
    // drawn under the seeding lock in `Network::new`).
    drop(crate::model::seed_global(cfg.seed as i64));
    // The gradient report is not training: measured before the clock starts.
    let decay_before = cfg
        .grad_report
        .as_ref()
        .map(|_| grad_decay(net, data, cfg, GRAD_REPORT_BATCHES));
    let mut started = Instant::now();
    // With a gradient report, the curve after each epoch: (epoch, curve,
    // steps and clipped steps in that epoch).
    let mut epoch_curves: Vec<(usize, Vec<f64>, usize, usize)> = Vec::new();
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
        steps: 0,
        clipped_steps: 0,
    };
    let bar = progress(cfg.epochs as u64);
    let mut since_best = 0;
    let mut samples = 0usize;
    'epochs: for epoch in 1..=cfg.epochs {
        let ends = data.shuffled_train_ends(cfg.seed.wrapping_add(epoch as u64));
        let (mut s, mut n) = (0.0, 0.0);
        for chunk in ends.chunks(cfg.batch_size.max(1)) {
            let b = data.batch_on(chunk, &data.train_origin, burn, net.vs.device());
            opt.zero_grad();
            let (cs, cn) = run_batch(net, &b, cfg.tbptt, &loss, cfg.dropout, true, data.recur);
            let norm = clip_global_norm(&net.vs, cfg.clip_norm);
            report.max_grad_norm = report.max_grad_norm.max(norm);
            let clipped = if cfg.clip_norm > 0.0 {
                norm.min(cfg.clip_norm)
            } else {
                norm
            };
            report.max_clipped_norm = report.max_clipped_norm.max(clipped);
            report.steps += 1;
            report.clipped_steps += usize::from(cfg.clip_norm > 0.0 && norm > cfg.clip_norm);
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
        if cfg.grad_report.is_some() {
            // Not training either: the clock skips it.
            let t = Instant::now();
            let curve = grad_decay(net, data, cfg, GRAD_REPORT_BATCHES);
            let (steps, clipped) = epoch_curves.iter().fold(
                (report.steps, report.clipped_steps),
                |(s, c), (_, _, es, ec)| (s - es, c - ec),
            );
            epoch_curves.push((epoch, curve, steps, clipped));
            started += t.elapsed();
        }
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
    if let (Some(path), Some(before)) = (&cfg.grad_report, decay_before) {
        let after = grad_decay(net, data, cfg, GRAD_REPORT_BATCHES);
        write_grad_report(path, &before, &epoch_curves, &after, &report)?;
    }
    Ok(report)
}

/// Batches of training samples the gradient report averages over.
const GRAD_REPORT_BATCHES: usize = 2;

/// How the gradient of the loss with respect to the hidden state decays
/// with the lag: for the first `batches` batches of training samples (in
/// order, not shuffled), the network runs the whole context step by step
/// (`Network::step`, fed-back outputs included) with *full*
/// backpropagation (no truncation, no dropout), and `out[k - 1]` is the
/// mean over samples of `|| d L_T / d h_{T-k} ||` for k = 1.. (all layers'
/// `h`, Frobenius), `L_T` the loss at the batch's last scored step T,
/// `h_{T-k}` the state after step `T - k` (k = 1: the state entering the
/// scored step). Samples not scored at T are left out. A curve falling by orders
/// of magnitude is a vanishing gradient; a rising one, an exploding one.
/// TBPTT cuts the real training gradient at `tbptt` steps whatever this shows.
pub fn grad_decay(net: &Network, data: &Prepared, cfg: &TrainConfig, batches: usize) -> Vec<f64> {
    let loss = Loss::of(cfg, &data.quantiles);
    let mut sum: Vec<f64> = Vec::new();
    // Samples that reached each lag (batches may end at other steps).
    let mut counts: Vec<f64> = Vec::new();
    for chunk in data
        .train_ends
        .chunks(cfg.batch_size.max(1))
        .take(batches.max(1))
    {
        let b = data.batch_on(chunk, &data.train_origin, 0, net.vs.device());
        let (bsz, n_in) = (b.x.size()[0], b.x.size()[2]);
        let (mut h, mut c) = net.zero_state(bsz);
        let mut prev = Tensor::zeros([bsz, 1], (Kind::Float, b.x.device()));
        // The last step any sample of the batch is scored at (training
        // samples end before the validation tail, so it is not always L-1).
        let scored = Vec::<bool>::try_from(&b.loss_mask.any_dim(0, false)).unwrap_or_default();
        let Some(l) = scored
            .iter()
            .rposition(|s| *s)
            .map(|t| t as i64 + 1)
            .filter(|l| *l >= 2)
        else {
            continue;
        };
        let mut hs = Vec::with_capacity(l as usize);
        let mut last = None;
        for t in 0..l {
            // The state entering step t (after step t - 1): what the loss
            // reaches only through the recurrence.
            if t > 0 {
                hs.push(h.shallow_clone());
            }
            let x = match data.recur {
                Some(_) => Tensor::cat(
                    &[
                        b.x.select(1, t).narrow(1, 0, n_in - 1),
                        prev.shallow_clone(),
                    ],
                    1,
                ),
                None => b.x.select(1, t),
            };
            let (y, hn, cn) = net.step(&x, &h, c.as_ref(), 0.0);
            if let Some(col) = data.recur {
                prev = y.narrow(1, col, 1);
            }
            h = hn;
            c = cn;
            last = Some(y);
        }
        let Some(y) = last else { continue };
        // Per-sample losses summed, so each sample's gradient is its own.
        let (s, _) = masked_loss(
            &y.unsqueeze(1),
            &b.y.narrow(1, l - 1, 1),
            &b.loss_mask.narrow(1, l - 1, 1),
            &loss,
        );
        // A state that does not depend on the weights (the transformer's
        // ring of inputs) has no gradient to report.
        if !s.requires_grad() || hs.iter().any(|h| !h.requires_grad()) {
            continue;
        }
        let Ok(grads) = Tensor::f_run_backward(&[&s], &hs, false, false) else {
            continue;
        };
        // [L][n]: per-sample norms at each step.
        let norms: Vec<Vec<f64>> = grads
            .iter()
            .map(|g| {
                if !g.defined() {
                    return vec![0.0; bsz as usize];
                }
                let per = g
                    .square()
                    .sum_dim_intlist([0i64, 2].as_slice(), false, Kind::Double);
                Vec::<f64>::try_from(&per.sqrt()).unwrap_or_default()
            })
            .collect();
        let Some(at_last) = norms.last() else {
            continue;
        };
        let scored: Vec<usize> = (0..at_last.len()).filter(|&i| at_last[i] > 0.0).collect();
        // norms[j]: the state after step j, at lag k = lags - j (1..=lags).
        let lags = norms.len();
        if sum.len() < lags {
            sum.resize(lags, 0.0);
            counts.resize(lags, 0.0);
        }
        for k in 1..=lags {
            counts[k - 1] += scored.len() as f64;
            let row = &norms[lags - k];
            sum[k - 1] += scored
                .iter()
                .map(|&i| row.get(i).copied().unwrap_or(0.0))
                .sum::<f64>();
        }
    }
    sum.iter()
        .zip(&counts)
        .map(|(v, n)| v / n.max(1.0))
        .collect()
}

/// Writes the gradient report: `phase,k,grad_norm,ratio` rows (`ratio` =
/// the norm at lag k over the norm at lag 1) for the phases `init`,
/// `epoch_1`, `epoch_2`, ... (the weights at the end of each epoch) and
/// `trained` (the best weights, the ones kept), then the clipping counts
/// as `#` comment lines (per epoch, then in all).
fn write_grad_report(
    path: &std::path::Path,
    before: &[f64],
    epochs: &[(usize, Vec<f64>, usize, usize)],
    after: &[f64],
    report: &TrainReport,
) -> Result<()> {
    use std::fmt::Write as _;
    let mut out = String::from("phase,k,grad_norm,ratio\n");
    let phases = std::iter::once(("init".to_string(), before))
        .chain(
            epochs
                .iter()
                .map(|(e, c, _, _)| (format!("epoch_{e}"), &c[..])),
        )
        .chain(std::iter::once(("trained".to_string(), after)));
    for (phase, curve) in phases {
        let first = curve.first().copied().unwrap_or(f64::NAN);
        for (k, v) in curve.iter().enumerate() {
            let _ = writeln!(out, "{phase},{},{v:e},{:e}", k + 1, v / first);
        }
    }
    for (e, _, steps, clipped) in epochs {
        let _ = writeln!(out, "# epoch {e} steps {steps} clipped {clipped}");
    }
    let _ = writeln!(
        out,
        "# steps {} clipped {} max_grad_norm {:e}",
        report.steps, report.clipped_steps, report.max_grad_norm
    );
    std::fs::write(path, out).map_err(|e| Error::io(format!("writing {}", path.display()), e))
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
    let device = crate::model::device_for(cfg.model.device);
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

#[cfg(test)]
mod tests;
