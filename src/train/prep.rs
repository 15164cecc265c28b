//! Training batches from archived windows, prepared with polars.
//!
//! A polars `LazyFrame` scans the window Parquet files (the archive, or any
//! file with the windows schema), keeps the time range asked for, sorts by
//! key and time, and computes with expressions, per key:
//! - the *online* scaler exactly as the forecast stage keeps it (expanding
//!   count/mean/variance over non-missing values, the same floor), so the
//!   network sees in training what it will see live;
//! - the network inputs (scaled fields, the target's missing flag,
//!   covariates) — the same features as `model::network_input`;
//! - for every horizon step h, the target in scaled units: for the residual
//!   head `(y[t+h] - snaive_t(h)) / scale_t`, where snaive is what the store's
//!   ring gives at runtime; for the direct head `(y[t+h] - mean_t) / scale_t`.
//!
//! The result is a few flat tensors (rows = windows of all keys, keys
//! contiguous) plus per-key offsets. A *sample* is a context of `L` windows
//! of one key ending at an origin `t`; batches gather their rows with one
//! index tensor (no per-row loops). Validation is the last `val_windows`
//! windows of every key: validation origins have all their targets there,
//! training origins have none of theirs there, so validation data never
//! leaks into training.

use std::path::PathBuf;

use polars::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Kind, Tensor};

use crate::config::Head;
use crate::model::SCALED_CLAMP;

/// `e` clamped to ±SCALED_CLAMP (NaN stays NaN), as the live stage does.
fn clamped(e: Expr) -> Expr {
    let c = SCALED_CLAMP;
    when(e.clone().gt(lit(c)))
        .then(lit(c))
        .when(e.clone().lt(lit(-c)))
        .then(lit(-c))
        .otherwise(e)
}
use crate::error::{Error, Result};

/// What to prepare.
#[derive(Debug, Clone)]
pub struct PrepSpec {
    pub key: String,
    pub value_fields: Vec<String>,
    pub covariates: Vec<String>,
    /// Target lags fed as inputs (1..=lags).
    pub lags: i64,
    pub horizon: i64,
    pub season: i64,
    pub head: Head,
    /// Quantiles the model forecasts (pinball loss); empty = point only.
    pub quantiles: Vec<f64>,
    /// Output recurrence: the output column fed back as the last input
    /// (a placeholder column of zeros is prepared for it).
    pub recur: Option<i64>,
    /// Windows of context per sample.
    pub context: i64,
    /// Origins between consecutive training samples of a key.
    pub stride: i64,
    /// Last windows of every key held out for validation (>= horizon).
    pub val_windows: i64,
    /// Event-time range of `window_end` (ms) to use; None = all.
    pub time_range: Option<(i64, i64)>,
    /// Origins within a key's first `warmup` windows are served by the
    /// baseline at runtime (and their scaler is still unsettled): they are
    /// context, never loss terms.
    pub warmup: i64,
}

/// Prepared training data.
pub struct Prepared {
    /// `[rows, n_in]` network inputs.
    pub inputs: Tensor,
    /// `[rows, H]` targets in scaled units for the spec's head (NaN where unknown).
    pub targets: Tensor,
    /// `[rows, H]` seasonal-naive targets in the same units (what a
    /// network that knows nothing would score).
    pub baseline: Tensor,
    /// `[rows]` true where the row is a training origin with all targets known.
    pub train_origin: Tensor,
    /// `[rows]` true where the row is a validation origin with all targets known.
    pub val_origin: Tensor,
    /// Per key: (first row, number of rows).
    pub keys: Vec<(i64, i64)>,
    /// Training sample ends (row indices), before shuffling.
    pub train_ends: Vec<i64>,
    /// One validation sample end per key (its last validation origin).
    pub val_ends: Vec<i64>,
    pub context: i64,
    pub quantiles: Vec<f64>,
    pub recur: Option<i64>,
    /// Event-time range (ms) of the windows used.
    pub time_range: (i64, i64),
    pub n_inputs: i64,
}

/// Reads window Parquet files and prepares tensors.
pub fn prepare(paths: &[PathBuf], spec: &PrepSpec) -> Result<Prepared> {
    if paths.is_empty() {
        return Err(Error::Training(
            "no training data: no window files given".into(),
        ));
    }
    let scans = paths
        .iter()
        .map(|p| {
            let s = p.to_string_lossy().to_string();
            LazyFrame::scan_parquet(PlRefPath::new(s.as_str()), ScanArgsParquet::default())
                .map_err(Error::Polars)
        })
        .collect::<Result<Vec<_>>>()?;
    let lf = concat(scans, UnionArgs::default()).map_err(Error::Polars)?;
    prepare_lazy(lf, spec)
}

