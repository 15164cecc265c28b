//! The recurrent model inside the evaluation harness, through the project's
//! own path: series -> events -> window stage -> Parquet -> polars batch
//! prep -> TBPTT training -> the live forecast stage (`model::ForecastStage`),
//! stepping every key window by window with its carried state.
//!
//! - [`RnnModel`] is an `eval::Model` (M4: all histories at once; one global
//!   network trained on them; the forecast is the stage's output after each
//!   series' last window).
//! - [`OnlineRnn`] is an `eval::StreamModel` (rolling-origin backtests): it
//!   is trained once on the part of each series before the first origin the
//!   harness will ask about, then steps window by window as the live
//!   pipeline would, forecasting from its carried state. With
//!   `retrain.enabled` it also retrains as the live job does (see
//!   [`OnlineRnn`]'s notes on generations).

use arrow::array::{Array, AsArray, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::Float64Type;

use std::path::PathBuf;

use super::backtest::StreamModel;
use super::forecast_cache;
use super::harness::Model;
use crate::choose::Chooser;
use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::model::ForecastStage;
use crate::schema::{events_schema, forecasts, EventsBuilder};
use crate::train::{self, TrainReport};
use crate::window::bounded::{closed_windows, End};
use crate::window::WindowSpec;

/// Where the synthetic clock of an evaluation ends (2020-01-01T00:00Z): all
/// series end here, one window per value, so windows line up across series.
pub const EVAL_END_MS: i64 = 1_577_836_800_000;

/// How the networks of an ensemble are combined, per series and step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeedRule {
    /// The average (what the M4 winners did; the default).
    #[default]
    Mean,
    /// The median (mean of the middle two for an even count): one network
    /// that went astray on a series cannot pull the forecast.
    Median,
}

/// A network of an ensemble besides the generalist seeds (trained with a
/// seed of its own, [`Specialist::seed_offset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Specialist {
    /// Every series, with this many target lags as inputs (the warm-up is
    /// raised to at least that many windows).
    Lags(u32),
    /// Every series, with this many windows of context per training sample.
    Context(u32),
    /// Only the rougher half of the series (`true`) or the smoother half,
    /// by [`roughness`] of the values the network sees; it forecasts only
    /// those, so they get one more member than the others.
    Half(bool),
}

impl Specialist {
    /// Added to the pipeline's seeds: one per specialist, whatever else the
    /// ensemble holds, so a specialist is the same network (and the same
    /// cache entry) in every ensemble that names it.
    pub fn seed_offset(self) -> u64 {
        match self {
            Specialist::Lags(n) => 100_000 + u64::from(n),
            Specialist::Context(n) => 200_000 + u64::from(n),
            Specialist::Half(rough) => 300_000 + u64::from(rough),
        }
    }
}

/// What an `rnn` / `hybrid` trains and how it combines the networks:
/// `seeds` generalists (seeds `train.seed`, `+1`, ...) plus `specialists`,
/// combined per series and step by `rule`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ensemble {
    pub seeds: usize,
    pub rule: SeedRule,
    pub specialists: Vec<Specialist>,
    /// Directory where each network's forecasts are kept, keyed by a hash
    /// of its configuration (seed included), its histories and the
    /// horizon; a network asked again reuses them instead of training
    /// (`eval m4 --net-cache`).
    pub cache: Option<PathBuf>,
}

impl Ensemble {
    /// `seeds` generalists averaged (the `--rnn-ensemble` setting).
    pub fn seeds(seeds: usize) -> Self {
        Ensemble {
            seeds: seeds.max(1),
            ..Default::default()
        }
    }

    /// Parses the part of a model name after `@` (`hybrid@3.med.l72`):
    /// dot-separated tokens, each at most once per kind: a number = the
    /// generalist seeds (default `seeds`; 0 = specialists only), `mean` or
    /// `med` = the rule, `lN` = a specialist with N lags, `cN` = one with
    /// context N, `rough` / `smooth` = one trained on that half of the
    /// series. None when a token is not one of these or nothing is left to
    /// train.
    pub fn parse(spec: &str, seeds: usize) -> Option<Ensemble> {
        let mut e = Ensemble::seeds(seeds);
        let (mut n_seen, mut rule_seen) = (false, false);
        for tok in spec.split('.') {
            if let Ok(n) = tok.parse::<usize>() {
                if n_seen {
                    return None;
                }
                (n_seen, e.seeds) = (true, n);
                continue;
            }
            let num = |p: &str| {
                tok.strip_prefix(p)
                    .and_then(|r| r.parse::<u32>().ok())
                    .filter(|&n| n >= 1)
            };
            let s = match tok {
                "mean" | "med" if !rule_seen => {
                    rule_seen = true;
                    e.rule = if tok == "med" {
                        SeedRule::Median
                    } else {
                        SeedRule::Mean
                    };
                    continue;
                }
                "rough" => Specialist::Half(true),
                "smooth" => Specialist::Half(false),
                _ => match (num("l"), num("c")) {
                    (Some(n), _) => Specialist::Lags(n),
                    (_, Some(n)) if n >= 2 => Specialist::Context(n),
                    _ => return None,
                },
            };
            if e.specialists.contains(&s) {
                return None;
            }
            e.specialists.push(s);
        }
        (e.seeds + e.specialists.len() > 0).then_some(e)
    }
}

