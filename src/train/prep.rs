//! Training batches from archived windows.
//!
//! polars scans the window Parquet files (the archive, or any file with the
//! windows schema), keeps the time range asked for and the columns needed;
//! everything after that is plain Rust over contiguous columns, one key at
//! a time, in the rows' sorted order (key, then window end):
//! - the *online* scaler exactly as the forecast stage keeps it (expanding
//!   count/mean/variance over non-missing values, the same floor; or, with
//!   `PrepSpec::scaler_decay`, the exponentially weighted one in the very
//!   operations and order of `StateStore::update_scaler`, so bit for bit),
//!   so the network sees in training what it will see live;
//! - the network inputs (scaled fields, the target's missing flag,
//!   covariates, lags) — the same features as `model::network_input`;
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
//!
//! Invariants (checked element by element against the former polars
//! expression version, `prep_reference`, in `prep::tests`):
//! - values are computed in f64 in the same operation order as that version
//!   and rounded to f32 once, when written to the tensors;
//! - a missing value is NaN; a null in a value field is read as NaN too;
//! - rows are ordered by key (nulls first, then byte order for string keys)
//!   then `window_end`; keys are found once (hashing the key column), the
//!   rows put in that order with a stable counting sort, never re-grouped;
//! - memory: the needed columns (f64 values, f32 covariates) plus the output
//!   tensors, which are filled in blocks of whole keys (`BLOCK_ROWS`), so no
//!   full-size intermediate copy exists; `baseline` shares `targets`.

use std::collections::HashMap;
use std::path::PathBuf;

use polars::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Kind, Tensor};

use crate::config::Head;
use crate::error::{Error, Result};
use crate::model::SCALED_CLAMP;

/// Window files read per polars `collect` (the archive rolls files at
/// 100,000 rows by default).
const FILES_PER_BATCH: usize = 8;

/// Rows per block of whole keys filled in plain buffers before they are
/// copied into the output tensors: small enough to stay in cache.
const BLOCK_ROWS: usize = 4096;

/// Elements per tensor copy: libtorch's grain size (`at::internal::GRAIN_SIZE`),
/// below which it copies on the calling thread.
const COPY_ELEMS: usize = 32768;

/// `a > b` as polars compares floats (total order: NaN above every number),
/// which the scaler below was written and tested with. NaN only arises there
/// from infinite values; it then propagates into the scale, as the live
/// stage's `maximum` propagates it.
#[inline]
fn gt(a: f64, b: f64) -> bool {
    if a.is_nan() {
        !b.is_nan()
    } else {
        a > b
    }
}

/// `e` clamped to ±SCALED_CLAMP, NaN stays NaN, as the live stage's `clamp`
/// does. (The polars version before this one mapped NaN to +SCALED_CLAMP:
/// see `prep_reference::clamped`.)
#[inline]
fn clamped(e: f64) -> f64 {
    let c = SCALED_CLAMP;
    if e > c {
        c
    } else if e < -c {
        -c
    } else {
        e
    }
}

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
    /// ES-RNN-style hybrid (`model.hybrid`): the target of every key is run
    /// through the smoothing recursion (`model::hybrid`) before everything
    /// else, as the live stage does; None = off.
    pub hybrid: Option<(
        crate::model::hybrid::EsParams,
        crate::model::hybrid::HybridMode,
    )>,
    /// The scaler's decay per present value (`model::artifact::Scaler::decay`
    /// of the model trained): None = expanding.
    pub scaler_decay: Option<f64>,
}

/// Prepared training data.
pub struct Prepared {
    /// `[rows, n_in]` network inputs.
    pub inputs: Tensor,
    /// `[rows, H]` targets in scaled units for the spec's head (NaN where unknown).
    pub targets: Tensor,
    /// `[rows, H]` seasonal-naive targets in the same units (what a
    /// network that knows nothing would score). A network outputting zeros
    /// scores exactly the targets in both heads, so this shares `targets`'
    /// storage (`shallow_clone`): never modify either in place.
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
    // Read in batches of files: what polars allocates while reading is
    // freed after each batch and reused by the next, so the process keeps
    // one batch's worth (glibc does not return freed small chunks: reading
    // all 10M rows at once left ~0.6 GB of its heap behind).
    let batches = scans
        .chunks(FILES_PER_BATCH)
        .map(|c| concat(c, UnionArgs::default()).map_err(Error::Polars))
        .collect::<Result<Vec<_>>>()?;
    prepare_batches(batches, spec)
}

