//! Automatic order selection: the Hyndman–Khandakar stepwise search of R's
//! `forecast::auto.arima`, ported from statsforecast's `auto_arima_f`
//! (stepwise branch) with R's choices where the two differ (see the module
//! docs of `arima`).

use super::fit::{fit, ArimaFit, Method};
use super::poly;
use super::unitroot::{is_constant, ndiffs, nsdiffs};
use super::{ArimaError, Order};

/// Information criterion that ranks models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ic {
    Aic,
    Aicc,
    Bic,
}

/// Which polynomial the admissibility rule ("no root inside `|z| = 1.01`")
/// examines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootCheck {
    /// Each factor on its own: `φ(z)`, `Φ(w)`, `θ(z)`, `Θ(w)` with `w = z^m`.
    /// A seasonal coefficient is then admissible up to `|Φ|, |Θ| < 1/1.01`,
    /// as a non-seasonal one. Not the default: with `D = 1` the CSS search
    /// then favours strong seasonal MA terms whose ML estimates go to the
    /// invertibility boundary and are rejected at the refit (M4 H150: seven
    /// CSS-ML refits rejected, 6.6 s, a worse final AICc than `Full`).
    Factors,
    /// The expanded products `φ(z)Φ(z^m)` and `θ(z)Θ(z^m)` (R's
    /// `auto.arima`): a seasonal root `w` becomes `m` roots of modulus
    /// `|w|^{1/m}`, so with `m = 24` any `|Θ| > 1.01^{−24} ≈ 0.79` is
    /// rejected, which rules out the strong seasonal MA terms typical of
    /// hourly data. The default.
    Full,
}

/// Settings of [`auto_arima`]; defaults are statsforecast's / R's.
#[derive(Debug, Clone)]
pub struct AutoOptions {
    /// Seasonal period `m` (1 = non-seasonal).
    pub period: usize,
    /// Search seasonal orders (`P, D, Q`); false fixes them at 0.
    pub seasonal: bool,
    /// Fixed `d` (`None`: KPSS test).
    pub d: Option<usize>,
    /// Fixed `D` (`None`: seasonal-strength test).
    pub sd: Option<usize>,
    pub max_p: usize,
    pub max_q: usize,
    pub max_sp: usize,
    pub max_sq: usize,
    pub max_d: usize,
    pub max_sd: usize,
    pub start_p: usize,
    pub start_q: usize,
    pub start_sp: usize,
    pub start_sq: usize,
    /// Allow a drift term when `d + D = 1`.
    pub allow_drift: bool,
    /// Allow a mean when `d + D = 0`.
    pub allow_mean: bool,
    /// Most models the stepwise search fits (R's `nmodels`, 94).
    pub nmodels: usize,
    /// Search with CSS and refit the best by CSS-ML (`None`: R's rule,
    /// `n > 150 || m > 12`).
    pub approximation: Option<bool>,
    /// Most CSS-ML refits tried, best CSS model first, after an approximate
    /// search (R tries every searched model until one is admissible).
    pub max_refits: usize,
    /// Ranking criterion (AICc).
    pub ic: Ic,
    /// Admissibility rule for roots.
    pub root_check: RootCheck,
}

impl Default for AutoOptions {
    fn default() -> Self {
        AutoOptions {
            period: 1,
            seasonal: true,
            d: None,
            sd: None,
            max_p: 5,
            max_q: 5,
            max_sp: 2,
            max_sq: 2,
            max_d: 2,
            max_sd: 1,
            start_p: 2,
            start_q: 2,
            start_sp: 1,
            start_sq: 1,
            allow_drift: true,
            allow_mean: true,
            nmodels: 94,
            approximation: None,
            max_refits: usize::MAX,
            ic: Ic::Aicc,
            root_check: RootCheck::Full,
        }
    }
}

/// One model the search fitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Tried {
    pub order: Order,
    pub constant: bool,
    /// Criterion (CSS-based during an approximate search); ∞ when the fit
    /// failed or was inadmissible.
    pub ic: f64,
}