/// A series' roughness: mean absolute step over its standard deviation
/// (scale-free; 0 for a constant series). Noisy series score high, smooth
/// trends and slow levels low.
pub fn roughness(x: &[f64]) -> f64 {
    let n = x.len();
    if n < 3 {
        return 0.0;
    }
    let mean = x.iter().sum::<f64>() / n as f64;
    let sd = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
    let step = x.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (n - 1) as f64;
    if sd > 0.0 && step.is_finite() {
        step / sd
    } else {
        0.0
    }
}

/// Indices of the rougher (`rough`) or smoother half of `histories`
/// (ranked by [`roughness`], ties by index; the rough half has the extra
/// series of an odd count).
fn half(histories: &[&[f64]], rough: bool) -> Vec<usize> {
    let r: Vec<f64> = histories.iter().map(|h| roughness(h)).collect();
    let mut idx: Vec<usize> = (0..histories.len()).collect();
    idx.sort_by(|&a, &b| r[b].total_cmp(&r[a]).then(a.cmp(&b)));
    let k = histories.len().div_ceil(2);
    let mut out = if rough {
        idx[..k].to_vec()
    } else {
        idx[k..].to_vec()
    };
    out.sort_unstable();
    out
}

/// Per step, `rule` over the forecasts of one series (all of `horizon`
/// values); NaN where there are none.
fn combine_members(rule: SeedRule, members: &[Vec<f64>], horizon: usize) -> Vec<f64> {
    (0..horizon)
        .map(|t| {
            let mut v: Vec<f64> = members.iter().filter_map(|m| m.get(t).copied()).collect();
            if v.is_empty() {
                return f64::NAN;
            }
            match rule {
                SeedRule::Mean => v.iter().sum::<f64>() / v.len() as f64,
                SeedRule::Median => {
                    v.sort_by(f64::total_cmp);
                    let k = v.len();
                    if k % 2 == 1 {
                        v[k / 2]
                    } else {
                        0.5 * (v[k / 2 - 1] + v[k / 2])
                    }
                }
            }
        })
        .collect()
}

/// This process's user + system CPU seconds so far (Linux `/proc/self/stat`,
/// assuming the usual 100 ticks a second; None elsewhere): logged beside
/// each network's wall time, since on a shared box the two differ widely.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// A global recurrent model trained on the histories it is given.
pub struct RnnModel {
    cfg: PipelineConfig,
    /// Networks trained (seeds `train.seed`, `+1`, ...) whose forecasts are
    /// combined: ensembling, as the M4 winners did.
    pub ensemble: usize,
    /// How the networks are combined.
    pub rule: SeedRule,
    /// Networks besides the seeds (see [`Specialist`]).
    pub specialists: Vec<Specialist>,
    /// See [`Ensemble::cache`].
    pub cache: Option<PathBuf>,
    /// The name in reports when it was built by another (`rnn@3.med`).
    pub label: Option<String>,
    /// Report of the last training run.
    pub report: Option<TrainReport>,
}

impl RnnModel {
    /// Model, window and training settings come from a pipeline file.
    pub fn from_pipeline(path: &std::path::Path) -> Result<Self> {
        Ok(RnnModel::new(PipelineConfig::load(path)?))
    }

    pub fn new(cfg: PipelineConfig) -> Self {
        RnnModel {
            cfg,
            ensemble: 1,
            rule: SeedRule::Mean,
            specialists: Vec::new(),
            cache: None,
            label: None,
            report: None,
        }
    }

    /// Seeds, rule, specialists and cache from `e`.
    pub fn set_ensemble(&mut self, e: Ensemble) {
        self.ensemble = e.seeds;
        self.rule = e.rule;
        self.specialists = e.specialists;
        self.cache = e.cache;
    }

    /// The networks to train: configuration and the series each sees
    /// (None = all).
    fn networks(
        &self,
        cfg: &PipelineConfig,
        histories: &[&[f64]],
    ) -> Vec<(PipelineConfig, Option<Vec<usize>>)> {
        let mut out = Vec::new();
        for m in 0..self.ensemble {
            let mut c = cfg.clone();
            c.train.seed = cfg.train.seed.wrapping_add(m as u64);
            c.model.seed = cfg.model.seed.wrapping_add(m as i64);
            out.push((c, None));
        }
        for s in &self.specialists {
            let mut c = cfg.clone();
            let offset = s.seed_offset();
            c.train.seed = cfg.train.seed.wrapping_add(offset);
            c.model.seed = cfg.model.seed.wrapping_add(offset as i64);
            let subset = match *s {
                Specialist::Lags(n) => {
                    c.model.lags = Some(n);
                    c.model.warmup_windows = c.model.warmup_windows.max(n);
                    None
                }
                Specialist::Context(n) => {
                    c.train.context = i64::from(n);
                    None
                }
                Specialist::Half(rough) => Some(half(histories, rough)),
            };
            out.push((c, subset));
        }
        out
    }

