//! Tree ensembles on lag features: random forest (`rf`) and gradient
//! boosting (`gbm`) fitted per series inside [`Baseline::forecast`].
//!
//! Purpose: the machine-learning reference point between the classical
//! smoothers and the recurrent model — how far do per-series regression
//! trees on lags, rolling statistics and calendar positions get?
//!
//! How a forecast is made (`history` of `n` values, season `m`):
//! 1. Normalise (see [`features`]): `z = x / S` (or `ln(x / S)` with
//!    [`Transform::Log`]), `S` the mean |x| of the last season; every row
//!    is further taken relative to its local level (mean of the `m` values
//!    before the target).
//! 2. One training row per target time `t` from the first complete row to
//!    `n − 1` (at most `max_rows`, the latest): lags `1..=2m`, and `7m` when
//!    that leaves two weeks (`14m`) of rows, level, rolling std, hour of day
//!    `t mod m` and
//!    day of week `(t div m) mod 7` — positions counted from `history[0]`
//!    (the trait has no timestamps).
//! 3. Fit the ensemble ([`cart`]: own histogram trees, see below for why).
//! 4. Forecast **recursively**: step `h` is predicted from a row in which
//!    the values after the origin are the model's own earlier steps. One
//!    model per series; a direct model per step (48 for M4 Hourly) costs 48
//!    fits, see BENCHMARKS.md for the comparison that chose recursion.
//!
//! Fallbacks: a history too short for lags `1..=max(m, 4)` plus `min_rows`
//! training rows is forecast by seasonal naive (naive when shorter than a
//! season); a non-finite forecast is replaced by the naive one. Empty
//! history: `horizon` NaNs, like every baseline.
//!
//! Determinism: every random draw comes from [`cart::Rng`] seeded by the
//! model's `seed`, so a forecast depends on `(history, horizon)` only (the
//! eval harness's leak check relies on it).
//!
//! Why our own trees: of the pure-Rust crates looked at, none offers
//! gradient boosting that we could check against scikit-learn's: `gbdt`
//! (0.1.3) has had no release for years, `perpetual` (3.0) is a
//! self-tuning "budget" booster without learning-rate / tree-count knobs to
//! compare, `forust-ml` (0.8) was not tried; `smartcore` 0.7 has a random
//! forest and SVR but no boosting, and its exact trees scan presorted
//! features where a ~900-value series needs only 64-256 bins. One compact
//! histogram tree (`cart`) serves both ensembles, adds no dependency, and
//! equals sklearn's exact trees when features have at most `max_bins`
//! distinct values (the fixture tests check predictions to 1e-9).
//!
//! The kernel method `svr` ([`svr`]) shares the rows and the recursion
//! through [`LagModel`] / [`Predict`], with its own SMO solver (see there
//! for why not `smartcore`'s or `linfa-svm`'s).

pub mod cart;
pub mod features;
pub mod svr;

use super::{finite_or_naive, Baseline, SeasonalNaive};
use cart::{Binned, Ensemble, ForestParams, GbmParams, TreeParams};
pub use features::{FeatureSpec, Normalized, Transform};

/// The ensemble and its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Forest(ForestParams),
    Boosting(GbmParams),
}

impl Kind {
    /// Fits on a row-major matrix of `width` columns.
    pub fn fit(&self, x: &[f64], width: usize, y: &[f64]) -> Ensemble {
        match self {
            Kind::Forest(p) => Ensemble::forest(&Binned::new(x, width, p.max_bins), y, p),
            Kind::Boosting(p) => Ensemble::boosted(&Binned::new(x, width, p.max_bins), y, p),
        }
    }
}

/// `rf` / `gbm`: a tree ensemble fitted per series on lag features (see the
/// module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct TreeForecaster {
    pub kind: Kind,
    /// Seasonal period `m` (24 for hourly data; 0 is treated as 1).
    pub season: usize,
    pub transform: Transform,
    /// Fewest training rows worth a fit (else seasonal naive).
    pub min_rows: usize,
    /// Most training rows (the latest are kept), bounding the cost on long
    /// streams.
    pub max_rows: usize,
    pub strategy: Strategy,
}

