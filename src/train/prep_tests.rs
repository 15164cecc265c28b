//! `prep` against the former polars-expression preparation
//! (`prep_reference`), element by element, on small archives built to hit
//! every branch: keys of different lengths (shorter than the season, the
//! horizon, the context), missing values (scattered, leading, a key with
//! none present), outliers past the clamp, unsorted rows in several chunks,
//! both heads, lags/no lags, output recurrence, warm-up, time ranges, and a
//! non-string key.

// Test code may unwrap: a failing unwrap is a failing test.
#![allow(clippy::unwrap_used)]

use polars::prelude::*;
use tch::Tensor;

use super::{prepare_lazy, PrepSpec, Prepared};
use crate::config::Head;
use crate::train::prep_reference;

/// A deterministic value in [0, 1).
fn unit(a: u64, b: u64) -> f64 {
    let mut x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    (x % 1_000_000) as f64 / 1e6
}

const HOUR: i64 = 3_600_000;

/// Keys (name, windows) of different lengths; rows in a scrambled order,
/// split into `chunks` frames (as several archive files give).
fn archive(int_key: bool, chunks: usize) -> LazyFrame {
    archive_with(int_key, chunks, true)
}

/// `missing`: with missing (NaN) and infinite values.
fn archive_with(int_key: bool, chunks: usize, missing: bool) -> LazyFrame {
    let lens = [
        ("k-delta", 1usize),
        ("k-alpha", 5),
        ("k-zulu", 23),
        ("k-echo", 24),
        ("k-bravo", 25),
        ("k-allmissing", 30),
        ("k-", 61),
        ("k-charlie", 130),
        ("k-omega", 200),
        ("k-inf", 40),
        ("k-step", 200),
    ];
    let mut rows: Vec<(String, i64, i64, f64, f64, f64, f64)> = Vec::new();
    for (ki, &(name, n)) in lens.iter().enumerate() {
        let level: f64 = [0.0, 5.0, 1e4, -3.0, 1e-3][ki % 5];
        for w in 0..n {
            let u = unit(ki as u64, w as u64);
            let mut v = level + (w as f64 * 0.7).sin() * (1.0 + level.abs() * 0.01) + u;
            // Scattered missing, a missing start, a key with none present.
            if missing && (u < 0.12 || (name == "k-charlie" && w < 7) || name == "k-allmissing") {
                v = f64::NAN;
            }
            if missing && name == "k-inf" && w == 10 {
                v = f64::INFINITY;
            }
            // Outliers far past the clamp, and a flat stretch.
            if u > 0.97 {
                v = level + 1e6 * (u - 0.5);
            }
            if name == "k-omega" && (40..60).contains(&w) {
                v = 7.0;
            }
            // A flat start, then steps far past the clamp both ways.
            if name == "k-step" {
                v = match w {
                    0..150 => u * 1e-3,
                    150..170 => 1e3 + u,
                    _ => -1e5 + u,
                };
            }
            let v2 = if missing && unit(w as u64, ki as u64) < 0.2 {
                f64::NAN
            } else {
                u * 100.0 - 50.0
            };
            let c1 = ((w % 24) as f64 / 24.0 * std::f64::consts::TAU).sin();
            let c2 = 1.0 / 3.0 + w as f64 * 1e-7;
            rows.push((
                name.to_string(),
                ki as i64 * 7 - 20,
                1_000 * HOUR + w as i64 * HOUR,
                v,
                v2,
                c1,
                c2,
            ));
        }
    }
    // Scramble: emission order (window_end, key) then a deterministic shuffle.
    rows.sort_by_key(|r| (r.2, r.0.clone()));
    let n = rows.len();
    let perm: Vec<usize> = {
        let mut p: Vec<usize> = (0..n).collect();
        p.sort_by(|&a, &b| unit(a as u64, 99).total_cmp(&unit(b as u64, 99)));
        p
    };
    let rows: Vec<_> = perm.into_iter().map(|i| rows[i].clone()).collect();
    let per = n.div_ceil(chunks);
    let frames: Vec<LazyFrame> = rows
        .chunks(per)
        .map(|c| {
            let key = if int_key {
                Column::new("key".into(), c.iter().map(|r| r.1).collect::<Vec<_>>())
            } else {
                Column::new(
                    "key".into(),
                    c.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
                )
            };
            let end = Column::new(
                "window_end".into(),
                c.iter().map(|r| r.2).collect::<Vec<_>>(),
            )
            .cast(&DataType::Datetime(TimeUnit::Milliseconds, None))
            .unwrap();
            DataFrame::new_infer_height(vec![
                key,
                end,
                Column::new("value".into(), c.iter().map(|r| r.3).collect::<Vec<_>>()),
                Column::new("other".into(), c.iter().map(|r| r.4).collect::<Vec<_>>()),
                Column::new("cov_a".into(), c.iter().map(|r| r.5).collect::<Vec<_>>()),
                Column::new("cov_b".into(), c.iter().map(|r| r.6).collect::<Vec<_>>()),
            ])
            .unwrap()
            .lazy()
        })
        .collect();
    concat(frames, UnionArgs::default()).unwrap()
}

