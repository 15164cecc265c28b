//! Global variants `rf_global`, `gbm_global`: one ensemble trained on the
//! rows of every series of a batch at once, then a recursive forecast per
//! series (the "global training across keys").
//!
//! The per-series [`Baseline`](super::Baseline) trait sees one history, so
//! these implement the batch harness's [`Model`] instead (all histories in
//! one call) and plug in through one line in `eval::model_by_name`
//! ([`by_name`]); `streamcast eval m4 --models gbm_global` runs them.
//! Stream backtests (`eval stream`) feed keys one at a time and have no
//! global hook yet.
//!
//! Rows are built exactly as for the per-series models (same
//! normalisation, so every series' rows share one scale: `z = x / S` with
//! `S` the mean |x| of its last season, and levels taken out per row). Every
//! series contributes its latest `rows_per_series` rows, with one feature
//! layout for all (the full one: lags `1..=2m` and `7m`); a series too short
//! for it gets the per-series model's forecast. Deterministic like the
//! per-series models (the harness's leak check needs it).

use super::{
    finite_or_naive, recursive, training_rows, Baseline, FeatureSpec, Normalized, TreeForecaster,
};
use crate::error::Result;
use crate::eval::Model;

/// The global models' names.
pub const NAMES: &[&str] = &["rf_global", "gbm_global"];

/// One ensemble over all series (see the module docs).
#[derive(Debug, Clone)]
pub struct GlobalTrees {
    /// The per-series model whose settings (ensemble, season, transform)
    /// the global fit uses, and which forecasts series too short for it.
    pub per_series: TreeForecaster,
    pub rows_per_series: usize,
}

/// `rf_global` or `gbm_global` for season `season`; `None` for other names.
pub fn by_name(name: &str, season: usize) -> Option<GlobalTrees> {
    let per_series = match name {
        "rf_global" => TreeForecaster::rf(season),
        "gbm_global" => TreeForecaster::gbm(season),
        _ => return None,
    };
    Some(GlobalTrees {
        per_series,
        rows_per_series: 300,
    })
}

impl Model for GlobalTrees {
    fn name(&self) -> String {
        format!("{}_global", self.per_series.name())
    }

    fn fit_forecast(&mut self, histories: &[&[f64]], horizon: usize) -> Result<Vec<Vec<f64>>> {
        let f = &self.per_series;
        let m = f.season.max(1);
        let Some(spec) = FeatureSpec::for_history(usize::MAX, m, 1) else {
            return Ok(histories.iter().map(|h| f.forecast(h, horizon)).collect());
        };
        let fits = |h: &[f64]| h.len() >= spec.first_target() + f.min_rows.max(1);
        let norms: Vec<Option<Normalized>> = histories
            .iter()
            .map(|h| fits(h).then(|| Normalized::new(h, m, f.transform)))
            .collect();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for norm in norms.iter().flatten() {
            let first = norm.z.len().saturating_sub(self.rows_per_series.max(1));
            let (xs, ys) = training_rows(&spec, &norm.z, first);
            x.extend(xs);
            y.extend(ys);
        }
        let model = (!y.is_empty()).then(|| f.kind_for(spec.width()).fit(&x, spec.width(), &y));
        Ok(histories
            .iter()
            .zip(&norms)
            .map(|(h, norm)| match (norm, &model, h.last()) {
                (Some(norm), Some(model), Some(&last)) => {
                    let mut z = norm.z.clone();
                    recursive(model, &spec, &mut z, horizon);
                    let n = h.len();
                    finite_or_naive(z[n..].iter().map(|&v| norm.back(v)).collect(), last)
                }
                _ => f.forecast(h, horizon),
            })
            .collect())
    }
}
