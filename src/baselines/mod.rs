//! Classical statistical forecasters (M4-style benchmarks) behind one trait.
//!
//! Purpose: reference baselines for the RNN forecaster — Naive, Seasonal
//! Naive, M4's Naive2, moving average, simple exponential smoothing, Holt
//! (linear / damped trend) and Holt–Winters (additive / multiplicative) in
//! this file; automatic SARIMA, ARIMAX and regression with ARIMA errors
//! (`arima`), a Prophet-style additive model (`prophet`) and tree ensembles
//! on lag features (`trees`) in their rooms. The cost figures below are for
//! the models of this file; the others state theirs (an `arima` fit is
//! about a second per M4 series, `prophet` tens of milliseconds).
//!
//! Invariants:
//! * `history` is every observation strictly before the forecast origin, in
//!   time order; forecasters are pure functions of `(history, horizon)` and
//!   see nothing else (no state is kept between calls).
//! * `forecast` always returns exactly `horizon` values. For a non-empty,
//!   all-finite history every value is finite: each model falls back to a
//!   simpler one when the history is too short for it, and any non-finite
//!   output (e.g. a numerically exploding multiplicative fit) is replaced by
//!   the naive forecast. With an empty history (`len < min_history()`, which
//!   is 1 for every model here) the result is `horizon` NaNs — callers must
//!   not do that.
//! * No panics and no `unwrap` on user data; parameters outside their valid
//!   range are clamped (NaN parameters become the lower bound). Fitting costs
//!   O(n) per SSE evaluation and at most ~300 evaluations per call (≈1 ms for
//!   n ≈ 1000 in release mode). Allocations are bounded and predictable: the
//!   output vector, O(period) buffers per SSE evaluation, and one copy of the
//!   history in [`SeasonallyAdjusted`] only.
//!
//! Seasonal positions are counted from `history[0]`: observation `t` has
//! season position `t % period`, so the caller must keep the window start
//! aligned with the season if it wants stable positions across calls.

pub mod arima;
pub mod prophet;
#[cfg(test)]
mod test_data;
pub mod trees;

/// A classical point forecaster: maps the history before the origin to
/// `horizon` values (no state between calls).
pub trait Baseline {
    /// Short registry name (see [`ALL`]).
    fn name(&self) -> &str;
    /// Minimum history length for a meaningful forecast. Shorter histories
    /// yield `horizon` NaNs. Models needing more data (seasons, trend) fall
    /// back to simpler models instead of raising this, so it is 1 throughout.
    fn min_history(&self) -> usize {
        1
    }
    /// Forecast the next `horizon` values after `history`. Returns exactly
    /// `horizon` values (see the module invariants).
    fn forecast(&self, history: &[f64], horizon: usize) -> Vec<f64>;
    /// Whether a fit's parameters can be kept apart and reused on later
    /// histories ([`Baseline::fit_params`], [`Baseline::forecast_with`]):
    /// the live chooser then refits them now and then and recomputes the
    /// states (level, trend, seasonal indices) at every window.
    fn reusable_params(&self) -> bool {
        false
    }
    /// The parameters (smoothing weights, damping) [`Baseline::forecast`]
    /// would fit to `history`; empty for forecasters that keep none apart.
    fn fit_params(&self, _history: &[f64]) -> Vec<f64> {
        Vec::new()
    }
    /// [`Baseline::forecast`] with the parameters of an earlier
    /// [`Baseline::fit_params`] instead of fitting them to `history`
    /// (`forecast_with(&fit_params(x), x, h) == forecast(x, h)`).
    fn forecast_with(&self, _params: &[f64], history: &[f64], horizon: usize) -> Vec<f64> {
        self.forecast(history, horizon)
    }
}

/// Every baseline [`named`] knows: those of [`by_name`] ([`ALL`]) plus M4's
/// seasonally adjusted benchmarks `ses_sa`, `holt_sa`, `damped_sa`
/// ([`SeasonallyAdjusted`] around the plain model, as M4 ran its SES / Holt
/// / Damped benchmarks), the tree ensembles `rf`, `gbm` and the kernel
/// method `svr` ([`trees`], [`trees::svr`]), the
/// Prophet-style `prophet` ([`prophet`]) and the ARIMA family `arima`,
/// `arimax`, `regarima` ([`arima`]).
pub const NAMES: &[&str] = &[
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
    "rf",
    "gbm",
    "svr",
    "prophet",
    "arima",
    "arimax",
    "regarima",
];