    /// One network trained on `histories` and its forecasts after each
    /// series' last window (from the cache when it has them).
    fn network(
        &mut self,
        cfg: &PipelineConfig,
        histories: &[&[f64]],
        horizon: usize,
    ) -> Result<Vec<Vec<f64>>> {
        let path = self
            .cache
            .as_deref()
            .map(|d| forecast_cache::file(d, "net", &format!("{cfg:?}"), histories, horizon));
        if let Some(f) = path
            .as_deref()
            .and_then(|p| forecast_cache::read(p, histories.len(), horizon))
        {
            tracing::info!(path = %path.as_deref().map(|p| p.display().to_string()).unwrap_or_default(), "network forecasts from the cache");
            return Ok(f);
        }
        let (wall, cpu) = (std::time::Instant::now(), process_cpu_seconds());
        let step = cfg.slide_ms();
        let events = series_events(cfg, histories, step);
        let windows = closed_windows(
            WindowSpec::from_config(cfg),
            &events,
            End::Through(EVAL_END_MS),
        );
        let data = prepare_windows(cfg, &windows)?;
        let trained = train::train_prepared(cfg, &cfg.train, &data, None)?;
        tracing::info!(
            seed = cfg.train.seed,
            series = histories.len(),
            lags = cfg.lags(),
            context = cfg.train.context,
            val = trained.report.best_val_loss,
            baseline = trained.report.baseline_val_loss,
            epochs = trained.report.epochs,
            seconds = trained.report.seconds,
            "rnn trained"
        );
        self.report = Some(trained.report.clone());
        let mut stage = ForecastStage::new(
            trained.net,
            trained.spec,
            cfg.decode.value_fields.len(),
            cfg.model.warmup_windows,
        );
        with_hybrid(cfg, &mut stage);
        let mut out = vec![vec![f64::NAN; horizon]; histories.len()];
        for w in &windows {
            let f = stage.forecast(w)?;
            collect_last(&f, EVAL_END_MS, &mut out);
        }
        tracing::info!(
            seed = cfg.train.seed,
            wall_seconds = wall.elapsed().as_secs_f64(),
            cpu_seconds = process_cpu_seconds().zip(cpu).map(|(b, a)| b - a),
            "rnn network done (prep, training, forecasts)"
        );
        if let Some(p) = &path {
            if out.iter().flatten().all(|v| v.is_finite()) {
                forecast_cache::write(p, &out)?;
            }
        }
        Ok(out)
    }

    fn run(&mut self, histories: &[&[f64]], horizon: usize) -> Result<Vec<Vec<f64>>> {
        let mut cfg = self.cfg.clone();
        cfg.model.horizon = horizon as i64;
        // Per series, the forecasts of every network that covers it.
        let mut members: Vec<Vec<Vec<f64>>> = vec![Vec::new(); histories.len()];
        for (ncfg, subset) in self.networks(&cfg, histories) {
            let idx: Vec<usize> = subset.unwrap_or_else(|| (0..histories.len()).collect());
            if idx.is_empty() {
                continue;
            }
            let hs: Vec<&[f64]> = idx.iter().map(|&i| histories[i]).collect();
            let f = self.network(&ncfg, &hs, horizon)?;
            for (&i, fi) in idx.iter().zip(f) {
                members[i].push(fi);
            }
        }
        Ok(members
            .iter()
            .map(|m| combine_members(self.rule, m, horizon))
            .collect())
    }
}

/// The live stage's per-key smoothing when the pipeline asks for the
/// hybrid (`[model.hybrid]`; training prepared its windows the same way).
fn with_hybrid(cfg: &PipelineConfig, stage: &mut ForecastStage) {
    if let Some(h) = &cfg.model.hybrid {
        stage.set_hybrid(crate::model::hybrid::HybridKeys::new(
            crate::model::hybrid::params_of(h),
            h.mode,
        ));
    }
}

/// Windows (in memory, arrow-rs) -> polars-prepared training data. The two
/// Arrow implementations meet through a Parquet file, as DESIGN.md asks.
fn prepare_windows(cfg: &PipelineConfig, windows: &[RecordBatch]) -> Result<train::Prepared> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
    let path = dir.path().join("windows.parquet");
    crate::archive::write_windows_file(
        windows,
        WindowSpec::from_config(cfg).windows_schema(),
        &path,
    )?;
    train::prepare(&[path], &train::prep_spec(cfg, &cfg.train))
}

/// Events for series `i` (key `s{i:05}`): one per value, in the middle of
/// its window, the last window ending at `EVAL_END_MS`.
fn series_events(cfg: &PipelineConfig, histories: &[&[f64]], step: i64) -> RecordBatch {
    let n: usize = histories.iter().map(|h| h.len()).sum();
    let mut b = EventsBuilder::new(events_schema(&cfg.decode.value_fields), n);
    let longest = histories.iter().map(|h| h.len()).max().unwrap_or(0) as i64;
    // In time order across series, as a stream would deliver them.
    for t in 0..longest {
        for (i, h) in histories.iter().enumerate() {
            let len = h.len() as i64;
            let idx = t - (longest - len);
            if idx < 0 {
                continue;
            }
            let ts = EVAL_END_MS - (len - idx) * step + step / 2;
            b.push(
                &key_of(i),
                ts,
                0,
                t * histories.len() as i64 + i as i64,
                &[h[idx as usize]],
            );
        }
    }
    b.finish()
}

