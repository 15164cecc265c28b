//! `hybrid`: the ES-RNN-style hybrid in the batch harness (`eval m4`).
//!
//! Per series, exponential-smoothing coefficients are fitted on the
//! history (`model::hybrid::fit`, a grid on the error `horizon` steps
//! ahead; with a `[model.hybrid]` table in the network's pipeline, its
//! `fit`: `global` = the table's coefficients for every series,
//! `per_series` = the grid on the error `fit_steps` ahead, on the whole
//! training history), the history is run through the smoothing recursion
//! (`EsState::transform_series`: log, divided by the seasonal factors, and
//! in `relative` mode by the level), the global recurrent network
//! (`rnn::RnnModel`, the production path) is trained on those series and
//! forecasts them, and each forecast is mapped back with the series' final
//! smoothing state (re-seasonalized, re-leveled).
//!
//! Invariants: the transform is causal and a pure function of each
//! history, so the model is as leak-free as `rnn`; a series with a
//! non-positive value (no log) falls back to the pure smoothing forecast
//! for its whole horizon only if the network's output is not finite.

use super::harness::Model;
use super::rnn::{Ensemble, RnnModel};
use crate::config::PipelineConfig;
use crate::error::Result;
use crate::model::hybrid::{fit_penalized, params_of, EsParams, EsState, HybridMode};

/// Which parts of the hybrid run (measured separately in BENCHMARKS.md).
#[derive(Debug, Clone)]
pub struct HybridOptions {
    pub periods: Vec<usize>,
    pub mode: HybridMode,
    /// Skip the network: forecast with the smoothing alone (`es` in the tables).
    pub es_only: bool,
    /// Level-wiggliness penalty of the per-series fit (0 = none).
    pub wiggle: f64,
    /// The name it was built from (`hybrid_rel_d`, ...).
    pub name: String,
}

/// Where each series' coefficients come from.
#[derive(Debug, Clone, PartialEq)]
enum Coefficients {
    /// The grid on the error this many steps ahead (None = the horizon).
    PerSeries(Option<u64>),
    /// The same for every series.
    Global { alpha: f64, gammas: Vec<f64> },
}

pub struct HybridModel {
    rnn: RnnModel,
    opts: HybridOptions,
    coefficients: Coefficients,
}

impl HybridModel {
    /// The network's pipeline `cfg`; its `[model.hybrid]` table, if any,
    /// says how the coefficients are chosen (the periods and mode are the
    /// name's), and is taken out of the network's pipeline: the series it
    /// sees are smoothed here already.
    pub fn new(mut cfg: PipelineConfig, ensemble: Ensemble, opts: HybridOptions) -> Self {
        let coefficients = match cfg.model.hybrid.take() {
            None => Coefficients::PerSeries(None),
            Some(t) if t.fit == crate::config::HybridFit::PerSeries => {
                Coefficients::PerSeries(Some(u64::from(t.fit_steps.max(1))))
            }
            Some(t) => Coefficients::Global {
                alpha: t.alpha,
                gammas: t.gammas,
            },
        };
        let mut rnn = RnnModel::new(cfg);
        rnn.set_ensemble(ensemble);
        HybridModel {
            rnn,
            opts,
            coefficients,
        }
    }

    /// One series' coefficients.
    fn params(&self, history: &[f64], horizon: usize) -> EsParams {
        let periods = &self.opts.periods;
        match &self.coefficients {
            Coefficients::PerSeries(steps) => fit_penalized(
                periods,
                history,
                steps.unwrap_or(horizon as u64),
                self.opts.wiggle,
            ),
            Coefficients::Global { alpha, gammas } => params_of(&crate::config::HybridConfig {
                periods: periods.iter().map(|&m| m as u32).collect(),
                alpha: *alpha,
                gammas: gammas.clone(),
                ..Default::default()
            }),
        }
    }
}

impl Model for HybridModel {
    fn name(&self) -> String {
        self.opts.name.clone()
    }

    /// Like `rnn`: training takes minutes, no second run (the smoothing-only
    /// variant is cheap and deterministic, so it is checked).
    fn leak_check(&self) -> bool {
        self.opts.es_only
    }

    fn fit_forecast(&mut self, histories: &[&[f64]], horizon: usize) -> Result<Vec<Vec<f64>>> {
        let mode = self.opts.mode;
        // Per series: coefficients, the network's inputs, the final state.
        let fitted: Vec<(Vec<f64>, EsState)> = histories
            .iter()
            .map(|h| EsState::transform_series(&self.params(h, horizon), h, mode))
            .collect();
        if self.opts.es_only {
            return Ok(fitted
                .iter()
                .map(|(_, st)| (1..=horizon as u64).map(|h| st.es_forecast(h)).collect())
                .collect());
        }
        let z: Vec<&[f64]> = fitted.iter().map(|(z, _)| z.as_slice()).collect();
        let fz = self.rnn.fit_forecast(&z, horizon)?;
        Ok(fz
            .iter()
            .zip(&fitted)
            .map(|(f, (_, st))| {
                f.iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let h = i as u64 + 1;
                        let y = st.invert(v, h, mode);
                        if y.is_finite() {
                            y
                        } else {
                            st.es_forecast(h)
                        }
                    })
                    .collect()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::hybrid_options;
    use super::*;

    #[test]
    fn names_compose_and_unknown_suffixes_are_refused() {
        let o = hybrid_options("hybrid", 24).unwrap();
        assert_eq!(
            (o.periods, o.mode, o.es_only),
            (vec![24, 168], HybridMode::Deseason, false)
        );
        let o = hybrid_options("es_rel_d_w", 24).unwrap();
        assert_eq!(o.periods, vec![24]);
        assert_eq!(
            (o.mode, o.es_only, o.wiggle),
            (HybridMode::Relative, true, 1.0)
        );
        for bad in ["hybridx", "hybrid_", "hybrid_d_d", "es_x", "ses", "snaive"] {
            assert!(hybrid_options(bad, 24).is_none(), "{bad}");
        }
    }

    /// The smoothing alone goes through the batch harness (leak-checked) and
    /// forecasts a multiplicative daily-and-weekly season closely.
    #[test]
    fn es_forecasts_a_double_season_through_the_harness() {
        let data: Vec<(String, Vec<f64>)> = (0..3)
            .map(|i| {
                let v = (0..24 * 7 * 5)
                    .map(|t| {
                        let d = 1.0 + 0.3 * (t as f64 * std::f64::consts::TAU / 24.0).sin();
                        let w = if (t / 24) % 7 >= 5 { 0.6 } else { 1.0 };
                        (10.0 + i as f64) * d * w
                    })
                    .collect();
                (format!("s{i}"), v)
            })
            .collect();
        let panel = super::super::Panel::holdout(&data, 48).unwrap();
        let mut f = || -> Result<Box<dyn Model>> {
            let opts = hybrid_options("es", 24).unwrap();
            Ok(Box::new(HybridModel::new(
                crate::testkit::pipeline(""),
                Ensemble::seeds(1),
                opts,
            )))
        };
        let c = super::super::run_checked(&panel, &mut f, 48).unwrap();
        assert!(c.leak_checked);
        for (fc, (_, full)) in c.forecasts.iter().zip(&data) {
            let truth = &full[full.len() - 48..];
            for (a, b) in fc.iter().zip(truth) {
                assert!((a / b - 1.0).abs() < 0.05, "{a} vs {b}");
            }
        }
    }
}
