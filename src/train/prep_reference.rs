//! The preparation as it was before the plain-Rust rewrite (main 928c9a9):
//! ~77 polars window expressions `.over(key)` and f64 columns stacked into
//! tensors. Kept, test-only, as the reference the new `prep` must match
//! element by element (`prep::tests`). Slow and memory hungry (14 GB for
//! 10M rows): never call it outside tests.
//!
//! Invariant: this file is not edited except to follow API changes of
//! `PrepSpec`/`Prepared`; its semantics are the contract.

use polars::prelude::*;
use tch::{Kind, Tensor};

use super::prep::{PrepSpec, Prepared};
use crate::config::Head;
use crate::error::{Error, Result};
use crate::model::SCALED_CLAMP;

/// `e` clamped to ±SCALED_CLAMP. As written at 928c9a9 (`keep_nan`
/// false) it maps NaN to +SCALED_CLAMP, not NaN as its comment said:
/// polars compares floats in total order, where NaN is greater than any
/// number. With `keep_nan` NaN stays NaN, as the live stage's `clamp` and
/// the comment intend (the fix `prep` makes).
fn clamped(e: Expr, keep_nan: bool) -> Expr {
    let c = SCALED_CLAMP;
    let e_nan = e.clone();
    let out = when(e.clone().gt(lit(c)))
        .then(lit(c))
        .when(e.clone().lt(lit(-c)))
        .then(lit(-c))
        .otherwise(e);
    if keep_nan {
        when(e_nan.clone().is_nan()).then(e_nan).otherwise(out)
    } else {
        out
    }
}

/// Prepares tensors from a lazy frame with the windows schema.
pub fn prepare_lazy(lf: LazyFrame, spec: &PrepSpec, keep_nan: bool) -> Result<Prepared> {
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
                keep_nan,
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
            keep_nan,
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
        tgt.push(clamped(t, keep_nan).alias(format!("__t{h}")));
        // What a network outputting zeros scores, in the same units.
        let zero_out = match spec.head {
            Head::Residual => clamped(resid, keep_nan),
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