/// Prepares tensors from a lazy frame with the windows schema.
pub fn prepare_lazy(lf: LazyFrame, spec: &PrepSpec) -> Result<Prepared> {
    prepare_batches(vec![lf], spec)
}

/// Prepares tensors from lazy frames with the windows schema, collected one
/// after the other (together: the rows of all).
fn prepare_batches(batches: Vec<LazyFrame>, spec: &PrepSpec) -> Result<Prepared> {
    let t = std::time::Instant::now();
    let mut cols = Columns::load(batches, spec)?;
    if let Some((params, mode)) = &spec.hybrid {
        hybrid_target(&mut cols, params, *mode);
    }
    let loaded = t.elapsed().as_secs_f64();
    let out = build(&cols, spec)?;
    tracing::debug!(
        rows = cols.rows,
        keys = cols.key_lens.len(),
        load_s = loaded,
        build_s = t.elapsed().as_secs_f64() - loaded,
        "training data prepared"
    );
    Ok(out)
}

/// Replaces the target of every key (contiguous rows, time order) by the
/// hybrid smoothing's output, from a state initialised on the key's first
/// windows with the key's coefficients (with a per-key fit, fitted on its
/// first `ready_len` windows): the live stage's, once a key is past those
/// windows.
fn hybrid_target(
    cols: &mut Columns,
    params: &crate::model::hybrid::EsParams,
    mode: crate::model::hybrid::HybridMode,
) {
    let Some(y) = cols.values.first_mut() else {
        return;
    };
    let mut first = 0;
    for &n in &cols.key_lens {
        let series = &y[first..first + n];
        let p = params.for_key(series);
        let (z, _) = crate::model::hybrid::EsState::transform_series(&p, series, mode);
        y[first..first + n].copy_from_slice(&z);
        first += n;
    }
}

/// The columns prepared from, rows sorted: keys contiguous (in `key_lens`
/// order), by `window_end` within a key.
struct Columns {
    rows: usize,
    /// Rows of each key, in sorted key order (all > 0).
    key_lens: Vec<usize>,
    /// Range of `window_end` (ms).
    time_range: (i64, i64),
    /// Per value field, NaN where missing (or null).
    values: Vec<Vec<f64>>,
    /// Per covariate, as f32 (the tensors' type; a null reads as NaN).
    covariates: Vec<Vec<f32>>,
}

