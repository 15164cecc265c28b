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
//! Rooms: `harness` (batch models, the leak check), `m4` (data, holdout
//! and submission), `backtest` (streams windowed by a pipeline, rolling
//! origins), `plot`, `rnn` (the recurrent model through the production
//! path), `combo` (combinations of any models, weighted on a validation
//! tail cut from each history; the CLI's default). Metrics are those of `accuracy` (M4 definitions). M4: MASE uses
//! `m = season` and the in-sample part of each series (the history before
//! the origin); OWA is reported against the published Naive2 figures *and*
//! against our own Naive2 on the same holdout. Stream: per (key, origin),
//! MAE, RMSE, sMAPE and MASE (seasonal period `model.season_windows`, scale
//! from the windows before the origin) of the one-step forecast (first value)
//! and of the full `horizon`-step forecast; pooled over all keys and origins
//! (mean of MAE, sMAPE and finite MASE; RMSE = sqrt of the mean squared
//! error).
//!
//! Adding a model: implement [`Model`] (batch) and/or [`StreamModel`] and
//! add its name to [`model_by_name`] / [`stream_model_by_name`]; the CLI
//! picks it up via `--models`.
//!
//! Everything here is deterministic. Per-series baselines in the batch
//! harness forecast their series on all cores (std threads, each series a
//! pure function of its history, so the output does not depend on the
//! thread count); everything else is single-threaded.

use std::path::PathBuf;

use crate::baselines;
use crate::config::PipelineConfig;
use crate::error::{Error, Result};

/// `Err(Error::Eval(format!(...)))`: an evaluation that cannot run.
macro_rules! eval_error {
    ($($t:tt)*) => { $crate::error::Error::Eval(format!($($t)*)) };
}
/// Returns early with [`eval_error!`].
macro_rules! bail {
    ($($t:tt)*) => { return Err(eval_error!($($t)*)) };
}

pub mod backtest;
pub mod combo;
mod forecast_cache;
pub mod global_trees;
pub mod harness;
pub mod hybrid;
pub mod hybrid_joint;
pub mod m4;
pub mod plot;
pub mod rnn;

pub use backtest::{
    backtest_stream, read_nab_csv, read_stream_inputs, rolling_origins, window_series, KeySeries,
    RefitBaseline, StreamModel, StreamOptions, StreamReport,
};
pub use harness::{run_checked, BaselineModel, Checked, HarnessError, Model, Panel, Series};
pub use m4::{eval_m4_holdout, forecast_m4, read_m4_csv, write_submission, M4Report};
pub use plot::{plot_key, PlotSpec};

/// The name of the recurrent model in `--models`.
pub const RNN: &str = "rnn";

/// What a model may be built from (extend with e.g. an artifact path).
#[derive(Debug, Clone)]
pub struct ModelContext {
    /// Seasonal period (24 for hourly data).
    pub season: usize,
    /// Pipeline file configuring the recurrent model (`rnn`).
    pub rnn_pipeline: Option<PathBuf>,
    /// Networks averaged by `rnn` (its ensemble size).
    pub rnn_ensemble: usize,
    /// Where networks (and a combination's deterministic members) keep
    /// their forecasts for reuse (`eval m4 --net-cache`; see
    /// [`rnn::Ensemble::cache`]).
    pub net_cache: Option<PathBuf>,
}

fn rnn_pipeline_path(ctx: &ModelContext) -> PathBuf {
    ctx.rnn_pipeline
        .clone()
        .unwrap_or_else(|| PathBuf::from("pipelines/m4_hourly.toml"))
}

/// The ES-RNN-style hybrid's names: `hybrid` (network on the log series
/// divided by daily and weekly seasonal factors) or `es` (the smoothing
/// alone), then any of the suffixes `_rel` (also divided by the smoothed
/// level), `_d` (the daily period only: `season`; the weekly one is 7 x it),
/// `_w` (the per-series fit penalises level wiggliness, lambda = 1).
pub fn hybrid_options(name: &str, season: usize) -> Option<hybrid::HybridOptions> {
    let (es_only, rest) = if let Some(r) = name.strip_prefix("hybrid") {
        (false, r)
    } else if let Some(r) = name.strip_prefix("es") {
        (true, r)
    } else {
        return None;
    };
    let (mut rel, mut daily, mut wiggle) = (false, false, false);
    if !rest.is_empty() {
        for part in rest.strip_prefix('_')?.split('_') {
            match part {
                "rel" if !rel => rel = true,
                "d" if !daily => daily = true,
                "w" if !wiggle => wiggle = true,
                _ => return None,
            }
        }
    }
    let season = season.max(1);
    Some(hybrid::HybridOptions {
        periods: if daily || season < 2 {
            vec![season]
        } else {
            vec![season, 7 * season]
        },
        mode: if rel {
            crate::model::hybrid::HybridMode::Relative
        } else {
            crate::model::hybrid::HybridMode::Deseason
        },
        es_only,
        wiggle: if wiggle { 1.0 } else { 0.0 },
        name: name.to_string(),
    })
}

