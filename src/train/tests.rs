//! Training checks: it learns, clipping bounds the norm, TBPTT truncates.

use super::*;
use crate::schema::{events_schema, windows, EventsBuilder};
use crate::window::bounded::{closed_windows, End};
use crate::window::WindowSpec;

fn pipeline(cell: &str, head: &str) -> PipelineConfig {
    crate::testkit::pipeline(&format!(
        r#"
[window]
max_gap_windows = 1000
[model]
cell = "{cell}"
head = "{head}"
hidden = 16
horizon = 6
season_windows = 24
warmup_windows = 24
"#
    ))
}

/// The live forecast stage of a trained model, and the window batches of
/// an archive file to run it over.
fn live_stage(
    trained: Trained,
    cfg: &PipelineConfig,
    file: &std::path::Path,
) -> (crate::model::ForecastStage, Vec<arrow::array::RecordBatch>) {
    let stage =
        crate::model::ForecastStage::new(trained.net, trained.spec, 1, cfg.model.warmup_windows);
    let f = std::fs::File::open(file).unwrap();
    let batches = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    (stage, batches)
}

/// Hourly seasonal series with noise: 10 + a*sin(2*pi*t/24 + p) + N(0, 0.5^2).
fn seasonal_windows(
    cfg: &PipelineConfig,
    keys: usize,
    hours: i64,
    dir: &std::path::Path,
) -> Vec<PathBuf> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut b = EventsBuilder::new(
        events_schema(&cfg.decode.value_fields),
        keys * hours as usize,
    );
    let params: Vec<(f64, f64)> = (0..keys)
        .map(|_| {
            (
                rng.random_range(2.0..6.0),
                rng.random_range(0.0..std::f64::consts::TAU),
            )
        })
        .collect();
    for t in 0..hours {
        for (k, (a, p)) in params.iter().enumerate() {
            let u1: f64 = rng.random::<f64>().max(1e-12);
            let u2: f64 = rng.random();
            let noise = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * 0.5;
            let v = 10.0 + a * (std::f64::consts::TAU * t as f64 / 24.0 + p).sin() + noise;
            b.push(
                &format!("k{k}"),
                t * 3_600_000 + 1_800_000,
                0,
                t * keys as i64 + k as i64,
                &[v],
            );
        }
    }
    let batches = closed_windows(
        WindowSpec::from_config(cfg),
        &b.finish(),
        End::AtNewestEvent,
    );
    let path = dir.join("w.parquet");
    crate::archive::write_windows_file(
        &batches,
        WindowSpec::from_config(cfg).windows_schema(),
        &path,
    )
    .unwrap();
    vec![path]
}

fn quick(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        lr: 1e-2,
        context: 72,
        stride: 6,
        tbptt: 24,
        burn_in: 24,
        val_windows: Some(24),
        patience: 10,
        threads: 2,
        ..TrainConfig::default()
    }
}

#[test]
fn learns_a_noisy_season_well_below_seasonal_naive() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = pipeline("gru", "residual");
    let files = seasonal_windows(&cfg, 6, 24 * 30, dir.path());
    let t = quick(8);
    let trained = train_from_windows(&cfg, &t, &files, None).unwrap();
    let r = &trained.report;
    eprintln!("train report: {r:?}");
    assert!(!r.diverged);
    // Seasonal naive's error is the difference of two noises (variance 2s^2);
    // a model that learned the season approaches the noise alone (s^2).
    assert!(
        r.best_val_loss < 0.75 * r.baseline_val_loss,
        "val {} vs seasonal naive {}",
        r.best_val_loss,
        r.baseline_val_loss
    );
    assert!(
        r.train_loss.first() > r.train_loss.last(),
        "training loss falls: {:?}",
        r.train_loss
    );
}

#[test]
fn same_seed_same_model_on_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = pipeline("lstm", "direct");
    let files = seasonal_windows(&cfg, 3, 24 * 10, dir.path());
    let t = quick(2);
    let a = train_from_windows(&cfg, &t, &files, None).unwrap();
    let b = train_from_windows(&cfg, &t, &files, None).unwrap();
    assert_eq!(a.report.val_loss, b.report.val_loss);
    let (va, vb) = (a.net.vs.variables(), b.net.vs.variables());
    assert_eq!(va.len(), vb.len());
    for (name, x) in &va {
        assert!(x.equal(&vb[name]), "{name} differs");
    }
}