fn key_of(i: usize) -> String {
    format!("s{i:05}")
}

/// Stores the forecasts made at the window ending at `end_ms` by key index.
fn collect_last(f: &RecordBatch, end_ms: i64, out: &mut [Vec<f64>]) {
    let keys = f.column(forecasts::KEY).as_string::<i32>();
    let Some(ends) = f
        .column(forecasts::WINDOW_END)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
    else {
        return;
    };
    let lists = f.column(forecasts::FORECAST).as_fixed_size_list();
    let h = lists.value_length() as usize;
    let vals = lists.values().as_primitive::<Float64Type>().values();
    for r in 0..f.num_rows() {
        if ends.value(r) != end_ms {
            continue;
        }
        if let Some(i) = keys
            .value(r)
            .strip_prefix('s')
            .and_then(|s| s.parse::<usize>().ok())
        {
            if i < out.len() {
                out[i] = vals[r * h..(r + 1) * h].to_vec();
            }
        }
    }
}

impl Model for RnnModel {
    fn name(&self) -> String {
        if let Some(l) = &self.label {
            return l.clone();
        }
        if self.cfg.choice.enabled {
            "rnn+choice".into()
        } else {
            "rnn".into()
        }
    }

    /// Training takes minutes: no second run. It only ever receives the
    /// harness's copies of the histories, so it cannot see a future.
    fn leak_check(&self) -> bool {
        false
    }

    fn fit_forecast(&mut self, histories: &[&[f64]], horizon: usize) -> Result<Vec<Vec<f64>>> {
        self.run(histories, horizon)
    }
}

/// The online recurrent model for rolling-origin backtests: trained on each
/// series' windows before `train_fraction` of its length, then stepped
/// window by window, forecasting from its carried state.
pub struct OnlineRnn {
    cfg: PipelineConfig,
    /// Series (window starts, values) given in full up front so the model
    /// can be trained on their early parts (never on anything at or after
    /// the evaluated origins).
    train_series: Vec<(Vec<i64>, Vec<f64>)>,
    train_fraction: f64,
    stage: Option<ForecastStage>,
    /// Model generations (`retrain.enabled`): the first is the initial
    /// model; generation k (k >= 1) was retrained on every window that
    /// starts before its cutoff (event time), from the previous
    /// generation's weights with `retrain.from_champion`, and replaced it
    /// only if the live job's rule promotes it (`retrain::decide`: a lower
    /// validation loss on the same holdout). Cutoffs are
    /// `retrain.every_windows` closed windows (all keys) apart, i.e.
    /// `every_windows / keys` windows of event time, from the earliest
    /// initial training cutoff. A key's stage runs the generation whose
    /// cutoff its window has passed, so no forecast uses data after its
    /// origin.
    generations: Vec<Generation>,
    /// The generation the stage runs now.
    running: usize,
    /// Per-key model choice after the stage, when `choice.enabled` (as the
    /// live job does).
    chooser: Option<Chooser>,
    key: String,
    seen: i64,
    last: Option<Vec<f64>>,
    pub report: Option<TrainReport>,
}

/// One model generation of [`OnlineRnn`].
struct Generation {
    /// Windows starting at or after this (ms) use it.
    from_ms: i64,
    net: crate::model::Network,
    spec: crate::model::ModelSpec,
    /// Whether the retrain's challenger was promoted (false: a copy of the
    /// previous generation).
    promoted: bool,
}

/// Which windows a training run may see.
#[derive(Debug, Clone, Copy)]
enum Cutoff {
    /// The first `fraction` of each series' windows.
    Fraction(f64),
    /// Every window starting before this time (ms).
    Before(i64),
}

impl OnlineRnn {
    /// The first `train_fraction` of each series' windows is used for training.
    pub fn new(
        cfg: PipelineConfig,
        train_series: Vec<(Vec<i64>, Vec<f64>)>,
        train_fraction: f64,
    ) -> Self {
        OnlineRnn {
            cfg,
            train_series,
            train_fraction,
            stage: None,
            generations: Vec::new(),
            running: 0,
            chooser: None,
            key: String::new(),
            seen: 0,
            last: None,
            report: None,
        }
    }

