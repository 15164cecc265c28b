//! The ARIMA family as baselines: automatic seasonal ARIMA (`arima`),
//! dynamic harmonic regression with ARIMA errors (`regarima`) and seasonal
//! ARIMA with calendar covariates (`arimax`), plus the general API under
//! them: fixed-order fits ([`fit_arima`]), the automatic search
//! ([`auto_arima`]) and regression with ARIMA errors on any regressor
//! columns ([`RegArima`]).
//!
//! Method (R's `forecast::auto.arima` / statsforecast's `AutoARIMA`, Hyndman
//! & Khandakar 2008): `D ∈ {0, 1}` by the seasonal-strength test (STL,
//! strength > 0.64), `d ≤ 2` by repeated KPSS tests at 5%, then a stepwise
//! search over `p, q ≤ 5`, `P, Q ≤ 2` (at most 94 models) on AICc, with a
//! mean (`d + D = 0`) or drift (`d + D = 1`) term toggled. Long series
//! (`n > 150`) and `m > 12` use R's approximation: the search ranks models by
//! their conditional-sum-of-squares (CSS) fit and the best admissible one is
//! refitted by CSS-ML (CSS estimates as the start of exact maximum
//! likelihood). Fits follow R's `stats::arima`: R's BFGS (`optim`), AR parts
//! in R's PACF parametrisation during ML, MA parts made invertible
//! (`maInvert`), models with AR or MA roots inside `|z| = 1.01` rejected.
//! Forecasts continue the Kalman filter's final state.
//!
//! Where this differs from R / statsforecast (all deliberate):
//! * The exact likelihood is that of the differenced errors, evaluated by a
//!   Kalman filter with the Chandrasekhar recursions (O(r) per step for a
//!   state of size `r = max(p + mP, q + mQ + 1)`); R filters the
//!   undifferenced series with a diffuse prior (`kappa = 1e6`), which tends
//!   to the same value, and statsmodels' SARIMAX (exact diffuse) computes
//!   this one. The stationary initial covariance comes from the ARMA
//!   autocovariances in O(r²) instead of Gardner's O(r⁴) algorithm.
//! * Regression coefficients (mean, drift, user regressors) are profiled
//!   out by GLS inside the likelihood instead of being searched by the
//!   optimiser; the optimum is the same.
//! * Gradients are R's central differences (statsforecast uses scipy's BFGS
//!   with forward differences), so estimates agree to optimiser tolerance,
//!   not bit for bit.
//! * R's rules where statsforecast's port differs: the AR(1)/MA(1) root
//!   check applies (statsforecast skips it when only the first coefficient
//!   is non-zero), `maInvert` inverts roots inside the unit circle
//!   (statsforecast's returns early), KPSS re-tests the differenced series
//!   without dropping a value, a regressor made constant by differencing
//!   lowers `D`. Not done: R's Hessian-based rejection (`checkarima`), which
//!   statsforecast's BFGS never triggers either; missing values (histories
//!   here are complete).
//!
//! Invariants (those of [`Baseline`](super::Baseline)): pure functions of
//! the history; exactly `horizon` values, all finite for a finite non-empty
//! history — any failure (too short, no admissible model, non-finite
//! forecast) falls back to the naive forecast. Seasonal positions and
//! Fourier terms count time from `history[0]`. Cost: one CSS fit per
//! searched model (O(n·k) per evaluation, `k` non-zero lags) and one
//! CSS-ML fit (O(n·r) per evaluation), each BFGS run capped at 100
//! iterations; the search at 94 models.

mod auto;
mod fit;
mod kalman;
mod optim;
mod poly;
mod regression;
mod unitroot;

pub use auto::{auto_arima, AutoFit, AutoOptions, Ic, RootCheck, Tried};
pub use fit::{fit as fit_arima, ArimaFit, Constant, Method};
pub use regression::{calendar, fourier, harmonic_regression, ErrorModel, RegArima, RegArimaFit};
pub use unitroot::{kpss_stat, ndiffs, nsdiffs, seasonal_strength, stl};

use super::{finite_or_naive, Baseline, Naive};

/// Orders of a seasonal ARIMA `(p, d, q)(P, D, Q)_m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Order {
    pub p: usize,
    pub d: usize,
    pub q: usize,
    /// Seasonal AR order `P`.
    pub sp: usize,
    /// Seasonal differences `D`.
    pub sd: usize,
    /// Seasonal MA order `Q`.
    pub sq: usize,
    /// Seasonal period `m` (1 when non-seasonal).
    pub m: usize,
}

impl Default for Order {
    fn default() -> Self {
        Order {
            p: 0,
            d: 0,
            q: 0,
            sp: 0,
            sd: 0,
            sq: 0,
            m: 1,
        }
    }
}