impl Columns {
    fn load(batches: Vec<LazyFrame>, spec: &PrepSpec) -> Result<Columns> {
        let key = spec.key.as_str();
        let mut sel: Vec<Expr> = vec![
            col(key),
            col("window_end").cast(DataType::Int64).alias("end_ms"),
        ];
        sel.extend(
            spec.value_fields
                .iter()
                .map(|f| col(f.as_str()).cast(DataType::Float64)),
        );
        // Straight to f32: the tensors hold f32 and f64 -> f32 rounds the
        // same wherever it happens.
        sel.extend(
            spec.covariates
                .iter()
                .map(|f| col(f.as_str()).cast(DataType::Float32)),
        );
        let select = |lf: LazyFrame| {
            let lf = lf.select(sel.clone());
            match spec.time_range {
                Some((a, b)) => {
                    lf.filter(col("end_ms").gt_eq(lit(a)).and(col("end_ms").lt_eq(lit(b))))
                }
                None => lf,
            }
        };
        let mut batches: Vec<LazyFrame> = batches.into_iter().map(select).collect();
        let string_key = match batches.first_mut() {
            Some(lf) => matches!(
                lf.collect_schema().map_err(Error::Polars)?.get(key),
                Some(DataType::String)
            ),
            None => true,
        };
        if !string_key {
            // Any other key type: polars sorts all rows at once (its order
            // for that type) and numbers the keys; the counting sort below
            // keeps that order.
            let lf = concat(batches, UnionArgs::default()).map_err(Error::Polars)?;
            batches = vec![lf
                .sort([key, "end_ms"], SortMultipleOptions::default())
                .with_column(
                    col(key)
                        .neq_missing(col(key).shift(lit(1)))
                        .cast(DataType::UInt32)
                        .cum_sum(false)
                        .alias("__key_id"),
                )];
        }
        let t = std::time::Instant::now();
        let mut keys = KeyIndex::default();
        let mut ids: Vec<u32> = Vec::new();
        let mut end_ms: Vec<i64> = Vec::new();
        let mut values: Vec<Vec<f64>> = vec![Vec::new(); spec.value_fields.len()];
        let mut covariates: Vec<Vec<f32>> = vec![Vec::new(); spec.covariates.len()];
        for lf in batches {
            let mut df = lf.collect().map_err(Error::Polars)?;
            if string_key {
                let c = df.drop_in_place(key).map_err(Error::Polars)?;
                keys.push(
                    c.as_materialized_series().str().map_err(Error::Polars)?,
                    &mut ids,
                );
            } else {
                let c = df.drop_in_place("__key_id").map_err(Error::Polars)?;
                extend_u32(
                    &mut ids,
                    c.as_materialized_series().u32().map_err(Error::Polars)?,
                );
            }
            let c = df.drop_in_place("end_ms").map_err(Error::Polars)?;
            extend_i64(
                &mut end_ms,
                c.as_materialized_series().i64().map_err(Error::Polars)?,
            );
            for (f, v) in spec.value_fields.iter().zip(values.iter_mut()) {
                let c = df.drop_in_place(f).map_err(Error::Polars)?;
                extend_f64(v, c.as_materialized_series().f64().map_err(Error::Polars)?);
            }
            for (f, v) in spec.covariates.iter().zip(covariates.iter_mut()) {
                let c = df.drop_in_place(f).map_err(Error::Polars)?;
                extend_f32(v, c.as_materialized_series().f32().map_err(Error::Polars)?);
            }
        }
        let collected = t.elapsed().as_secs_f64();
        let rows = ids.len();
        if rows > u32::MAX as usize {
            return Err(Error::Training(format!(
                "{rows} windows to prepare: more than {} at once",
                u32::MAX
            )));
        }
        let n_ids = if string_key {
            keys.rank(&mut ids)
        } else {
            ids.iter().copied().max().map_or(0, |m| m as usize + 1)
        };
        let lo = end_ms.iter().copied().min().unwrap_or(0);
        let hi = end_ms.iter().copied().max().unwrap_or(0);
        let (order, key_lens) = sort_rows(&ids, n_ids, &end_ms);
        drop((ids, end_ms));
        let sorted = t.elapsed().as_secs_f64();
        // Each column is put in sorted order in one tight gather loop (the
        // archive's rows of a key are `keys` rows apart, so reading them key
        // by key later would miss the cache on every value); its file-order
        // copy is dropped at once.
        let values = values.into_iter().map(|v| gather(&v, &order)).collect();
        let covariates = covariates.into_iter().map(|v| gather(&v, &order)).collect();
        tracing::debug!(
            collect_s = collected,
            keys_and_sort_s = sorted - collected,
            columns_s = t.elapsed().as_secs_f64() - sorted,
            "training data loaded"
        );
        Ok(Columns {
            rows,
            key_lens,
            time_range: (lo, hi),
            values,
            covariates,
        })
    }
}

/// String keys seen so far, numbered in first-seen order.
#[derive(Default)]
struct KeyIndex {
    index: HashMap<Box<str>, u32, foldhash::fast::RandomState>,
    /// Id of the null key, if seen.
    null: Option<u32>,
    names: Vec<Option<Box<str>>>,
    last: usize,
}

impl KeyIndex {
    /// Appends the first-seen id of every row's key to `ids`.
    fn push(&mut self, ca: &StringChunked, ids: &mut Vec<u32>) {
        ids.reserve(ca.len());
        for k in ca.iter() {
            // The archive writes windows in (window_end, key) order, so the
            // next row's key is usually the one first seen after the previous
            // row's: one compare instead of a hash lookup.
            let guess = if self.last + 1 < self.names.len() {
                self.last + 1
            } else {
                0
            };
            let id = if self.names.get(guess).map(|n| n.as_deref()) == Some(k) {
                guess
            } else {
                let names = &mut self.names;
                let mut new = |k: Option<&str>| {
                    names.push(k.map(Box::from));
                    (names.len() - 1) as u32
                };
                (match k {
                    Some(s) => match self.index.get(s) {
                        Some(&id) => id,
                        None => {
                            let id = new(k);
                            self.index.insert(Box::from(s), id);
                            id
                        }
                    },
                    None => *self.null.get_or_insert_with(|| new(None)),
                }) as usize
            };
            ids.push(id as u32);
            self.last = id;
        }
    }