/// Prepares tensors from a lazy frame with the windows schema.
pub fn prepare_lazy(lf: LazyFrame, spec: &PrepSpec) -> Result<Prepared> {
    let k = || [col(spec.key.as_str())];
    let h_max = spec.horizon;
    let season = spec.season.max(1);
    let mut sel: Vec<Expr> = vec![
        col(spec.key.as_str()),
        col("window_end").cast(DataType::Int64).alias("end_ms"),
    ];
    sel.extend(
        spec.value_fields
            .iter()
            .map(|f| col(f.as_str()).cast(DataType::Float64)),
    );
    sel.extend(
        spec.covariates
            .iter()
            .map(|f| col(f.as_str()).cast(DataType::Float64)),
    );
    let mut lf = lf.select(sel);
    if let Some((a, b)) = spec.time_range {
        lf = lf.filter(col("end_ms").gt_eq(lit(a)).and(col("end_ms").lt_eq(lit(b))));
    }
    let mut lf = lf
        .sort(
            [spec.key.as_str(), "end_ms"],
            SortMultipleOptions::default(),
        )
        .with_columns([
            col(spec.key.as_str())
                .cum_count(false)
                .over(k())
                .map_err(Error::Polars)?
                .cast(DataType::Int64)
                .alias("__seen"),
            len()
                .over(k())
                .map_err(Error::Polars)?
                .cast(DataType::Int64)
                .alias("__len"),
        ]);
    // The online scaler, per field, exactly as `StateStore::update_scaler`.
    let mut scaled = Vec::new();
    for f in &spec.value_fields {
        let x = col(f.as_str());
        let present = x.clone().is_not_nan();
        let x0 = when(present.clone()).then(x.clone()).otherwise(lit(0.0));
        let n = present
            .clone()
            .cast(DataType::Float64)
            .cum_sum(false)
            .over(k())
            .map_err(Error::Polars)?;
        let nn = when(n.clone().gt(lit(1.0))).then(n).otherwise(lit(1.0));
        let mean = x0.clone().cum_sum(false).over(k()).map_err(Error::Polars)? / nn.clone();
        let var = (x0.clone() * x0)
            .cum_sum(false)
            .over(k())
            .map_err(Error::Polars)?
            / nn
            - mean.clone() * mean.clone();
        let var = when(var.clone().gt(lit(0.0))).then(var).otherwise(lit(0.0));
        let sd = var.sqrt();
        let floor = mean.clone().abs() * lit(1e-3) + lit(1e-6);
        let scale = when(sd.clone().gt(floor.clone())).then(sd).otherwise(floor);
        lf = lf.with_columns([
            mean.alias(format!("__mean_{f}")),
            scale.alias(format!("__scale_{f}")),
        ]);
        let scaled_f = when(present)
            .then(clamped(
                (x - col(format!("__mean_{f}"))) / col(format!("__scale_{f}")),
            ))
            .otherwise(lit(0.0))
            .alias(format!("__in_{f}"));
        scaled.push(scaled_f);
    }
    let target = spec.value_fields[0].as_str();
    let (mean0, scale0) = (
        col(format!("__mean_{target}")),
        col(format!("__scale_{target}")),
    );
    let mut cols = scaled;
    cols.push(
        col(target)
            .is_nan()
            .cast(DataType::Float64)
            .alias("__in_missing"),
    );
    // Lags, scaled with the scaler of the current window, unknown = 0: what
    // `StateStore::lags` gives at runtime.
    for j in 1..=spec.lags {
        let z = clamped(
            (col(target).shift(lit(j)).over(k()).map_err(Error::Polars)? - mean0.clone())
                / scale0.clone(),
        );
        cols.push(
            z.fill_nan(lit(0.0))
                .fill_null(lit(0.0))
                .alias(format!("__lag{j}")),
        );
    }
    let mut lf = lf.with_columns(cols);
    // Targets per horizon step, in the head's units.
    let mut tgt = Vec::new();
    let mut base = Vec::new();
    for h in 1..=h_max {
        let y = col(target)
            .shift(lit(-h))
            .over(k())
            .map_err(Error::Polars)?;
        let back = season - 1 - ((h - 1) % season);
        let seasonal = col(target)
            .shift(lit(back))
            .over(k())
            .map_err(Error::Polars)?;
        let snaive = when(col("__seen").gt_eq(lit(season)))
            .then(seasonal)
            .otherwise(col(target));
        let snaive = when(snaive.clone().is_nan())
            .then(mean0.clone())
            .otherwise(snaive);
        let b = (snaive.clone() - mean0.clone()) / scale0.clone();
        let resid = (y - snaive) / scale0.clone();
        let t = match spec.head {
            Head::Residual => resid.clone(),
            Head::Direct => resid.clone() + b,
        };
        // Clamped like the inputs: one wild target must not own the loss.
        tgt.push(clamped(t).alias(format!("__t{h}")));
        // What a network outputting zeros scores, in the same units.
        let zero_out = match spec.head {
            Head::Residual => clamped(resid),
            Head::Direct => col(format!("__t{h}")),
        };
        base.push(zero_out);
    }
    lf = lf.with_columns(tgt);
    let base_cols: Vec<Expr> = base
        .into_iter()
        .enumerate()
        .map(|(i, e)| e.alias(format!("__b{}", i + 1)))
        .collect();
    lf = lf.with_columns(base_cols);
    let df = lf.collect().map_err(Error::Polars)?;
    tensors(&df, spec)
}