/// A baseline by one of [`NAMES`]; `season` is the seasonal period.
pub fn named(name: &str, season: usize) -> Option<Box<dyn Baseline + Send + Sync>> {
    let period = season.max(1);
    let holt = |damped| Holt {
        alpha: None,
        beta: None,
        damped,
    };
    Some(match name {
        "ses_sa" => Box::new(SeasonallyAdjusted {
            inner: SimpleExpSmoothing { alpha: None },
            period,
        }),
        "holt_sa" => Box::new(SeasonallyAdjusted {
            inner: holt(None),
            period,
        }),
        "damped_sa" => Box::new(SeasonallyAdjusted {
            inner: holt(Some(Damping::Fitted)),
            period,
        }),
        "rf" => Box::new(trees::TreeForecaster::rf(period)),
        "gbm" => Box::new(trees::TreeForecaster::gbm(period)),
        "svr" => Box::new(trees::svr::SvrForecaster::new(period)),
        "prophet" => Box::new(prophet::Prophet::new(period)),
        "arima" => Box::new(arima::AutoArima { period }),
        "arimax" => Box::new(arima::Arimax {
            period,
            k_day: 3,
            k_week: 2,
        }),
        "regarima" => Box::new(arima::HarmonicArima { period, k_max: 6 }),
        _ => return by_name(name, period),
    })
}

/// Names accepted by [`by_name`] (the plain models, whose `name()` is theirs).
pub const ALL: &[&str] = &[
    "naive", "snaive", "naive2", "ma", "ses", "holt", "damped", "hw_add", "hw_mul",
];

/// Build a forecaster from its registry name; `period` is the seasonal period
/// (24 for hourly data; 0 is treated as 1) and is also the `ma` window.
/// Unknown names give `None`. All fitted models estimate their parameters.
pub fn by_name(name: &str, period: usize) -> Option<Box<dyn Baseline + Send + Sync>> {
    let period = period.max(1);
    Some(match name {
        "naive" => Box::new(Naive),
        "snaive" => Box::new(SeasonalNaive { period }),
        "naive2" => Box::new(Naive2 { period }),
        "ma" => Box::new(MovingAverage { window: period }),
        "ses" => Box::new(SimpleExpSmoothing { alpha: None }),
        "holt" => Box::new(Holt {
            alpha: None,
            beta: None,
            damped: None,
        }),
        "damped" => Box::new(Holt {
            alpha: None,
            beta: None,
            damped: Some(Damping::Fitted),
        }),
        "hw_add" => Box::new(HoltWinters {
            period,
            seasonal: Seasonal::Additive,
            params: None,
        }),
        "hw_mul" => Box::new(HoltWinters {
            period,
            seasonal: Seasonal::Multiplicative,
            params: None,
        }),
        _ => return None,
    })
}

// ---------------------------------------------------------------- helpers

/// Returns `out` if every value is finite, else the naive forecast `last`.
pub(crate) fn finite_or_naive(out: Vec<f64>, last: f64) -> Vec<f64> {
    if out.iter().all(|v| v.is_finite()) {
        out
    } else {
        vec![last; out.len()]
    }
}

/// Clamp that maps NaN to `lo` (so user-supplied NaN parameters stay usable).
fn clamp(v: f64, lo: f64, hi: f64) -> f64 {
    if v.is_nan() {
        lo
    } else {
        v.clamp(lo, hi)
    }
}