    /// Renumbers `ids` in sorted key order (null first, then byte order, as
    /// polars sorts strings); returns the number of keys.
    fn rank(&self, ids: &mut [u32]) -> usize {
        let names = &self.names;
        let mut by_name: Vec<u32> = (0..names.len() as u32).collect();
        by_name.sort_unstable_by(|&a, &b| names[a as usize].cmp(&names[b as usize]));
        let mut rank = vec![0u32; names.len()];
        for (r, &id) in by_name.iter().enumerate() {
            rank[id as usize] = r as u32;
        }
        for id in ids.iter_mut() {
            *id = rank[*id as usize];
        }
        names.len()
    }
}

/// `src` in the order `order` gives.
fn gather<T: Copy>(src: &[T], order: &[u32]) -> Vec<T> {
    order.iter().map(|&r| src[r as usize]).collect()
}

/// Stable counting sort of the rows by key id, then by `end_ms` within a
/// key (already in order for an archive, where it is only checked).
/// Returns the sorted order and the rows of each non-empty key.
fn sort_rows(ids: &[u32], n_ids: usize, end_ms: &[i64]) -> (Vec<u32>, Vec<usize>) {
    let mut next = vec![0usize; n_ids + 1];
    for &id in ids {
        next[id as usize + 1] += 1;
    }
    let key_lens: Vec<usize> = next[1..].iter().copied().filter(|&n| n > 0).collect();
    for i in 1..next.len() {
        next[i] += next[i - 1];
    }
    let mut order = vec![0u32; ids.len()];
    for (row, &id) in ids.iter().enumerate() {
        let slot = &mut next[id as usize];
        order[*slot] = row as u32;
        *slot += 1;
    }
    let mut first = 0;
    for &n in &key_lens {
        let seg = &mut order[first..first + n];
        if !seg
            .windows(2)
            .all(|w| end_ms[w[0] as usize] <= end_ms[w[1] as usize])
        {
            seg.sort_by_key(|&r| end_ms[r as usize]);
        }
        first += n;
    }
    (order, key_lens)
}

fn extend_f64(v: &mut Vec<f64>, ca: &Float64Chunked) {
    v.reserve(ca.len());
    for arr in ca.downcast_iter() {
        if arr.validity().is_none_or(|b| b.unset_bits() == 0) {
            v.extend_from_slice(arr.values());
        } else {
            v.extend(arr.iter().map(|x| x.copied().unwrap_or(f64::NAN)));
        }
    }
}

fn extend_f32(v: &mut Vec<f32>, ca: &Float32Chunked) {
    v.reserve(ca.len());
    for arr in ca.downcast_iter() {
        if arr.validity().is_none_or(|b| b.unset_bits() == 0) {
            v.extend_from_slice(arr.values());
        } else {
            v.extend(arr.iter().map(|x| x.copied().unwrap_or(f32::NAN)));
        }
    }
}

fn extend_i64(v: &mut Vec<i64>, ca: &Int64Chunked) {
    v.reserve(ca.len());
    for arr in ca.downcast_iter() {
        v.extend(arr.iter().map(|x| x.copied().unwrap_or(0)));
    }
}

fn extend_u32(v: &mut Vec<u32>, ca: &UInt32Chunked) {
    v.reserve(ca.len());
    for arr in ca.downcast_iter() {
        v.extend(arr.iter().map(|x| x.copied().unwrap_or(0)));
    }
}

/// Per-key scratch, reused across keys.
#[derive(Default)]
struct Scratch {
    /// The target's scaler per row.
    mean0: Vec<f64>,
    scale0: Vec<f64>,
}

/// Column layout of one input row: scaled fields, missing flag,
/// covariates, lags, then the recurrence placeholder (if any).
struct Layout {
    n_in: usize,
    missing: usize,
    cov: usize,
    lag: usize,
    horizon: usize,
    lags: usize,
    /// Per horizon step h (index h-1): how far back the seasonal naive
    /// value of step h is, `season - 1 - (h-1) % season`.
    back: Vec<usize>,
    season: usize,
    direct: bool,
    /// The scaler's decay (`PrepSpec::scaler_decay`); None = expanding.
    decay: Option<f64>,
}

