//! Regressors a forecaster can derive from the history alone (Fourier terms
//! of a period, counted from the first observation), the general
//! regression-with-ARIMA-errors API ([`RegArima`]), and the two Baselines
//! built on it: dynamic harmonic regression (`regarima`) and ARIMA with
//! calendar covariates (`arimax`).

use super::auto::{auto_arima, AutoFit, AutoOptions};
use super::fit::{fit, ArimaFit, Method};
use super::unitroot::ndiffs;
use super::{ArimaError, Order};

/// Fourier terms of `period` for times `start..start + len`: columns
/// `sin(2πkt/period), cos(2πkt/period)` for `k = 1..=k_max` (R's
/// `forecast::fourier` order); the sine of `k = period/2` is identically
/// zero and left out.
pub fn fourier(start: usize, len: usize, period: f64, k_max: usize) -> Vec<Vec<f64>> {
    let mut cols = Vec::with_capacity(2 * k_max);
    for k in 1..=k_max {
        let w = 2.0 * std::f64::consts::PI * k as f64 / period;
        let col = |f: fn(f64) -> f64| {
            (start..start + len)
                .map(|t| f(w * t as f64))
                .collect::<Vec<f64>>()
        };
        if (2 * k) as f64 != period {
            cols.push(col(f64::sin));
        }
        cols.push(col(f64::cos));
    }
    cols
}

/// How [`RegArima`] chooses the ARIMA part of the errors.
#[derive(Debug, Clone)]
pub enum ErrorModel {
    /// Hyndman–Khandakar search ([`auto_arima`]).
    Auto(AutoOptions),
    /// A fixed order, fitted by `method`; `constant` adds an intercept
    /// (`d + D = 0`) or drift (`d + D = 1`).
    Fixed {
        order: Order,
        constant: bool,
        method: Method,
    },
}

/// Regression with ARIMA errors, `y_t = x_t'β + u_t`, `u_t ~ ARIMA`, fitted
/// jointly by exact likelihood (β by GLS inside the likelihood). The
/// general entry point for covariates: pass any regressor columns (calendar,
/// holidays, other value fields) to [`RegArima::fit`] and their future values
/// to [`RegArimaFit::forecast`].
#[derive(Debug, Clone)]
pub struct RegArima {
    /// The ARIMA part.
    pub errors: ErrorModel,
}

/// A fitted [`RegArima`].
#[derive(Debug, Clone)]
pub enum RegArimaFit {
    /// From an automatic search.
    Auto(AutoFit),
    /// From a fixed order.
    Fixed(ArimaFit),
}

impl RegArima {
    /// Fits `y` on regressor columns `xreg` (each `y.len()` values).
    pub fn fit(&self, y: &[f64], xreg: &[Vec<f64>]) -> Result<RegArimaFit, ArimaError> {
        match &self.errors {
            ErrorModel::Auto(opts) => auto_arima(y, xreg, opts).map(RegArimaFit::Auto),
            ErrorModel::Fixed {
                order,
                constant,
                method,
            } => fit(y, xreg, *order, *constant, *method, None).map(RegArimaFit::Fixed),
        }
    }
}

impl RegArimaFit {
    /// The fitted ARIMA.
    pub fn arima(&self) -> &ArimaFit {
        match self {
            RegArimaFit::Auto(a) => &a.fit,
            RegArimaFit::Fixed(f) => f,
        }
    }
    /// Point forecasts for `h` steps given the regressors' future values
    /// (one column per regressor of the fit, at least `h` values each).
    pub fn forecast(&self, h: usize, xreg_future: &[Vec<f64>]) -> Result<Vec<f64>, ArimaError> {
        match self {
            RegArimaFit::Auto(a) => a.forecast(h, xreg_future),
            RegArimaFit::Fixed(f) => f.forecast(h, xreg_future),
        }
    }
    /// Criterion used to compare fits (ML AICc; NaN for the degenerate
    /// deterministic fits).
    pub fn aicc(&self) -> f64 {
        self.arima().aicc()
    }
}

/// Dynamic harmonic regression (`regarima`): `y_t = c + Fourier_K(t) β + u_t`
/// with non-seasonal ARIMA errors chosen by [`auto_arima`] (a mean when
/// `d = 0`, a drift when `d = 1`), `K = 0..=k_max` harmonics of `period`
/// chosen by the ML AICc. `d` is tested once (KPSS on the residuals of the
/// regression on all `k_max` harmonics) and shared by every `K`, so the AICc
/// values compare fits of the same differenced data. Harmonics need two full
/// periods of history; shorter histories use `K = 0`. Cost bound: `K` grows
/// from 0 and the search stops once two consecutive `K` fail to improve the
/// best AICc (each `K` is a full search whose GLS step costs O(n·K²) per
/// likelihood evaluation).
pub fn harmonic_regression(
    y: &[f64],
    period: usize,
    k_max: usize,
    h: usize,
) -> Result<Vec<f64>, ArimaError> {
    let n = y.len();
    let k_max = if period >= 2 && n >= 2 * period {
        k_max.min(period / 2)
    } else {
        0
    };
    let d = {
        let cols = fourier(0, n, period as f64, k_max);
        let resid = if cols.is_empty() {
            y.to_vec()
        } else {
            let mut all = vec![vec![1.0; n]];
            all.extend(cols.iter().cloned());
            let (beta, _) = super::fit::lstsq(y, &all).ok_or(ArimaError::RankDeficient)?;
            (0..n)
                .map(|t| y[t] - all.iter().zip(&beta).map(|(c, b)| b * c[t]).sum::<f64>())
                .collect()
        };
        ndiffs(&resid, 2)
    };
    let opts = AutoOptions {
        period: 1,
        seasonal: false,
        d: Some(d),
        ..AutoOptions::default()
    };
    let mut best: Option<(f64, Vec<f64>)> = None;
    let mut last_err = ArimaError::NoModel;
    let mut worse = 0;
    for k in 0..=k_max {
        let cols = fourier(0, n, period as f64, k);
        match auto_arima(y, &cols, &opts) {
            Ok(f) => {
                let ic = if f.ic.is_nan() {
                    f64::NEG_INFINITY
                } else {
                    f.ic
                };
                if best.as_ref().is_none_or(|(b, _)| ic < *b) {
                    let fut = fourier(n, h, period as f64, k);
                    let fc = f.forecast(h, &fut)?;
                    best = Some((ic, fc));
                    worse = 0;
                } else {
                    worse += 1;
                }
            }
            Err(e) => {
                last_err = e;
                worse += 1;
            }
        }
        if worse >= 2 {
            break;
        }
    }
    best.map(|(_, f)| f).ok_or(last_err)
}

/// Calendar covariates of `arimax` for times `start..start + len` of a
/// series with a daily season of `period` steps: `k_day` daily harmonics,
/// plus `k_week` weekly ones (period `7·period`) when `weekly`.
pub fn calendar(
    start: usize,
    len: usize,
    period: usize,
    k_day: usize,
    weekly: bool,
    k_week: usize,
) -> Vec<Vec<f64>> {
    let mut cols = fourier(start, len, period as f64, k_day.min(period / 2));
    if weekly {
        cols.extend(fourier(start, len, 7.0 * period as f64, k_week));
    }
    cols
}
