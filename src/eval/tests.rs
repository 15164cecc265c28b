//! Harness, metrics and backtest tests (including the leak check).
use super::*;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;

/// A baseline as a stream model, refitted at each origin (season 24).
fn refit(name: &str) -> Box<dyn StreamModel> {
    Box::new(RefitBaseline::new(
        name,
        baselines::named(name, 24).unwrap(),
    ))
}

/// A model context without the recurrent model's settings.
fn ctx(season: usize) -> ModelContext {
    ModelContext {
        season,
        rnn_pipeline: None,
        rnn_ensemble: 1,
        net_cache: None,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + b.abs())
}

fn write_tmp(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn m4_csv_parses_ragged_rows() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_tmp(
        &dir,
        "h.csv",
        "\"V1\",\"V2\",\"V3\",\"V4\",\"V5\"\n\"H1\",\"1\",\"2\",\"3\",\"4.5\"\n\"H2\",\"5\",\"6\",,\n\"H3\",\"7\",\"\",\"\",\"\"\r\n\n",
    );
    let got = read_m4_csv(&p).unwrap();
    assert_eq!(
        got,
        vec![
            ("H1".to_string(), vec![1.0, 2.0, 3.0, 4.5]),
            ("H2".to_string(), vec![5.0, 6.0]),
            ("H3".to_string(), vec![7.0]),
        ]
    );
    // Errors name the file, the line and the column.
    let bad = write_tmp(
        &dir,
        "bad.csv",
        "\"V1\",\"V2\",\"V3\"\n\"H1\",\"1\",\"2\"\n\"H2\",\"1\",\"x\"\n",
    );
    let e = read_m4_csv(&bad).unwrap_err().to_string();
    assert!(
        e.contains("bad.csv") && e.contains("line 3") && e.contains("V3") && e.contains("\"x\""),
        "{e}"
    );
    let gap = write_tmp(
        &dir,
        "gap.csv",
        "\"V1\",\"V2\",\"V3\",\"V4\"\n\"H1\",\"1\",,\"2\"\n",
    );
    let e = read_m4_csv(&gap).unwrap_err().to_string();
    assert!(
        e.contains("gap.csv") && e.contains("line 2") && e.contains("V3"),
        "{e}"
    );
    let empty = write_tmp(&dir, "empty.csv", "\"V1\",\"V2\"\n\"H1\",,\n");
    assert!(read_m4_csv(&empty)
        .unwrap_err()
        .to_string()
        .contains("line 2"));
    let dup = write_tmp(
        &dir,
        "dup.csv",
        "\"V1\",\"V2\"\n\"H1\",\"1\"\n\"H1\",\"2\"\n",
    );
    assert!(read_m4_csv(&dup)
        .unwrap_err()
        .to_string()
        .contains("line 3"));
    let missing = dir.path().join("nope.csv");
    assert!(format!("{:#}", read_m4_csv(&missing).unwrap_err()).contains("nope.csv"));
}

