//! Global variants `rf_global`, `gbm_global`, `svr_global`: one model
//! trained on the rows of every series of a batch at once, then a recursive
//! forecast per series (the "global training across keys").
//!
//! It lives with the evaluation (not in `baselines::trees`) because it is
//! an `eval` model: the baselines never import the evaluation.
//!
//! The per-series [`Baseline`] trait sees one history, so
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
//! for it gets the per-series model's forecast. The learner is any
//! [`LagModel`]: the trees fit the whole pool; `svr` thins it by an even
//! stride to its `max_fit_rows` (a kernel fit is O(n²)). Deterministic like
//! the per-series models (the harness's leak check needs it).

use crate::baselines::finite_or_naive;
use crate::baselines::trees::svr::SvrForecaster;
use crate::baselines::trees::{
    recursive, training_rows, FeatureSpec, LagModel, Normalized, TreeForecaster,
};
use crate::error::Result;
use crate::eval::Model;

/// The global models' names.
pub const NAMES: &[&str] = &["rf_global", "gbm_global", "svr_global"];

/// One model over all series (see the module docs).
#[derive(Debug, Clone)]
pub struct GlobalTrees<F> {
    /// The per-series model whose settings (learner, season, transform)
    /// the global fit uses, and which forecasts series too short for it.
    pub per_series: F,
    pub rows_per_series: usize,
}

/// `rf_global`, `gbm_global` or `svr_global` for season `season`; `None` for
/// other names.
pub fn by_name(name: &str, season: usize) -> Option<Box<dyn Model>> {
    let rows_per_series = 300;
    Some(match name {
        "rf_global" => Box::new(GlobalTrees {
            per_series: TreeForecaster::rf(season),
            rows_per_series,
        }),
        "gbm_global" => Box::new(GlobalTrees {
            per_series: TreeForecaster::gbm(season),
            rows_per_series,
        }),
        "svr_global" => Box::new(GlobalTrees {
            per_series: SvrForecaster::new(season),
            rows_per_series,
        }),
        _ => return None,
    })
}

impl<F: LagModel> Model for GlobalTrees<F> {
    fn name(&self) -> String {
        format!("{}_global", self.per_series.name())
    }

    fn fit_forecast(&mut self, histories: &[&[f64]], horizon: usize) -> Result<Vec<Vec<f64>>> {
        let f = &self.per_series;
        let m = f.season().max(1);
        let Some(spec) = FeatureSpec::for_history(usize::MAX, m, 1) else {
            return Ok(histories.iter().map(|h| f.forecast(h, horizon)).collect());
        };
        let fits = |h: &[f64]| h.len() >= spec.first_target() + f.min_rows().max(1);
        let norms: Vec<Option<Normalized>> = histories
            .iter()
            .map(|h| fits(h).then(|| Normalized::new(h, m, f.transform())))
            .collect();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for norm in norms.iter().flatten() {
            let first = norm.z.len().saturating_sub(self.rows_per_series.max(1));
            let (xs, ys) = training_rows(&spec, &norm.z, first);
            x.extend(xs);
            y.extend(ys);
        }
        let model = (!y.is_empty()).then(|| f.fit_rows(&x, spec.width(), &y));
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

#[cfg(test)]
mod tests {
    /// The global variant goes through the batch harness's leak check and
    /// gives finite forecasts of the right shape.
    #[test]
    fn global_models_pass_the_harness() {
        use crate::baselines::trees::tests::hourly;
        use crate::eval::{run_checked, Panel, Series};
        let series: Vec<Series> = (0..6)
            .map(|i| {
                let mut values = hourly(24 * 12 + 24, 20 + i);
                values.iter_mut().for_each(|v| *v *= (i + 1) as f64);
                Series {
                    id: format!("s{i}"),
                    origin: values.len() - 24,
                    values,
                }
            })
            .chain(std::iter::once(Series {
                // Too short for the global layout: per-series fallback.
                id: "short".into(),
                values: hourly(100, 3),
                origin: 76,
            }))
            .collect();
        let panel = Panel::new(series);
        for name in super::NAMES {
            let c = run_checked(
                &panel,
                &mut || Ok(super::by_name(name, 24).expect("known")),
                24,
            )
            .expect("accepted");
            assert!(c.leak_checked);
            assert_eq!(c.model, *name);
            assert_eq!(c.forecasts.len(), 7);
            assert!(c
                .forecasts
                .iter()
                .all(|f| f.len() == 24 && f.iter().all(|v| v.is_finite())));
        }
        assert!(super::by_name("gbm", 24).is_none());
    }
}