/// Appends one key's rows (sorted rows `first..first + n`) to the block
/// buffers: inputs row-major `[n, n_in]`, targets `[n, H]` (0 where
/// unknown) and whether each row has all its targets.
#[allow(clippy::too_many_arguments)]
fn key_rows(
    first: usize,
    n: usize,
    cols: &Columns,
    lay: &Layout,
    s: &mut Scratch,
    inputs: &mut Vec<f32>,
    targets: &mut Vec<f32>,
    all_known: &mut Vec<bool>,
) {
    let n_in = lay.n_in;
    let base = inputs.len();
    inputs.resize(base + n * n_in, 0.0);
    let out = &mut inputs[base..];
    s.mean0.resize(n, 0.0);
    s.scale0.resize(n, 0.0);
    if let Some(d) = lay.decay {
        ewm_scaler(first, n, cols, n_in, d, s, out);
    } else {
        expanding_scaler(first, n, cols, n_in, s, out);
    }
    let y = &cols.values[0][first..first + n];
    let (mean0, scale0) = (&s.mean0[..n], &s.scale0[..n]);
    for (p, row) in out.chunks_exact_mut(n_in).enumerate() {
        row[lay.missing] = if y[p].is_nan() { 1.0 } else { 0.0 };
        for (ci, c) in cols.covariates.iter().enumerate() {
            row[lay.cov + ci] = c[first + p];
        }
        // Lags, scaled with the scaler of the current window, unknown = 0:
        // what `StateStore::lags` gives at runtime.
        let (m, sc) = (mean0[p], scale0[p]);
        let lags = &mut row[lay.lag..lay.lag + lay.lags.min(p)];
        for (j, l) in lags.iter_mut().enumerate() {
            let z = clamped((y[p - 1 - j] - m) / sc);
            *l = if z.is_nan() { 0.0 } else { z as f32 };
        }
    }
    // Targets per horizon step, in the head's units.
    let h_max = lay.horizon;
    let tbase = targets.len();
    targets.resize(tbase + n * h_max, 0.0);
    let kbase = all_known.len();
    all_known.resize(kbase + n, true);
    let known = &mut all_known[kbase..];
    if h_max == 0 {
        return;
    }
    for (p, trow) in targets[tbase..].chunks_exact_mut(h_max).enumerate() {
        let (m, sc) = (mean0[p], scale0[p]);
        let seasonal = p + 1 >= lay.season;
        for (hi, t_out) in trow.iter_mut().enumerate() {
            let h = hi + 1;
            // Past the key's end: unknown (NaN, like a missing value).
            let yh = if p + h < n { y[p + h] } else { f64::NAN };
            let snaive = if seasonal { y[p - lay.back[hi]] } else { y[p] };
            let snaive = if snaive.is_nan() { m } else { snaive };
            let resid = (yh - snaive) / sc;
            let t = if lay.direct {
                resid + (snaive - m) / sc
            } else {
                resid
            };
            // Clamped like the inputs: one wild target must not own the loss.
            let t = clamped(t) as f32;
            if t.is_finite() {
                *t_out = t;
            } else {
                known[p] = false;
            }
        }
    }
}

/// The expanding scaler of one key (sorted rows `first..first + n`): each
/// field's scaled values into `out` (rows of `n_in`), the target's mean and
/// scale per row into `s`.
fn expanding_scaler(
    first: usize,
    n: usize,
    cols: &Columns,
    n_in: usize,
    s: &mut Scratch,
    out: &mut [f32],
) {
    // The online scaler per field: expanding sums over present values.
    // Sums start at -0.0, the identity of IEEE addition, so the first sum is
    // the first value itself, as polars' cum_sum gives it.
    for (fi, field) in cols.values.iter().enumerate() {
        let (mut cnt, mut sum, mut sq) = (-0.0f64, -0.0f64, -0.0f64);
        for (p, &x) in field[first..first + n].iter().enumerate() {
            let present = !x.is_nan();
            let x0 = if present { x } else { 0.0 };
            cnt += if present { 1.0 } else { 0.0 };
            sum += x0;
            sq += x0 * x0;
            let nn = if gt(cnt, 1.0) { cnt } else { 1.0 };
            let mean = sum / nn;
            let var = sq / nn - mean * mean;
            let var = if gt(var, 0.0) { var } else { 0.0 };
            let sd = var.sqrt();
            let floor = mean.abs() * 1e-3 + 1e-6;
            let scale = if gt(sd, floor) { sd } else { floor };
            out[p * n_in + fi] = if present {
                clamped((x - mean) / scale) as f32
            } else {
                0.0
            };
            if fi == 0 {
                s.mean0[p] = mean;
                s.scale0[p] = scale;
            }
        }
    }
}