fn spec(head: Head) -> PrepSpec {
    PrepSpec {
        key: "key".into(),
        value_fields: vec!["value".into(), "other".into()],
        covariates: vec!["cov_a".into(), "cov_b".into()],
        lags: 5,
        horizon: 6,
        season: 4,
        head,
        quantiles: vec![0.1, 0.5, 0.9],
        recur: None,
        context: 8,
        stride: 3,
        val_windows: 7,
        time_range: None,
        warmup: 3,
        hybrid: None,
        scaler_decay: None,
    }
}

fn floats(t: &Tensor) -> (Vec<i64>, Vec<f32>) {
    (t.size(), Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap())
}

fn bools(t: &Tensor) -> Vec<bool> {
    Vec::<bool>::try_from(t).unwrap()
}

/// Same shape and the same f32 bits (NaN equal to NaN) everywhere.
fn same_floats(what: &str, new: &Tensor, old: &Tensor) {
    let ((sn, a), (so, b)) = (floats(new), floats(old));
    assert_eq!(sn, so, "{what}: shape");
    let cols = *sn.get(1).unwrap_or(&1) as usize;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
            "{what}: row {} column {}: new {x} old {y}",
            i / cols.max(1),
            i % cols.max(1)
        );
    }
}

fn same(new: &Prepared, old: &Prepared) {
    same_floats("inputs", &new.inputs, &old.inputs);
    same_floats("targets", &new.targets, &old.targets);
    same_floats("baseline", &new.baseline, &old.baseline);
    assert_eq!(bools(&new.train_origin), bools(&old.train_origin));
    assert_eq!(bools(&new.val_origin), bools(&old.val_origin));
    assert_eq!(new.keys, old.keys);
    assert_eq!(new.train_ends, old.train_ends);
    assert_eq!(new.val_ends, old.val_ends);
    assert_eq!(new.time_range, old.time_range);
    assert_eq!(new.n_inputs, old.n_inputs);
    assert_eq!(new.context, old.context);
    assert_eq!(new.quantiles, old.quantiles);
    assert_eq!(new.recur, old.recur);
}

fn check(s: &PrepSpec, int_key: bool, chunks: usize) -> Prepared {
    let new = prepare_lazy(archive(int_key, chunks), s).unwrap();
    let old = prep_reference::prepare_lazy(archive(int_key, chunks), s, true).unwrap();
    same(&new, &old);
    new
}

#[test]
fn matches_the_polars_expression_version_for_both_heads() {
    for head in [Head::Residual, Head::Direct] {
        let new = check(&spec(head), false, 3);
        // The comparison is not vacuous: clamped, missing and unknown
        // values, training and validation origins all occur.
        let (_, x) = floats(&new.inputs);
        assert!(x.contains(&(crate::model::SCALED_CLAMP as f32)));
        assert!(x.contains(&-(crate::model::SCALED_CLAMP as f32)));
        assert!(bools(&new.train_origin).iter().any(|b| *b));
        assert!(bools(&new.val_origin).iter().any(|b| *b));
        assert!(!new.train_ends.is_empty() && !new.val_ends.is_empty());
        assert_eq!(new.keys.len(), 11);
    }
}