/// `model.device = "cuda"` trains (pinball loss, batches moved to the
/// network's device) and serves on whatever device libtorch has: the GPU
/// where there is one; here, without one, the CPU, giving exactly what the
/// CPU setting gives. On a GPU machine this is the path's smoke test.
#[test]
fn the_cuda_setting_trains_and_serves_on_the_device_there_is() {
    use arrow::array::AsArray;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pipeline("lstm", "residual");
    cfg.model.quantiles = vec![0.1, 0.5, 0.9];
    let files = seasonal_windows(&cfg, 3, 24 * 10, dir.path());
    let mut gpu = cfg.clone();
    gpu.model.device = crate::config::DeviceKind::Cuda;
    let a = train_from_windows(&gpu, &quick(2), &files, None).unwrap();
    let want = crate::model::device_for(crate::config::DeviceKind::Cuda);
    assert_eq!(a.net.vs.device(), want);
    assert!(a.report.best_val_loss.is_finite(), "{:?}", a.report);
    if want == tch::Device::Cpu {
        let b = train_from_windows(&cfg, &quick(2), &files, None).unwrap();
        assert_eq!(a.report.val_loss, b.report.val_loss);
    }
    let (mut stage, batches) = live_stage(a, &gpu, &files[0]);
    let mut served = 0;
    for b in batches {
        let out = stage.forecast(&b).unwrap();
        let p = out
            .column_by_name(crate::schema::forecasts::QUANTILES_NAME)
            .unwrap()
            .as_fixed_size_list()
            .values()
            .as_primitive::<arrow::datatypes::Float64Type>()
            .values()
            .to_vec();
        assert!(p.iter().all(|v| v.is_finite()));
        served += out.num_rows();
    }
    assert!(served > 0);
}

fn toy_batch(l: i64, n_in: i64, h: i64) -> prep::Batch {
    tch::manual_seed(3);
    let x = Tensor::randn([2, l, n_in], (Kind::Float, tch::Device::Cpu));
    let y = Tensor::randn([2, l, h], (Kind::Float, tch::Device::Cpu));
    let loss_mask = Tensor::zeros([2, l], (Kind::Bool, tch::Device::Cpu));
    let _ = loss_mask.narrow(1, l - 1, 1).fill_(1);
    prep::Batch {
        baseline: y.zeros_like(),
        x: x.set_requires_grad(true),
        y,
        loss_mask,
        valid: Tensor::ones([2, l], (Kind::Bool, tch::Device::Cpu)),
    }
}

#[test]
fn tbptt_never_backpropagates_past_its_truncation() {
    let cfg = pipeline("lstm", "direct");
    let spec = crate::model::ModelSpec::untrained(&cfg);
    let net = Network::new(spec.shape, spec.horizon, tch::Device::Cpu, 1);
    let (l, k) = (20, 8);
    // Loss only at the last step (19). Chunks: [0,8) [8,16) [16,20).
    let b = toy_batch(l, spec.shape.input, spec.horizon);
    run_batch(&net, &b, k, &Loss::Mse, 0.0, true, None);
    let g =
        b.x.grad()
            .abs()
            .sum_dim_intlist([0i64, 2].as_slice(), false, Kind::Float);
    let g = Vec::<f32>::try_from(&g).unwrap();
    for (t, v) in g.iter().enumerate() {
        if t < 16 {
            assert_eq!(
                *v, 0.0,
                "gradient reached step {t}, beyond the truncation: {g:?}"
            );
        } else {
            assert!(
                *v > 0.0,
                "no gradient at step {t} inside the last chunk: {g:?}"
            );
        }
    }
    // Without truncation the gradient reaches the first step: the case matters.
    let b = toy_batch(l, spec.shape.input, spec.horizon);
    run_batch(&net, &b, l, &Loss::Mse, 0.0, true, None);
    let g0 = f64::try_from(b.x.grad().select(1, 0).abs().sum(Kind::Float)).unwrap();
    assert!(g0 > 0.0, "a full-length pass must reach step 0");
}

#[test]
fn clipping_bounds_the_global_norm_it_reports() {
    let cfg = pipeline("rnn", "direct");
    let spec = crate::model::ModelSpec::untrained(&cfg);
    let net = Network::new(spec.shape, spec.horizon, tch::Device::Cpu, 1);
    let b = toy_batch(10, spec.shape.input, spec.horizon);
    run_batch(&net, &b, 10, &Loss::Mse, 0.0, true, None);
    let before = grad_norm(&net.vs);
    assert!(before > 1e-3, "test needs a real gradient, got {before}");
    let reported = clip_global_norm(&net.vs, 1e-3);
    assert!((reported - before).abs() < 1e-9 * before.max(1.0));
    let after = grad_norm(&net.vs);
    assert!(after <= 1e-3 * (1.0 + 1e-5), "clipped norm {after}");
    assert!(after > 0.9e-3, "clipping scales, it does not zero: {after}");
}