impl Order {
    /// Non-seasonal `(p, d, q)`.
    pub fn new(p: usize, d: usize, q: usize) -> Self {
        Order {
            p,
            d,
            q,
            ..Order::default()
        }
    }
    /// Seasonal `(p, d, q)(P, D, Q)_m`.
    pub fn seasonal(
        p: usize,
        d: usize,
        q: usize,
        sp: usize,
        sd: usize,
        sq: usize,
        m: usize,
    ) -> Self {
        Order {
            p,
            d,
            q,
            sp,
            sd,
            sq,
            m,
        }
    }
}

impl std::fmt::Display for Order {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({},{},{})", self.p, self.d, self.q)?;
        if self.sp + self.sd + self.sq > 0 {
            write!(f, "({},{},{})[{}]", self.sp, self.sd, self.sq, self.m)?;
        }
        Ok(())
    }
}

/// Why a fit or search failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArimaError {
    #[error("too few observations for the model")]
    TooShort,
    #[error("non-finite value in the series or the regressors")]
    NonFinite,
    #[error("regressor length {got}, expected {expected}")]
    XregShape { expected: usize, got: usize },
    #[error("regressors are rank deficient")]
    RankDeficient,
    #[error("non-stationary AR part from CSS")]
    NonStationary,
    #[error("optimisation met non-finite values")]
    Optimisation,
    #[error("no suitable ARIMA model found")]
    NoModel,
}

/// `arima`: automatic seasonal ARIMA with `m = period` ([`auto_arima`] with
/// default options).
#[derive(Debug, Clone, Copy)]
pub struct AutoArima {
    /// Seasonal period `m` (1: non-seasonal search).
    pub period: usize,
}

impl Baseline for AutoArima {
    fn name(&self) -> &str {
        "arima"
    }
    fn forecast(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        let Some(&last) = history.last() else {
            return vec![f64::NAN; horizon];
        };
        let opts = AutoOptions {
            period: self.period.max(1),
            ..AutoOptions::default()
        };
        match auto_arima(history, &[], &opts).and_then(|f| f.forecast(horizon, &[])) {
            Ok(out) => finite_or_naive(out, last),
            Err(_) => Naive.forecast(history, horizon),
        }
    }
}

/// `regarima`: dynamic harmonic regression ([`harmonic_regression`]):
/// mean or drift plus `K ≤ k_max` Fourier harmonics of the season, chosen by
/// AICc, with non-seasonal ARIMA errors.
#[derive(Debug, Clone, Copy)]
pub struct HarmonicArima {
    /// Seasonal period of the harmonics.
    pub period: usize,
    /// Most harmonics tried (capped at `period / 2`).
    pub k_max: usize,
}

impl Baseline for HarmonicArima {
    fn name(&self) -> &str {
        "regarima"
    }
    fn forecast(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        let Some(&last) = history.last() else {
            return vec![f64::NAN; horizon];
        };
        match harmonic_regression(history, self.period, self.k_max, horizon) {
            Ok(out) => finite_or_naive(out, last),
            Err(_) => Naive.forecast(history, horizon),
        }
    }
}

/// `arimax`: automatic seasonal ARIMA errors (as `arima`) with calendar
/// covariates ([`calendar`]): `k_day` daily harmonics (period = the season),
/// plus `k_week` weekly harmonics (period 7 × season) when the history
/// holds at least two weeks. Histories shorter than two seasons, or a
/// season below 2, run plain `arima`. As in R, seasonal differencing is
/// dropped when it would make the daily harmonics constant, so the daily
/// pattern is the deterministic Fourier part plus seasonal ARMA terms.
#[derive(Debug, Clone, Copy)]
pub struct Arimax {
    /// Steps per day (the season).
    pub period: usize,
    /// Daily harmonics (capped at `period / 2`).
    pub k_day: usize,
    /// Weekly harmonics.
    pub k_week: usize,
}

impl Arimax {
    /// Whether a history of `n` steps gets the weekly harmonics.
    pub fn weekly(&self, n: usize) -> bool {
        self.k_week > 0 && n >= 2 * 7 * self.period
    }
}

impl Baseline for Arimax {
    fn name(&self) -> &str {
        "arimax"
    }
    fn forecast(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        let Some(&last) = history.last() else {
            return vec![f64::NAN; horizon];
        };
        let n = history.len();
        let m = self.period.max(1);
        if m < 2 || n < 2 * m || self.k_day == 0 {
            return AutoArima { period: m }.forecast(history, horizon);
        }
        let weekly = self.weekly(n);
        let past = calendar(0, n, m, self.k_day, weekly, self.k_week);
        let future = calendar(n, horizon, m, self.k_day, weekly, self.k_week);
        let model = RegArima {
            errors: ErrorModel::Auto(AutoOptions {
                period: m,
                ..AutoOptions::default()
            }),
        };
        match model
            .fit(history, &past)
            .and_then(|f| f.forecast(horizon, &future))
        {
            Ok(out) => finite_or_naive(out, last),
            Err(_) => Naive.forecast(history, horizon),
        }
    }
}

#[cfg(test)]
mod tests;