#[test]
fn matches_it_across_spec_variants() {
    type Variant = Box<dyn Fn(&mut PrepSpec)>;
    let variants: Vec<Variant> = vec![
        Box::new(|s| s.lags = 0),
        Box::new(|s| s.season = 1),
        Box::new(|s| {
            s.season = 24;
            s.horizon = 30;
            s.lags = 26;
        }),
        Box::new(|s| s.recur = Some(6)),
        Box::new(|s| {
            s.warmup = 0;
            s.stride = 1;
            s.context = 1;
        }),
        Box::new(|s| s.time_range = Some((1_010 * HOUR, 1_100 * HOUR))),
        Box::new(|s| {
            s.value_fields = vec!["value".into()];
            s.covariates = vec![];
        }),
        Box::new(|s| s.horizon = 1),
    ];
    for head in [Head::Residual, Head::Direct] {
        for (i, v) in variants.iter().enumerate() {
            let mut s = spec(head);
            v(&mut s);
            eprintln!("variant {i}, {head:?}");
            check(&s, false, 2);
        }
    }
}

#[test]
fn matches_it_for_a_non_string_key_and_one_chunk() {
    check(&spec(Head::Residual), true, 1);
    check(&spec(Head::Direct), false, 1);
}

#[test]
fn a_null_value_counts_as_missing() {
    let s = spec(Head::Residual);
    let nan = archive(false, 2);
    // The same archive with its NaN values as nulls.
    let nulls = archive(false, 2).with_column(
        when(col("value").is_nan())
            .then(lit(NULL).cast(DataType::Float64))
            .otherwise(col("value"))
            .alias("value"),
    );
    same(
        &prepare_lazy(nulls, &s).unwrap(),
        &prepare_lazy(nan, &s).unwrap(),
    );
}

#[test]
fn no_rows_is_an_error() {
    let mut s = spec(Head::Residual);
    s.time_range = Some((0, 1));
    assert!(prepare_lazy(archive(false, 1), &s).is_err());
}

/// Without missing values the old clamp's NaN bug cannot show: the new
/// preparation equals the polars version exactly as it was at 928c9a9.
#[test]
fn matches_the_unmodified_old_version_without_missing_values() {
    for head in [Head::Residual, Head::Direct] {
        let s = spec(head);
        let new = prepare_lazy(archive_with(false, 3, false), &s).unwrap();
        let old = prep_reference::prepare_lazy(archive_with(false, 3, false), &s, false).unwrap();
        same(&new, &old);
    }
}

/// With missing values, the old version differs only where its clamp
/// turned NaN into +SCALED_CLAMP: a lag of a missing value (0 now, as live)
/// and a target whose window is missing (unknown now, so that origin is
/// no loss term; before, it was trained towards +SCALED_CLAMP).
#[test]
fn differs_from_the_old_version_only_by_its_nan_clamp() {
    let c = crate::model::SCALED_CLAMP as f32;
    let s = spec(Head::Residual);
    let new = prepare_lazy(archive(false, 3), &s).unwrap();
    let old = prep_reference::prepare_lazy(archive(false, 3), &s, false).unwrap();
    let lag0 = s.value_fields.len() + 1 + s.covariates.len();
    let (lag_end, n_in) = (lag0 + s.lags as usize, new.n_inputs as usize);
    let (_, a) = floats(&new.inputs);
    let (_, b) = floats(&old.inputs);
    let mut lag_diffs = 0;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        if x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan()) {
            // A NaN input (after an infinite value) was +SCALED_CLAMP.
            assert_eq!(*y, c, "input {i}: {x} vs {y}");
            if !x.is_nan() {
                assert!(
                    (lag0..lag_end).contains(&(i % n_in)),
                    "input {i}: {x} vs {y}"
                );
                assert_eq!(*x, 0.0, "input {i}");
                lag_diffs += 1;
            }
        }
    }
    let (_, a) = floats(&new.targets);
    let (_, b) = floats(&old.targets);
    let mut target_diffs = 0;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        if x.to_bits() != y.to_bits() {
            assert_eq!((*x, *y), (0.0, c), "target {i}");
            target_diffs += 1;
        }
    }
    assert!(lag_diffs > 0 && target_diffs > 0);
    // Origins: the new ones are the old ones minus those with a missing target.
    let (nt, ot) = (bools(&new.train_origin), bools(&old.train_origin));
    assert!(nt.iter().zip(&ot).all(|(n, o)| !n || *o));
    assert!(nt.iter().zip(&ot).any(|(n, o)| !n && *o));
    assert_eq!(new.keys, old.keys);
}