/// Result of [`auto_arima`].
#[derive(Debug, Clone)]
pub struct AutoFit {
    /// The selected model, fitted by CSS-ML (or CSS when no refit worked).
    pub fit: ArimaFit,
    /// Whether the model has a mean / drift term.
    pub constant: bool,
    /// Which of the given regressor columns the model uses (constant
    /// columns are dropped).
    pub xreg_used: Vec<bool>,
    /// Every model of the search in the order fitted.
    pub tried: Vec<Tried>,
    /// The selected model's criterion (ML-based).
    pub ic: f64,
}

impl AutoFit {
    /// Point forecasts; `xreg_future` has one column per regressor given to
    /// [`auto_arima`] (unused ones are skipped).
    pub fn forecast(&self, h: usize, xreg_future: &[Vec<f64>]) -> Result<Vec<f64>, ArimaError> {
        if xreg_future.len() != self.xreg_used.len() {
            return Err(ArimaError::XregShape {
                expected: self.xreg_used.len(),
                got: xreg_future.len(),
            });
        }
        let cols: Vec<Vec<f64>> = xreg_future
            .iter()
            .zip(&self.xreg_used)
            .filter(|(_, &u)| u)
            .map(|(c, _)| c.clone())
            .collect();
        self.fit.forecast(h, &cols)
    }
}

/// Whether the fit's AR and MA roots lie outside `|z| = 1.01` under `rule`.
fn admissible(f: &ArimaFit, rule: RootCheck) -> (bool, bool) {
    let neg = |v: &[f64]| v.iter().map(|x| -x).collect::<Vec<f64>>();
    match rule {
        RootCheck::Full => (
            poly::roots_outside(f.phi(), 1.01),
            poly::roots_outside(&neg(f.theta()), 1.01),
        ),
        RootCheck::Factors => {
            let o = &f.order;
            let c = &f.coef;
            let (ar, rest) = c.split_at(o.p);
            let (ma, rest) = rest.split_at(o.q);
            let (sar, sma) = rest.split_at(o.sp);
            (
                poly::roots_outside(ar, 1.01) && poly::roots_outside(sar, 1.01),
                poly::roots_outside(&neg(ma), 1.01) && poly::roots_outside(&neg(sma), 1.01),
            )
        }
    }
}

/// The criterion of a fit as R's `myarima` computes it (CSS: from the CSS
/// variance plus `offset`), with R's admissibility rule: AR and MA roots
/// must lie outside `|z| = 1.01` (see [`RootCheck`]).
fn criterion(f: &ArimaFit, ic: Ic, offset: f64, n: usize, rule: RootCheck) -> f64 {
    let o = &f.order;
    let nstar = (n - o.d - o.sd * o.m.max(1)) as f64;
    let npar = f.npar as f64;
    let aic = if f.method == Method::Css {
        if f.sigma2 <= 0.0 {
            f64::NEG_INFINITY
        } else {
            offset + nstar * f.sigma2.ln() + 2.0 * npar
        }
    } else {
        f.aic
    };
    if aic.is_nan() {
        return f64::INFINITY;
    }
    let value = match ic {
        Ic::Aic => aic,
        Ic::Bic => aic + npar * (nstar.ln() - 2.0),
        Ic::Aicc => {
            let den = nstar - npar - 1.0;
            if den != 0.0 {
                aic + 2.0 * npar * (npar + 1.0) / den
            } else {
                f64::INFINITY
            }
        }
    };
    let (ar_ok, ma_ok) = admissible(f, rule);
    if !ar_ok || !ma_ok {
        return f64::INFINITY;
    }
    if value.is_nan() {
        f64::INFINITY
    } else {
        value
    }
}

/// Search state shared by the steps of [`auto_arima`].
struct Search<'a> {
    x: &'a [f64],
    xreg: &'a [Vec<f64>],
    ic: Ic,
    offset: f64,
    approximation: bool,
    rule: RootCheck,
    tried: Vec<Tried>,
}