/// Box-constrained Nelder–Mead (points are projected into `[lo, hi]`).
/// Returns the best point and value after at most about `max_evals` calls.
fn nelder_mead(
    f: &dyn Fn(&[f64]) -> f64,
    x0: &[f64],
    lo: &[f64],
    hi: &[f64],
    max_evals: usize,
) -> (Vec<f64>, f64) {
    let d = x0.len();
    let project = |p: &mut Vec<f64>| {
        for i in 0..d {
            p[i] = clamp(p[i], lo[i], hi[i]);
        }
    };
    let eval = |p: &[f64]| {
        let v = f(p);
        if v.is_finite() {
            v
        } else {
            f64::INFINITY
        }
    };
    let mut evals = 0usize;
    let mut simplex: Vec<(Vec<f64>, f64)> = Vec::with_capacity(d + 1);
    let mut p0 = x0.to_vec();
    project(&mut p0);
    let f0 = eval(&p0);
    evals += 1;
    simplex.push((p0.clone(), f0));
    for i in 0..d {
        let mut p = p0.clone();
        let step = 0.1 * (hi[i] - lo[i]);
        p[i] = if p[i] + step <= hi[i] {
            p[i] + step
        } else {
            p[i] - step
        };
        project(&mut p);
        let fp = eval(&p);
        evals += 1;
        simplex.push((p, fp));
    }
    let lin = |a: &[f64], b: &[f64], t: f64| -> Vec<f64> {
        // a + t * (b - a)
        a.iter().zip(b).map(|(x, y)| x + t * (y - x)).collect()
    };
    while evals < max_evals {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        let fb = simplex[0].1;
        let fw = simplex[d].1;
        let diam = simplex[1..]
            .iter()
            .flat_map(|(p, _)| p.iter().zip(&simplex[0].0).map(|(x, y)| (x - y).abs()))
            .fold(0.0f64, f64::max);
        if (fw - fb).abs() <= 1e-12 * (fb.abs() + 1e-300) || diam < 1e-8 {
            break;
        }
        let mut c = vec![0.0; d];
        for (p, _) in &simplex[..d] {
            for i in 0..d {
                c[i] += p[i] / d as f64;
            }
        }
        let worst = simplex[d].0.clone();
        let mut xr = lin(&c, &worst, -1.0);
        project(&mut xr);
        let fr = eval(&xr);
        evals += 1;
        if fr < fb {
            let mut xe = lin(&c, &worst, -2.0);
            project(&mut xe);
            let fe = eval(&xe);
            evals += 1;
            simplex[d] = if fe < fr { (xe, fe) } else { (xr, fr) };
        } else if fr < simplex[d - 1].1 {
            simplex[d] = (xr, fr);
        } else {
            let xc = if fr < fw {
                lin(&c, &xr, 0.5)
            } else {
                lin(&c, &worst, 0.5)
            };
            let fc = eval(&xc);
            evals += 1;
            if fc < fr.min(fw) {
                simplex[d] = (xc, fc);
            } else {
                let best = simplex[0].0.clone();
                for (p, fp) in simplex.iter_mut().skip(1) {
                    *p = lin(&best, p, 0.5);
                    *fp = eval(p);
                    evals += 1;
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (p, v) = simplex.swap_remove(0);
    (p, v)
}

/// Fit the free (`None`) entries of `fixed` by minimising `sse` over the box
/// `[lo, hi]`, starting from `start`; fixed entries are clamped into the box.
/// Budget: 4 pre-screening evaluations on the first free parameter, then
/// Nelder–Mead with one restart, `max_evals` in total.
fn fit(
    fixed: &[Option<f64>],
    lo: &[f64],
    hi: &[f64],
    start: &[f64],
    sse: &dyn Fn(&[f64]) -> f64,
    max_evals: usize,
) -> Vec<f64> {
    let full: Vec<f64> = (0..fixed.len())
        .map(|i| clamp(fixed[i].unwrap_or(start[i]), lo[i], hi[i]))
        .collect();
    let free: Vec<usize> = (0..fixed.len()).filter(|&i| fixed[i].is_none()).collect();
    if free.is_empty() {
        return full;
    }
    let expand = |z: &[f64]| {
        let mut p = full.clone();
        for (k, &i) in free.iter().enumerate() {
            p[i] = z[k];
        }
        p
    };
    let obj = |z: &[f64]| sse(&expand(z));
    let flo: Vec<f64> = free.iter().map(|&i| lo[i]).collect();
    let fhi: Vec<f64> = free.iter().map(|&i| hi[i]).collect();
    let mut z0: Vec<f64> = free.iter().map(|&i| full[i]).collect();
    // Cheap pre-screen of the first free parameter (usually the level
    // smoothing weight, which matters most) to pick a good start.
    let mut best = obj(&z0);
    for a in [0.1, 0.3, 0.6, 0.9] {
        let mut z = z0.clone();
        z[0] = clamp(a, flo[0], fhi[0]);
        let v = obj(&z);
        if v < best {
            best = v;
            z0 = z;
        }
    }
    let budget = max_evals.saturating_sub(4);
    let (z1, _) = nelder_mead(&obj, &z0, &flo, &fhi, budget * 2 / 3);
    let (z2, _) = nelder_mead(&obj, &z1, &flo, &fhi, budget / 3);
    expand(&z2)
}

// ---------------------------------------------------------------- naive family

/// Naive: every step equals the last observation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Naive;

impl Baseline for Naive {
    fn name(&self) -> &str {
        "naive"
    }
    fn forecast(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        match history.last() {
            Some(&v) => vec![v; horizon],
            None => vec![f64::NAN; horizon],
        }
    }
}

/// Seasonal naive: repeats the last full season, `ŷ_{n+h} = x_{n−m+((h−1) mod m)}`.
/// Falls back to [`Naive`] when `period ≤ 1` or the history is shorter than
/// one period.
#[derive(Debug, Clone, Copy)]
pub struct SeasonalNaive {
    /// Seasonal period `m`.
    pub period: usize,
}

impl Baseline for SeasonalNaive {
    fn name(&self) -> &str {
        "snaive"
    }
    fn forecast(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        let (n, m) = (history.len(), self.period);
        if m <= 1 || n < m {
            return Naive.forecast(history, horizon);
        }
        (0..horizon).map(|h| history[n - m + h % m]).collect()
    }
}

/// M4 seasonality test (90% autocorrelation test of the M4 R benchmark code,
/// `SeasonalityTest`): seasonal iff `|r_m| > 1.645·sqrt((1 + 2·Σ_{k=1}^{m−1} r_k²)/n)`
/// where `r_k` is the sample ACF (demeaned, divisor `n` in both sums).
///
/// Returns `false` when `m < 2`, `n < 3m`, the series is constant or
/// non-finite, or — reproducing R's `acf()` default `lag.max =
/// floor(10·log10(n))` on which the M4 code relies — when `m > lag.max`
/// (e.g. `m = 24` needs `n ≥ 252`).
pub fn seasonality_test(x: &[f64], m: usize) -> bool {
    let n = x.len();
    if m < 2 || n < 3 * m {
        return false;
    }
    let lag_max = ((10.0 * (n as f64).log10()).floor() as usize).min(n - 1);
    if m > lag_max {
        return false;
    }
    let mean = x.iter().sum::<f64>() / n as f64;
    let denom: f64 = x.iter().map(|v| (v - mean) * (v - mean)).sum();
    if denom <= 0.0 || !denom.is_finite() {
        return false;
    }
    let acf = |k: usize| -> f64 {
        (k..n)
            .map(|i| (x[i] - mean) * (x[i - k] - mean))
            .sum::<f64>()
            / denom
    };
    let s: f64 = (1..m).map(|k| acf(k).powi(2)).sum();
    let limit = 1.645 * ((1.0 + 2.0 * s) / n as f64).sqrt();
    acf(m).abs() > limit // NaN compares false
}

/// Seasonal indices of R's `decompose(type = "multiplicative")`: centred
/// moving average of order `m` (2×m for even `m`), ratios `x_t / trend_t`,
/// mean ratio per season position `t % m`, normalised to mean 1.
///
/// Returns `None` if `m < 2`, `n < 2m`, or any index is non-finite or ≤ 0
/// (e.g. zero/negative data), in which case callers should treat the series
/// as non-seasonal. This does not run [`seasonality_test`].
pub fn seasonal_indices(x: &[f64], m: usize) -> Option<Vec<f64>> {
    let n = x.len();
    if m < 2 || n < 2 * m {
        return None;
    }
    let half = m / 2;
    let mut sum = vec![0.0; m];
    let mut cnt = vec![0usize; m];
    for t in half..n - half {
        let trend = if m.is_multiple_of(2) {
            let inner: f64 = x[t + 1 - half..t + half].iter().sum();
            (0.5 * x[t - half] + inner + 0.5 * x[t + half]) / m as f64
        } else {
            x[t - half..=t + half].iter().sum::<f64>() / m as f64
        };
        sum[t % m] += x[t] / trend;
        cnt[t % m] += 1;
    }
    let mut idx: Vec<f64> = sum.iter().zip(&cnt).map(|(s, &c)| s / c as f64).collect();
    let mean = idx.iter().sum::<f64>() / m as f64;
    for v in idx.iter_mut() {
        *v /= mean;
    }
    if idx.iter().all(|v| v.is_finite() && *v > 0.0) {
        Some(idx)
    } else {
        None
    }
}

/// M4 Naive2 seasonal adjustment: `Some(indices)` if the series passes
/// [`seasonality_test`] and the decomposition is valid, else `None`
/// (non-seasonal, i.e. all indices 1). Index `p` applies to times `t ≡ p (mod m)`.
pub fn m4_seasonal_indices(x: &[f64], m: usize) -> Option<Vec<f64>> {
    if seasonality_test(x, m) {
        seasonal_indices(x, m)
    } else {
        None
    }
}

/// M4 Naive2: if [`seasonality_test`] passes, divide by the multiplicative
/// seasonal indices, forecast the adjusted series naively and reseasonalise
/// with the indices continuing the cycle:
/// `ŷ_{n+h} = (x_n / s_{(n−1) mod m}) · s_{(n+h−1) mod m}` (0-based times).
/// Otherwise identical to [`Naive`].
#[derive(Debug, Clone, Copy)]
pub struct Naive2 {
    /// Seasonal period `m` (24 for hourly data).
    pub period: usize,
}

impl Baseline for Naive2 {
    fn name(&self) -> &str {
        "naive2"
    }
    fn forecast(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        let Some(&last) = history.last() else {
            return vec![f64::NAN; horizon];
        };
        let (n, m) = (history.len(), self.period);
        match m4_seasonal_indices(history, m) {
            Some(si) => {
                let level = last / si[(n - 1) % m];
                finite_or_naive(
                    (0..horizon).map(|h| level * si[(n + h) % m]).collect(),
                    last,
                )
            }
            None => vec![last; horizon],
        }
    }
}

/// M4-style seasonal adjustment around any forecaster: if
/// [`m4_seasonal_indices`] finds seasonality, `inner` forecasts the
/// deseasonalised history and the result is reseasonalised with the indices
/// continuing the cycle; otherwise `inner` sees the raw history. This is how
/// M4 ran its SES / Holt / Damped benchmarks (the registry models in [`ALL`]
/// are *not* adjusted). `SeasonallyAdjusted { inner: Naive, period }` equals
/// [`Naive2`]. `name()` is the inner model's name.
#[derive(Debug, Clone, Copy)]
pub struct SeasonallyAdjusted<F> {
    /// The model applied to the seasonally adjusted series.
    pub inner: F,
    /// Seasonal period `m`.
    pub period: usize,
}

impl<F: Baseline> SeasonallyAdjusted<F> {
    /// `history` divided by its M4 seasonal indices, and the indices (none
    /// when the series fails the seasonality test).
    fn adjust(&self, history: &[f64]) -> (Vec<f64>, Option<Vec<f64>>) {
        let m = self.period;
        match m4_seasonal_indices(history, m) {
            Some(si) => (
                history
                    .iter()
                    .enumerate()
                    .map(|(t, v)| v / si[t % m])
                    .collect(),
                Some(si),
            ),
            None => (history.to_vec(), None),
        }
    }

    /// The inner forecast (by `inner`) of the adjusted series, reseasonalized.
    fn reseason(
        &self,
        history: &[f64],
        horizon: usize,
        inner: impl Fn(&[f64]) -> Vec<f64>,
    ) -> Vec<f64> {
        let Some(&last) = history.last() else {
            return vec![f64::NAN; horizon];
        };
        let (n, m) = (history.len(), self.period);
        let (adjusted, si) = self.adjust(history);
        let Some(si) = si else {
            return inner(history);
        };
        let out = inner(&adjusted)
            .into_iter()
            .enumerate()
            .map(|(h, v)| v * si[(n + h) % m])
            .collect();
        finite_or_naive(out, last)
    }
}

impl<F: Baseline> Baseline for SeasonallyAdjusted<F> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn min_history(&self) -> usize {
        self.inner.min_history()
    }
    fn forecast(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        self.reseason(history, horizon, |x| self.inner.forecast(x, horizon))
    }
    fn reusable_params(&self) -> bool {
        self.inner.reusable_params()
    }
    fn fit_params(&self, history: &[f64]) -> Vec<f64> {
        self.inner.fit_params(&self.adjust(history).0)
    }
    fn forecast_with(&self, params: &[f64], history: &[f64], horizon: usize) -> Vec<f64> {
        self.reseason(history, horizon, |x| {
            self.inner.forecast_with(params, x, horizon)
        })
    }
}

/// Moving average: flat forecast equal to the mean of the last `window`
/// observations (all of them if fewer; `window = 0` is treated as 1).
#[derive(Debug, Clone, Copy)]
pub struct MovingAverage {
    /// Number of trailing observations averaged.
    pub window: usize,
}

impl Baseline for MovingAverage {
    fn name(&self) -> &str {
        "ma"
    }
    fn forecast(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        if history.is_empty() {
            return vec![f64::NAN; horizon];
        }
        let w = self.window.max(1).min(history.len());
        let tail = &history[history.len() - w..];
        vec![tail.iter().sum::<f64>() / w as f64; horizon]
    }
}

// ---------------------------------------------------------------- exponential smoothing

/// In-sample one-step SSE and final level of SES with `l_0 = x_0`.
fn ses_run(x: &[f64], alpha: f64) -> (f64, f64) {
    let mut level = x[0];
    let mut sse = 0.0;
    for &v in &x[1..] {
        let e = v - level;
        sse += e * e;
        level += alpha * e;
    }
    (sse, level)
}

/// Fit SES alpha: grid 0.01..=0.99 (step 0.01), then golden-section search
/// on `[best − 0.01, best + 0.01] ∩ [0, 1]` (~120 SSE evaluations).
fn fit_ses_alpha(x: &[f64]) -> f64 {
    let sse = |a: f64| {
        let v = ses_run(x, a).0;
        if v.is_finite() {
            v
        } else {
            f64::INFINITY
        }
    };
    let (mut best_a, mut best_v) = (0.5, f64::INFINITY);
    for k in 1..=99 {
        let a = k as f64 / 100.0;
        let v = sse(a);
        if v < best_v {
            best_a = a;
            best_v = v;
        }
    }
    let g = 0.5 * (5f64.sqrt() - 1.0);
    let (mut lo, mut hi) = ((best_a - 0.01).max(0.0), (best_a + 0.01).min(1.0));
    let mut c = hi - g * (hi - lo);
    let mut d = lo + g * (hi - lo);
    let (mut fc, mut fd) = (sse(c), sse(d));
    for _ in 0..25 {
        if fc < fd {
            hi = d;
            d = c;
            fd = fc;
            c = hi - g * (hi - lo);
            fc = sse(c);
        } else {
            lo = c;
            c = d;
            fc = fd;
            d = lo + g * (hi - lo);
            fd = sse(d);
        }
    }
    let (a, v) = if fc < fd { (c, fc) } else { (d, fd) };
    if v < best_v {
        a
    } else {
        best_a
    }
}

/// Simple exponential smoothing, `l_t = l_{t−1} + α (x_t − l_{t−1})`, `l_0 = x_0`;
/// flat forecast at the final level. `alpha = None` fits α by minimising the
/// in-sample one-step SSE (grid 0.01..0.99, then golden-section refinement
/// within ±0.01, so the fitted α lies in [0, 1]). A given α is clamped to [0, 1].
#[derive(Debug, Clone, Copy)]
pub struct SimpleExpSmoothing {
    /// Smoothing weight α; `None` = fit.
    pub alpha: Option<f64>,
}

impl Baseline for SimpleExpSmoothing {
    fn name(&self) -> &str {
        "ses"
    }
    fn forecast(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        let Some(&last) = history.last() else {
            return vec![f64::NAN; horizon];
        };
        let alpha = match self.alpha {
            Some(a) => clamp(a, 0.0, 1.0),
            None => fit_ses_alpha(history),
        };
        finite_or_naive(vec![ses_run(history, alpha).1; horizon], last)
    }
    fn reusable_params(&self) -> bool {
        true
    }
    fn fit_params(&self, history: &[f64]) -> Vec<f64> {
        match self.alpha {
            Some(a) => vec![clamp(a, 0.0, 1.0)],
            None if history.is_empty() => vec![0.3],
            None => vec![fit_ses_alpha(history)],
        }
    }
    fn forecast_with(&self, params: &[f64], history: &[f64], horizon: usize) -> Vec<f64> {
        let alpha = params.first().copied().or(self.alpha);
        SimpleExpSmoothing { alpha }.forecast(history, horizon)
    }
}

/// Trend damping for [`Holt`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Damping {
    /// Fixed damping factor φ (clamped to [0, 1]).
    Fixed(f64),
    /// Fit φ within [0.8, 0.98] (the `forecast` R package's range).
    Fitted,
}

/// Holt's linear trend method (error-correction form):
/// `ŷ_t = l_{t−1} + φ b_{t−1}`, `l_t = ŷ_t + α e_t`, `b_t = φ b_{t−1} + αβ e_t`
/// (equivalently `b_t = β(l_t − l_{t−1}) + (1−β) φ b_{t−1}`), with `l_0 = x_0`,
/// `b_0 = x_1 − x_0`; forecast `l_n + (φ + … + φ^h) b_n`. φ = 1 without damping.
///
/// `None` parameters are fitted jointly by minimising in-sample one-step SSE
/// with box-constrained Nelder–Mead (α ∈ [1e-4, 1], β ∈ [0, 1], φ ∈ [0.8, 0.98];
/// ≤ 300 SSE evaluations). Given values are clamped to [0, 1].
/// A single observation falls back to [`Naive`].
#[derive(Debug, Clone, Copy)]
pub struct Holt {
    /// Level smoothing α; `None` = fit.
    pub alpha: Option<f64>,
    /// Trend smoothing β; `None` = fit.
    pub beta: Option<f64>,
    /// `None` = undamped (φ = 1).
    pub damped: Option<Damping>,
}

/// One-step SSE and final (level, trend) of Holt's method.
fn holt_run(x: &[f64], alpha: f64, beta: f64, phi: f64) -> (f64, f64, f64) {
    let mut level = x[0];
    let mut trend = x[1] - x[0];
    let mut sse = 0.0;
    for &v in &x[1..] {
        let fc = level + phi * trend;
        let e = v - fc;
        sse += e * e;
        level = fc + alpha * e;
        trend = phi * trend + alpha * beta * e;
    }
    (sse, level, trend)
}

impl Baseline for Holt {
    fn name(&self) -> &str {
        if self.damped.is_some() {
            "damped"
        } else {
            "holt"
        }
    }
    fn forecast(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        self.forecast_with(&self.fit_params(history), history, horizon)
    }
    fn reusable_params(&self) -> bool {
        true
    }
    /// (α, β, φ): the given ones clamped, the others fitted.
    fn fit_params(&self, history: &[f64]) -> Vec<f64> {
        // Fixed values are clamped to [0, 1]; fitted ones search the bounds
        // documented on the type.
        let (phi, phi_lo, phi_hi) = match self.damped {
            None => (Some(1.0), 0.0, 1.0),
            Some(Damping::Fixed(p)) => (Some(p), 0.0, 1.0),
            Some(Damping::Fitted) => (None, 0.8, 0.98),
        };
        let alpha_lo = if self.alpha.is_some() { 0.0 } else { 1e-4 };
        let fixed = [self.alpha, self.beta, phi];
        let (lo, hi) = ([alpha_lo, 0.0, phi_lo], [1.0, 1.0, phi_hi]);
        if history.len() < 2 {
            return fit(&fixed, &lo, &hi, &[0.3, 0.05, 0.95], &|_| 0.0, 0);
        }
        let sse = |p: &[f64]| holt_run(history, p[0], p[1], p[2]).0;
        fit(&fixed, &lo, &hi, &[0.3, 0.05, 0.95], &sse, 300)
    }
    fn forecast_with(&self, p: &[f64], history: &[f64], horizon: usize) -> Vec<f64> {
        let Some(&last) = history.last() else {
            return vec![f64::NAN; horizon];
        };
        if history.len() < 2 || p.len() != 3 {
            return vec![last; horizon];
        }
        let (_, level, trend) = holt_run(history, p[0], p[1], p[2]);
        let mut out = Vec::with_capacity(horizon);
        let (mut damp_sum, mut phi_h) = (0.0, 1.0);
        for _ in 0..horizon {
            phi_h *= p[2];
            damp_sum += phi_h;
            out.push(level + damp_sum * trend);
        }
        finite_or_naive(out, last)
    }
}

/// Seasonality type for [`HoltWinters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seasonal {
    /// `x = level + trend + season`.
    Additive,
    /// `x = (level + trend) · season`; needs strictly positive data.
    Multiplicative,
}

/// Holt–Winters with linear trend and additive or multiplicative season.
///
/// Initialisation from the first two seasons: `b = (mean(season 2) −
/// mean(season 1)) / m`; initial seasonal terms are the first season's
/// deviations (additive) or ratios (multiplicative) from the line through
/// `mean(season 1)` with slope `b` (so exact trend + season data is
/// reproduced exactly), normalised to mean 0 / 1 with the level adjusted to
/// keep the fit unchanged; the level starts at that line's value at
/// `t = m − 1`. Updates for `t ≥ m`:
/// `l_t = α(x_t − s) + (1−α)(l+b)` (or `α x_t/s + …`), `b_t = β(l_t − l_{t−1}) +
/// (1−β) b_{t−1}`, `s_t = γ(x_t − l_t) + (1−γ) s_{t−m}` (or `γ x_t/l_t + …`).
///
/// `params = None` fits (α, β, γ) ∈ [1e-4, 1]×[0, 1]×[0, 1] by minimising the
/// in-sample one-step SSE (Nelder–Mead, ≤ 300 SSE evaluations); given values
/// are clamped to [0, 1].
///
/// Fallbacks: **`Multiplicative` silently runs as `Additive` if any history
/// value is ≤ 0**; `period < 2` or fewer than `2·period` observations fall
/// back to fitted [`SimpleExpSmoothing`]; non-finite output falls back to
/// [`Naive`].
#[derive(Debug, Clone, Copy)]
pub struct HoltWinters {
    /// Seasonal period `m`.
    pub period: usize,
    /// Additive or multiplicative season.
    pub seasonal: Seasonal,
    /// `(α, β, γ)`; `None` = fit.
    pub params: Option<(f64, f64, f64)>,
}

/// Initial (level at t = m−1, trend, seasonal terms for positions 0..m).
fn hw_init(x: &[f64], m: usize, mult: bool) -> Option<(f64, f64, Vec<f64>)> {
    let mean1 = x[..m].iter().sum::<f64>() / m as f64;
    let mean2 = x[m..2 * m].iter().sum::<f64>() / m as f64;
    let mut trend = (mean2 - mean1) / m as f64;
    let centre = (m as f64 - 1.0) / 2.0;
    let mut level = mean1 + trend * centre;
    let mut season = Vec::with_capacity(m);
    for (i, &v) in x[..m].iter().enumerate() {
        let base = mean1 + (i as f64 - centre) * trend;
        if mult {
            if base <= 0.0 {
                return None;
            }
            season.push(v / base);
        } else {
            season.push(v - base);
        }
    }
    let k = season.iter().sum::<f64>() / m as f64;
    if mult {
        if k <= 0.0 || !k.is_finite() {
            return None;
        }
        season.iter_mut().for_each(|s| *s /= k);
        level *= k;
        trend *= k;
    } else {
        season.iter_mut().for_each(|s| *s -= k);
        level += k;
    }
    if level.is_finite() && trend.is_finite() && season.iter().all(|s| s.is_finite()) {
        Some((level, trend, season))
    } else {
        None
    }
}

/// Runs Holt–Winters over `x` from `t = m`; returns (SSE, level, trend,
/// season) with `season[p]` the latest term for position `p`.
fn hw_run(
    x: &[f64],
    m: usize,
    mult: bool,
    init: &(f64, f64, Vec<f64>),
    p: &[f64],
) -> (f64, f64, f64, Vec<f64>) {
    let (a, b, g) = (p[0], p[1], p[2]);
    let (mut level, mut trend, mut s) = (init.0, init.1, init.2.clone());
    let mut sse = 0.0;
    for (t, &v) in x.iter().enumerate().skip(m) {
        let q = t % m;
        let base = level + trend;
        let (fc, new_level) = if mult {
            (base * s[q], a * v / s[q] + (1.0 - a) * base)
        } else {
            (base + s[q], a * (v - s[q]) + (1.0 - a) * base)
        };
        let e = v - fc;
        sse += e * e;
        trend = b * (new_level - level) + (1.0 - b) * trend;
        s[q] = if mult {
            g * v / new_level + (1.0 - g) * s[q]
        } else {
            g * (v - new_level) + (1.0 - g) * s[q]
        };
        level = new_level;
    }
    (sse, level, trend, s)
}

impl Baseline for HoltWinters {
    fn name(&self) -> &str {
        match self.seasonal {
            Seasonal::Additive => "hw_add",
            Seasonal::Multiplicative => "hw_mul",
        }
    }
    fn forecast(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        let Some(&last) = history.last() else {
            return vec![f64::NAN; horizon];
        };
        let (n, m) = (history.len(), self.period);
        let fallback = || SimpleExpSmoothing { alpha: None }.forecast(history, horizon);
        if m < 2 || n < 2 * m {
            return fallback();
        }
        let want_mult =
            self.seasonal == Seasonal::Multiplicative && history.iter().all(|&v| v > 0.0);
        let mul_init = if want_mult {
            hw_init(history, m, true)
        } else {
            None
        };
        let (mult, init) = match mul_init {
            Some(i) => (true, i),
            None => match hw_init(history, m, false) {
                Some(i) => (false, i),
                None => return fallback(),
            },
        };
        let fixed = match self.params {
            Some((a, b, g)) => [
                Some(clamp(a, 0.0, 1.0)),
                Some(clamp(b, 0.0, 1.0)),
                Some(clamp(g, 0.0, 1.0)),
            ],
            None => [None, None, None],
        };
        let lo = if self.params.is_some() {
            [0.0; 3]
        } else {
            [1e-4, 0.0, 0.0]
        };
        let sse = |p: &[f64]| hw_run(history, m, mult, &init, p).0;
        let p = fit(&fixed, &lo, &[1.0; 3], &[0.3, 0.05, 0.1], &sse, 300);
        let (_, level, trend, s) = hw_run(history, m, mult, &init, &p);
        let out = (1..=horizon)
            .map(|h| {
                let base = level + h as f64 * trend;
                let q = (n - 1 + h) % m;
                if mult {
                    base * s[q]
                } else {
                    base + s[q]
                }
            })
            .collect();
        finite_or_naive(out, last)
    }
}

#[cfg(test)]
mod tests;