/// Through `prepare` on Parquet files, more than one read batch of them,
/// keys spread over all files: the same as the reference on all rows.
#[test]
fn matches_it_through_parquet_files_read_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let all = archive(false, 1).collect().unwrap();
    let files = super::FILES_PER_BATCH * 2 + 3;
    let per = all.height().div_ceil(files);
    let mut paths = Vec::new();
    for i in 0..files {
        let mut part = all.slice((i * per) as i64, per);
        let path = dir.path().join(format!("w-{i:02}.parquet"));
        ParquetWriter::new(std::fs::File::create(&path).unwrap())
            .finish(&mut part)
            .unwrap();
        paths.push(path);
    }
    for head in [Head::Residual, Head::Direct] {
        let s = spec(head);
        let new = super::prepare(&paths, &s).unwrap();
        let old = prep_reference::prepare_lazy(archive(false, 1), &s, true).unwrap();
        same(&new, &old);
    }
}

/// With per-key coefficients (`[model.hybrid] fit = "per_series"`) training
/// prep smooths every key with the coefficients the live stage fits for it
/// from the same first windows: once a key is ready, its prepared target
/// is bit for bit the live stage's input (`HybridKeys::push`), and keys
/// with different dynamics get different coefficients.
#[test]
fn the_hybrid_target_uses_the_live_per_key_coefficients() {
    use crate::model::hybrid::{params_of, HybridKeys, HybridMode, KeyEs};
    let cfg = crate::config::HybridConfig {
        periods: vec![24],
        fit: crate::config::HybridFit::PerSeries,
        ..Default::default()
    };
    let params = params_of(&cfg);
    let need = params.ready_len();
    // Key 0: a steady daily season with noise; key 1: its level jumps
    // inside the fitting windows (a faster level fits better); key 2:
    // shorter than the fit (the template's coefficients, live and here).
    let series: Vec<Vec<f64>> = (0..3u64)
        .map(|k| {
            let n = if k == 2 { need - 5 } else { need + 150 };
            (0..n)
                .map(|t| {
                    let d = 1.0 + 0.3 * (t as f64 * std::f64::consts::TAU / 24.0).sin();
                    let jump = if k == 1 && t > need / 2 { 4.0 } else { 1.0 };
                    (20.0 + 10.0 * k as f64) * d * jump * (0.9 + 0.2 * unit(k, t as u64))
                })
                .collect()
        })
        .collect();
    let mut cols = super::Columns {
        rows: series.iter().map(Vec::len).sum(),
        key_lens: series.iter().map(Vec::len).collect(),
        time_range: (0, 0),
        values: vec![series.concat()],
        covariates: Vec::new(),
    };
    super::hybrid_target(&mut cols, &params, HybridMode::Deseason);
    let mut live = HybridKeys::new(params.clone(), HybridMode::Deseason);
    let mut inv = vec![0.0; 1];
    let mut first = 0;
    let mut alphas = Vec::new();
    for (k, s) in series.iter().enumerate() {
        let key = format!("k{k}");
        for (i, &v) in s.iter().enumerate() {
            let z = live.push(&key, v, &mut inv);
            if i + 1 >= need {
                assert_eq!(
                    z.to_bits(),
                    cols.values[0][first + i].to_bits(),
                    "key {k} window {i}"
                );
            }
        }
        first += s.len();
        match live.get(&key) {
            Some(KeyEs::Ready(st)) => {
                assert_eq!(st.params, params.for_key(s), "key {k}");
                alphas.push(st.params.alpha);
            }
            other => assert!(
                k == 2 && matches!(other, Some(KeyEs::Warming(_))),
                "key {k}"
            ),
        }
    }
    assert!(alphas[1] > alphas[0], "{alphas:?}");
}