/// How the steps after the origin are forecast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// One model; step `h` sees the model's own steps `1..h` as lags.
    Recursive,
    /// One model per group of `group` consecutive steps, fitted on rows
    /// (origin `o`, step `h`) with the origin's lag row plus `h` and the
    /// target's calendar position; origins are strided by `group` so each
    /// model has about as many rows as the recursive one (cost: one fit
    /// per group).
    Direct { group: usize },
}

/// Default random forest: 100 trees, a third of the features per split,
/// leaves of at least 2 rows, bootstrap, 64 bins.
pub fn rf_params() -> ForestParams {
    ForestParams {
        trees: 100,
        tree: TreeParams {
            max_depth: usize::MAX,
            min_samples_split: 2,
            min_samples_leaf: 2,
            max_features: 0, // set from the feature count (a third)
        },
        bootstrap: true,
        max_bins: 64,
        seed: 0x005E_ED0F_F0E5,
    }
}

/// Default boosting: 150 trees of depth 4, learning rate 0.1, 80% rows
/// per tree, leaves of at least 10 rows, 64 bins.
pub fn gbm_params() -> GbmParams {
    GbmParams {
        trees: 150,
        learning_rate: 0.1,
        subsample: 0.8,
        tree: TreeParams {
            max_depth: 4,
            min_samples_split: 2,
            min_samples_leaf: 10,
            max_features: 0,
        },
        max_bins: 64,
        seed: 0x005E_ED0F_B005,
    }
}

impl TreeForecaster {
    pub fn rf(season: usize) -> Self {
        TreeForecaster {
            kind: Kind::Forest(rf_params()),
            season: season.max(1),
            transform: Transform::Log,
            min_rows: 48,
            max_rows: 2000,
            strategy: Strategy::Recursive,
        }
    }

    pub fn gbm(season: usize) -> Self {
        TreeForecaster {
            kind: Kind::Boosting(gbm_params()),
            ..TreeForecaster::rf(season)
        }
    }

    /// The ensemble settings for a feature matrix of `width` columns (the
    /// forest's "a third of the features").
    pub(crate) fn kind_for(&self, width: usize) -> Kind {
        match self.kind {
            Kind::Forest(mut p) if p.tree.max_features == 0 => {
                p.tree.max_features = width.div_ceil(3).max(1);
                Kind::Forest(p)
            }
            k => k,
        }
    }
}

/// Training matrix of one normalised series: rows for targets
/// `first..z.len()`, row-major, and their targets.
pub fn training_rows(spec: &FeatureSpec, z: &[f64], first: usize) -> (Vec<f64>, Vec<f64>) {
    let first = first.max(spec.first_target());
    let rows = z.len().saturating_sub(first);
    let mut x = Vec::with_capacity(rows * spec.width());
    let mut y = Vec::with_capacity(rows);
    for t in first..z.len() {
        let level = spec.row(z, t, &mut x);
        y.push(z[t] - level);
    }
    (x, y)
}

/// A fitted model on feature rows.
pub trait Predict {
    fn predict(&self, row: &[f64]) -> f64;
}

impl Predict for Ensemble {
    fn predict(&self, row: &[f64]) -> f64 {
        Ensemble::predict(self, row)
    }
}

/// A per-series forecaster on lag features whose learner can also be fitted
/// on the pooled rows of many series (`eval::global_trees`).
pub trait LagModel: Baseline {
    type Fitted: Predict;
    /// Seasonal period `m` (≥ 1).
    fn season(&self) -> usize;
    fn transform(&self) -> Transform;
    /// Fewest training rows worth a fit.
    fn min_rows(&self) -> usize;
    /// Fits the learner on a row-major matrix of `width` columns.
    fn fit_rows(&self, x: &[f64], width: usize, y: &[f64]) -> Self::Fitted;
}

