//! Offline evaluation: M4 Hourly accuracy and rolling-origin backtests on
//! real timestamped streams, with a harness that refuses models that peek.
//!
//! Purpose: put a number next to every forecaster (the classical baselines
//! of `baseline` today, the recurrent model later) on the same footing as
//! the published M4 results, and on real streams windowed exactly as the
//! streaming job windows them.
//!
//! Two harnesses:
//!
//! * **Batch** ([`Model`], [`Panel`], [`run_checked`]): every series has a
//!   forecast origin; a model gets *only* the values before the origin of
//!   every series at once (so a global model can train on all histories) and
//!   returns `horizon` values per series. Used by `streamcast eval m4`.
//! * **Stream** ([`StreamModel`], [`backtest_stream`]): per key, windows are
//!   fed to the model one at a time in time order; at each rolling origin the
//!   model is asked for an `horizon`-step forecast before the origin's window
//!   is fed. Used by `streamcast eval stream`.
//!
//! Leak-proofing of the batch harness (how a peek is detected):
//! 1. Histories are copied out of the panel into fresh `Vec`s before the
//!    model is called: nothing handed to the model reaches past the origin.
//! 2. Each model is built (from its factory) and run **twice**: once on the
//!    panel as it is, once after every value *at or after* the origin has
//!    been replaced in place by a perturbed copy (`x + (1 + |x|)·c`, `c > 0`,
//!    so every perturbed value differs). Histories are identical in both
//!    runs, so an honest model returns bit-identical forecasts; any change
//!    proves the model read past the origin through some side channel (a
//!    handle to the panel, shared state, ...) and the model is refused with
//!    [`HarnessError::Leak`]. The panel is restored afterwards (also on
//!    panic). Consequences: models must be deterministic (a model whose
//!    output changes from run to run is refused too: it cannot be told apart
//!    from a peek), and a leak through a channel the harness cannot perturb
//!    (say, a model that re-reads the original CSV itself) is not caught.
//!    Without futures (forecasting past the end of the data) the second run
//!    is skipped: there is nothing to peek at.
//! 3. Every returned forecast must have exactly `horizon` finite values.
//!
//! The stream harness is leak-proof by construction: the model only ever
//! receives windows through [`StreamModel::observe`], and the harness asks for
//! the forecast at origin `o` after feeding exactly windows `0..o` (the test
//! `stream_backtest_sees_no_window_at_or_after_origin` checks it).
//!
//! Metrics are those of `accuracy` (M4 definitions). M4: MASE uses
//! `m = season` and the in-sample part of each series (the history before
//! the origin); OWA is reported against the published Naive2 figures *and*
//! against our own Naive2 on the same holdout. Stream: per (key, origin),
//! MAE, RMSE, sMAPE and MASE (seasonal period `model.season_windows`, scale
//! from the windows before the origin) of the one-step forecast (first value)
//! and of the full `horizon`-step forecast; pooled over all keys and origins
//! (mean of MAE, sMAPE and finite MASE; RMSE = sqrt of the mean squared
//! error).
//!
//! Adding the recurrent model: implement [`Model`] (batch) and/or
//! [`StreamModel`] and add a name to [`model_by_name`] /
//! [`stream_model_by_name`]; the CLI picks it up via `--models`.
//!
//! Everything here is deterministic and single-threaded.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMillisecondType};

use crate::accuracy::{self, Scores};
use crate::baseline::{self, Forecaster};
use crate::config::PipelineConfig;
use crate::decode::{events_schema, parse_time, EventsBuilder, RawTime};
use crate::window::{WindowSpec, WindowStage, FIRST_AGG_COLUMN};

// ======================================================================
// M4 data
// ======================================================================

/// Reads an M4 CSV (`"V1","V2",...` header; one row per series: the id in the
/// first cell, values after it; rows of different lengths, trailing cells
/// empty). Returns `(id, values)` in file order. Errors name the file and the
/// 1-based line (and column where it applies).
pub fn read_m4_csv(path: &Path) -> Result<Vec<(String, Vec<f64>)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_m4_csv(&text, path)
}

fn unquote(cell: &str) -> &str {
    let c = cell.trim();
    c.strip_prefix('"')
        .and_then(|c| c.strip_suffix('"'))
        .unwrap_or(c)
}

fn parse_m4_csv(text: &str, path: &Path) -> Result<Vec<(String, Vec<f64>)>> {
    let mut out: Vec<(String, Vec<f64>)> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let mut cells = line.split(',').map(unquote);
        let id = cells.next().unwrap_or("");
        if lineno == 1 && id == "V1" {
            continue; // the header
        }
        if id.is_empty() {
            bail!(
                "{}: line {lineno}: empty series id in the first column",
                path.display()
            );
        }
        let cells: Vec<&str> = cells.collect();
        let used = cells
            .iter()
            .rposition(|c| !c.is_empty())
            .map_or(0, |p| p + 1);
        if used == 0 {
            bail!(
                "{}: line {lineno}: series `{id}` has no values",
                path.display()
            );
        }
        let mut values = Vec::with_capacity(used);
        for (j, c) in cells[..used].iter().enumerate() {
            let col = j + 2; // V1 is the id
            if c.is_empty() {
                bail!(
                    "{}: line {lineno}: series `{id}`: empty cell in column V{col} before the last value (gaps are not allowed)",
                    path.display()
                );
            }
            let v: f64 = c.parse().map_err(|_| {
                anyhow::anyhow!(
                    "{}: line {lineno}: series `{id}`: column V{col}: {c:?} is not a number",
                    path.display()
                )
            })?;
            if !v.is_finite() {
                bail!(
                    "{}: line {lineno}: series `{id}`: column V{col}: value {c:?} is not finite",
                    path.display()
                );
            }
            values.push(v);
        }
        if let Some(prev) = seen.insert(id.to_string(), lineno) {
            bail!(
                "{}: line {lineno}: series id `{id}` already used on line {prev}",
                path.display()
            );
        }
        out.push((id.to_string(), values));
    }
    if out.is_empty() {
        bail!("{}: no series found", path.display());
    }
    Ok(out)
}

/// One row of the published M4 results.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Published {
    pub method: &'static str,
    pub smape: f64,
    pub mase: f64,
    pub owa: f64,
}

/// Published M4 results on the Hourly **test set** (the 48 values after each
/// training series, which we do not have), as listed in
/// `../shared/data/README.md` (taken there from the M4 competition results,
/// Makridakis, Spiliotis & Assimakopoulos, "The M4 Competition: 100,000 time
/// series and 61 forecasting methods", IJF 36(1), 2020). Reference data only:
/// our own figures are on the held-out tail of the *training* set, a
/// different (earlier) 48 hours of every series.
pub const M4_HOURLY_PUBLISHED_TEST: &[Published] = &[
    Published {
        method: "Naive (last value)",
        smape: 43.003,
        mase: 11.608,
        owa: 3.593,
    },
    Published {
        method: "Naive2 (seasonally adjusted naive; OWA's reference)",
        smape: 18.383,
        mase: 2.395,
        owa: 1.000,
    },
    Published {
        method: "Seasonal naive (m=24)",
        smape: 13.912,
        mase: 1.193,
        owa: 0.627,
    },
    Published {
        method: "Theta",
        smape: 18.138,
        mase: 2.455,
        owa: 1.006,
    },
    Published {
        method: "M4 benchmark MLP",
        smape: 13.842,
        mase: 2.607,
        owa: 0.921,
    },
    Published {
        method: "M4 benchmark RNN",
        smape: 14.698,
        mase: 3.048,
        owa: 1.036,
    },
    Published {
        method: "ES-RNN (competition winner, exponential smoothing + LSTM)",
        smape: 9.328,
        mase: 0.893,
        owa: 0.440,
    },
    Published {
        method: "best Hourly entry",
        smape: 8.913,
        mase: 0.801,
        owa: 0.410,
    },
];