/// The live forecast stage's inputs for every row of `archive`, stepped as
/// `ForecastStage::step_wave` steps them: one `StateStore` holding every
/// key, wave by wave (the j-th window of every key together),
/// `update_scaler` -> `network_input` -> `lags` -> `push_history`. Rows in
/// the prepared order (keys as `prep` orders them, time within a key).
/// Also the target's `(mean, scale)` per row (f64), and the value fields
/// and covariates per row in that order.
#[allow(clippy::type_complexity)]
fn live_inputs(
    archive: LazyFrame,
    s: &PrepSpec,
    prepared: &Prepared,
) -> (Vec<f32>, Vec<(f64, f64)>, Vec<Vec<f64>>, Vec<Vec<f64>>) {
    use crate::config::CellKind;
    use crate::model::cells::CellShape;
    use crate::model::store::StateStore;
    use crate::model::{network_input, Network};
    let df = archive
        .sort(["key", "window_end"], SortMultipleOptions::default())
        .collect()
        .unwrap();
    let f64s = |name: &str| -> Vec<f64> {
        let c = df.column(name).unwrap().cast(&DataType::Float64).unwrap();
        c.f64()
            .unwrap()
            .iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect()
    };
    let fields: Vec<Vec<f64>> = s.value_fields.iter().map(|f| f64s(f)).collect();
    let covs: Vec<Vec<f64>> = s.covariates.iter().map(|f| f64s(f)).collect();
    let (nf, nc) = (fields.len() as i64, covs.len() as i64);
    let n_in = prepared.n_inputs;
    let net = Network::new(
        CellShape::recurrent(CellKind::Gru, n_in, 4, 1),
        s.horizon,
        tch::Device::Cpu,
        1,
    );
    let mut store = StateStore::new(&net, nf, s.lags + 1, s.lags, false);
    store.set_scaler_decay(s.scaler_decay);
    let mut out = vec![f32::NAN; df.height() * n_in as usize];
    let mut scalers = vec![(f64::NAN, f64::NAN); df.height()];
    let longest = prepared.keys.iter().map(|k| k.1).max().unwrap_or(0);
    for j in 0..longest {
        let rows: Vec<(usize, String)> = prepared
            .keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.1 > j)
            .map(|(i, k)| ((k.0 + j) as usize, format!("key{i}")))
            .collect();
        let slots: Vec<i64> = rows.iter().map(|(_, k)| store.slot(k)).collect();
        let slots = Tensor::from_slice(&slots);
        let m = rows.len() as i64;
        let pick = |cols: &[Vec<f64>]| -> Tensor {
            let v: Vec<f64> = rows
                .iter()
                .flat_map(|&(r, _)| cols.iter().map(move |c| c[r]))
                .collect();
            Tensor::from_slice(&v).view([m, cols.len() as i64])
        };
        let values = pick(&fields);
        let cov = pick(&covs);
        let (scaled, mean, scale) = store.update_scaler(&slots, &values);
        let base = network_input(&scaled, &values, &cov);
        let lags = store.lags(&slots, s.lags, &mean.select(1, 0), &scale.select(1, 0));
        let _ = store.push_history(&slots, &values.select(1, 0), &base);
        let x = Vec::<f32>::try_from(&Tensor::cat(&[base, lags], 1).flatten(0, -1)).unwrap();
        let mean = Vec::<f64>::try_from(&mean.select(1, 0)).unwrap();
        let scale = Vec::<f64>::try_from(&scale.select(1, 0)).unwrap();
        let w = (nf + 1 + nc + s.lags) as usize;
        for (i, &(r, _)) in rows.iter().enumerate() {
            out[r * n_in as usize..r * n_in as usize + w].copy_from_slice(&x[i * w..(i + 1) * w]);
            scalers[r] = (mean[i], scale[i]);
        }
    }
    (out, scalers, fields, covs)
}