#[test]
fn sequence_kernels_match_the_cells_step_by_step() {
    for cell in ["rnn", "irnn", "lstm", "gru"] {
        let mut cfg = pipeline(cell, "direct");
        cfg.model.layers = 2;
        let spec = crate::model::ModelSpec::untrained(&cfg);
        let net = Network::new(spec.shape, spec.horizon, tch::Device::Cpu, 5);
        tch::manual_seed(9);
        let xs = Tensor::randn([3, 7, spec.shape.input], (Kind::Float, tch::Device::Cpu));
        let (h0, c0) = net.zero_state(3);
        let h0 = h0 + 0.1;
        let (y1, h1, c1) = tch::no_grad(|| net.forward_seq(&xs, &h0, c0.as_ref(), 0.0, false));
        let (y2, h2, c2) = tch::no_grad(|| net.forward_steps(&xs, &h0, c0.as_ref()));
        let d = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap();
        assert!(
            d(&y1, &y2) < 1e-5,
            "{cell}: outputs differ by {}",
            d(&y1, &y2)
        );
        assert!(
            d(&h1, &h2) < 1e-5,
            "{cell}: states differ by {}",
            d(&h1, &h2)
        );
        if let (Some(a), Some(b)) = (c1, c2) {
            assert!(d(&a, &b) < 1e-5, "{cell}: cell states differ");
        }
    }
}

#[test]
fn quantile_head_learns_intervals_with_the_pinball_loss() {
    use arrow::array::AsArray;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pipeline("gru", "residual");
    cfg.model.quantiles = vec![0.1, 0.5, 0.9];
    let files = seasonal_windows(&cfg, 6, 24 * 30, dir.path());
    let trained = train_from_windows(&cfg, &quick(8), &files, None).unwrap();
    let r = &trained.report;
    assert!(
        r.best_val_loss < 0.8 * r.baseline_val_loss,
        "pinball {} vs baseline {}",
        r.best_val_loss,
        r.baseline_val_loss
    );
    // Run the live stage over the windows: intervals are ordered and cover
    // roughly 80% of what happens next.
    let (mut stage, batches) = live_stage(trained, &cfg, &files[0]);
    let mut series: std::collections::BTreeMap<String, Vec<(f64, [f64; 3])>> = Default::default();
    for b in batches {
        let out = stage.forecast(&b).unwrap();
        let keys = b.column(windows::KEY).as_string::<i32>();
        let vals = b
            .column(windows::FIRST_AGG)
            .as_primitive::<arrow::datatypes::Float64Type>();
        let q = out
            .column_by_name(crate::schema::forecasts::QUANTILES_NAME)
            .unwrap()
            .as_fixed_size_list();
        let qv = q
            .values()
            .as_primitive::<arrow::datatypes::Float64Type>()
            .values();
        let w = q.value_length() as usize; // 3 quantiles x 6 steps
        for i in 0..b.num_rows() {
            // One-step-ahead quantiles (step 1 of each quantile block).
            let one = [qv[i * w], qv[i * w + 6], qv[i * w + 12]];
            series
                .entry(keys.value(i).to_string())
                .or_default()
                .push((vals.value(i), one));
        }
    }
    let (mut inside, mut total) = (0, 0);
    for s in series.values() {
        for t in (s.len() - 200)..s.len() - 1 {
            let (next, q) = (s[t + 1].0, s[t].1);
            assert!(q[0] <= q[1] && q[1] <= q[2], "quantiles cross: {q:?}");
            total += 1;
            if next >= q[0] && next <= q[2] {
                inside += 1;
            }
        }
    }
    let cover = inside as f64 / total as f64;
    assert!((0.6..=0.95).contains(&cover), "80% interval covers {cover}");
}