/// The published test-set row matching one of our model names, if any.
pub fn published_for(model: &str) -> Option<&'static Published> {
    let idx = match model {
        "naive" => 0,
        "naive2" => 1,
        "snaive" => 2,
        _ => return None,
    };
    M4_HOURLY_PUBLISHED_TEST.get(idx)
}

// ======================================================================
// Batch models and the leak-proof harness
// ======================================================================

/// A forecaster evaluated over many series at once.
pub trait Model {
    /// Name shown in reports.
    fn name(&self) -> String;
    /// One forecast of `horizon` values per history, in the same order.
    /// `histories[i]` is everything before series `i`'s forecast origin. A
    /// global model may train on all histories; it must be deterministic.
    fn fit_forecast(&mut self, histories: &[&[f64]], horizon: usize) -> Vec<Vec<f64>>;
    /// Whether the harness runs the model a second time on perturbed futures
    /// (the leak check). A model that trains for minutes may opt out; the
    /// report then says `leak_checked: false` for it.
    fn leak_check(&self) -> bool {
        true
    }
}

/// Adapter: any [`baseline::Forecaster`] as a [`Model`] (each series on its own).
pub struct BaselineModel {
    name: String,
    inner: Box<dyn Forecaster + Send + Sync>,
}

impl BaselineModel {
    /// Named after the forecaster.
    pub fn new(inner: Box<dyn Forecaster + Send + Sync>) -> Self {
        BaselineModel {
            name: inner.name().to_string(),
            inner,
        }
    }
    /// With a report name of its own (e.g. `ses_sa` for a wrapped `ses`).
    pub fn named(name: &str, inner: Box<dyn Forecaster + Send + Sync>) -> Self {
        BaselineModel {
            name: name.to_string(),
            inner,
        }
    }
}

impl Model for BaselineModel {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn fit_forecast(&mut self, histories: &[&[f64]], horizon: usize) -> Vec<Vec<f64>> {
        histories
            .iter()
            .map(|h| self.inner.forecast(h, horizon))
            .collect()
    }
}

/// Names of the classical forecasters the registries know: those of
/// [`baseline::ALL`] plus M4's seasonally adjusted benchmarks `ses_sa`,
/// `holt_sa`, `damped_sa` ([`baseline::SeasonallyAdjusted`] around the plain
/// model, as M4 ran its SES / Holt / Damped benchmarks).
pub const BASELINE_NAMES: &[&str] = &[
    "naive",
    "snaive",
    "naive2",
    "ma",
    "ses",
    "holt",
    "damped",
    "hw_add",
    "hw_mul",
    "ses_sa",
    "holt_sa",
    "damped_sa",
];

/// A classical forecaster by one of [`BASELINE_NAMES`].
pub fn forecaster_by_name(name: &str, season: usize) -> Option<Box<dyn Forecaster + Send + Sync>> {
    use baseline::{Damping, Holt, SeasonallyAdjusted, SimpleExpSmoothing};
    let period = season.max(1);
    Some(match name {
        "ses_sa" => Box::new(SeasonallyAdjusted {
            inner: SimpleExpSmoothing { alpha: None },
            period,
        }),
        "holt_sa" => Box::new(SeasonallyAdjusted {
            inner: Holt {
                alpha: None,
                beta: None,
                damped: None,
            },
            period,
        }),
        "damped_sa" => Box::new(SeasonallyAdjusted {
            inner: Holt {
                alpha: None,
                beta: None,
                damped: Some(Damping::Fitted),
            },
            period,
        }),
        _ => return baseline::by_name(name, period),
    })
}

/// What a model may be built from (extend with e.g. an artifact path).
#[derive(Debug, Clone)]
pub struct ModelContext {
    /// Seasonal period (24 for hourly data).
    pub season: usize,
    /// Pipeline file configuring the recurrent model (`rnn`).
    pub rnn_pipeline: Option<PathBuf>,
    /// Networks averaged by `rnn` (its ensemble size).
    pub rnn_ensemble: usize,
}

/// Builds a batch model by name: every name of [`BASELINE_NAMES`].
///
/// Hook for the recurrent model: add `"rnn" => Some(Box::new(...))` here (a
/// type implementing [`Model`]); `streamcast eval m4 --models rnn,...` then
/// evaluates it under the same leak check as the baselines.
pub fn model_by_name(name: &str, ctx: &ModelContext) -> Option<Box<dyn Model>> {
    if name == "rnn" {
        let path = ctx
            .rnn_pipeline
            .clone()
            .unwrap_or_else(|| PathBuf::from("pipelines/m4_hourly.toml"));
        return match crate::eval_rnn::RnnModel::from_pipeline(&path) {
            Ok(mut m) => {
                m.ensemble = ctx.rnn_ensemble.max(1);
                Some(Box::new(m))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot build the rnn model");
                None
            }
        };
    }
    forecaster_by_name(name, ctx.season)
        .map(|f| Box::new(BaselineModel::named(name, f)) as Box<dyn Model>)
}

/// One series of a [`Panel`]: `values[..origin]` is the history a model may
/// see, `values[origin..]` the future it is scored on (may be empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub id: String,
    pub values: Vec<f64>,
    pub origin: usize,
}

impl Series {
    pub fn history(&self) -> &[f64] {
        &self.values[..self.origin]
    }
    pub fn future(&self) -> &[f64] {
        &self.values[self.origin..]
    }
}

/// The series under evaluation, shared: clones are handles to the same data.
/// The harness perturbs the futures in place for its second run, so anything
/// holding a handle (legitimately or not) sees the perturbed values then.
#[derive(Debug, Clone)]
pub struct Panel {
    inner: Arc<RwLock<Vec<Series>>>,
}

impl Panel {
    /// A panel of the given series; origins beyond a series' end are clamped.
    pub fn new(mut series: Vec<Series>) -> Self {
        for s in &mut series {
            s.origin = s.origin.min(s.values.len());
        }
        Panel {
            inner: Arc::new(RwLock::new(series)),
        }
    }