impl Search<'_> {
    /// R's `myarima`: fits and scores one model (∞ when it fails).
    fn try_fit(&self, o: Order, constant: bool, approximation: bool) -> (f64, Option<ArimaFit>) {
        let method = if approximation {
            Method::Css
        } else {
            Method::CssMl
        };
        match fit(self.x, self.xreg, o, constant, method, None) {
            Ok(f) => {
                let v = criterion(&f, self.ic, self.offset, self.x.len(), self.rule);
                (v, Some(f))
            }
            Err(_) => (f64::INFINITY, None),
        }
    }

    fn seen(&self, o: &Order, constant: bool) -> bool {
        self.tried
            .iter()
            .any(|t| t.order == *o && t.constant == constant)
    }

    /// Fits a model of the stepwise search and records it.
    fn step(&mut self, o: Order, constant: bool) -> (f64, Option<ArimaFit>) {
        let (v, f) = self.try_fit(o, constant, self.approximation);
        self.tried.push(Tried {
            order: o,
            constant,
            ic: v,
        });
        (v, f)
    }
}

/// Fits a model with no ARMA parameters (the degenerate cases of R's
/// `auto.arima`: constant or exactly polynomial data).
fn deterministic(
    x: &[f64],
    xreg: &[Vec<f64>],
    o: Order,
    constant: bool,
) -> Result<ArimaFit, ArimaError> {
    fit(x, xreg, o, constant, Method::Css, Some(&[]))
}