/// The seq2seq decoder, plain and with temporal attention over the
/// encoder's recent states, trains with TBPTT past seasonal naive and its
/// sequence pass agrees with stepping.
#[test]
fn seq2seq_decoder_learns_and_agrees_between_step_and_sequence() {
    for attention in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = pipeline("lstm", "residual");
        cfg.model.decoder = crate::config::HorizonDecoder::Seq2seq;
        cfg.model.attention = attention;
        let spec = crate::model::ModelSpec::untrained(&cfg);
        let net = Network::for_spec(&spec, tch::Device::Cpu, 3);
        tch::manual_seed(4);
        let xs = Tensor::randn([2, 5, spec.shape.input], (Kind::Float, tch::Device::Cpu));
        let (h0, c0) = net.zero_state(2);
        let (y1, _, _) = tch::no_grad(|| net.forward_seq(&xs, &h0, c0.as_ref(), 0.0, false));
        let (y2, _, _) = tch::no_grad(|| net.forward_steps(&xs, &h0, c0.as_ref()));
        assert_eq!(y1.size(), vec![2, 5, spec.horizon]);
        assert!(
            f64::try_from((&y1 - &y2).abs().max()).unwrap() < 1e-5,
            "attention {attention}"
        );
        let files = seasonal_windows(&cfg, 6, 24 * 30, dir.path());
        let trained = train_from_windows(&cfg, &quick(8), &files, None).unwrap();
        let r = &trained.report;
        assert!(
            r.best_val_loss < 0.8 * r.baseline_val_loss,
            "attention {attention}: seq2seq val {} vs seasonal naive {}",
            r.best_val_loss,
            r.baseline_val_loss
        );
    }
}

#[test]
fn output_recurrence_trains_and_matches_the_live_stage_features() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pipeline("gru", "residual");
    cfg.model.output_recurrence = crate::config::OutputRecurrence::Hidden;
    let features = crate::model::feature_names(&cfg);
    assert_eq!(
        features.last().map(String::as_str),
        Some(crate::model::PREV_OUTPUT)
    );
    let files = seasonal_windows(&cfg, 4, 24 * 20, dir.path());
    let trained = train_from_windows(&cfg, &quick(4), &files, None).unwrap();
    assert!(!trained.report.diverged);
    assert!(
        trained.report.best_val_loss < trained.report.baseline_val_loss,
        "{:?}",
        trained.report
    );
    // The live stage takes the same network (input size includes the fed-back output).
    let (mut stage, batches) = live_stage(trained, &cfg, &files[0]);
    for b in batches {
        let out = stage.forecast(&b).unwrap();
        assert!(out.num_rows() > 0);
    }
}

/// Output-to-output recurrence and skip / dense connections train with the
/// same loop below seasonal naive, and the live stage serves the trained
/// network (the fed-back output carried per key).
#[test]
fn output_to_output_and_layer_connections_train_and_serve() {
    use crate::config::{Connections, OutputRecurrence};
    for (rec, conn, cell) in [
        (OutputRecurrence::Output, Connections::None, "gru"),
        (OutputRecurrence::None, Connections::Skip, "lstm"),
        (OutputRecurrence::Output, Connections::Dense, "rnn"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = pipeline(cell, "residual");
        cfg.model.output_recurrence = rec;
        cfg.model.connections = conn;
        cfg.model.layers = 2;
        let files = seasonal_windows(&cfg, 4, 24 * 20, dir.path());
        let trained = train_from_windows(&cfg, &quick(4), &files, None).unwrap();
        let r = trained.report.clone();
        assert!(!r.diverged);
        assert!(
            r.best_val_loss < r.baseline_val_loss,
            "{rec:?} {conn:?}: {r:?}"
        );
        assert_eq!(trained.spec.shape.output_recurrence, rec);
        assert_eq!(trained.spec.shape.connections, conn);
        let (mut stage, batches) = live_stage(trained, &cfg, &files[0]);
        for b in batches {
            let out = stage.forecast(&b).unwrap();
            assert!(out.num_rows() > 0);
        }
    }
}

/// The transformer cell and temporal attention on a GRU train with the
/// same loop (TBPTT, clipping) well below seasonal naive on a noisy season,
/// and the trained network served by the live stage, stepping window by
/// window, beats seasonal naive one step ahead on the last 200 windows.
#[test]
fn transformer_and_temporal_attention_learn_a_noisy_season() {
    use arrow::array::AsArray;
    for (cell, attention) in [("transformer", false), ("gru", true)] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = pipeline(cell, "residual");
        cfg.model.attention = attention;
        let files = seasonal_windows(&cfg, 6, 24 * 30, dir.path());
        let mut t = quick(8);
        if cell == "transformer" {
            t.lr = 3e-3;
        }
        let trained = train_from_windows(&cfg, &t, &files, None).unwrap();
        let r = trained.report.clone();
        eprintln!("{cell} attention={attention}: {r:?}");
        assert!(!r.diverged);
        assert!(
            r.best_val_loss < 0.75 * r.baseline_val_loss,
            "{cell}: val {} vs seasonal naive {}",
            r.best_val_loss,
            r.baseline_val_loss
        );
        assert!(
            r.train_loss.first() > r.train_loss.last(),
            "{cell}: training loss falls: {:?}",
            r.train_loss
        );
        let (mut stage, batches) = live_stage(trained, &cfg, &files[0]);
        let mut series: BTreeMap<String, Vec<(f64, f64, bool)>> = BTreeMap::new();
        for b in batches {
            let out = stage.forecast(&b).unwrap();
            let keys = b.column(windows::KEY).as_string::<i32>();
            let vals = b
                .column(windows::FIRST_AGG)
                .as_primitive::<arrow::datatypes::Float64Type>();
            let src = out.column(3).as_string::<i32>();
            let f = out.column(4).as_fixed_size_list();
            let fv = f
                .values()
                .as_primitive::<arrow::datatypes::Float64Type>()
                .values();
            let h = f.value_length() as usize;
            for i in 0..b.num_rows() {
                series.entry(keys.value(i).to_string()).or_default().push((
                    vals.value(i),
                    fv[i * h],
                    src.value(i) == "model",
                ));
            }
        }
        let (mut model_err, mut snaive_err, mut n) = (0.0, 0.0, 0);
        for s in series.values() {
            for t in (s.len() - 200)..s.len() - 1 {
                assert!(s[t].2, "{cell}: warm keys are forecast by the model");
                let next = s[t + 1].0;
                model_err += (s[t].1 - next).abs();
                snaive_err += (s[t + 1 - 24].0 - next).abs();
                n += 1;
            }
        }
        eprintln!(
            "{cell}: live one-step MAE {} vs seasonal naive {} over {n}",
            model_err / n as f64,
            snaive_err / n as f64
        );
        assert!(
            model_err < 0.9 * snaive_err,
            "{cell}: live one-step MAE {model_err} vs seasonal naive {snaive_err}"
        );
    }
}