    /// Holds out the last `h` values of every series (origin = `len − h`).
    /// Every series needs at least one history value.
    pub fn holdout(data: &[(String, Vec<f64>)], h: usize) -> Result<Self> {
        let mut series = Vec::with_capacity(data.len());
        for (id, v) in data {
            if v.len() <= h {
                bail!(
                    "series `{id}` has {} values: too short to hold out {h} and keep a history",
                    v.len()
                );
            }
            series.push(Series {
                id: id.clone(),
                values: v.clone(),
                origin: v.len() - h,
            });
        }
        Ok(Panel::new(series))
    }

    /// Origin after the last value of every series (forecasting the unknown).
    pub fn at_end(data: &[(String, Vec<f64>)]) -> Self {
        Panel::new(
            data.iter()
                .map(|(id, v)| Series {
                    id: id.clone(),
                    values: v.clone(),
                    origin: v.len(),
                })
                .collect(),
        )
    }

    /// Read access to the series.
    pub fn read(&self) -> RwLockReadGuard<'_, Vec<Series>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Vec<Series>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn ids(&self) -> Vec<String> {
        self.read().iter().map(|s| s.id.clone()).collect()
    }
}

/// Why the harness refused a model's output.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HarnessError {
    #[error("model `{model}` returned {got} forecasts for {want} series")]
    Count {
        model: String,
        want: usize,
        got: usize,
    },
    #[error("model `{model}`: series `{id}`: expected {want} forecast values, got {got}")]
    Length {
        model: String,
        id: String,
        want: usize,
        got: usize,
    },
    #[error("model `{model}`: series `{id}`: forecast step {step} is not finite ({value})")]
    NonFinite {
        model: String,
        id: String,
        step: usize,
        value: f64,
    },
    #[error(
        "model `{model}` refused: it read past the forecast origin (its forecast for series `{id}`, step {step}, \
         changed from {before} to {after} when only the values after the origin were perturbed)"
    )]
    Leak {
        model: String,
        id: String,
        step: usize,
        before: f64,
        after: f64,
    },
}

/// A model's accepted forecasts.
#[derive(Debug, Clone)]
pub struct Checked {
    pub model: String,
    /// One forecast per panel series, in panel order.
    pub forecasts: Vec<Vec<f64>>,
    /// Wall time of both runs.
    pub seconds: f64,
    /// Whether the second (perturbed-future) run happened.
    pub leak_checked: bool,
}

/// Restores the true futures when dropped (even if the model panics).
struct Restore<'a> {
    panel: &'a Panel,
    saved: Vec<Vec<f64>>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let mut g = self.panel.write();
        for (s, fut) in g.iter_mut().zip(&self.saved) {
            let o = s.origin;
            s.values[o..].copy_from_slice(fut);
        }
    }
}

/// The perturbation of the `i`-th future value: always differs from `x`.
fn perturb(x: f64, i: usize) -> f64 {
    x + (1.0 + x.abs()) * (0.25 + 0.125 * (i % 5) as f64)
}

fn histories(panel: &Panel) -> Vec<Vec<f64>> {
    panel.read().iter().map(|s| s.history().to_vec()).collect()
}

fn run_once(
    panel: &Panel,
    factory: &mut dyn FnMut() -> Box<dyn Model>,
    horizon: usize,
) -> Result<(String, Vec<Vec<f64>>), HarnessError> {
    // Fresh copies: the model can reach nothing past the origin through them.
    let hist = histories(panel);
    let refs: Vec<&[f64]> = hist.iter().map(|h| h.as_slice()).collect();
    let mut model = factory();
    let name = model.name();
    let out = model.fit_forecast(&refs, horizon);
    drop(model);
    let ids = panel.ids();
    if out.len() != ids.len() {
        return Err(HarnessError::Count {
            model: name,
            want: ids.len(),
            got: out.len(),
        });
    }
    for (f, id) in out.iter().zip(&ids) {
        if f.len() != horizon {
            return Err(HarnessError::Length {
                model: name,
                id: id.clone(),
                want: horizon,
                got: f.len(),
            });
        }
        if let Some((step, &value)) = f.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(HarnessError::NonFinite {
                model: name,
                id: id.clone(),
                step: step + 1,
                value,
            });
        }
    }
    Ok((name, out))
}

/// Runs a model (built fresh by `factory` for each run) on the panel and
/// checks its output: shape, finiteness, and — when the panel has futures —
/// that perturbing the futures leaves the forecasts bit-identical (see the
/// module docs). Returns the forecasts of the unperturbed run.
pub fn run_checked(
    panel: &Panel,
    factory: &mut dyn FnMut() -> Box<dyn Model>,
    horizon: usize,
) -> Result<Checked, HarnessError> {
    let started = Instant::now();
    let check = factory().leak_check();
    let (name, first) = run_once(panel, factory, horizon)?;
    let has_future = panel.read().iter().any(|s| s.origin < s.values.len());
    if !has_future || !check {
        return Ok(Checked {
            model: name,
            forecasts: first,
            seconds: started.elapsed().as_secs_f64(),
            leak_checked: false,
        });
    }
    let second = {
        let saved: Vec<Vec<f64>> = panel.read().iter().map(|s| s.future().to_vec()).collect();
        let _restore = Restore { panel, saved };
        {
            let mut g = panel.write();
            for s in g.iter_mut() {
                let o = s.origin;
                for (i, v) in s.values[o..].iter_mut().enumerate() {
                    *v = perturb(*v, i);
                }
            }
        }
        run_once(panel, factory, horizon)?.1
    };
    let ids = panel.ids();
    for ((a, b), id) in first.iter().zip(&second).zip(&ids) {
        if let Some(step) = a
            .iter()
            .zip(b)
            .position(|(x, y)| x.to_bits() != y.to_bits())
        {
            return Err(HarnessError::Leak {
                model: name,
                id: id.clone(),
                step: step + 1,
                before: a[step],
                after: b[step],
            });
        }
    }
    Ok(Checked {
        model: name,
        forecasts: first,
        seconds: started.elapsed().as_secs_f64(),
        leak_checked: true,
    })
}

// ======================================================================
// M4 evaluation
// ======================================================================

/// One model's M4-style scores on a holdout.
#[derive(Debug, Clone)]
pub struct M4Row {
    pub model: String,
    /// Mean over series of sMAPE, MASE (and MAE, RMSE).
    pub mean: Scores,
    /// OWA against the published M4 Hourly Naive2 (18.383 / 2.395).
    pub owa_published: f64,
    /// OWA against our Naive2 on the same holdout.
    pub owa_own: f64,
    pub seconds: f64,
    pub leak_checked: bool,
}

/// Result of [`eval_m4_holdout`].
#[derive(Debug, Clone)]
pub struct M4Report {
    pub series: usize,
    pub horizon: usize,
    pub season: usize,
    /// Our Naive2's mean sMAPE and MASE on this holdout (the `owa_own` reference).
    pub naive2_own: (f64, f64),
    pub rows: Vec<M4Row>,
}

fn build_factory(name: &str, ctx: &ModelContext) -> Result<impl FnMut() -> Box<dyn Model>> {
    if model_by_name(name, ctx).is_none() {
        bail!(
            "unknown model `{name}` (known: {})",
            BASELINE_NAMES.join(", ")
        );
    }
    let (name, ctx) = (name.to_string(), ctx.clone());
    Ok(move || model_by_name(&name, &ctx).expect("checked above"))
}