    /// The windows `cutoff` allows, prepared for training.
    fn training_data(&self, cutoff: Cutoff) -> Result<train::Prepared> {
        let cfg = &self.cfg;
        // Events at the middle of each training window, on the real clock
        // (calendar covariates must mean the same in training and replay).
        let size = cfg.size_ms();
        let mut rows: Vec<(i64, usize, f64)> = Vec::new();
        let mut final_wm = i64::MIN;
        for (i, (starts, values)) in self.train_series.iter().enumerate() {
            let n = match cutoff {
                Cutoff::Fraction(f) => ((values.len() as f64 * f) as usize).min(values.len()),
                Cutoff::Before(ms) => self.usable_before(starts, ms),
            };
            for j in 0..n {
                rows.push((starts[j] + size / 2, i, values[j]));
            }
            if n > 0 {
                final_wm = final_wm.max(starts[n - 1] + size);
            }
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut b = EventsBuilder::new(events_schema(&cfg.decode.value_fields), rows.len());
        for (o, (ts, i, v)) in rows.iter().enumerate() {
            b.push(&key_of(*i), *ts, 0, o as i64, &[*v]);
        }
        let windows = closed_windows(
            WindowSpec::from_config(cfg),
            &b.finish(),
            End::Through(final_wm),
        );
        prepare_windows(cfg, &windows)
    }

    /// The windows of a series (its window starts) a training run with
    /// cutoff `ms` takes: those before it, or none when the series has
    /// barely started by then (training needs more than the validation,
    /// horizon and context windows of every key).
    fn usable_before(&self, starts: &[i64], ms: i64) -> usize {
        let prep = train::prep_spec(&self.cfg, &self.cfg.train);
        let min = (prep.val_windows + prep.horizon + prep.context).max(0) as usize;
        match starts.partition_point(|&s| s < ms) {
            n if n > min => n,
            _ => 0,
        }
    }

    /// Event time between retrain cutoffs: `retrain.every_windows` closed
    /// windows of all keys.
    fn retrain_step_ms(&self) -> i64 {
        let keys = self.train_series.len().max(1) as u64;
        (self.cfg.retrain.every_windows / keys).max(1) as i64 * self.cfg.size_ms()
    }

    /// The earliest time the initial training did not see.
    fn first_cutoff_ms(&self) -> i64 {
        self.train_series
            .iter()
            .filter_map(|(starts, values)| {
                let n = (values.len() as f64 * self.train_fraction) as usize;
                starts.get(n.min(values.len().saturating_sub(1))).copied()
            })
            .min()
            .unwrap_or(i64::MAX)
    }

    /// The generation for a window starting at `start_ms`, retraining the
    /// ones before it that were not trained yet.
    fn generation_for(&mut self, start_ms: i64) -> Result<usize> {
        if !self.cfg.retrain.enabled {
            return Ok(0);
        }
        let (base, step) = (self.first_cutoff_ms(), self.retrain_step_ms());
        loop {
            let k = self.generations.len();
            let from_ms = base.saturating_add(step.saturating_mul(k as i64));
            if from_ms > start_ms {
                break;
            }
            // With nothing trainable before the cutoff (series that start
            // later) the champion stays, as a live retrain with too little
            // archive would leave it.
            let trainable = self
                .train_series
                .iter()
                .any(|(starts, _)| self.usable_before(starts, from_ms) > 0);
            let promoted = if trainable {
                let data = self.training_data(Cutoff::Before(from_ms))?;
                let prev = &self.generations[k - 1];
                let init = self.cfg.retrain.from_champion.then_some(&prev.net);
                let challenger = train::train_prepared(&self.cfg, &self.cfg.train, &data, init)?;
                let champion_val = train::validation_loss(&prev.net, &data, &self.cfg.train);
                let d = crate::retrain::decide(&challenger, champion_val, &prev.spec.version);
                tracing::info!(generation = k, from_ms, promoted = d.promoted, reason = %d.reason, "eval stream: retrained");
                d.promoted.then_some(challenger)
            } else {
                None
            };
            let prev = &self.generations[k - 1];
            let generation = match promoted {
                Some(c) => Generation {
                    from_ms,
                    net: c.net,
                    spec: c.spec,
                    promoted: true,
                },
                None => Generation {
                    from_ms,
                    net: prev.net.copy_for(&prev.spec)?,
                    spec: prev.spec.clone(),
                    promoted: false,
                },
            };
            self.generations.push(generation);
        }
        Ok(self
            .generations
            .iter()
            .rposition(|g| g.from_ms <= start_ms)
            .unwrap_or(0))
    }

    /// (retrains run, challengers promoted) so far.
    pub fn retrains(&self) -> (usize, usize) {
        let run = self.generations.len().saturating_sub(1);
        let promoted = self
            .generations
            .iter()
            .skip(1)
            .filter(|g| g.promoted)
            .count();
        (run, promoted)
    }

    fn ensure_trained(&mut self) -> Result<()> {
        if self.stage.is_some() {
            return Ok(());
        }
        let cfg = self.cfg.clone();
        let data = self.training_data(Cutoff::Fraction(self.train_fraction))?;
        let trained = train::train_prepared(&cfg, &cfg.train, &data, None)?;
        self.report = Some(trained.report.clone());
        self.generations = vec![Generation {
            from_ms: i64::MIN,
            net: trained.net.copy_for(&trained.spec)?,
            spec: trained.spec.clone(),
            promoted: true,
        }];
        self.running = 0;
        let mut stage = ForecastStage::new(trained.net, trained.spec, 1, cfg.model.warmup_windows);
        with_hybrid(&cfg, &mut stage);
        self.stage = Some(stage);
        self.chooser = cfg.choice.enabled.then(|| {
            Chooser::new(
                crate::choose::ChoiceSpec::from_config(&cfg.choice),
                cfg.slide_ms(),
                cfg.model.horizon as usize,
                cfg.model.season_windows as usize,
            )
        });
        Ok(())
    }
}

impl StreamModel for OnlineRnn {
    fn name(&self) -> String {
        if self.cfg.model.hybrid.is_some() {
            "hybrid".into()
        } else {
            "rnn".into()
        }
    }