/// Automatic seasonal ARIMA (Hyndman & Khandakar 2008, stepwise) for `x`
/// with optional regressor columns `xreg` (regression with ARIMA errors).
///
/// Steps: `D` by the seasonal-strength test and `d` by KPSS on the
/// regression residuals (`D = 0` when the series is at most `2m` long or
/// seasonal differencing would make a regressor constant, likewise for
/// `d`); then the stepwise neighbourhood search from `(2,d,2)(1,D,1)`,
/// `(0,d,0)(0,D,0)`, `(1,d,0)(1,D,0)`, `(0,d,1)(0,D,1)` and the constant
/// toggle, on AICc; with the approximation (long or `m > 12` series) models
/// are ranked by their CSS fit and the best admissible one is refitted by
/// CSS-ML.
pub fn auto_arima(x: &[f64], xreg: &[Vec<f64>], opts: &AutoOptions) -> Result<AutoFit, ArimaError> {
    let n = x.len();
    if n == 0 {
        return Err(ArimaError::TooShort);
    }
    if !x.iter().all(|v| v.is_finite()) {
        return Err(ArimaError::NonFinite);
    }
    for c in xreg {
        if c.len() != n {
            return Err(ArimaError::XregShape {
                expected: n,
                got: c.len(),
            });
        }
    }
    let mut m = if opts.seasonal { opts.period.max(1) } else { 1 };
    // Regressors that vary; constant columns are dropped (R: rank).
    let xreg_used: Vec<bool> = xreg.iter().map(|c| !is_constant(c)).collect();
    let xr: Vec<Vec<f64>> = xreg
        .iter()
        .zip(&xreg_used)
        .filter(|(_, &u)| u)
        .map(|(c, _)| c.clone())
        .collect();
    if is_constant(x) {
        let o = Order::default();
        let f = deterministic(x, &[], o, opts.allow_mean)?;
        return Ok(AutoFit {
            ic: f64::NAN,
            fit: f,
            constant: opts.allow_mean,
            xreg_used: vec![false; xreg.len()],
            tried: Vec::new(),
        });
    }
    let mut max_p = opts.max_p.min(n / 3);
    let mut max_q = opts.max_q.min(n / 3);
    let mut max_sp = opts.max_sp.min(n / 3 / m);
    let mut max_sq = opts.max_sq.min(n / 3 / m);
    let ic = if n <= 3 { Ic::Aic } else { opts.ic };
    // Residuals of the regression for the unit-root tests.
    let xx: Vec<f64> = if xr.is_empty() {
        x.to_vec()
    } else {
        let mut cols = vec![vec![1.0; n]];
        cols.extend(xr.iter().cloned());
        let (beta, _) = super::fit::lstsq(x, &cols).ok_or(ArimaError::RankDeficient)?;
        (0..n)
            .map(|t| x[t] - cols.iter().zip(&beta).map(|(c, b)| b * c[t]).sum::<f64>())
            .collect()
    };
    let mut sd = if m == 1 {
        max_sp = 0;
        max_sq = 0;
        0
    } else if let Some(v) = opts.sd {
        v
    } else if xx.len() <= 2 * m {
        0
    } else {
        let mut v = nsdiffs(&xx, m).min(opts.max_sd);
        if v > 0
            && xr
                .iter()
                .any(|c| is_constant(&poly::difference(c, 0, v, m)))
        {
            v -= 1;
        }
        if v > 0 && poly::difference(&xx, 0, v, m).is_empty() {
            v -= 1;
        }
        v
    };
    if m == 1 {
        sd = 0;
    }
    let dx = poly::difference(&xx, 0, sd, m);
    let d = match opts.d {
        Some(v) => v,
        None => {
            let mut v = ndiffs(&dx, opts.max_d);
            if v > 0
                && xr
                    .iter()
                    .any(|c| is_constant(&poly::difference(c, v, sd, m)))
            {
                v -= 1;
            }
            if v > 0 && poly::difference(&dx, v, 0, 1).is_empty() {
                v -= 1;
            }
            v
        }
    };
    let dx = poly::difference(&dx, d, 0, 1);
    if dx.is_empty() {
        return Err(ArimaError::TooShort);
    }
    if is_constant(&dx) {
        let o = Order {
            p: 0,
            d,
            q: 0,
            sp: 0,
            sd,
            sq: 0,
            m,
        };
        let constant = xr.is_empty() && d + sd == 1 || (sd == 0 && d == 0);
        let f = deterministic(x, &xr, o, constant)?;
        return Ok(AutoFit {
            ic: f64::NAN,
            fit: f,
            constant,
            xreg_used,
            tried: Vec::new(),
        });
    }
    if m > 1 {
        max_p = max_p.min(m - 1);
        max_q = max_q.min(m - 1);
    } else {
        m = 1;
    }
    let approximation = opts.approximation.unwrap_or(n > 150 || m > 12);
    let offset = if approximation {
        let o = Order {
            p: 0,
            d,
            q: 0,
            sp: 0,
            sd,
            sq: 0,
            m,
        };
        match fit(x, &xr, o, true, Method::Css, Some(&[])) {
            Ok(f) if f.sigma2 > 0.0 => -2.0 * f.loglik - n as f64 * f.sigma2.ln(),
            _ => 0.0,
        }
    } else {
        0.0
    };
    let allow_drift = opts.allow_drift && d + sd == 1;
    let allow_mean = opts.allow_mean && d + sd == 0;
    let mut constant = allow_drift || allow_mean;

    let mut s = Search {
        x,
        xreg: &xr,
        ic,
        offset,
        approximation,
        rule: opts.root_check,
        tried: Vec::new(),
    };
    let (mut start_p, mut start_q, mut start_sp, mut start_sq) =
        (opts.start_p, opts.start_q, opts.start_sp, opts.start_sq);
    if n < 10 {
        start_p = start_p.min(1);
        start_q = start_q.min(1);
        start_sp = 0;
        start_sq = 0;
    }
    let mut p = start_p.min(max_p);
    let mut q = start_q.min(max_q);
    let mut sp_ = start_sp.min(max_sp);
    let mut sq_ = start_sq.min(max_sq);
    let nmodels = opts.nmodels.max(1);

    let (mut best_ic, mut best) = s.step(Order::seasonal(p, d, q, sp_, sd, sq_, m), constant);
    let (v, f) = s.step(Order::seasonal(0, d, 0, 0, sd, 0, m), constant);
    if v < best_ic {
        (best_ic, best) = (v, f);
        (p, q, sp_, sq_) = (0, 0, 0, 0);
    }
    if max_p > 0 || max_sp > 0 {
        let p1 = usize::from(max_p > 0);
        let sp1 = usize::from(m > 1 && max_sp > 0);
        let (v, f) = s.step(Order::seasonal(p1, d, 0, sp1, sd, 0, m), constant);
        if v < best_ic {
            (best_ic, best) = (v, f);
            (p, sp_, q, sq_) = (p1, sp1, 0, 0);
        }
    }
    if max_q > 0 || max_sq > 0 {
        let q1 = usize::from(max_q > 0);
        let sq1 = usize::from(m > 1 && max_sq > 0);
        let (v, f) = s.step(Order::seasonal(0, d, q1, 0, sd, sq1, m), constant);
        if v < best_ic {
            (best_ic, best) = (v, f);
            (p, sp_, q, sq_) = (0, 0, q1, sq1);
        }
    }
    if constant {
        let (v, f) = s.step(Order::seasonal(0, d, 0, 0, sd, 0, m), false);
        if v < best_ic {
            (best_ic, best) = (v, f);
            (p, q, sp_, sq_) = (0, 0, 0, 0);
            // statsforecast keeps `constant` here; R does too (the toggle
            // below is what changes it).
        }
    }
    // Neighbourhood moves in R's order: (ΔP, ΔQ) then (Δp, Δq), then the
    // constant toggle.
    let mut startk = 0;
    while startk < s.tried.len() && s.tried.len() < nmodels {
        startk = s.tried.len();
        let seasonal_moves: [(i32, i32); 8] = [
            (-1, 0),
            (0, -1),
            (1, 0),
            (0, 1),
            (-1, -1),
            (-1, 1),
            (1, -1),
            (1, 1),
        ];
        let mut moved = false;
        for &(dp, dq) in &seasonal_moves {
            let np = sp_ as i32 + dp;
            let nq = sq_ as i32 + dq;
            if np < 0 || nq < 0 || np > max_sp as i32 || nq > max_sq as i32 {
                continue;
            }
            let o = Order::seasonal(p, d, q, np as usize, sd, nq as usize, m);
            if s.seen(&o, constant) || s.tried.len() >= nmodels {
                continue;
            }
            let (v, f) = s.step(o, constant);
            if v < best_ic {
                (best_ic, best) = (v, f);
                (sp_, sq_) = (np as usize, nq as usize);
                moved = true;
                break;
            }
        }
        if moved {
            continue;
        }
        for &(dp, dq) in &seasonal_moves {
            let np = p as i32 + dp;
            let nq = q as i32 + dq;
            if np < 0 || nq < 0 || np > max_p as i32 || nq > max_q as i32 {
                continue;
            }
            let o = Order::seasonal(np as usize, d, nq as usize, sp_, sd, sq_, m);
            if s.seen(&o, constant) || s.tried.len() >= nmodels {
                continue;
            }
            let (v, f) = s.step(o, constant);
            if v < best_ic {
                (best_ic, best) = (v, f);
                (p, q) = (np as usize, nq as usize);
                moved = true;
                break;
            }
        }
        if moved {
            continue;
        }
        if allow_drift || allow_mean {
            let o = Order::seasonal(p, d, q, sp_, sd, sq_, m);
            if !s.seen(&o, !constant) && s.tried.len() < nmodels {
                let (v, f) = s.step(o, !constant);
                if v < best_ic {
                    (best_ic, best) = (v, f);
                    constant = !constant;
                    continue;
                }
            }
        }
    }
    // Refit without the approximation: best CSS model first.
    if approximation {
        let mut order: Vec<usize> = (0..s.tried.len()).collect();
        order.sort_by(|&a, &b| s.tried[a].ic.total_cmp(&s.tried[b].ic));
        for (tries, &i) in order.iter().enumerate() {
            if tries >= opts.max_refits {
                break;
            }
            let t = s.tried[i].clone();
            let (v, f) = s.try_fit(t.order, t.constant, false);
            if v < f64::INFINITY {
                if let Some(f) = f {
                    return Ok(AutoFit {
                        fit: f,
                        constant: t.constant,
                        xreg_used,
                        tried: s.tried,
                        ic: v,
                    });
                }
            }
        }
    }
    match best {
        Some(f) if best_ic < f64::INFINITY => {
            let constant = f.constant != super::fit::Constant::None;
            Ok(AutoFit {
                ic: best_ic,
                constant,
                fit: f,
                xreg_used,
                tried: s.tried,
            })
        }
        _ => Err(ArimaError::NoModel),
    }
}