/// Runs each named model through [`run_checked`] on `panel`. Returns the
/// accepted forecasts in the order of `models`.
pub fn run_models(
    panel: &Panel,
    models: &[String],
    ctx: &ModelContext,
    horizon: usize,
) -> Result<Vec<Checked>> {
    let mut out = Vec::with_capacity(models.len());
    for name in models {
        let mut factory = build_factory(name, ctx)?;
        let c = run_checked(panel, &mut factory, horizon)?;
        tracing::info!(model = %c.model, seconds = c.seconds, leak_checked = c.leak_checked, "model evaluated");
        out.push(c);
    }
    Ok(out)
}

fn mean_panel_scores(panel: &Panel, forecasts: &[Vec<f64>], season: usize) -> Result<Scores> {
    let g = panel.read();
    let mut scores = Vec::with_capacity(g.len());
    for (s, f) in g.iter().zip(forecasts) {
        let sc = accuracy::score(s.history(), s.future(), f, season.max(1))
            .with_context(|| format!("scoring series `{}`", s.id))?;
        scores.push(sc);
    }
    accuracy::mean_scores(&scores).context("no series to score")
}

/// Holds out the last `horizon` values of every series, forecasts them with
/// every model and scores them (M4 definitions, MASE with `m = season`).
/// Our Naive2 is always run (as OWA's own reference) even if not listed.
/// Also returns the accepted forecasts of every listed model.
pub fn eval_m4_holdout(
    data: &[(String, Vec<f64>)],
    models: &[String],
    season: usize,
    horizon: usize,
    rnn_pipeline: Option<PathBuf>,
    rnn_ensemble: usize,
) -> Result<(M4Report, Vec<Checked>)> {
    if horizon == 0 {
        bail!("the holdout must be at least 1 value");
    }
    let panel = Panel::holdout(data, horizon)?;
    let ctx = ModelContext {
        season,
        rnn_pipeline,
        rnn_ensemble,
    };
    let checked = run_models(&panel, models, &ctx, horizon)?;
    let naive2 = match checked.iter().position(|c| c.model == "naive2") {
        Some(i) => mean_panel_scores(&panel, &checked[i].forecasts, season)?,
        None => {
            let c = run_models(&panel, &["naive2".to_string()], &ctx, horizon)?;
            mean_panel_scores(&panel, &c[0].forecasts, season)?
        }
    };
    let mut rows = Vec::with_capacity(checked.len());
    for c in &checked {
        let mean = mean_panel_scores(&panel, &c.forecasts, season)?;
        rows.push(M4Row {
            model: c.model.clone(),
            mean,
            owa_published: mean.owa_m4_hourly(),
            owa_own: mean.owa(naive2.smape, naive2.mase),
            seconds: c.seconds,
            leak_checked: c.leak_checked,
        });
    }
    let report = M4Report {
        series: panel.len(),
        horizon,
        season,
        naive2_own: (naive2.smape, naive2.mase),
        rows,
    };
    Ok((report, checked))
}

/// Forecasts `horizon` values after the last value of every series with each
/// model (the M4 submission setting). Returns the accepted forecasts.
pub fn forecast_m4(
    data: &[(String, Vec<f64>)],
    models: &[String],
    season: usize,
    horizon: usize,
    rnn_pipeline: Option<PathBuf>,
    rnn_ensemble: usize,
) -> Result<Vec<Checked>> {
    let panel = Panel::at_end(data);
    run_models(
        &panel,
        models,
        &ModelContext {
            season,
            rnn_pipeline,
            rnn_ensemble,
        },
        horizon,
    )
}

/// Writes forecasts in the M4 submission shape: `id,F1,...,FH`, one row per series.
pub fn write_submission(path: &Path, ids: &[String], forecasts: &[Vec<f64>]) -> Result<()> {
    use std::io::Write;
    if ids.len() != forecasts.len() {
        bail!("{} ids but {} forecasts", ids.len(), forecasts.len());
    }
    let h = forecasts.first().map_or(0, |f| f.len());
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let mut line = String::from("id");
    for i in 1..=h {
        let _ = write!(line, ",F{i}");
    }
    let io = |e| anyhow::Error::new(e).context(format!("writing {}", path.display()));
    writeln!(w, "{line}").map_err(io)?;
    for (id, f) in ids.iter().zip(forecasts) {
        line.clear();
        line.push_str(id);
        for v in f {
            let _ = write!(line, ",{v}");
        }
        writeln!(w, "{line}").map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}

fn fmt3(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "n/a".into()
    }
}

impl M4Report {
    /// The report as Markdown: our holdout table, then the published test-set table.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Ours: {} M4 Hourly series, last {} values of each *training* series held out, forecast from the rest \
             (MASE m={}, scale from the in-sample part). OWA vs published Naive2 uses 18.383 / 2.395; \
             OWA vs our Naive2 uses our Naive2 on this holdout (sMAPE {:.3}, MASE {:.3}). \
             Published columns are the M4 *test-set* figures (a different, later 48 hours), for orientation only.\n",
            self.series, self.horizon, self.season, self.naive2_own.0, self.naive2_own.1
        );
        s.push_str("| model | sMAPE | MASE | OWA (vs published Naive2) | OWA (vs our Naive2) | seconds | published test sMAPE | published test MASE | published test OWA |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &self.rows {
            let p = published_for(&r.model);
            let pc =
                |f: fn(&Published) -> f64| p.map_or("—".to_string(), |p| format!("{:.3}", f(p)));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.1} | {} | {} | {} |",
                r.model,
                fmt3(r.mean.smape),
                fmt3(r.mean.mase),
                fmt3(r.owa_published),
                fmt3(r.owa_own),
                r.seconds,
                pc(|p| p.smape),
                pc(|p| p.mase),
                pc(|p| p.owa)
            );
        }
        s.push_str("\nPublished M4 Hourly results on the *test set* (source: ../shared/data/README.md, from the M4 competition results):\n\n");
        s.push_str("| method | sMAPE | MASE | OWA |\n|---|---:|---:|---:|\n");
        for p in M4_HOURLY_PUBLISHED_TEST {
            let _ = writeln!(
                s,
                "| {} | {:.3} | {:.3} | {:.3} |",
                p.method, p.smape, p.mase, p.owa
            );
        }
        s
    }
}

// ======================================================================
// Streams: reading, windowing
// ======================================================================

/// One key's regular series of window aggregates (the first value field).
#[derive(Debug, Clone, PartialEq)]
pub struct KeySeries {
    /// The key; a key whose series was reset by a long gap contributes one
    /// series per segment, named `key`, `key#2`, ...
    pub key: String,
    /// Window start times (ms since epoch, UTC), one per window.
    pub start_ms: Vec<i64>,
    pub values: Vec<f64>,
    /// Windows without events, filled by the pipeline's fill policy.
    pub filled: usize,
}