/// `v.clamp_min(lo)` as libtorch computes it (NaN stays NaN).
#[inline]
fn clamp_min(v: f64, lo: f64) -> f64 {
    if v < lo {
        lo
    } else {
        v
    }
}

/// `a.maximum(b)` as libtorch computes it: NaN if either is NaN.
#[inline]
fn maximum(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a > b {
        a
    } else {
        b
    }
}

/// The exponentially weighted scaler of one key, as [`expanding_scaler`]:
/// the operations of `StateStore::update_scaler` with decay `d`, one value
/// at a time in the same order (each rounded in f64 as the f64 tensor
/// operation rounds it), so training sees the live stage's inputs bit for
/// bit.
fn ewm_scaler(
    first: usize,
    n: usize,
    cols: &Columns,
    n_in: usize,
    d: f64,
    s: &mut Scratch,
    out: &mut [f32],
) {
    for (fi, field) in cols.values.iter().enumerate() {
        let (mut w, mut mean, mut m2) = (0.0f64, 0.0f64, 0.0f64);
        for (p, &v) in field[first..first + n].iter().enumerate() {
            let present = !v.is_nan();
            let pr = if present { 1.0 } else { 0.0 };
            // `nan_to_num(0.0)`: NaN -> 0, infinities -> the largest finite.
            let x = if present {
                v.clamp(f64::MIN, f64::MAX)
            } else {
                0.0
            };
            let dk = if present { d } else { 1.0 };
            let w_new = w * dk + pr;
            let delta = (x - mean) * pr;
            let mean_new = mean + delta / clamp_min(w_new, 1.0);
            let m2_new = m2 * dk + delta * (x - mean_new) * pr;
            (w, mean, m2) = (w_new, mean_new, m2_new);
            let var = m2_new / clamp_min(w_new, 1.0);
            let floor = mean_new.abs() * 1e-3 + 1e-6;
            let scale = maximum(var.sqrt(), floor);
            out[p * n_in + fi] = (clamped((x - mean_new) / scale) * pr) as f32;
            if fi == 0 {
                s.mean0[p] = mean_new;
                s.scale0[p] = scale;
            }
        }
    }
}

/// Copies `buf` (rows of `width`, row-major) into `dst`'s rows from `from`,
/// in pieces of at most `COPY_ELEMS` elements: libtorch copies those on the
/// calling thread, where larger copies wake its OpenMP pool, whose threads
/// then spin between blocks (measured: 45% of all CPU samples at 2M rows).
fn copy_rows(dst: &Tensor, from: usize, buf: &[f32], width: usize) -> Result<()> {
    if width == 0 {
        return Ok(());
    }
    let per = (COPY_ELEMS / width).max(1);
    for (i, piece) in buf.chunks(per * width).enumerate() {
        let n = (piece.len() / width) as i64;
        let src = Tensor::f_from_slice(piece)?.f_view([n, width as i64])?;
        dst.f_narrow(0, (from + i * per) as i64, n)?.f_copy_(&src)?;
    }
    Ok(())
}