/// The gradient report: one value per lag of the context, finite and
/// positive where the state matters; an Elman tanh network's gradient at
/// init falls with the lag (vanishing), an IRNN's (identity recurrence)
/// falls far less over the same lags; training counts its clipped steps,
/// and the report file is written.
#[test]
fn gradient_report_shows_the_decay_and_clipping_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut ratios = Vec::new();
    for cell in ["rnn", "irnn"] {
        let cfg = pipeline(cell, "residual");
        let files = seasonal_windows(&cfg, 4, 24 * 12, dir.path());
        let mut t = quick(2);
        t.clip_norm = 1e-3; // every step clipped
        t.grad_report = Some(dir.path().join(format!("{cell}.csv")));
        let data = prepare(&files, &prep_spec(&cfg, &t)).unwrap();
        let spec = ModelSpec::untrained(&cfg);
        let mut net = Network::for_spec(&spec, tch::Device::Cpu, 1);
        let curve = grad_decay(&net, &data, &t, 1);
        // Lags 1..context-1 (the last step of these samples is scored).
        assert_eq!(curve.len() as i64, t.context - 1);
        assert!(
            curve.iter().all(|v| v.is_finite() && *v > 0.0),
            "{cell}: {curve:?}"
        );
        ratios.push(curve[30] / curve[0]);
        let r = train(&mut net, &data, &t).unwrap();
        assert!(r.steps > 0 && r.clipped_steps == r.steps, "{r:?}");
        let text = std::fs::read_to_string(t.grad_report.as_ref().unwrap()).unwrap();
        let rows = |p: &str| text.lines().filter(|l| l.starts_with(p)).count();
        assert!(rows("init,") >= curve.len() && rows("trained,") == rows("init,"));
        // A curve after every epoch, and each epoch's clipped steps,
        // which add up to the total.
        assert!(r.epochs >= 1);
        for e in 1..=r.epochs {
            assert_eq!(rows(&format!("epoch_{e},")), rows("init,"), "epoch {e}");
        }
        assert_eq!(rows(&format!("epoch_{},", r.epochs + 1)), 0);
        let per_epoch: usize = text
            .lines()
            .filter_map(|l| l.strip_prefix("# epoch "))
            .map(|l| {
                l.split_whitespace()
                    .last()
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            })
            .sum();
        assert_eq!(per_epoch, r.clipped_steps);
        assert!(text.contains(&format!("# steps {} clipped {}", r.steps, r.steps)));
    }
    eprintln!(
        "ratio at lag 30: tanh {:e}, irnn {:e}",
        ratios[0], ratios[1]
    );
    assert!(ratios[0] < 1e-2, "tanh vanishes: {ratios:?}");
    assert!(ratios[1] > 10.0 * ratios[0], "IRNN keeps more: {ratios:?}");
}