/// Reads a NAB-style CSV (`timestamp,value`; key = the file stem) into an
/// events batch (schema of `decode::events_schema`, partition 0, offset = line
/// number). Times are parsed with the pipeline's time format; the value goes
/// to the first value field (the pipeline must have exactly one).
pub fn read_nab_csv(cfg: &PipelineConfig, path: &Path) -> Result<RecordBatch> {
    let fields = &cfg.decode.value_fields;
    if fields.len() != 1 {
        bail!(
            "{}: a `timestamp,value` CSV feeds exactly one value field, the pipeline has {}",
            path.display(),
            fields.len()
        );
    }
    let key = path
        .file_stem()
        .and_then(|s| s.to_str())
        .with_context(|| format!("{}: no usable file stem for the key", path.display()))?
        .to_string();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut b = EventsBuilder::new(events_schema(fields), text.len() / 24 + 1);
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let mut cells = line.split(',').map(unquote);
        let (Some(t), Some(v)) = (cells.next(), cells.next()) else {
            bail!(
                "{}: line {lineno}: expected `timestamp,value`, got {line:?}",
                path.display()
            );
        };
        if lineno == 1 && t.eq_ignore_ascii_case("timestamp") {
            continue;
        }
        let ts =
            parse_time(&RawTime::Text(t.to_string()), cfg.decode.time_format).map_err(|e| {
                anyhow::anyhow!("{}: line {lineno}: bad timestamp: {e}", path.display())
            })?;
        let value: f64 = v.parse().map_err(|_| {
            anyhow::anyhow!(
                "{}: line {lineno}: value {v:?} is not a number",
                path.display()
            )
        })?;
        if !value.is_finite() {
            bail!(
                "{}: line {lineno}: value {v:?} is not finite",
                path.display()
            );
        }
        b.push(&key, ts, 0, lineno as i64, &[value]);
    }
    Ok(b.finish())
}

/// Reads every input (`.parquet` as written by `generate::write_parquet` or
/// any Parquet with the pipeline's columns; anything else as a NAB CSV) into
/// one events batch. Unusable Parquet rows are skipped with a warning.
pub fn read_stream_inputs(cfg: &PipelineConfig, inputs: &[PathBuf]) -> Result<RecordBatch> {
    let schema = events_schema(&cfg.decode.value_fields);
    let mut parts = Vec::with_capacity(inputs.len());
    for p in inputs {
        let is_parquet = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
        if is_parquet {
            let (events, dead) = crate::source::read_parquet_events(cfg, std::slice::from_ref(p))
                .with_context(|| format!("reading {}", p.display()))?;
            if !dead.is_empty() {
                tracing::warn!(file = %p.display(), rows = dead.len(), first = %dead[0].reason, "skipped unusable rows");
            }
            parts.push(events);
        } else {
            parts.push(read_nab_csv(cfg, p)?);
        }
    }
    Ok(arrow::compute::concat_batches(&schema, &parts)?)
}

/// Aggregates events onto the pipeline's window grid with the library's own
/// [`WindowStage`] (one batch, partition 0, then ticks past the idle timeout
/// until nothing more closes), giving one regular series per key (per
/// segment when a long gap reset the key). Windows filled after a key's last
/// event (before the gap rule ends it) are trimmed. The final, still-open
/// window of the stream never closes, as in the streaming job. Series come
/// out sorted by key.
pub fn window_series(cfg: &PipelineConfig, events: &RecordBatch) -> Result<Vec<KeySeries>> {
    let spec = WindowSpec::from_config(cfg);
    let idle = spec.idle_partition_ms.max(1);
    let mut stage = WindowStage::new(spec);
    // Per key: index into `out` of its current segment, and whether the
    // next window starts a new one.
    let mut current: HashMap<String, (usize, bool)> = HashMap::new();
    let mut segments_of: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<(KeySeries, Vec<bool>)> = Vec::new();
    let mut closed = stage.process(events, 0);
    let mut now = 0i64;
    for _round in 0..100_000 {
        let progressed = closed.windows.is_some() || !closed.ended_keys.is_empty();
        if let Some(w) = &closed.windows {
            let keys = w.column(0).as_string::<i32>();
            let starts = w.column(1).as_primitive::<TimestampMillisecondType>();
            let filled = w.column(4).as_boolean();
            let vals = w.column(FIRST_AGG_COLUMN).as_primitive::<Float64Type>();
            for i in 0..w.num_rows() {
                let key = keys.value(i);
                let entry = current.entry(key.to_string()).or_insert((usize::MAX, true));
                if entry.1 {
                    let n = segments_of.entry(key.to_string()).or_insert(0);
                    *n += 1;
                    let name = if *n == 1 {
                        key.to_string()
                    } else {
                        format!("{key}#{n}")
                    };
                    out.push((
                        KeySeries {
                            key: name,
                            start_ms: Vec::new(),
                            values: Vec::new(),
                            filled: 0,
                        },
                        Vec::new(),
                    ));
                    *entry = (out.len() - 1, false);
                }
                let (ks, fl) = &mut out[entry.0];
                let v = if vals.is_null(i) {
                    f64::NAN
                } else {
                    vals.value(i)
                };
                ks.start_ms.push(starts.value(i));
                ks.values.push(v);
                fl.push(filled.value(i));
            }
        }
        for k in &closed.ended_keys {
            if let Some(e) = current.get_mut(k.as_ref()) {
                e.1 = true;
            }
        }
        if !progressed && now > idle {
            break;
        }
        now += idle + 1;
        closed = stage.tick(now);
    }
    let mut series = Vec::with_capacity(out.len());
    for (mut ks, fl) in out {
        let keep = fl.iter().rposition(|f| !f).map_or(0, |p| p + 1);
        ks.start_ms.truncate(keep);
        ks.values.truncate(keep);
        ks.filled = fl[..keep].iter().filter(|f| **f).count();
        if let Some(i) = ks.values.iter().position(|v| !v.is_finite()) {
            bail!(
                "key `{}`: window {} has no finite value (fill = \"missing\"?); evaluate with window.fill = \"ffill\" or \"zero\"",
                ks.key,
                crate::sink::rfc3339_ms(ks.start_ms[i])
            );
        }
        if !ks.values.is_empty() {
            series.push(ks);
        }
    }
    series.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(series)
}

// ======================================================================
// Streams: models and the rolling-origin backtest
// ======================================================================

/// A model that consumes a key's windows one at a time, in time order, and
/// can forecast the next `horizon` windows after any of them. The online
/// recurrent model fits this shape directly (its carried state is its
/// history); batch forecasters are adapted by [`RefitBaseline`].
pub trait StreamModel {
    /// Name shown in reports.
    fn name(&self) -> String;
    /// Start a new series (a new key or a key's new segment): forget state.
    fn reset(&mut self, key: &str);
    /// Take the next window (its start time and aggregate).
    fn observe(&mut self, window_start_ms: i64, value: f64);
    /// Forecast the `horizon` windows after the last observed one. Called by
    /// the harness only at origins; an online model may compute it in
    /// `observe` and return it here. Must return `horizon` finite values.
    fn forecast(&mut self, horizon: usize) -> Vec<f64>;
}