fn build(cols: &Columns, spec: &PrepSpec) -> Result<Prepared> {
    let rows = cols.rows;
    if rows == 0 {
        return Err(Error::Training(
            "no training data: the window files hold no rows in the range".into(),
        ));
    }
    let n_f = cols.values.len();
    let lags = spec.lags.max(0) as usize;
    let horizon = spec.horizon.max(0) as usize;
    let season = spec.season.max(1) as usize;
    let n_base = n_f + 1 + cols.covariates.len() + lags;
    let lay = Layout {
        n_in: n_base + usize::from(spec.recur.is_some()),
        missing: n_f,
        cov: n_f + 1,
        lag: n_f + 1 + cols.covariates.len(),
        horizon,
        lags,
        back: (1..=horizon)
            .map(|h| season - 1 - ((h - 1) % season))
            .collect(),
        season,
        direct: matches!(spec.head, Head::Direct),
        decay: spec.scaler_decay,
    };
    let opts = (Kind::Float, tch::Device::Cpu);
    let inputs = Tensor::f_empty([rows as i64, lay.n_in as i64], opts)?;
    let targets = Tensor::f_empty([rows as i64, horizon as i64], opts)?;
    let mut known = Vec::with_capacity(rows);
    let (mut in_buf, mut t_buf) = (Vec::new(), Vec::new());
    let mut scratch = Scratch::default();
    let mut keys = Vec::with_capacity(cols.key_lens.len());
    // Rows [block_start, first) are in the buffers, not yet copied.
    let (mut first, mut block_start) = (0usize, 0usize);
    let flush = |from: usize, in_buf: &mut Vec<f32>, t_buf: &mut Vec<f32>| -> Result<()> {
        copy_rows(&inputs, from, in_buf, lay.n_in)?;
        copy_rows(&targets, from, t_buf, horizon)?;
        in_buf.clear();
        t_buf.clear();
        Ok(())
    };
    for &n in &cols.key_lens {
        key_rows(
            first,
            n,
            cols,
            &lay,
            &mut scratch,
            &mut in_buf,
            &mut t_buf,
            &mut known,
        );
        keys.push((first as i64, n as i64));
        first += n;
        if first - block_start >= BLOCK_ROWS {
            flush(block_start, &mut in_buf, &mut t_buf)?;
            block_start = first;
        }
    }
    flush(block_start, &mut in_buf, &mut t_buf)?;
    drop((in_buf, t_buf));
    let (h, v) = (spec.horizon, spec.val_windows.max(spec.horizon));
    // Origin t (0-based position): validation if t+1 >= len-V and t+H <= len-1;
    // training if t+H <= len-V-1 (no target in the validation windows).
    let mut train_mask = vec![false; rows];
    let mut val_mask = vec![false; rows];
    for &(kf, n) in &keys {
        for pos in 0..n {
            let r = (kf + pos) as usize;
            let complete = known[r] && pos >= spec.warmup;
            val_mask[r] = complete && pos >= n - v - 1 && pos + h < n;
            train_mask[r] = complete && pos + h < n - v;
        }
    }
    drop(known);
    let mut train_ends = Vec::new();
    let mut val_ends = Vec::new();
    // Samples have a full context (no padding), so training runs on
    // libtorch's sequence kernels: a key needs at least `context` windows
    // before an origin to contribute it.
    let l = spec.context;
    for &(kf, n) in &keys {
        let last_val = kf + n - h - 1;
        if last_val - kf >= l - 1 {
            val_ends.push(last_val);
        }
        let last_train = kf + n - v - h - 1;
        let mut e = last_train;
        while e - kf >= l - 1 {
            if usize::try_from(e)
                .ok()
                .and_then(|i| train_mask.get(i))
                .copied()
                .unwrap_or(false)
            {
                train_ends.push(e);
            }
            e -= spec.stride.max(1);
        }
    }
    train_ends.sort_unstable();
    let (lo, hi) = cols.time_range;
    Ok(Prepared {
        n_inputs: lay.n_in as i64,
        inputs,
        baseline: targets.shallow_clone(),
        targets,
        train_origin: Tensor::f_from_slice(&train_mask)?,
        val_origin: Tensor::f_from_slice(&val_mask)?,
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

    /// `batch`, moved to `device` (the network's): the prepared tensors stay
    /// in host memory, only each batch crosses to an accelerator.
    pub fn batch_on(
        &self,
        ends: &[i64],
        origin: &Tensor,
        burn_in: i64,
        device: tch::Device,
    ) -> Batch {
        let b = self.batch(ends, origin, burn_in);
        if device == tch::Device::Cpu {
            return b;
        }
        Batch {
            x: b.x.to_device(device),
            y: b.y.to_device(device),
            baseline: b.baseline.to_device(device),
            loss_mask: b.loss_mask.to_device(device),
            valid: b.valid.to_device(device),
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

#[cfg(test)]
#[path = "prep_tests.rs"]
mod tests;