    fn reset(&mut self, key: &str) -> Result<()> {
        self.ensure_trained()?;
        let ended = [std::sync::Arc::from(self.key.as_str())];
        if let Some(s) = self.stage.as_mut() {
            s.end_keys(&ended);
        }
        if let Some(c) = self.chooser.as_mut() {
            c.end_keys(&ended);
        }
        self.key = key.to_string();
        self.seen = 0;
        self.last = None;
        Ok(())
    }

    fn observe(&mut self, window_start_ms: i64, value: f64) -> Result<()> {
        if self.stage.is_none() {
            return Ok(());
        }
        let g = self.generation_for(window_start_ms)?;
        if g != self.running {
            // As a hot swap in the live job: the key's state is replayed
            // through the new generation's network.
            let gen = &self.generations[g];
            let net = gen.net.copy_for(&gen.spec)?;
            if let Some(stage) = self.stage.as_mut() {
                stage.swap(net, gen.spec.clone())?;
            }
            self.running = g;
        }
        let Some(stage) = self.stage.as_mut() else {
            return Ok(());
        };
        let spec = WindowSpec::from_config(&self.cfg);
        let batch = one_window(&spec, &self.key, window_start_ms, value);
        self.seen += 1;
        let mut f = stage.forecast(&batch)?;
        if let Some(c) = self.chooser.as_mut() {
            f = c.choose(&batch, f);
        }
        let lists = f.column(forecasts::FORECAST).as_fixed_size_list();
        let vals = lists.values().as_primitive::<Float64Type>().values();
        self.last = Some(vals.to_vec());
        Ok(())
    }