/// A [`Forecaster`] as a [`StreamModel`]: keeps the windows seen so far and
/// refits on all of them at every forecast.
pub struct RefitBaseline {
    name: String,
    inner: Box<dyn Forecaster + Send + Sync>,
    history: Vec<f64>,
}

impl RefitBaseline {
    pub fn new(name: &str, inner: Box<dyn Forecaster + Send + Sync>) -> Self {
        RefitBaseline {
            name: name.to_string(),
            inner,
            history: Vec::new(),
        }
    }
}

impl StreamModel for RefitBaseline {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn reset(&mut self, _key: &str) {
        self.history.clear();
    }
    fn observe(&mut self, _window_start_ms: i64, value: f64) {
        self.history.push(value);
    }
    fn forecast(&mut self, horizon: usize) -> Vec<f64> {
        self.inner.forecast(&self.history, horizon)
    }
}

/// Builds a stream model by name: every name of [`BASELINE_NAMES`], refitted
/// at each origin. Hook for the online recurrent model: add `"rnn" => ...`
/// here (a type implementing [`StreamModel`] that carries its state).
pub fn stream_model_by_name(name: &str, season: usize) -> Option<Box<dyn StreamModel>> {
    forecaster_by_name(name, season)
        .map(|f| Box::new(RefitBaseline::new(name, f)) as Box<dyn StreamModel>)
}

/// Settings of a rolling-origin backtest.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Windows ahead to forecast (and score) at every origin.
    pub horizon: usize,
    /// Seasonal period in windows (MASE scale).
    pub season: usize,
    /// At most this many origins per series.
    pub max_origins: usize,
    /// Origins lie in the last `tail_fraction` of each series (0.2).
    pub tail_fraction: f64,
}

/// Origins of a series of `n` windows: from `ceil((1 − tail)·n)` (at least 1)
/// to `n − horizon`, every `step` windows, `step` the smallest spacing that
/// keeps at most `max_origins`. Empty when the series is too short.
pub fn rolling_origins(
    n: usize,
    horizon: usize,
    max_origins: usize,
    tail_fraction: f64,
) -> Vec<usize> {
    let tail = tail_fraction.clamp(0.0, 1.0);
    let first = ((n as f64) * (1.0 - tail)).ceil().max(1.0) as usize;
    if max_origins == 0 || n < horizon.max(1) || first > n - horizon.max(1) {
        return Vec::new();
    }
    let last = n - horizon.max(1);
    let count = last - first + 1;
    let step = count.div_ceil(max_origins).max(1);
    (first..=last).step_by(step).collect()
}

/// Pooled error statistics (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Agg {
    /// Forecasts scored ((key, origin) pairs).
    pub n: usize,
    pub mae: f64,
    pub rmse: f64,
    pub smape: f64,
    /// Mean over the forecasts whose MASE scale is defined and non-zero.
    pub mase: f64,
    /// Forecasts left out of `mase` (constant history: scale 0).
    pub mase_undefined: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    n: usize,
    mae: f64,
    mse: f64,
    smape: f64,
    mase: f64,
    mase_n: usize,
}

impl Acc {
    fn add(&mut self, s: &Scores) {
        self.n += 1;
        self.mae += s.mae;
        self.mse += s.rmse * s.rmse;
        self.smape += s.smape;
        if s.mase.is_finite() {
            self.mase += s.mase;
            self.mase_n += 1;
        }
    }
    fn merge(&mut self, o: &Acc) {
        self.n += o.n;
        self.mae += o.mae;
        self.mse += o.mse;
        self.smape += o.smape;
        self.mase += o.mase;
        self.mase_n += o.mase_n;
    }
    fn finish(&self) -> Agg {
        let n = self.n.max(1) as f64;
        Agg {
            n: self.n,
            mae: self.mae / n,
            rmse: (self.mse / n).sqrt(),
            smape: self.smape / n,
            mase: if self.mase_n > 0 {
                self.mase / self.mase_n as f64
            } else {
                f64::NAN
            },
            mase_undefined: self.n - self.mase_n,
        }
    }
}

/// One model on one key.
#[derive(Debug, Clone)]
pub struct KeyModelResult {
    pub model: String,
    /// Forecast at each origin (same order as [`KeyResult::origins`]).
    pub forecasts: Vec<Vec<f64>>,
    pub one_step: Agg,
    pub h_step: Agg,
}

/// All models on one key.
#[derive(Debug, Clone)]
pub struct KeyResult {
    pub key: String,
    pub windows: usize,
    pub origins: Vec<usize>,
    pub models: Vec<KeyModelResult>,
}

/// One model over all keys (a row of the printed table).
#[derive(Debug, Clone)]
pub struct StreamRow {
    pub model: String,
    pub keys: usize,
    pub one_step: Agg,
    pub h_step: Agg,
    pub seconds: f64,
}

/// Result of [`backtest_stream`]: a row per model, details per key.
#[derive(Debug, Clone)]
pub struct StreamReport {
    pub horizon: usize,
    pub season: usize,
    pub rows: Vec<StreamRow>,
    pub keys: Vec<KeyResult>,
    /// Series too short for a single origin, with their length.
    pub skipped: Vec<(String, usize)>,
}

/// Rolling-origin backtest of every model on every series. For each series
/// and model: `reset`, then for `t = 0..=last origin`: at an origin ask for
/// the forecast (the model has observed exactly windows `0..t`), then feed
/// window `t`. Windows after the last origin are never fed.
pub fn backtest_stream(
    series: &[KeySeries],
    models: &mut [Box<dyn StreamModel>],
    opts: &StreamOptions,
) -> Result<StreamReport> {
    let h = opts.horizon.max(1);
    let m = opts.season.max(1);
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    let mut totals: Vec<(Acc, Acc, f64)> =
        vec![(Acc::default(), Acc::default(), 0.0); models.len()];
    for s in series {
        let origins = rolling_origins(s.values.len(), h, opts.max_origins, opts.tail_fraction);
        if origins.is_empty() {
            skipped.push((s.key.clone(), s.values.len()));
            continue;
        }
        let last = *origins.last().expect("non-empty");
        let mut kr = KeyResult {
            key: s.key.clone(),
            windows: s.values.len(),
            origins: origins.clone(),
            models: Vec::new(),
        };
        for (mi, model) in models.iter_mut().enumerate() {
            let started = Instant::now();
            let name = model.name();
            model.reset(&s.key);
            let mut forecasts = Vec::with_capacity(origins.len());
            let mut next = origins.iter().peekable();
            for t in 0..=last {
                if next.peek() == Some(&&t) {
                    next.next();
                    let f = model.forecast(h);
                    if f.len() != h {
                        bail!("stream model `{name}`: key `{}`: origin {t}: expected {h} values, got {}", s.key, f.len());
                    }
                    if let Some((i, v)) = f.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                        bail!("stream model `{name}`: key `{}`: origin {t}: step {} is not finite ({v})", s.key, i + 1);
                    }
                    forecasts.push(f);
                }
                if t < last {
                    model.observe(s.start_ms[t], s.values[t]);
                }
            }
            let (mut one, mut multi) = (Acc::default(), Acc::default());
            for (&o, f) in origins.iter().zip(&forecasts) {
                let hist = &s.values[..o];
                let actual = &s.values[o..o + h];
                one.add(&accuracy::score(hist, &actual[..1], &f[..1], m)?);
                multi.add(&accuracy::score(hist, actual, f, m)?);
            }
            let t = &mut totals[mi];
            t.0.merge(&one);
            t.1.merge(&multi);
            t.2 += started.elapsed().as_secs_f64();
            kr.models.push(KeyModelResult {
                model: name,
                forecasts,
                one_step: one.finish(),
                h_step: multi.finish(),
            });
        }
        keys.push(kr);
    }
    let rows = models
        .iter()
        .zip(&totals)
        .map(|(mdl, (one, multi, secs))| StreamRow {
            model: mdl.name(),
            keys: keys.len(),
            one_step: one.finish(),
            h_step: multi.finish(),
            seconds: *secs,
        })
        .collect();
    Ok(StreamReport {
        horizon: h,
        season: m,
        rows,
        keys,
        skipped,
    })
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 1e5 {
        format!("{v:.4e}")
    } else {
        format!("{v:.3}")
    }
}