/// Train/serve parity of the exponentially weighted scaler: every scaled
/// field, missing flag, covariate and lag that `prep` gives is bit for bit
/// what the live stage computes for the same series (missing values,
/// infinities, steps past the clamp, all-missing keys included), for a
/// short and a long half-life. (The expanding scaler is not in this check:
/// `prep` sums where the store runs Welford, equal only to rounding; its
/// contract is `prep_reference`.)
#[test]
fn the_ewm_scaler_gives_the_live_stage_inputs_bit_for_bit() {
    use crate::model::artifact::Scaler;
    for half_life in [3.0, 168.0] {
        let mut s = spec(Head::Residual);
        s.scaler_decay = Scaler::Ewm { half_life }.decay();
        let new = prepare_lazy(archive(false, 3), &s).unwrap();
        let (live, live_scalers, fields, covs) = live_inputs(archive(false, 3), &s, &new);
        let n_in = new.n_inputs as usize;
        let w = s.value_fields.len() + 1 + s.covariates.len() + s.lags as usize;
        assert_eq!(w, n_in, "no recurrence column in this spec");
        let (_, got) = floats(&new.inputs);
        let mut clamped = 0;
        for (i, (x, y)) in got.iter().zip(&live).enumerate() {
            assert!(
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                "half-life {half_life}: row {} column {}: prep {x} live {y}",
                i / n_in,
                i % n_in
            );
            clamped += usize::from(x.abs() == crate::model::SCALED_CLAMP as f32);
        }
        // Not vacuous: with the long half-life the steps hit the clamp. (A
        // jump moves the weighted mean and variance at once: |scaled| stays
        // below about sqrt(1 / (1 - decay)), ~2.3 for a half-life of 3.)
        assert!(
            (clamped > 0) == (half_life > 100.0),
            "half-life {half_life}: {clamped} clamped"
        );
        // The target's mean in f64 bit for bit and its scale to the last
        // bit but one (the f32 inputs alone would hide a last-bit difference
        // of the f64 scaler): libtorch's f64 `sqrt` on the CPU (MKL's vector
        // math) is not always correctly rounded, Rust's is; observed 1 ulp
        // apart on this archive. Every other operation rounds alike.
        let cols = super::Columns {
            rows: fields[0].len(),
            key_lens: new.keys.iter().map(|k| k.1 as usize).collect(),
            time_range: (0, 0),
            values: fields,
            covariates: covs
                .iter()
                .map(|c| c.iter().map(|&v| v as f32).collect())
                .collect(),
        };
        let mut scratch = super::Scratch::default();
        let mut buf = vec![0.0f32; cols.rows * n_in];
        let d = s.scaler_decay.unwrap();
        let mut sqrt_ulps = 0;
        for &(first, n) in &new.keys {
            let (first, n) = (first as usize, n as usize);
            scratch.mean0.resize(n, 0.0);
            scratch.scale0.resize(n, 0.0);
            super::ewm_scaler(
                first,
                n,
                &cols,
                n_in,
                d,
                &mut scratch,
                &mut buf[first * n_in..],
            );
            for p in 0..n {
                let (m, sc) = live_scalers[first + p];
                let (pm, ps) = (scratch.mean0[p], scratch.scale0[p]);
                let ulps = |a: f64, b: f64| {
                    if a.is_nan() && b.is_nan() {
                        0
                    } else {
                        a.to_bits().abs_diff(b.to_bits())
                    }
                };
                assert!(
                    ulps(m, pm) == 0 && ulps(sc, ps) <= 1,
                    "half-life {half_life}: row {}: prep ({pm}, {ps}) live ({m}, {sc})",
                    first + p
                );
                sqrt_ulps += usize::from(ulps(sc, ps) == 1);
            }
        }
        eprintln!(
            "half-life {half_life}: {sqrt_ulps} of {} scales 1 ulp apart",
            cols.rows
        );
        // And the scaler is not the expanding one.
        let expanding = prepare_lazy(archive(false, 3), &spec(Head::Residual)).unwrap();
        assert!(!new.inputs.equal(&expanding.inputs));
    }
}