#[test]
fn holdout_split() {
    let data = vec![
        ("a".to_string(), (0..10).map(f64::from).collect::<Vec<_>>()),
        ("b".to_string(), vec![1.0, 2.0, 3.0, 4.0]),
    ];
    let p = Panel::holdout(&data, 3).unwrap();
    let g = p.read();
    assert_eq!(g[0].history(), &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(g[0].future(), &[7.0, 8.0, 9.0]);
    assert_eq!(g[1].history(), &[1.0]);
    assert_eq!(g[1].future(), &[2.0, 3.0, 4.0]);
    drop(g);
    // At least one history value must remain.
    assert!(Panel::holdout(&data, 4)
        .unwrap_err()
        .to_string()
        .contains("`b`"));
    // Forecasting past the end: all history, no future, no second run.
    let end = Panel::at_end(&data);
    assert!(end
        .read()
        .iter()
        .all(|s| s.future().is_empty() && s.history().len() == s.values.len()));
    let c = run_checked(
        &end,
        &mut || {
            model_by_name(
                "naive",
                &ModelContext {
                    season: 2,
                    rnn_pipeline: None,
                    rnn_ensemble: 1,
                    net_cache: None,
                },
            )
        },
        2,
    )
    .unwrap();
    assert!(!c.leak_checked);
    assert_eq!(c.forecasts, vec![vec![9.0, 9.0], vec![4.0, 4.0]]);
}

#[test]
fn seasonal_naive_hand_computed_smape_mase() {
    // m = 2, horizon 2.
    // A: history [1,3,2,5] -> snaive [2,5]; actual [4,6]:
    //    sMAPE = (200·2/6 + 200·1/11)/2; scale (|2−1|+|5−3|)/2 = 1.5; MAE 1.5 -> MASE 1.
    // B: history [2,4,4,8] -> snaive [4,8]; actual [4,4]:
    //    sMAPE = (0 + 200·4/12)/2 = 100/3; scale (2+4)/2 = 3; MAE 2 -> MASE 2/3.
    let data = vec![
        ("A".to_string(), vec![1.0, 3.0, 2.0, 5.0, 4.0, 6.0]),
        ("B".to_string(), vec![2.0, 4.0, 4.0, 8.0, 4.0, 4.0]),
    ];
    let (rep, checked) = eval_m4_holdout(&data, &["snaive".to_string()], &ctx(2), 2).unwrap();
    assert_eq!(checked[0].forecasts, vec![vec![2.0, 5.0], vec![4.0, 8.0]]);
    assert!(checked[0].leak_checked);
    let smape_a = (200.0 * 2.0 / 6.0 + 200.0 / 11.0) / 2.0;
    let smape_b = 100.0 / 3.0;
    let r = &rep.rows[0];
    assert!(
        close(r.mean.smape, (smape_a + smape_b) / 2.0),
        "{}",
        r.mean.smape
    );
    assert!(
        close(r.mean.mase, (1.0 + 2.0 / 3.0) / 2.0),
        "{}",
        r.mean.mase
    );
    assert!(close(
        r.owa_published,
        0.5 * (r.mean.smape / 18.383 + r.mean.mase / 2.395)
    ));
    // Too short for the seasonality test: our Naive2 is the naive forecast
    // ([5,5] and [8,8]): sMAPE (200/9 + 200/11)/2 and (100+100)/2.
    let n2_smape = ((200.0 / 9.0 + 200.0 / 11.0) / 2.0 + 200.0 * 4.0 / 12.0) / 2.0;
    let n2_mase = ((1.0 + 1.0) / 2.0 / 1.5 + 4.0 / 3.0) / 2.0;
    assert!(
        close(rep.naive2_own.0, n2_smape) && close(rep.naive2_own.1, n2_mase),
        "{:?}",
        rep.naive2_own
    );
    assert!(close(
        r.owa_own,
        0.5 * (r.mean.smape / n2_smape + r.mean.mase / n2_mase)
    ));
    let md = rep.to_markdown();
    assert!(md.contains("| snaive |") && md.contains("13.912") && md.contains("test set"));
}

/// Gets a handle to the panel through a side channel (the test hands it
/// over) and "forecasts" the true future.
struct Peeker {
    panel: Panel,
}

impl Model for Peeker {
    fn name(&self) -> String {
        "peeker".into()
    }
    fn fit_forecast(&mut self, histories: &[&[f64]], horizon: usize) -> Result<Vec<Vec<f64>>> {
        let g = self.panel.read();
        Ok(histories
            .iter()
            .zip(g.iter())
            .map(|(_, s)| {
                (0..horizon)
                    .map(|i| s.future().get(i).copied().unwrap_or(0.0))
                    .collect()
            })
            .collect())
    }
}

/// Peeks at a single value of one series' future, subtly.
struct SubtlePeeker {
    panel: Panel,
}

impl Model for SubtlePeeker {
    fn name(&self) -> String {
        "subtle".into()
    }
    fn fit_forecast(&mut self, histories: &[&[f64]], horizon: usize) -> Result<Vec<Vec<f64>>> {
        let hint = self.panel.read()[1].values.last().copied().unwrap_or(0.0);
        Ok(histories
            .iter()
            .map(|h| {
                let last = *h.last().unwrap();
                vec![last + hint * 1e-9; horizon]
            })
            .collect())
    }
}

#[test]
fn leaking_model_is_refused() {
    let data: Vec<(String, Vec<f64>)> = (0..3)
        .map(|k| {
            (
                format!("s{k}"),
                (0..40).map(|t| 10.0 + k as f64 + (t % 4) as f64).collect(),
            )
        })
        .collect();
    let panel = Panel::holdout(&data, 4).unwrap();
    let before = panel.read().clone();
    let p = panel.clone();
    let err =
        run_checked(&panel, &mut || Ok(Box::new(Peeker { panel: p.clone() })), 4).unwrap_err();
    assert!(
        matches!(&err, HarnessError::Leak { model, id, step: 1, .. } if model == "peeker" && id == "s0"),
        "{err:?}"
    );
    assert!(err.to_string().contains("read past the forecast origin"));
    let p = panel.clone();
    let err = run_checked(
        &panel,
        &mut || Ok(Box::new(SubtlePeeker { panel: p.clone() })),
        4,
    )
    .unwrap_err();
    assert!(matches!(err, HarnessError::Leak { .. }), "{err:?}");
    // The panel is restored after each check.
    assert_eq!(*panel.read(), before);
    // Every honest baseline passes on the same panel, with the forecasts
    // it gives on the histories alone.
    let ctx = ModelContext {
        season: 4,
        rnn_pipeline: None,
        rnn_ensemble: 1,
        net_cache: None,
    };
    for name in baselines::NAMES {
        let c = run_checked(&panel, &mut || model_by_name(name, &ctx), 4).unwrap();
        assert!(c.leak_checked);
        assert_eq!(c.model, *name);
        let f = baselines::named(name, 4).unwrap();
        for (s, got) in before.iter().zip(&c.forecasts) {
            assert_eq!(got, &f.forecast(s.history(), 4), "{name}");
        }
    }
    assert_eq!(*panel.read(), before);
}

struct Broken(usize, f64);
impl Model for Broken {
    fn name(&self) -> String {
        "broken".into()
    }
    fn fit_forecast(&mut self, histories: &[&[f64]], horizon: usize) -> Result<Vec<Vec<f64>>> {
        Ok(histories
            .iter()
            .take(self.0)
            .map(|_| vec![self.1; horizon])
            .collect())
    }
}

#[test]
fn harness_checks_shape_and_finiteness() {
    let data = vec![
        ("a".to_string(), vec![1.0; 10]),
        ("b".to_string(), vec![2.0; 10]),
    ];
    let panel = Panel::holdout(&data, 2).unwrap();
    let e = run_checked(&panel, &mut || Ok(Box::new(Broken(1, 1.0))), 2).unwrap_err();
    assert_eq!(
        e,
        HarnessError::Count {
            model: "broken".into(),
            want: 2,
            got: 1
        }
    );
    let e = run_checked(&panel, &mut || Ok(Box::new(Broken(2, f64::NAN))), 2).unwrap_err();
    assert!(
        matches!(e, HarnessError::NonFinite { step: 1, .. }),
        "{e:?}"
    );
    struct Short;
    impl Model for Short {
        fn name(&self) -> String {
            "short".into()
        }
        fn fit_forecast(&mut self, h: &[&[f64]], _: usize) -> Result<Vec<Vec<f64>>> {
            Ok(h.iter().map(|_| vec![1.0]).collect())
        }
    }
    let e = run_checked(&panel, &mut || Ok(Box::new(Short)), 2).unwrap_err();
    assert!(
        matches!(
            e,
            HarnessError::Length {
                want: 2,
                got: 1,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        eval_m4_holdout(&data, &["no_such_model".to_string()], &ctx(2), 2)
            .unwrap_err()
            .to_string()
            .contains("unknown model `no_such_model`")
    );
}

#[test]
fn submission_file_shape() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sub.csv");
    write_submission(
        &p,
        &["H1".into(), "H2".into()],
        &[vec![1.0, 2.5], vec![3.0, 4.0]],
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        "id,F1,F2\nH1,1,2.5\nH2,3,4\n"
    );
}

#[test]
fn rolling_origins_stay_in_the_tail() {
    for (n, h, max) in [
        (100, 12, 50),
        (100, 12, 5),
        (1000, 1, 7),
        (30, 6, 50),
        (10, 12, 5),
        (5, 1, 3),
    ] {
        let o = rolling_origins(n, h, max, 0.2);
        assert!(o.len() <= max, "{n} {h} {max}: {o:?}");
        assert!(
            o.iter()
                .all(|&x| x as f64 >= 0.8 * n as f64 && x + h <= n && x >= 1),
            "{n} {h} {max}: {o:?}"
        );
        assert!(o.windows(2).all(|w| w[0] < w[1]));
    }
    assert_eq!(
        rolling_origins(100, 12, 50, 0.2),
        (80..=88).collect::<Vec<_>>()
    );
    assert_eq!(rolling_origins(100, 1, 5, 0.2), vec![80, 84, 88, 92, 96]);
    assert!(rolling_origins(10, 12, 5, 0.2).is_empty());
}

/// Records how many windows it had seen whenever it was asked to forecast.
struct Recorder {
    seen: usize,
    at_forecast: Rc<RefCell<Vec<usize>>>,
    max_seen: Rc<RefCell<usize>>,
}

impl StreamModel for Recorder {
    fn name(&self) -> String {
        "recorder".into()
    }
    fn reset(&mut self, _key: &str) -> Result<()> {
        self.seen = 0;
        Ok(())
    }
    fn observe(&mut self, _ts: i64, _v: f64) -> Result<()> {
        self.seen += 1;
        let mut m = self.max_seen.borrow_mut();
        *m = (*m).max(self.seen);
        Ok(())
    }
    fn forecast(&mut self, horizon: usize) -> Result<Vec<f64>> {
        self.at_forecast.borrow_mut().push(self.seen);
        Ok(vec![1.0; horizon])
    }
}

fn key_series(key: &str, values: Vec<f64>) -> KeySeries {
    KeySeries {
        key: key.into(),
        start_ms: (0..values.len() as i64).map(|i| i * 3_600_000).collect(),
        values,
        filled: 0,
    }
}

#[test]
fn stream_backtest_sees_no_window_at_or_after_origin() {
    let vals: Vec<f64> = (0..200)
        .map(|t| 5.0 + (t % 24) as f64 + 0.01 * t as f64)
        .collect();
    let series = vec![
        key_series("a", vals.clone()),
        key_series("b", vals[..120].to_vec()),
        key_series("tiny", vec![1.0; 5]),
    ];
    let at = Rc::new(RefCell::new(Vec::new()));
    let max_seen = Rc::new(RefCell::new(0));
    let mut models: Vec<Box<dyn StreamModel>> = vec![
        Box::new(Recorder {
            seen: 0,
            at_forecast: at.clone(),
            max_seen: max_seen.clone(),
        }),
        refit("snaive"),
        refit("hw_add"),
        refit("damped_sa"),
    ];
    let opts = StreamOptions {
        horizon: 6,
        season: 24,
        max_origins: 10,
        tail_fraction: 0.2,
    };
    let rep = backtest_stream(&series, &mut models, &opts).unwrap();
    assert_eq!(rep.skipped, vec![("tiny".to_string(), 5)]);
    let oa = rolling_origins(200, 6, 10, 0.2);
    let ob = rolling_origins(120, 6, 10, 0.2);
    // At each origin the model had seen exactly the windows before it.
    let expected: Vec<usize> = oa.iter().chain(&ob).copied().collect();
    assert_eq!(*at.borrow(), expected);
    assert_eq!(*max_seen.borrow(), *oa.last().unwrap());
    // Refitted baselines forecast from exactly the history before the origin.
    for (kr, s) in rep.keys.iter().zip(&series) {
        for m in &kr.models[1..] {
            let f = baselines::named(&m.model, 24).unwrap();
            for (&o, got) in kr.origins.iter().zip(&m.forecasts) {
                assert_eq!(got, &f.forecast(&s.values[..o], 6), "{} {}", m.model, o);
            }
        }
    }
    // snaive on a purely seasonal+trend series: one-step error is 24·0.01.
    let sn = &rep.keys[0].models[1];
    assert!(close(sn.one_step.mae, 0.24), "{}", sn.one_step.mae);
    assert!(close(sn.one_step.mase, 1.0), "{}", sn.one_step.mase);
    assert_eq!(rep.rows.len(), 4);
    assert_eq!(rep.rows[3].model, "damped_sa");
    assert_eq!(rep.rows[1].h_step.n, oa.len() + ob.len());
    assert!(rep.to_markdown().contains("| snaive |"));
    assert!(rep.per_key_markdown().contains("| a | 200 |"));
}

fn nab_cfg(size: &str, max_gap: u32) -> PipelineConfig {
    crate::testkit::pipeline(&format!(
        "[window]\nsize = \"{size}\"\nmax_gap_windows = {max_gap}\n[model]\nseason_windows = 2\nhorizon = 1"
    ))
}

#[test]
fn nab_csv_windows_through_the_window_stage() {
    let dir = tempfile::tempdir().unwrap();
    // Key `k`: 15-minute readings, 1h windows (mean). Hour 0: 1,2,3,4 ->
    // 2.5; hour 1: 5,6,7,8 -> 6.5; hour 2 empty (ffill 6.5); hour 3: 10
    // -> 10; then a 5-hour gap (> max_gap 2) resets the key: hour 9: 20,
    // hour 10: 30 (the last window of the stream never closes).
    let mut csv = String::from("timestamp,value\n");
    let rows = [
        (0, 1.0),
        (15, 2.0),
        (30, 3.0),
        (45, 4.0),
        (60, 5.0),
        (75, 6.0),
        (90, 7.0),
        (105, 8.0),
        (180, 10.0),
        (540, 20.0),
        (600, 30.0),
    ];
    for (min, v) in rows {
        let t = chrono::DateTime::from_timestamp(1_400_000_400 + min * 60, 0).unwrap();
        let _ = writeln!(csv, "{},{v}", t.format("%Y-%m-%d %H:%M:%S"));
    }
    let p = write_tmp(&dir, "k.csv", &csv);
    // A second key ends earlier: its trailing filled windows are trimmed.
    let q = write_tmp(
        &dir,
        "other.csv",
        "timestamp,value\n2014-05-13 17:00:00,3\n2014-05-13 18:10:00,4\n",
    );
    let cfg = nab_cfg("1h", 2);
    let events = read_stream_inputs(&cfg, &[p.clone(), q]).unwrap();
    assert_eq!(events.num_rows(), 13);
    let s = window_series(&cfg, &events).unwrap();
    let names: Vec<&str> = s.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(names, vec!["k", "k#2", "other"]);
    assert_eq!(s[0].values, vec![2.5, 6.5, 6.5, 10.0]);
    assert_eq!(s[0].filled, 1);
    assert!(s[0].start_ms.windows(2).all(|w| w[1] - w[0] == 3_600_000));
    assert_eq!(s[0].start_ms[0] % 3_600_000, 0);
    assert_eq!(s[1].values, vec![20.0]);
    assert_eq!(s[2].values, vec![3.0, 4.0]);
    // Bad lines are named.
    let bad = write_tmp(
        &dir,
        "bad.csv",
        "timestamp,value\n2014-05-13 17:00:00,abc\n",
    );
    let e = read_stream_inputs(&cfg, &[bad]).unwrap_err().to_string();
    assert!(e.contains("bad.csv") && e.contains("line 2"), "{e}");
}

#[test]
fn parquet_events_window_like_csv() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<crate::source::generator::GenEvent> = (0..48)
        .map(|i| crate::source::generator::GenEvent {
            key: "g".into(),
            ts_ms: 1_400_000_400_000 + i * 900_000,
            value: i as f64,
        })
        .collect();
    let pq = dir.path().join("e.parquet");
    crate::source::generator::write_parquet(&events, &pq, "key", "ts", "value").unwrap();
    let cfg = nab_cfg("1h", 24);
    let s = window_series(&cfg, &read_stream_inputs(&cfg, &[pq]).unwrap()).unwrap();
    assert_eq!(s.len(), 1);
    // 12 hours of 4 readings; the last hour never closes.
    assert_eq!(s[0].values.len(), 11);
    assert_eq!(s[0].values[0], 1.5);
}

#[test]
fn plot_renders_svg_with_legend() {
    let dir = tempfile::tempdir().unwrap();
    let vals: Vec<f64> = (0..240)
        .map(|t| 50.0 + 10.0 * ((t % 24) as f64 / 24.0 * std::f64::consts::TAU).sin())
        .collect();
    let series = vec![key_series("cpu", vals)];
    let mut models: Vec<Box<dyn StreamModel>> = vec![refit("ses"), refit("snaive")];
    let rep = backtest_stream(
        &series,
        &mut models,
        &StreamOptions {
            horizon: 12,
            season: 24,
            max_origins: 20,
            tail_fraction: 0.2,
        },
    )
    .unwrap();
    let p = dir.path().join("cpu.svg");
    let mut spec = PlotSpec {
        model: "ses".into(),
        baseline: "snaive".into(),
        season: 24,
        last_windows: 100,
        y_desc: "mean of value per 1h window".into(),
    };
    plot_key(&series[0], &rep.keys[0], &spec, &p).unwrap();
    let svg = std::fs::read_to_string(&p).unwrap();
    assert!(
        svg.starts_with("<svg")
            && svg.contains("actual")
            && svg.contains("snaive (seasonal-naive baseline)")
            && svg.contains("window start")
    );
    assert!(svg.contains("mean of value per 1h window"));
    spec.model = "rnn".into();
    assert!(plot_key(&series[0], &rep.keys[0], &spec, &p).is_err());
}

/// The report's per-series table against seasonal naive, by hand: on A the
/// naive forecast [5,5] beats snaive's [2,5] (MASE 2/3 vs 1, sMAPE 20.2 vs
/// 42.4); on B naive's [8,8] loses to [4,8] (MASE 4/3 vs 2/3, sMAPE 66.7 vs
/// 33.3). Seasonal naive is run for the table even when not listed.
#[test]
fn m4_report_counts_wins_and_losses_against_seasonal_naive() {
    let data = vec![
        ("A".to_string(), vec![1.0, 3.0, 2.0, 5.0, 4.0, 6.0]),
        ("B".to_string(), vec![2.0, 4.0, 4.0, 8.0, 4.0, 4.0]),
    ];
    let want = m4::VsSnaive {
        mase_wins: 1,
        mase_losses: 1,
        smape_wins: 1,
        smape_losses: 1,
    };
    let models = ["naive".to_string(), "snaive".to_string()];
    let (rep, _) = eval_m4_holdout(&data, &models, &ctx(2), 2).unwrap();
    assert_eq!(rep.rows[0].vs_snaive, want);
    assert_eq!(rep.rows[1].vs_snaive, m4::VsSnaive::default());
    let (rep, _) = eval_m4_holdout(&data, &models[..1], &ctx(2), 2).unwrap();
    assert_eq!(rep.rows[0].vs_snaive, want);
    assert!(rep.to_markdown().contains("| naive | 1 | 1 | 1 | 1 |"));
}

/// Baselines forecast their series on several threads: the output is the
/// sequential one, series by series, bit for bit.
#[test]
fn threaded_baseline_model_equals_sequential_forecasts() {
    let histories: Vec<Vec<f64>> = (0..37)
        .map(|i| {
            (0..120 + i)
                .map(|t| 10.0 + (i as f64) + ((t * (i + 3)) % 24) as f64 * 0.7 + (t as f64) * 0.01)
                .collect()
        })
        .collect();
    let refs: Vec<&[f64]> = histories.iter().map(|h| h.as_slice()).collect();
    let mut m = BaselineModel::named("ses_sa", baselines::named("ses_sa", 24).unwrap());
    let got = m.fit_forecast(&refs, 12).unwrap();
    let one = baselines::named("ses_sa", 24).unwrap();
    assert_eq!(got.len(), refs.len());
    for (h, f) in refs.iter().zip(&got) {
        let want = one.forecast(h, 12);
        assert!(want.iter().zip(f).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