impl StreamReport {
    /// The per-model table (pooled over keys and origins) as Markdown.
    pub fn to_markdown(&self) -> String {
        let origins: usize = self.keys.iter().map(|k| k.origins.len()).sum();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} series, {} origins in all, horizon {} windows, MASE season {} windows; pooled over keys and origins \
             (MAE/RMSE are in the data's units: with keys of different scales they are dominated by the largest).\n",
            self.keys.len(),
            origins,
            self.horizon,
            self.season
        );
        let _ = writeln!(
            s,
            "| model | 1-step MAE | 1-step RMSE | 1-step sMAPE | 1-step MASE | {h}-step MAE | {h}-step RMSE | {h}-step sMAPE | {h}-step MASE | seconds |",
            h = self.horizon
        );
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
                r.model,
                fmt_num(r.one_step.mae),
                fmt_num(r.one_step.rmse),
                fmt_num(r.one_step.smape),
                fmt_num(r.one_step.mase),
                fmt_num(r.h_step.mae),
                fmt_num(r.h_step.rmse),
                fmt_num(r.h_step.smape),
                fmt_num(r.h_step.mase),
                r.seconds
            );
        }
        let undefined: usize = self
            .rows
            .iter()
            .map(|r| r.h_step.mase_undefined)
            .max()
            .unwrap_or(0);
        if undefined > 0 {
            let _ = writeln!(s, "\nMASE leaves out {undefined} forecasts whose history had a zero seasonal-difference scale.");
        }
        if !self.skipped.is_empty() {
            let list: Vec<String> = self
                .skipped
                .iter()
                .map(|(k, n)| format!("{k} ({n} windows)"))
                .collect();
            let _ = writeln!(
                s,
                "\nSkipped (too short for one origin): {}",
                list.join(", ")
            );
        }
        s
    }

    /// `horizon`-step MASE per key and model, as Markdown.
    pub fn per_key_markdown(&self) -> String {
        let mut s = String::new();
        let names: Vec<String> = self.rows.iter().map(|r| r.model.clone()).collect();
        let _ = writeln!(
            s,
            "| key | windows | origins | {} |",
            names
                .iter()
                .map(|n| format!("{n} {}-step MASE", self.horizon))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(s, "|---|---:|---:|{}", "---:|".repeat(names.len()));
        for k in &self.keys {
            let cells: Vec<String> = k.models.iter().map(|m| fmt_num(m.h_step.mase)).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                k.key,
                k.windows,
                k.origins.len(),
                cells.join(" | ")
            );
        }
        s
    }
}

// ======================================================================
// Plots
// ======================================================================

/// What [`plot_key`] draws.
#[derive(Debug, Clone)]
pub struct PlotSpec {
    /// The model whose forecasts are drawn (blue).
    pub model: String,
    /// The baseline drawn for comparison (red, dashed), normally `snaive`.
    pub baseline: String,
    /// Seasonal period in windows.
    pub season: usize,
    /// Show at most this many windows, ending at the series' end (0 = from
    /// two seasons before the first origin).
    pub last_windows: usize,
    /// Y axis label, e.g. "mean of value per 30m window".
    pub y_desc: String,
}