    fn forecast(&mut self, horizon: usize) -> Result<Vec<f64>> {
        Ok(match &self.last {
            Some(v) if v.len() >= horizon => v[..horizon].to_vec(),
            Some(v) => {
                let mut v = v.clone();
                let last = v.last().copied().unwrap_or(0.0);
                v.resize(horizon, last);
                v
            }
            // Nothing observed yet: the harness refuses non-finite values
            // with a message naming the key and origin.
            None => vec![f64::NAN; horizon],
        })
    }
}

/// A one-row windows batch (the schema the forecast stage takes).
fn one_window(spec: &WindowSpec, key: &str, start_ms: i64, value: f64) -> RecordBatch {
    let mut b = crate::window::WindowsBuilder::new(spec, 1);
    b.push(key, start_ms, 1, false, &[value]);
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PipelineConfig {
        crate::testkit::pipeline(
            r#"
[window]
max_gap_windows = 100000
[model]
cell = "gru"
hidden = 8
horizon = 12
season_windows = 24
lags = 24
warmup_windows = 24
[train]
epochs = 4
context = 48
stride = 12
tbptt = 24
burn_in = 12
val_windows = 12
lr = 0.01
"#,
        )
    }

    /// Seasonal series with different levels, lengths and phases.
    fn series() -> Vec<Vec<f64>> {
        (0..8)
            .map(|i| {
                let n = 300 + 20 * i;
                (0..n)
                    .map(|t| {
                        50.0 + 10.0 * i as f64
                            + 8.0 * ((t as f64 + i as f64) * std::f64::consts::TAU / 24.0).sin()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn ensemble_names_parse_and_bad_ones_are_refused() {
        let e = Ensemble::parse("3.med.l72.c480.rough", 1).unwrap();
        assert_eq!((e.seeds, e.rule), (3, SeedRule::Median));
        assert_eq!(
            e.specialists,
            vec![
                Specialist::Lags(72),
                Specialist::Context(480),
                Specialist::Half(true)
            ]
        );
        // The seed count defaults to the flag's; 0 seeds = specialists only.
        let e = Ensemble::parse("smooth", 5).unwrap();
        assert_eq!((e.seeds, e.rule), (5, SeedRule::Mean));
        assert_eq!(Ensemble::parse("0.l24", 3).unwrap().seeds, 0);
        for bad in [
            "",
            "0",
            "3.3",
            "med.mean",
            "l0",
            "c1",
            "lx",
            "rough.rough",
            "x",
            "3..med",
        ] {
            assert!(Ensemble::parse(bad, 1).is_none(), "{bad}");
        }
    }

    #[test]
    fn names_with_an_ensemble_build_and_others_are_refused() {
        let ctx = super::super::ModelContext {
            season: 24,
            rnn_pipeline: None,
            rnn_ensemble: 1,
            net_cache: None,
        };
        for ok in [
            "hybrid@3.med",
            "hybrid_d@l72",
            "rnn@2",
            "combo_median:rf+hybrid@3",
        ] {
            let m = super::super::model_by_name(ok, &ctx).unwrap();
            assert_eq!(m.name(), ok);
        }
        for bad in ["hybrid@x", "hybrid@", "es@3", "snaive@3", "hybrid@3@3"] {
            assert!(super::super::model_by_name(bad, &ctx).is_err(), "{bad}");
        }
    }

    #[test]
    fn members_combine_by_mean_or_median_per_step() {
        let m = vec![vec![1.0, 10.0], vec![2.0, 0.0], vec![9.0, 2.0]];
        assert_eq!(combine_members(SeedRule::Mean, &m, 2), vec![4.0, 4.0]);
        assert_eq!(combine_members(SeedRule::Median, &m, 2), vec![2.0, 2.0]);
        assert_eq!(
            combine_members(SeedRule::Median, &m[..2], 2),
            vec![1.5, 5.0]
        );
        assert!(combine_members(SeedRule::Mean, &[], 1)[0].is_nan());
    }

    #[test]
    fn the_halves_split_by_roughness() {
        let smooth: Vec<f64> = (0..100).map(|t| t as f64).collect();
        let rough: Vec<f64> = (0..100).map(|t| (t % 2) as f64).collect();
        let mid: Vec<f64> = (0..100).map(|t| (t / 10 % 2) as f64).collect();
        let h: Vec<&[f64]> = vec![&smooth, &rough, &mid, &rough];
        assert!(roughness(&rough) > roughness(&mid) && roughness(&mid) > roughness(&smooth));
        assert_eq!(roughness(&[3.0; 10]), 0.0);
        assert_eq!(half(&h, true), vec![1, 3]);
        assert_eq!(half(&h, false), vec![0, 2]);
        // An odd count: the rough half takes the middle series.
        assert_eq!(half(&h[..3], true), vec![1, 2]);
    }

    /// Seeds and a half specialist train once; asked again with the cache,
    /// every network's forecasts come from it (overwritten here, so the
    /// combined forecasts show which network covered which series).
    #[test]
    fn an_ensemble_with_a_specialist_reuses_its_cached_networks() {
        let s = series();
        let histories: Vec<&[f64]> = s.iter().map(|v| &v[..v.len() - 12]).collect();
        let tmp = tempfile::tempdir().unwrap();
        // A directory that does not exist yet: the first write creates it.
        let dir = tmp.path().join("cache");
        let ens = Ensemble {
            seeds: 1,
            rule: SeedRule::Mean,
            specialists: vec![Specialist::Half(true)],
            cache: Some(dir.clone()),
        };
        let mut m = RnnModel::new(cfg());
        m.set_ensemble(ens.clone());
        let f = m.fit_forecast(&histories, 12).unwrap();
        assert!(f.iter().flatten().all(|v| v.is_finite()));
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
        // The specialist's file has half the rows, so it is the smaller.
        assert_eq!(files.len(), 2);
        let rows = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!((rows(&files[0]), rows(&files[1])), (4, 8));
        let fill = |p: &std::path::Path, v: f64, n: usize| {
            let row = vec![format!("{v:?}"); 12].join(",");
            std::fs::write(p, vec![row; n].join("\n") + "\n").unwrap();
        };
        fill(&files[0], 3.0, 4);
        fill(&files[1], 1.0, 8);
        let mut again = RnnModel::new(cfg());
        again.set_ensemble(ens);
        let g = again.fit_forecast(&histories, 12).unwrap();
        let rough = half(&histories, true);
        for (i, fc) in g.iter().enumerate() {
            let want = if rough.contains(&i) { 2.0 } else { 1.0 };
            assert!(fc.iter().all(|&v| v == want), "series {i}: {fc:?}");
        }
    }

    #[test]
    fn the_m4_path_trains_and_forecasts_every_series_after_its_last_window() {
        let s = series();
        let histories: Vec<&[f64]> = s.iter().map(|v| &v[..v.len() - 12]).collect();
        let mut m = RnnModel::new(cfg());
        let f = m.fit_forecast(&histories, 12).unwrap();
        assert_eq!(f.len(), s.len());
        for (i, (fc, full)) in f.iter().zip(&s).enumerate() {
            assert_eq!(fc.len(), 12);
            assert!(fc.iter().all(|v| v.is_finite()), "series {i}: {fc:?}");
            // A noiseless season: the forecast is close to what came next.
            let truth = &full[full.len() - 12..];
            let mae: f64 = fc
                .iter()
                .zip(truth)
                .map(|(a, b)| (a - b).abs())
                .sum::<f64>()
                / 12.0;
            assert!(mae < 2.0, "series {i}: MAE {mae} (amplitude 8)");
        }
        assert!(m.report.is_some());
    }

    /// The live hybrid (`[model.hybrid]`): training prepares the smoothed
    /// target, the stage smooths each key online and inverts its forecasts.
    /// A multiplicative season on very different levels: the forecast must
    /// come back in each series' units.
    /// Both heads: the residual one (the default) and the direct one with
    /// the MAE loss (what the shipped NAB pipelines run).
    #[test]
    fn the_hybrid_pipeline_trains_and_forecasts_in_the_series_units() {
        for head in [crate::config::Head::Residual, crate::config::Head::Direct] {
            let mut c = cfg();
            c.model.head = head;
            if head == crate::config::Head::Direct {
                c.train.loss = crate::config::PointLoss::Mae;
            }
            hybrid_forecasts_in_series_units(c);
        }
    }

    fn hybrid_forecasts_in_series_units(mut c: PipelineConfig) {
        c.model.hybrid = Some(crate::config::HybridConfig {
            periods: vec![24],
            alpha: 0.05,
            gammas: vec![0.05],
            mode: crate::config::HybridMode::Relative,
            ..Default::default()
        });
        let s: Vec<Vec<f64>> = (0..8)
            .map(|i| {
                let level = 10f64.powi(i % 4 + 1);
                (0..300 + 20 * i)
                    .map(|t| {
                        level
                            * (1.0
                                + 0.4
                                    * ((t as f64 + i as f64) * std::f64::consts::TAU / 24.0).sin())
                    })
                    .collect()
            })
            .collect();
        let histories: Vec<&[f64]> = s.iter().map(|v| &v[..v.len() - 12]).collect();
        let head = c.model.head;
        let mut m = RnnModel::new(c);
        let f = m.fit_forecast(&histories, 12).unwrap();
        for (i, (fc, full)) in f.iter().zip(&s).enumerate() {
            let truth = &full[full.len() - 12..];
            let rel: f64 = fc
                .iter()
                .zip(truth)
                .map(|(a, b)| (a / b - 1.0).abs())
                .sum::<f64>()
                / 12.0;
            assert!(
                rel < 0.1,
                "{head:?} head, series {i}: mean relative error {rel}: {fc:?} vs {truth:?}"
            );
        }
    }

    #[test]
    fn the_online_model_steps_from_its_carried_state() {
        let s = series();
        let size = 3_600_000;
        let train: Vec<(Vec<i64>, Vec<f64>)> = s
            .iter()
            .map(|v| {
                (
                    (0..v.len() as i64)
                        .map(|t| 1_600_000_000_000 / size * size + t * size)
                        .collect(),
                    v.clone(),
                )
            })
            .collect();
        let mut m = OnlineRnn::new(cfg(), train.clone(), 0.8);
        m.reset("s00000").unwrap();
        for (t, v) in train[0].0.iter().zip(&train[0].1) {
            m.observe(*t, *v).unwrap();
        }
        let f = m.forecast(12).unwrap();
        assert_eq!(f.len(), 12);
        assert!(f.iter().all(|v| v.is_finite()), "{f:?}");
    }

    /// `retrain.enabled`: the backtest retrains at event-time cutoffs as
    /// the live job would, each generation on windows before its cutoff
    /// only, and a key switches generation as its windows pass a cutoff.
    #[test]
    fn the_online_model_retrains_at_cutoffs_without_seeing_past_them() {
        let s = series();
        let size = 3_600_000;
        let t0 = 1_600_000_000_000 / size * size;
        let train: Vec<(Vec<i64>, Vec<f64>)> = s
            .iter()
            .map(|v| {
                (
                    (0..v.len() as i64).map(|t| t0 + t * size).collect(),
                    v.clone(),
                )
            })
            .collect();
        let mut cfg = cfg();
        cfg.retrain.enabled = true;
        // Every 24 windows of event time per key.
        cfg.retrain.every_windows = 24 * train.len() as u64;
        let mut m = OnlineRnn::new(cfg, train.clone(), 0.6);
        // The data a cutoff allows: exactly the windows that start before it.
        let cut = t0 + 100 * size;
        let rows: i64 = m
            .training_data(Cutoff::Before(cut))
            .unwrap()
            .keys
            .iter()
            .map(|k| k.1)
            .sum();
        let before: usize = train
            .iter()
            .map(|(st, _)| st.iter().filter(|&&t| t < cut).count())
            .sum();
        assert_eq!(
            rows as usize, before,
            "a cutoff's data is what starts before it"
        );
        m.reset("s00000").unwrap();
        let base = m.first_cutoff_ms();
        for (t, v) in train[0].0.iter().zip(&train[0].1) {
            m.observe(*t, *v).unwrap();
            // The running generation's cutoff is at or before the window.
            assert!(m.generations[m.running].from_ms <= *t);
        }
        let last = *train[0].0.last().unwrap();
        let expected = ((last - base) / (24 * size)).max(0) as usize;
        assert_eq!(m.retrains().0, expected, "one retrain per cutoff passed");
        assert!(m.retrains().0 >= 2);
        let f = m.forecast(12).unwrap();
        assert!(f.iter().all(|v| v.is_finite()), "{f:?}");
        // A key that starts early again runs the generation of its time.
        m.reset("s00001").unwrap();
        m.observe(train[1].0[0], train[1].1[0]).unwrap();
        assert_eq!(m.running, 0);
    }
}