fn unknown(name: &str) -> Error {
    eval_error!(
        "unknown model `{name}` (known: {RNN}, hybrid, es (+ _rel, _d, _w), hybrid_joint, hybrid_fixed, hybrid_joint_w (+ .sN: another seed), {}, {}, combo, combo:a+b+..., combo_<rule>:a+b+...)",
        baselines::NAMES.join(", "),
        global_trees::NAMES.join(", ")
    )
}

/// Builds a batch model by name: `rnn`, one of [`baselines::NAMES`], a
/// global tree ensemble (`global_trees::NAMES`) or a combination of any of
/// them (`combo...`, see [`combo`]).
/// An unknown name, or a model that cannot be built (say, its pipeline file
/// is invalid), is an error that says so.
pub fn model_by_name(name: &str, ctx: &ModelContext) -> Result<Box<dyn Model>> {
    // `rnn@...` / `hybrid...@...`: the networks of the ensemble (seeds,
    // rule, specialists; `rnn::Ensemble::parse`).
    let (base, ens) = match name.split_once('@') {
        Some((b, spec))
            if b == RNN || hybrid_options(b, ctx.season).is_some_and(|o| !o.es_only) =>
        {
            let e = rnn::Ensemble::parse(spec, ctx.rnn_ensemble).ok_or_else(|| {
                eval_error!("model `{name}`: after `@`, dot-separated: a seed count, mean|med, lN, cN, rough, smooth")
            })?;
            (b, e)
        }
        _ => (name, rnn::Ensemble::seeds(ctx.rnn_ensemble)),
    };
    let ens = rnn::Ensemble {
        cache: ctx.net_cache.clone(),
        ..ens
    };
    if base == RNN {
        let mut m = rnn::RnnModel::from_pipeline(&rnn_pipeline_path(ctx))?;
        m.set_ensemble(ens);
        if name != RNN {
            m.label = Some(name.to_string());
        }
        return Ok(Box::new(m));
    }
    if let Some(m) = hybrid_joint::by_name(name, ctx.season) {
        return Ok(m);
    }
    if let Some(mut opts) = hybrid_options(base, ctx.season) {
        opts.name = name.to_string();
        let cfg = PipelineConfig::load(&rnn_pipeline_path(ctx))?;
        return Ok(Box::new(hybrid::HybridModel::new(cfg, ens, opts)));
    }
    if let Some(spec) = combo::parse_spec(name) {
        return Ok(Box::new(combo::Combo::new(name, spec?, ctx)?));
    }
    if let Some(m) = global_trees::by_name(name, ctx.season) {
        return Ok(m);
    }
    baselines::named(name, ctx.season)
        .map(|f| Box::new(BaselineModel::named(name, f)) as Box<dyn Model>)
        .ok_or_else(|| unknown(name))
}

/// Builds a stream model by name: `rnn` (trained on the first
/// `train_fraction` of every series in `series`, then stepped online), one
/// of [`baselines::NAMES`] refitted at each origin, or a combination of
/// baselines (`combo...`, refitted at each origin).
pub fn stream_model_by_name(
    name: &str,
    cfg: &PipelineConfig,
    series: &[KeySeries],
    train_fraction: f64,
) -> Result<Box<dyn StreamModel>> {
    if name == RNN {
        let train = series
            .iter()
            .map(|s| (s.start_ms.clone(), s.values.clone()))
            .collect();
        return Ok(Box::new(rnn::OnlineRnn::new(
            cfg.clone(),
            train,
            train_fraction,
        )));
    }
    let season = cfg.model.season_windows as usize;
    if let Some(opts) = hybrid_options(name, season).filter(|o| !o.es_only) {
        // The live hybrid: the pipeline's network with `[model.hybrid]`
        // (its own table if it has one, else the name's periods and mode
        // with the default coefficients), trained and stepped as `rnn`.
        let mut cfg = cfg.clone();
        if cfg.model.hybrid.is_none() {
            cfg.model.hybrid = Some(crate::config::HybridConfig {
                periods: opts.periods.iter().map(|&m| m as u32).collect(),
                alpha: 0.05,
                gammas: Vec::new(),
                mode: opts.mode,
                ..Default::default()
            });
        }
        let train = series
            .iter()
            .map(|s| (s.start_ms.clone(), s.values.clone()))
            .collect();
        return Ok(Box::new(rnn::OnlineRnn::new(cfg, train, train_fraction)));
    }
    if let Some(spec) = combo::parse_spec(name) {
        return combo::stream_model(name, &spec?, season);
    }
    baselines::named(name, season)
        .map(|f| Box::new(RefitBaseline::new(name, f)) as Box<dyn StreamModel>)
        .ok_or_else(|| unknown(name))
}

#[cfg(test)]
mod tests;