/// Plots one key's backtest to an SVG: the actual window aggregates (black),
/// `spec.model`'s `horizon`-step forecasts from origins at least `horizon`
/// apart (blue) and the same for `spec.baseline` (red, dashed), origins as
/// dots on the time axis, with a legend and axis labels.
pub fn plot_key(
    series: &KeySeries,
    result: &KeyResult,
    spec: &PlotSpec,
    path: &Path,
) -> Result<()> {
    use plotters::prelude::*;

    let (model, baseline) = (spec.model.as_str(), spec.baseline.as_str());
    let find = |name: &str| result.models.iter().find(|m| m.model == name);
    let main = find(model)
        .with_context(|| format!("no backtest of model `{model}` for key `{}`", result.key))?;
    let base = find(baseline).filter(|_| baseline != model);
    let first = *result.origins.first().context("no origins")?;
    let n = series.values.len();
    let mut from = first.saturating_sub(2 * spec.season.max(1));
    if spec.last_windows > 0 {
        from = from.max(n.saturating_sub(spec.last_windows));
    }
    // Forecasts from origin `o` cover windows `o..o + h <= n`: all on the grid.
    let x_of = |i: usize| -> i64 { series.start_ms[i.min(n - 1)] };
    // Origins in view, at least `horizon` apart so the segments do not overlap.
    let mut shown: Vec<usize> = Vec::new();
    let h = main.forecasts.first().map_or(1, |f| f.len());
    for (k, &o) in result.origins.iter().enumerate() {
        if o >= from && shown.last().is_none_or(|&p| o >= result.origins[p] + h) {
            shown.push(k);
        }
    }
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    let mut widen = |v: f64| {
        lo = lo.min(v);
        hi = hi.max(v);
    };
    series.values[from..].iter().for_each(|&v| widen(v));
    for &k in &shown {
        main.forecasts[k].iter().for_each(|&v| widen(v));
        if let Some(b) = base {
            b.forecasts[k].iter().for_each(|&v| widen(v));
        }
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    // Extra room at the top for the legend.
    let top = hi + 5.0 * pad;
    let (x0, x1) = (x_of(from), x_of(n - 1));
    let fmt_time = |ms: &i64| {
        chrono::DateTime::from_timestamp_millis(*ms).map_or_else(
            || ms.to_string(),
            |t| t.format("%Y-%m-%d %H:%M").to_string(),
        )
    };

    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("plotting {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: {h}-step forecasts from rolling origins", series.key),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(90)
        .build_cartesian_2d(x0..x1, (lo - pad)..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("window start (UTC)")
        .y_desc(spec.y_desc.as_str())
        .x_labels(7)
        .y_labels(8)
        .x_label_formatter(&fmt_time)
        .light_line_style(RGBColor(238, 238, 238))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            (from..n).map(|i| (x_of(i), series.values[i])),
            BLACK.stroke_width(1),
        ))
        .map_err(|e| err(&e))?
        .label("actual")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    let blue = RGBColor(31, 119, 180);
    let red = RGBColor(214, 39, 40);
    for (j, &k) in shown.iter().enumerate() {
        let o = result.origins[k];
        let pts: Vec<(i64, f64)> = main.forecasts[k]
            .iter()
            .enumerate()
            .map(|(i, &v)| (x_of(o + i), v))
            .collect();
        let a = chart
            .draw_series(LineSeries::new(pts, blue.stroke_width(2)))
            .map_err(|e| err(&e))?;
        if j == 0 {
            a.label(format!("{model} ({h}-step from each origin)"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2))
                });
        }
    }
    if let Some(b) = base {
        for (j, &k) in shown.iter().enumerate() {
            let o = result.origins[k];
            let pts: Vec<(i64, f64)> = b.forecasts[k]
                .iter()
                .enumerate()
                .map(|(i, &v)| (x_of(o + i), v))
                .collect();
            let a = chart
                .draw_series(DashedLineSeries::new(pts, 6, 4, red.stroke_width(2)))
                .map_err(|e| err(&e))?;
            if j == 0 {
                a.label(format!("{baseline} (seasonal-naive baseline)"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(2))
                    });
            }
        }
    }
    // Origins as small ticks on the x axis.
    let tick_y = lo - pad;
    chart
        .draw_series(shown.iter().map(|&k| {
            let x = x_of(result.origins[k]);
            Circle::new((x, tick_y), 3, RGBColor(100, 100, 100).filled())
        }))
        .map_err(|e| err(&e))?
        .label("forecast origin")
        .legend(|(x, y)| Circle::new((x + 10, y), 3, RGBColor(100, 100, 100).filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

// ======================================================================
// Tests
// ======================================================================

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

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
            e.contains("bad.csv")
                && e.contains("line 3")
                && e.contains("V3")
                && e.contains("\"x\""),
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
                    },
                )
                .unwrap()
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
        let (rep, checked) =
            eval_m4_holdout(&data, &["snaive".to_string()], 2, 2, None, 1).unwrap();
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
        fn fit_forecast(&mut self, histories: &[&[f64]], horizon: usize) -> Vec<Vec<f64>> {
            let g = self.panel.read();
            histories
                .iter()
                .zip(g.iter())
                .map(|(_, s)| {
                    (0..horizon)
                        .map(|i| s.future().get(i).copied().unwrap_or(0.0))
                        .collect()
                })
                .collect()
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
        fn fit_forecast(&mut self, histories: &[&[f64]], horizon: usize) -> Vec<Vec<f64>> {
            let hint = self.panel.read()[1].values.last().copied().unwrap_or(0.0);
            histories
                .iter()
                .map(|h| {
                    let last = *h.last().unwrap();
                    vec![last + hint * 1e-9; horizon]
                })
                .collect()
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
            run_checked(&panel, &mut || Box::new(Peeker { panel: p.clone() }), 4).unwrap_err();
        assert!(
            matches!(&err, HarnessError::Leak { model, id, step: 1, .. } if model == "peeker" && id == "s0"),
            "{err:?}"
        );
        assert!(err.to_string().contains("read past the forecast origin"));
        let p = panel.clone();
        let err = run_checked(
            &panel,
            &mut || Box::new(SubtlePeeker { panel: p.clone() }),
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
        };
        for name in BASELINE_NAMES {
            let c = run_checked(&panel, &mut || model_by_name(name, &ctx).unwrap(), 4).unwrap();
            assert!(c.leak_checked);
            assert_eq!(c.model, *name);
            let f = forecaster_by_name(name, 4).unwrap();
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
        fn fit_forecast(&mut self, histories: &[&[f64]], horizon: usize) -> Vec<Vec<f64>> {
            histories
                .iter()
                .take(self.0)
                .map(|_| vec![self.1; horizon])
                .collect()
        }
    }

    #[test]
    fn harness_checks_shape_and_finiteness() {
        let data = vec![
            ("a".to_string(), vec![1.0; 10]),
            ("b".to_string(), vec![2.0; 10]),
        ];
        let panel = Panel::holdout(&data, 2).unwrap();
        let e = run_checked(&panel, &mut || Box::new(Broken(1, 1.0)), 2).unwrap_err();
        assert_eq!(
            e,
            HarnessError::Count {
                model: "broken".into(),
                want: 2,
                got: 1
            }
        );
        let e = run_checked(&panel, &mut || Box::new(Broken(2, f64::NAN)), 2).unwrap_err();
        assert!(
            matches!(e, HarnessError::NonFinite { step: 1, .. }),
            "{e:?}"
        );
        struct Short;
        impl Model for Short {
            fn name(&self) -> String {
                "short".into()
            }
            fn fit_forecast(&mut self, h: &[&[f64]], _: usize) -> Vec<Vec<f64>> {
                h.iter().map(|_| vec![1.0]).collect()
            }
        }
        let e = run_checked(&panel, &mut || Box::new(Short), 2).unwrap_err();
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
            eval_m4_holdout(&data, &["arima".to_string()], 2, 2, None, 1)
                .unwrap_err()
                .to_string()
                .contains("unknown model `arima`")
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
        fn reset(&mut self, _key: &str) {
            self.seen = 0;
        }
        fn observe(&mut self, _ts: i64, _v: f64) {
            self.seen += 1;
            let mut m = self.max_seen.borrow_mut();
            *m = (*m).max(self.seen);
        }
        fn forecast(&mut self, horizon: usize) -> Vec<f64> {
            self.at_forecast.borrow_mut().push(self.seen);
            vec![1.0; horizon]
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
            stream_model_by_name("snaive", 24).unwrap(),
            stream_model_by_name("hw_add", 24).unwrap(),
            stream_model_by_name("damped_sa", 24).unwrap(),
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
                let f = forecaster_by_name(&m.model, 24).unwrap();
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
        let text = format!(
            "name = \"t\"\n[source]\ntopic = \"in\"\n[window]\nsize = \"{size}\"\nmax_gap_windows = {max_gap}\n\
             [model]\nseason_windows = 2\nhorizon = 1\n[sink]\ntopic = \"out\"\ndead_letter_topic = \"dlq\"\n"
        );
        PipelineConfig::parse(&text, Path::new("t.toml")).unwrap()
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
        let events: Vec<crate::generate::GenEvent> = (0..48)
            .map(|i| crate::generate::GenEvent {
                key: "g".into(),
                ts_ms: 1_400_000_400_000 + i * 900_000,
                value: i as f64,
            })
            .collect();
        let pq = dir.path().join("e.parquet");
        crate::generate::write_parquet(&events, &pq, "key", "ts", "value").unwrap();
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
            .map(|t| 50.0 + 10.0 * ((t % 24) as f64 / 24.0 * 6.283).sin())
            .collect();
        let series = vec![key_series("cpu", vals)];
        let mut models: Vec<Box<dyn StreamModel>> = vec![
            stream_model_by_name("ses", 24).unwrap(),
            stream_model_by_name("snaive", 24).unwrap(),
        ];
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
}
