//! Classical statistical forecasters (M4-style benchmarks) behind one trait.
//!
//! Purpose: reference baselines for the RNN forecaster — Naive, Seasonal
//! Naive, M4's Naive2, moving average, simple exponential smoothing, Holt
//! (linear / damped trend) and Holt–Winters (additive / multiplicative).
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

/// A point forecaster: maps the history before the origin to `horizon` values.
pub trait Forecaster {
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
}

/// Names accepted by [`by_name`].
pub const ALL: &[&str] = &[
    "naive", "snaive", "naive2", "ma", "ses", "holt", "damped", "hw_add", "hw_mul",
];

/// Build a forecaster from its registry name; `period` is the seasonal period
/// (24 for hourly data; 0 is treated as 1) and is also the `ma` window.
/// Unknown names give `None`. All fitted models estimate their parameters.
pub fn by_name(name: &str, period: usize) -> Option<Box<dyn Forecaster + Send + Sync>> {
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
fn finite_or_naive(out: Vec<f64>, last: f64) -> Vec<f64> {
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

impl Forecaster for Naive {
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

impl Forecaster for SeasonalNaive {
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

impl Forecaster for Naive2 {
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

impl<F: Forecaster> Forecaster for SeasonallyAdjusted<F> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn min_history(&self) -> usize {
        self.inner.min_history()
    }
    fn forecast(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        let Some(&last) = history.last() else {
            return vec![f64::NAN; horizon];
        };
        let (n, m) = (history.len(), self.period);
        let Some(si) = m4_seasonal_indices(history, m) else {
            return self.inner.forecast(history, horizon);
        };
        let adjusted: Vec<f64> = history
            .iter()
            .enumerate()
            .map(|(t, v)| v / si[t % m])
            .collect();
        let out = self
            .inner
            .forecast(&adjusted, horizon)
            .into_iter()
            .enumerate()
            .map(|(h, v)| v * si[(n + h) % m])
            .collect();
        finite_or_naive(out, last)
    }
}

/// Moving average: flat forecast equal to the mean of the last `window`
/// observations (all of them if fewer; `window = 0` is treated as 1).
#[derive(Debug, Clone, Copy)]
pub struct MovingAverage {
    /// Number of trailing observations averaged.
    pub window: usize,
}

impl Forecaster for MovingAverage {
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

impl Forecaster for SimpleExpSmoothing {
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

impl Forecaster for Holt {
    fn name(&self) -> &str {
        if self.damped.is_some() {
            "damped"
        } else {
            "holt"
        }
    }
    fn forecast(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        let Some(&last) = history.last() else {
            return vec![f64::NAN; horizon];
        };
        if history.len() < 2 {
            return vec![last; horizon];
        }
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
        let sse = |p: &[f64]| holt_run(history, p[0], p[1], p[2]).0;
        let p = fit(&fixed, &lo, &hi, &[0.3, 0.05, 0.95], &sse, 300);
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

impl Forecaster for HoltWinters {
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
mod tests {
    use super::*;

    fn assert_close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len(), "length {a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    /// Deterministic pseudo-noise in [-0.5, 0.5) (LCG), for fitting tests.
    fn noise(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect()
    }

    #[test]
    fn naive_and_snaive() {
        assert_eq!(Naive.forecast(&[3.0, 1.0, 4.0], 3), vec![4.0; 3]);
        // Last season of [1..=6] with m=4 is [3,4,5,6]; horizon 6 wraps.
        let sn = SeasonalNaive { period: 4 };
        assert_eq!(
            sn.forecast(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 6),
            vec![3.0, 4.0, 5.0, 6.0, 3.0, 4.0]
        );
        // Shorter than a period -> naive.
        assert_eq!(sn.forecast(&[1.0, 2.0, 7.0], 2), vec![7.0, 7.0]);
        assert!(Naive.forecast(&[], 2).iter().all(|v| v.is_nan()));
        assert_eq!(Naive.forecast(&[], 2).len(), 2);
    }

    #[test]
    fn moving_average() {
        // mean(4,6,8) = 6
        assert_eq!(
            MovingAverage { window: 3 }.forecast(&[100.0, 4.0, 6.0, 8.0], 2),
            vec![6.0, 6.0]
        );
        // window larger than history -> mean of all = 2
        assert_eq!(
            MovingAverage { window: 10 }.forecast(&[1.0, 3.0], 1),
            vec![2.0]
        );
    }

    fn pattern(cycles: usize) -> Vec<f64> {
        // level 10 times indices [0.5, 1.5, 1.0, 1.0]
        (0..4 * cycles)
            .map(|t| 10.0 * [0.5, 1.5, 1.0, 1.0][t % 4])
            .collect()
    }

    #[test]
    fn seasonality_test_hand_case() {
        // pattern(5): mean 10, deviations [-5,5,0,0]; Σd² = 250.
        // r1 = -125/250 = -0.5, r2 = 0, r3 = -100/250 = -0.4, r4 = 200/250 = 0.8.
        // limit = 1.645*sqrt((1 + 2*(0.25+0+0.16))/20) = 0.4962 < 0.8 -> seasonal.
        assert!(seasonality_test(&pattern(5), 4));
        // n < 3m -> false
        assert!(!seasonality_test(&pattern(2), 4));
        // constant -> false; m < 2 -> false
        assert!(!seasonality_test(&[1.0; 40], 4));
        assert!(!seasonality_test(&pattern(5), 1));
        // R lag.max quirk: m=24 needs n >= 252 (floor(10*log10(251)) = 23).
        let daily: Vec<f64> = (0..251).map(|t| 10.0 + (t % 24) as f64).collect();
        assert!(!seasonality_test(&daily, 24));
        let daily: Vec<f64> = (0..252).map(|t| 10.0 + (t % 24) as f64).collect();
        assert!(seasonality_test(&daily, 24));
    }

    #[test]
    fn seasonality_test_white_noise() {
        // x = [3,1,4,1,5,9,2,6,5,3,5,8], m=4, n=12: mean 52/12 = 4.3333,
        // Σd² = 296 - 52²/12 = 70.667; Σ d_t d_{t-4} (t=4..11) = -22.444 ->
        // r4 = -0.3176. r1 = -0.0770, r2 = -0.0881, r3 = 0.2736 ->
        // limit = 1.645*sqrt((1+2*0.0885)/12) = 0.5152 > 0.3176 -> not seasonal.
        let x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0, 8.0];
        assert!(!seasonality_test(&x, 4));
        // Longer pseudo-noise is not seasonal either.
        assert!(!seasonality_test(&noise(200, 7), 12));
    }

    #[test]
    fn seasonality_test_boundary_pins_r_formula() {
        // x = [4,3,5,1,8,9,9,9,1,3,3,0], m=4, n=12, mean 55/12:
        // r1 = 0.32216, r2 = 0.12597, r3 = -0.12492, r4 = -0.55593.
        // R/M4 limit 1.645*sqrt((1+2*(r1²+r2²+r3²))/12) = 0.53526 < 0.55593 -> seasonal.
        // (Python port with unsquared r1 would give 0.62048 -> not seasonal;
        //  z = 1.96 would give 0.63776 -> not seasonal.)
        let x = [4.0, 3.0, 5.0, 1.0, 8.0, 9.0, 9.0, 9.0, 1.0, 3.0, 3.0, 0.0];
        assert!(seasonality_test(&x, 4));
    }

    #[test]
    fn naive2_exact_multiplicative_pattern() {
        // Ratios to the 2x4 MA are exactly the indices, deseasonalised series is
        // 10 everywhere; n = 20 so the next position is 0.
        let f = Naive2 { period: 4 }.forecast(&pattern(5), 6);
        assert_close(&f, &[5.0, 15.0, 10.0, 10.0, 5.0, 15.0], 1e-12);
        assert_close(
            &seasonal_indices(&pattern(5), 4).unwrap(),
            &[0.5, 1.5, 1.0, 1.0],
            1e-12,
        );
        // Not seasonal (period 1) -> naive.
        assert_eq!(
            Naive2 { period: 1 }.forecast(&pattern(5), 2),
            vec![10.0, 10.0]
        );
    }

    #[test]
    fn naive2_perturbed_last_value() {
        // pattern(5) with x_19 = 12 (position 3). Only trend_17 changes:
        // (0.5*10 + 5 + 15 + 10 + 0.5*12)/4 = 10.25, so the raw position-1 index is
        // (3*1.5 + 15/10.25)/4; raw indices for positions 0,2,3 stay 0.5, 1, 1.
        // Forecast = x_19 / s_3 * s_p = 12 * raw_p / raw_3 (normalisation cancels).
        let mut x = pattern(5);
        x[19] = 12.0;
        assert!(seasonality_test(&x, 4));
        let raw1 = (4.5 + 15.0 / 10.25) / 4.0; // 1.49085366
        let f = Naive2 { period: 4 }.forecast(&x, 5);
        assert_close(&f, &[6.0, 12.0 * raw1, 12.0, 12.0, 6.0], 1e-12);
    }

    #[test]
    fn seasonally_adjusted_wrapper() {
        let mut x = pattern(5);
        x[19] = 12.0;
        let n2 = Naive2 { period: 4 }.forecast(&x, 7);
        assert_eq!(
            SeasonallyAdjusted {
                inner: Naive,
                period: 4
            }
            .forecast(&x, 7),
            n2
        );
        let ses1 = SeasonallyAdjusted {
            inner: SimpleExpSmoothing { alpha: Some(1.0) },
            period: 4,
        };
        assert_close(&ses1.forecast(&x, 7), &n2, 1e-12);
        // Non-seasonal input: inner model on raw data.
        let w = SeasonallyAdjusted {
            inner: MovingAverage { window: 2 },
            period: 4,
        };
        assert_eq!(w.forecast(&[1.0, 2.0, 4.0], 2), vec![3.0, 3.0]);
    }

    #[test]
    fn seasonal_indices_odd_period() {
        // m=3, indices [0.5, 1.0, 1.5] (mean 1) at level 4, 3 cycles:
        // 3-term MA is 4 everywhere it exists -> exact indices.
        let x: Vec<f64> = (0..9).map(|t| 4.0 * [0.5, 1.0, 1.5][t % 3]).collect();
        assert_close(&seasonal_indices(&x, 3).unwrap(), &[0.5, 1.0, 1.5], 1e-12);
        // Zero data -> ratios undefined -> None.
        assert!(seasonal_indices(&[0.0; 9], 3).is_none());
    }

    #[test]
    fn ses_hand_values() {
        // alpha = 1 is naive.
        assert_eq!(
            SimpleExpSmoothing { alpha: Some(1.0) }.forecast(&[1.0, 5.0, 2.0], 2),
            vec![2.0, 2.0]
        );
        // alpha = 0.5 on [1,2,3]: 1 -> 1.5 -> 2.25.
        assert_close(
            &SimpleExpSmoothing { alpha: Some(0.5) }.forecast(&[1.0, 2.0, 3.0], 2),
            &[2.25, 2.25],
            1e-12,
        );
        // alpha = 0.1 on [10, 20]: 10 + 0.1*10 = 11.
        assert_close(
            &SimpleExpSmoothing { alpha: Some(0.1) }.forecast(&[10.0, 20.0], 1),
            &[11.0],
            1e-12,
        );
    }

    #[test]
    fn ses_fit_matches_brute_force() {
        // Random walk + noise; fitted SSE must match a 10^4-point grid minimum.
        let e = noise(300, 3);
        let mut x = vec![50.0];
        for t in 1..300 {
            let prev = x[t - 1];
            x.push(prev + e[t] + 0.8 * e[(t * 7) % 300]);
        }
        let a = fit_ses_alpha(&x);
        let fitted = ses_run(&x, a).0;
        let brute = (0..=10_000)
            .map(|k| ses_run(&x, k as f64 / 10_000.0).0)
            .fold(f64::INFINITY, f64::min);
        assert!(
            fitted <= brute * (1.0 + 1e-6),
            "fitted {fitted} brute {brute} alpha {a}"
        );
        assert!(a > 0.0 && a <= 1.0);
    }

    #[test]
    fn holt_linear_series() {
        // x_t = 2 + 3t, t = 0..9: the line is reproduced for any parameters.
        let x: Vec<f64> = (0..10).map(|t| 2.0 + 3.0 * t as f64).collect();
        let want = [32.0, 35.0, 38.0];
        assert_close(
            &Holt {
                alpha: None,
                beta: None,
                damped: None,
            }
            .forecast(&x, 3),
            &want,
            1e-9,
        );
        assert_close(
            &Holt {
                alpha: Some(0.2),
                beta: Some(0.1),
                damped: None,
            }
            .forecast(&x, 3),
            &want,
            1e-9,
        );
        // Two points -> still the line through them.
        assert_close(
            &Holt {
                alpha: None,
                beta: None,
                damped: None,
            }
            .forecast(&[1.0, 2.0], 2),
            &[3.0, 4.0],
            1e-9,
        );
        assert_eq!(
            Holt {
                alpha: None,
                beta: None,
                damped: None
            }
            .forecast(&[7.0], 2),
            vec![7.0, 7.0]
        );
    }

    #[test]
    fn holt_hand_values() {
        // [0,1,3], α = β = 0.5: l0 = 0, b0 = 1.
        // t=1: ŷ = 1, e = 0 -> l = 1, b = 1.
        // t=2: ŷ = 2, e = 1 -> l = 2.5, b = 0.5*(2.5-1) + 0.5*1 = 1.25.
        // Forecast 2.5 + 1.25h = [3.75, 5.0].
        let h = Holt {
            alpha: Some(0.5),
            beta: Some(0.5),
            damped: None,
        };
        assert_close(&h.forecast(&[0.0, 1.0, 3.0], 2), &[3.75, 5.0], 1e-12);
    }

    #[test]
    fn damped_flattens() {
        // alpha = beta = 1: l_t = x_t, b_t = x_t - x_{t-1} = 1 at the end.
        // phi = 0.5: 3 + 0.5 = 3.5, + 0.25 = 3.75, + 0.125 = 3.875, limit 4.
        let x = [0.0, 1.0, 2.0, 3.0];
        let d = Holt {
            alpha: Some(1.0),
            beta: Some(1.0),
            damped: Some(Damping::Fixed(0.5)),
        };
        assert_close(&d.forecast(&x, 3), &[3.5, 3.75, 3.875], 1e-12);
        // Fitted damped on a line: increments shrink (phi <= 0.98 < 1).
        let line: Vec<f64> = (0..30).map(|t| t as f64).collect();
        let f = Holt {
            alpha: None,
            beta: None,
            damped: Some(Damping::Fitted),
        }
        .forecast(&line, 40);
        let steps: Vec<f64> = f.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(steps.windows(2).all(|w| w[1] < w[0]));
        assert!(f[39] < 29.0 + 40.0 - 5.0);
        assert_eq!(d.name(), "damped");
    }

    #[test]
    fn holt_fit_not_worse_than_grid() {
        let e = noise(200, 11);
        let x: Vec<f64> = (0..200)
            .map(|t| 100.0 + 0.5 * t as f64 + 5.0 * e[t] + 3.0 * (t as f64 / 15.0).sin())
            .collect();
        let sse = |p: &[f64]| holt_run(&x, p[0], p[1], p[2]).0;
        let p = fit(
            &[None, None, Some(1.0)],
            &[1e-4, 0.0, 0.0],
            &[1.0, 1.0, 1.0],
            &[0.3, 0.05, 0.95],
            &sse,
            300,
        );
        let fitted = sse(&p);
        let mut grid = f64::INFINITY;
        for i in 1..=20 {
            for j in 0..=20 {
                grid = grid.min(sse(&[i as f64 / 20.0, j as f64 / 20.0, 1.0]));
            }
        }
        assert!(
            fitted <= grid * (1.0 + 1e-9),
            "fitted {fitted} grid {grid} p {p:?}"
        );
    }

    fn trend_season(n: usize) -> Vec<f64> {
        // 5 + 0.5 t + s_{t mod 4}, s = [-3, 2, 0, 1] (sum 0).
        (0..n)
            .map(|t| 5.0 + 0.5 * t as f64 + [-3.0, 2.0, 0.0, 1.0][t % 4])
            .collect()
    }

    #[test]
    fn hw_additive_exact() {
        // History t = 0..15, forecast t = 16..21 continues the pattern exactly.
        let x = trend_season(16);
        let want = &trend_season(22)[16..];
        let fitted = HoltWinters {
            period: 4,
            seasonal: Seasonal::Additive,
            params: None,
        };
        assert_close(&fitted.forecast(&x, 6), want, 1e-6);
        let fixed = HoltWinters {
            period: 4,
            seasonal: Seasonal::Additive,
            params: Some((0.4, 0.2, 0.3)),
        };
        assert_close(&fixed.forecast(&x, 6), want, 1e-9);
    }

    #[test]
    fn hw_multiplicative_exact_and_fallbacks() {
        let hw = HoltWinters {
            period: 4,
            seasonal: Seasonal::Multiplicative,
            params: None,
        };
        assert_close(
            &hw.forecast(&pattern(5), 5),
            &[5.0, 15.0, 10.0, 10.0, 5.0],
            1e-6,
        );
        // Non-positive data -> additive.
        let mut x = trend_season(16);
        x[2] = 0.0;
        let add = HoltWinters {
            period: 4,
            seasonal: Seasonal::Additive,
            params: Some((0.3, 0.1, 0.2)),
        };
        let mul = HoltWinters {
            period: 4,
            seasonal: Seasonal::Multiplicative,
            params: Some((0.3, 0.1, 0.2)),
        };
        assert_eq!(mul.forecast(&x, 4), add.forecast(&x, 4));
        // Fewer than two seasons -> fitted SES.
        let short = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(
            hw.forecast(&short, 3),
            SimpleExpSmoothing { alpha: None }.forecast(&short, 3)
        );
    }

    #[test]
    fn hw_fit_not_worse_than_grid() {
        let e = noise(240, 5);
        let x: Vec<f64> = (0..240)
            .map(|t| {
                50.0 + 0.1 * t as f64
                    + 8.0 * (2.0 * std::f64::consts::PI * t as f64 / 24.0).sin()
                    + 3.0 * e[t]
            })
            .collect();
        let init = hw_init(&x, 24, false).unwrap();
        let sse = |p: &[f64]| hw_run(&x, 24, false, &init, p).0;
        let p = fit(
            &[None, None, None],
            &[1e-4, 0.0, 0.0],
            &[1.0; 3],
            &[0.3, 0.05, 0.1],
            &sse,
            300,
        );
        let fitted = sse(&p);
        let mut grid = f64::INFINITY;
        for i in 1..=10 {
            for j in 0..=10 {
                for k in 0..=10 {
                    grid = grid.min(sse(&[i as f64 / 10.0, j as f64 / 10.0, k as f64 / 10.0]));
                }
            }
        }
        assert!(
            fitted <= grid * (1.0 + 1e-9),
            "fitted {fitted} grid {grid} p {p:?}"
        );
    }

    #[test]
    fn every_forecaster_returns_horizon_finite_values() {
        let series: Vec<Vec<f64>> = vec![
            vec![1.0],
            vec![2.0, 3.0],
            (0..30).map(|t| (t % 5) as f64).collect(), // contains zeros
            noise(100, 1).iter().map(|v| v * 1e6).collect(), // mixed signs
            (0..300)
                .map(|t| 1.0 + (t % 24) as f64 + 1e-3 * t as f64)
                .collect(),
            vec![0.0; 60],
        ];
        for name in ALL {
            let f = by_name(name, 24).unwrap();
            assert_eq!(f.name(), *name);
            assert_eq!(f.min_history(), 1);
            for s in &series {
                let out = f.forecast(s, 48);
                assert_eq!(out.len(), 48, "{name}");
                assert!(out.iter().all(|v| v.is_finite()), "{name} on {s:?}");
            }
            assert!(f.forecast(&[1.0, 2.0], 0).is_empty());
            assert!(f.forecast(&[], 3).iter().all(|v| v.is_nan()));
        }
        assert!(by_name("arima", 24).is_none());
    }
}