impl LagModel for TreeForecaster {
    type Fitted = Ensemble;
    fn season(&self) -> usize {
        self.season.max(1)
    }
    fn transform(&self) -> Transform {
        self.transform
    }
    fn min_rows(&self) -> usize {
        self.min_rows
    }
    fn fit_rows(&self, x: &[f64], width: usize, y: &[f64]) -> Ensemble {
        self.kind_for(width).fit(x, width, y)
    }
}

/// Recursive forecast: extends `z` by `horizon` predicted values.
pub fn recursive<M: Predict + ?Sized>(
    model: &M,
    spec: &FeatureSpec,
    z: &mut Vec<f64>,
    horizon: usize,
) {
    let mut row = Vec::with_capacity(spec.width());
    for _ in 0..horizon {
        row.clear();
        let t = z.len();
        let level = spec.row(z, t, &mut row);
        z.push(level + model.predict(&row));
    }
}

/// Direct forecast of `horizon` steps after `z` (see [`Strategy::Direct`]).
fn direct(
    f: &TreeForecaster,
    spec: &FeatureSpec,
    z: &[f64],
    first: usize,
    horizon: usize,
    group: usize,
) -> Vec<f64> {
    let n = z.len();
    let m = spec.season;
    let width = spec.width() + 3;
    let extra = |out: &mut Vec<f64>, t: usize, h: usize| {
        out.push(h as f64);
        out.push((t % m) as f64);
        out.push(((t / m) % 7) as f64);
    };
    let kind = f.kind_for(width);
    let mut out = Vec::with_capacity(horizon);
    let mut row = Vec::with_capacity(width);
    for a in (1..=horizon).step_by(group) {
        let b = (a + group - 1).min(horizon);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        // Origin o: the row for target o + 1 (lags up to z[o]).
        let mut o1 = first.max(spec.first_target());
        while o1 + b <= n {
            for h in a..=b {
                let level = spec.row(z, o1, &mut x);
                extra(&mut x, o1 - 1 + h, h);
                y.push(z[o1 - 1 + h] - level);
            }
            o1 += group;
        }
        if y.is_empty() {
            out.extend(std::iter::repeat_n(z[n - 1], b + 1 - a));
            continue;
        }
        let model = kind.fit(&x, width, &y);
        for h in a..=b {
            row.clear();
            let level = spec.row(z, n, &mut row);
            extra(&mut row, n - 1 + h, h);
            out.push(level + model.predict(&row));
        }
    }
    out
}

impl Baseline for TreeForecaster {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Forest(_) => "rf",
            Kind::Boosting(_) => "gbm",
        }
    }

    fn forecast(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        let Some(&last) = history.last() else {
            return vec![f64::NAN; horizon];
        };
        let n = history.len();
        let m = self.season.max(1);
        let Some(spec) = FeatureSpec::for_history(n, m, self.min_rows.max(1)) else {
            return SeasonalNaive { period: m }.forecast(history, horizon);
        };
        let norm = Normalized::new(history, m, self.transform);
        let first = n.saturating_sub(self.max_rows.max(1));
        let z = match self.strategy {
            Strategy::Recursive => {
                let (x, y) = training_rows(&spec, &norm.z, first);
                let model = self.kind_for(spec.width()).fit(&x, spec.width(), &y);
                let mut z = norm.z.clone();
                recursive(&model, &spec, &mut z, horizon);
                z
            }
            Strategy::Direct { group } => {
                let mut z = norm.z.clone();
                z.extend(direct(self, &spec, &norm.z, first, horizon, group.max(1)));
                z
            }
        };
        finite_or_naive(z[n..].iter().map(|&v| norm.back(v)).collect(), last)
    }
}

#[cfg(test)]
pub(crate) mod tests;