fn f64_col(df: &DataFrame, name: &str) -> Result<Vec<f64>> {
    let c = df
        .column(name)
        .map_err(Error::Polars)?
        .cast(&DataType::Float64)
        .map_err(Error::Polars)?;
    let ca = c.f64().map_err(Error::Polars)?;
    Ok(ca.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

fn i64_col(df: &DataFrame, name: &str) -> Result<Vec<i64>> {
    let c = df
        .column(name)
        .map_err(Error::Polars)?
        .cast(&DataType::Int64)
        .map_err(Error::Polars)?;
    let ca = c.i64().map_err(Error::Polars)?;
    Ok(ca.iter().map(|v| v.unwrap_or(0)).collect())
}

fn stack(df: &DataFrame, names: &[String]) -> Result<Tensor> {
    let cols = names
        .iter()
        .map(|n| f64_col(df, n).map(|v| Tensor::from_slice(&v)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&cols, 1).to_kind(Kind::Float))
}

fn tensors(df: &DataFrame, spec: &PrepSpec) -> Result<Prepared> {
    let rows = df.height() as i64;
    if rows == 0 {
        return Err(Error::Training(
            "no training data: the window files hold no rows in the range".into(),
        ));
    }
    let mut in_names: Vec<String> = spec
        .value_fields
        .iter()
        .map(|f| format!("__in_{f}"))
        .collect();
    in_names.push("__in_missing".into());
    in_names.extend(spec.covariates.iter().cloned());
    in_names.extend((1..=spec.lags).map(|j| format!("__lag{j}")));
    let mut inputs = stack(df, &in_names)?;
    if spec.recur.is_some() {
        // Filled step by step with the network's own previous output.
        inputs = Tensor::cat(&[&inputs, &inputs.narrow(1, 0, 1).zeros_like()], 1);
        in_names.push("__prev".into());
    }
    let t_names: Vec<String> = (1..=spec.horizon).map(|h| format!("__t{h}")).collect();
    let b_names: Vec<String> = (1..=spec.horizon).map(|h| format!("__b{h}")).collect();
    let targets = stack(df, &t_names)?;
    let baseline = stack(df, &b_names)?;
    let seen = i64_col(df, "__seen")?;
    let lens = i64_col(df, "__len")?;
    let ends = i64_col(df, "end_ms")?;
    // Key boundaries: rows are sorted by key, `__seen` restarts at 1.
    let mut keys = Vec::new();
    let mut r = 0i64;
    while r < rows {
        let n = lens[r as usize].max(1);
        keys.push((r, n));
        r += n;
    }
    let complete = targets
        .isfinite()
        .all_dim(1, false)
        .logical_and(&Tensor::from_slice(&seen).gt(spec.warmup));
    let pos = Tensor::from_slice(&seen) - 1;
    let len = Tensor::from_slice(&lens);
    let (h, v) = (spec.horizon, spec.val_windows.max(spec.horizon));
    // Origin t (0-based position): validation if t+1 >= len-V and t+H <= len-1;
    // training if t+H <= len-V-1 (no target in the validation windows).
    let val_origin = complete
        .logical_and(&pos.ge_tensor(&(&len - v - 1)))
        .logical_and(&(&pos + h).le_tensor(&(&len - 1)));
    let train_origin = complete.logical_and(&(&pos + h).le_tensor(&(&len - v - 1)));
    let train_mask = Vec::<bool>::try_from(&train_origin)?;
    let mut train_ends = Vec::new();
    let mut val_ends = Vec::new();
    // Samples have a full context (no padding), so training runs on
    // libtorch's sequence kernels: a key needs at least `context` windows
    // before an origin to contribute it.
    let l = spec.context;
    for &(first, n) in &keys {
        let last_val = first + n - h - 1;
        if last_val - first >= l - 1 {
            val_ends.push(last_val);
        }
        let last_train = first + n - v - h - 1;
        let mut e = last_train;
        while e - first >= l - 1 {
            if train_mask[e as usize] {
                train_ends.push(e);
            }
            e -= spec.stride.max(1);
        }
    }
    train_ends.sort_unstable();
    let lo = ends.iter().copied().min().unwrap_or(0);
    let hi = ends.iter().copied().max().unwrap_or(0);
    Ok(Prepared {
        n_inputs: in_names.len() as i64,
        inputs,
        targets: targets.nan_to_num(0.0, None::<f64>, None::<f64>),
        baseline: baseline.nan_to_num(0.0, None::<f64>, None::<f64>),
        train_origin,
        val_origin,
        keys,
        train_ends,
        val_ends,
        context: spec.context,
        quantiles: spec.quantiles.clone(),
        recur: spec.recur,
        time_range: (lo, hi),
    })
}

/// A batch: `x: [B, L, n_in]`, `y: [B, L, H]`, `loss_mask: [B, L]` (origins
/// whose loss counts), `valid: [B, L]` (steps inside the key's series;
/// samples are built with a full context, so all true today).
pub struct Batch {
    pub x: Tensor,
    pub y: Tensor,
    pub baseline: Tensor,
    pub loss_mask: Tensor,
    pub valid: Tensor,
}

impl Prepared {
    /// The rows of samples ending at `ends`, with `origin` selecting which
    /// steps count in the loss and the first `burn_in` steps of each sample
    /// excluded (the state is still cold there).
    pub fn batch(&self, ends: &[i64], origin: &Tensor, burn_in: i64) -> Batch {
        let l = self.context;
        let e = Tensor::from_slice(ends).unsqueeze(1); // [B, 1]
        let first =
            Tensor::from_slice(&ends.iter().map(|&x| self.key_first(x)).collect::<Vec<_>>())
                .unsqueeze(1);
        let steps = Tensor::arange(l, (Kind::Int64, tch::Device::Cpu)).unsqueeze(0) - (l - 1); // [1, L]: -(L-1)..0
        let idx = &e + steps; // [B, L]
        let valid = idx.ge_tensor(&first);
        let idx = idx.maximum(&first);
        let flat = idx.view([-1]);
        let b = ends.len() as i64;
        let x = self.inputs.index_select(0, &flat).view([b, l, -1]);
        let y = self.targets.index_select(0, &flat).view([b, l, -1]);
        let base = self.baseline.index_select(0, &flat).view([b, l, -1]);
        let in_loss = origin.index_select(0, &flat).view([b, l]);
        let warm = Tensor::arange(l, (Kind::Int64, tch::Device::Cpu))
            .ge(burn_in)
            .unsqueeze(0);
        let loss_mask = in_loss.logical_and(&valid).logical_and(&warm);
        Batch {
            x,
            y,
            baseline: base,
            loss_mask,
            valid,
        }
    }

    fn key_first(&self, row: i64) -> i64 {
        // keys are sorted by first row: binary search.
        match self.keys.binary_search_by(|&(f, _)| f.cmp(&row)) {
            Ok(i) => self.keys[i].0,
            Err(i) => self.keys[i.saturating_sub(1)].0,
        }
    }

    /// Training sample ends in a seeded random order.
    pub fn shuffled_train_ends(&self, seed: u64) -> Vec<i64> {
        let mut v = self.train_ends.clone();
        v.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        v
    }
}
